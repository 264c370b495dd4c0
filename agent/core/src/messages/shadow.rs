//! A function's shadow (`[function.shadow]`): how its outputs compare with the primary's
//! and what each side costs on the same events ([`ShadowReport`], also in the stats
//! message), and the mismatches kept in full ([`ShadowMessage`], retained on
//! `<prefix>/<id>/shadow/<function>`).

use serde::{Deserialize, Serialize};

use super::Message;

/// The counts, the noise and each side's cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// SHA-256 of the shadow's module.
    pub module_sha256: String,
    /// The shadow's model: `on-demand` or `persistent`.
    pub model: String,
    /// Share of the function's topics mirrored.
    pub fraction: f64,
    /// Events whose outputs agreed (noisy and ignored paths aside).
    pub matches: u64,
    /// Events whose outputs differed.
    pub mismatches: u64,
    /// Events the primary handled and the shadow failed.
    pub shadow_failed: u64,
    /// Events not compared: the shadow's queue was full, or (a stateful shadow) they came
    /// after such a skip before it caught up, or the copy of the function's state it
    /// started again from held them already.
    pub skipped: u64,
    /// Events handed over and not yet compared or skipped: how far the shadow is behind.
    #[serde(default)]
    pub queued: u64,
    /// Mismatches over events compared (matches plus mismatches), once any was, the
    /// paths found noisy left out: the noise subtracted.
    pub mismatch_ratio: Option<f64>,
    /// The same with the noisy paths counted.
    pub raw_mismatch_ratio: Option<f64>,
    /// What the primary against itself showed.
    pub noise: ShadowNoise,
    /// The primary's cost on the mirrored events.
    pub primary: ShadowSide,
    /// The shadow's cost on the same events.
    pub shadow: ShadowSide,
    /// `[function.shadow.canary]`: the share of live topics the shadow's version handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
}

/// A canary's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// The share of topics it handles now.
    pub weight: f64,
    /// `progressing`, `at-max-weight` (ready for `edge-agent promote`) or `rolled-back`.
    pub status: String,
    /// Events it handled (its outputs published).
    pub events: u64,
    /// Its failures by kind, as `[kind, count]` pairs (each of those events then ran on
    /// the primary).
    pub failed: Vec<(String, u64)>,
    /// Every raise and roll-back, oldest first (the last 50).
    pub steps: Vec<CanaryStep>,
}

/// One analysis that changed the share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
    /// `raised` or `rolled-back`.
    pub action: String,
    /// The share after it.
    pub weight: f64,
    /// Canary events in the interval.
    pub events: u64,
    /// Of which failed.
    pub failures: u64,
    /// The shadow's mismatch ratio on the other topics in the interval, if any compared.
    pub mismatch_ratio: Option<f64>,
}

/// The primary against itself (a second run of it on the first mirrored events).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowNoise {
    /// Events run twice so far.
    pub calibrated: u64,
    /// Events the calibration takes (`calibrate_events`).
    pub of: u64,
    /// Share of those whose two outputs differed.
    pub ratio: Option<f64>,
    /// The output paths that differed between the two (left out of every comparison).
    pub paths: Vec<String>,
}

/// One side's cost on the mirrored events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowSide {
    /// Events it handled (successes and failures).
    pub events: u64,
    /// CPU per successful event, µs.
    pub cpu_us_per_event: Option<f64>,
    /// CPU of a successful call (instantiation included), median, µs: over the calls whose
    /// CPU was read (`CallCost::cpu_estimated`), the same figure as a function's
    /// `cpu_us.p50` and `compare`'s call CPU. A mean moves with every preempted call; on a
    /// shared machine this one holds still.
    #[serde(default)]
    pub cpu_us_p50: Option<u64>,
    /// Largest linear memory of an instance, bytes.
    pub peak_memory_bytes: u64,
    /// Call time (instantiation and call), median, µs.
    pub latency_p50_us: u64,
    /// Call time, 99th percentile, µs.
    pub latency_p99_us: u64,
    /// Failures by kind, as `[kind, count]` pairs.
    pub failed: Vec<(String, u64)>,
}

/// What one side of a mismatch did with the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum ShadowResult {
    /// It returned these outputs.
    Ok {
        /// In order.
        outputs: Vec<ShadowOutput>,
    },
    /// It failed.
    Failed {
        /// The failure kind.
        kind: String,
        /// Its message.
        message: String,
    },
}

/// An output, its payload as text (invalid UTF-8 replaced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowOutput {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: String,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// A mismatch kept in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowMismatch {
    /// When the shadow handled it, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The event's topic.
    pub topic: String,
    /// The event's payload as text (invalid UTF-8 replaced).
    pub payload: String,
    /// Where the two differed (`$count`, `$topic`, `$result`, `$payload`, or a JSON path
    /// of the payload such as `value` or `readings.0.at`).
    pub paths: Vec<String>,
    /// The primary's result.
    pub primary: ShadowResult,
    /// The shadow's.
    pub shadow: ShadowResult,
}

/// Retained on `<prefix>/<id>/shadow/<function>`: the report and the last mismatches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowMessage {
    /// The message's format (1).
    pub schema_version: u32,
    /// The agent's id.
    pub agent: String,
    /// The function.
    pub function: String,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The counts and costs.
    pub report: ShadowReport,
    /// The last `keep_mismatches` mismatches, oldest first.
    pub mismatches: Vec<ShadowMismatch>,
}

impl Message for ShadowMessage {
    const TOPIC: &'static str = "shadow";
    const SCHEMA_VERSION: u32 = 1;
}

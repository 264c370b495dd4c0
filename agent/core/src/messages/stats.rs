//! The retained message on `<topic_prefix>/<id>/stats`, every `agent.stats_interval_secs`:
//! a [`Report`] of cumulative figures since start-up and rates over the last interval.
//! `metrics::report` builds it; the metrics endpoint reads the same [`Snapshot`]s.

use serde::{Deserialize, Serialize};

use super::Message;

/// One message on the stats topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`Report::SCHEMA_VERSION`]: 1 was a bare array of snapshots; 2 is this object.
    #[serde(default = "super::unversioned")]
    pub schema_version: u32,
    /// The agent's id.
    pub agent: String,
    /// When the report was made, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Seconds the rates cover: since the previous report (the first: since start-up).
    pub interval_secs: f64,
    /// The whole agent process.
    pub process: ProcessFigures,
    /// Bytes the state store takes on disk.
    pub state_disk_bytes: u64,
    /// The state store's flushes since start-up, each one `fdatasync` (absent before
    /// 2026-12-05).
    #[serde(default)]
    pub state_flushes: u64,
    /// Messages the agent did not send because the broker will not take them (over its
    /// packet size limit, or to a topic it refuses), their events handled, since start-up
    /// (absent before 2026-12-06).
    #[serde(default)]
    pub outputs_dropped: u64,
    /// The broker's round trip as the output connection measures it, ms: the least time
    /// from a publish written with nothing else unconfirmed to its PUBACK, over the last
    /// 10-20 s that had one (a stream waits for one such once in 10 s). None until measured (and in reports before 2026-12-06).
    #[serde(default)]
    pub broker_round_trip_ms: Option<f64>,
    /// One entry per function, in configuration order.
    pub functions: Vec<FunctionReport>,
}

impl Message for Report {
    const TOPIC: &'static str = "stats";
    const SCHEMA_VERSION: u32 = 2;
}

/// The agent process as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// User and system CPU time since start-up.
    pub cpu_seconds: f64,
    /// CPU used over the interval, percent of one core.
    pub cpu_percent: f64,
}

/// A function's cumulative figures and its rates over the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Since start-up.
    #[serde(flatten)]
    pub totals: Snapshot,
    /// Over the interval.
    pub rates: Rates,
}

/// What a function did over the last interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Events received per second.
    pub events_per_sec: f64,
    /// Events that failed (any kind, dead letters included) per second.
    pub errors_per_sec: f64,
    /// Instantiations (on-demand cold starts) and full cold starts per second.
    pub cold_starts_per_sec: f64,
    /// Thread CPU of its calls, percent of one core.
    pub cpu_percent: f64,
    /// End-to-end latency of the events that succeeded in the interval.
    pub end_to_end_us: Percentiles,
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// What one function has done and cost so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Function name.
    pub function: String,
    /// `on-demand`, `persistent` or `auto` (then `auto.model` is the model in force).
    pub mode: String,
    /// Events routed to it.
    pub received: u64,
    /// SHA-256 of the module version in force (it changes with a hot reload).
    pub module_sha256: Option<String>,
    /// Events waiting in its queue(s) now.
    pub queue_depth: u64,
    /// Keys in its state namespace now.
    pub state_keys: u64,
    /// Events handled successfully.
    pub succeeded: u64,
    /// Persistent instance restarts.
    pub restarts: u64,
    /// Redelivered messages already handled, the function not called again: answered
    /// from their receipt in the store (exactly-once state), or resends of messages this
    /// run had finished, acknowledged at once.
    #[serde(default)]
    pub replayed: u64,
    /// Persistent instances stopped now by their restart policy (`restart = "never"`, or
    /// `max_restarts` within the window): their events are dead-lettered as
    /// `function-stopped` until a reload puts a new version in force.
    #[serde(default)]
    pub stopped_instances: u64,
    /// Failures by kind (non-zero only), as `[kind, count]` pairs.
    pub failed: Vec<(String, u64)>,
    /// Receive to outputs handed to the connection, successful events.
    pub end_to_end_us: Percentiles,
    /// Instantiation per event (on-demand cold starts; persistent: none after start-up).
    pub instantiate_us: Percentiles,
    /// Full cold starts after a scale to zero (`keep_warm_secs`): loading the module again,
    /// before that event's instantiation; `count` is how many there were.
    pub load_us: Percentiles,
    /// The handler call.
    pub execute_us: Percentiles,
    /// Waiting in the function's queue, from receipt to the call.
    pub queue_us: Percentiles,
    /// State-writing calls: from the call's end to its writes being durable (the group
    /// commit); `count` is how many calls wrote state.
    pub commit_us: Percentiles,
    /// CPU time per event (instantiation plus call), of the calls whose CPU was read: all
    /// of them while a worker's calls are [`crate::clock::CALL_CPU_SPACING`] or more apart,
    /// one per spacing when they come faster.
    pub cpu_us: Percentiles,
    /// CPU time of all successful events (a call not read counts at its thread's last read).
    pub cpu_total_us: u64,
    /// Largest linear memory of any instance.
    pub peak_memory_bytes: usize,
    /// `mode = "auto"`: the model in force and the controller's estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoReport>,
    /// `[function.shadow]`: how the shadow's outputs compare and what it costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::shadow::ShadowReport>,
}

/// What the controller of an auto function sees and did (`mode = "auto"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoReport {
    /// The model in force: `on-demand` or `persistent`.
    pub model: String,
    /// What it minimises: `cpu`, `memory`, `energy` or `money`.
    pub objective: String,
    /// Events per second over the stable window.
    pub rate_stable: f64,
    /// Events per second over the panic window.
    pub rate_panic: f64,
    /// Where persistent becomes cheaper, events/s; absent if it never does.
    pub break_even: Option<f64>,
    /// On demand's cost per hour at the stable rate (CPU seconds, MB held, or dollars;
    /// energy is CPU seconds times the board's watts per busy core).
    pub cost_on_demand: f64,
    /// Persistent's, in the same unit.
    pub cost_persistent: f64,
    /// CPU per event on demand (instantiation included), µs, once measured.
    pub on_demand_cpu_us: Option<f64>,
    /// CPU per event persistent, µs, once measured.
    pub persistent_cpu_us: Option<f64>,
    /// Largest linear memory of an instance, bytes.
    pub memory_bytes: u64,
    /// Switches so far, by from, to and reason.
    pub switches: Vec<AutoSwitch>,
    /// The last switch.
    pub last_switch: Option<AutoLastSwitch>,
}

/// Switches of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoSwitch {
    /// Model before.
    pub from: String,
    /// Model after.
    pub to: String,
    /// `rate`, `panic` or `latency`.
    pub reason: String,
    /// How many.
    pub count: u64,
}

/// One switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoLastSwitch {
    /// Model before.
    pub from: String,
    /// Model after.
    pub to: String,
    /// `rate`, `panic` or `latency`.
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
}

impl Snapshot {
    /// Its failed events, all kinds together.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(|(_, n)| n).sum()
    }
}

//! The message on `<topic_prefix>/<id>/dead-letter`: a failed event, with what is needed
//! to inspect or replay it. `pipeline::output` builds and sends it.

use serde::{Deserialize, Serialize};

use super::Message;

/// A failed event, as published on `<topic_prefix>/<id>/dead-letter`. It carries the
/// original payload (up to 64 KiB, less when `broker.max_packet_bytes` leaves less room)
/// so that it can be inspected or replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// [`DeadLetter::SCHEMA_VERSION`] (`1`; a dead letter without it is version 1 too).
    #[serde(default = "super::unversioned")]
    pub schema_version: u32,
    /// The function that failed.
    pub function: String,
    /// SHA-256 of the function's module version that failed (it changes with a reload).
    pub module_sha256: Option<String>,
    /// Topic of the event.
    pub topic: String,
    /// Kind of failure (`guest-error`, `timeout`, `trap`, ...: `FailureKind::as_str`).
    pub kind: String,
    /// Details.
    pub message: String,
    /// When the failure happened, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When the event was received, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// QoS the event was delivered with.
    pub qos: u8,
    /// Size of the original payload.
    pub payload_bytes: usize,
    /// The original payload, base64 (cut when `payload_truncated`).
    pub payload_base64: String,
    /// Whether `payload_base64` holds only the start of the payload.
    pub payload_truncated: bool,
    /// Whether `message` holds only the start of the error message.
    pub message_truncated: bool,
    /// Whether `topic` holds only the start of the event's topic (a topic near
    /// `broker.max_packet_bytes`, which the dead letter's own topic and fields push over).
    #[serde(default)]
    pub topic_truncated: bool,
}

impl Message for DeadLetter {
    const TOPIC: &'static str = "dead-letter";
    const SCHEMA_VERSION: u32 = 1;
}

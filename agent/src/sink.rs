//! Everything the agent sends to the broker on behalf of functions: their published
//! messages and dead letters.

use base64::Engine as _;
use rumqttc::AsyncClient;
use serde::Serialize;

use crate::router::Event;
use crate::runtime::{ErrorKind, Outgoing};

/// A failed event, as published on `<topic_prefix>/<id>/dead-letter`. It carries the
/// original payload so that it can be inspected or replayed.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// The function that failed.
    pub function: String,
    /// Topic of the event.
    pub topic: String,
    /// Kind of failure (`guest-error`, `timeout`, `trap`, ...).
    pub kind: &'static str,
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
    /// The original payload, base64.
    pub payload_base64: String,
}

impl DeadLetter {
    /// A dead letter for `event` in `function`.
    pub fn new(function: &str, event: &Event, kind: ErrorKind, message: String) -> Self {
        Self {
            function: function.to_string(),
            topic: event.topic.clone(),
            kind: kind.as_str(),
            message,
            timestamp_ms: crate::runtime::host::now_ms(),
            received_at_ms: event.received_at_ms,
            qos: event.qos,
            payload_bytes: event.payload.len(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&event.payload),
        }
    }

    fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Sends messages through the agent's MQTT connection.
#[derive(Clone)]
pub struct Sink {
    client: AsyncClient,
    dead_letter_topic: String,
}

impl Sink {
    /// A sink on `client` that sends dead letters to `dead_letter_topic`.
    pub fn new(client: AsyncClient, dead_letter_topic: String) -> Self {
        Self {
            client,
            dead_letter_topic,
        }
    }

    /// Queues a function's message for the broker, waiting while the connection's request
    /// queue is full. Returns false if the connection is gone (shutting down).
    pub async fn publish(&self, msg: Outgoing) -> bool {
        self.client
            .publish(
                msg.topic,
                crate::mqtt::qos(msg.qos),
                msg.retain,
                msg.payload,
            )
            .await
            .is_ok()
    }

    /// Queues a dead letter, waiting while the request queue is full.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> bool {
        self.client
            .publish(
                self.dead_letter_topic.clone(),
                rumqttc::QoS::AtLeastOnce,
                false,
                letter.to_json(),
            )
            .await
            .is_ok()
    }

    /// Queues a dead letter without waiting; false if the request queue is full.
    pub fn try_dead_letter(&self, letter: &DeadLetter) -> bool {
        self.client
            .try_publish(
                self.dead_letter_topic.clone(),
                rumqttc::QoS::AtLeastOnce,
                false,
                letter.to_json(),
            )
            .is_ok()
    }
}

//! MQTT: topic rules ([`topic`]), client options ([`options`]), the connection task that
//! polls the broker and routes events ([`connection`]) and the embedded broker ([`broker`]).

pub mod ack;
pub mod broker;
pub mod connection;
pub mod options;
pub mod topic;

/// Failures of the MQTT side at start-up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A TLS file could not be read or parsed.
    #[error("`{key}`: {message}")]
    Tls {
        /// The config key of the file.
        key: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The embedded broker could not start.
    #[error("embedded broker: {0}")]
    Broker(String),
}

/// Converts a QoS number (0-2, validated earlier) to rumqttc's type.
pub fn qos(n: u8) -> rumqttc::QoS {
    match n {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

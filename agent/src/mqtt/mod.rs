//! MQTT: client options ([`options`]), the connection task that polls the broker and hands
//! messages to the pipeline's router ([`connection`]), and the embedded broker
//! ([`broker`]). The topic grammar and the acknowledgement order are plain logic and live
//! in the crate's leaf modules (`topic`, `ack`).

pub mod broker;
pub mod connection;
pub mod options;

use crate::config::UrlError;

/// An error kept as the cause of an [`MqttError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// `broker.url` is not a usable MQTT URL.
    #[error("`broker.url`: {0}")]
    Url(#[from] UrlError),
    /// The embedded broker could not start.
    #[error("embedded broker: {context}")]
    Broker {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

impl MqttError {
    fn broker(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Broker {
            context: context.into(),
            source: source.into(),
        }
    }
}

//! MQTT, all of it: client options ([`options`]), the connection tasks that poll the
//! broker and hand messages to whatever implements [`connection::Intake`] (the pipeline's
//! router), the acknowledgement order ([`ack`]), what the agent publishes and when the
//! broker has it ([`publisher`]), and the embedded broker ([`broker`], feature `broker`).
//! It sits below the pipeline: it knows events ([`crate::event`]) and the topic grammar
//! ([`crate::topic`], a leaf, since the guest's host calls use it too and the sandbox must
//! never reach the transport), never the pipeline.

pub mod ack;
#[cfg(feature = "broker")]
pub mod broker;
pub mod connection;
pub mod options;
pub mod publisher;
pub mod refusal;
#[cfg(test)]
mod vendored;

use crate::config::UrlError;

/// An error kept as the cause of an [`MqttError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failures of the MQTT side at start-up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A TLS file could not be read or parsed.
    #[error("`{key}`: {what}")]
    Tls {
        /// The config key of the file.
        key: &'static str,
        /// What could not be done (with the file's path).
        what: String,
        /// Why, where the OS or rustls said (render with [`crate::failure::chain`]).
        #[source]
        source: Option<BoxError>,
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
    pub(crate) fn broker(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Broker {
            context: context.into(),
            source: source.into(),
        }
    }
}

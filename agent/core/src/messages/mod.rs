//! The agent's own messages, typed once: what it publishes under `<topic_prefix>/<id>/`
//! ([`status`]: presence and birth; [`stats`]; [`dead_letter`]; [`reload`]; [`shadow`]; [`deployment`]), as
//! `Serialize + Deserialize` types that the agent builds and that its clients (`top`,
//! `compare`, the tests) read back with [`Message::from_bytes`]. Every message carries its
//! `schema_version`; a reader given another version gets [`ReadError::Version`], never a
//! message of zeros. `docs/observability.md` has a table per message, and a test
//! (`tests/integration/messages.rs`) keeps those tables and these types in agreement.
//!
//! A leaf module (layer 1): every layer and every tool may use it, and it uses nothing of
//! the agent's but the failure kinds' names.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod dead_letter;
pub mod deployment;
pub mod reload;
pub mod shadow;
pub mod stats;
pub mod status;

pub use dead_letter::DeadLetter;
pub use deployment::{DeploymentReport, DeploymentState};
pub use reload::{FailedFunction, ReloadReport, ReloadedFunction};
pub use shadow::{ShadowMessage, ShadowReport};
pub use stats::{FunctionReport, Percentiles, ProcessFigures, Rates, Report, Snapshot};
pub use status::{Presence, Status, StatusFunction};

/// The version a message without `schema_version` is read as: before the field was written,
/// every message was in its first format (the stats topic's was a bare array).
pub const UNVERSIONED: u32 = 1;

fn unversioned() -> u32 {
    UNVERSIONED
}

/// A message the agent publishes on one of its topics.
pub trait Message: Serialize + DeserializeOwned {
    /// The last level of its topic (`<topic_prefix>/<id>/<TOPIC>`), which also names its
    /// table in `docs/observability.md`.
    const TOPIC: &'static str;
    /// The format this build writes and reads. Bump it when a field is renamed, removed or
    /// changes meaning; adding a field does not need it.
    const SCHEMA_VERSION: u32;

    /// The message as JSON, as published.
    fn to_bytes(&self) -> Vec<u8> {
        // Structs of strings, numbers and lists: serialising them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message published on its topic.
    ///
    /// # Errors
    /// [`ReadError::NotJson`] if it is not JSON, [`ReadError::Version`] if it is in another
    /// `schema_version` than [`Self::SCHEMA_VERSION`], [`ReadError::Shape`] if its fields do
    /// not fit the type (a field missing or of another type).
    fn from_bytes(bytes: &[u8]) -> Result<Self, ReadError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(ReadError::NotJson)?;
        let found = schema_version(&value);
        if found != Self::SCHEMA_VERSION {
            return Err(ReadError::Version {
                message: Self::TOPIC,
                found,
                reads: Self::SCHEMA_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|source| ReadError::Shape {
            message: Self::TOPIC,
            version: found,
            source,
        })
    }
}

/// The `schema_version` of a message as JSON ([`UNVERSIONED`] when it has none).
pub fn schema_version(value: &serde_json::Value) -> u32 {
    value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(UNVERSIONED)
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON at all.
    #[error("not a JSON message: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Another format than this build's.
    #[error("{message} message in schema_version {found}; this build reads {reads}")]
    Version {
        /// Which message ([`Message::TOPIC`]).
        message: &'static str,
        /// Its `schema_version`.
        found: u32,
        /// The one this build reads.
        reads: u32,
    },
    /// The right version, but a field is missing or of another type.
    #[error("{message} message (schema_version {version}) does not fit its type: {source}")]
    Shape {
        /// Which message ([`Message::TOPIC`]).
        message: &'static str,
        /// Its `schema_version`.
        version: u32,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_is_named_not_read_as_zeros() {
        // The stats topic's first format: a bare array, no schema_version.
        let err = Report::from_bytes(b"[]").err().map(|e| e.to_string());
        let want = "stats message in schema_version 1; this build reads 2";
        assert_eq!(err.as_deref(), Some(want));
        let err = Report::from_bytes(br#"{"schema_version":3}"#).err();
        assert!(
            matches!(
                err,
                Some(ReadError::Version {
                    found: 3,
                    reads: 2,
                    ..
                })
            ),
            "{err:?}"
        );
        // The right version with a field renamed: an error naming it, not a zero.
        let err =
            Status::from_bytes(br#"{"schema_version":1,"state":"online","pid":1,"version":"x"}"#)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("missing field `status`"), "{err}");
    }

    #[test]
    fn a_status_without_schema_version_is_version_1() {
        let old = br#"{"status":"offline","pid":7,"version":"0.1.0"}"#;
        let status = Status::from_bytes(old).ok();
        assert_eq!(
            status.map(|s| (s.status, s.pid)),
            Some((Presence::Offline, 7))
        );
    }
}

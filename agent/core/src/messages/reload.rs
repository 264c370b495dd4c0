//! The message on `<topic_prefix>/<id>/reload` (QoS 1, not retained) after each hot
//! reload: what it put in force, or why it was refused. `daemon::reload` sends it.

use serde::{Deserialize, Serialize};

use super::Message;

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// [`ReloadReport::SCHEMA_VERSION`] (`1`; a report without it is version 1 too).
    #[serde(default = "super::unversioned")]
    pub schema_version: u32,
    /// Whether the new config is in force; if not, the running versions stay.
    pub ok: bool,
    /// What asked for it: `SIGHUP`, or the changed file's path.
    pub trigger: String,
    /// When it was done, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Functions changed in place, with their new module versions (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<Vec<ReloadedFunction>>,
    /// Functions added (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<ReloadedFunction>>,
    /// Functions removed, by name (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<String>>,
    /// Functions the reload was to add but could not start (when a reload got as far as
    /// putting the config in force; `ok` is then false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<FailedFunction>>,
    /// Why it was refused (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A function a reload could not start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedFunction {
    /// Its name.
    pub function: String,
    /// Why (the instance pool is full, a worker thread could not start).
    pub error: String,
}

/// A function a reload changed or added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadedFunction {
    /// Its name.
    pub function: String,
    /// SHA-256 of its module version now in force, hex.
    pub sha256: String,
}

impl Message for ReloadReport {
    const TOPIC: &'static str = "reload";
    const SCHEMA_VERSION: u32 = 1;
}

impl ReloadReport {
    /// A reload put in force by `trigger`; `ok` unless some added function could not be
    /// started (`failed`).
    pub fn done(
        trigger: &str,
        reloaded: Vec<ReloadedFunction>,
        added: Vec<ReloadedFunction>,
        removed: Vec<String>,
        failed: Vec<FailedFunction>,
    ) -> Self {
        Self {
            ok: failed.is_empty(),
            reloaded: Some(reloaded),
            added: Some(added),
            removed: Some(removed),
            failed: (!failed.is_empty()).then_some(failed),
            error: None,
            ..Self::refused(trigger, String::new())
        }
    }

    /// A reload by `trigger` refused because of `error`.
    pub fn refused(trigger: &str, error: String) -> Self {
        Self {
            schema_version: Self::SCHEMA_VERSION,
            ok: false,
            trigger: trigger.to_string(),
            ts_ms: crate::clock::now_ms(),
            reloaded: None,
            added: None,
            removed: None,
            failed: None,
            error: Some(error),
        }
    }
}

//! The retained message on `<topic_prefix>/<id>/status`: the agent's presence, and once
//! it is connected and subscribed its birth message, which names each function's module
//! version in force.

use serde::{Deserialize, Serialize};

use super::Message;

/// Whether the agent is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Every connection up and every function subscribed.
    Online,
    /// Stopped cleanly, or gone (the last will).
    Offline,
}

/// One message on the status topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`Status::SCHEMA_VERSION`] (`1`; a status without it is version 1 too).
    #[serde(default = "super::unversioned")]
    pub schema_version: u32,
    /// `online` or `offline`.
    pub status: Presence,
    /// The agent's process id: it tells one run from the next.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// In the birth message only: each function, in configuration order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<StatusFunction>>,
    /// While the state store is unavailable (full or failing disk): why. The functions
    /// that write state are paused meanwhile; the others run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// A function as the birth message names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFunction {
    /// Its name.
    pub name: String,
    /// `on-demand` or `persistent`.
    pub mode: String,
    /// The module's file name (`threshold-alert.cwasm`).
    pub module: Option<String>,
    /// SHA-256 of the module version in force, hex.
    pub sha256: Option<String>,
}

impl Message for Status {
    const TOPIC: &'static str = "status";
    const SCHEMA_VERSION: u32 = 1;
}

impl Status {
    /// This process's presence, without the functions: the last will and the clean
    /// shutdown's `offline`.
    pub fn presence(status: Presence) -> Self {
        Self {
            schema_version: Self::SCHEMA_VERSION,
            status,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            functions: None,
            degraded: None,
        }
    }

    /// The birth message: `online`, with `functions`.
    pub fn birth(functions: Vec<StatusFunction>) -> Self {
        Self {
            functions: Some(functions),
            ..Self::presence(Presence::Online)
        }
    }
}

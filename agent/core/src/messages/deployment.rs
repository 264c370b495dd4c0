//! The retained message on `<topic_prefix>/<id>/deployment`: where this agent is with its
//! group's deployment (`daemon::deploy` sends it; `edge-agent fleet status` and
//! `edge-agent deploy --wait` read it).

use serde::{Deserialize, Serialize};

use super::Message;

/// A step of a deployment on one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Receiving its modules.
    Downloading,
    /// Checking the config it makes, then reloading.
    Checking,
    /// In force (and past probation when `probation` is false).
    Applied,
    /// Refused: nothing changed (`reason` says why).
    Refused,
    /// Put in force, then taken back: its functions failed during probation, or failed
    /// to start.
    RolledBack,
}

/// One report of an agent on its deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentReport {
    /// [`DeploymentReport::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The agent's id.
    pub agent: String,
    /// Its deployment group.
    pub group: String,
    /// The deployment this report is about (none: no document read yet).
    pub version: Option<u64>,
    /// Where that deployment is.
    pub state: DeploymentState,
    /// Why it was refused or rolled back, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deployment version whose functions are in force (none: the config file's own).
    pub in_force: Option<u64>,
    /// While `applied`: whether the agent still watches the new functions, and would roll
    /// back if they fail.
    #[serde(default)]
    pub probation: bool,
    /// While `downloading`: chunks received and needed, over all modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<[usize; 2]>,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
}

/// A `downloading` report with chunks older than this says the download has stalled:
/// while chunks come the agent reports about once a second (ten seconds leave room for the
/// clocks of the agent and of whoever reads the report to differ).
pub const STALLED_AFTER_MS: u64 = 10_000;

impl Message for DeploymentReport {
    const TOPIC: &'static str = "deployment";
    const SCHEMA_VERSION: u32 = 1;
}

impl DeploymentReport {
    /// The report in a few words, as `fleet status` and `top --fleet` show it:
    /// `site/7 applied`, `site/8 refused, in force: 7 (why)`, `site/8 downloading 3/10
    /// chunks, in force: 7`.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let state = match (self.state, self.probation) {
            (DeploymentState::Applied, true) => "on probation",
            (DeploymentState::Applied, false) => "applied",
            (DeploymentState::Downloading, _) => "downloading",
            (DeploymentState::Checking, _) => "checking",
            (DeploymentState::Refused, _) => "refused",
            (DeploymentState::RolledBack, _) => "rolled back",
        };
        let version = self.version.map_or_else(|| "?".into(), |v| v.to_string());
        let mut out = format!("{}/{version} {state}", self.group);
        if let Some([have, want]) = self.chunks {
            let _ = write!(out, " {have}/{want} chunks");
        }
        if self.state != DeploymentState::Applied {
            let in_force = self
                .in_force
                .map_or_else(|| "none".into(), |v| v.to_string());
            let _ = write!(out, ", in force: {in_force}");
        }
        if let Some(r) = &self.reason {
            let _ = write!(out, " ({r})");
        }
        out
    }

    /// [`DeploymentReport::summary`] read at `now_ms` (ms since the Unix epoch): a download
    /// whose last report is older than [`STALLED_AFTER_MS`] says for how long no chunk
    /// came: `site/8 downloading 3/10 chunks, in force: 7, no chunk for 40 s`.
    pub fn summary_at(&self, now_ms: u64) -> String {
        use std::fmt::Write as _;
        let mut out = self.summary();
        let quiet = now_ms.saturating_sub(self.ts_ms);
        if self.state == DeploymentState::Downloading
            && self.chunks.is_some()
            && quiet > STALLED_AFTER_MS
        {
            let _ = write!(out, ", no chunk for {} s", quiet / 1000);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_with_no_progress_says_for_how_long() {
        let r = DeploymentReport {
            schema_version: DeploymentReport::SCHEMA_VERSION,
            agent: "a".into(),
            group: "site".into(),
            version: Some(8),
            state: DeploymentState::Downloading,
            reason: None,
            in_force: Some(7),
            probation: false,
            chunks: Some([3, 10]),
            ts_ms: 1_000_000,
        };
        let moving = "site/8 downloading 3/10 chunks, in force: 7";
        assert_eq!(r.summary_at(1_002_000), moving);
        assert_eq!(
            r.summary_at(1_040_000),
            format!("{moving}, no chunk for 40 s")
        );
        // Other states, and a download from a URL (no chunks), say nothing of it.
        let url = DeploymentReport {
            chunks: None,
            ..r.clone()
        };
        assert!(!url.summary_at(1_040_000).contains("no chunk"));
        let applied = DeploymentReport {
            state: DeploymentState::Applied,
            ..r
        };
        assert!(!applied.summary_at(1_040_000).contains("no chunk"));
    }
}

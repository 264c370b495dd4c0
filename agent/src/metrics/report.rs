//! Reports of what each function has done and cost: a retained JSON array on the stats
//! topic every `agent.stats_interval_secs`, and one log line per function at shutdown.
//! The comparison report and a metrics endpoint read the same [`Snapshot`]s.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{FunctionStats, Snapshot};
use crate::config::Mode;

/// The stats of every function, with their names and execution models.
#[derive(Clone, Default)]
pub struct StatsBook {
    entries: Vec<(Arc<str>, Mode, Arc<FunctionStats>)>,
}

impl StatsBook {
    /// Adds `function`'s stats; returns them for the parts of the pipeline that record.
    pub fn add(&mut self, function: &str, mode: Mode) -> Arc<FunctionStats> {
        let stats = Arc::new(FunctionStats::default());
        self.entries.push((function.into(), mode, stats.clone()));
        stats
    }

    /// A snapshot of every function, in configuration order.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.entries
            .iter()
            .map(|(name, mode, s)| s.snapshot(name, mode.as_str()))
            .collect()
    }

    /// Every function: its name, model and stats.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Mode, &Arc<FunctionStats>)> {
        self.entries.iter().map(|(n, m, s)| (&**n, *m, s))
    }

    /// The stats of `function`, if it is in the book.
    pub fn get(&self, function: &str) -> Option<&Arc<FunctionStats>> {
        self.entries
            .iter()
            .find(|(name, _, _)| &**name == function)
            .map(|(_, _, s)| s)
    }

    /// Publishes every function's snapshot as one retained JSON array every `every`, until
    /// `stop`. A connection backlog that stays full for a whole interval skips a report.
    pub async fn publish_every(
        self,
        publisher: Arc<crate::publisher::Publisher>,
        topic: String,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let body = serde_json::to_vec(&self.snapshots()).unwrap_or_default();
            let qos = rumqttc::QoS::AtMostOnce;
            let sent = publisher.publish(topic.clone(), qos, true, body, None);
            if tokio::time::timeout(every, sent).await.is_err() {
                tracing::debug!("stats not published: connection backlog full");
            }
        }
    }

    /// Logs one line of totals per function.
    pub fn log_totals(&self) {
        for s in self.snapshots() {
            tracing::info!(
                function = %s.function,
                mode = %s.mode,
                received = s.received,
                succeeded = s.succeeded,
                restarts = s.restarts,
                failed = ?s.failed,
                e2e_p50_us = s.end_to_end_us.p50,
                e2e_p99_us = s.end_to_end_us.p99,
                instantiate_p50_us = s.instantiate_us.p50,
                execute_p50_us = s.execute_us.p50,
                cpu_total_us = s.cpu_total_us,
                peak_memory_bytes = s.peak_memory_bytes,
                "function totals"
            );
        }
    }
}

//! Reports of what each function has done and cost: a retained JSON object on the stats
//! topic every `agent.stats_interval_secs` ([`Report`], one of the [`crate::messages`],
//! `schema_version` 2: cumulative figures since start-up and rates over the last
//! interval), and one log line per function at shutdown. The comparison report and the metrics endpoint read the same [`Snapshot`]s.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::{FunctionStats, Percentiles, Probe, Snapshot};
use crate::config::Mode;
use crate::messages::Message as _;
pub use crate::messages::stats::{FunctionReport, ProcessFigures, Rates, Report};

/// The version of the stats topic's message ([`Report::SCHEMA_VERSION`]).
pub const STATS_SCHEMA_VERSION: u32 = Report::SCHEMA_VERSION;

/// One function in the book: its name, model and stats.
pub type Entry = (Arc<str>, Mode, Arc<FunctionStats>);

/// The stats of every running function, with their names and execution models. Clones
/// share one book: a function that a reload adds or removes comes or goes for every
/// reader (the reporter, the metrics endpoint).
#[derive(Clone, Default)]
pub struct StatsBook {
    entries: Arc<RwLock<Vec<Entry>>>,
    state_disk: Arc<OnceLock<Probe>>,
    state_flushes: Arc<OnceLock<Probe>>,
    outputs_dropped: Arc<OnceLock<Probe>>,
    round_trip: Arc<OnceLock<RoundTripProbe>>,
}

/// Reads the broker's round trip (None until measured).
pub type RoundTripProbe = Box<dyn Fn() -> Option<std::time::Duration> + Send + Sync>;

/// The figures a report is compared with to make rates.
struct Mark {
    at: Instant,
    process_cpu: f64,
    functions: Vec<(Snapshot, Histogram<u64>)>,
}

/// Makes [`Report`]s, each with rates since the one before.
pub struct Reporter {
    book: StatsBook,
    agent: String,
    last: Mark,
}

fn failed_total(s: &Snapshot) -> u64 {
    s.failed.iter().map(|(_, n)| n).sum()
}

fn cold_starts(s: &Snapshot) -> u64 {
    s.instantiate_us.count + s.load_us.count
}

impl Reporter {
    /// A reporter whose first interval starts now.
    pub fn new(book: StatsBook, agent: &str) -> Self {
        let last = book.mark();
        Self {
            book,
            agent: agent.to_string(),
            last,
        }
    }

    /// The report now; the next one's interval starts here.
    pub fn report(&mut self) -> Report {
        let now = self.book.mark();
        let secs = now.at.duration_since(self.last.at).as_secs_f64().max(1e-3);
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let functions = now
            .functions
            .iter()
            .map(|(s, h)| {
                // By name: functions come and go with reloads. One that is new since the
                // last report counts from zero.
                let was = self
                    .last
                    .functions
                    .iter()
                    .find(|(w, _)| w.function == s.function);
                let mut interval = h.clone();
                if let Some((_, h0)) = was {
                    let _ = interval.subtract(h0);
                }
                let since = |f: fn(&Snapshot) -> u64| per_sec(f(s), was.map_or(0, |(w, _)| f(w)));
                FunctionReport {
                    rates: Rates {
                        events_per_sec: since(|s| s.received),
                        errors_per_sec: since(failed_total),
                        cold_starts_per_sec: since(cold_starts),
                        cpu_percent: since(|s| s.cpu_total_us) / 1e4,
                        end_to_end_us: Percentiles::of(&interval),
                    },
                    totals: s.clone(),
                }
            })
            .collect();
        let pid = std::process::id();
        let report = Report {
            schema_version: STATS_SCHEMA_VERSION,
            agent: self.agent.clone(),
            ts_ms: crate::clock::now_ms(),
            interval_secs: secs,
            process: ProcessFigures {
                rss_bytes: crate::clock::process_status_bytes(pid, "VmRSS").unwrap_or(0),
                cpu_seconds: now.process_cpu,
                cpu_percent: (now.process_cpu - self.last.process_cpu).max(0.0) / secs * 100.0,
            },
            state_disk_bytes: self.book.state_disk_bytes(),
            state_flushes: self.book.state_flushes(),
            outputs_dropped: self.book.outputs_dropped(),
            broker_round_trip_ms: self.book.round_trip().map(|d| d.as_secs_f64() * 1000.0),
            functions,
        };
        self.last = now;
        report
    }
}

impl StatsBook {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `function`'s stats; returns them for the parts of the pipeline that record.
    pub fn add(&self, function: &str, mode: Mode) -> Arc<FunctionStats> {
        let stats = Arc::new(FunctionStats::default());
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.push((function.into(), mode, stats.clone()));
        stats
    }

    /// Puts the functions in the order of `names` (the config's), those not named last: a
    /// reload that removed a function and added it again (a rename and back) listed it
    /// last in the stats and `top` until 2026-12-08, where the docs say config order.
    pub fn order(&self, names: &[&str]) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.sort_by_key(|(name, _, _)| {
            names
                .iter()
                .position(|n| **n == **name)
                .unwrap_or(usize::MAX)
        });
    }

    /// Takes `function` out of the book (a reload removed it).
    pub fn remove(&self, function: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(name, _, _)| &**name != function);
    }

    /// Reads the state store's size on disk with `probe`.
    pub fn probe_state_disk(&self, probe: Probe) {
        let _ = self.state_disk.set(probe);
    }

    /// Bytes the state store takes on disk (0 before it is probed).
    pub fn state_disk_bytes(&self) -> u64 {
        self.state_disk.get().map_or(0, |p| p())
    }

    /// Counts the state store's flushes with `probe`.
    pub fn probe_state_flushes(&self, probe: Probe) {
        let _ = self.state_flushes.set(probe);
    }

    /// The state store's flushes (each one fdatasync) since start-up (0 before it is
    /// probed).
    pub fn state_flushes(&self) -> u64 {
        self.state_flushes.get().map_or(0, |p| p())
    }

    /// Counts with `probe` the messages not sent because the broker will not take them.
    pub fn probe_outputs_dropped(&self, probe: Probe) {
        let _ = self.outputs_dropped.set(probe);
    }

    /// Messages not sent because the broker will not take them, since start-up (0 before
    /// it is probed).
    pub fn outputs_dropped(&self) -> u64 {
        self.outputs_dropped.get().map_or(0, |p| p())
    }

    /// Reads the broker's round trip with `probe`.
    pub fn probe_round_trip(&self, probe: RoundTripProbe) {
        let _ = self.round_trip.set(probe);
    }

    /// The broker's round trip, once measured.
    pub fn round_trip(&self) -> Option<std::time::Duration> {
        self.round_trip.get().and_then(|p| p())
    }

    fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            process_cpu: crate::clock::process_cpu_seconds(std::process::id()).unwrap_or(0.0),
            functions: self
                .read()
                .iter()
                .map(|(name, mode, s)| (s.snapshot(name, mode.as_str()), s.end_to_end()))
                .collect(),
        }
    }

    /// A snapshot of every function, in configuration order (those a reload added last).
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.read()
            .iter()
            .map(|(name, mode, s)| s.snapshot(name, mode.as_str()))
            .collect()
    }

    /// Every function: its name, model and stats.
    pub fn entries(&self) -> Vec<Entry> {
        self.read().clone()
    }

    /// The stats of `function`, if it is in the book.
    pub fn get(&self, function: &str) -> Option<Arc<FunctionStats>> {
        self.read()
            .iter()
            .find(|(name, _, _)| &**name == function)
            .map(|(_, _, s)| s.clone())
    }

    /// Publishes a retained [`Report`] every `every`, until
    /// `stop`. A connection backlog that stays full for a whole interval skips a report.
    pub async fn publish_every(
        self,
        agent: String,
        publisher: Arc<crate::mqtt::publisher::Publisher>,
        topic: String,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut reporter = Reporter::new(self, &agent);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let body = reporter.report().to_bytes();
            let qos = rumqttc::QoS::AtMostOnce;
            let sent = publisher.publish(topic.clone(), qos, true, body, None, None);
            if tokio::time::timeout(every, sent).await.is_err() {
                tracing::debug!("stats not published: connection backlog full");
            }
        }
    }

    /// Logs one line of totals per function (or only `function`'s).
    pub fn log_totals(&self, function: Option<&str>) {
        let all = self.snapshots();
        for s in all
            .into_iter()
            .filter(|s| function.is_none_or(|f| f == s.function))
        {
            tracing::info!(
                function = %s.function,
                mode = %s.mode,
                received = s.received,
                succeeded = s.succeeded,
                restarts = s.restarts,
                replayed = s.replayed,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureKind;
    use crate::metrics::CallCost;

    #[test]
    fn rates_cover_only_the_last_interval() {
        let book = StatsBook::default();
        let f = book.add("f", Mode::OnDemand);
        let event = |f: &FunctionStats, ms: u64| {
            f.received();
            let cost = CallCost {
                instantiate: Duration::from_micros(30),
                cpu: Duration::from_millis(1),
                ..CallCost::default()
            };
            f.succeeded(Duration::from_millis(ms), cost);
        };
        let mut reporter = Reporter::new(book.clone(), "a");
        for _ in 0..10 {
            event(&f, 100);
        }
        std::thread::sleep(Duration::from_millis(50));
        let first = reporter.report();
        assert_eq!(first.schema_version, STATS_SCHEMA_VERSION);
        assert_eq!(first.functions[0].rates.end_to_end_us.count, 10);
        for _ in 0..4 {
            event(&f, 2);
        }
        f.received();
        f.failed(FailureKind::Timeout);
        std::thread::sleep(Duration::from_millis(50));
        let second = reporter.report();
        let (r, secs) = (&second.functions[0].rates, second.interval_secs);
        assert!((r.events_per_sec * secs - 5.0).abs() < 1e-6, "{r:?}");
        assert!((r.errors_per_sec * secs - 1.0).abs() < 1e-6, "{r:?}");
        assert!((r.cold_starts_per_sec * secs - 4.0).abs() < 1e-6, "{r:?}");
        // 4 ms of CPU over the interval, as a percentage of one core.
        assert!((r.cpu_percent * secs - 0.4).abs() < 1e-6, "{r:?}");
        // Only the interval's four 2 ms events, not the 100 ms ones before.
        assert_eq!(r.end_to_end_us.count, 4);
        assert!(r.end_to_end_us.max < 3_000, "{r:?}");
        // The totals still count from start-up.
        assert_eq!(second.functions[0].totals.end_to_end_us.count, 14);
        let json = serde_json::to_value(&second).unwrap_or_default();
        assert_eq!(json["functions"][0]["received"], 15, "{json}");
        assert!(json["functions"][0]["rates"]["events_per_sec"].is_number());
    }

    #[test]
    fn functions_added_and_removed_between_reports_are_matched_by_name() {
        let book = StatsBook::default();
        let a = book.add("a", Mode::OnDemand);
        let mut reporter = Reporter::new(book.clone(), "agent");
        a.received();
        let _ = reporter.report();
        // A reload removes `a` and adds `b`, which has had 3 events since.
        book.remove("a");
        let b = book.add("b", Mode::Persistent);
        for _ in 0..3 {
            b.received();
        }
        std::thread::sleep(Duration::from_millis(20));
        let report = reporter.report();
        assert_eq!(report.functions.len(), 1);
        let f = &report.functions[0];
        assert_eq!(f.totals.function, "b");
        let counted = f.rates.events_per_sec * report.interval_secs;
        assert!((counted - 3.0).abs() < 1e-6, "{f:?}");
        assert!(book.get("a").is_none() && book.get("b").is_some());
    }

    #[test]
    fn a_function_added_again_takes_its_place_in_the_config_order() {
        let book = StatsBook::default();
        for f in ["a", "b", "c"] {
            book.add(f, Mode::OnDemand);
        }
        book.remove("a");
        book.add("a", Mode::OnDemand);
        book.order(&["a", "b", "c"]);
        let names: Vec<String> = book.snapshots().into_iter().map(|s| s.function).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}

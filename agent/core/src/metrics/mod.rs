//! What each function costs, recorded where it happens: counters, and HDR histograms of
//! end-to-end latency (MQTT receive to outputs handed to the connection), instantiation
//! (the cold start an on-demand event pays), execution, and CPU time per call (the thread
//! CPU clock around the call, which runs on one thread). [`report`] logs snapshots at
//! shutdown and publishes them every `agent.stats_interval_secs` on
//! `<topic_prefix>/<id>/stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::failure::FailureKind;
pub use crate::messages::stats::{Percentiles, Snapshot};

pub mod report;

/// Histograms of one function, in microseconds.
struct Latencies {
    end_to_end: Histogram<u64>,
    instantiate: Histogram<u64>,
    load: Histogram<u64>,
    queue: Histogram<u64>,
    commit: Histogram<u64>,
    execute: Histogram<u64>,
    cpu: Histogram<u64>,
    cpu_total_us: u64,
    peak_memory: usize,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min with 2 significant digits: exact to 1 µs up to 255 µs, within 1%
    // above. Each is 24 KiB, all of it resident from the start (hdrhistogram writes its
    // zeros); with 3 digits each was 168 KiB, and a function's seven were 1.2 MB of an idle
    // device's RSS (docs/device-build.md). The bounds are valid constants.
    Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| unreachable!())
}

/// A figure read when it is reported rather than recorded as it changes (a queue's length,
/// a namespace's keys).
pub type Probe = Box<dyn Fn() -> u64 + Send + Sync>;

/// Reads the SHA-256 of the module version in force (it changes with a hot reload).
pub type ModuleProbe = Box<dyn Fn() -> std::sync::Arc<str> + Send + Sync>;

/// Reads an auto function's controller (`mode = "auto"`).
pub type AutoProbe = Box<dyn Fn() -> crate::messages::stats::AutoReport + Send + Sync>;

/// Reads a function's shadow (`[function.shadow]`).
pub type ShadowProbe = Box<dyn Fn() -> Option<crate::messages::ShadowReport> + Send + Sync>;

/// Event counters and cost histograms of one function.
pub struct FunctionStats {
    received: AtomicU64,
    queue_depth: OnceLock<Probe>,
    state_keys: OnceLock<Probe>,
    module: OnceLock<ModuleProbe>,
    auto: OnceLock<AutoProbe>,
    shadow: OnceLock<ShadowProbe>,
    succeeded: AtomicU64,
    restarts: AtomicU64,
    stopped: AtomicU64,
    replayed: AtomicU64,
    failed: [AtomicU64; FailureKind::ALL.len()],
    latencies: Mutex<Latencies>,
}

impl Default for FunctionStats {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            queue_depth: OnceLock::new(),
            state_keys: OnceLock::new(),
            module: OnceLock::new(),
            auto: OnceLock::new(),
            shadow: OnceLock::new(),
            succeeded: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            failed: Default::default(),
            latencies: Mutex::new(Latencies {
                end_to_end: histogram(),
                instantiate: histogram(),
                load: histogram(),
                queue: histogram(),
                commit: histogram(),
                execute: histogram(),
                cpu: histogram(),
                cpu_total_us: 0,
                peak_memory: 0,
            }),
        }
    }
}

/// One call's costs, as measured by the runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallCost {
    /// Creating the instance (zero for a warm persistent instance).
    pub instantiate: Duration,
    /// The handler call.
    pub execute: Duration,
    /// CPU time of instantiation plus the call.
    pub cpu: Duration,
    /// `cpu` was not read for this call but is the last call's read on its thread (calls
    /// under [`crate::clock::CALL_CPU_SPACING`] apart): it counts in the totals, not in the
    /// percentiles of a call's CPU.
    pub cpu_estimated: bool,
    /// Largest linear memory reached, bytes.
    pub peak_memory: usize,
    /// Loading the module again after a scale to zero (a full cold start).
    pub load: Option<Duration>,
    /// Waiting for its turn: in the function's queue before the call, and during it for
    /// its turn to publish (`publish_rate`).
    pub queue: Duration,
    /// After a call that wrote state: waiting for the flush that makes it durable.
    pub commit: Option<Duration>,
}

impl Latencies {
    /// What any call spent, succeeded or failed: its instance (a cold start), a reload
    /// after a scale to zero, its CPU and its memory.
    fn spent(&mut self, cost: &CallCost) {
        if !cost.instantiate.is_zero() {
            self.instantiate.saturating_record(us(cost.instantiate));
        }
        if let Some(load) = cost.load {
            self.load.saturating_record(us(load));
        }
        self.cpu_total_us += us(cost.cpu);
        self.peak_memory = self.peak_memory.max(cost.peak_memory);
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl FunctionStats {
    /// An event was routed to the function.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was handled successfully, `end_to_end` after it was received.
    pub fn succeeded(&self, end_to_end: Duration, cost: CallCost) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        l.end_to_end.saturating_record(us(end_to_end));
        l.spent(&cost);
        l.queue.saturating_record(us(cost.queue));
        if let Some(commit) = cost.commit {
            l.commit.saturating_record(us(commit));
        }
        l.execute.saturating_record(us(cost.execute));
        if !cost.cpu_estimated {
            l.cpu.saturating_record(us(cost.cpu));
        }
    }

    /// What a failed call cost before it failed: its instance (on demand, a cold start
    /// like any other) and its CPU and memory, which count in the totals. The latency
    /// percentiles stay those of the events handled. Until 2026-12-08 a failed call cost
    /// nothing here: a function looping to its timeout on every event showed no CPU and
    /// no cold starts (a probe, 2026-12-07).
    pub fn failed_call(&self, cost: &CallCost) {
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        l.spent(cost);
    }

    /// Reads the function's queue depth (events waiting, all its queues) with `probe`.
    pub fn probe_queue_depth(&self, probe: Probe) {
        let _ = self.queue_depth.set(probe);
    }

    /// Reads the function's stored state keys with `probe`.
    pub fn probe_state_keys(&self, probe: Probe) {
        let _ = self.state_keys.set(probe);
    }

    /// Reads the function's module hash with `probe`.
    pub fn probe_module(&self, probe: ModuleProbe) {
        let _ = self.module.set(probe);
    }

    /// Reads the function's auto controller with `probe`.
    pub fn probe_auto(&self, probe: AutoProbe) {
        let _ = self.auto.set(probe);
    }

    /// Reads the function's shadow with `probe`.
    pub fn probe_shadow(&self, probe: ShadowProbe) {
        let _ = self.shadow.set(probe);
    }

    /// Events routed to the function so far.
    pub fn received_count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The SHA-256 of the function's module in force, once probed.
    pub fn module_sha256(&self) -> Option<std::sync::Arc<str>> {
        self.module.get().map(|p| p())
    }

    /// A copy of the end-to-end histogram (µs), to take differences between reports.
    pub fn end_to_end(&self) -> Histogram<u64> {
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        l.end_to_end.clone()
    }

    /// A persistent instance was restarted.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A persistent instance was stopped by its restart policy (`true`), or started again
    /// (`false`).
    pub fn instance_stopped(&self, stopped: bool) {
        if stopped {
            self.stopped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stopped.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A redelivered message was already handled (its receipt is in the store, or this
    /// run finished it), so the function was not called again.
    pub fn replayed(&self) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// Events handled so far: succeeded, and failed of any kind.
    pub fn outcomes(&self) -> (u64, u64) {
        let failed = self.failed.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        (self.succeeded.load(Ordering::Relaxed), failed)
    }

    /// An event failed with `kind`.
    pub fn failed(&self, kind: FailureKind) {
        self.failed[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `f` with each latency histogram (µs) by phase: `queue`, `instantiate`,
    /// `execute`, `commit`, `end_to_end`, and `load` (full cold starts).
    pub fn histograms(&self, mut f: impl FnMut(&'static str, &Histogram<u64>)) {
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        f("queue", &l.queue);
        f("instantiate", &l.instantiate);
        f("execute", &l.execute);
        f("commit", &l.commit);
        f("end_to_end", &l.end_to_end);
        f("load", &l.load);
    }

    /// A snapshot for reports.
    pub fn snapshot(&self, function: &str, mode: &str) -> Snapshot {
        let read = |probe: &OnceLock<Probe>| probe.get().map_or(0, |p| p());
        let (queue_depth, state_keys) = (read(&self.queue_depth), read(&self.state_keys));
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            function: function.to_string(),
            mode: mode.to_string(),
            received: self.received.load(Ordering::Relaxed),
            queue_depth,
            state_keys,
            module_sha256: self.module_sha256().map(|s| s.to_string()),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            stopped_instances: self.stopped.load(Ordering::Relaxed),
            failed: FailureKind::ALL
                .iter()
                .zip(&self.failed)
                .map(|(k, n)| (k.as_str().to_string(), n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            end_to_end_us: Percentiles::of(&l.end_to_end),
            instantiate_us: Percentiles::of(&l.instantiate),
            load_us: Percentiles::of(&l.load),
            execute_us: Percentiles::of(&l.execute),
            queue_us: Percentiles::of(&l.queue),
            commit_us: Percentiles::of(&l.commit),
            cpu_us: Percentiles::of(&l.cpu),
            cpu_total_us: l.cpu_total_us,
            peak_memory_bytes: l.peak_memory,
            auto: self.auto.get().map(|p| p()),
            shadow: self.shadow_report(),
        }
    }

    /// The function's shadow report, if it has a shadow.
    pub fn shadow_report(&self) -> Option<crate::messages::ShadowReport> {
        self.shadow.get().and_then(|p| p())
    }
}

// Here rather than beside the type: the message module stays free of histograms.
impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_percentiles_and_failures() {
        let s = FunctionStats::default();
        for ms in 1..=100 {
            s.received();
            let cost = CallCost {
                instantiate: Duration::from_micros(10),
                execute: Duration::from_millis(ms),
                cpu: Duration::from_millis(ms),
                // Every other call's CPU not read but counted at its thread's last read.
                cpu_estimated: ms % 2 == 0,
                peak_memory: 1 << 20,
                // Every tenth event after a scale to zero.
                load: (ms % 10 == 0).then_some(Duration::from_millis(2)),
                queue: Duration::from_micros(ms),
                commit: None,
            };
            s.succeeded(Duration::from_millis(ms), cost);
        }
        s.failed(FailureKind::Timeout);
        let snap = s.snapshot("f", "on-demand");
        assert_eq!((snap.received, snap.succeeded), (100, 100));
        assert_eq!(snap.load_us.count, 10);
        // Two significant digits: within 1% (2000 reads as its bucket's top, 2007).
        assert!(
            (2000..=2020).contains(&snap.load_us.p50),
            "{:?}",
            snap.load_us
        );
        assert_eq!(snap.failed, vec![("timeout".to_string(), 1)]);
        assert_eq!(snap.end_to_end_us.count, 100);
        assert!(
            (49_000..=51_000).contains(&snap.end_to_end_us.p50),
            "{:?}",
            snap.end_to_end_us
        );
        assert!(snap.end_to_end_us.p99 >= 98_000);
        // The calls whose CPU was read make its percentiles; every call counts in its total.
        assert_eq!(snap.cpu_us.count, 50);
        assert_eq!(snap.cpu_total_us, (1..=100).sum::<u64>() * 1000);
        assert_eq!(snap.peak_memory_bytes, 1 << 20);
    }
}

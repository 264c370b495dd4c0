//! Shadow runs (`[function.shadow]`): a second version of a function sees the primary's
//! events (every one, or the topics a hash picks for `fraction`) after the primary has
//! handled them, and its outputs are compared with the primary's, never published unless
//! `publish_to` says where.
//!
//! - The primary is never slowed: it hands each event and its result over with a
//!   `try_send` into the shadow's own bounded queue; when the queue is full the event is
//!   skipped and counted. The shadow has one worker thread of its own, at the lowest
//!   priority (nice 19), and it uses at most `max_cpu_percent` of a core: past it, it
//!   pauses and the events meanwhile are skipped. On a busy machine a low priority alone
//!   did not keep a trapping shadow from taking 17% of the function's rate.
//! - The shadow's state is a namespace of its own (`<name>~shadow`), a copy of the
//!   primary's made once the shadow is in place: it sees realistic state and can never
//!   change the primary's.
//! - The comparison understands JSON (key order ignored, numbers compared as numbers,
//!   `ignore` paths left out), and the noise is calibrated the Diffy way: the first
//!   `calibrate_events` events also run the primary again (`<name>~control`, its own state
//!   copy too), and the output paths that differ between the primary and itself are left
//!   out of every comparison, the ones before the calibration ended included.
//! - The report (counts, the ratio with the noise subtracted, each side's cost on the
//!   same events) goes into the stats message, `/metrics` and `top`; the last mismatches,
//!   in full, are retained on `<prefix>/<id>/shadow/<function>` with the report, for
//!   `edge-agent shadow report`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::runtime::Handle;

use super::output::Output;
use super::{Shared, guest_event, spawn_worker};
use crate::config::{CanaryConfig, Mode, ShadowConfig};
use crate::event::{Inbound, Outbound};
use crate::messages::Message as _;
use crate::messages::shadow::{
    CanaryReport, CanaryStep, ShadowMessage, ShadowMismatch, ShadowNoise, ShadowOutput,
    ShadowReport, ShadowResult, ShadowSide,
};
use crate::metrics::CallCost;
use crate::runtime::{CallError, CallOutcome, GuestEvent, Instance, LoadedFunction};

/// What one side did with an event: its outputs, or its failure's kind and message.
type Outcome = Result<Vec<Outbound>, (String, String)>;

/// An event on its way to the shadow, with what the primary did with it.
struct Pair {
    event: GuestEvent,
    primary: Outcome,
    cost: Option<CallCost>,
    /// The primary's commit of its writes, if it wrote ([`CallOutcome::committed`]).
    seq: Option<u64>,
    /// When the primary handed it over.
    handed: std::time::Instant,
    /// Events skipped before it was handed over: if some were skipped after the shadow's
    /// state was last copied from the function's, a stateful shadow's state misses their
    /// writes.
    skips_before: u64,
}

/// How long after the primary's call the shadow's call on the same event starts: midway
/// between the primary's calls (half the smoothed gap between the events handed over),
/// from [`HOLD_MIN`] to [`HOLD_MAX`]. Right after the primary's call, the shadow ran on
/// caches that call had just warmed and read about a third of its CPU per event (`echo`
/// against itself on demand, 100 events/s: 27 against 79 µs); held back a fixed 3 ms, a
/// persistent shadow still read about a quarter low, since the primary's call came 7 ms
/// after the shadow's last one and the shadow's 3 ms after the primary's. Midway, each side
/// runs as long after the other as the other after it (docs/benchmarks.md, issue 27).
/// Events that waited in the queue that long already are not held: it delays the shadow,
/// never its throughput.
#[derive(Debug, Default)]
struct Hold {
    last: Option<std::time::Instant>,
    /// The gap between the events handed over, smoothed over about eight.
    gap: Option<Duration>,
}

/// The shortest hold: the shadow never runs on the caches of the primary's call.
const HOLD_MIN: Duration = Duration::from_millis(3);
/// The longest: past it the caches are as cold as they get, and the shadow's results
/// should not lag a slow stream by seconds.
const HOLD_MAX: Duration = Duration::from_millis(50);

impl Hold {
    /// How long after `handed` (when the primary handed it over) the next event's shadow
    /// call starts.
    fn after(&mut self, handed: std::time::Instant) -> Duration {
        if let Some(last) = self.last.replace(handed) {
            let g = handed.saturating_duration_since(last);
            self.gap = Some(self.gap.map_or(g, |avg| (avg * 7 + g) / 8));
        }
        self.gap
            .map_or(HOLD_MIN, |g| g / 2)
            .clamp(HOLD_MIN, HOLD_MAX)
    }
}

/// A function's shadow, as its primary's workers hold it. The shadow's worker ends once
/// every holder is gone (the function removed or the agent stopped).
pub struct Shadow {
    tx: SyncSender<Pair>,
    core: Arc<Core>,
    /// The worker, done once it has seen the shadow retired.
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the shadow's worker, its holders and its report share.
struct Core {
    function: Arc<str>,
    cfg: ShadowConfig,
    model: Mode,
    candidate: Arc<LoadedFunction>,
    /// `ignore`, parsed once.
    ignore: Vec<Vec<String>>,
    skipped: AtomicU64,
    /// Events handed over whose comparison (or skip) is not done yet.
    queued: AtomicU64,
    /// Events not compared because the copy of the function's state that a stateful
    /// shadow started again from already held their writes (reported as skipped).
    in_copy: AtomicU64,
    /// `[function.shadow.canary]`.
    canary: Option<Canary>,
    /// Something to report since the last report went out.
    changed: AtomicBool,
    /// Taken out or replaced (by a reload): its report stops.
    retired: AtomicBool,
    /// In its slot, to be handed events: a stateful shadow's state is copied then.
    placed: AtomicBool,
    book: Mutex<Book>,
}

/// The shadow's parts as the lane hands them over.
pub struct Parts {
    /// The primary's name.
    pub function: String,
    /// `[function.shadow]`.
    pub cfg: ShadowConfig,
    /// The shadow's model.
    pub model: Mode,
    /// The shadow, loaded as `<name>~shadow` with its state namespace.
    pub candidate: Arc<LoadedFunction>,
    /// The primary again, `<name>~control`, for the noise calibration.
    pub control: Option<(Arc<LoadedFunction>, Mode)>,
    /// The primary (a canary's share changing renews its persistent instances).
    pub primary: Arc<LoadedFunction>,
    /// The shadow's version as a canary, `<name>~canary`, on the primary's state.
    pub canary: Option<Arc<LoadedFunction>>,
    /// Where the report and the mismatches are retained.
    pub report_topic: String,
    /// The agent's id (in the retained message).
    pub agent: String,
}

impl Shadow {
    /// The SHA-256 of the shadow's module version.
    pub fn version(&self) -> Arc<str> {
        self.core.candidate.sha256()
    }

    /// Starts the shadow's worker and its report.
    ///
    /// # Errors
    /// Its worker thread could not be started.
    pub fn start(parts: Parts, shared: &Shared) -> std::io::Result<Arc<Self>> {
        let Parts {
            function,
            cfg,
            model,
            candidate,
            control,
            primary,
            canary,
            report_topic,
            agent,
        } = parts;
        // A stateful shadow that skipped events starts again from this once it has caught up.
        let primary_state = primary.state().cloned();
        let canary = canary
            .zip(cfg.canary.clone())
            .map(|(function, cfg)| Canary::new(function, primary, cfg));
        let (tx, rx) = sync_channel(cfg.queue_capacity);
        let book = Book::new(cfg.keep_mismatches, control.is_none());
        let core = Arc::new(Core {
            function: function.as_str().into(),
            ignore: cfg.ignore.iter().map(|p| segments(p)).collect(),
            book: Mutex::new(book),
            cfg,
            model,
            candidate,
            skipped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            in_copy: AtomicU64::new(0),
            canary,
            changed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            placed: AtomicBool::new(false),
        });
        if let Some(c) = &core.canary {
            tracing::info!(function = %function, weight = c.weight(), "canary started: a share of the topics goes to the shadow's version, its outputs published");
            shared.background.spawn_until_stopped(steer(
                Arc::downgrade(&core),
                Duration::from_secs_f64(c.cfg.interval_secs),
            ));
        }
        let (c, output) = (core.clone(), shared.output.clone());
        let worker = spawn_worker(format!("{function}~shadow"), move |rt| {
            work(&rt, &c, &rx, control, &output, primary_state.as_ref());
        })?;
        shared.background.spawn_until_stopped(publish_reports(
            Arc::downgrade(&core),
            shared.output.clone(),
            report_topic,
            agent,
        ));
        tracing::info!(function = %function, model = model.as_str(), sha256 = %core.candidate.sha256(),
            fraction = core.cfg.fraction, "shadow started: outputs compared, not published");
        Ok(Arc::new(Self {
            tx,
            core,
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// Hands `event`, which the primary handled with `result`, to the shadow if its topic
    /// is mirrored; never waits (a full queue skips it).
    pub fn offer(&self, event: &Inbound, result: &Result<CallOutcome, CallError>) {
        if !mirrored(&event.topic, self.core.cfg.fraction) || self.canary(&event.topic).is_some() {
            return;
        }
        // A copy of a message whose first copy committed (a redelivery): its effects are the
        // first copy's, which the shadow was handed; run again, it would count twice in the
        // shadow's state, and compare its outputs with the none this copy had.
        if result.as_ref().is_ok_and(|o| o.duplicate) {
            return;
        }
        let (primary, cost, seq) = match result {
            Ok(o) => (Ok(o.outbox.clone()), Some(o.cost), o.committed),
            Err(e) => (
                Err((e.kind.as_str().to_string(), e.message.clone())),
                None,
                None,
            ),
        };
        let pair = Pair {
            event: guest_event(event),
            primary,
            cost,
            seq,
            handed: std::time::Instant::now(),
            skips_before: self.core.skipped.load(Ordering::Acquire),
        };
        // Counted before the worker can take it, so that it never reads below zero.
        self.core.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(pair) {
            self.core.queued.fetch_sub(1, Ordering::AcqRel);
            self.core.skipped.fetch_add(1, Ordering::Relaxed);
            self.core.changed.store(true, Ordering::Relaxed);
        }
    }

    /// The report now.
    pub fn report(&self) -> ShadowReport {
        self.core.report()
    }

    /// The canary's version if `topic` is in its share now.
    pub fn canary(&self, topic: &str) -> Option<&Arc<LoadedFunction>> {
        let c = self.core.canary.as_ref()?;
        let w = c.weight();
        (w > 0.0 && mirrored(topic, w)).then_some(&c.function)
    }

    /// The canary handled an event with `result` (a failure then runs on the primary).
    pub fn canary_done(&self, result: &Result<CallOutcome, CallError>) {
        if let Some(c) = &self.core.canary {
            c.done(result);
            self.core.changed.store(true, Ordering::Relaxed);
        }
    }
}

/// A canary: a share of the live topics that the shadow's version handles as the
/// function, raised step by step while it holds up and rolled back when it does not.
struct Canary {
    function: Arc<LoadedFunction>,
    primary: Arc<LoadedFunction>,
    cfg: CanaryConfig,
    /// The share now, as `f64` bits.
    weight: AtomicU64,
    book: Mutex<CanaryBook>,
}

#[derive(Default)]
struct CanaryBook {
    events: u64,
    failed: BTreeMap<String, u64>,
    interval_events: u64,
    interval_failures: u64,
    /// The shadow's matches and mismatches at the last analysis.
    last: (u64, u64),
    status: &'static str,
    steps: VecDeque<CanaryStep>,
}

/// Steps a canary report keeps.
const CANARY_STEPS: usize = 50;

impl Canary {
    fn new(function: Arc<LoadedFunction>, primary: Arc<LoadedFunction>, cfg: CanaryConfig) -> Self {
        Self {
            weight: AtomicU64::new(cfg.weight.to_bits()),
            book: Mutex::new(CanaryBook {
                status: "progressing",
                ..CanaryBook::default()
            }),
            function,
            primary,
            cfg,
        }
    }

    fn weight(&self) -> f64 {
        f64::from_bits(self.weight.load(Ordering::Acquire))
    }

    fn book(&self) -> std::sync::MutexGuard<'_, CanaryBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, result: &Result<CallOutcome, CallError>) {
        let mut b = self.book();
        b.events += 1;
        b.interval_events += 1;
        if let Err(e) = result {
            *b.failed.entry(e.kind.as_str().to_string()).or_default() += 1;
            b.interval_failures += 1;
        }
    }

    /// One analysis interval is over: raise the share, roll back, or hold.
    fn analyse(&self, function: &str, shadow: (u64, u64)) {
        let cfg = &self.cfg;
        let mut b = self.book();
        let (events, failures) = (b.interval_events, b.interval_failures);
        (b.interval_events, b.interval_failures) = (0, 0);
        let (matches, mismatches) = (shadow.0 - b.last.0, shadow.1 - b.last.1);
        b.last = shadow;
        let mismatch_ratio =
            (matches + mismatches > 0).then(|| mismatches as f64 / (matches + mismatches) as f64);
        if b.status == "rolled-back" {
            return;
        }
        let weight = self.weight();
        let Some((action, next)) = decide(cfg, weight, events, failures, mismatch_ratio) else {
            tracing::debug!(function, weight, events, failures, "canary: held");
            return;
        };
        self.weight.store(next.to_bits(), Ordering::Release);
        // Topics moved between the versions: persistent instances start afresh.
        self.primary.renew();
        b.status = match action {
            "rolled-back" => "rolled-back",
            _ if next >= cfg.max_weight => "at-max-weight",
            _ => "progressing",
        };
        if action == "rolled-back" {
            tracing::warn!(function, events, failures, ?mismatch_ratio,
                max_failure_ratio = cfg.max_failure_ratio, max_mismatch_ratio = ?cfg.max_mismatch_ratio,
                "canary: rolled back, every topic on the primary again");
        } else {
            tracing::info!(
                function,
                weight = next,
                events,
                failures,
                ?mismatch_ratio,
                status = b.status,
                "canary: share raised"
            );
        }
        if b.steps.len() == CANARY_STEPS {
            b.steps.pop_front();
        }
        b.steps.push_back(CanaryStep {
            ts_ms: crate::clock::now_ms(),
            action: action.to_string(),
            weight: next,
            events,
            failures,
            mismatch_ratio,
        });
    }

    fn report(&self) -> CanaryReport {
        let b = self.book();
        CanaryReport {
            weight: self.weight(),
            status: b.status.to_string(),
            events: b.events,
            failed: b.failed.iter().map(|(k, n)| (k.clone(), *n)).collect(),
            steps: b.steps.iter().cloned().collect(),
        }
    }
}

/// What one analysis does with a canary at `weight` that handled `events` in the
/// interval, `failures` of them failed, while the shadow saw `mismatch_ratio` on the
/// other topics: roll back (to 0) when out of bounds, raise by a step when within them
/// on enough events, or hold (`None`).
fn decide(
    cfg: &CanaryConfig,
    weight: f64,
    events: u64,
    failures: u64,
    mismatch_ratio: Option<f64>,
) -> Option<(&'static str, f64)> {
    // Fewer events than `min_events` count as that many: one failure among three
    // events is not a third.
    let counted = events.max(cfg.min_events) as f64;
    let failing = failures as f64 > cfg.max_failure_ratio * counted;
    let differing = cfg
        .max_mismatch_ratio
        .zip(mismatch_ratio)
        .is_some_and(|(max, r)| r > max);
    if failing || differing {
        Some(("rolled-back", 0.0))
    } else if events >= cfg.min_events && weight < cfg.max_weight {
        Some(("raised", (weight + cfg.step).min(cfg.max_weight)))
    } else {
        None
    }
}

/// Analyses the canary every `interval`; ends with the shadow.
async fn steer(core: Weak<Core>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.retired.load(Ordering::Relaxed) {
            return;
        }
        let (matches, mismatches, _, _) = core.book().counts();
        if let Some(c) = &core.canary {
            c.analyse(&core.function, (matches, mismatches));
            core.changed.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.core.retired.store(true, Ordering::Relaxed);
    }
}

/// A function's shadow as its workers see it: none, or one that a reload puts in or
/// replaces. Clones share it.
#[derive(Clone, Default)]
pub struct Slot(Arc<std::sync::RwLock<Option<Arc<Shadow>>>>);

impl Slot {
    fn get(&self) -> std::sync::RwLockReadGuard<'_, Option<Arc<Shadow>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `event` and the primary's `result` to the shadow, if there is one.
    pub fn offer(&self, event: &Inbound, result: &Result<CallOutcome, CallError>) {
        if let Some(s) = self.get().as_ref() {
            s.offer(event, result);
        }
    }

    /// The shadow, if there is one.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.get().clone()
    }

    /// The shadow's report, if there is a shadow.
    pub fn report(&self) -> Option<ShadowReport> {
        self.get().as_ref().map(|s| s.report())
    }

    /// Puts `shadow` in (or none) and returns the one before: its worker ends once it
    /// is dropped (after the event it is on).
    pub fn replace(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        let placed = shadow.clone();
        let before = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|p| p.into_inner()),
            shadow,
        );
        if let Some(s) = placed {
            s.core.placed.store(true, Ordering::Release);
        }
        before
    }

    /// Takes the shadow out and returns its worker, which ends after the call it is on
    /// (the events still queued for it are dropped): the stop sequence waits for it, so
    /// that nothing of the agent (its state store) outlives the stop.
    pub fn retire(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shadow = self.replace(None)?;
        shadow.core.retired.store(true, Ordering::Relaxed);
        let worker = shadow
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(shadow);
        worker
    }
}

/// Whether `topic` is among the `fraction` of topics mirrored: a hash of the topic, so
/// that a topic's events all go to the shadow or none do (its state sees them all).
fn mirrored(topic: &str, fraction: f64) -> bool {
    fraction >= 1.0 || f64::from(crc32fast::hash(topic.as_bytes())) < fraction * 4_294_967_296.0
}

/// Runs one side: on demand, or on a long-lived instance made again after a failure.
struct Runner {
    function: Arc<LoadedFunction>,
    persistent: bool,
    live: Option<Instance>,
}

impl Runner {
    fn new(function: Arc<LoadedFunction>, model: Mode) -> Self {
        Self {
            function,
            persistent: model == Mode::Persistent,
            live: None,
        }
    }

    fn run(&mut self, event: &GuestEvent) -> (Outcome, Option<CallCost>) {
        let result = if self.persistent {
            match self
                .live
                .take()
                .map_or_else(|| self.function.instantiate(), Ok)
            {
                Ok(i) => {
                    let (result, back) = i.call(event, None);
                    self.live = back;
                    result
                }
                Err(e) => Err(e),
            }
        } else {
            self.function.call_on_demand(event, None)
        };
        match result {
            Ok(o) => (Ok(o.outbox), Some(o.cost)),
            Err(e) => (Err((e.kind.as_str().to_string(), e.message)), None),
        }
    }
}

/// The shadow thread's CPU allowance: `share` of one core, with at most a second's worth
/// saved up (a token bucket counted in CPU seconds).
struct Allowance {
    share: f64,
    /// CPU seconds the thread may still use now; below zero, what it owes.
    left: f64,
    last: std::time::Instant,
}

impl Allowance {
    fn new(percent: f64) -> Self {
        let share = (percent / 100.0).clamp(1e-6, 1.0);
        Self {
            share,
            left: share,
            last: std::time::Instant::now(),
        }
    }

    /// Counts `cpu` used since the last call; returns how long the thread must pause to
    /// be back within its share (zero if it is).
    fn spend(&mut self, cpu: Duration) -> Duration {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.share;
        self.last = now;
        self.left = (self.left + earned).min(self.share) - cpu.as_secs_f64();
        if self.left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.left / self.share)
        }
    }
}

fn work(
    rt: &Handle,
    core: &Core,
    rx: &Receiver<Pair>,
    control: Option<(Arc<LoadedFunction>, Mode)>,
    output: &Output,
    primary_state: Option<&Arc<crate::state::Namespace>>,
) {
    if !lowest_priority() {
        tracing::debug!(function = %core.function, "shadow: its thread could not be given the lowest priority; it competes for CPU with the function");
    }
    let mut shadow = Runner::new(core.candidate.clone(), core.model);
    let mut control = control.map(|(f, m)| Runner::new(f, m));
    let mut allowance = Allowance::new(core.cfg.max_cpu_percent);
    let mut cpu = crate::clock::thread_cpu_time();
    // Skips covered by the last copy of the function's state (none at the start: the
    // shadow starts from a copy). A stateful shadow skips the events handed over after
    // later skips (their comparisons would show its drift, not its version) until it has
    // caught up and copied the function's state again.
    let mut synced = 0;
    let mut copy = StateCopy::default();
    // A stateful shadow starts from a copy of the function's state made once it is in
    // place: an event the function commits before the copy is in it, and one it commits
    // after is handed over. (Copied before, the events committed between the copy and the
    // shadow's placing were in neither, and the shadow's state lagged for good: a counter
    // added a shadow by a reload under a stream mismatched on every event.)
    if let Some(from) = primary_state {
        while !core.placed.load(Ordering::Acquire) {
            if core.retired.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        copy.make(core, from, &mut shadow, control.as_mut());
    }
    let mut hold = Hold::default();
    loop {
        let pair = match rx.try_recv() {
            Ok(pair) => pair,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                // Caught up after skipping events: a stateful shadow missed their writes,
                // so it starts again from the primary's state as it is now.
                let skips = core.skipped.load(Ordering::Acquire);
                if (skips != synced || !copy.in_step()) && copy.may_retry() {
                    synced = skips;
                    if let Some(from) = primary_state {
                        copy.make(core, from, &mut shadow, control.as_mut());
                    }
                }
                match rx.recv() {
                    Ok(pair) => pair,
                    Err(_) => return,
                }
            }
        };
        // Whichever way this event ends, it is no longer queued then.
        let _done = Dequeued(&core.queued);
        if core.retired.load(Ordering::Relaxed) {
            return;
        }
        // Committed before the copy was made, handed over after: replayed on the copy it
        // would count twice in the shadow's state.
        if pair.seq.is_some_and(|seq| seq <= copy.copied) {
            core.in_copy.fetch_add(1, Ordering::Relaxed);
            core.changed.store(true, Ordering::Relaxed);
            continue;
        }
        if primary_state.is_some() && (pair.skips_before > synced || !copy.in_step()) {
            core.skipped.fetch_add(1, Ordering::Release);
            core.changed.store(true, Ordering::Relaxed);
            continue;
        }
        // Over its CPU share (the last events were costly): pause, and let the events
        // meanwhile be skipped (its queue fills), rather than take the function's CPU.
        let now = crate::clock::thread_cpu_time();
        let pause = allowance.spend(now.saturating_sub(cpu));
        cpu = now;
        let until = std::time::Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            // In slices, so that a stop or a reload never waits out a long pause.
            if core.retired.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        let wait = hold
            .after(pair.handed)
            .saturating_sub(pair.handed.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if let Some(c) = &mut control {
            let (again, _) = c.run(&pair.event);
            let paths = core.differences(&pair.primary, &again);
            if core.book().calibrated(paths, core.cfg.calibrate_events) {
                control = None;
                tracing::info!(function = %core.function, noisy = ?core.book().noisy,
                    "shadow: noise calibrated (the primary against itself)");
            }
        }
        let (result, cost) = shadow.run(&pair.event);
        if let (Some(prefix), Ok(outputs)) = (&core.cfg.publish_to, &result) {
            for o in outputs {
                let msg = Outbound {
                    topic: format!("{prefix}/{}", o.topic),
                    ..o.clone()
                };
                if !rt.block_on(output.publish_unheld(msg)) {
                    return;
                }
            }
        }
        let paths = core.differences(&pair.primary, &result);
        let mut book = core.book();
        book.primary.record(&pair.primary, pair.cost.as_ref());
        book.shadow.record(&result, cost.as_ref());
        let judged = Judged {
            failed: result.is_err() && pair.primary.is_ok(),
            detail: (!paths.is_empty()).then(|| ShadowMismatch {
                ts_ms: crate::clock::now_ms(),
                topic: pair.event.topic.clone(),
                payload: String::from_utf8_lossy(&pair.event.payload).into_owned(),
                paths: paths.iter().cloned().collect(),
                primary: shown(&pair.primary),
                shadow: shown(&result),
            }),
            paths,
        };
        book.judge(judged);
        core.changed.store(true, Ordering::Relaxed);
    }
}

/// How long after a failed copy of the function's state the next is tried.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// A stateful shadow's copy of the function's state.
#[derive(Default)]
struct StateCopy {
    /// How many of the primary's commits the last copy holds: their events are in the
    /// shadow's state already, and are not run on it again.
    copied: u64,
    /// The last copy failed (the store could not be read or written): the events are
    /// skipped, not compared on a state that is not the function's, and the copy is tried
    /// again at a catch-up from this time on.
    failed_until: Option<std::time::Instant>,
}

impl StateCopy {
    fn make(
        &mut self,
        core: &Core,
        from: &Arc<crate::state::Namespace>,
        shadow: &mut Runner,
        control: Option<&mut Runner>,
    ) {
        match resync(core, from, shadow, control) {
            Some(seq) => (self.copied, self.failed_until) = (seq, None),
            None => self.failed_until = Some(std::time::Instant::now() + RESYNC_RETRY),
        }
    }

    fn in_step(&self) -> bool {
        self.failed_until.is_none()
    }

    fn may_retry(&self) -> bool {
        self.failed_until
            .is_none_or(|t| std::time::Instant::now() >= t)
    }
}

/// Takes an event off the shadow's `queued` count when dropped: once it has been compared
/// or skipped (or the shadow is retired on it).
struct Dequeued<'a>(&'a AtomicU64);

impl Drop for Dequeued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Copies the primary's state into the shadow's namespace (and the calibration's), and
/// drops their persistent instances, whose memory may hold the state they drifted to
/// (at the start, and after skipped events once the shadow has caught up).
/// Returns how many of the primary's commits the copy holds: the primary goes on
/// meanwhile, and the events it committed before the copy but hands over after must not
/// run on the shadow again. `None` if the state could not be read or written.
fn resync(
    core: &Core,
    from: &Arc<crate::state::Namespace>,
    shadow: &mut Runner,
    control: Option<&mut Runner>,
) -> Option<u64> {
    let failed = |e: &crate::state::StateError| {
        tracing::warn!(function = %core.function, error = %crate::failure::chain(e),
            "shadow: its state could not be copied from the function's; its events are skipped until a copy is made");
    };
    let (keys, seq) = from.snapshot().map_err(|e| failed(&e)).ok()?;
    for runner in std::iter::once(shadow).chain(control) {
        let Some(ns) = runner.function.state() else {
            continue;
        };
        // Its instance's memory may hold the state it drifted to, or a half-made copy.
        runner.live = None;
        if let Err(e) = ns.replace(&keys) {
            failed(&e);
            return None;
        }
    }
    tracing::debug!(function = %core.function, seq, "shadow: state copied from the function's");
    Some(seq)
}

/// Gives the calling thread the lowest priority (nice 19): where it competes for a core
/// with the function (or anything else), it gets a sliver of it, so that the shadow falls
/// behind and skips events rather than slow them; it still moves on a busy machine
/// (unlike `SCHED_IDLE`, which can starve it for as long as the machine is busy).
/// Whether it could.
fn lowest_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments; setpriority changes the nice value of the
        // thread it names (on Linux the nice value is per thread), this one.
        #[allow(unsafe_code)]
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Publishes the report and the kept mismatches, retained, at most once a second while
/// something changed; ends with the shadow.
async fn publish_reports(core: Weak<Core>, output: Output, topic: String, agent: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.retired.load(Ordering::Relaxed) {
            return;
        }
        if !core.changed.swap(false, Ordering::Relaxed) {
            continue;
        }
        let msg = ShadowMessage {
            schema_version: ShadowMessage::SCHEMA_VERSION,
            agent: agent.clone(),
            function: core.function.to_string(),
            ts_ms: crate::clock::now_ms(),
            report: core.report(),
            mismatches: core.book().mismatches(),
        };
        drop(core);
        let out = Outbound {
            topic: topic.clone(),
            payload: msg.to_bytes(),
            qos: 1,
            retain: true,
        };
        if !output.publish_unheld(out).await {
            return;
        }
    }
}

fn shown(o: &Outcome) -> ShadowResult {
    match o {
        Ok(outputs) => ShadowResult::Ok {
            outputs: outputs
                .iter()
                .map(|o| ShadowOutput {
                    topic: o.topic.clone(),
                    payload: String::from_utf8_lossy(&o.payload).into_owned(),
                    qos: o.qos,
                    retain: o.retain,
                })
                .collect(),
        },
        Err((kind, message)) => ShadowResult::Failed {
            kind: kind.clone(),
            message: message.clone(),
        },
    }
}

impl Core {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where two results differ, `ignore` paths left out.
    fn differences(&self, a: &Outcome, b: &Outcome) -> BTreeSet<String> {
        let mut paths = differences(a, b);
        paths.retain(|p| !self.ignore.iter().any(|i| covers(i, p)));
        paths
    }

    fn report(&self) -> ShadowReport {
        let b = self.book();
        let ratio = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
        let (matches, mismatches, raw, shadow_failed) = b.counts();
        let compared = matches + mismatches;
        ShadowReport {
            module_sha256: self.candidate.sha256().to_string(),
            model: self.model.as_str().to_string(),
            fraction: self.cfg.fraction,
            matches,
            mismatches,
            shadow_failed,
            skipped: self.skipped.load(Ordering::Relaxed) + self.in_copy.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Acquire),
            mismatch_ratio: ratio(mismatches, compared),
            raw_mismatch_ratio: ratio(raw, compared),
            noise: ShadowNoise {
                calibrated: b.noise_runs,
                of: self.cfg.calibrate_events,
                ratio: ratio(b.noise_diffs, b.noise_runs),
                paths: b.noisy.iter().cloned().collect(),
            },
            primary: b.primary.report(),
            shadow: b.shadow.report(),
            canary: self.canary.as_ref().map(Canary::report),
        }
    }
}

/// An event compared: where the two differed (before the noise is known), and, when they
/// did, the mismatch in full. Until the calibration ends, events wait to be judged (the
/// report judges them meanwhile with the noise known so far).
struct Judged {
    paths: BTreeSet<String>,
    /// The shadow failed where the primary did not.
    failed: bool,
    detail: Option<ShadowMismatch>,
}

#[derive(Default)]
struct Book {
    matches: u64,
    mismatches: u64,
    /// Mismatches with the noisy paths counted.
    raw_mismatches: u64,
    shadow_failed: u64,
    noise_runs: u64,
    noise_diffs: u64,
    /// Output paths that differed between the primary and itself, array indices as `*`.
    noisy: BTreeSet<String>,
    /// Whether the calibration is over (or there is none): until then, events wait in
    /// `pending` to be judged with the noise known.
    calibrated: bool,
    pending: Vec<Judged>,
    primary: Side,
    shadow: Side,
    kept: VecDeque<ShadowMismatch>,
    /// How many mismatches `kept` holds at most.
    keep: usize,
}

impl Book {
    /// One calibration run differed from the primary at `paths`; whether that was the last
    /// of `of`.
    fn calibrated(&mut self, paths: BTreeSet<String>, of: u64) -> bool {
        self.noise_runs += 1;
        if !paths.is_empty() {
            self.noise_diffs += 1;
        }
        self.noisy.extend(paths.iter().map(|p| generalised(p)));
        let done = self.noise_runs >= of;
        if done {
            self.calibrated = true;
            for j in std::mem::take(&mut self.pending) {
                self.count(j);
            }
        }
        done
    }

    fn new(keep: usize, calibrated: bool) -> Self {
        Self {
            keep,
            calibrated,
            ..Self::default()
        }
    }

    fn judge(&mut self, judged: Judged) {
        if self.calibrated {
            self.count(judged);
        } else {
            self.pending.push(judged);
        }
    }

    /// What `judged` counts as with the noise known so far, and the paths that are not
    /// noise.
    fn classify(&self, judged: &Judged) -> (Verdict, Vec<String>) {
        let real: Vec<String> = judged
            .paths
            .iter()
            .filter(|p| !self.noisy.iter().any(|n| covers(&segments(n), p)))
            .cloned()
            .collect();
        let verdict = if judged.failed {
            Verdict::ShadowFailed
        } else if real.is_empty() {
            Verdict::Match
        } else {
            Verdict::Mismatch
        };
        (verdict, real)
    }

    fn count(&mut self, judged: Judged) {
        let (verdict, real) = self.classify(&judged);
        match verdict {
            Verdict::ShadowFailed => self.shadow_failed += 1,
            Verdict::Match => self.matches += 1,
            Verdict::Mismatch => self.mismatches += 1,
        }
        if !judged.failed && !judged.paths.is_empty() {
            self.raw_mismatches += 1;
        }
        if let Some(mut d) = judged.detail
            && verdict != Verdict::Match
            && self.keep > 0
        {
            if verdict == Verdict::Mismatch {
                d.paths = real;
            }
            if self.kept.len() == self.keep {
                self.kept.pop_front();
            }
            self.kept.push_back(d);
        }
    }

    /// The last mismatches kept, oldest first, those of the events still waiting for the
    /// calibration to end judged with the noise known so far.
    fn mismatches(&self) -> Vec<ShadowMismatch> {
        let waiting = self.pending.iter().filter_map(|j| {
            let (verdict, real) = self.classify(j);
            let mut d = j.detail.clone()?;
            match verdict {
                Verdict::Match => return None,
                Verdict::Mismatch => d.paths = real,
                Verdict::ShadowFailed => {}
            }
            Some(d)
        });
        let all: Vec<ShadowMismatch> = self.kept.iter().cloned().chain(waiting).collect();
        all[all.len().saturating_sub(self.keep)..].to_vec()
    }

    /// The counts (matches, mismatches, raw mismatches, shadow failed), the events still
    /// waiting for the calibration to end judged with the noise known so far.
    fn counts(&self) -> (u64, u64, u64, u64) {
        let mut n = (
            self.matches,
            self.mismatches,
            self.raw_mismatches,
            self.shadow_failed,
        );
        for j in &self.pending {
            match self.classify(j).0 {
                Verdict::ShadowFailed => n.3 += 1,
                Verdict::Match => n.0 += 1,
                Verdict::Mismatch => n.1 += 1,
            }
            if !j.failed && !j.paths.is_empty() {
                n.2 += 1;
            }
        }
        n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Match,
    Mismatch,
    ShadowFailed,
}

/// One side's cost on the mirrored events.
struct Side {
    events: u64,
    ok: u64,
    cpu_us: u64,
    /// CPU of a call whose CPU was read, µs.
    cpu: Histogram<u64>,
    peak_memory: u64,
    /// Call time, µs.
    latency: Histogram<u64>,
    failed: BTreeMap<String, u64>,
}

impl Default for Side {
    fn default() -> Self {
        Self {
            events: 0,
            ok: 0,
            cpu_us: 0,
            cpu: micros(),
            peak_memory: 0,
            latency: micros(),
            failed: BTreeMap::new(),
        }
    }
}

/// 1 µs to an hour, two significant digits.
fn micros() -> Histogram<u64> {
    // The bounds are valid.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| unreachable!())
}

impl Side {
    fn record(&mut self, outcome: &Outcome, cost: Option<&CallCost>) {
        self.events += 1;
        if let Err((kind, _)) = outcome {
            *self.failed.entry(kind.clone()).or_default() += 1;
        }
        if let Some(c) = cost {
            self.ok += 1;
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            self.cpu_us += us(c.cpu);
            if !c.cpu_estimated {
                self.cpu.saturating_record(us(c.cpu).max(1));
            }
            self.peak_memory = self.peak_memory.max(c.peak_memory as u64);
            let call = c.instantiate + c.execute + c.load.unwrap_or_default();
            self.latency.saturating_record(us(call).max(1));
        }
    }

    fn report(&self) -> ShadowSide {
        ShadowSide {
            events: self.events,
            cpu_us_per_event: (self.ok > 0).then(|| self.cpu_us as f64 / self.ok as f64),
            cpu_us_p50: (!self.cpu.is_empty()).then(|| self.cpu.value_at_quantile(0.5)),
            peak_memory_bytes: self.peak_memory,
            latency_p50_us: self.latency.value_at_quantile(0.5),
            latency_p99_us: self.latency.value_at_quantile(0.99),
            failed: self.failed.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        }
    }
}

/// Where two results differ: `$result` (one failed, or they failed differently),
/// `$count` (how many outputs), and per output `$topic`, `$qos`, `$retain`, and the
/// payload: its JSON paths when both are JSON (`value`, `readings.0.at`; `$` for the
/// whole value), `$payload` otherwise.
fn differences(a: &Outcome, b: &Outcome) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    match (a, b) {
        (Ok(x), Ok(y)) if x.len() != y.len() => {
            paths.insert("$count".to_string());
        }
        (Ok(x), Ok(y)) => {
            for (o, p) in x.iter().zip(y) {
                if o.topic != p.topic {
                    paths.insert("$topic".into());
                }
                if o.qos != p.qos {
                    paths.insert("$qos".into());
                }
                if o.retain != p.retain {
                    paths.insert("$retain".into());
                }
                if o.payload == p.payload {
                    continue;
                }
                match (
                    serde_json::from_slice::<Value>(&o.payload),
                    serde_json::from_slice::<Value>(&p.payload),
                ) {
                    (Ok(v), Ok(w)) => json_differences(&v, &w, &mut Vec::new(), &mut paths),
                    _ => {
                        paths.insert("$payload".into());
                    }
                }
            }
        }
        (Err((k, _)), Err((l, _))) if k == l => {}
        _ => {
            paths.insert("$result".into());
        }
    }
    paths
}

/// The paths where two JSON values differ: key order ignored, numbers compared as numbers
/// (`1` and `1.0` are equal), arrays element by element (one of another length differs as
/// a whole).
fn json_differences(a: &Value, b: &Value, at: &mut Vec<String>, out: &mut BTreeSet<String>) {
    let here = |at: &[String]| {
        if at.is_empty() {
            "$".to_string()
        } else {
            at.join(".")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                at.push(k.clone());
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => json_differences(v, w, at, out),
                    _ => {
                        out.insert(here(at));
                    }
                }
                at.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                at.push(i.to_string());
                json_differences(v, w, at, out);
                at.pop();
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            };
            if !same {
                out.insert(here(at));
            }
        }
        _ => {
            if a != b {
                out.insert(here(at));
            }
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

/// Whether `pattern` (segments, `*` for any one) is `path` or one of its parents.
fn covers(pattern: &[String], path: &str) -> bool {
    let path: Vec<&str> = path.split('.').collect();
    pattern.len() <= path.len() && pattern.iter().zip(&path).all(|(p, s)| p == "*" || p == s)
}

/// `path` with its array indices as `*`: a timestamp in every element of a list is one
/// noisy path, not one per element.
fn generalised(path: &str) -> String {
    path.split('.')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod allowance_tests {
    use super::{Allowance, Duration, HOLD_MAX, HOLD_MIN, Hold};

    #[test]
    fn the_shadow_runs_midway_between_the_primarys_calls() {
        let ms = Duration::from_millis;
        let mut hold = Hold::default();
        let mut at = std::time::Instant::now();
        assert_eq!(hold.after(at), HOLD_MIN, "no gap known yet");
        for _ in 0..50 {
            at += ms(10);
            hold.after(at);
        }
        at += ms(10);
        assert_eq!(hold.after(at), ms(5), "events 10 ms apart: 5 ms after each");
        // A burst: the gap shrinks within a few events, never below the minimum.
        for _ in 0..30 {
            at += ms(1);
            hold.after(at);
        }
        assert_eq!(hold.after(at + ms(1)), HOLD_MIN);
        // A slow stream: never more than the maximum.
        for _ in 0..30 {
            at += ms(1000);
            hold.after(at);
        }
        assert_eq!(hold.after(at + ms(1000)), HOLD_MAX);
    }

    #[test]
    fn the_shadow_pauses_for_what_it_used_over_its_share() {
        let mut a = Allowance::new(10.0);
        assert_eq!(
            a.spend(Duration::from_millis(50)),
            Duration::ZERO,
            "within the saved 100 ms"
        );
        let pause = a.spend(Duration::from_millis(150));
        assert!(
            (Duration::from_millis(950)..=Duration::from_millis(1000)).contains(&pause),
            "100 ms over at 10% of a core is a second's pause, not {pause:?}"
        );
        // Nothing saved beyond a second's worth, however long it idled.
        let mut a = Allowance::new(10.0);
        a.last -= Duration::from_secs(60);
        assert!(a.spend(Duration::from_millis(300)) >= Duration::from_millis(1900));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(topic: &str, payload: &str) -> Outbound {
        Outbound {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos: 1,
            retain: false,
        }
    }

    fn diff(a: &str, b: &str) -> Vec<String> {
        differences(&Ok(vec![out("t", a)]), &Ok(vec![out("t", b)]))
            .into_iter()
            .collect()
    }

    #[test]
    fn json_outputs_compare_as_values() {
        // Key order and number forms do not matter.
        assert!(diff(r#"{"a":1,"b":[1,2]}"#, r#"{"b":[1.0,2],"a":1.0}"#).is_empty());
        assert_eq!(diff(r#"{"a":1,"b":2}"#, r#"{"a":1,"b":3}"#), ["b"]);
        assert_eq!(
            diff(r#"{"a":{"t":1}}"#, r#"{"a":{"t":2,"x":0}}"#),
            ["a.t", "a.x"]
        );
        assert_eq!(
            diff(r#"[{"at":1},{"at":2}]"#, r#"[{"at":1},{"at":3}]"#),
            ["1.at"]
        );
        assert_eq!(diff("[1,2]", "[1,2,3]"), ["$"]);
        // Large integers exactly, not through f64.
        assert_eq!(
            diff("9007199254740993", "9007199254740992"),
            ["$"],
            "integers past 2^53"
        );
        assert_eq!(diff("hot", "cold"), ["$payload"]);
        assert!(diff("same", "same").is_empty());
    }

    #[test]
    fn counts_topics_and_failures_are_differences_too() {
        let two = Ok(vec![out("t", "1"), out("t", "2")]);
        assert_eq!(
            differences(&two, &Ok(vec![out("t", "1")]))
                .into_iter()
                .collect::<Vec<_>>(),
            ["$count"]
        );
        assert_eq!(
            differences(&Ok(vec![out("a", "1")]), &Ok(vec![out("b", "1")]))
                .into_iter()
                .collect::<Vec<_>>(),
            ["$topic"]
        );
        let trap: Outcome = Err(("trap".into(), "x".into()));
        assert_eq!(
            differences(&two, &trap).into_iter().collect::<Vec<_>>(),
            ["$result"]
        );
        assert!(differences(&trap, &trap).is_empty());
    }

    #[test]
    fn ignore_patterns_cover_paths_and_their_children() {
        assert!(covers(&segments("ts"), "ts"));
        assert!(covers(&segments("meta"), "meta.time"));
        assert!(covers(&segments("readings.*.at"), "readings.3.at"));
        assert!(!covers(&segments("readings.*.at"), "readings.3.value"));
        assert!(!covers(&segments("meta.time"), "meta"));
        assert_eq!(generalised("readings.12.at"), "readings.*.at");
    }

    fn judged(paths: &[&str]) -> Judged {
        Judged {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            failed: false,
            detail: None,
        }
    }

    #[test]
    fn paths_the_primary_varies_on_are_noise_even_before_the_calibration_ends() {
        let mut b = Book::new(5, false);
        // Two events compared while calibrating: one differs only in `ts`, one in `value`.
        b.judge(judged(&["ts"]));
        b.judge(judged(&["ts", "value"]));
        assert_eq!(
            b.matches + b.mismatches,
            0,
            "judged once the noise is known"
        );
        // The primary against itself differs in `ts` (its timestamp) in both runs.
        assert!(!b.calibrated(["ts".to_string()].into(), 2));
        assert!(b.calibrated(["ts".to_string()].into(), 2));
        assert_eq!((b.matches, b.mismatches, b.raw_mismatches), (1, 1, 2));
        b.judge(judged(&[]));
        b.judge(judged(&["ts"]));
        assert_eq!((b.matches, b.mismatches), (3, 1));
        assert_eq!((b.noise_runs, b.noise_diffs), (2, 2));
    }

    #[test]
    fn a_canary_is_raised_within_bounds_and_rolled_back_outside_them() {
        let cfg = CanaryConfig {
            max_mismatch_ratio: Some(0.05),
            ..CanaryConfig::default()
        };
        // Flagger's steps: 0.1, 0.2, ... up to max_weight, then held.
        assert_eq!(decide(&cfg, 0.1, 100, 0, None), Some(("raised", 0.2)));
        assert_eq!(
            decide(&cfg, 0.45, 100, 1, Some(0.01)),
            Some(("raised", 0.5))
        );
        assert_eq!(decide(&cfg, 0.5, 100, 0, None), None);
        // Too few events to raise on.
        assert_eq!(decide(&cfg, 0.1, 9, 0, None), None);
        // 5% failing against a bound of 1%, or one failure among few events.
        assert_eq!(decide(&cfg, 0.3, 100, 5, None), Some(("rolled-back", 0.0)));
        assert_eq!(decide(&cfg, 0.3, 3, 1, None), Some(("rolled-back", 0.0)));
        // The shadow's mismatches on the other topics.
        assert_eq!(
            decide(&cfg, 0.3, 100, 0, Some(0.1)),
            Some(("rolled-back", 0.0))
        );
    }

    #[test]
    fn topics_are_mirrored_by_hash_near_the_fraction() {
        let n = 10_000;
        let hit = (0..n)
            .filter(|i| mirrored(&format!("sensors/{i}/t"), 0.25))
            .count();
        assert!((2_300..2_700).contains(&hit), "{hit} of {n}");
        assert!(mirrored("any", 1.0));
    }
}

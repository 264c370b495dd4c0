//! A loaded function and one on-demand call of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use super::GuestEvent;
use super::bindings::{Function as FunctionBindings, FunctionPre};
use super::engine::EpochTicker;
use super::host::{FunctionContext, StoreData};
use super::{LoadError, RuntimeError};
use crate::config::{Config, FunctionConfig};
use crate::event::{BrokerLimits, Outbound};
use crate::failure::FailureKind;
use crate::state::{Committed, Namespace, Receipt, StateStore};

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Details for the log and the dead letter.
    pub message: String,
    /// What the call cost before it failed, where it got as far as an instance: a failed
    /// call made its instance and burnt its CPU too (a call looping to its timeout burns
    /// the most), which the function's cold starts and CPU count.
    pub cost: Option<Box<crate::metrics::CallCost>>,
}

/// A successful call: what to publish and what it cost.
pub struct CallOutcome {
    /// Messages to publish, in order.
    pub outbox: Vec<Outbound>,
    /// If the call wrote state: the store and the flush generation that makes it durable
    /// (for a `duplicate`, the other copy's, while it is not on disk yet).
    pub durable: Option<(Arc<StateStore>, u64)>,
    /// If the call's writes were committed: their number among its namespace's commits
    /// ([`Committed::Pending`]), which a shadow's copy of the state is placed by.
    pub committed: Option<u64>,
    /// Another copy of the same message committed its state first: this call's writes and
    /// outputs were dropped (the other copy's stand).
    pub duplicate: bool,
    /// What it cost: instantiation, execution, CPU, memory, a reload of the module and
    /// the queue wait (set by the dispatcher); the commit wait is the pipeline's to add.
    pub cost: crate::metrics::CallCost,
    /// A receipt committed with outputs larger than a finished message's receipt keeps:
    /// its namespace and message, for [`Namespace::settled`] once the message is finished.
    pub large_receipt: Option<(Arc<Namespace>, MessageId)>,
}

/// A QoS 1/2 message on its intake session, as the state store's receipts know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    /// Its packet id.
    pub pkid: u16,
    /// Which delivery of the packet id (see [`Receipt::answers`]).
    pub incarnation: u64,
    /// Receipts of earlier runs may answer for it ([`crate::event::Inbound::from_before`]).
    pub from_before: bool,
    /// [`crate::event::checksum`] of its topic and payload.
    pub checksum: u32,
}

impl CallOutcome {
    /// The outcome of a call whose event waited `queue` before it started (added to the
    /// call's own wait for its turn to publish).
    pub fn queued(mut self, queue: Duration) -> Self {
        self.cost.queue += queue;
        self
    }
}

/// A function ready to run: its component compiled and linked once (again after a scale
/// to zero).
pub struct LoadedFunction {
    name: Arc<str>,
    /// The module and settings in force (replaced as one by a reload).
    current: RwLock<Current>,
    /// Bumped by each reload that replaces the module or its config, so that persistent
    /// instances move to the new version between events.
    generation: AtomicU64,
    /// The linked component; `None` while scaled to zero.
    pre: RwLock<Option<FunctionPre<StoreData>>>,
    /// What loading it again takes.
    engine: Engine,
    linker: Linker<StoreData>,
    /// What a function context takes from the agent: its packet limit and its own topics'
    /// prefix (`<topic_prefix>/`).
    agent_limits: (BrokerLimits, String),
    /// On demand: how long it stays loaded without events (`keep_warm_secs`).
    keep_warm: Option<KeepAlive>,
    /// When a call last started or ended.
    last_used: LastUse,
    deadline_ticks: u64,
    /// Advances the epoch while guest code runs.
    ticker: EpochTicker,
    state: OnceLock<Arc<Namespace>>,
    /// Fuel per call, when the engine counts fuel.
    fuel: Option<u64>,
    /// Where compiled `.wasm` modules are kept between loads ([`Compiled`]).
    cache: Option<Arc<CompileCache>>,
    /// What the file watcher has seen that no reload has read ([`ModuleChanges`]).
    changes: Option<Arc<ModuleChanges>>,
}

/// `keep_warm_secs`, as the function applies it.
enum KeepAlive {
    Fixed(Duration),
    /// `"auto"`: learned from the idle periods so far.
    Learned(Mutex<Histogram<u64>>),
}

/// Idle periods shorter than this are not idle periods for a keep-alive (which is checked
/// at most once a second): a steady stream's gaps would pull the percentile to nothing.
const IDLE_PERIOD_MIN: Duration = Duration::from_secs(1);
/// Idle periods a learned keep-alive needs before it trusts its histogram.
const IDLE_PERIODS_MIN: u64 = 5;
/// The keep-alive until then: the order of the fixed ones of public platforms (Lambda's
/// and Azure Functions' are quoted at 5 to 20 minutes).
const KEEP_ALIVE_DEFAULT: Duration = Duration::from_secs(600);
/// The learned keep-alive's bounds.
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(4 * 3600);

impl KeepAlive {
    fn of(keep: crate::config::KeepWarm) -> Self {
        match keep {
            crate::config::KeepWarm::Secs(n) => Self::Fixed(Duration::from_secs(n)),
            // Milliseconds up to a day, two significant digits; the bounds are valid.
            crate::config::KeepWarm::Auto => Self::Learned(Mutex::new(
                Histogram::new_with_bounds(1, 86_400_000, 2).unwrap_or_else(|_| unreachable!()),
            )),
        }
    }

    /// The keep-alive now: fixed, or the 99th percentile of the idle periods plus 10%.
    fn now(&self) -> Duration {
        match self {
            Self::Fixed(d) => *d,
            Self::Learned(h) => {
                let h = h.lock().unwrap_or_else(|p| p.into_inner());
                if h.len() < IDLE_PERIODS_MIN {
                    return KEEP_ALIVE_DEFAULT;
                }
                Duration::from_millis(h.value_at_quantile(0.99))
                    .mul_f64(1.1)
                    .clamp(IDLE_PERIOD_MIN, KEEP_ALIVE_MAX)
            }
        }
    }

    /// A call starts after `idle` without one.
    fn idle_ended(&self, idle: Duration) {
        if let Self::Learned(h) = self
            && idle >= IDLE_PERIOD_MIN
        {
            let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            h.lock()
                .unwrap_or_else(|p| p.into_inner())
                .saturating_record(ms);
        }
    }
}

/// When a function was last used, on tokio's clock (the real one outside tests), so that a
/// test can let the time pass.
struct LastUse(Mutex<tokio::time::Instant>);

impl LastUse {
    fn now() -> Self {
        Self(Mutex::new(tokio::time::Instant::now()))
    }

    fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    /// How long it has not been used (zero if the lock was poisoned: never released then).
    fn idle(&self) -> Duration {
        self.0.lock().map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// The version of a function in force: its config (module path, `[function.config]`), the
/// context its instances get, and its module's hash.
struct Current {
    cfg: FunctionConfig,
    ctx: Arc<FunctionContext>,
    sha256: Arc<str>,
}

/// A new version of a function, loaded and checked, not yet in force
/// ([`LoadedFunction::prepare`], then [`LoadedFunction::commit`]).
pub struct NextVersion {
    pre: FunctionPre<StoreData>,
    current: Current,
}

impl NextVersion {
    /// The new module's SHA-256 (hex).
    pub fn sha256(&self) -> &str {
        &self.current.sha256
    }
}

fn context(agent_limits: &(BrokerLimits, String), cfg: &FunctionConfig) -> Arc<FunctionContext> {
    Arc::new(FunctionContext {
        name: cfg.name.as_str().into(),
        config: cfg.config.clone(),
        max_publish_bytes: cfg.max_publish_bytes,
        broker_limits: agent_limits.0.clone(),
        reserved_prefix: agent_limits.1.clone(),
        own_filters: if cfg.allow_feedback {
            Vec::new()
        } else {
            cfg.topics.clone()
        },
        publish_bucket: std::sync::Mutex::new(crate::rate::TokenBucket::new(cfg.publish_rate)),
        publish_rate: cfg.publish_rate,
        throttle_said: std::sync::Mutex::new(None),
        memory_limit: usize::try_from(cfg.memory_limit_mb * 1024 * 1024).unwrap_or(usize::MAX),
        timeout_ms: cfg.timeout_ms,
        log: Arc::new(super::stdio::LogLimiter::new(
            cfg.name.as_str().into(),
            cfg.log_rate,
        )),
    })
}

/// A live instance of a function, with its own store. In the persistent model it lives
/// across events; in the on-demand model for one event.
pub struct Instance {
    store: Store<StoreData>,
    bindings: FunctionBindings,
    deadline_ticks: u64,
    ticker: EpochTicker,
    state: Option<Arc<Namespace>>,
    /// The state store's epoch when the instance was made: once the store has been
    /// reopened (commits lost), what it remembers is stale and it may commit no more.
    epoch: u64,
    fuel: Option<u64>,
}

impl LoadedFunction {
    /// Compiles `cfg.module`, links it against the agent's imports and checks that it
    /// exports the handler.
    ///
    /// # Errors
    /// [`RuntimeError::Load`] naming the function.
    pub fn load(
        engine: &Engine,
        linker: &Linker<StoreData>,
        agent_limits: (BrokerLimits, String),
        cfg: &FunctionConfig,
        ticker: &EpochTicker,
        fuel_enabled: bool,
        compiled: &mut Compiled,
    ) -> Result<Self, RuntimeError> {
        let (pre, sha256) =
            link(engine, linker, cfg, compiled).map_err(|source| RuntimeError::Load {
                function: cfg.name.clone(),
                source,
            })?;
        let tick_ms = u64::try_from(ticker.tick().as_millis()).unwrap_or(1).max(1);
        // Round up, plus one tick: the epoch may advance right after the deadline is set.
        let deadline_ticks = cfg.timeout_ms.div_ceil(tick_ms) + 1;
        let ctx = context(&agent_limits, cfg);
        Ok(Self {
            name: cfg.name.as_str().into(),
            current: RwLock::new(Current {
                cfg: cfg.clone(),
                ctx,
                sha256: sha256.into(),
            }),
            generation: AtomicU64::new(0),
            pre: RwLock::new(Some(pre)),
            engine: engine.clone(),
            linker: linker.clone(),
            agent_limits,
            keep_warm: (cfg.mode != crate::config::Mode::Persistent)
                .then_some(cfg.keep_warm_secs)
                .flatten()
                .map(KeepAlive::of),
            last_used: LastUse::now(),
            deadline_ticks,
            ticker: ticker.clone(),
            state: OnceLock::new(),
            fuel: fuel_enabled.then_some(cfg.fuel.unwrap_or(u64::MAX)),
            cache: compiled.cache.clone(),
            changes: compiled.changes.clone(),
        })
    }

    /// A fresh set of compiled components sharing this function's compile cache.
    fn compiled(&self) -> Compiled {
        Compiled {
            components: std::collections::HashMap::new(),
            cache: self.cache.clone(),
            changes: self.changes.clone(),
            only: None,
        }
    }

    /// Gives the function its state namespace (done once, before the first event).
    pub fn attach_state(&self, ns: Arc<Namespace>) {
        let _ = self.state.set(ns);
    }

    /// Its state namespace, once attached.
    pub fn state(&self) -> Option<&Arc<Namespace>> {
        self.state.get()
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether its module imports the state interface (it can write state). Rust
    /// components import it only if they use it; Python and JavaScript ones always do.
    pub fn imports_state(&self) -> bool {
        self.linked().is_ok_and(|(pre, _)| {
            let engine = pre.engine();
            pre.instance_pre()
                .component()
                .component_type()
                .imports(engine)
                .any(|(name, _)| name.starts_with("edge:agent/state"))
        })
    }

    /// SHA-256 of its module file as loaded (hex), for logs and the birth message.
    pub fn sha256(&self) -> Arc<str> {
        self.current().sha256.clone()
    }

    /// The version in force: 0 as loaded at start-up, then one more per reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes persistent instances start afresh from the store at their next event, as
    /// after a reload (a canary's share changed: topics moved between versions, and what
    /// an instance remembers of them is stale).
    pub fn renew(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads `cfg`'s module and checks it as start-up does (links, exports the handler,
    /// starts within its limits), without putting it in force. `None` if neither the
    /// module's content nor `cfg`'s module path, pin or `[function.config]` changed.
    ///
    /// # Errors
    /// [`RuntimeError::Load`] with why the new version cannot be used.
    pub fn prepare(
        &self,
        cfg: &FunctionConfig,
        compiled: &mut Compiled,
    ) -> Result<Option<NextVersion>, RuntimeError> {
        let err = |source: LoadError| RuntimeError::Load {
            function: cfg.name.clone(),
            source,
        };
        // Hash first: an unchanged function is not compiled again.
        let bytes = std::fs::read(&cfg.module).map_err(|source| {
            err(LoadError::Read {
                path: cfg.module.clone(),
                source,
            })
        })?;
        let sha256 = sha256_hex(&bytes);
        let now = self.current();
        if *now.sha256 == sha256
            && now.cfg.module == cfg.module
            && now.cfg.sha256 == cfg.sha256
            && now.cfg.config == cfg.config
        {
            return Ok(None);
        }
        // The same module with another `[function.config]`: the code in memory serves. Each
        // such function read and mapped the module again, its own copy, until 2026-12-08
        // (a probe: after one reload of 20 functions sharing one module, 20 file handles,
        // 80 mappings and RSS +28%); a module loaded anew is shared by the functions of
        // this reload that use it (`compiled`), as at start-up.
        // The pin is checked as a load checks it (a wrong one was taken on this path, a
        // probe found, 2026-12-08).
        if let Some(pinned) = &cfg.sha256
            && !sha256.eq_ignore_ascii_case(pinned)
        {
            return Err(err(LoadError::HashMismatch {
                path: cfg.module.clone(),
                actual: sha256,
                pinned: pinned.clone(),
            }));
        }
        let loaded = (*now.sha256 == sha256)
            .then(|| self.pre.read().ok().and_then(|p| p.clone()))
            .flatten();
        let (pre, sha256) = match loaded {
            Some(pre) => (pre, sha256),
            None => link(&self.engine, &self.linker, cfg, compiled).map_err(err)?,
        };
        let next = NextVersion {
            pre,
            current: Current {
                cfg: cfg.clone(),
                ctx: context(&self.agent_limits, cfg),
                sha256: sha256.into(),
            },
        };
        let probe = self.instantiate_with(&next.pre, &next.current.ctx);
        if let Err(source) = probe {
            return Err(err(LoadError::Start {
                path: cfg.module.clone(),
                source,
            }));
        }
        Ok(Some(next))
    }

    /// Puts `next` in force: calls from now on use it; calls in flight finish on the old
    /// one; persistent instances move over before their next event.
    pub fn commit(&self, next: NextVersion) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut pre = self.pre.write().unwrap_or_else(|p| p.into_inner());
        *pre = Some(next.pre);
        *current = next.current;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// On demand: how long the function stays loaded without events, if it scales to zero.
    /// (`keep_warm_secs = "auto"`: what it has learned so far.)
    pub fn keep_warm(&self) -> Option<Duration> {
        self.keep_warm.as_ref().map(KeepAlive::now)
    }

    /// Whether its module is loaded (not scaled to zero).
    pub fn is_loaded(&self) -> bool {
        self.pre.read().is_ok_and(|p| p.is_some())
    }

    /// Releases the module's compiled code (and with it the pool's memory image of it) if
    /// the function has had no event for `keep_warm_secs`. Calls in flight keep their own
    /// reference; the next event loads it again. Returns whether it released it.
    pub fn release_if_idle(&self) -> bool {
        let Some(keep) = self.keep_warm() else {
            return false;
        };
        // The module's lock first, without waiting: a load in progress holds it (and
        // counts as use when it is done). Judging idleness before waiting for the lock
        // released the module a slow load had just made, so that every event of a
        // Python or JavaScript function compiled it again.
        let Ok(mut slot) = self.pre.try_write() else {
            return false;
        };
        self.last_used.idle() >= keep && slot.take().is_some()
    }

    /// The linked component, loading it again if the function was scaled to zero (and
    /// then how long that took). When the version in force is nowhere to load from (the
    /// file holds another, not in the compile cache) while the file watcher has a change
    /// that no reload has read yet, it waits for that reload: until 2026-12-08 every event
    /// between a module's replacement and its reload (300 ms and the compile) was a dead
    /// letter when the function had scaled to zero (a probe: 50 of 120 with a `.cwasm`).
    fn linked(&self) -> Result<(FunctionPre<StoreData>, Option<Duration>), CallError> {
        let start = Instant::now();
        loop {
            let generation = self.generation();
            match self.load_in_force(start)? {
                Ok(loaded) => return Ok(loaded),
                Err(elsewhere) => {
                    if !self.reload_may_bring_it(start, generation, &elsewhere) {
                        return Err(elsewhere.error);
                    }
                }
            }
        }
    }

    /// Whether a reload may put in force a version that can be loaded: it waits (up to
    /// [`RELOAD_WAIT`]) while the file watcher has a change no reload has read, and, for
    /// a file changed within [`WATCHER_NOTICE`], until the watcher has seen it. `true`
    /// once a reload has changed the function since `generation`, or has read the files
    /// since the wait began (a file written in two steps, or removed and written again,
    /// was read half-way; the reload may find it holds the version in force again).
    fn reload_may_bring_it(&self, since: Instant, generation: u64, e: &Elsewhere) -> bool {
        let Some(changes) = self.changes.as_ref().filter(|c| c.watched()) else {
            return false;
        };
        let reads = changes.reads();
        let changed_at = std::fs::metadata(&e.module)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|age| Instant::now().checked_sub(age).unwrap_or(since));
        loop {
            if self.generation() != generation || changes.reads() != reads {
                return true;
            }
            let now = Instant::now();
            let noticing = changed_at.is_some_and(|t| now < t + WATCHER_NOTICE);
            if now >= since + RELOAD_WAIT || !(changes.pending() || noticing) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`LoadedFunction::linked`]'s one try: loaded (and how long that took, if it was
    /// loaded again), or why not with the file that holds another version.
    #[allow(clippy::type_complexity)]
    fn load_in_force(
        &self,
        start: Instant,
    ) -> Result<Result<(FunctionPre<StoreData>, Option<Duration>), Elsewhere>, CallError> {
        let poisoned = || CallError {
            kind: FailureKind::Instantiate,
            message: "the function's module lock was poisoned by a panic".into(),
            cost: None,
        };
        if let Some(pre) = self.pre.read().map_err(|_| poisoned())?.as_ref() {
            return Ok(Ok((pre.clone(), None)));
        }
        let mut slot = self.pre.write().map_err(|_| poisoned())?;
        if let Some(pre) = slot.as_ref() {
            // Another worker loaded it meanwhile.
            return Ok(Ok((pre.clone(), None)));
        }
        let (cfg, in_force) = {
            let now = self.current();
            (now.cfg.clone(), now.sha256.clone())
        };
        let failed = |message: String| CallError {
            kind: FailureKind::Instantiate,
            message: format!("loading the module again after a scale to zero: {message}"),
            cost: None,
        };
        // The version in force, not whatever the file holds now: until 2026-12-08 a module
        // file replaced while the function was unloaded (a reload that refused it, or no
        // reload at all with `watch = false`) ran from the next event, silently (a probe).
        // From the compile cache by its SHA-256 where it is there; else from the file, if
        // that is still the version in force.
        #[cfg(feature = "compiler")]
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.engine, &in_force));
        #[cfg(not(feature = "compiler"))]
        let cached: Option<Component> = None;
        let loaded = match cached {
            Some(component) => prepared(&self.linker, &component, &cfg.module),
            None => {
                // Only the version in force: another is refused before it is compiled
                // (until 2026-12-08 each event compiled it first, seconds for JavaScript).
                let mut compiled = self.compiled();
                compiled.only = Some(in_force.clone());
                link(&self.engine, &self.linker, &cfg, &mut compiled).map(|(pre, _)| pre)
            }
        };
        // A file that holds another version, is being written or is gone: a reload may
        // be coming ([`LoadedFunction::reload_may_bring_it`]).
        let pre = match loaded {
            Ok(pre) => pre,
            Err(e) => {
                return Ok(Err(Elsewhere {
                    error: failed(e.to_string()),
                    module: cfg.module.clone(),
                }));
            }
        };
        *slot = Some(pre.clone());
        // Loaded counts as used: a load slower than keep_warm_secs (compiling a Python or
        // JavaScript .wasm takes seconds to minutes) must not be released before the
        // events waiting for it run, or every event would compile it again.
        self.touch();
        Ok(Ok((pre, Some(start.elapsed()))))
    }

    /// Counts as a use for the keep-alive (a call that did not go through
    /// [`LoadedFunction::call_on_demand`]: an auto function's persistent instance).
    pub(crate) fn touch(&self) {
        self.last_used.touch();
    }

    /// Creates an instance: a fresh store with a memory limiter and a deadline.
    ///
    /// # Errors
    /// [`CallError`] of kind `instantiate` (or `memory-limit` etc. if start-up trapped).
    pub fn instantiate(&self) -> Result<Instance, CallError> {
        let (pre, _) = self.linked()?;
        self.instantiate_from(&pre)
    }

    fn instantiate_from(&self, pre: &FunctionPre<StoreData>) -> Result<Instance, CallError> {
        let ctx = self.current().ctx.clone();
        self.instantiate_with(pre, &ctx)
    }

    fn instantiate_with(
        &self,
        pre: &FunctionPre<StoreData>,
        ctx: &Arc<FunctionContext>,
    ) -> Result<Instance, CallError> {
        let mut store = Store::new(pre.engine(), StoreData::new(ctx.clone()));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(self.deadline_ticks);
        let tick = self.ticker.tick();
        store.epoch_deadline_callback(move |mut store| store.data_mut().deadline_reached(tick));
        if let Some(fuel) = self.fuel {
            // Instantiation runs start-up code too; it gets the same budget.
            store.set_fuel(fuel).map_err(|e| CallError {
                kind: FailureKind::Instantiate,
                message: format!("{e:#}"),
                cost: None,
            })?;
        }
        let bindings = {
            let _running = self.ticker.running();
            pre.instantiate(&mut store)
        }
        .map_err(|e| classify(&store, &e, FailureKind::Instantiate))?;
        Ok(Instance {
            store,
            bindings,
            deadline_ticks: self.deadline_ticks,
            ticker: self.ticker.clone(),
            state: self.state.get().cloned(),
            epoch: self.state.get().map_or(0, |ns| ns.store().epoch()),
            fuel: self.fuel,
        })
    }

    /// Runs one event in a fresh instance (the on-demand model) and drops it. Blocks the
    /// calling thread for up to the function's timeout: call it from a blocking thread.
    ///
    /// # Errors
    /// [`CallError`] with the kind of failure; the instance is gone either way.
    pub fn call_on_demand(
        &self,
        event: &GuestEvent,
        message: Option<MessageId>,
    ) -> Result<CallOutcome, CallError> {
        if let Some(keep) = &self.keep_warm {
            keep.idle_ended(self.last_used.idle());
        }
        self.touch();
        let cpu = crate::clock::CallCpu::start();
        let (pre, load) = self.linked()?;
        let start = Instant::now();
        // An instance that failed to start was made all the same: a cold start that counts.
        let instance = self.instantiate_from(&pre).map_err(|e| {
            let spent = cpu.stop();
            CallError {
                cost: Some(Box::new(crate::metrics::CallCost {
                    instantiate: start.elapsed(),
                    load,
                    cpu: spent.cpu,
                    cpu_estimated: spent.estimated,
                    ..crate::metrics::CallCost::default()
                })),
                ..e
            }
        })?;
        let instantiate = start.elapsed();
        // The call's CPU is counted from before the instance was made: one more read of
        // the thread's CPU clock (a system call) per event would be all it saved.
        let (result, _instance) = instance.call_counting(event, message, Some(cpu));
        self.touch();
        let cold = |cost: &mut crate::metrics::CallCost| {
            cost.instantiate = instantiate;
            cost.load = load;
        };
        result
            .map(|mut outcome| {
                cold(&mut outcome.cost);
                outcome
            })
            .map_err(|mut e| {
                if let Some(cost) = &mut e.cost {
                    cold(cost);
                }
                e
            })
    }
}

impl Instance {
    /// Calls the handler with `event`. Blocks for up to the timeout.
    ///
    /// Returns the instance back unless the call trapped (timeout, memory limit, trap):
    /// a store that trapped is never called again.
    ///
    /// `message` identifies a QoS 1/2 message on its session: a call that writes state
    /// commits a receipt for it with its writes (see [`crate::state`]).
    pub fn call(
        self,
        event: &GuestEvent,
        message: Option<MessageId>,
    ) -> (Result<CallOutcome, CallError>, Option<Self>) {
        self.call_counting(event, message, None)
    }

    /// [`Instance::call`], its CPU counted from `cpu` (started before the instance was
    /// made) if given, else from the call's start.
    fn call_counting(
        mut self,
        event: &GuestEvent,
        message: Option<MessageId>,
        cpu: Option<crate::clock::CallCpu>,
    ) -> (Result<CallOutcome, CallError>, Option<Self>) {
        self.store.set_epoch_deadline(self.deadline_ticks);
        if let Some(fuel) = self.fuel
            && let Err(e) = self.store.set_fuel(fuel)
        {
            let err = CallError {
                kind: FailureKind::Trap,
                message: format!("cannot set fuel: {e:#}"),
                cost: None,
            };
            return (Err(err), None);
        }
        {
            let data = self.store.data_mut();
            data.limit_hit = None;
            data.throttled = Duration::ZERO;
            data.outbox.clear();
            data.memory_limit_hit = false;
            data.state_failure = None;
            data.credited = Duration::ZERO;
            // The dead letter of a trap quotes what this call wrote to stderr, not others.
            data.stderr.take_recent();
            data.deadline = Instant::now() + Duration::from_millis(data.timeout_ms());
            // The wait for the state's gate is bounded by the calls ahead, each by its
            // own timeout, and is not counted in this one's ([`StoreData::deadline_reached`]).
            data.txn = self.state.as_ref().map(|ns| ns.begin_in(None, self.epoch));
        }
        let running = self.ticker.running();
        let started = Instant::now();
        let cpu = cpu.unwrap_or_else(crate::clock::CallCpu::start);
        let result = self
            .bindings
            .edge_agent_handler()
            .call_handle(&mut self.store, event);
        drop(running);
        let cpu = cpu.stop();
        let data = self.store.data_mut();
        data.call_ended();
        // A wait for its turn to publish is the function's rate limit, and a wait for
        // the state's gate the other calls' work: neither is its own.
        let txn = data.txn.take();
        let waited = txn
            .as_ref()
            .map_or(Duration::ZERO, crate::state::Txn::waited);
        let throttled = std::mem::take(&mut data.throttled) + waited;
        let execute = started.elapsed().saturating_sub(throttled);
        let outbox = std::mem::take(&mut data.outbox);
        let spent = crate::metrics::CallCost {
            execute,
            queue: throttled,
            cpu: cpu.cpu,
            cpu_estimated: cpu.estimated,
            peak_memory: data.peak_memory,
            ..crate::metrics::CallCost::default()
        };
        let limit_hit = data.limit_hit.take();
        match result {
            Ok(Ok(())) => {
                let committed = match txn {
                    Some(t) if !t.is_empty() => {
                        let receipt = message.map(|m| Receipt {
                            pkid: m.pkid,
                            incarnation: m.incarnation,
                            checksum: m.checksum,
                            outputs: outbox.clone(),
                        });
                        t.commit(receipt.as_ref())
                    }
                    _ => Ok(Committed::Nothing),
                };
                let (durable, committed, duplicate) = match committed {
                    Ok(Committed::Nothing) => (None, None, false),
                    Ok(Committed::Pending { generation, seq }) => (
                        self.state
                            .as_ref()
                            .map(|ns| (ns.store().clone(), generation)),
                        Some(seq),
                        false,
                    ),
                    Ok(Committed::Duplicate(pending)) => (
                        pending.and_then(|g| self.state.as_ref().map(|ns| (ns.store().clone(), g))),
                        None,
                        true,
                    ),
                    Err(e) => {
                        let err = CallError {
                            kind: FailureKind::State,
                            message: format!("state not committed: {}", crate::failure::chain(&e)),
                            cost: Some(Box::new(spent)),
                        };
                        // The guest's memory may assume the writes happened: drop it.
                        return (Err(err), None);
                    }
                };
                let large_receipt = match (&self.state, message) {
                    (Some(ns), Some(m))
                        if committed.is_some() && crate::state::large_outputs(&outbox) =>
                    {
                        Some((ns.clone(), m))
                    }
                    _ => None,
                };
                let outbox = if duplicate { Vec::new() } else { outbox };
                // The guest's memory assumes the dropped writes: drop it too.
                let back = (!duplicate).then_some(self);
                let outcome = CallOutcome {
                    outbox,
                    durable,
                    committed,
                    duplicate,
                    large_receipt,
                    cost: spent,
                };
                (Ok(outcome), back)
            }
            // A guest that fails right after a limit refused it failed because of the limit.
            Ok(Err(message)) => (
                Err(CallError {
                    kind: limit_hit.unwrap_or(FailureKind::GuestError),
                    message,
                    cost: Some(Box::new(spent)),
                }),
                Some(self),
            ),
            Err(e) => {
                let err = classify(&self.store, &e, FailureKind::Trap);
                let err = CallError {
                    cost: Some(Box::new(spent)),
                    ..err
                };
                (Err(err), None)
            }
        }
    }
}

/// Loads `cfg.module`, links it against the agent's imports and checks that it exports the
/// handler.
fn link(
    engine: &Engine,
    linker: &Linker<StoreData>,
    cfg: &FunctionConfig,
    compiled: &mut Compiled,
) -> Result<(FunctionPre<StoreData>, String), LoadError> {
    let (component, sha256) = load_component(engine, cfg, compiled)?;
    Ok((prepared(linker, &component, &cfg.module)?, sha256))
}

/// Links `component` (of the module at `path`) against the agent's imports and checks
/// that it exports the handler.
fn prepared(
    linker: &Linker<StoreData>,
    component: &Component,
    path: &std::path::Path,
) -> Result<FunctionPre<StoreData>, LoadError> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::Imports {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    FunctionPre::new(instance_pre).map_err(|e| LoadError::Export {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Components already compiled, by the SHA-256 of their file, so that functions sharing a
/// module (the same `.wasm` on demand and persistent, say) compile it once: seconds to
/// minutes of Cranelift for an interpreter-carrying Python or JavaScript component on a
/// Pi. Lives as long as one start-up (or one reload); a `Component` is a cheap handle to
/// shared code. With a [`CompileCache`], what it compiles is also kept on disk for the
/// next start.
#[derive(Default)]
pub struct Compiled {
    components: std::collections::HashMap<String, Component>,
    cache: Option<Arc<CompileCache>>,
    /// Handed to the functions loaded with it ([`ModuleChanges`]).
    changes: Option<Arc<ModuleChanges>>,
    /// The only version to load (SHA-256): another is refused before it is compiled.
    only: Option<Arc<str>>,
}

impl Compiled {
    /// Compiled components kept in `cache` too (none: only in memory), for functions that
    /// learn of module changes from `changes`.
    pub fn with_cache(
        cache: Option<Arc<CompileCache>>,
        changes: Option<Arc<ModuleChanges>>,
    ) -> Self {
        Self {
            components: std::collections::HashMap::new(),
            cache,
            changes,
            only: None,
        }
    }
}

/// How long an event of a function scaled to zero waits for a reload to put a loadable
/// version in force ([`LoadedFunction::linked`]): a Python or JavaScript module compiles
/// in 10-20 s here, minutes on a Pi.
const RELOAD_WAIT: Duration = Duration::from_secs(120);

/// How long after a module file changed the file watcher may take to say so.
const WATCHER_NOTICE: Duration = Duration::from_secs(1);

/// The version in force could not be loaded: the file holds another.
struct Elsewhere {
    error: CallError,
    module: std::path::PathBuf,
}

/// Changes to config and module files that the file watcher has seen, and how many of
/// them reloads have read: while some are unread, a reload is coming.
#[derive(Debug, Default)]
pub struct ModuleChanges {
    watched: std::sync::atomic::AtomicBool,
    seen: AtomicU64,
    read: AtomicU64,
}

impl ModuleChanges {
    /// The file watcher is on (`agent.watch`): changes will be read by a reload.
    pub fn watching(&self) {
        self.watched.store(true, Ordering::Release);
    }

    fn watched(&self) -> bool {
        self.watched.load(Ordering::Acquire)
    }

    /// The file watcher saw a change.
    pub fn seen(&self) {
        self.seen.fetch_add(1, Ordering::AcqRel);
    }

    /// A reload is about to read the files: the changes it covers, for [`ModuleChanges::read`].
    pub fn reading(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// The reload that began at `reading` is over, whatever its outcome.
    pub fn read(&self, reading: u64) {
        self.read.fetch_max(reading, Ordering::AcqRel);
    }

    fn pending(&self) -> bool {
        self.seen.load(Ordering::Acquire) > self.read.load(Ordering::Acquire)
    }

    /// How far reloads have read (changes in a reload's count).
    fn reads(&self) -> u64 {
        self.read.load(Ordering::Acquire)
    }
}

/// Compiled `.wasm` modules kept on disk between starts, in `<data_dir>/compiled`, so that
/// only the first start (and the first load of a new version) compiles: 13-22 s for a
/// Python or JavaScript component here, minutes on a Pi. An entry is named by the
/// module's SHA-256, a hash of the engine's settings and wasmtime's version, and a CRC-32
/// of the entry itself; wasmtime checks the first two again when it loads one, the agent
/// the third (wasmtime reads native code as it is: a damaged entry, which an SD card can
/// make, crashed the agent at the next event until 2026-12-07). An entry either refuses
/// is compiled again and replaced. The folder holds native code that the agent runs: it
/// must be as private as the state store beside it (the package's `StateDirectory` is
/// the agent user's only).
#[derive(Debug)]
pub struct CompileCache {
    dir: std::path::PathBuf,
    /// Disk space to leave free (`state.min_free_mb`): an entry that would eat into it is
    /// not written, since the state store needs it more.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    reserve_bytes: u64,
}

impl CompileCache {
    /// The cache of `cfg`'s data directory.
    pub fn of(cfg: &Config) -> Arc<Self> {
        Arc::new(Self {
            dir: cfg.agent.data_dir.join("compiled"),
            reserve_bytes: cfg.state.min_free_mb.saturating_mul(1024 * 1024),
        })
    }

    /// The start of the names of the module's entries for `engine`:
    /// `<sha256>-<engine hash>-`, then the entry's CRC-32 and `.cwasm`.
    #[cfg(feature = "compiler")]
    fn prefix(engine: &Engine, sha256: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha256}-{:016x}-", h.finish())
    }

    #[cfg(feature = "compiler")]
    /// The cached compilation of the module with `sha256`, if there is a usable one.
    fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let prefix = Self::prefix(engine, sha256);
        // Entries of another form (before 2026-12-07: no CRC) are left to `prune`.
        let (path, crc) = std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let crc = name.strip_prefix(&prefix)?.strip_suffix(".cwasm")?;
            Some((e.path(), u32::from_str_radix(crc, 16).ok()?))
        })?;
        let usable = match crc32_of(&path) {
            Ok(actual) if actual == crc => {
                // SAFETY: the entry is native code this agent wrote into its own private
                // data directory (see the type's documentation), whole (its CRC-32 is
                // the one it was named with); wasmtime checks that it was built by this
                // version, for this target and with these settings.
                #[allow(unsafe_code)]
                unsafe { Component::deserialize_file(engine, &path) }.map_err(|e| e.to_string())
            }
            Ok(actual) => Err(format!(
                "damaged: its CRC-32 is {actual:08x}, written as {crc:08x}"
            )),
            Err(e) => Err(e.to_string()),
        };
        match usable {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "a compiled module in the cache cannot be used; compiling it again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    #[cfg(feature = "compiler")]
    /// Keeps `component`, the compilation of the module with `sha256`. Failing to is only
    /// logged: the next start compiles again.
    fn put(&self, engine: &Engine, sha256: &str, component: &Component) {
        let mut path = self.dir.clone();
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let crc = crc32fast::hash(&bytes);
                path = self
                    .dir
                    .join(format!("{}{crc:08x}.cwasm", Self::prefix(engine, sha256)));
                crate::files::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
                let free = fs2::available_space(&self.dir).unwrap_or(u64::MAX);
                if free < self.reserve_bytes.saturating_add(bytes.len() as u64) {
                    return Err(format!(
                        "{} bytes would eat into the {} MiB kept free for the state store",
                        bytes.len(),
                        self.reserve_bytes / (1024 * 1024)
                    ));
                }
                // Synced before it is named: native code this agent will run must be whole.
                crate::files::replace(&path, &bytes).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "compiled module kept for the next start")
            }
            Err(why) => {
                tracing::warn!(dir = %self.dir.display(), %why, "the compiled module is not kept; the next start compiles it again")
            }
        }
    }

    /// Removes the entries of modules other than `keep` (SHA-256s): the versions no
    /// function uses any more, what a stop in the middle of writing one left (anything
    /// but a `.cwasm`), and entries named without their CRC-32 (before 2026-12-07).
    /// Returns how many bytes it freed.
    ///
    /// With `leftovers` false, only entries of other versions go, and files of any other
    /// name stay: after a reload, a scaled-to-zero function may be writing one now.
    pub fn prune(&self, keep: &[&str], leftovers: bool) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut freed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // `<sha256>-<engine hash>-<crc>.cwasm`
            let entry = name.ends_with(".cwasm") && name.split('-').count() == 3;
            if (entry && keep.iter().any(|k| name.starts_with(&format!("{k}-"))))
                || (!entry && !leftovers)
            {
                continue;
            }
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(e.path()).is_ok() {
                freed += len;
            }
        }
        freed
    }
}

/// The CRC-32 of the file at `path`, read in pieces (a Python component's entry is 40 MB).
#[cfg(feature = "compiler")]
fn crc32_of(path: &std::path::Path) -> std::io::Result<u32> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(crc.finalize()),
            n => crc.update(&buf[..n]),
        }
    }
}

/// Reads the module, checks its pinned hash, and compiles it (`.wasm`) or loads the
/// precompiled native code (`.cwasm`, made by `edge-agent precompile`), unless `compiled`
/// already has it.
fn load_component(
    engine: &Engine,
    cfg: &FunctionConfig,
    compiled: &mut Compiled,
) -> Result<(Component, String), LoadError> {
    let path = || cfg.module.clone();
    let bytes = std::fs::read(&cfg.module).map_err(|source| LoadError::Read {
        path: path(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if let Some(pinned) = &cfg.sha256
        && !actual.eq_ignore_ascii_case(pinned)
    {
        return Err(LoadError::HashMismatch {
            path: path(),
            actual,
            pinned: pinned.clone(),
        });
    }
    if let Some(only) = &compiled.only
        && !actual.eq_ignore_ascii_case(only)
    {
        return Err(LoadError::NotInForce {
            path: path(),
            versions: Box::new((only.to_string(), actual)),
        });
    }
    // The same bytes under another name compile to the same code, whatever the extension.
    let cwasm = cfg.module.extension().is_some_and(|e| e == "cwasm");
    if let Some(component) = compiled.components.get(&actual)
        && cwasm == Engine::detect_precompiled(&bytes).is_some()
    {
        return Ok((component.clone(), actual));
    }
    let component = match (cwasm, Engine::detect_precompiled(&bytes)) {
        (true, Some(wasmtime::Precompiled::Component)) => {
            let code = super::artifact::unseal(&bytes).map_err(|d| LoadError::Damaged {
                path: path(),
                actual: d.actual,
                sealed: d.sealed,
            })?;
            deserialize(engine, code).map_err(|e| LoadError::OtherTarget {
                path: path(),
                source: e.into(),
            })?
        }
        (true, _) => {
            // A `.wasm` renamed (or copied) as `.cwasm` compiles as it is under its own name.
            let hint = match check_component_header(&bytes) {
                // Native code that wasmtime cannot read as an artifact: a copy cut short
                // loses the seal with its tail, so this is how one shows.
                _ if bytes.starts_with(b"\x7fELF") => {
                    ": it is native code but not a whole artifact (cut short or damaged on \
                     its way?): copy it again, or precompile it again"
                }
                Ok(()) if cfg!(feature = "compiler") => {
                    ": it is a WebAssembly component: name it .wasm to have it compiled at \
                     start-up, or make a .cwasm of it with `edge-agent precompile`"
                }
                Ok(()) => {
                    ": it is a WebAssembly component, and this device build runs only .cwasm \
                     artifacts: make one with `edge-agent precompile --target <device \
                     triple>` on a full build"
                }
                Err(_) => " (make one with `edge-agent precompile`)",
            };
            return Err(LoadError::NotPrecompiled { path: path(), hint });
        }
        (false, Some(_)) => return Err(LoadError::NativeCode { path: path() }),
        (false, None) => {
            check_component_header(&bytes)
                .map_err(|why| LoadError::NotComponent { path: path(), why })?;
            compile_cached(engine, &bytes, &actual, compiled.cache.as_deref(), path)?
        }
    };
    compiled
        .components
        .insert(actual.clone(), component.clone());
    Ok((component, actual))
}

/// Says, in a few words, why `bytes` is not a component, when its header shows it.
fn check_component_header(bytes: &[u8]) -> Result<(), &'static str> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(
            "is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)",
        ),
        Some([0, b'a', b's', b'm', ..]) => {
            Err("is WebAssembly of an unknown version or layer, not a component")
        }
        _ => Err("is not WebAssembly: it does not start with the `\\0asm` header"),
    }
}

/// Compiles `bytes` (SHA-256 `sha256`), or loads it from `cache` where it was compiled
/// before.
#[cfg(feature = "compiler")]
fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    cache: Option<&CompileCache>,
    path: impl Fn() -> std::path::PathBuf,
) -> Result<Component, LoadError> {
    if let Some(component) = cache.and_then(|c| c.get(engine, sha256)) {
        return Ok(component);
    }
    // Said before and after: a large component (Python, JavaScript) takes seconds here and
    // minutes on a Pi, in which nothing else is logged.
    let started = std::time::Instant::now();
    if cache.is_some() {
        tracing::info!(module = %path().display(), bytes = bytes.len(), "compiling (once: later starts load it from the compile cache)");
    } else {
        tracing::info!(module = %path().display(), bytes = bytes.len(), "compiling");
    }
    let component = compile(engine, bytes, &path)?;
    tracing::info!(module = %path().display(), took_ms = started.elapsed().as_millis() as u64, "compiled");
    if let Some(cache) = cache {
        cache.put(engine, sha256, &component);
    }
    Ok(component)
}

/// Without a compiler only `.cwasm` loads, and nothing is cached.
#[cfg(not(feature = "compiler"))]
fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    _sha256: &str,
    _cache: Option<&CompileCache>,
    path: impl Fn() -> std::path::PathBuf,
) -> Result<Component, LoadError> {
    compile(engine, bytes, path)
}

#[cfg(feature = "compiler")]
fn compile(
    engine: &Engine,
    bytes: &[u8],
    path: impl Fn() -> std::path::PathBuf,
) -> Result<Component, LoadError> {
    Component::new(engine, bytes).map_err(|e| LoadError::Compile {
        path: path(),
        source: e.into(),
    })
}

#[cfg(not(feature = "compiler"))]
fn compile(
    _engine: &Engine,
    _bytes: &[u8],
    path: impl Fn() -> std::path::PathBuf,
) -> Result<Component, LoadError> {
    Err(LoadError::NoCompiler { path: path() })
}

/// Loads precompiled native code.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: a `.cwasm` is native code that runs with the agent's rights, so it must be
    // as trusted as the agent's binary: produced by `edge-agent precompile` and
    // installed the same way (pin it with `sha256` to be sure). wasmtime checks that it
    // was built by this version, for this target and with these settings.
    unsafe { Component::deserialize(engine, bytes) }
}

/// Lowercase hex SHA-256 of `bytes` (one definition, with the deployments' checks).
pub use crate::deployment::sha256_hex;

/// Maps a wasmtime error to an [`FailureKind`]; `fallback` when it is nothing specific.
fn classify(store: &Store<StoreData>, e: &wasmtime::Error, fallback: FailureKind) -> CallError {
    let kind = if store.data().memory_limit_hit {
        FailureKind::MemoryLimit
    } else if let Some(kind) = store.data().state_failure {
        kind
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Timeout,
            Some(Trap::StackOverflow) => FailureKind::StackOverflow,
            Some(Trap::OutOfFuel) => FailureKind::FuelExhausted,
            _ => fallback,
        }
    };
    let message = match kind {
        FailureKind::Timeout => format!(
            "call exceeded the timeout of {} ms",
            store.data().timeout_ms()
        ),
        FailureKind::MemoryLimit => format!(
            "linear memory would exceed the limit of {} bytes",
            store.data().memory_limit()
        ),
        // A panic's or an exception's own words are on stderr, before the trap: the
        // dead letter had only the trap and its wasm backtrace, and the words were in
        // the agent's log alone (a probe, 2026-12-08).
        _ => match store.data().stderr.take_recent() {
            said if said.is_empty() => format!("{e:#}"),
            said => format!("{e:#}\nits last lines on stderr: {}", said.join(" | ")),
        },
    };
    CallError {
        kind,
        message,
        cost: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scale to zero judges idleness on tokio's clock: a use restarts the count.
    #[tokio::test(start_paused = true)]
    async fn a_function_is_idle_for_the_time_since_its_last_use() {
        let keep = Duration::from_secs(30);
        let last = LastUse::now();
        tokio::time::advance(keep - Duration::from_millis(1)).await;
        assert!(last.idle() < keep, "released before keep_warm_secs");
        last.touch();
        tokio::time::advance(keep - Duration::from_millis(1)).await;
        assert!(last.idle() < keep, "a use did not restart the count");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(last.idle(), keep);
    }

    /// `keep_warm_secs = "auto"`: the default until five idle periods, then their 99th
    /// percentile plus 10%; a steady stream's short gaps do not count.
    #[test]
    fn a_learned_keep_alive_covers_the_idle_periods_seen() {
        let keep = KeepAlive::of(crate::config::KeepWarm::Auto);
        for _ in 0..1000 {
            keep.idle_ended(Duration::from_millis(3));
        }
        assert_eq!(keep.now(), KEEP_ALIVE_DEFAULT);
        // A burst every five minutes, once every ten a quiet of twenty.
        for i in 0..40 {
            keep.idle_ended(Duration::from_secs(if i % 10 == 9 { 1200 } else { 300 }));
        }
        let k = keep.now().as_secs_f64();
        assert!((1300.0..=1330.0).contains(&k), "{k}");
        assert_eq!(
            KeepAlive::of(crate::config::KeepWarm::Secs(7)).now(),
            Duration::from_secs(7)
        );
    }
}

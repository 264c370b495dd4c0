//! What a function's instance can reach: the state kept in its `Store` and the agent's
//! imports (`mqtt`, `config`, `log`, `clock`) implemented on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::edge::agent::{clock, config, log, mqtt, state, types};
use super::stdio::{GuestOutput, Stream};
use crate::event::Outbound;
use crate::failure::FailureKind;
use crate::rate::TokenBucket;
use crate::state::{StateError, Txn};
use crate::topic;

/// Most messages one call may queue for publishing.
pub const MAX_PUBLISHES_PER_CALL: usize = 1_000;

/// What every instance of one function shares: its name, static config and limits.
#[derive(Debug)]
pub struct FunctionContext {
    /// The function's name, for logs.
    pub name: Arc<str>,
    /// The `[function.config]` table.
    pub config: BTreeMap<String, String>,
    /// Largest payload a guest may publish, in bytes.
    pub max_publish_bytes: usize,
    /// What the broker takes: packets up to `broker.max_packet_bytes` (less once it
    /// refused a smaller one), to any topic but those it refused.
    pub broker_limits: crate::event::BrokerLimits,
    /// The agent's own topics, `<topic_prefix>/`: functions may not publish there.
    pub reserved_prefix: String,
    /// The function's own topic filters, unless `allow_feedback`: it may not publish to a
    /// topic they match.
    pub own_filters: Vec<String>,
    /// Publishes allowed, shared by all instances of the function.
    pub publish_bucket: Mutex<TokenBucket>,
    /// `publish_rate`, as configured (for the warning when it holds the function back).
    pub publish_rate: u32,
    /// When a call last had to wait for the bucket and it was said (once a minute).
    pub throttle_said: Mutex<Option<Instant>>,
    /// Linear-memory cap per instance, in bytes.
    pub memory_limit: usize,
    /// Longest a call may run, in milliseconds.
    pub timeout_ms: u64,
    /// The budget of its log lines.
    pub log: Arc<super::stdio::LogLimiter>,
}

/// The data of one `Store`: one instance's view of the world.
pub struct StoreData {
    ctx: Arc<FunctionContext>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// Set when the guest tried to grow memory past its limit.
    pub(crate) memory_limit_hit: bool,
    /// Largest linear memory seen, in bytes.
    pub(crate) peak_memory: usize,
    /// Messages published during the current call.
    pub(crate) outbox: Vec<Outbound>,
    /// State reads and writes of the current call; `None` without a state store.
    pub(crate) txn: Option<Txn>,
    /// Set when the state store trapped the call: `state-error` for an I/O error (the
    /// call is tried again once the store may take it).
    pub(crate) state_failure: Option<FailureKind>,
    /// The last limit (publish rate, state quota) that refused something in this call.
    pub(crate) limit_hit: Option<FailureKind>,
    /// When the current call's time is up (`timeout_ms` after it started): no wait inside
    /// a host call may run past it.
    pub(crate) deadline: Instant,
    /// How long the current call waited for its turn to publish (`publish_rate`): counted
    /// as waiting, not as the call's execution.
    pub(crate) throttled: std::time::Duration,
    /// How much of the call's wait for the state's gate its deadline has been moved by
    /// ([`StoreData::deadline_reached`]).
    pub(crate) credited: std::time::Duration,
    /// The guest's stderr, whose last lines go into the dead letter of a call that traps.
    pub(crate) stderr: GuestOutput,
}

impl StoreData {
    /// A call waits for its turn to publish: `publish_rate` holds the function back.
    /// Said at most once a minute per function, with the rate: the default (1,000
    /// messages a second) caps a busy function's rate without an error anywhere.
    fn say_throttled(&self) {
        let mut said = self
            .ctx
            .throttle_said
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if said.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            *said = Some(Instant::now());
            tracing::warn!(function = %self.ctx.name, publish_rate = self.ctx.publish_rate,
                "publish_rate is holding the function back: its calls wait for their turn to publish (raise publish_rate if this rate is expected; said at most once a minute)");
        }
    }
    /// Fresh state for one instance: WASI with no capabilities at all (no files,
    /// environment, arguments or sockets); stdout/stderr into the log.
    pub fn new(ctx: Arc<FunctionContext>) -> Self {
        let stderr = GuestOutput::new(ctx.log.clone(), Stream::Stderr);
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(ctx.log.clone(), Stream::Stdout))
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            ctx,
            wasi,
            table: ResourceTable::new(),
            memory_limit_hit: false,
            peak_memory: 0,
            outbox: Vec::new(),
            txn: None,
            state_failure: None,
            limit_hit: None,
            deadline: Instant::now(),
            throttled: std::time::Duration::ZERO,
            credited: std::time::Duration::ZERO,
            stderr,
        }
    }

    /// The call reached its epoch deadline (`timeout_ms` of ticks): the time it waited for
    /// the state's gate, while other calls of the function held it, is not its own, and
    /// moves the deadline on by that many ticks of `tick`; past that it is interrupted
    /// (a `timeout`). Until 2026-12-08 that wait counted, and a call whose gate came late
    /// (calls ahead of it, or the process frozen while one held it) was a `timeout` dead
    /// letter, its event acknowledged and never counted (a probe: 43 of 6,000).
    pub(crate) fn deadline_reached(
        &mut self,
        tick: std::time::Duration,
    ) -> wasmtime::Result<wasmtime::UpdateDeadline> {
        let waited = self
            .txn
            .as_ref()
            .map_or(std::time::Duration::ZERO, Txn::waited);
        let owed = waited.saturating_sub(self.credited);
        if owed.is_zero() {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        self.credited = waited;
        let ticks = owed.as_nanos().div_ceil(tick.as_nanos().max(1));
        Ok(wasmtime::UpdateDeadline::Continue(
            u64::try_from(ticks).unwrap_or(u64::MAX),
        ))
    }

    /// The function's memory limit in bytes.
    pub fn memory_limit(&self) -> usize {
        self.ctx.memory_limit
    }

    /// The function's timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.ctx.timeout_ms
    }

    /// A call ended: the log lines it dropped are told, if a report is due.
    pub fn call_ended(&self) {
        self.ctx.log.report_due();
    }
}

/// Caps linear memory (the only memory a guest controls) and records its peak. A refused
/// growth makes `memory.grow` return -1; Rust guests then abort, which traps.
impl ResourceLimiter for StoreData {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.ctx.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreData {}

impl mqtt::Host for StoreData {
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        topic::validate_name(&topic)
            .map_err(|e| format!("invalid topic ({e}): `{}`", topic::shown(&topic)))?;
        if qos > 2 {
            return Err(format!("invalid qos {qos}: must be 0, 1 or 2"));
        }
        if payload.len() > self.ctx.max_publish_bytes {
            return Err(format!(
                "payload of {} bytes is over the limit of {} bytes",
                payload.len(),
                self.ctx.max_publish_bytes
            ));
        }
        let packet = crate::event::publish_packet_bytes(&topic, payload.len());
        if let Some(why) = self.ctx.broker_limits.over(&topic, packet) {
            return Err(why);
        }
        if let Some(filter) = self
            .ctx
            .own_filters
            .iter()
            .find(|f| topic::matches(f, &topic))
        {
            let topic = topic::shown(&topic);
            return Err(format!(
                "topic `{topic}` matches this function's own filter `{filter}`: it would call \
                 the function again with its own output (set allow_feedback = true for \
                 deliberate feedback)"
            ));
        }
        let prefix = self.ctx.reserved_prefix.as_str();
        if topic.starts_with(prefix) || topic == prefix.trim_end_matches('/') {
            let topic = topic::shown(&topic);
            return Err(format!(
                "topic `{topic}` is under `{prefix}`, which is reserved for the agent's own topics"
            ));
        }
        let bucket = || {
            self.ctx
                .publish_bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        let mut allowed = bucket().take(Instant::now());
        if !allowed && self.outbox.is_empty() {
            // A call's first message waits for the bucket (its turn among the function's
            // concurrent calls, up to a second): a burst of events that publish one message
            // each is slowed to the rate, and the queue and the broker hold the rest,
            // rather than being dead-lettered. More messages in a call that already emptied
            // the bucket are a flood: refused. The wait never outlives the call's deadline:
            // past it the call would be stopped as a timeout (and a persistent instance
            // dropped) for what is only a rate limit; a turn that would come too late is
            // refused at once instead.
            self.say_throttled();
            let waited = Instant::now();
            let until = (waited + std::time::Duration::from_secs(1)).min(self.deadline);
            while !allowed {
                let now = Instant::now();
                let wait = bucket()
                    .wait(now)
                    .max(std::time::Duration::from_micros(100));
                if now + wait > until {
                    break;
                }
                std::thread::sleep(wait);
                allowed = bucket().take(Instant::now());
            }
            self.throttled += waited.elapsed();
        }
        if !allowed {
            self.limit_hit = Some(FailureKind::RateLimit);
            return Err("publish rate limit exceeded (publish_rate)".into());
        }
        if self.outbox.len() >= MAX_PUBLISHES_PER_CALL {
            return Err(format!(
                "more than {MAX_PUBLISHES_PER_CALL} messages published in one call"
            ));
        }
        self.outbox.push(Outbound {
            topic,
            payload,
            qos,
            retain,
        });
        Ok(())
    }
}

/// What a state call returns to the guest when the function has no state store.
const NO_STATE: &str = "the state store is not available";

impl StoreData {
    /// Guest-visible errors become `Err(message)`; I/O errors and a state that stays busy
    /// until the deadline trap the call.
    fn state_result<T>(&mut self, r: Result<T, StateError>) -> wasmtime::Result<Result<T, String>> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(StateError::Limit(m)) => {
                self.limit_hit = Some(FailureKind::StateQuota);
                Ok(Err(m))
            }
            Err(e) => {
                self.state_failure = Some(match e {
                    StateError::Busy => FailureKind::Timeout,
                    _ => FailureKind::State,
                });
                Err(wasmtime::Error::new(e))
            }
        }
    }
}

impl state::Host for StoreData {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let Some(t) = self.txn.as_mut() else {
            return Ok(None);
        };
        let r = t.get(&key);
        self.state_result(r).map(|r| r.ok().flatten())
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let r = match self.txn.as_mut() {
            Some(t) => t.set(&key, value),
            None => return Ok(Err(NO_STATE.into())),
        };
        self.state_result(r)
    }
    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        let r = match self.txn.as_mut() {
            Some(t) => t.delete(&key),
            None => return Ok(Err(NO_STATE.into())),
        };
        self.state_result(r)
    }
    fn increment(&mut self, key: String, delta: i64) -> wasmtime::Result<Result<i64, String>> {
        let r = match self.txn.as_mut() {
            Some(t) => t.increment(&key, delta),
            None => return Ok(Err(NO_STATE.into())),
        };
        self.state_result(r)
    }
    fn list(&mut self, prefix: String, limit: u32) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let Some(t) = self.txn.as_mut() else {
            return Ok(Vec::new());
        };
        let r = t.list(&prefix, limit);
        self.state_result(r).map(Result::unwrap_or_default)
    }
}

impl config::Host for StoreData {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }
    fn get_all(&mut self) -> Vec<(String, String)> {
        self.ctx
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl log::Host for StoreData {
    fn log(&mut self, level: log::Level, mut message: String) {
        if !self.ctx.log.admit() {
            return;
        }
        super::stdio::LogLimiter::cut(&mut message);
        let f = &*self.ctx.name;
        match level {
            log::Level::Trace => tracing::trace!(function = f, "{message}"),
            log::Level::Debug => tracing::debug!(function = f, "{message}"),
            log::Level::Info => tracing::info!(function = f, "{message}"),
            log::Level::Warn => tracing::warn!(function = f, "{message}"),
            log::Level::Error => tracing::error!(function = f, "{message}"),
        }
    }
}

impl clock::Host for StoreData {
    fn now_ms(&mut self) -> u64 {
        crate::clock::now_ms()
    }
    fn monotonic_ns(&mut self) -> u64 {
        crate::clock::monotonic_ns()
    }
}

//! The one `Engine` of the process: configuration, the pooling-allocator probe and the
//! epoch ticker that enforces timeouts.

use std::time::Duration;

use wasmtime::{
    Config as WasmConfig, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use super::RuntimeError;
use crate::config::{
    AllocatorMode, Config, MEMORY_RESERVATION_32, MEMORY_RESERVATION_64, host_memory_reservation,
};

/// Guard region after each linear memory. Bounds are checked explicitly, since memories
/// are smaller than 4 GiB, so a small guard suffices.
const MEMORY_GUARD: u64 = 64 * 1024;

/// How instances get their memory, as decided at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved pool of instance slots with copy-on-write memory images.
    Pooling,
    /// Memory allocated when an instance is created.
    OnDemand,
}

/// Builds the process's engine according to `[runtime]`, probing the pooling allocator
/// when `allocator = "auto"`.
///
/// # Errors
/// [`RuntimeError::Engine`] if the engine cannot be created (or pooling was required and
/// failed).
pub fn build(cfg: &Config) -> Result<(Engine, Allocator), RuntimeError> {
    let instances = cfg.runtime.max_instances;
    let fuel = fuel_enabled(cfg);
    let force_probe_failure = std::env::var_os("EDGE_AGENT_FORCE_POOLING_FAILURE").is_some();
    match cfg.runtime.allocator {
        AllocatorMode::OnDemand => Ok((on_demand(fuel)?, Allocator::OnDemand)),
        AllocatorMode::Pooling => Ok((
            pooling(instances, fuel, force_probe_failure)?,
            Allocator::Pooling,
        )),
        AllocatorMode::Auto => match pooling(instances, fuel, force_probe_failure) {
            Ok(engine) => Ok((engine, Allocator::Pooling)),
            Err(e) => {
                tracing::warn!(
                    error = %crate::failure::chain(&e),
                    "pooling allocator unavailable (small address space?); \
                     falling back to on-demand allocation, which makes instantiation slower"
                );
                Ok((on_demand(fuel)?, Allocator::OnDemand))
            }
        },
    }
}

/// The settings every engine shares, including one that only precompiles for `target`.
/// Everything here that shapes compiled code must be the same on the build host and
/// the device, or the device refuses the `.cwasm`.
///
/// # Errors
/// [`RuntimeError::Engine`] for an unknown target.
pub fn base_config(target: Option<&str>, fuel: bool) -> Result<WasmConfig, RuntimeError> {
    let mut c = WasmConfig::new();
    c.consume_fuel(fuel);
    let reservation = match target {
        Some(t) => {
            c.target(t)
                .map_err(|e| RuntimeError::engine(format!("unknown target `{t}`"), e))?;
            if target_is_32_bit(t) {
                MEMORY_RESERVATION_32
            } else {
                MEMORY_RESERVATION_64
            }
        }
        None => host_memory_reservation(),
    };
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    c.memory_init_cow(true);
    c.memory_reservation(reservation);
    c.memory_guard_size(MEMORY_GUARD);
    // Memories that outgrow the reservation move rather than pre-reserving more: keeps
    // thousands of short-lived instances from exhausting the address space.
    c.memory_reservation_for_growth(0);
    Ok(c)
}

fn target_is_32_bit(triple: &str) -> bool {
    [
        "pulley32", "arm", "thumb", "i686", "i586", "riscv32", "wasm32",
    ]
    .iter()
    .any(|p| triple.starts_with(p))
}

/// Whether the engine counts fuel: when any function has a `fuel` budget. It changes the
/// compiled code, so `.cwasm` artifacts must be precompiled with `--fuel` to match.
pub fn fuel_enabled(cfg: &Config) -> bool {
    cfg.functions.iter().any(|f| f.fuel.is_some())
}

fn pooling(instances: u32, fuel: bool, force_failure: bool) -> Result<Engine, RuntimeError> {
    if force_failure {
        return Err(RuntimeError::engine(
            "pooling allocator probe failed",
            "forced by EDGE_AGENT_FORCE_POOLING_FAILURE",
        ));
    }
    // With the PAGEMAP_SCAN ioctl (Linux 6.7 and later) a freed slot's memory is reset by
    // zeroing only the pages the last instance touched, which then stay resident: the next
    // on-demand instance takes no page faults and no `madvise` in the first KEEP_RESIDENT
    // bytes (a Rust guest's stack and data). Without it, resetting means zeroing that whole
    // range every time, so only a little is kept.
    const KEEP_RESIDENT: usize = 2 * 1024 * 1024;
    const KEEP_RESIDENT_WITHOUT_SCAN: usize = 64 * 1024;
    let build = |scan: Enabled, keep: usize| {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust wasm32-wasip2 component has one memory and a few core instances (the
        // module plus canonical-ABI shims); leave headroom for larger components.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .max_memory_size(usize::try_from(host_memory_reservation()).unwrap_or(usize::MAX))
            .pagemap_scan(scan)
            .linear_memory_keep_resident(keep)
            .table_keep_resident(16 * 1024);
        let mut c = base_config(None, fuel)?;
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        Engine::new(&c).map_err(|e| RuntimeError::engine("cannot create the pooling engine", e))
    };
    build(Enabled::Yes, KEEP_RESIDENT).or_else(|_| build(Enabled::No, KEEP_RESIDENT_WITHOUT_SCAN))
}

fn on_demand(fuel: bool) -> Result<Engine, RuntimeError> {
    Engine::new(&base_config(None, fuel)?)
        .map_err(|e| RuntimeError::engine("cannot create the engine", e))
}

/// The thread that increments the engine's epoch every `tick`, which is what stops calls
/// at their deadline. It ticks only while guest code may run ([`EpochTicker::running`]), or
/// has started within the last tick: after a whole tick without any it sleeps, waking once
/// a second to see whether the engine is gone, instead of 100 times a second (measured: its
/// ticks were most of an idle agent's wake-ups and CPU). It holds only a weak reference to
/// the engine and ends once the engine is gone: that is, once the runtime *and every store*
/// are dropped. Tying it to the runtime instead would let a call still running when the
/// agent is dropped loop for ever.
#[derive(Clone)]
pub struct EpochTicker {
    inner: std::sync::Arc<Ticking>,
    tick: Duration,
}

struct Ticking {
    /// Guest code running now (calls and instantiations).
    running: std::sync::atomic::AtomicUsize,
    /// The thread sleeps for want of running guest code: a new call must wake it.
    parked: std::sync::atomic::AtomicBool,
    /// Guest code started since the last tick: the thread keeps ticking rather than park
    /// between calls that come more often than a tick (at 300 events/s, each call woke it
    /// from its park: a system call for the caller and two wake-ups for the thread per
    /// tick, where ticking on is one).
    started: std::sync::atomic::AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// How often a sleeping ticker checks that its engine is still there.
const TICKER_IDLE_CHECK: Duration = Duration::from_secs(1);

/// Guest code is running while this lives ([`EpochTicker::running`]).
pub struct Running<'a>(&'a Ticking);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl EpochTicker {
    /// Starts the ticker of `engine`.
    ///
    /// # Errors
    /// [`RuntimeError::Engine`] if the thread cannot be spawned.
    pub fn start(engine: &Engine, tick: Duration) -> Result<Self, RuntimeError> {
        use std::sync::atomic::Ordering::SeqCst;
        let inner = std::sync::Arc::new(Ticking {
            running: 0.into(),
            parked: false.into(),
            started: false.into(),
            thread: std::sync::OnceLock::new(),
        });
        let weak = engine.weak();
        let ticking = inner.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                    if ticking.running.load(SeqCst) == 0 && !ticking.started.swap(false, SeqCst) {
                        // Said before looking again: a call that starts in between
                        // either is seen here or sees `parked` and wakes the thread.
                        ticking.parked.store(true, SeqCst);
                        if ticking.running.load(SeqCst) == 0 {
                            std::thread::park_timeout(TICKER_IDLE_CHECK);
                        }
                        ticking.parked.store(false, SeqCst);
                    }
                }
            })
            .map_err(|e| RuntimeError::engine("cannot start the epoch ticker", e))?;
        let _ = inner.thread.set(thread.thread().clone());
        Ok(Self { inner, tick })
    }

    /// The interval between ticks.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Marks guest code as running until the guard is dropped: the epoch advances
    /// meanwhile, so the call's deadline holds.
    pub fn running(&self) -> Running<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        self.inner.running.fetch_add(1, SeqCst);
        self.inner.started.store(true, SeqCst);
        if self.inner.parked.swap(false, SeqCst)
            && let Some(t) = self.inner.thread.get()
        {
            t.unpark();
        }
        Running(&self.inner)
    }
}

// Compiles a module: needs Cranelift (the workspace's tests have it).
#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    /// `(module (func (export "f") (loop (br 0))))`: a call that never ends by itself.
    const ENDLESS: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
        0x03, 0x02, 0x01, 0x00, // one function of that type
        0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00, // exported as "f"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0
    ];

    /// The ticker sleeps while no guest code runs; a call after a quiet spell wakes it,
    /// and still stops at its deadline (a few ticks), not after the ticker's idle check.
    #[test]
    fn a_call_after_a_quiet_spell_still_stops_at_its_deadline() {
        let mut c = WasmConfig::new();
        c.epoch_interruption(true);
        let engine = Engine::new(&c).expect("engine");
        let ticker = EpochTicker::start(&engine, Duration::from_millis(5)).expect("ticker");
        let module = wasmtime::Module::new(&engine, ENDLESS).expect("module");
        std::thread::sleep(Duration::from_millis(100));
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(3);
        store.epoch_deadline_trap();
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
        let f = instance
            .get_typed_func::<(), ()>(&mut store, "f")
            .expect("export");
        let started = std::time::Instant::now();
        let result = {
            let _running = ticker.running();
            f.call(&mut store, ())
        };
        let took = started.elapsed();
        assert!(result.is_err(), "an endless loop ended by itself");
        assert!(
            took < Duration::from_millis(500),
            "stopped after {took:?}: the sleeping ticker was not woken by the call"
        );
    }
}

//! The one `Engine` of the process: configuration, the pooling-allocator probe and the
//! epoch ticker that enforces timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeError;
use crate::config::{AllocatorMode, Config};

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
    let max_memory = cfg
        .functions
        .iter()
        .map(|f| f.memory_limit_mb)
        .max()
        .unwrap_or(1)
        * 1024
        * 1024;
    let instances = cfg.runtime.max_instances;
    let force_probe_failure = std::env::var_os("EDGE_AGENT_FORCE_POOLING_FAILURE").is_some();
    match cfg.runtime.allocator {
        AllocatorMode::OnDemand => Ok((on_demand(max_memory)?, Allocator::OnDemand)),
        AllocatorMode::Pooling => Ok((
            pooling(instances, max_memory, force_probe_failure)?,
            Allocator::Pooling,
        )),
        AllocatorMode::Auto => match pooling(instances, max_memory, force_probe_failure) {
            Ok(engine) => Ok((engine, Allocator::Pooling)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "pooling allocator unavailable (small address space?); \
                     falling back to on-demand allocation, which makes instantiation slower"
                );
                Ok((on_demand(max_memory)?, Allocator::OnDemand))
            }
        },
    }
}

fn base() -> WasmConfig {
    let mut c = WasmConfig::new();
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    c
}

fn pooling(instances: u32, max_memory: u64, force_failure: bool) -> Result<Engine, RuntimeError> {
    if force_failure {
        return Err(RuntimeError::Engine(
            "pooling allocator probe failed (forced by EDGE_AGENT_FORCE_POOLING_FAILURE)".into(),
        ));
    }
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasm32-wasip2 component has one memory and a few core instances (the
    // module plus canonical-ABI shims); leave headroom for larger components.
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
        // Keep a little memory resident between instances: saves page faults on reuse.
        .linear_memory_keep_resident(64 * 1024)
        .table_keep_resident(16 * 1024);
    let mut c = base();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c.memory_init_cow(true);
    Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

fn on_demand(max_memory: u64) -> Result<Engine, RuntimeError> {
    let mut c = base();
    // Reserve only what a function may use, so thousands of short-lived instances do not
    // exhaust the address space (seen under qemu with multi-GiB default reservations).
    c.memory_reservation(max_memory);
    c.memory_guard_size(64 * 1024);
    c.memory_reservation_for_growth(0);
    Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// Increments the engine's epoch every `tick` until dropped. Holds only a weak reference,
/// so it never keeps the engine alive.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread.
    ///
    /// # Errors
    /// [`RuntimeError::Engine`] if the thread cannot be spawned.
    pub fn start(engine: &Engine, tick: Duration) -> Result<Self, RuntimeError> {
        let weak = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

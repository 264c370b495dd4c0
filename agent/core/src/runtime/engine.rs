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

/// Starts the thread that increments the engine's epoch every `tick`, which is what stops
/// calls at their deadline. It holds only a weak reference and ends once the engine is
/// gone: that is, once the runtime *and every store* are dropped. Tying it to the runtime
/// instead would let a call still running when the agent is dropped loop for ever.
///
/// # Errors
/// [`RuntimeError::Engine`] if the thread cannot be spawned.
pub fn start_epoch_ticker(engine: &Engine, tick: Duration) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|e| RuntimeError::engine("cannot start the epoch ticker", e))?;
    Ok(())
}

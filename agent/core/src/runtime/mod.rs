//! The WebAssembly side, wrapped in one narrow module: everything that touches wasmtime
//! lives here.
//!
//! - [`engine`]: the one `Engine` per process (pooling probe, epoch ticker);
//! - [`host`]: store data and the agent's imports (`mqtt`, `config`, `log`, `clock`);
//! - [`stdio`]: guest stdout/stderr into the log;
//! - `precompile`: ahead-of-time compilation into `.cwasm` for devices (`compiler` feature);
//! - [`function`]: a loaded function (`InstancePre`, prepared at start-up) and one call of
//!   it in the on-demand model: fresh store, deadline, limiter, instance, call, drop.

pub mod engine;
pub mod function;
pub mod host;
#[cfg(feature = "compiler")]
pub mod precompile;
pub mod stdio;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use bindings::edge::agent::types::Event as GuestEvent;
pub use engine::Allocator;
pub use function::{CallError, CallOutcome, Instance, LoadedFunction};

use crate::config::{Config, FunctionConfig};
use crate::failure::FailureKind;
use host::StoreData;

/// Host bindings for the `function` world in `modules/sdk/wit/` (the SDK carries the WIT).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../modules/sdk/wit",
        world: "function",
        // A state store I/O error traps the call (the event becomes a dead letter)
        // rather than looking like a missing key to the guest.
        imports: { "edge:agent/state": trappable },
    });
}

/// Failures of the runtime at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine or linker could not be set up.
    #[error("wasm engine: {context}")]
    Engine {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// A function's module could not be loaded or does not fit the `function` world.
    #[error("function `{function}`: {message}")]
    Load {
        /// The function's name.
        function: String,
        /// What went wrong.
        message: String,
    },
    /// More than one function could not be loaded: each error, in configuration order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<RuntimeError>),
}

/// An error from wasmtime or the OS, kept as the cause of a [`RuntimeError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl RuntimeError {
    pub(crate) fn engine(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Engine {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// The engine, the linker and every configured function, ready to run events.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    allocator: Allocator,
    tick: Duration,
    /// Whether the engine counts fuel (fixed when it is built).
    fuel: bool,
    functions: HashMap<String, Arc<LoadedFunction>>,
}

/// Gives the allocator's free memory back to the kernel. Compiling components with
/// Cranelift leaves tens of MB freed but still held by glibc's arenas (measured: idle RSS
/// 38 MB with three `.wasm` functions against 17.5 MB with their `.cwasm`); an agent that
/// compiled at start-up should not carry that for its whole life.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only returns free pages of the heap to the kernel; it neither
    // moves nor touches live allocations, and it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Runtime {
    /// Builds the engine and linker once and prepares every function (compile, link,
    /// check the export), so that a bad module fails here rather than at its first event.
    ///
    /// # Errors
    /// [`RuntimeError`] naming the function whose module is unusable.
    pub fn new(cfg: &Config) -> Result<Self, RuntimeError> {
        let (engine, allocator) = engine::build(cfg)?;
        let tick = Duration::from_millis(cfg.runtime.epoch_tick_ms);
        let mut linker: Linker<StoreData> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError::engine("linking WASI", e))?;
        bindings::Function::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::engine("linking agent imports", e))?;
        let fuel = engine::fuel_enabled(cfg);
        // Before the probes below: a start function that loops must meet its deadline.
        engine::start_epoch_ticker(&engine, tick)?;
        let mut runtime = Self {
            engine,
            linker,
            allocator,
            tick,
            fuel,
            functions: HashMap::new(),
        };
        // Every function is tried, so that `check` reports every module that is wrong.
        let mut errors = Vec::new();
        let mut compiled = function::Compiled::default();
        for f in &cfg.functions {
            match runtime.load(cfg, f, &mut compiled) {
                Ok(loaded) => {
                    runtime.functions.insert(f.name.clone(), loaded);
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => {}
            1 => return Err(errors.remove(0)),
            _ => return Err(RuntimeError::Several(errors)),
        }
        release_freed_memory();
        Ok(runtime)
    }

    /// Loads function `f` of `cfg` (compile, link, check the export) and starts one
    /// instance of it, so that a module that cannot start within its limits (a 40 MB
    /// memory under a 32 MiB limit) fails here, not at its first event. `compiled` saves
    /// compiling a module that several functions use more than once. Start-up loads every
    /// function with it, and a reload the ones it adds.
    ///
    /// # Errors
    /// [`RuntimeError::Load`] naming the function.
    pub fn load(
        &self,
        cfg: &Config,
        f: &FunctionConfig,
        compiled: &mut function::Compiled,
    ) -> Result<Arc<LoadedFunction>, RuntimeError> {
        if f.fuel.is_some() && !self.fuel {
            return Err(RuntimeError::Load {
                function: f.name.clone(),
                message: "`fuel` needs a restart: the engine was started without fuel \
                          counting (no function had a budget)"
                    .into(),
            });
        }
        let loaded = LoadedFunction::load(
            &self.engine,
            &self.linker,
            cfg,
            f,
            self.tick,
            self.fuel,
            compiled,
        )?;
        if let Err(e) = loaded.instantiate() {
            let why = match e.kind {
                FailureKind::MemoryLimit => format!(
                    "needs more memory than memory_limit_mb ({} MiB) to start",
                    f.memory_limit_mb
                ),
                _ => format!("does not start: {e}"),
            };
            return Err(RuntimeError::Load {
                function: f.name.clone(),
                message: format!("{} {why}", f.module.display()),
            });
        }
        Ok(Arc::new(loaded))
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<Arc<LoadedFunction>> {
        self.functions.get(name).cloned()
    }

    /// Hands over every function loaded by [`Runtime::new`] (to the agent's lanes, which
    /// own them from then on, so that a function a reload removes is freed).
    pub fn take_functions(&mut self) -> HashMap<String, Arc<LoadedFunction>> {
        std::mem::take(&mut self.functions)
    }

    /// Which instance allocator is in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// The engine (for tools such as precompilation).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

//! The WebAssembly side, wrapped in one narrow module: everything that touches wasmtime
//! lives here.
//!
//! - [`engine`]: the one `Engine` per process (pooling probe, epoch ticker);
//! - [`host`]: store data and the agent's imports (`mqtt`, `config`, `log`, `clock`);
//! - [`stdio`]: guest stdout/stderr into the log;
//! - `precompile`: ahead-of-time compilation into `.cwasm` for devices (`compiler` feature);
//! - [`artifact`]: the CRC-32 seal `precompile` puts on a `.cwasm`, checked at load;
//! - [`function`]: a loaded function (`InstancePre`, prepared at start-up) and one call of
//!   it in the on-demand model: fresh store, deadline, limiter, instance, call, drop.

pub mod artifact;
pub mod engine;
pub mod function;
pub mod host;
#[cfg(feature = "compiler")]
pub mod precompile;
pub mod stdio;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use bindings::edge::agent::types::Event as GuestEvent;
pub use engine::Allocator;
pub use function::{CallError, CallOutcome, Instance, LoadedFunction, MessageId};

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
    #[error("function `{function}`: {source}")]
    Load {
        /// The function's name (or, for `precompile`, the module's path).
        function: String,
        /// What went wrong.
        #[source]
        source: LoadError,
    },
    /// More than one function could not be loaded: each error, in configuration order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<RuntimeError>),
}

/// An error from wasmtime or the OS, kept as the cause of a [`RuntimeError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a function's module cannot be used. Each message names the module; the cause, where
/// there is one, is kept as the source (render the whole with [`crate::failure::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The module file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds another version than the one in force (a function scaled to zero
    /// loads only that one; checked before compiling, which costs seconds for Python or
    /// JavaScript).
    #[error(
        "{} no longer holds the version in force (sha256 {}; the file's is {}): put that \
         version back, or reload to take the file's",
        .path.display(),
        &.versions.0[..12.min(.versions.0.len())],
        &.versions.1[..12.min(.versions.1.len())]
    )]
    NotInForce {
        /// The module file.
        path: PathBuf,
        /// The version in force and the file's (boxed: every error carries the size of
        /// the largest).
        versions: Box<(String, String)>,
    },
    /// The file is not the one the config pins.
    #[error("{} has sha256 {actual}, but the config pins {pinned}: refusing to load it", .path.display())]
    HashMismatch {
        /// The module file.
        path: PathBuf,
        /// Its hash.
        actual: String,
        /// The hash in the config.
        pinned: String,
    },
    /// The header shows that the file is not a component.
    #[error("{} {why}", .path.display())]
    NotComponent {
        /// The module file.
        path: PathBuf,
        /// What it is instead.
        why: &'static str,
    },
    /// A `.cwasm` that holds no precompiled component.
    #[error("{} is not a precompiled component{hint}", .path.display())]
    NotPrecompiled {
        /// The module file.
        path: PathBuf,
        /// What to do, by what the file holds instead.
        hint: &'static str,
    },
    /// Precompiled native code under a name other than `.cwasm`.
    #[error("{} holds precompiled native code: name it .cwasm to load it as such", .path.display())]
    NativeCode {
        /// The module file.
        path: PathBuf,
    },
    /// A `.cwasm` whose code is not what `precompile` sealed.
    #[error(
        "{} is damaged: its code's CRC-32 is {actual:08x}, but precompile sealed it as \
         {sealed:08x} (copy it again, or precompile it again)",
        .path.display()
    )]
    Damaged {
        /// The module file.
        path: PathBuf,
        /// The CRC-32 of the code as read.
        actual: u32,
        /// The one in the seal.
        sealed: u32,
    },
    /// A `.cwasm` made for another target, wasmtime version or engine settings.
    #[error(
        "{} was precompiled for another target, wasmtime version or settings (precompile \
         it again with this agent's version, for this device's target, and with `--fuel` \
         exactly when this config gives a function `fuel`)",
        .path.display()
    )]
    OtherTarget {
        /// The module file.
        path: PathBuf,
        /// wasmtime's reason.
        #[source]
        source: BoxError,
    },
    /// The component does not compile.
    #[error("{} is not a loadable WebAssembly component", .path.display())]
    Compile {
        /// The module file.
        path: PathBuf,
        /// wasmtime's reason.
        #[source]
        source: BoxError,
    },
    /// A `.wasm` in a build that can only load `.cwasm`.
    #[error(
        "{} is not a loadable WebAssembly component: this is a device build without a \
         compiler: it runs only .cwasm artifacts (make them with `edge-agent precompile \
         --target <device triple>` on a full build)",
        .path.display()
    )]
    NoCompiler {
        /// The module file.
        path: PathBuf,
    },
    /// The component imports what the agent does not provide.
    #[error("{} needs imports the agent does not provide", .path.display())]
    Imports {
        /// The module file.
        path: PathBuf,
        /// wasmtime's reason.
        #[source]
        source: BoxError,
    },
    /// The component does not export the handler.
    #[error("{} does not export `edge:agent/handler@0.1.0`", .path.display())]
    Export {
        /// The module file.
        path: PathBuf,
        /// wasmtime's reason.
        #[source]
        source: BoxError,
    },
    /// Its first instance does not fit in `memory_limit_mb`.
    #[error("{} needs more memory than memory_limit_mb ({limit_mb} MiB) to start", .path.display())]
    Memory {
        /// The module file.
        path: PathBuf,
        /// The function's `memory_limit_mb`.
        limit_mb: u64,
    },
    /// Its first instance fails.
    #[error("{} does not start", .path.display())]
    Start {
        /// The module file.
        path: PathBuf,
        /// How the instance failed.
        #[source]
        source: function::CallError,
    },
    /// `fuel` set on a function when the engine counts none.
    #[error(
        "`fuel` needs a restart: the engine was started without fuel counting (no function \
         had a budget)"
    )]
    FuelNeedsRestart,
    /// The function's state namespace cannot be opened.
    #[error("cannot open its state")]
    State(#[source] crate::state::StateError),
    /// The function's intake connection cannot be set up.
    #[error("cannot set up its MQTT connection")]
    Intake(#[source] crate::mqtt::MqttError),
    /// `precompile`: the output cannot be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `precompile`: a module path with no file name.
    #[error("has no file name")]
    NoFileName,
    /// `precompile`: two modules with one file name would be written to one artifact.
    #[error("would be written to {} as {other} is: give them different file names, or precompile them into different --out folders", .path.display())]
    SameArtifact {
        /// The artifact both would be.
        path: PathBuf,
        /// The other module.
        other: String,
    },
}

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
    ticker: engine::EpochTicker,
    /// Whether the engine counts fuel (fixed when it is built).
    fuel: bool,
    /// What the broker takes, shared with the output connection, which learns it.
    broker_limits: crate::event::BrokerLimits,
    functions: HashMap<String, Arc<LoadedFunction>>,
    /// What the file watcher has seen and reloads have read, shared with every function
    /// (a function scaled to zero waits for a reload that is coming).
    changes: Arc<function::ModuleChanges>,
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
    /// The file changes that the watcher has seen and reloads have read.
    pub fn module_changes(&self) -> &Arc<function::ModuleChanges> {
        &self.changes
    }

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
        let ticker = engine::EpochTicker::start(&engine, tick)?;
        let mut runtime = Self {
            engine,
            linker,
            allocator,
            ticker,
            fuel,
            broker_limits: crate::event::BrokerLimits::new(cfg.broker.max_packet_bytes),
            functions: HashMap::new(),
            changes: Arc::default(),
        };
        // Every function is tried, so that `check` reports every module that is wrong.
        let mut errors = Vec::new();
        let cache = cfg
            .runtime
            .compile_cache
            .then(|| function::CompileCache::of(cfg));
        let mut compiled =
            function::Compiled::with_cache(cache.clone(), Some(runtime.changes.clone()));
        // A function's shadow (`<name>~shadow`), the primary again for its noise
        // calibration (`<name>~control`) and the shadow's version as a canary
        // (`<name>~canary`) are loaded as functions of their own.
        let all = cfg.functions.iter().flat_map(|f| {
            [
                Some(f.clone()),
                f.shadow_function(),
                f.control_function(),
                f.canary_function(),
            ]
            .into_iter()
            .flatten()
        });
        for f in all {
            match runtime.load(cfg, &f, &mut compiled) {
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
        // Compiled versions no function uses any more (a module replaced since the last
        // start) would otherwise pile up on the device's disk.
        if let Some(cache) = &cache {
            let keep: Vec<Arc<str>> = runtime.functions.values().map(|f| f.sha256()).collect();
            let freed = cache.prune(&keep.iter().map(|s| &**s).collect::<Vec<_>>(), true);
            if freed > 0 {
                tracing::info!(
                    bytes = freed,
                    "compiled modules of versions no longer used removed"
                );
            }
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
                source: LoadError::FuelNeedsRestart,
            });
        }
        let agent_limits = (
            self.broker_limits.clone(),
            format!("{}/", cfg.agent.topic_prefix),
        );
        let loaded = LoadedFunction::load(
            &self.engine,
            &self.linker,
            agent_limits,
            f,
            &self.ticker,
            self.fuel,
            compiled,
        )?;
        if let Err(e) = loaded.instantiate() {
            let path = f.module.clone();
            let source = match e.kind {
                FailureKind::MemoryLimit => LoadError::Memory {
                    path,
                    limit_mb: f.memory_limit_mb,
                },
                _ => LoadError::Start { path, source: e },
            };
            return Err(RuntimeError::Load {
                function: f.name.clone(),
                source,
            });
        }
        // Each member of a share group keeps its own state, so a counter's count was split
        // between the agents, silently (a fleet probe, 2026-12-07). Said, not refused: a
        // Python or JavaScript module imports state whether it writes any or not.
        if let Some(group) = &f.share
            && loaded.imports_state()
        {
            tracing::warn!(function = %f.name, share = %group,
                "the function's module can write state, and with share each agent of the group keeps its own: \
                 a topic's events are spread over them, and so is its state (a count would be split). \
                 For state per topic across agents use partition instead");
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

    /// What the broker takes: the output connection learns when it refuses a message, and
    /// every function's publishes are held to it.
    pub fn broker_limits(&self) -> crate::event::BrokerLimits {
        self.broker_limits.clone()
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

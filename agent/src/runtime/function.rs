//! A loaded function and one on-demand call of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use super::RuntimeError;
use super::bindings::FunctionPre;
use super::bindings::edge::agent::types::Event;
use super::host::{FunctionContext, Outgoing, StoreData};
use crate::config::FunctionConfig;

/// Why an event was not handled. Stable names: they appear in dead letters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The handler returned `err(..)`.
    GuestError,
    /// The call ran past `timeout_ms`.
    Timeout,
    /// The instance tried to grow its memory past `memory_limit_mb`.
    MemoryLimit,
    /// The guest's stack overflowed.
    StackOverflow,
    /// Any other trap (panic, unreachable, out-of-bounds access, ...).
    Trap,
    /// The instance could not be created.
    Instantiate,
    /// The payload was larger than `max_payload_bytes`.
    PayloadTooLarge,
    /// The function's queue was full.
    QueueFull,
}

impl ErrorKind {
    /// The kebab-case name used in dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GuestError => "guest-error",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::StackOverflow => "stack-overflow",
            Self::Trap => "trap",
            Self::Instantiate => "instantiate",
            Self::PayloadTooLarge => "payload-too-large",
            Self::QueueFull => "queue-full",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details for the log and the dead letter.
    pub message: String,
}

/// A successful call: what to publish and what it cost.
#[derive(Debug)]
pub struct CallOutcome {
    /// Messages to publish, in order.
    pub outbox: Vec<Outgoing>,
    /// Store creation and instantiation.
    pub instantiate: Duration,
    /// The handler call itself.
    pub execute: Duration,
    /// Largest linear memory the instance reached, in bytes.
    pub peak_memory: usize,
}

/// A function ready to run: its component compiled and linked once.
pub struct LoadedFunction {
    ctx: Arc<FunctionContext>,
    pre: FunctionPre<StoreData>,
    deadline_ticks: u64,
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
        cfg: &FunctionConfig,
        tick: Duration,
        max_publish_bytes: usize,
    ) -> Result<Self, RuntimeError> {
        let err = |message: String| RuntimeError::Load {
            function: cfg.name.clone(),
            message,
        };
        let component = load_component(engine, cfg).map_err(err)?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "{} needs imports the agent does not provide: {e:#}",
                cfg.module.display()
            ))
        })?;
        let pre = FunctionPre::new(instance_pre).map_err(|e| {
            err(format!(
                "{} does not export `edge:agent/handler@0.1.0`: {e:#}",
                cfg.module.display()
            ))
        })?;
        let tick_ms = u64::try_from(tick.as_millis()).unwrap_or(1).max(1);
        // Round up, plus one tick: the epoch may advance right after the deadline is set.
        let deadline_ticks = cfg.timeout_ms.div_ceil(tick_ms) + 1;
        let ctx = Arc::new(FunctionContext {
            name: cfg.name.as_str().into(),
            config: cfg.config.clone(),
            max_publish_bytes,
            memory_limit: usize::try_from(cfg.memory_limit_mb * 1024 * 1024).unwrap_or(usize::MAX),
            timeout_ms: cfg.timeout_ms,
        });
        Ok(Self {
            ctx,
            pre,
            deadline_ticks,
        })
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// Runs one event in a fresh instance (the on-demand model) and drops it. Blocks the
    /// calling thread for up to the function's timeout: call it from a blocking thread.
    ///
    /// # Errors
    /// [`CallError`] with the kind of failure; the instance is gone either way.
    pub fn call_on_demand(&self, event: &Event) -> Result<CallOutcome, CallError> {
        let start = Instant::now();
        let mut store = Store::new(self.pre.engine(), StoreData::new(self.ctx.clone()));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(self.deadline_ticks);
        store.epoch_deadline_trap();
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, &e, ErrorKind::Instantiate))?;
        let instantiated = Instant::now();
        let result = instance.edge_agent_handler().call_handle(&mut store, event);
        let execute = instantiated.elapsed();
        match result {
            Ok(Ok(())) => {
                let data = store.data_mut();
                Ok(CallOutcome {
                    outbox: std::mem::take(&mut data.outbox),
                    instantiate: instantiated - start,
                    execute,
                    peak_memory: data.peak_memory,
                })
            }
            Ok(Err(message)) => Err(CallError {
                kind: ErrorKind::GuestError,
                message,
            }),
            Err(e) => Err(classify(&store, &e, ErrorKind::Trap)),
        }
    }
}

/// Reads the module, checks its pinned hash, and compiles it (`.wasm`) or loads the
/// precompiled native code (`.cwasm`, made by `edge-agent precompile`).
fn load_component(engine: &Engine, cfg: &FunctionConfig) -> Result<Component, String> {
    let path = cfg.module.display();
    let bytes = std::fs::read(&cfg.module).map_err(|e| format!("cannot read {path}: {e}"))?;
    if let Some(pinned) = &cfg.sha256 {
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(pinned) {
            return Err(format!(
                "{path} has sha256 {actual}, but the config pins {pinned}: refusing to load it"
            ));
        }
    }
    let cwasm = cfg.module.extension().is_some_and(|e| e == "cwasm");
    match (cwasm, Engine::detect_precompiled(&bytes)) {
        (true, Some(wasmtime::Precompiled::Component)) => {
            deserialize(engine, &bytes).map_err(|e| {
                format!(
                    "{path} was precompiled for another target, wasmtime version or settings \
                 (re-run `edge-agent precompile` with this agent's version): {e:#}"
                )
            })
        }
        (true, _) => Err(format!(
            "{path} is not a precompiled component (make one with `edge-agent precompile`)"
        )),
        (false, Some(_)) => Err(format!(
            "{path} holds precompiled native code: name it .cwasm to load it as such"
        )),
        (false, None) => compile(engine, &bytes)
            .map_err(|e| format!("{path} is not a loadable WebAssembly component: {e}")),
    }
}

#[cfg(feature = "compiler")]
fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    Component::new(engine, bytes).map_err(|e| format!("{e:#}"))
}

#[cfg(not(feature = "compiler"))]
fn compile(_engine: &Engine, _bytes: &[u8]) -> Result<Component, String> {
    Err(
        "this is a device build without a compiler: it runs only .cwasm artifacts \
         (make them with `edge-agent precompile --target <device triple>` on a full build)"
            .into(),
    )
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

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Maps a wasmtime error to an [`ErrorKind`]; `fallback` when it is nothing specific.
fn classify(store: &Store<StoreData>, e: &wasmtime::Error, fallback: ErrorKind) -> CallError {
    let kind = if store.data().memory_limit_hit {
        ErrorKind::MemoryLimit
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => ErrorKind::Timeout,
            Some(Trap::StackOverflow) => ErrorKind::StackOverflow,
            _ => fallback,
        }
    };
    let message = match kind {
        ErrorKind::Timeout => format!(
            "call exceeded the timeout of {} ms",
            store.data().timeout_ms()
        ),
        ErrorKind::MemoryLimit => format!(
            "linear memory would exceed the limit of {} bytes",
            store.data().memory_limit()
        ),
        _ => format!("{e:#}"),
    };
    CallError { kind, message }
}

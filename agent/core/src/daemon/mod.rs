//! The agent assembled: [`Prepared`] checks everything that can be checked before a
//! socket is opened, [`startup`] builds the running agent from it, and [`shutdown`] owns
//! the ordered stop, and [`systemd`] tells systemd where the agent is in that life. [`run`]
//! is the whole life of the agent.

pub mod control;
pub mod deploy;
mod fetch;
pub mod lanes;
mod memory;
pub mod prometheus;
pub mod reload;
pub mod shutdown;
pub mod startup;
pub mod systemd;

use std::future::Future;
use std::sync::Arc;

use crate::config::{BrokerAddress, Config, ConfigError};
use crate::failure::Exit;
use crate::mqtt::MqttError;
use crate::runtime::{Runtime, RuntimeError};
use crate::state::{StateError, StateStore};

pub use startup::{Ready, Running, Startup};

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A function's module is unusable, or the engine failed.
    #[error("{file}")]
    Runtime {
        /// The config file that names the module.
        file: String,
        /// What failed.
        #[source]
        source: RuntimeError,
    },
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// MQTT set-up failed (URL, TLS files, embedded broker).
    #[error("{file}")]
    Mqtt {
        /// The config file.
        file: String,
        /// What failed.
        #[source]
        source: MqttError,
    },
    /// A function could not be started (instance pool, worker threads).
    #[error(transparent)]
    Lane(#[from] lanes::LaneError),
    /// The metrics listener (`metrics.listen`) could not be opened.
    #[error("cannot listen for metrics on {listen} (metrics.listen)")]
    Metrics {
        /// The address.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// The error as lines to print, one problem each (a config with several mistakes, or
    /// several modules that cannot be loaded, gives one line per mistake).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Config(e) => e.each().iter().map(|e| e.to_string()).collect(),
            Self::Runtime {
                file,
                source: RuntimeError::Several(all),
            } => all
                .iter()
                .map(|e| format!("{file}: {}", crate::failure::chain(e)))
                .collect(),
            other => vec![crate::failure::chain(other)],
        }
    }

    /// How the process ends: [`Exit::Config`] for anything the configuration can fix,
    /// [`Exit::Failure`] otherwise.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Config(_)
            | Self::Runtime {
                source: RuntimeError::Load { .. } | RuntimeError::Several(_),
                ..
            }
            | Self::Mqtt {
                source: MqttError::Tls { .. } | MqttError::Url(_),
                ..
            }
            // Restarting does not mend a damaged store: stop until someone moves it aside.
            | Self::State(StateError::Damaged { .. }) => Exit::Config,
            _ => Exit::Failure,
        }
    }
}

/// Everything `run` needs that can be checked before a socket is opened: the runtime with
/// every module loaded and the broker's address and client options (TLS files read).
pub struct Prepared {
    config: Config,
    runtime: Runtime,
    broker: BrokerAddress,
    connections: crate::mqtt::options::Connections,
    /// SIGHUPs since before the modules loaded ([`Prepared::hangups`]).
    hangups: Option<tokio::signal::unix::Signal>,
    /// The state store, if opened before the modules loaded ([`Prepared::open`]).
    state: Option<Arc<StateStore>>,
}

impl Prepared {
    /// Loads every module and reads TLS material. `edge-agent check` stops here.
    ///
    /// # Errors
    /// [`AgentError`] naming the config file and the function or key at fault.
    pub fn new(config: Config) -> Result<Self, AgentError> {
        let file = config.source.display().to_string();
        let runtime = Runtime::new(&config).map_err(|source| AgentError::Runtime {
            file: file.clone(),
            source,
        })?;
        let mqtt_err = |source| AgentError::Mqtt {
            file: file.clone(),
            source,
        };
        let broker =
            BrokerAddress::parse(&config.broker.url).map_err(|e| mqtt_err(MqttError::Url(e)))?;
        let connections = crate::mqtt::options::connections(&config, &broker).map_err(mqtt_err)?;
        Ok(Self {
            config,
            runtime,
            broker,
            connections,
            hangups: None,
            state: None,
        })
    }

    /// [`Prepared::new`] for `run`: the state store first, so that a second agent on the
    /// same `data_dir` stops at its lock before it compiles every module (seconds to
    /// minutes on a Pi with Python or JavaScript functions) and before it writes into the
    /// compile cache the first one uses. Until 2026-12-07 it found the lock only after.
    ///
    /// # Errors
    /// As [`Prepared::new`], and [`StateError`] if the store cannot be opened (held by
    /// another process, damaged).
    pub fn open(config: Config) -> Result<Self, AgentError> {
        let state = StateStore::open(&config.agent.data_dir, &config.state)?;
        let mut prepared = Self::new(config)?;
        prepared.state = Some(state);
        Ok(prepared)
    }

    /// SIGHUPs received since `hangups` was made: made before the modules load (which can
    /// take seconds), a `systemctl reload` meanwhile reloads once the agent runs, where
    /// without a handler SIGHUP ends the process. Without it the reloader listens from
    /// when it starts.
    #[must_use]
    pub fn hangups(mut self, hangups: tokio::signal::unix::Signal) -> Self {
        self.hangups = Some(hangups);
        self
    }

    /// The runtime (for inspection).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Runs the agent until `shutdown` completes, then stops intake, lets in-flight events
/// finish within `agent.shutdown_grace_ms`, and disconnects cleanly.
///
/// # Errors
/// [`AgentError`] if the state store cannot be opened or the embedded broker cannot start.
pub async fn run(prepared: Prepared, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let running = Startup::new(prepared).start()?;
    let ready = async {
        if running.ready().await.is_some() {
            systemd::ready();
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = shutdown => {}
        () = ready => {}
    }
    systemd::stopping();
    running.stop().await;
    Ok(())
}

//! The `edge-agent` command line over the agent library (`edge_agent`, in `agent/core`)
//! and the tools (`agent/tools/`): [`cli`] parses, [`execute`] runs one command and
//! returns a [`CommandError`] that knows its exit status ([`edge_agent::failure::Exit`]),
//! [`logs`] sets up logging. Each tool is behind a feature of this crate; the device build
//! leaves out `new` and `build`.

pub mod cli;
pub mod logs;
mod state;

use std::path::Path;

use edge_agent::config::Config;
use edge_agent::failure::{Exit, chain};
use edge_agent::{AgentError, Prepared};

use crate::cli::{Command, DEFAULT_CONFIGS, NoConfig};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No config file to read.
    #[error(transparent)]
    NoConfig(#[from] NoConfig),
    /// `run` or `check`: the agent could not start, or stopped with an error.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// `state`.
    #[error(transparent)]
    State(#[from] edge_agent::state::inspect::InspectError),
    /// `promote`: the agent could not be reached.
    #[error("promote")]
    Unreachable(#[source] edge_agent::daemon::control::ControlError),
    /// `promote`: the agent refused (why is in the message).
    #[error("promote refused: {0}")]
    Refused(String),
    /// `precompile`.
    #[cfg(feature = "compiler")]
    #[error(transparent)]
    Precompile(#[from] edge_agent::runtime::RuntimeError),
    /// `new` or `build`.
    #[cfg(feature = "project")]
    #[error(transparent)]
    Project(#[from] edge_agent_project::ProjectError),
    /// `publish`.
    #[cfg(feature = "publish")]
    #[error(transparent)]
    Publish(#[from] edge_agent_publish::PublishError),
    /// `compare`.
    #[cfg(feature = "compare")]
    #[error(transparent)]
    Compare(#[from] edge_agent_compare::CompareError),
    /// `top`.
    #[cfg(feature = "top")]
    #[error(transparent)]
    Top(#[from] edge_agent_top::TopError),
    /// `keygen`, `deploy`, `fleet`.
    #[cfg(feature = "fleet")]
    #[error(transparent)]
    Fleet(#[from] edge_agent_fleet::FleetError),
}

impl CommandError {
    /// How the process ends.
    pub fn exit(&self) -> Exit {
        match self {
            Self::NoConfig(_) => Exit::Config,
            Self::Agent(e) => e.exit(),
            Self::Runtime(_) | Self::Refused(_) => Exit::Failure,
            Self::State(e) => state::exit(e),
            Self::Unreachable(_) => Exit::Unavailable,
            #[cfg(feature = "compiler")]
            Self::Precompile(_) => Exit::Failure,
            #[cfg(feature = "project")]
            Self::Project(e) => e.exit(),
            #[cfg(feature = "publish")]
            Self::Publish(e) => e.exit(),
            #[cfg(feature = "compare")]
            Self::Compare(e) => e.exit(),
            #[cfg(feature = "top")]
            Self::Top(e) => e.exit(),
            #[cfg(feature = "fleet")]
            Self::Fleet(e) => e.exit(),
        }
    }

    /// The message, one line per error with its causes (a config with several mistakes
    /// gives one line each).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Agent(e) => e.lines(),
            other => vec![chain(other)],
        }
    }
}

/// Runs one command to its end.
///
/// # Errors
/// [`CommandError`]: what failed, and with [`CommandError::exit`] the exit status.
pub fn execute(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Check { config } => {
            let path = find_config(config.as_deref(), true)?;
            let mut config = Config::load(&path).map_err(AgentError::from)?;
            // A check (perhaps as another user) must not write into the agent's data dir.
            config.runtime.compile_cache = false;
            let p = Prepared::new(config)?;
            edge_agent::daemon::startup::warn_about_the_data_disk(p.config());
            println!(
                "{}: ok ({} functions, {:?} allocator)",
                path.display(),
                p.config().functions.len(),
                p.runtime().allocator()
            );
        }
        Command::Run { config } => {
            let path = find_config(config.as_deref(), false)?;
            let mut config = Config::load(&path).map_err(AgentError::from)?;
            // A deployment whose probation this agent did not live through goes, before
            // anything of it is loaded again (it may be what stopped the agent).
            match edge_agent::daemon::deploy::roll_back_unfinished(&config) {
                Ok(true) => config = Config::load(&path).map_err(AgentError::from)?,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(config = %path.display(), "cannot put back the config from before the unfinished deployment: {e}")
                }
            }
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if config.runtime.async_threads > 0 {
                rt.worker_threads(config.runtime.async_threads);
            }
            let rt = rt.build().map_err(CommandError::Runtime)?;
            // The handlers go in before the modules load: a SIGTERM while the agent loads
            // and starts (a unit stopped at once, a test) then stops it cleanly once it
            // has started, rather than killing it half-way (exit 143); a SIGHUP (a
            // `systemctl reload`) reloads once it runs, rather than ending it.
            let (stop, hangups) = {
                let _runtime = rt.enter();
                let hangups =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
                (shutdown_signal(), hangups)
            };
            let stopped = tokio_util::sync::CancellationToken::new();
            rt.spawn({
                let stopped = stopped.clone();
                async move {
                    stop.await;
                    stopped.cancel();
                }
            });
            // Loading compiles every module (seconds; minutes for Python or JavaScript on a
            // Pi): a stop meanwhile ends the process at once, where it waited for every
            // compile and then started, connected and subscribed only to stop (a probe,
            // 2026-12-08). Nothing is taken or written yet but what a crash leaves sound:
            // the store as opened, whole compile-cache files.
            let opening = rt.spawn_blocking(move || Prepared::open(config));
            let opened = rt.block_on(async {
                tokio::select! {
                    opened = opening => Some(opened),
                    () = stopped.cancelled() => None,
                }
            });
            let Some(opened) = opened else {
                tracing::info!("stopped while loading the modules, before taking any event");
                // The compile's thread is not waited for: its work is of no use now.
                rt.shutdown_background();
                return Ok(());
            };
            let mut prepared =
                opened.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            if let Ok(hangups) = hangups {
                prepared = prepared.hangups(hangups);
            }
            let ran = rt.block_on(edge_agent::run(prepared, stopped.cancelled_owned()));
            // Not waiting for a reload's compile that the stop left running on a thread
            // of its own (a drop of the runtime waits for it: seconds to minutes).
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            ran?;
        }
        Command::State { config, command } => {
            let path = find_config(config.as_deref(), false)?;
            let config = Config::load(&path).map_err(AgentError::from)?;
            state::run(&config, command)?;
        }
        Command::Promote {
            function,
            config,
            socket,
            force,
        } => {
            let socket = match socket {
                Some(s) => s,
                None => {
                    let path = find_config(config.as_deref(), false)?;
                    let config = Config::load(&path).map_err(AgentError::from)?;
                    edge_agent::daemon::control::socket_path(&config.agent.data_dir)
                }
            };
            let report = edge_agent::daemon::control::promote(&socket, &function, force)
                .map_err(CommandError::Unreachable)?;
            if !report.ok {
                let why = report.error.clone().unwrap_or_else(|| {
                    let failed = report.failed.iter().flatten();
                    failed
                        .map(|f| format!("{}: {}", f.function, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                return Err(CommandError::Refused(why));
            }
            let now = report
                .reloaded
                .iter()
                .flatten()
                .find(|r| r.function == function);
            let sha = now.map_or("", |r| r.sha256.as_str());
            println!(
                "promoted `{function}`: its primary is now module {sha}; the old version is its shadow (promote again to roll back)"
            );
        }
        #[cfg(feature = "compiler")]
        Command::Precompile {
            target,
            out,
            fuel,
            modules,
        } => {
            let artifacts = edge_agent::runtime::precompile::precompile(
                target.as_deref(),
                fuel,
                &out,
                &modules,
            )?;
            for a in artifacts {
                let (path, bytes, sha) = (a.path.display(), a.bytes, a.sha256);
                println!("{path}  {bytes} bytes  sha256 {sha}");
            }
        }
        #[cfg(feature = "project")]
        Command::New(args) => {
            let dir = edge_agent_project::new(&args)?;
            println!("{}", dir.display());
            eprintln!(
                "new: function `{}` written to {}; build it with `edge-agent build {}`, \
                 then paste function.toml into the agent's config",
                args.name,
                dir.display(),
                dir.display()
            );
        }
        #[cfg(feature = "project")]
        Command::Build(args) => {
            for b in edge_agent_project::build(&args)? {
                println!("{b}");
            }
        }
        #[cfg(feature = "publish")]
        Command::Publish(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CommandError::Runtime)?;
            let n = rt.block_on(edge_agent_publish::publish(&args))?;
            eprintln!("published {n} message(s) to {}", args.topic);
        }
        #[cfg(feature = "compare")]
        Command::Compare(args) => edge_agent_compare::run(&args)?,
        #[cfg(feature = "top")]
        Command::Top(args) => edge_agent_top::run(&args)?,
        #[cfg(feature = "top")]
        Command::Shadow { command } => edge_agent_top::shadow::run(&command)?,
        #[cfg(feature = "fleet")]
        Command::Keygen(args) => {
            let public = edge_agent_fleet::keygen(&args)?;
            eprintln!(
                "wrote {} (private: keep it off the devices) and its public key:",
                args.key.display()
            );
            println!("{public}");
        }
        #[cfg(feature = "fleet")]
        Command::Deploy(args) => edge_agent_fleet::deploy(&args)?,
        #[cfg(feature = "fleet")]
        Command::Fleet { command } => edge_agent_fleet::status::run(&command)?,
    }
    Ok(())
}

/// The config file to use (see [`cli::config_path`]); `check` says which it read.
fn find_config(flag: Option<&Path>, say: bool) -> Result<std::path::PathBuf, NoConfig> {
    let env = std::env::var_os("EDGE_AGENT_CONFIG");
    let (path, from) = cli::config_path(flag, env, &DEFAULT_CONFIGS)?;
    if say {
        println!("reading {} (from {from})", path.display());
    }
    Ok(path)
}

/// Completes on SIGINT or SIGTERM, saying which ([`edge_agent::daemon::shutdown::stop_signal`]).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let stop = edge_agent::daemon::shutdown::stop_signal();
    async move { tracing::info!("{} received", stop.await) }
}

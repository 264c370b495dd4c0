//! The command line: the `edge-agent` subcommands and their arguments. The tools' own
//! arguments live in their crates, each behind a feature of this one.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// Event-processing agent for edge devices: MQTT events to WebAssembly functions.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as text or as one JSON object each. Under systemd every line also starts
    /// with its syslog priority (`<4>` warning), which journald reads.
    #[arg(
        long,
        value_enum,
        default_value_t,
        env = "EDGE_AGENT_LOG_FORMAT",
        global = true
    )]
    pub log_format: crate::logs::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run {
        /// Config file (.toml, .yaml or .json). Default: $EDGE_AGENT_CONFIG, then
        /// /etc/edge-agent/config.toml, then ./edge-agent.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and load every module, then exit (0 if all is well, 78 if not).
    Check {
        /// Config file (.toml, .yaml or .json). Default: $EDGE_AGENT_CONFIG, then
        /// /etc/edge-agent/config.toml, then ./edge-agent.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Make a function's shadow its primary, and the primary its shadow ([function.shadow]
    /// with its own `module` or `config`): the running agent rewrites its config file and
    /// reloads it, losing no event. Promoting again rolls back.
    Promote {
        /// The function.
        function: String,
        /// The agent's config file (to find its data_dir's control socket). Default:
        /// $EDGE_AGENT_CONFIG, then /etc/edge-agent/config.toml, then ./edge-agent.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The agent's control socket, instead of the config's
        /// `<agent.data_dir>/control.sock`.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Promote even a shadow that failed every event it was given and compared none
        /// (without it, that is refused: every event would fail).
        #[arg(long)]
        force: bool,
    },
    /// Read or delete the functions' state in a stopped agent's data_dir: `state list`,
    /// `state list FUNCTION`, `state get FUNCTION KEY`, `state delete FUNCTION KEY...`.
    State {
        /// The agent's config file (for its data_dir). Default: $EDGE_AGENT_CONFIG, then
        /// /etc/edge-agent/config.toml, then ./edge-agent.toml.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Write a new function project from a template, in Rust, Python or JavaScript: its
    /// source and build files, a README, the SDK, and a function.toml snippet for the
    /// agent's config.
    #[cfg(feature = "project")]
    New(edge_agent_project::NewArgs),
    /// Build a function project into a WebAssembly component and print its path, size and
    /// SHA-256 (with --precompile, also its .cwasm).
    #[cfg(feature = "project")]
    Build(edge_agent_project::BuildArgs),
    /// Publish test events to a broker.
    #[cfg(feature = "publish")]
    Publish(edge_agent_publish::PublishArgs),
    /// Measure both execution models on this device with the example functions, each in
    /// an agent process of its own, and say which one to use and why.
    #[cfg(feature = "compare")]
    Compare(edge_agent_compare::CompareArgs),
    /// Watch agents live: one row per function with its rate, latency, cold starts, CPU,
    /// memory, queue and errors, from the agents' stats and status topics. `q` quits.
    #[cfg(feature = "top")]
    Top(edge_agent_top::TopArgs),
    /// A function's shadow ([function.shadow]): `shadow report FUNCTION` prints how its
    /// outputs compare with the primary's, what each side costs, and the last mismatches.
    #[cfg(feature = "top")]
    Shadow {
        /// What to do.
        #[command(subcommand)]
        command: edge_agent_top::shadow::ShadowCommand,
    },
    /// Write an ed25519 key pair for signing deployments: KEY (private, mode 0600) and
    /// KEY.pub (the public key for the agents' `[fleet] trusted_keys`).
    #[cfg(feature = "fleet")]
    Keygen(edge_agent_fleet::KeygenArgs),
    /// Sign a directory of functions (functions.toml and its modules) and publish it to a
    /// deployment group over MQTT: modules in chunks, then the document, all retained.
    #[cfg(feature = "fleet")]
    Deploy(edge_agent_fleet::DeployArgs),
    /// The fleet seen as one: `fleet status` prints each agent on the broker with its
    /// presence, deployment version and health.
    #[cfg(feature = "fleet")]
    Fleet {
        /// What to do.
        #[command(subcommand)]
        command: edge_agent_fleet::status::FleetCommand,
    },
    /// Compile components ahead of time into `.cwasm` artifacts for a device (same agent
    /// version and settings required there). Prints each artifact's size and SHA-256.
    #[cfg(feature = "compiler")]
    Precompile {
        /// Target triple of the device, e.g. aarch64-unknown-linux-gnu or
        /// armv7-unknown-linux-gnueabihf (runs through Pulley). Default: this host.
        #[arg(long)]
        target: Option<String>,
        /// Directory for the `.cwasm` files.
        #[arg(long)]
        out: PathBuf,
        /// Compile with fuel counting: required when the device's config gives any
        /// function a `fuel` budget (it changes the compiled code).
        #[arg(long)]
        fuel: bool,
        /// Components (`.wasm`) to compile.
        #[arg(required = true)]
        modules: Vec<PathBuf>,
    },
}

/// `edge-agent state`: the store is read and changed only while no agent runs on it.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Each function with state, with its number of keys and their bytes; with FUNCTION,
    /// its keys and values (a value that is not text is shown as 0x and hex).
    List {
        /// The function whose keys to show.
        function: Option<String>,
        /// Only the keys that begin with this.
        #[arg(long, requires = "function")]
        prefix: Option<String>,
    },
    /// Print one value, its bytes as stored (no newline added).
    Get {
        /// The function.
        function: String,
        /// The key.
        key: String,
    },
    /// Delete keys of a function, or all of them with --all: its next call starts from
    /// what is left. The receipts of messages already handled stay, so that a resent
    /// message is still not handled twice.
    Delete {
        /// The function.
        function: String,
        /// The keys to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        keys: Vec<String>,
        /// Delete every key of the function (a function renamed or removed leaves its
        /// state behind under its old name: this deletes it).
        #[arg(long)]
        all: bool,
    },
}

/// Where the agent looks for its config file when `--config` is not given, after
/// `EDGE_AGENT_CONFIG`, in order.
pub const DEFAULT_CONFIGS: [&str; 2] = ["/etc/edge-agent/config.toml", "./edge-agent.toml"];

/// The config file to read, and how it was chosen: `--config`, else `EDGE_AGENT_CONFIG`
/// (`env`), else the first of `defaults` that exists.
///
/// # Errors
/// None of them gives a file: [`NoConfig`] says where it looked.
pub fn config_path(
    flag: Option<&Path>,
    env: Option<std::ffi::OsString>,
    defaults: &[&str],
) -> Result<(PathBuf, &'static str), NoConfig> {
    if let Some(path) = flag {
        return Ok((path.to_path_buf(), "--config"));
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(path), "EDGE_AGENT_CONFIG"));
    }
    if let Some(found) = defaults.iter().map(Path::new).find(|p| p.is_file()) {
        return Ok((found.to_path_buf(), "the default location"));
    }
    Err(NoConfig(defaults.join(" or ")))
}

/// No config file was given and none is at the default locations (listed).
#[derive(Debug, thiserror::Error)]
#[error("no config file: give --config FILE or set EDGE_AGENT_CONFIG; there is none at {0}")]
pub struct NoConfig(pub String);

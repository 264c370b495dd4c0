//! The command line: the `edge-agent` subcommands and their arguments, and [`publish`],
//! the test publisher behind `edge-agent publish`.

pub mod compare;
pub mod logs;
pub mod project;
pub mod publish;
#[cfg(feature = "top")]
pub mod top;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

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
    pub log_format: logs::LogFormat,
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
    /// Write a new function project (Cargo.toml, src/lib.rs, README, the SDK, and a
    /// function.toml snippet for the agent's config) from a template.
    New(project::NewArgs),
    /// Build a function project into a WebAssembly component and print its path, size and
    /// SHA-256 (with --precompile, also its .cwasm).
    Build(project::BuildArgs),
    /// Publish test events to a broker.
    Publish(PublishArgs),
    /// Measure both execution models on this device with the example functions, each in
    /// an agent process of its own, and say which one to use and why.
    Compare(compare::CompareArgs),
    /// Watch agents live: one row per function with its rate, latency, cold starts, CPU,
    /// memory, queue and errors, from the agents' stats and status topics. `q` quits.
    #[cfg(feature = "top")]
    Top(top::TopArgs),
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

/// Where the agent looks for its config file when `--config` is not given, after
/// `EDGE_AGENT_CONFIG`, in order.
pub const DEFAULT_CONFIGS: [&str; 2] = ["/etc/edge-agent/config.toml", "./edge-agent.toml"];

/// The config file to read, and how it was chosen: `--config`, else `EDGE_AGENT_CONFIG`
/// (`env`), else the first of `defaults` that exists.
///
/// # Errors
/// None of them gives a file: says where it looked.
pub fn config_path(
    flag: Option<&Path>,
    env: Option<std::ffi::OsString>,
    defaults: &[&str],
) -> Result<(PathBuf, &'static str), String> {
    if let Some(path) = flag {
        return Ok((path.to_path_buf(), "--config"));
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(path), "EDGE_AGENT_CONFIG"));
    }
    if let Some(found) = defaults.iter().map(Path::new).find(|p| p.is_file()) {
        return Ok((found.to_path_buf(), "the default location"));
    }
    Err(format!(
        "no config file: give --config FILE or set EDGE_AGENT_CONFIG; there is none at {}",
        defaults.join(" or ")
    ))
}

/// Where the broker is and how to log in: the commands that connect as clients.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker URL, e.g. mqtt://127.0.0.1:1883 or mqtts://broker.example:8883.
    #[arg(short, long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// User name for the broker.
    #[arg(long)]
    pub username: Option<String>,
    /// Password for the broker.
    #[arg(long)]
    pub password: Option<String>,
    /// CA certificate (PEM) for mqtts:// brokers.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// Client options for a connection of the `edge-agent <command>` process (a client id
    /// of its own: command, pid and time; clean session, 30 s keep-alive).
    ///
    /// # Errors
    /// A bad `--broker` URL or TLS file, in words.
    pub fn options(&self, command: &str) -> Result<rumqttc::MqttOptions, String> {
        let client_id = format!(
            "edge-agent-{command}-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        );
        let client_id = client_id.as_str();
        let addr = crate::config::BrokerAddress::parse(&self.broker)
            .map_err(|e| format!("--broker: {e}"))?;
        let tls = self.ca_file.clone().map(|ca| crate::config::TlsConfig {
            ca_file: Some(ca),
            ..crate::config::TlsConfig::default()
        });
        let mut opts = crate::mqtt::options::client_options(&addr, client_id, tls.as_ref())
            .map_err(|e| e.to_string())?;
        opts.set_keep_alive(std::time::Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
        if let Some(u) = &self.username {
            opts.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        Ok(opts)
    }
}

/// Arguments of `edge-agent publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Topic to publish on.
    #[arg(short, long)]
    pub topic: String,
    /// Payload; `{seq}` (0, 1, ...) and `{ts_ms}` (ms since the Unix epoch) are replaced
    /// in each message.
    #[arg(
        short,
        long,
        conflicts_with = "payload_file",
        required_unless_present = "payload_file"
    )]
    pub payload: Option<String>,
    /// Read the payload from a file (placeholders are replaced too if it is UTF-8).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Number of messages.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: u64,
    /// Messages per second (default: as fast as the broker takes them).
    #[arg(short, long)]
    pub rate: Option<f64>,
    /// QoS (0, 1 or 2).
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Set the retain flag.
    #[arg(long)]
    pub retain: bool,
}

//! Configuration: one serde tree, loaded in layers and validated before anything starts.
//!
//! Layers, later ones win: built-in defaults (each written once, below), the config
//! file (TOML, or YAML/JSON by extension), then environment variables
//! `EDGE_AGENT__SECTION__KEY` (for example `EDGE_AGENT__BROKER__URL`).
//!
//! [`Config::load`] returns a [`ConfigError`] that names the file and the key or function at
//! fault; `main` turns it into exit code 78 (`EX_CONFIG`).

mod de;
pub mod deploy;
pub mod promote;
mod toml_file;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use de::ValueError;
pub use validate::{BrokerAddress, UrlError, is_name};

/// A configuration that cannot be used. The message names the file and the key or function.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value does not fit its key.
    #[error("{file}: {}{source}", location(.key.as_deref(), *.line))]
    Parse {
        /// The config file.
        file: PathBuf,
        /// The key at fault, where known (`function[0].mode`).
        key: Option<String>,
        /// The line at fault, where the format and the parser know it.
        line: Option<usize>,
        /// What is wrong.
        #[source]
        source: ParseError,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The key at fault, e.g. `function[threshold].qos` or `broker.url`.
        key: String,
        /// Why it is rejected.
        message: String,
    },
    /// More than one problem: each on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// A problem with a key that an `EDGE_AGENT__*` variable set, not the file.
    #[error("{source} (set by the environment variable {variable})")]
    Environment {
        /// The variable's name.
        variable: String,
        /// The problem, as told of the file.
        source: Box<ConfigError>,
    },
}

/// Why a file could not be read as configuration. Its message is complete on one line.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The extension names no format the agent reads.
    #[error("unknown config format: use a .toml, .yaml, .yml or .json file")]
    Format,
    /// The file could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What kind of file (`config file`, `workload file`).
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax.
    #[error("{}", one_line(.0.message()))]
    Toml(#[source] Box<toml::de::Error>),
    /// A TOML integer that does not fit in 64 bits.
    #[error("{0}")]
    Integer(#[source] std::num::ParseIntError),
    /// A TOML float that does not fit in 64 bits.
    #[error("number too large for a float")]
    Float,
    /// YAML or JSON syntax, or an environment variable `config` cannot merge.
    #[error("{}", one_line(&.0.to_string()))]
    Syntax(#[source] Box<config::ConfigError>),
    /// A value that does not fit its key.
    #[error("{0}")]
    Value(#[source] ValueError),
}

/// A [`ParseError`] with the place it is about, before the file is known.
#[derive(Debug)]
struct ParseFailure {
    key: Option<String>,
    line: Option<usize>,
    source: ParseError,
}

impl ParseFailure {
    fn new(source: ParseError) -> Self {
        Self {
            key: None,
            line: None,
            source,
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError::Parse {
            file: file.to_path_buf(),
            key: self.key,
            line: self.line,
            source: self.source,
        }
    }
}

impl From<de::DeError> for ParseFailure {
    fn from(e: de::DeError) -> Self {
        Self {
            key: e.key,
            line: None,
            source: ParseError::Value(e.reason),
        }
    }
}

/// `` `key` (line 3): ``, `` `key`: ``, `line 3: ` or nothing.
fn location(key: Option<&str>, line: Option<usize>) -> String {
    match (key, line) {
        (Some(k), Some(n)) => format!("`{k}` (line {n}): "),
        (Some(k), None) => format!("`{k}`: "),
        (None, Some(n)) => format!("line {n}: "),
        (None, None) => String::new(),
    }
}

/// A parser's message on one line.
fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the names of the variables that override keys begin with (`EDGE_AGENT__BROKER__URL`
/// for `broker.url`).
const ENV_PREFIX: &str = "EDGE_AGENT__";

impl ConfigError {
    /// The same error told as the variable's of `env` that set its key, if one did: a
    /// mistake in `EDGE_AGENT__BROKER__URLL` was told as the file's (`broker.urll`: unknown
    /// key), which has no such key, until 2026-12-07.
    fn blamed_on_environment(self, env: &[(String, String)]) -> Self {
        if let Self::Several(all) = self {
            return Self::Several(
                all.into_iter()
                    .map(|e| e.blamed_on_environment(env))
                    .collect(),
            );
        }
        let key = match &self {
            Self::Parse { key: Some(key), .. } | Self::Invalid { key, .. } => key.as_str(),
            _ => return self,
        };
        let variable = env.iter().map(|(name, _)| name).find(|name| {
            let path = name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
            // The key itself, one under it, or a section only the variable brought
            // (`EDGE_AGENT__FOO__BAR`: "`foo`: unknown key").
            key == path
                || key
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
                || path
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        match variable {
            Some(variable) => Self::Environment {
                variable: variable.clone(),
                source: Box::new(self),
            },
            None => self,
        }
    }

    /// `Ok` for no errors, the error for one, [`ConfigError::Several`] for more.
    ///
    /// # Errors
    /// The errors given, if any.
    pub fn all(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    /// Each problem on its own (one for all but [`ConfigError::Several`]).
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            Self::Several(all) => all.iter().flat_map(|e| e.each()).collect(),
            one => vec![one],
        }
    }
}

/// The whole configuration of one agent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and local storage of this agent.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The MQTT broker the agent connects to (or embeds).
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Settings of the WebAssembly runtime shared by all functions.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The local state store (sled) behind the `state` interface.
    #[serde(default)]
    pub state: StateConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Signed deployments over MQTT (`[fleet]`).
    #[serde(default)]
    pub fleet: FleetConfig,
    /// The functions, one `[[function]]` table each.
    #[serde(default, rename = "function")]
    pub functions: Vec<FunctionConfig>,
    /// The file this configuration was read from (not a config key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on this address (for example
    /// `127.0.0.1:9464`); unset (the default): no listener.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[fleet]`: signed deployments over MQTT (docs/fleet.md). With a `group` and at least
/// one trusted key, the agent takes the deployment retained on
/// `<topic_prefix>/fleet/<group>/deployment`: it checks the signature, the version and every
/// module's SHA-256, stages the modules in `<data_dir>/deployment/`, replaces the
/// `[[function]]` tables of its config file with the deployment's, and reloads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The deployment group this agent belongs to; unset (the default): no deployments.
    /// Letters, digits, `-`, `_` and `.` only.
    pub group: Option<String>,
    /// The ed25519 public keys (base64, as `edge-agent keygen` writes them in `KEY.pub`)
    /// whose signatures the agent accepts. A group needs at least one.
    pub trusted_keys: Vec<String>,
    /// After a deployment is in force, how long the agent watches its functions, in
    /// seconds: if more than `max_failure_ratio` of their events fail meanwhile (10 events
    /// at least), it goes back to the functions it had before.
    pub probation_secs: u64,
    /// Share of failed events during probation that rolls a deployment back.
    pub max_failure_ratio: f64,
    /// How long to wait for a deployment's modules to arrive, in seconds.
    pub download_timeout_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            group: None,
            trusted_keys: Vec::new(),
            probation_secs: 10,
            max_failure_ratio: 0.5,
            download_timeout_secs: 120,
        }
    }
}

/// `[agent]`: identity and local storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Name of this agent, used in its own topics (`<topic_prefix>/<id>/...`) and in the
    /// default client id. Letters, digits, `-`, `_` and `.` only.
    pub id: String,
    /// Directory for the agent's local state.
    pub data_dir: PathBuf,
    /// Prefix of the agent's own topics. Dead letters go to
    /// `<topic_prefix>/<id>/dead-letter`.
    pub topic_prefix: String,
    /// On SIGINT/SIGTERM, how long in-flight events may take to finish before the agent
    /// stops anyway, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// How often each function's counters and cost percentiles are published (retained)
    /// on `<topic_prefix>/<id>/stats`, in seconds; 0 turns it off. They are also logged
    /// at shutdown.
    pub stats_interval_secs: u64,
    /// Longest chain of calls of this agent's functions that one outside event may start
    /// (A publishes what B handles, B publishes what A handles, ...): the output of the
    /// last becomes a `hop-limit` dead letter instead of another call. Stops loops between
    /// functions.
    pub max_hops: u8,
    /// Reload when the config file or a module file changes (SIGHUP reloads either way).
    pub watch: bool,
}

/// `[broker]`: the MQTT connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Broker address: `mqtt://host:port` (plain TCP, default port 1883) or
    /// `mqtts://host:port` (TLS, default port 8883).
    pub url: String,
    /// Start an MQTT broker (rumqttd) inside the agent, listening on the host and port of
    /// `url`, so that no other service is needed. For trying things out and tests: it keeps
    /// sessions in memory only. Production uses Mosquitto or a clustered broker.
    pub embedded: bool,
    /// Let anyone connect to the embedded broker without credentials when it listens on
    /// an address other than loopback. Off, such a broker needs `username`/`password`.
    pub allow_anonymous: bool,
    /// MQTT client id. Keep it stable so that the broker keeps the agent's session (and
    /// queues its QoS 1 events) while it is away. Default: `edge-agent-<agent.id>`.
    pub client_id: Option<String>,
    /// Ask the broker to drop the session on connect. `false` (the default) keeps
    /// subscriptions and queued QoS 1/2 messages across disconnections.
    pub clean_session: bool,
    /// MQTT keep-alive interval in seconds (5 to 65535).
    pub keep_alive_secs: u64,
    /// How long a connection attempt (TCP, TLS and the broker's CONNACK) may take, and a
    /// write to the broker may wait, in seconds (1 to 600). A slow link needs several
    /// round trips of it: over TLS at a 1.7 s round trip, more than rumqttc's own 5 s.
    pub connect_timeout_secs: u64,
    /// User name for the broker, if it requires one.
    pub username: Option<String>,
    /// Password for the broker (needs `username`).
    pub password: Option<String>,
    /// TLS settings for `mqtts://` URLs.
    pub tls: Option<TlsConfig>,
    /// Largest MQTT packet accepted or sent, in bytes (payload plus topic and header).
    pub max_packet_bytes: usize,
    /// First delay before reconnecting after the connection is lost, in milliseconds. It
    /// doubles after each failed attempt up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnection attempts, in milliseconds.
    pub reconnect_max_ms: u64,
}

/// `[broker.tls]`: certificates for `mqtts://`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate. Default:
    /// the operating system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for brokers that require client
    /// authentication (needs `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client's private key (needs `cert_file`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[runtime]`: the WebAssembly engine shared by all functions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Instance allocation: `auto` probes at start-up whether the pooling allocator (fast
    /// instantiation, large virtual reservations) works on this kernel and falls back to
    /// on-demand allocation if not; `pooling` requires it; `on-demand` never uses it.
    pub allocator: AllocatorMode,
    /// Instances that may exist at once across all functions; sizes the instance pool.
    pub max_instances: u32,
    /// Interval of the epoch ticker that enforces timeouts, in milliseconds. A call is
    /// stopped within its timeout plus one tick.
    pub epoch_tick_ms: u64,
    /// Largest module file accepted, in MiB: a bigger one is refused at start-up.
    pub max_module_mb: u64,
    /// Keep what compiling a `.wasm` module produced in `<data_dir>/compiled`, so that the
    /// next start (and a scale-to-zero reload) loads it in milliseconds instead of
    /// compiling again (seconds to minutes for a Python or JavaScript component).
    /// `edge-agent check` never writes it.
    pub compile_cache: bool,
    /// Threads of the agent's async runtime: the MQTT connections, routing, outputs and
    /// acknowledgements (the guests' calls run on threads of their own). 0: one per
    /// processor. 1 (the default) hands an event between tasks on one thread, without
    /// waking a second one (docs/benchmarks.md, "One async thread").
    pub async_threads: usize,
}

/// `[state]`: the functions' key-value state on local disk.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Memory sled may use for its page cache, in MiB.
    pub cache_mb: u64,
    /// Least time between the starts of two flushes of committed state to disk, in
    /// milliseconds. 0 (the default) is a plain group commit: a flush starts as soon as the
    /// previous one has finished, and takes every commit made meanwhile, so one fsync in
    /// flight bounds the rate by itself. A QoS 1/2 event whose call wrote state is
    /// acknowledged only after the flush that made its writes durable, so a spacing adds up
    /// to that much to its latency, in exchange for fewer writes to an SD card.
    /// (Its former name, `flush_interval_ms`, is still read.)
    #[serde(alias = "flush_interval_ms")]
    pub min_flush_interval_ms: u64,
    /// Most flushes a second at steady rates (0: no cap). Up to this many commits a second
    /// each is flushed at once; above it, a flush waits for a share of the commits so
    /// that the disk sees about this many fsyncs a second, at the price of a few
    /// milliseconds of acknowledgement latency. 100 by default: a third of the fsyncs at
    /// 300 events/s for a p50 of about 4 ms, and no change at 100 events/s or less
    /// (docs/benchmarks.md); 50 halves them again for an SD card (p50 about 10 ms).
    pub max_flushes_per_sec: u64,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys one function may keep.
    pub max_keys_per_function: u64,
    /// Most bytes (keys plus values) one call may have written and not yet committed: past
    /// it, `set` returns an error to the guest. Bounds the memory a call can make the agent
    /// hold, whatever the key quota says.
    pub max_pending_bytes_per_call: usize,
    /// Most keys one call may have written and not yet committed.
    pub max_pending_keys_per_call: usize,
    /// Most bytes (keys plus values) one function may keep: past it, `set` returns an
    /// error to the guest, so that one function cannot fill the disk for the others.
    pub max_bytes_per_function: u64,
    /// Free space, in MiB, that the store leaves on the data directory's file system:
    /// below it, commits wait (the functions that write state pause, their events stay
    /// with the broker) until space comes back. 0 turns the check off.
    pub min_free_mb: u64,
}

/// What happens when a persistent instance traps or times out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Replace it with a fresh instance (after a back-off), up to `max_restarts` in
    /// `restart_window_secs`.
    #[default]
    Always,
    /// Leave it stopped: its later events go to the dead-letter topic.
    Never,
}

/// How WebAssembly instances get their memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorMode {
    /// Probe the pooling allocator and fall back to on-demand allocation.
    #[default]
    Auto,
    /// Always use the pooling allocator; fail at start-up if it cannot be created.
    Pooling,
    /// Allocate each instance's memory when it is created.
    OnDemand,
}

/// The execution model of a function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Serverless: a fresh instance per event, dropped afterwards.
    #[default]
    OnDemand,
    /// Container-like: long-lived instances created at start-up that keep their memory
    /// between events, one event at a time each, restarted by policy when they fail.
    Persistent,
    /// Either of the two, chosen at run time by a controller from the function's own
    /// measurements and switched without losing an event (`[function.auto]`).
    Auto,
}

/// `keep_warm_secs`: a fixed keep-alive, or one learned from the function's idle times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepWarm {
    /// Release the module after this many seconds without events.
    Secs(u64),
    /// `"auto"`: after the 99th percentile of the function's idle periods so far, plus
    /// 10% (Serverless in the Wild's keep-alive).
    Auto,
}

impl Serialize for KeepWarm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Secs(n) => s.serialize_u64(*n),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepWarm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeepWarm;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeepWarm, E> {
                Ok(KeepWarm::Secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeepWarm, E> {
                u64::try_from(v)
                    .map(KeepWarm::Secs)
                    .map_err(|_| E::custom("must be at least 1 (or \"auto\")"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeepWarm, E> {
                match v {
                    "auto" => Ok(KeepWarm::Auto),
                    // Environment overrides arrive as strings.
                    n => n.parse().map(KeepWarm::Secs).map_err(|_| {
                        E::custom(format_args!(
                            "expected a number of seconds or \"auto\", not `{n}`"
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What `mode = "auto"` minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// CPU time per hour (the calls' thread CPU, instantiation included).
    #[default]
    Cpu,
    /// Linear memory held on average: an on-demand instance holds it while it handles an
    /// event, a persistent one all the time.
    Memory,
    /// Energy: CPU time times a board's watts per busy core. The power model (idle watts
    /// plus CPU) charges both models the same idle watts, so it picks what `cpu` picks.
    Energy,
    /// Money under the two billing schemes of `compare` (`prices`): on demand by use
    /// (invocations and GB-seconds while handling), persistent reserved (vCPU-hours and
    /// GB-hours held).
    Money,
}

impl Objective {
    /// The name used in the config file and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Energy => "energy",
            Self::Money => "money",
        }
    }
}

/// A price list for the two billing schemes (US dollars): a model, not a measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// Where the prices come from, and when they were read.
    pub source: String,
    /// By use: per million invocations.
    pub per_million_invocations: f64,
    /// By use: per GB-second of memory held while handling.
    pub per_gb_second: f64,
    /// Reserved: per vCPU-hour.
    pub per_vcpu_hour: f64,
    /// Reserved: per GB-hour.
    pub per_gb_hour: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            source: "AWS on-demand list prices, us-east-1, Arm (Graviton), no free tier: \
                     Lambda $0.20 per million requests and $0.0000133334 per GB-second \
                     (https://aws.amazon.com/lambda/pricing/), Fargate Linux/ARM $0.03238 per \
                     vCPU-hour and $0.00356 per GB-hour (https://aws.amazon.com/fargate/pricing/); \
                     as quoted from 2021 (vantage.sh) to 2026-03 (wring.co); the AWS pages \
                     themselves were not readable here"
                .into(),
            per_million_invocations: 0.20,
            per_gb_second: 0.000_013_333_4,
            per_vcpu_hour: 0.032_38,
            per_gb_hour: 0.003_56,
        }
    }
}

/// `[function.auto]`: how `mode = "auto"` decides. Every default works on a Pi untuned;
/// docs/execution-models.md explains each. Times are seconds (fractions allowed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AutoConfig {
    /// What to minimise.
    pub objective: Objective,
    /// How often the controller decides.
    pub tick_secs: f64,
    /// The window whose event rate promotes (held above the break-even) and demotes
    /// (held below it).
    pub stable_window_secs: f64,
    /// The short window that promotes at once when it sees a burst.
    pub panic_window_secs: f64,
    /// Promote when the stable rate exceeds the break-even by this fraction, demote when
    /// it is below the break-even divided by one plus it (hysteresis).
    pub margin: f64,
    /// Promote at once when the panic window's rate is this many times the break-even
    /// (and above one event per panic window).
    pub panic_factor: f64,
    /// Least time in a model before the next switch (a panic promotion excepted).
    pub min_secs_in_model: f64,
    /// When set: while the on-demand model's p99 call time (cold starts included)
    /// breaks this bound and events come, the function stays persistent.
    pub latency_p99_ms: Option<f64>,
    /// The price list for `objective = "money"`.
    pub prices: Prices,
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            objective: Objective::Cpu,
            tick_secs: 2.0,
            stable_window_secs: 60.0,
            panic_window_secs: 6.0,
            margin: 0.2,
            panic_factor: 2.0,
            min_secs_in_model: 30.0,
            latency_p99_ms: None,
            prices: Prices::default(),
        }
    }
}

/// What happens to events that arrive when a function's inbox is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Stop reading from the broker until there is room, so that it holds the rest of
    /// the stream (QoS 0 as well as QoS 1/2); nothing is dropped.
    #[default]
    Backpressure,
    /// Reject the newest event.
    DropNewest,
    /// Reject the oldest waiting event.
    DropOldest,
}

/// One `[[function]]`: a WebAssembly component and the topics it handles.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Unique name: used in logs, metrics and dead letters. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Path of the component, relative to the agent's working directory: a `.wasm`
    /// component (compiled at start-up) or a `.cwasm` made by `edge-agent precompile`.
    pub module: PathBuf,
    /// Expected SHA-256 of the module file (hex). When set, a file with another hash is
    /// refused at start-up.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Execution model: `on-demand` (a fresh instance per event), `persistent`
    /// (long-lived instances that keep their memory) or `auto` (either, chosen at run
    /// time from the function's own measurements; see `auto`).
    #[serde(default)]
    pub mode: Mode,
    /// `mode = "auto"`: how the model is chosen.
    #[serde(default)]
    pub auto: AutoConfig,
    /// Persistent mode: number of long-lived instances. Events are assigned by a hash of
    /// their topic, so the events of one topic stay in order.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Persistent mode: what to do when an instance traps or times out.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Persistent mode: most restarts of one instance within `restart_window_secs`; one
    /// more and the instance stays stopped.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Persistent mode: the window for `max_restarts`, in seconds.
    #[serde(default = "default_restart_window_secs")]
    pub restart_window_secs: u64,
    /// MQTT topic filters (`+` and `#` wildcards) whose messages this function handles.
    pub topics: Vec<String>,
    /// QoS of the subscription for these topics (0, 1 or 2).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Longest a call may run, in milliseconds; a call still running is stopped and its
    /// event goes to the dead-letter topic.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most linear memory one instance may have, in MiB (default 32; 16 on 32-bit hosts,
    /// whose per-instance reservation is 16 MiB). Growing past it fails the call.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// On-demand mode: events of this function handled at once (instances in flight).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// On-demand mode: release the module's compiled code after this many seconds
    /// without events (scale to zero); the next event then pays a full cold start
    /// (load, instantiate, call). Unset (the default): it stays loaded.
    #[serde(default)]
    pub keep_warm_secs: Option<KeepWarm>,
    /// Events waiting for this function before `overflow` applies.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// What happens when more events arrive than wait in the queue: `backpressure` (QoS
    /// 1/2 events keep waiting unacknowledged, so the broker holds back the rest),
    /// `drop-newest` or `drop-oldest`. Dropped events go to the dead-letter topic.
    #[serde(default)]
    pub overflow: Overflow,
    /// Largest payload passed to the function, in bytes; larger events go to the
    /// dead-letter topic without being passed in.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Instruction budget per call (wasmtime fuel): a call that uses it up fails with
    /// `fuel-exhausted`. Deterministic, unlike a timeout; costs some speed for every
    /// function while any function sets it. Default: no budget.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Messages the function may publish per second, across its instances (a token
    /// bucket that also allows bursts of this size). Past it, `publish` returns an error.
    #[serde(default = "default_publish_rate")]
    pub publish_rate: u32,
    /// Let the function publish to topics its own `topics` match (deliberate feedback).
    /// Off, such a publish is refused: it would call the function again with its own
    /// output, a loop that only the rate limit would end.
    #[serde(default)]
    pub allow_feedback: bool,
    /// Lines per second the function may log (stdout, stderr and the `log` interface
    /// together, across its instances; bursts of this size). Past it lines are dropped,
    /// counted, and reported once a second. Every line is cut at 4 KiB.
    #[serde(default = "default_log_rate")]
    pub log_rate: u32,
    /// Largest message the function may publish, in bytes.
    #[serde(default = "default_max_publish_bytes")]
    pub max_publish_bytes: usize,
    /// Static settings the function reads through the `config` interface, like a Lambda
    /// function's environment variables. Values are strings (numbers and booleans are
    /// converted).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Share the function's events with other agents through the broker: its intake
    /// subscribes with `$share/<share>/<filter>`, and the broker hands each message to one
    /// member of the group (docs/fleet.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Take only this agent's part of the function's topics (a hash of the topic), so that
    /// a topic's events and state stay on one agent of several (docs/fleet.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
    /// A second version run beside this one on live traffic, its outputs compared
    /// (`[function.shadow]`); see docs/rollout.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
}

/// `partition = { of = N, index = i }`: this agent takes the topics whose CRC-32 (IEEE,
/// of the topic's bytes) modulo `of` is `index`; the others are acknowledged unhandled.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// How many parts (agents).
    pub of: u32,
    /// This agent's part, from 0.
    pub index: u32,
}

impl Partition {
    /// Whether `topic` is in this part.
    pub fn takes(&self, topic: &str) -> bool {
        crc32fast::hash(topic.as_bytes()) % self.of.max(1) == self.index
    }
}

/// `[function.shadow]`: a second version of a function that sees the same events as the
/// primary (or a share of its topics), with its outputs captured and compared, never
/// published unless `publish_to` says where. Every key is optional: an empty section runs
/// the primary against itself (how noisy the function's outputs are).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// The shadow's component; default: the primary's.
    pub module: Option<PathBuf>,
    /// Its model, `on-demand` or `persistent`; default: the primary's (on demand for an
    /// auto primary).
    pub mode: Option<Mode>,
    /// Its `[function.config]`; default: the primary's.
    pub config: Option<BTreeMap<String, String>>,
    /// Share of the function's topics mirrored, chosen by a hash of the topic (so that a
    /// topic's state sees all its events): 1 mirrors every event.
    pub fraction: f64,
    /// When set, the shadow's outputs are also published, under this topic prefix
    /// (`<publish_to>/<output topic>`); otherwise they are only compared.
    pub publish_to: Option<String>,
    /// Events waiting for the shadow; past it, events are skipped (and counted), so that
    /// the primary never waits for its shadow.
    pub queue_capacity: usize,
    /// Most CPU the shadow's thread may use, in percent of one core (averaged over a
    /// second): past it, the shadow pauses and the events meanwhile are skipped, so that
    /// a costly or hostile version cannot take the CPU its function needs.
    pub max_cpu_percent: f64,
    /// JSON paths left out of the comparison (`ts`, `meta.time`, `readings.*.at`).
    pub ignore: Vec<String>,
    /// The first this many mirrored events also run the primary a second time, to learn
    /// which output paths differ on their own (noise); 0 turns it off.
    pub calibrate_events: u64,
    /// Mismatches kept in full (both outputs, the input and its topic).
    pub keep_mismatches: usize,
    /// Canary: a share of the live topics goes to the shadow's version, its outputs
    /// published and its state the function's, raised step by step while it holds up and
    /// rolled back when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
}

/// `[function.shadow.canary]`: Flagger's steps for a function's version 2. Each analysis
/// interval the canary's failure ratio (and, when bounded, the shadow's mismatch ratio on
/// the other topics) is checked: within bounds, the share goes up by `step` until
/// `max_weight`; out of bounds, the share goes to 0 and stays there (rolled back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// The share of topics (by hash) the canary starts with.
    pub weight: f64,
    /// How much the share goes up after an interval within bounds.
    pub step: f64,
    /// The share it stops at (then `edge-agent promote` makes it the primary).
    pub max_weight: f64,
    /// The analysis interval, seconds.
    pub interval_secs: f64,
    /// Most failed canary events per canary event in an interval (any failure kind but the
    /// state store's); more rolls back.
    pub max_failure_ratio: f64,
    /// When set: most mismatches per compared event the shadow may see on the other
    /// topics in an interval (noise subtracted); more rolls back.
    pub max_mismatch_ratio: Option<f64>,
    /// Fewest canary events an interval needs to raise the share (fewer: it holds; a
    /// failure among them still counts against this many).
    pub min_events: u64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            weight: 0.1,
            step: 0.1,
            max_weight: 0.5,
            interval_secs: 60.0,
            max_failure_ratio: 0.01,
            max_mismatch_ratio: None,
            min_events: 10,
        }
    }
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            module: None,
            mode: None,
            config: None,
            fraction: 1.0,
            publish_to: None,
            queue_capacity: 64,
            max_cpu_percent: 5.0,
            ignore: Vec::new(),
            calibrate_events: 100,
            keep_mismatches: 20,
            canary: None,
        }
    }
}

impl FunctionConfig {
    /// The shadow as a function of its own, `<name>~shadow` (its state namespace too).
    pub fn shadow_function(&self) -> Option<FunctionConfig> {
        let s = self.shadow.as_ref()?;
        Some(FunctionConfig {
            name: format!("{}~shadow", self.name),
            module: s.module.clone().unwrap_or_else(|| self.module.clone()),
            sha256: if s.module.is_some() {
                None
            } else {
                self.sha256.clone()
            },
            mode: s.mode.unwrap_or(match self.mode {
                Mode::Auto => Mode::OnDemand,
                m => m,
            }),
            config: s.config.clone().unwrap_or_else(|| self.config.clone()),
            keep_warm_secs: None,
            shadow: None,
            ..self.clone()
        })
    }

    /// The shadow's version as the canary runs it, `<name>~canary`: the shadow's module
    /// and config in the function's model, on the function's own state (a canary topic's
    /// state moves with it); `None` without a canary.
    pub fn canary_function(&self) -> Option<FunctionConfig> {
        let s = self.shadow.as_ref()?;
        s.canary.as_ref()?;
        Some(FunctionConfig {
            name: format!("{}~canary", self.name),
            mode: self.mode,
            ..self.shadow_function()?
        })
    }

    /// The primary run a second time for the shadow's noise calibration,
    /// `<name>~control`, in the primary's model (on demand for an auto primary); `None`
    /// without a shadow or a calibration.
    pub fn control_function(&self) -> Option<FunctionConfig> {
        let s = self.shadow.as_ref()?;
        (s.calibrate_events > 0).then(|| FunctionConfig {
            name: format!("{}~control", self.name),
            mode: match self.mode {
                Mode::Auto => Mode::OnDemand,
                m => m,
            },
            keep_warm_secs: None,
            shadow: None,
            ..self.clone()
        })
    }
}

// Each default is written once: in the section's `Default` impl (sections are
// `#[serde(default)]` as a whole), or, for `[[function]]` whose name, module and topics
// have no default, in the `default_*` function its field names.

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: "edge-agent".into(),
            data_dir: "./data".into(),
            topic_prefix: "edge-agent".into(),
            shutdown_grace_ms: 5_000,
            stats_interval_secs: 60,
            max_hops: 8,
            watch: true,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            embedded: false,
            allow_anonymous: false,
            client_id: None,
            clean_session: false,
            keep_alive_secs: 30,
            connect_timeout_secs: 30,
            username: None,
            password: None,
            tls: None,
            max_packet_bytes: 1024 * 1024,
            reconnect_min_ms: 100,
            reconnect_max_ms: 30_000,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            allocator: AllocatorMode::Auto,
            max_instances: 64,
            epoch_tick_ms: 10,
            max_module_mb: 64,
            compile_cache: true,
            async_threads: 1,
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            cache_mb: 8,
            min_flush_interval_ms: 0,
            max_flushes_per_sec: 100,
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_keys_per_function: 10_000,
            max_pending_bytes_per_call: 1024 * 1024,
            max_pending_keys_per_call: 1_000,
            max_bytes_per_function: 64 * 1024 * 1024,
            min_free_mb: 64,
        }
    }
}

fn default_instances() -> u32 {
    1
}
fn default_max_restarts() -> u32 {
    5
}
fn default_restart_window_secs() -> u64 {
    60
}
fn default_qos() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_memory_limit_mb() -> u64 {
    // At most the per-instance reservation: 16 MiB on 32-bit hosts (armv7).
    32.min(host_memory_reservation() / (1024 * 1024))
}
fn default_max_concurrency() -> u32 {
    4
}
fn default_queue_capacity() -> usize {
    64
}
fn default_publish_rate() -> u32 {
    1_000
}
fn default_log_rate() -> u32 {
    // 20 lines of at most 4 KiB: 80 KB/s per function at worst, which an SD card and
    // journald can take all day. The soak run at 100 wrote 330 KB/s for two functions.
    20
}
fn default_max_publish_bytes() -> usize {
    256 * 1024
}
fn default_max_payload_bytes() -> usize {
    256 * 1024
}

/// Linear-memory reservation per instance on 64-bit hosts. Part of the compiled code's
/// settings (a `.cwasm` only loads into an engine with the same value), so it is fixed
/// rather than configurable; it also caps `memory_limit_mb`.
pub const MEMORY_RESERVATION_64: u64 = 256 * 1024 * 1024;
/// The same on 32-bit hosts (armv7 through Pulley), where address space is scarce.
pub const MEMORY_RESERVATION_32: u64 = 16 * 1024 * 1024;

/// The per-instance memory reservation of this host: the largest `memory_limit_mb`.
pub fn host_memory_reservation() -> u64 {
    if cfg!(target_pointer_width = "32") {
        MEMORY_RESERVATION_32
    } else {
        MEMORY_RESERVATION_64
    }
}

impl Mode {
    /// The name used in the config file and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on-demand",
            Self::Persistent => "persistent",
            Self::Auto => "auto",
        }
    }
}

impl Config {
    /// Reads `path` (format by extension: `.toml`, `.yaml`/`.yml`, `.json`), applies
    /// `EDGE_AGENT__*` environment overrides and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key or function at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key or function at fault.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, format) = Self::read(path)?;
        Self::from_text(path, &text, format, env)
    }

    /// The file's text, and its format by its extension.
    fn read(path: &Path) -> Result<(String, Option<config::FileFormat>), ConfigError> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => None,
            Some("yaml" | "yml") => Some(config::FileFormat::Yaml),
            Some("json") => Some(config::FileFormat::Json),
            _ => return Err(ParseFailure::new(ParseError::Format).in_file(path)),
        };
        let what = "config file";
        let text = std::fs::read_to_string(path)
            .map_err(|source| ParseFailure::new(ParseError::Read { what, source }).in_file(path))?;
        Ok((text, format))
    }

    /// [`Config::load`] for a reload of the agent that runs `running`: its data directory,
    /// which a reload cannot change, is not probed again. The disk under it is the state
    /// store's to report (a disk that failed since the start makes its functions pause and
    /// says why), and a reload that adds or removes functions during such a fault is taken.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key or function at fault.
    pub fn load_for_reload(path: &Path, running: &Config) -> Result<Self, ConfigError> {
        let (text, format) = Self::read(path)?;
        let in_use = Some(running.agent.data_dir.as_path());
        Self::from_text_with(path, &text, format, std::env::vars(), in_use)
    }

    /// The config that `text` would be as the file at `path`, checked as [`Config::load`]
    /// checks it (a deployment's new functions, before they are written).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key or function at fault.
    pub fn load_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_text(path, text, None, std::env::vars())
    }

    fn from_text(
        path: &Path,
        text: &str,
        format: Option<config::FileFormat>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_text_with(path, text, format, env, None)
    }

    /// [`Config::from_text`]; `data_dir_in_use` is not probed again if it is the result's.
    fn from_text_with(
        path: &Path,
        text: &str,
        format: Option<config::FileFormat>,
        env: impl IntoIterator<Item = (String, String)>,
        data_dir_in_use: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let blame = |e: ConfigError| e.blamed_on_environment(&env);
        let mut cfg: Config = tree(text, format, env.clone())
            .and_then(|mut tree| {
                limits_within_the_packet_limit(&mut tree);
                Ok(de::from_tree(&tree)?)
            })
            .map_err(|e| e.in_file(path))
            .map_err(blame)?;
        cfg.source = path.to_path_buf();
        cfg.resolve_paths();
        cfg.validate_with(data_dir_in_use == Some(cfg.agent.data_dir.as_path()))
            .map_err(blame)?;
        Ok(cfg)
    }

    /// Makes the relative paths in the file (`module`, `agent.data_dir`, the TLS files)
    /// relative to the file's own directory rather than the working directory, so that a
    /// config reads the same from anywhere (`check --config /etc/edge-agent/config.toml`).
    fn resolve_paths(&mut self) {
        let dir = self.source.parent().unwrap_or(Path::new(""));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        // Joined component by component: `./data` under `/etc/edge-agent` is
        // `/etc/edge-agent/data`, not `/etc/edge-agent/./data` in every message.
        // An empty path stays empty, for validation to refuse: joined, `data_dir = ""` was
        // the config file's own folder, silently (a probe, 2026-12-08).
        // So does one of blanks alone (`"   "` was a folder of that name, a probe found).
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.to_string_lossy().trim().is_empty() {
                *p = base.join(&*p).components().collect();
            }
        };
        resolve(&mut self.agent.data_dir);
        for f in &mut self.functions {
            resolve(&mut f.module);
            // A shadow's module too: until 2026-12-08 it was read from the working
            // directory, so a config run from elsewhere (systemd's is `/`) could not
            // read it, and its messages named it as written (a probe).
            if let Some(m) = f.shadow.as_mut().and_then(|s| s.module.as_mut()) {
                resolve(m);
            }
        }
        if let Some(tls) = &mut self.broker.tls {
            for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
                file.iter_mut().for_each(resolve);
            }
        }
    }

    /// The names of every shadow side the functions run (`<name>~shadow`,
    /// `<name>~control`): the state namespaces of their own.
    pub fn shadow_sides(&self) -> Vec<String> {
        self.functions
            .iter()
            .flat_map(|f| [f.shadow_function(), f.control_function()])
            .flatten()
            .map(|f| f.name)
            .collect()
    }

    /// The client id in use: `broker.client_id` or `edge-agent-<agent.id>`.
    pub fn client_id(&self) -> String {
        self.broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{}", self.agent.id))
    }

    /// The topic statistics are published on.
    pub fn stats_topic(&self) -> String {
        format!("{}/{}/stats", self.agent.topic_prefix, self.agent.id)
    }

    /// The topic of the agent's presence: retained `online` while connected, `offline`
    /// (the last will, or said at a clean stop) otherwise.
    pub fn status_topic(&self) -> String {
        format!("{}/{}/status", self.agent.topic_prefix, self.agent.id)
    }

    /// The topic function `function`'s shadow report is retained on.
    pub fn shadow_topic(&self, function: &str) -> String {
        format!(
            "{}/{}/shadow/{function}",
            self.agent.topic_prefix, self.agent.id
        )
    }

    /// The topic dead letters are published on.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}/{}/dead-letter", self.agent.topic_prefix, self.agent.id)
    }

    pub(crate) fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Reads `text` (TOML, or the `format` given) under the `EDGE_AGENT__*` variables of `env`
/// into a `T`. TOML is parsed here, once, so that its errors keep their line.
fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    format: Option<config::FileFormat>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ParseFailure> {
    Ok(de::from_tree(&tree(text, format, env)?)?)
}

/// The file and the environment merged, before deserialization.
fn tree(
    text: &str,
    format: Option<config::FileFormat>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<serde_json::Value, ParseFailure> {
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let builder = config::Config::builder();
    let builder = match format {
        None => builder.add_source(toml_file::TomlFile::parse(text)?),
        Some(format) => builder.add_source(config::File::from_str(text, format)),
    };
    let tree: serde_json::Value = builder
        .add_source(
            config::Environment::with_prefix("EDGE_AGENT")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        )
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| ParseFailure::new(ParseError::Syntax(Box::new(e))))?;
    Ok(tree)
}

/// A function's `max_publish_bytes` and `max_payload_bytes` left out default to 256 KiB,
/// or to `broker.max_packet_bytes` where that is lower: lowering the packet limit for a
/// broker that takes less does not make every function's defaults invalid (until
/// 2026-12-07 `check` refused them, naming keys the file did not have).
fn limits_within_the_packet_limit(tree: &mut serde_json::Value) {
    // A number in the file, text from the environment.
    let Some(packet) = tree
        .pointer("/broker/max_packet_bytes")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
    else {
        return;
    };
    let Some(functions) = tree.get_mut("function").and_then(|f| f.as_array_mut()) else {
        return;
    };
    for f in functions.iter_mut().filter_map(|f| f.as_object_mut()) {
        for (key, default) in [
            ("max_publish_bytes", default_max_publish_bytes()),
            ("max_payload_bytes", default_max_payload_bytes()),
        ] {
            if packet < default as u64 && !f.contains_key(key) {
                f.insert(key.into(), packet.into());
            }
        }
    }
}

/// Reads a TOML file of another kind (a `compare` workload) with the same error messages
/// as the agent's config: one line naming the file and the key.
///
/// # Errors
/// [`ConfigError::Parse`] naming `path` and the key at fault.
pub fn from_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    parse(text, None, []).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests;

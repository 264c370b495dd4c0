//! `edge-agent compare`: runs the same functions in both execution models on this
//! device, each model in an agent process of its own (so that its CPU and memory belong to
//! it alone), drives the same traffic through one broker, and reports what each model
//! cost, measured from outside: loss, duplicates and end-to-end latency from the
//! publisher's send to the output's arrival, process CPU per event and per hour, idle and
//! peak memory. The agent's own statistics for the same run are read beside them as a
//! cross-check. Energy and money come from models (a power profile, a price list), fitted
//! over the rates to find the break-even. Then one verdict line per function.
//!
//! The workload is built in (`echo`, stateless, and `counter`, stateful, over a sweep of
//! rates) or read from a file ([`workload`]).

pub mod cost;
pub mod html;
pub mod measure;
pub mod stats;
pub mod tradeoffs;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::cost::{Billing, BreakEven, Costs, Fits, PowerProfile, Prices, Usage};
use self::measure::Phase;
use self::workload::{FunctionPlan, Outputs, Plan};
use edge_agent::config::{BrokerConfig, ConfigError, Mode};
use edge_agent::failure::Exit;
use edge_agent::messages::{Message as _, Presence, Report as StatsReport, Status};

/// Version of the JSON report's layout.
pub const SCHEMA_VERSION: u32 = 2;

/// Arguments of `edge-agent compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// A workload file: functions, traffic patterns, payload, QoS, broker, cost models
    /// (see configs/compare.toml). Default: the built-in workload.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder with the example functions (`echo` and `counter`, `.wasm` or `.cwasm`).
    /// Default: `modules/dist` under the working directory, then the installed package's
    /// `/usr/lib/edge-agent/modules`.
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page with charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Measure nothing: re-render saved JSON reports (repeat for several devices, shown
    /// side by side in the HTML).
    #[arg(long, value_name = "JSON")]
    pub from: Vec<PathBuf>,
    /// Short phases (about half a minute in all), for CI and first looks.
    #[arg(long)]
    pub quick: bool,
    /// The device power profile that turns CPU time into energy: pi-zero-2w, pi4, pi5 or
    /// x86-laptop. Default: x86-laptop on x86_64, pi4 elsewhere.
    #[arg(long, value_name = "PROFILE")]
    pub power: Option<String>,
    /// Start each agent process under this command (words split at spaces): for example
    /// `taskset -c 1` to pin the agents to one core, or `qemu-aarch64 -L
    /// /usr/aarch64-linux-gnu` when this program itself runs under emulation. CPU and
    /// memory are then the wrapper's process's.
    #[arg(long, value_name = "COMMAND")]
    pub agent_wrapper: Option<String>,
}

/// Reads a report saved with `--json`.
///
/// # Errors
/// [`CompareError::Report`] naming the file if it cannot be read, is not a report, or
/// has another layout version.
pub fn load(path: &Path) -> Result<Report, CompareError> {
    let bad = |why: String| CompareError::Report(format!("{}: {why}", path.display()));
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    match v.get("schema_version").and_then(serde_json::Value::as_u64) {
        Some(n) if n == u64::from(SCHEMA_VERSION) => {}
        Some(n) => {
            return Err(bad(format!(
                "report layout {n}, this agent reads {SCHEMA_VERSION}: re-run compare with \
                 this version"
            )));
        }
        None => return Err(bad("not a compare report (no schema_version)".into())),
    }
    serde_json::from_value(v).map_err(|e| bad(format!("not a compare report: {e}")))
}

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A saved report (`--from`) could not be read.
    #[error("{0}")]
    Report(String),
    /// The example functions were not found.
    #[error("{0}")]
    Modules(String),
    /// The broker, a file or an agent process could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The workload file is wrong.
    #[error(transparent)]
    Workload(#[from] ConfigError),
    /// The broker's URL or TLS files cannot be used.
    #[error(transparent)]
    Client(#[from] measure::ClientError),
    /// `--json` was given with several `--from` reports.
    #[error("--json writes one report; --from gave {0}")]
    SeveralReports(usize),
    /// The report or the page could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl CompareError {
    /// How the command ends: [`Exit::Unavailable`] if it cannot run at all (no modules, no
    /// broker), [`Exit::Config`] on a bad workload file, [`Exit::NoInput`] if a `--from`
    /// report cannot be read.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Report(_) => Exit::NoInput,
            Self::Modules(_) | Self::Setup(_) => Exit::Unavailable,
            Self::Client(_) => Exit::Config,
            Self::Workload(_) => Exit::Config,
            Self::SeveralReports(_) => Exit::Usage,
            Self::Write { .. } => Exit::CantCreate,
            Self::Runtime(_) => Exit::Failure,
        }
    }
}

/// `edge-agent compare`: measures (or, with `--from`, reads saved reports), prints the table
/// and verdicts on stdout, and writes the JSON and the HTML page where asked.
///
/// # Errors
/// [`CompareError`]; its [`CompareError::exit`] is the process's exit status.
pub fn run(args: &CompareArgs) -> Result<(), CompareError> {
    let mut reports = args
        .from
        .iter()
        .map(|p| load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut runtime = None;
    if reports.is_empty() {
        let rt = tokio::runtime::Runtime::new().map_err(CompareError::Runtime)?;
        let measured = rt.block_on(compare(args));
        // The broker's threads cannot be stopped (rumqttd 0.20): leave without waiting.
        runtime = Some(rt);
        reports.push(measured?);
    }
    for r in &reports {
        print!("{}", render(r));
    }
    let write = |path: &Path, what: &str, body: String| {
        std::fs::write(path, body).map_err(|source| CompareError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        eprintln!("compare: {what} written to {}", path.display());
        Ok::<(), CompareError>(())
    };
    if let Some(path) = &args.json {
        let [report] = reports.as_slice() else {
            return Err(CompareError::SeveralReports(reports.len()));
        };
        write(
            path,
            "report",
            serde_json::to_string_pretty(report).unwrap_or_default(),
        )?;
    }
    if let Some(path) = &args.html {
        write(path, "page", html::render(&reports))?;
    }
    if let Some(rt) = runtime {
        rt.shutdown_background();
    }
    Ok(())
}

/// One function in one model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelRun {
    /// `persistent` or `on-demand`.
    pub model: String,
    /// Resident memory of the agent process, idle, before any event.
    pub idle_rss_bytes: u64,
    /// Peak resident memory of the agent process over the run.
    pub peak_rss_bytes: u64,
    /// CPU the agent process spends with no events (timers, keep-alives, stats), in CPU
    /// seconds per hour: the standing cost beside each phase's cost per event.
    pub idle_cpu_seconds_per_hour: f64,
    /// One entry per steady rate.
    pub phases: Vec<Phase>,
    /// Resident memory of the agent process over the run: (seconds, bytes), every 250 ms.
    pub rss_over_time: Vec<(f64, u64)>,
    /// The highest rate whose events were all handled with the backlog gone within a
    /// second (or a tenth of the phase) of the last send; none if no phase was.
    pub max_sustained_rate: Option<f64>,
    /// Memory held above the idle RSS over the run, MB-seconds.
    pub memory_mb_seconds_above_idle: f64,
    /// Size of the state store on disk after the run.
    pub state_disk_bytes: u64,
    /// The agent's own per-call execution p50, µs.
    pub agent_execute_p50_us: u64,
    /// The agent's own per-call thread CPU p50 (instantiation and call), µs: the part of
    /// the process CPU per event that is the function's.
    pub agent_call_cpu_p50_us: u64,
    /// Events the agent says it handled (its stats topic), for the cross-check.
    pub agent_succeeded: u64,
    /// The agent's own end-to-end p50 over the run, µs.
    pub agent_end_to_end_p50_us: u64,
    /// The agent's own per-event instantiation p50 (the on-demand cold start), µs.
    pub agent_instantiate_p50_us: u64,
    /// Full cold starts (scale to zero): how many, and the p50 of loading the module
    /// again before that event's instantiation, µs.
    pub agent_full_cold_starts: u64,
    /// See [`ModelRun::agent_full_cold_starts`].
    pub agent_full_cold_start_load_p50_us: u64,
    /// The agent's own p50 of the wait in the function's queue, µs.
    pub agent_queue_p50_us: u64,
    /// The agent's own p50 from a state-writing call's end to its writes being durable
    /// (the group commit), µs; 0 if the function wrote no state.
    pub agent_commit_p50_us: u64,
    /// The agent's largest linear memory of one instance: held during a call on demand,
    /// all the time when persistent.
    pub agent_instance_memory_bytes: u64,
    /// End-to-end latency of every event of the run, as (quantile, µs) points.
    pub latency_cdf: Vec<(f64, u64)>,
    /// How the model is billed in [`ModelRun::costs`]: `by-use` or `reserved`.
    pub billing: String,
    /// What the model costs per hour idle (rate 0) and at each measured rate.
    pub costs: Vec<Costs>,
    /// Those costs fitted as standing + rate × marginal.
    pub fit: Fits,
    /// If the run failed: why (the other figures are then partial).
    pub error: Option<String>,
}

impl ModelRun {
    /// Prices what was measured, and fits the costs over the rates.
    fn price(&mut self, power: &PowerProfile, prices: &Prices) {
        let billing = if self.model == Model::Persistent.name() {
            Billing::Reserved
        } else {
            Billing::ByUse
        };
        self.billing = match billing {
            Billing::ByUse => "by-use",
            Billing::Reserved => "reserved",
        }
        .into();
        let call_seconds = (self.agent_instantiate_p50_us + self.agent_execute_p50_us) as f64 / 1e6;
        let usage = |rate: f64, cpu: f64, rss: u64| Usage {
            rate,
            cpu_seconds_per_hour: cpu,
            rss_bytes: rss as f64,
            call_memory_bytes: self.agent_instance_memory_bytes as f64,
            call_seconds,
        };
        let idle = usage(0.0, self.idle_cpu_seconds_per_hour, self.idle_rss_bytes);
        self.costs = std::iter::once(idle)
            .chain(
                self.phases
                    .iter()
                    .map(|p| usage(p.rate, p.cpu_seconds_per_hour, p.rss_mean_bytes)),
            )
            .map(|u| Costs::of(u, power, prices, billing))
            .collect();
        self.fit = Fits::of(&self.costs);
    }
}

/// One function in every model, and the verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionReport {
    /// Function (module) name.
    pub function: String,
    /// Whether it writes state.
    pub stateful: bool,
    /// Each model's run.
    pub models: Vec<ModelRun>,
    /// Where the models cost the same, in CPU, memory, energy and money.
    pub break_even: Vec<BreakEven>,
    /// One line: which model to use here, and why.
    pub verdict: String,
    /// The serverless-vs-containers trade-offs, filled in with this run's numbers.
    pub tradeoffs: Vec<tradeoffs::TradeOff>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The agent's version.
    pub agent_version: String,
    /// `uname -m` style machine name and processor count.
    pub machine: String,
    /// `built-in`, or the workload file.
    pub workload: String,
    /// QoS of the events.
    pub qos: u8,
    /// The power profile energy is modelled with (a model, not a measurement).
    pub power: PowerProfile,
    /// The prices money is modelled with (a model, not a measurement).
    pub prices: Prices,
    /// One entry per function.
    pub functions: Vec<FunctionReport>,
}

/// What `compare` is doing: a progress bar on a terminal, plain lines otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(steps: u64) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(steps);
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} phases, about {eta} left: {msg}",
        );
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(Some(bar))
    }

    fn say(&self, msg: String) {
        match &self.0 {
            Some(bar) => bar.set_message(msg),
            None => eprintln!("compare: {msg}"),
        }
    }

    fn step(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Finds the example functions: `--modules`, `modules/dist`, the package's folder.
fn modules_dir(args: &CompareArgs) -> Result<PathBuf, CompareError> {
    let candidates: Vec<PathBuf> = match &args.modules {
        Some(d) => vec![d.clone()],
        None => vec![
            PathBuf::from("modules/dist"),
            PathBuf::from("/usr/lib/edge-agent/modules"),
        ],
    };
    for dir in &candidates {
        if ["echo", "counter"].iter().all(|w| module(dir, w).is_some()) {
            return std::path::absolute(dir).map_err(|e| CompareError::Setup(e.to_string()));
        }
    }
    Err(CompareError::Modules(format!(
        "no echo and counter modules (.wasm or .cwasm) in {}: build them with modules/build.sh, \
         or name the folder with --modules",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )))
}

fn module(dir: &Path, name: &str) -> Option<PathBuf> {
    ["cwasm", "wasm"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
}

/// Runs the comparison and prints its table and verdicts as it goes.
///
/// # Errors
/// [`CompareError`] if the modules are missing or the broker cannot start. A model run
/// that fails is reported in its [`ModelRun::error`], not as an error.
pub async fn compare(args: &CompareArgs) -> Result<Report, CompareError> {
    let plan = match &args.config {
        Some(path) => Plan::load(path, args.quick)?,
        None => {
            let dir = modules_dir(args)?;
            let (rates, secs): (&[f64], f64) = if args.quick {
                (&[20.0, 200.0], 2.0)
            } else {
                (&[1.0, 10.0, 100.0, 1000.0], 20.0)
            };
            let found = |name| module(&dir, name).unwrap_or_default();
            Plan::built_in(found("echo"), found("counter"), rates, secs)
        }
    };
    let power = match (&args.power, &plan.power) {
        (None, Some(p)) => p.clone(),
        (name, _) => {
            cost::power_profile(name.as_deref()).map_err(|e| CompareError::Setup(e.to_string()))?
        }
    };
    let wrapper: Vec<String> = args
        .agent_wrapper
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let idle_secs = if args.quick { 2.0 } else { 5.0 };
    let phases: usize = plan.functions.iter().map(|f| f.phases.len()).sum();
    let total: f64 = plan
        .functions
        .iter()
        .flat_map(|f| &f.phases)
        .map(|p| p.duration.as_secs_f64() + 1.0)
        .sum::<f64>()
        * MODELS.len() as f64
        + plan.functions.len() as f64 * MODELS.len() as f64 * (idle_secs + 4.0)
        + plan
            .functions
            .iter()
            .map(|f| f.keep_warm_secs as f64 + 1.0)
            .sum::<f64>();
    eprintln!(
        "compare: {} functions x {} models, each in its own agent process; {phases} phases per \
         model over the functions{}; about {:.0} s in all",
        plan.functions.len(),
        MODELS.len(),
        plan.source
            .as_ref()
            .map(|p| format!(" from {}", p.display()))
            .unwrap_or_default(),
        total
    );
    let broker = match &plan.broker {
        Some(b) => b.clone(),
        None => BrokerConfig {
            url: start_broker()?,
            ..BrokerConfig::default()
        },
    };
    // Fails here, once, on a bad URL or TLS file rather than in every model.
    measure::client(&broker, "edge-agent-compare-check")?;
    let work = WorkDir::new()?;
    let progress = Progress::new(((plan.functions.len() + phases) * MODELS.len()) as u64);
    let mut functions = Vec::new();
    for f in &plan.functions {
        let mut models = Vec::new();
        for model in MODELS {
            let mut run = run_model(ModelSetup {
                work: work.path(),
                broker: &broker,
                plan: &plan,
                function: f,
                model,
                idle_secs,
                wrapper: &wrapper,
                progress: &progress,
            })
            .await;
            run.price(&power, &plan.prices);
            models.push(run);
        }
        let max_rate = f.phases.iter().map(|p| p.rate).fold(0.0, f64::max);
        let break_even = break_even(&models, max_rate);
        let verdict = verdict(&f.name, &models, &break_even, max_rate);
        // An untouched store is sled's few-byte `conf` file; any write adds a segment.
        let stateful = models.iter().any(|m| m.state_disk_bytes > 1024);
        functions.push(FunctionReport {
            function: f.name.clone(),
            stateful,
            tradeoffs: tradeoffs::of(&models, stateful),
            models,
            break_even,
            verdict,
        });
    }
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: format!(
            "{} {}, {} processors",
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        workload: plan
            .source
            .as_ref()
            .map_or_else(|| "built-in".into(), |p| p.display().to_string()),
        qos: plan.qos,
        power,
        prices: plan.prices.clone(),
        functions,
    })
}

/// The models each function runs in, in this order.
pub const MODELS: [Model; 3] = [Model::Persistent, Model::OnDemand, Model::ScaleToZero];

/// An execution model as `compare` runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Long-lived instances (`instances` of them).
    Persistent,
    /// A fresh instance per event, the module kept loaded (the default).
    OnDemand,
    /// On demand with `keep_warm_secs`: the module is released when idle, and the next
    /// event pays a full cold start.
    ScaleToZero,
}

impl Model {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Persistent => "persistent",
            Self::OnDemand => "on-demand",
            Self::ScaleToZero => "scale-to-zero",
        }
    }

    /// This model's run among `models`, if it did not fail.
    pub fn run_in(self, models: &[ModelRun]) -> Option<&ModelRun> {
        models
            .iter()
            .find(|r| r.model == self.name() && r.error.is_none())
    }

    fn mode(self) -> Mode {
        match self {
            Self::Persistent => Mode::Persistent,
            Self::OnDemand | Self::ScaleToZero => Mode::OnDemand,
        }
    }
}

/// A temporary folder for the agents' configs and state, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self, CompareError> {
        let dir = std::env::temp_dir().join(format!("edge-agent-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| CompareError::Setup(format!("{}: {e}", dir.display())))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker the models share, in this process (so its CPU counts for neither).
#[cfg(feature = "embedded-broker")]
fn start_broker() -> Result<String, CompareError> {
    let mut cfg = edge_agent::config::Config::default();
    cfg.broker.url = "mqtt://127.0.0.1:0".into();
    cfg.broker.embedded = true;
    edge_agent::mqtt::broker::start(&cfg)
        .map(|a| format!("mqtt://127.0.0.1:{}", a.port()))
        .map_err(|e| CompareError::Setup(edge_agent::failure::chain(&e)))
}

/// Without the embedded broker (the small device build), the device's own broker: the
/// Debian package recommends Mosquitto, which listens on 127.0.0.1:1883. A workload file
/// with a `[broker]` section names another.
#[cfg(not(feature = "embedded-broker"))]
fn start_broker() -> Result<String, CompareError> {
    let url = "mqtt://127.0.0.1:1883".to_string();
    eprintln!(
        "compare: this build has no embedded broker; using {url} (a workload file's [broker] names another)"
    );
    Ok(url)
}

/// An agent process, killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One function in one model, and where to run it.
struct ModelSetup<'a> {
    work: &'a Path,
    broker: &'a BrokerConfig,
    plan: &'a Plan,
    function: &'a FunctionPlan,
    model: Model,
    idle_secs: f64,
    wrapper: &'a [String],
    progress: &'a Progress,
}

async fn run_model(setup: ModelSetup<'_>) -> ModelRun {
    let mut run = ModelRun {
        model: setup.model.name().to_string(),
        ..ModelRun::default()
    };
    if let Err(e) = measure_model(&setup, &mut run).await {
        let (name, mode) = (&setup.function.name, setup.model.name());
        let e = edge_agent::failure::chain(&e);
        setup.progress.say(format!("{name} {mode} failed: {e}"));
        run.error = Some(e);
    }
    run
}

/// The agent's config for one function in one model, as JSON (which the agent reads like
/// TOML, and which carries an existing broker's settings over unchanged).
fn agent_config(setup: &ModelSetup<'_>, id: &str, data: &Path) -> serde_json::Value {
    let f = setup.function;
    let mut function = serde_json::json!({
        "name": f.name,
        "module": f.module,
        "mode": setup.model.mode().as_str(),
        "topics": [format!("compare/in/{id}/+")],
        "qos": setup.plan.qos,
        "publish_rate": 1_000_000,
        "config": f.config,
    });
    match setup.model {
        Model::Persistent => function["instances"] = f.instances.into(),
        Model::ScaleToZero => function["keep_warm_secs"] = f.keep_warm_secs.into(),
        Model::OnDemand => {}
    }
    serde_json::json!({
        "agent": { "id": id, "data_dir": data, "stats_interval_secs": 1 },
        "broker": setup.broker,
        "function": [function],
    })
}

/// Why one model of one function could not be measured: the report keeps the reason, and
/// the run goes on with the next.
#[derive(Debug, thiserror::Error)]
enum MeasureError {
    /// A client of the broker.
    #[error(transparent)]
    Client(#[from] measure::ClientError),
    /// The agent's config file.
    #[error("{}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        #[source]
        source: std::io::Error,
    },
    /// This program's own path, to start the agent with.
    #[error("cannot find this program")]
    Exe(#[source] std::io::Error),
    /// The agent process.
    #[error("cannot start the agent ({0})")]
    Start(String, #[source] std::io::Error),
    /// The agent never said it was online.
    #[error(
        "the agent did not come online within 600 s (try `edge-agent check` on the \
         function's module and config)"
    )]
    Offline,
    /// A stats report this build cannot read.
    #[error("the agent's stats cannot be read")]
    Stats(#[source] edge_agent::messages::ReadError),
}

async fn measure_model(setup: &ModelSetup<'_>, run: &mut ModelRun) -> Result<(), MeasureError> {
    let ModelSetup {
        work,
        broker,
        plan,
        function: f,
        model,
        idle_secs,
        wrapper,
        progress,
    } = *setup;
    let id = format!("compare-{}-{}", f.name, model.name());
    let what = format!("{} {}", f.name, model.name());
    progress.say(format!("{what}: starting its agent, then idle"));
    let data = work.join(&id);
    let file = work.join(format!("{id}.json"));
    let config = serde_json::to_vec_pretty(&agent_config(setup, &id, &data)).unwrap_or_default();
    std::fs::write(&file, config).map_err(|source| MeasureError::Config {
        path: file.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(MeasureError::Exe)?;
    let mut status = measure::subscribe(
        broker,
        &format!("{id}-status"),
        &format!("edge-agent/{id}/status"),
    )
    .await?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| MeasureError::Start(wrapper.join(" "), e))?;
    let agent = AgentProcess(child);
    let spawned = std::time::Instant::now();
    let pid = agent.0.id();
    let online = async {
        while let Some((_, body)) = status.recv().await {
            // Another agent's or an older run's message, in whatever format, is not ours.
            if let Ok(s) = Status::from_bytes(&body)
                && s.status == Presence::Online
                && s.pid == pid
            {
                return true;
            }
        }
        false
    };
    // Compiling a Python or JavaScript .wasm takes minutes on a Pi (precompile it).
    if !tokio::time::timeout(Duration::from_secs(600), online)
        .await
        .unwrap_or(false)
    {
        return Err(MeasureError::Offline);
    }
    // What loading the module costs, compile included: a function scaled to zero pays it
    // again on its next event, so a phase must wait at least that long for outputs.
    let startup = spawned.elapsed();
    // Scaled to zero, it is idle once keep_warm_secs have passed (checked four times per
    // keep_warm_secs, at most once a second).
    let settle = match model {
        Model::ScaleToZero => 1.5 + f.keep_warm_secs as f64,
        _ => 0.5,
    };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    run.idle_rss_bytes = edge_agent::clock::process_status_bytes(pid, "VmRSS").unwrap_or(0);
    let idle = Duration::from_secs_f64(idle_secs);
    let cpu0 = measure::CpuClock::read(pid);
    tokio::time::sleep(idle).await;
    let idle_cpu = measure::CpuClock::read(pid).since(&cpu0);
    run.idle_cpu_seconds_per_hour = idle_cpu / idle.as_secs_f64() * 3600.0;
    progress.step();
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let t0 = std::time::Instant::now();
    let sampler = tokio::spawn(measure::sample_rss(
        pid,
        t0,
        Duration::from_millis(250),
        stop_sampling.clone(),
    ));
    let mut outputs = measure::subscribe(broker, &format!("{id}-out"), &f.output_filter).await?;
    let mut stats = measure::subscribe(
        broker,
        &format!("{id}-stats"),
        &format!("edge-agent/{id}/stats"),
    )
    .await?;
    let (client, mut eventloop) = measure::client(broker, &format!("{id}-pub"))?;
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let qos = if plan.qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    let mut first = 0;
    let mut sent = measure::Sent::default();
    let mut own = AgentStats::default();
    let mut all = measure::histogram();
    let mut starts = Vec::with_capacity(f.phases.len());
    for phase in &f.phases {
        let count = phase.offsets.len() as u64;
        progress.say(format!("{what}: {}, {count} events", phase.label));
        let cpu0 = measure::CpuClock::read(pid);
        let start = t0.elapsed().as_secs_f64();
        starts.push(start);
        let event = |seq: u64| {
            let sensor = plan.sensor(seq);
            (
                format!("compare/in/{id}/{sensor}"),
                plan.payload(seq, &sensor),
            )
        };
        let n = measure::publish_phase(&client, &phase.offsets, first, qos, event, &mut sent).await;
        let mut h = measure::histogram();
        let quiet = Duration::from_secs(5).max(startup * 2);
        let (received, duplicates) = if f.outputs == Outputs::None {
            let before = own.succeeded;
            own.wait_for(&mut stats, first + n, quiet).await?;
            (own.succeeded.saturating_sub(before), 0)
        } else {
            measure::collect(
                &mut outputs,
                &sent,
                first..first + n,
                f.outputs,
                quiet,
                &mut h,
            )
            .await
        };
        let cpu = measure::CpuClock::read(pid).since(&cpu0);
        let seconds = t0.elapsed().as_secs_f64() - start;
        let _ = all.add(&h);
        run.phases.push(Phase {
            pattern: phase.label.clone(),
            rate: phase.rate,
            sent: n,
            received,
            lost: n - received.min(n),
            duplicates,
            end_to_end_us: measure::Latency::of(&h),
            cpu_per_event_us: cpu / n.max(1) as f64 * 1e6,
            cpu_seconds_per_hour: cpu / seconds.max(1e-3) * 3600.0,
            seconds,
            handled_per_second: received as f64 / seconds.max(1e-3),
            rss_mean_bytes: 0, // from the RSS samples, once they are all in
        });
        let slack = (phase.duration.as_secs_f64() * 0.1).max(1.0);
        if received == n && n > 0 && seconds <= phase.duration.as_secs_f64() + slack {
            run.max_sustained_rate = Some(run.max_sustained_rate.unwrap_or(0.0).max(phase.rate));
        }
        first += n;
        progress.say(format!(
            "{what}: {}: {received} of {n} events handled, {duplicates} twice",
            phase.label
        ));
        progress.step();
    }
    run.peak_rss_bytes = edge_agent::clock::process_status_bytes(pid, "VmHWM").unwrap_or(0);
    stop_sampling.cancel();
    run.rss_over_time = sampler.await.unwrap_or_default();
    run.memory_mb_seconds_above_idle =
        measure::mb_seconds_above(&run.rss_over_time, run.idle_rss_bytes);
    run.latency_cdf = measure::cdf(&all);
    for (p, start) in run.phases.iter_mut().zip(starts) {
        p.rss_mean_bytes = measure::mean_between(&run.rss_over_time, start, start + p.seconds);
    }
    // The agent's own figures: the report after the last event (one a second).
    own.wait_for(&mut stats, first, Duration::from_secs(5))
        .await?;
    run.agent_succeeded = own.succeeded;
    run.agent_end_to_end_p50_us = own.end_to_end_p50_us;
    run.agent_instantiate_p50_us = own.instantiate_p50_us;
    run.agent_execute_p50_us = own.execute_p50_us;
    run.agent_call_cpu_p50_us = own.call_cpu_p50_us;
    run.agent_instance_memory_bytes = own.instance_memory_bytes;
    run.agent_full_cold_starts = own.full_cold_starts;
    run.agent_full_cold_start_load_p50_us = own.load_p50_us;
    run.agent_queue_p50_us = own.queue_p50_us;
    run.agent_commit_p50_us = own.commit_p50_us;
    poller.abort();
    drop(agent);
    run.state_disk_bytes = measure::disk_bytes(&data);
    Ok(())
}

/// The agent's own figures, from its stats topic.
#[derive(Debug, Default)]
struct AgentStats {
    succeeded: u64,
    end_to_end_p50_us: u64,
    instantiate_p50_us: u64,
    execute_p50_us: u64,
    call_cpu_p50_us: u64,
    instance_memory_bytes: u64,
    full_cold_starts: u64,
    load_p50_us: u64,
    queue_p50_us: u64,
    commit_p50_us: u64,
}

impl AgentStats {
    /// Reads reports until the agent has handled `events` or `quiet` passes with no
    /// progress.
    ///
    /// # Errors
    /// A report this build cannot read (another `schema_version`, a field missing): the
    /// agent under test is not the one this harness was built with.
    async fn wait_for(
        &mut self,
        stats: &mut tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, Vec<u8>)>,
        events: u64,
        quiet: Duration,
    ) -> Result<(), MeasureError> {
        let mut deadline = tokio::time::Instant::now() + quiet;
        while self.succeeded < events {
            let Ok(Some((_, body))) = tokio::time::timeout_at(deadline, stats.recv()).await else {
                return Ok(());
            };
            let report = StatsReport::from_bytes(&body).map_err(MeasureError::Stats)?;
            let Some(f) = report.functions.first().map(|f| &f.totals) else {
                continue;
            };
            if f.succeeded > self.succeeded {
                deadline = tokio::time::Instant::now() + quiet;
            }
            *self = Self {
                succeeded: f.succeeded,
                end_to_end_p50_us: f.end_to_end_us.p50,
                instantiate_p50_us: f.instantiate_us.p50,
                execute_p50_us: f.execute_us.p50,
                call_cpu_p50_us: f.cpu_us.p50,
                instance_memory_bytes: f.peak_memory_bytes as u64,
                full_cold_starts: f.load_us.count,
                load_p50_us: f.load_us.p50,
                queue_p50_us: f.queue_us.p50,
                commit_p50_us: f.commit_us.p50,
            };
        }
        Ok(())
    }
}

/// Where the two models cost the same, per kind of cost, up to `max_rate`.
fn break_even(models: &[ModelRun], max_rate: f64) -> Vec<BreakEven> {
    let find = |m: Model| m.run_in(models);
    let (Some(p), Some(o)) = (find(Model::Persistent), find(Model::OnDemand)) else {
        return Vec::new();
    };
    o.fit
        .kinds()
        .into_iter()
        .zip(p.fit.kinds())
        .map(|((kind, on_demand), (_, persistent))| {
            BreakEven::of(
                kind,
                (&o.model, on_demand),
                (&p.model, persistent),
                max_rate,
            )
        })
        .collect()
}

/// The verdict line for one function: which model is cheaper in energy (the device's own
/// cost) at which rates, the CPU and memory ratios, and what money says.
fn verdict(name: &str, models: &[ModelRun], break_even: &[BreakEven], max_rate: f64) -> String {
    let find = |m: Model| m.run_in(models);
    let (Some(p), Some(o)) = (find(Model::Persistent), find(Model::OnDemand)) else {
        return format!("{name}: no verdict, a model run failed");
    };
    let kind = |k: &str| break_even.iter().find(|b| b.kind == k);
    let (Some(energy), Some(money)) = (kind("energy"), kind("money")) else {
        return format!("{name}: no verdict, nothing was measured");
    };
    // Standing costs this close are within what one run can tell apart.
    let close = |a: f64, b: f64| (a - b).abs() <= 0.1 * a.max(b);
    let said = |b: &BreakEven, kind: &str| match b.rate {
        Some(r) if kind == "energy" && close(o.fit.watts.standing, p.fit.watts.standing) => {
            format!(
                "{} below {r:.1} events/s, {} above (break-even in {kind}; the standing costs \
                 differ by under 10%, so below it the two are about even)",
                b.below, b.above
            )
        }
        Some(r) => format!(
            "{} below {r:.1} events/s, {} above (break-even in {kind})",
            b.below, b.above
        ),
        None => format!(
            "{} at every rate up to {max_rate} events/s (cheaper in {kind} throughout)",
            b.below
        ),
    };
    let cpu_ratio = o.fit.cpu_seconds.marginal / p.fit.cpu_seconds.marginal.max(1e-12);
    let mem_ratio = o.idle_rss_bytes as f64 / (p.idle_rss_bytes as f64).max(1.0);
    let lost: u64 = models
        .iter()
        .flat_map(|m| &m.phases)
        .map(|ph| ph.lost)
        .sum();
    let lost = if lost > 0 {
        format!("; {lost} events LOST")
    } else {
        String::new()
    };
    let zero = match find(Model::ScaleToZero) {
        Some(z) => format!(
            "; scaled to zero it holds {:.1} MB less while idle and paid {} full cold start(s) \
             (load p50 {:.1} ms)",
            (o.idle_rss_bytes as f64 - z.idle_rss_bytes as f64) / 1e6,
            z.agent_full_cold_starts,
            z.agent_full_cold_start_load_p50_us as f64 / 1000.0
        ),
        None => String::new(),
    };
    format!(
        "{name}: {}; on-demand/persistent: CPU per event {cpu_ratio:.1}x, idle memory \
         {mem_ratio:.2}x; billed by use vs reserved: {}{zero}{lost}",
        said(energy, "energy"),
        said(money, "money"),
    )
}

/// The report as a table per function, then the break-evens and verdicts.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "edge-agent {} on {}; workload {}, QoS {}; energy by the {} power profile, money by a \
         price list (models, see the end)",
        report.agent_version, report.machine, report.workload, report.qos, report.power.name
    );
    for f in &report.functions {
        let _ = writeln!(
            out,
            "\n{} ({})\n{:<13} {:>7} {:>8} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>9}",
            f.function,
            if f.stateful { "stateful" } else { "stateless" },
            "model",
            "rate/s",
            "received",
            "lost",
            "dups",
            "p50 ms",
            "p99 ms",
            "CPU us/e",
            "CPU s/h",
            "MB",
            "mW",
            "mJ/e",
            "$/month"
        );
        for m in &f.models {
            if let Some(e) = &m.error {
                let _ = writeln!(out, "{:<13} failed: {e}", m.model);
            }
            for (i, c) in m.costs.iter().enumerate() {
                let row = match i.checked_sub(1).and_then(|i| m.phases.get(i)) {
                    Some(p) => {
                        // No outputs matched (`outputs = "none"`): no outside latency.
                        let ms = |us: u64| match p.end_to_end_us.max {
                            0 => "-".to_string(),
                            _ => format!("{:.2}", us as f64 / 1000.0),
                        };
                        format!(
                            "{:>8} {:>5} {:>4} {:>8} {:>8} {:>8.0}",
                            p.received,
                            p.lost,
                            p.duplicates,
                            ms(p.end_to_end_us.p50),
                            ms(p.end_to_end_us.p99),
                            p.cpu_per_event_us
                        )
                    }
                    None => format!(
                        "{:>8} {:>5} {:>4} {:>8} {:>8} {:>8}",
                        "idle", "", "", "", "", ""
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:<13} {:>7} {row} {:>8.1} {:>6.1} {:>8.1} {:>7} {:>9.4}",
                    m.model,
                    c.rate,
                    c.cpu_seconds,
                    c.memory_mb,
                    c.watts * 1e3,
                    if c.rate > 0.0 {
                        format!("{:.3}", c.joules_per_event * 1e3)
                    } else {
                        String::new()
                    },
                    c.dollars * HOURS_PER_MONTH
                );
            }
        }
        for m in f.models.iter().filter(|m| m.error.is_none()) {
            let fit = &m.fit;
            let _ = writeln!(
                out,
                "{:<13} fitted: {:.1} CPU s/h + {:.3} per event/s; {:.1} mW + {:.3}; \
                 ${:.4}/month + {:.5} ({})",
                m.model,
                fit.cpu_seconds.standing,
                fit.cpu_seconds.marginal,
                fit.watts.standing * 1e3,
                fit.watts.marginal * 1e3,
                fit.dollars.standing * HOURS_PER_MONTH,
                fit.dollars.marginal * HOURS_PER_MONTH,
                m.billing
            );
            let _ = writeln!(
                out,
                "{:<13} sustained {}; peak {:.1} MB, {:.1} MB-s above idle, state on disk {:.0} \
                 KB, instance \
                 {:.1} MB; agent p50s: queue {} us, cold start {} us, execute {} us, commit {} us, \
                 call CPU {} us",
                "",
                m.max_sustained_rate
                    .map_or("no rate".into(), |r| format!("{r:.0} events/s")),
                m.peak_rss_bytes as f64 / 1e6,
                m.memory_mb_seconds_above_idle,
                m.state_disk_bytes as f64 / 1024.0,
                m.agent_instance_memory_bytes as f64 / 1e6,
                m.agent_queue_p50_us,
                m.agent_instantiate_p50_us,
                m.agent_execute_p50_us,
                m.agent_commit_p50_us,
                m.agent_call_cpu_p50_us
            );
        }
        let evens: Vec<String> = f
            .break_even
            .iter()
            .map(|b| match b.rate {
                Some(r) => format!("{} {r:.1}/s ({} below)", b.kind, b.below),
                None => format!("{} none ({} throughout)", b.kind, b.below),
            })
            .collect();
        if !evens.is_empty() {
            let _ = writeln!(out, "break-even: {}", evens.join(", "));
        }
        for t in &f.tradeoffs {
            let _ = writeln!(out, "- {}: {}", t.name, t.finding);
        }
    }
    let _ = writeln!(out);
    for f in &report.functions {
        let _ = writeln!(out, "{}", f.verdict);
    }
    let _ = writeln!(
        out,
        "\nMeasured: events, loss, latency, CPU, memory. Modelled: energy ({}: {} W idle, {} W \
         busy) and money ({}).",
        report.power.name, report.power.idle_watts, report.power.busy_watts, report.prices.source
    );
    out
}

/// Hours in an average month (365.25 × 24 / 12), for $/month.
const HOURS_PER_MONTH: f64 = 730.5;

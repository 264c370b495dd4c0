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
pub mod verdict;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::cost::{Billing, CostEstimates, FitEstimates, PowerProfile, Prices};
use self::measure::{Phase, Window};
use self::stats::{Bootstrap, Estimate};
use self::verdict::{Fitted, Verdict};
use self::workload::{FunctionPlan, Outputs, Plan};
use edge_agent::config::{BrokerConfig, ConfigError, Mode};
use edge_agent::failure::Exit;
use edge_agent::messages::{Message as _, Presence, Report as StatsReport, Status};

/// How long the broker has to answer before `compare` gives up on it.
const BROKER_WAIT: Duration = Duration::from_secs(10);

/// Version of the JSON report's layout.
pub const SCHEMA_VERSION: u32 = 3;

/// Parses `--power`: a built-in profile's name, refused as a usage error (exit 64) before
/// anything is measured (until 2026-12-07 after the modules were found, with exit 69).
fn power_name(s: &str) -> Result<String, String> {
    cost::power_profile(Some(s))
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

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
    /// side by side in the HTML). Each may be a report, a JSON array of reports (several
    /// agents' reports from one run), or a directory of such files.
    #[arg(long, value_name = "JSON")]
    pub from: Vec<PathBuf>,
    /// Short phases and one round (under a minute in all), for CI and first looks: its
    /// intervals are wider and its verdict weaker, and it says so.
    #[arg(long)]
    pub quick: bool,
    /// How many times each model is measured, the rounds interleaved across the models
    /// (A B C A B C) so that drift on the machine falls on all of them. Default: 3, or 1
    /// with `--quick`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: Option<u32>,
    /// The event rate to recommend a model for (events/s). Default: the workload's mean
    /// rate.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = edge_agent::rate::parse)]
    pub rate: Option<f64>,
    /// The device power profile that turns CPU time into energy: pi-zero-2w, pi4, pi5 or
    /// x86-laptop. Default: x86-laptop on x86_64, pi4 elsewhere.
    #[arg(long, value_name = "PROFILE", value_parser = power_name)]
    pub power: Option<String>,
    /// Start each agent process under this command (words split at spaces): for example
    /// `taskset -c 1` to pin the agents to one core, or `qemu-aarch64 -L
    /// /usr/aarch64-linux-gnu` when this program itself runs under emulation. CPU and
    /// memory are then the wrapper's process's.
    #[arg(long, value_name = "COMMAND")]
    pub agent_wrapper: Option<String>,
    /// An existing broker to measure on (`mqtt://host:port` or `mqtts://...`), instead of
    /// the embedded one (or the workload file's `[broker]` URL, whose other settings stay).
    /// Builds without the embedded broker default to `mqtt://127.0.0.1:1883`.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
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
    one(path, v)
}

/// Reads every report at `path`: a report saved with `--json`, a JSON array of them (the
/// reports of several agents from one run, gathered in one file), or a directory of such
/// files (every `*.json` in it, by name).
///
/// # Errors
/// [`CompareError::Report`] naming the file at fault.
pub fn load_all(path: &Path) -> Result<Vec<Report>, CompareError> {
    let bad = |why: String| CompareError::Report(format!("{}: {why}", path.display()));
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| bad(e.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad("no *.json report in this directory".into()));
        }
        let mut all = Vec::new();
        for f in files {
            all.extend(load_all(&f)?);
        }
        return Ok(all);
    }
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    match v {
        serde_json::Value::Array(items) if items.is_empty() => Err(bad("an empty list".into())),
        serde_json::Value::Array(items) => items.into_iter().map(|v| one(path, v)).collect(),
        v => Ok(vec![one(path, v)?]),
    }
}

/// One report read from `path`'s JSON.
fn one(path: &Path, v: serde_json::Value) -> Result<Report, CompareError> {
    let bad = |why: String| CompareError::Report(format!("{}: {why}", path.display()));
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
    /// Stopped by SIGINT or SIGTERM before it had measured every model.
    #[error(
        "stopped before the end: the agents it started are stopped and its work folder removed"
    )]
    Interrupted,
    /// Some models could not be measured (the report says why for each); everything
    /// asked for was still printed and written.
    #[error("{} could not be measured (the report says why): {}", .0.len(), .0.join(", "))]
    Failed(Vec<String>),
}

impl CompareError {
    /// How the command ends: [`Exit::Unavailable`] if it cannot run at all (no modules, no
    /// broker), [`Exit::Config`] on a bad workload file, [`Exit::NoInput`] if a `--from`
    /// report cannot be read, [`Exit::Failure`] if a model of a measured run failed.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Report(_) => Exit::NoInput,
            Self::Modules(_) | Self::Setup(_) => Exit::Unavailable,
            Self::Client(_) => Exit::Config,
            Self::Workload(_) => Exit::Config,
            Self::SeveralReports(_) => Exit::Usage,
            Self::Write { .. } => Exit::CantCreate,
            Self::Runtime(_) | Self::Failed(_) | Self::Interrupted => Exit::Failure,
        }
    }
}

/// `edge-agent compare`: measures (or, with `--from`, reads saved reports), prints the table
/// and verdicts on stdout, and writes the JSON and the HTML page where asked.
///
/// # Errors
/// [`CompareError`]; its [`CompareError::exit`] is the process's exit status.
pub fn run(args: &CompareArgs) -> Result<(), CompareError> {
    let mut reports = Vec::new();
    for p in &args.from {
        reports.extend(load_all(p)?);
    }
    for r in &mut reports {
        rejudge(r, args.rate);
    }
    let mut runtime = None;
    if reports.is_empty() {
        let rt = tokio::runtime::Runtime::new().map_err(CompareError::Runtime)?;
        // Stopped (Ctrl-C, SIGTERM), the measurement is dropped: its agents are stopped and
        // its work folder removed. Until 2026-12-08 a SIGTERM left an agent running on its
        // own (its parent gone) and the folder behind (a probe).
        let measured = rt.block_on(async {
            tokio::select! {
                measured = compare(args) => measured,
                _ = edge_agent::daemon::shutdown::stop_signal() => {
                    let measuring = MEASURING.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some((broker, id)) = measuring {
                        measure::clear_retained(&broker, &id, Duration::from_secs(2)).await;
                    }
                    Err(CompareError::Interrupted)
                }
            }
        });
        // The broker's threads cannot be stopped (rumqttd 0.20): leave without waiting.
        runtime = Some(rt);
        reports.push(measured?);
    }
    for r in &reports {
        print!("{}", render(r));
    }
    // Several saved runs: do their verdicts hold still?
    for (i, a) in reports.iter().enumerate() {
        for (j, b) in reports.iter().enumerate().skip(i + 1) {
            let c = contradictions(a, b);
            if c.is_empty() {
                println!(
                    "reports {} and {}: no verdict contradicts the other",
                    i + 1,
                    j + 1
                );
            } else {
                println!(
                    "reports {} and {} CONTRADICT: {}",
                    i + 1,
                    j + 1,
                    c.join("; ")
                );
            }
        }
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
    let Some(rt) = runtime else {
        // Saved reports (`--from`) were judged when they were made.
        return Ok(());
    };
    rt.shutdown_background();
    // A run that could not measure every model says so in its exit status too, so that a
    // script can tell.
    let failed: Vec<String> = reports
        .iter()
        .flat_map(|r| &r.functions)
        .flat_map(|f| {
            f.models
                .iter()
                .filter(|m| m.error.is_some())
                .map(move |m| format!("{} {}", f.function, m.model))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CompareError::Failed(failed))
    }
}

/// One function in one model, over every round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelRun {
    /// `persistent`, `on-demand` or `scale-to-zero`.
    pub model: String,
    /// Rounds measured: each an agent process of its own.
    pub rounds: u32,
    /// Resident memory of the agent process, idle, before any event (one per round).
    pub idle_rss_bytes: Estimate,
    /// Peak resident memory of the agent process over a round.
    pub peak_rss_bytes: Estimate,
    /// CPU the agent process spends with no events (timers, keep-alives, stats), in CPU
    /// seconds per hour, over the idle windows of every round.
    pub idle_cpu_seconds_per_hour: Estimate,
    /// One entry per phase of the workload.
    pub phases: Vec<Phase>,
    /// Every one-second window of every round, idle (rate 0) and per phase: the samples
    /// behind every cost figure, kept so that a saved report can be analysed again.
    pub windows: Vec<Window>,
    /// Resident memory of the agent process over the first round: (seconds, bytes), every
    /// 250 ms.
    pub rss_over_time: Vec<(f64, u64)>,
    /// The highest rate whose events were all handled, with the backlog gone within a
    /// second (or a tenth of the phase) of the last send, in every round; none if no phase
    /// was.
    pub max_sustained_rate: Option<f64>,
    /// Memory held above the idle RSS over a round, MB-seconds.
    pub memory_mb_seconds_above_idle: Estimate,
    /// Size of the state store on disk after a round.
    pub state_disk_bytes: Estimate,
    /// The agent's own per-call execution p50, µs (one per round).
    pub agent_execute_p50_us: Estimate,
    /// The agent's own per-call thread CPU p50 (instantiation and call), µs: the part of
    /// the process CPU per event that is the function's.
    pub agent_call_cpu_p50_us: Estimate,
    /// Events the agent says it handled (its stats topic), over every round, for the
    /// cross-check.
    pub agent_succeeded: u64,
    /// The agent's own end-to-end p50, µs.
    pub agent_end_to_end_p50_us: Estimate,
    /// The agent's own per-event instantiation p50 (the on-demand cold start), µs.
    pub agent_instantiate_p50_us: Estimate,
    /// Full cold starts (scale to zero) over every round.
    pub agent_full_cold_starts: u64,
    /// The p50 of loading the module again before a full cold start's instantiation, µs.
    pub agent_full_cold_start_load_p50_us: Estimate,
    /// The agent's own p50 of the wait in the function's queue, µs.
    pub agent_queue_p50_us: Estimate,
    /// The agent's own p50 from a state-writing call's end to its writes being durable
    /// (the group commit), µs; 0 if the function wrote no state.
    pub agent_commit_p50_us: Estimate,
    /// The agent's largest linear memory of one instance: held during a call on demand,
    /// all the time when persistent.
    pub agent_instance_memory_bytes: Estimate,
    /// End-to-end latency of every event of every round, as (quantile, µs) points.
    pub latency_cdf: Vec<(f64, u64)>,
    /// How the model is billed in [`ModelRun::costs`]: `by-use`, `reserved`, or
    /// [`PER_WINDOW`] (auto: each window as the model it was in).
    pub billing: String,
    /// What the model costs per hour idle (rate 0) and at each measured rate.
    pub costs: Vec<CostEstimates>,
    /// Those costs fitted as standing + rate × marginal.
    pub fit: FitEstimates,
    /// If a round failed: why (the other figures are then partial).
    pub error: Option<String>,
}

impl ModelRun {
    /// The rounds of one model, combined: counts added up, every other figure a median
    /// with its interval.
    fn of(model: Model, rounds: Vec<Round>) -> Self {
        let est = |f: &dyn Fn(&Round) -> f64| {
            Estimate::of(
                &rounds
                    .iter()
                    .filter(|r| r.error.is_none())
                    .map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let errors: Vec<String> = rounds
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.error.as_ref().map(|e| format!("round {}: {e}", i + 1)))
            .collect();
        let ok: Vec<&Round> = rounds.iter().filter(|r| r.error.is_none()).collect();
        let windows: Vec<Window> = rounds
            .iter()
            .flat_map(|r| r.windows.iter().copied())
            .collect();
        let of_windows = |rate: f64, f: &dyn Fn(&Window) -> f64| {
            Estimate::of(
                &windows
                    .iter()
                    .filter(|w| w.rate == rate)
                    .map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let mut all = measure::histogram();
        let phase_count = ok.iter().map(|r| r.phases.len()).max().unwrap_or(0);
        let phases = (0..phase_count)
            .map(|i| {
                let these: Vec<&RoundPhase> = ok.iter().filter_map(|r| r.phases.get(i)).collect();
                let mut h = measure::histogram();
                for p in &these {
                    let _ = h.add(&p.latency);
                }
                let _ = all.add(&h);
                let first = these[0];
                let sum = |f: fn(&RoundPhase) -> u64| these.iter().map(|p| f(p)).sum::<u64>();
                let (sent, received) = (sum(|p| p.sent), sum(|p| p.received));
                let rate = first.rate;
                Phase {
                    pattern: first.pattern.clone(),
                    rate,
                    sent,
                    received,
                    lost: sent - received.min(sent),
                    duplicates: sum(|p| p.duplicates),
                    end_to_end_us: measure::Latency::of(&h),
                    cpu_per_event_us: of_windows(rate, &|w| {
                        w.cpu_seconds_per_hour / 3600.0 / w.events_per_second.max(1e-9) * 1e6
                    }),
                    cpu_seconds_per_hour: of_windows(rate, &|w| w.cpu_seconds_per_hour),
                    seconds: these.iter().map(|p| p.seconds).sum(),
                    handled_per_second: Estimate::of(
                        &these
                            .iter()
                            .map(|p| p.handled_per_second)
                            .collect::<Vec<_>>(),
                    ),
                    rss_bytes: of_windows(rate, &|w| w.rss_bytes),
                }
            })
            .collect();
        let sustained = ok
            .iter()
            .map(|r| r.sustained)
            .reduce(|a, b| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            })
            .flatten();
        let agent = |f: fn(&AgentStats) -> u64| est(&|r| f(&r.agent) as f64);
        Self {
            model: model.name().into(),
            rounds: u32::try_from(ok.len()).unwrap_or(u32::MAX),
            idle_rss_bytes: est(&|r| r.idle_rss_bytes as f64),
            peak_rss_bytes: est(&|r| r.peak_rss_bytes as f64),
            idle_cpu_seconds_per_hour: of_windows(0.0, &|w| w.cpu_seconds_per_hour),
            phases,
            windows,
            rss_over_time: ok
                .first()
                .map(|r| r.rss_over_time.clone())
                .unwrap_or_default(),
            max_sustained_rate: sustained,
            memory_mb_seconds_above_idle: est(&|r| r.mb_seconds),
            state_disk_bytes: est(&|r| r.state_disk_bytes as f64),
            agent_execute_p50_us: agent(|a| a.execute_p50_us),
            agent_call_cpu_p50_us: agent(|a| a.call_cpu_p50_us),
            agent_succeeded: ok.iter().map(|r| r.agent.succeeded).sum(),
            agent_end_to_end_p50_us: agent(|a| a.end_to_end_p50_us),
            agent_instantiate_p50_us: agent(|a| a.instantiate_p50_us),
            agent_full_cold_starts: ok.iter().map(|r| r.agent.full_cold_starts).sum(),
            agent_full_cold_start_load_p50_us: agent(|a| a.load_p50_us),
            agent_queue_p50_us: agent(|a| a.queue_p50_us),
            agent_commit_p50_us: agent(|a| a.commit_p50_us),
            agent_instance_memory_bytes: agent(|a| a.instance_memory_bytes),
            latency_cdf: measure::cdf(&all),
            billing: String::new(),
            costs: Vec::new(),
            fit: FitEstimates::default(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    }

    /// Prices every window, with the estimates per rate; the fitting is [`judge`]'s.
    fn price(&mut self, power: &PowerProfile, prices: &Prices) -> verdict::Priced {
        // Auto's windows carry the model it was in and are billed as that model is; those
        // of a report from before they did, as reserved (it ran persistent while events came).
        let (billing, name) = if self.model == Model::Persistent.name() {
            (Billing::Reserved, "reserved")
        } else if self.model == Model::Auto.name() {
            (Billing::Reserved, PER_WINDOW)
        } else {
            (Billing::ByUse, "by-use")
        };
        self.billing = name.into();
        let pricing = verdict::Pricing {
            billing,
            call_memory_bytes: self.agent_instance_memory_bytes.median,
            call_seconds: (self.agent_instantiate_p50_us.median + self.agent_execute_p50_us.median)
                / 1e6,
            power,
            prices,
        };
        let priced = verdict::Priced::of(&self.windows, &pricing);
        self.costs = priced.estimates();
        priced
    }
}

/// What to use for one function at the rate asked about, and why: the top of the page.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Card {
    /// The rate the recommendation is for (events/s): `--rate`, or the workload's mean.
    pub rate: f64,
    /// `persistent`, `on-demand`, `either` when no cost measured separates them, or
    /// `none` when there is no verdict (a model's run failed).
    pub recommended: String,
    /// The kind of cost the recommendation rests on (`energy` first, then `cpu`,
    /// `memory`, `money`: the first with a winner).
    pub kind: String,
    /// What the recommended model saves of the other's cost of that kind at `rate`, as a
    /// fraction, with its interval.
    pub saving: Estimate,
    /// The recommendation in one sentence.
    pub headline: String,
    /// The trade-off that decides it, with this run's numbers.
    pub trade_off: String,
    /// Whether the verdict is weaker than 95%: too few windows per rate (`--quick`, or a
    /// single short round).
    pub weak: bool,
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
    /// The recommendation at the rate asked about.
    pub card: Card,
    /// Persistent against on demand, per kind of cost (`cpu`, `memory`, `energy`,
    /// `money`): the winner or "about even (within noise)", the margin with its interval,
    /// the ranges of rates, and the break-even.
    pub verdicts: Vec<Verdict>,
    /// One line: the card's headline, and events lost if any.
    pub verdict: String,
    /// The serverless-vs-containers trade-offs, filled in with this run's numbers.
    pub tradeoffs: Vec<tradeoffs::TradeOff>,
    /// `mode = "auto"` (its defaults) against the two fixed models at the card's rate,
    /// per kind of cost; empty if a model of the three failed.
    #[serde(default)]
    pub auto: Vec<AutoCost>,
}

/// [`ModelRun::billing`] of auto: each window billed as the model it was in
/// ([`Window::persistent`]).
pub const PER_WINDOW: &str = "per-window";

/// [`ModelRun::billing`] in words, as the text and the page show it.
pub fn billing_words(billing: &str) -> &str {
    if billing == PER_WINDOW {
        "reserved while persistent, by use while on demand"
    } else {
        billing
    }
}

/// What auto cost against the fixed models at one rate, for one kind of cost (per hour,
/// from each model's fitted line). Auto is billed as the model it was in: reserved while
/// persistent, by use while on demand (before its first event, say).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AutoCost {
    /// `cpu`, `memory`, `energy` or `money`.
    pub kind: String,
    /// Events per second.
    pub rate: f64,
    /// Auto's cost.
    pub auto: f64,
    /// Persistent's.
    pub persistent: f64,
    /// On demand's.
    pub on_demand: f64,
    /// How much dearer auto is than the cheaper fixed model, as a fraction of it
    /// (negative: cheaper than both).
    pub over_cheaper: f64,
    /// The same with its interval over the resamples (absent from reports made before
    /// 2026-12-08; `--from` computes it again).
    #[serde(default)]
    pub over_cheaper_interval: Estimate,
    /// The comparison in words, as the verdict line and the page give it: `cpu +56%
    /// (±14%)`, or `cpu +10% (±8%, within noise)` where the interval reaches within the
    /// verdicts' noise threshold of zero.
    #[serde(default)]
    pub words: String,
}

/// Auto against the fixed models at `at` events/s, per kind ([`verdict::auto_against`]),
/// "about even" where the interval of the difference reaches within `threshold` (the
/// verdicts' noise threshold) of zero.
fn auto_costs(
    auto: &Fitted,
    persistent: &Fitted,
    on_demand: &Fitted,
    at: f64,
    threshold: f64,
) -> Vec<AutoCost> {
    cost::KINDS
        .iter()
        .zip(verdict::auto_against(auto, persistent, on_demand, at))
        .map(|(kind, (auto, persistent, on_demand, over))| {
            let percent = over.median * 100.0;
            let half = (over.high - over.low) * 50.0;
            // With its interval either way: "about even (+43%)" beside "-38% (±9%)" read
            // as a contradiction (a probe, 2026-12-07).
            let words = if over.low > threshold || over.high < -threshold {
                format!("{kind} {percent:+.0}% (±{half:.0}%)")
            } else {
                format!("{kind} {percent:+.0}% (±{half:.0}%, within noise)")
            };
            AutoCost {
                kind: (*kind).into(),
                rate: at,
                auto,
                persistent,
                on_demand,
                over_cheaper: over.median,
                over_cheaper_interval: over,
                words,
            }
        })
        .collect()
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
    /// The host name of the machine it ran on, which tells the devices of a fleet apart
    /// (absent in reports made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `built-in`, or the workload file.
    pub workload: String,
    /// QoS of the events.
    pub qos: u8,
    /// Rounds per model, interleaved across the models.
    pub rounds: u32,
    /// Whether this was a `--quick` run (shorter phases, weaker verdict).
    pub quick: bool,
    /// The power profile energy is modelled with (a model, not a measurement).
    pub power: PowerProfile,
    /// The prices money is modelled with (a model, not a measurement).
    pub prices: Prices,
    /// One entry per function.
    pub functions: Vec<FunctionReport>,
}

impl Report {
    /// Where it ran, as the table and the page name it: `pi-kitchen (linux aarch64, 4
    /// processors)`, or the machine alone for a report without a host name.
    pub fn place(&self) -> String {
        match &self.host {
            Some(h) => format!("{h} ({})", self.machine),
            None => self.machine.clone(),
        }
    }
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
            // Each rate for 5 s in each of 3 rounds: 15 one-second windows per rate and
            // model, enough for a 95% interval of each median.
            let (rates, secs): (&[f64], f64) = if args.quick {
                (&[20.0, 200.0], 2.0)
            } else {
                (&[1.0, 10.0, 100.0, 1000.0], 5.0)
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
    // Idle is cut into one-second windows, rounded: 1.5 s still gives two (of 0.75 s),
    // and keeps --quick under a minute with four models.
    let idle_secs = if args.quick { 1.5 } else { 4.0 };
    let rounds = args.repeat.unwrap_or(if args.quick { 1 } else { 3 });
    let phases: usize = plan.functions.iter().map(|f| f.phases.len()).sum();
    // Per function and model: its phases, idle, and about 1.1 s to start the agent, let it
    // settle and wait for its last stats report; scaled to zero, keep_warm_secs and 1.5 s
    // more before idle (measured: `--quick` 52-54 s, estimated 58 s).
    let per_round: f64 = plan
        .functions
        .iter()
        .flat_map(|f| &f.phases)
        .map(|p| p.duration.as_secs_f64())
        .sum::<f64>()
        * MODELS.len() as f64
        + plan.functions.len() as f64 * MODELS.len() as f64 * (idle_secs + 1.1)
        + plan
            .functions
            .iter()
            .map(|f| f.keep_warm_secs as f64 + 1.5)
            .sum::<f64>();
    eprintln!(
        "compare: {} functions x {} models, each in its own agent process; {phases} phases per \
         model over the functions{}; {rounds} round(s), interleaved; about {:.0} s in all",
        plan.functions.len(),
        MODELS.len(),
        plan.source
            .as_ref()
            .map(|p| format!(" from {}", p.display()))
            .unwrap_or_default(),
        per_round * f64::from(rounds)
    );
    if args.quick {
        eprintln!(
            "compare: --quick measures {} one-second windows per rate: its intervals are wide \
             and its verdict weaker (a full run takes about 10 minutes)",
            plan.functions
                .iter()
                .flat_map(|f| &f.phases)
                .map(|p| p.duration.as_secs_f64().round() as u64 * u64::from(rounds))
                .min()
                .unwrap_or(0)
        );
    }
    let broker = match (&plan.broker, &args.broker) {
        (Some(b), Some(url)) => BrokerConfig {
            url: url.clone(),
            ..b.clone()
        },
        (Some(b), None) => b.clone(),
        (None, url) => BrokerConfig {
            url: match url {
                Some(url) => url.clone(),
                None => start_broker()?,
            },
            ..BrokerConfig::default()
        },
    };
    // Fails here, once, on a bad URL or TLS file (exit 78), or a broker that does not
    // answer (69), rather than in every model (each agent would wait for it).
    measure::client(&broker, "edge-agent-compare-check")?;
    measure::reachable(&broker, "edge-agent-compare-check", BROKER_WAIT)
        .await
        .map_err(|why| {
            CompareError::Setup(format!(
                "no broker at {}: {} (start Mosquitto there, or name another with --broker \
                 URL or a workload file's [broker])",
                broker.url,
                edge_agent::failure::chain(&why)
            ))
        })?;
    let work = WorkDir::new()?;
    let progress =
        Progress::new(((plan.functions.len() + phases) * MODELS.len()) as u64 * u64::from(rounds));
    // Rounds outermost: A B C A B C, so that drift on the machine falls on every model.
    let mut measured: Vec<Vec<Vec<Round>>> = plan
        .functions
        .iter()
        .map(|_| MODELS.iter().map(|_| Vec::new()).collect())
        .collect();
    // Once the broker has gone away, each model after is tried only if it is back.
    let mut gone = false;
    for round in 0..rounds {
        for (fi, f) in plan.functions.iter().enumerate() {
            for (mi, &model) in MODELS.iter().enumerate() {
                if gone
                    && measure::reachable(&broker, "edge-agent-compare-check", BROKER_WAIT)
                        .await
                        .is_err()
                {
                    let why = "not measured: the broker is still away";
                    progress.say(format!("{} {}: {why}", f.name, model.name()));
                    measured[fi][mi].push(Round {
                        error: Some(why.into()),
                        broker_gone: true,
                        ..Round::default()
                    });
                    continue;
                }
                let run = run_model(ModelSetup {
                    work: work.path(),
                    broker: &broker,
                    plan: &plan,
                    function: f,
                    model,
                    round,
                    idle_secs,
                    wrapper: &wrapper,
                    progress: &progress,
                })
                .await;
                gone = run.broker_gone;
                measured[fi][mi].push(run);
            }
        }
    }
    let functions = plan
        .functions
        .iter()
        .zip(measured)
        .map(|(f, rounds)| {
            let models = MODELS
                .iter()
                .zip(rounds)
                .map(|(&model, runs)| ModelRun::of(model, runs))
                .collect();
            let rates: Vec<f64> = f.phases.iter().map(|p| p.rate).collect();
            let at = args.rate.unwrap_or_else(|| f.mean_rate());
            judge(&f.name, models, &rates, at, &power, &plan.prices)
        })
        .collect();
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: format!(
            "{} {}, {} processors",
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty()),
        workload: plan
            .source
            .as_ref()
            .map_or_else(|| "built-in".into(), |p| p.display().to_string()),
        qos: plan.qos,
        rounds,
        quick: args.quick,
        power,
        prices: plan.prices.clone(),
        functions,
    })
}

/// Prices one function's model runs, fits them, and gives the verdicts and the card at
/// rate `at`. A saved report goes through here again (`--from`), so that it is judged by
/// this version's rules and at the rate asked for.
fn judge(
    name: &str,
    mut models: Vec<ModelRun>,
    rates: &[f64],
    at: f64,
    power: &PowerProfile,
    prices: &Prices,
) -> FunctionReport {
    let priced: Vec<verdict::Priced> = models.iter_mut().map(|m| m.price(power, prices)).collect();
    // Seeded per function: the same windows give the same intervals in any order. The
    // models share their draws of rounds: paired, as the rounds were interleaved.
    let mut boot = Bootstrap::default();
    let mut round_ids: Vec<u32> = priced.iter().flat_map(|p| p.rounds().to_vec()).collect();
    round_ids.sort_unstable();
    round_ids.dedup();
    let draws = verdict::draw_rounds(&round_ids, &mut boot);
    let fitted: Vec<Fitted> = priced.iter().map(|p| p.fits(&draws, &mut boot)).collect();
    for (m, f) in models.iter_mut().zip(&fitted) {
        m.fit = f.estimates();
    }
    let rounds = models
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| m.rounds)
        .min()
        .unwrap_or(0);
    // An untouched store is sled's few-byte `conf` file; any write adds a segment.
    let stateful = models.iter().any(|m| m.state_disk_bytes.median > 1024.0);
    let tradeoffs = tradeoffs::of(&models, stateful);
    let run = |m: Model| {
        MODELS
            .iter()
            .position(|x| *x == m)
            .filter(|_| m.run_in(&models).is_some())
            .map(|i| &fitted[i])
    };
    let verdicts = match (run(Model::Persistent), run(Model::OnDemand)) {
        (Some(p), Some(o)) => verdict::verdicts(o, p, rates, at, rounds),
        _ => Vec::new(),
    };
    let card = card(&verdicts, &tradeoffs, &models, at);
    let auto = match (
        run(Model::Auto),
        run(Model::Persistent),
        run(Model::OnDemand),
    ) {
        (Some(a), Some(p), Some(o)) => auto_costs(a, p, o, at, verdict::noise_threshold(rounds)),
        _ => Vec::new(),
    };
    let mut verdict = verdict_line(name, &card, &verdicts, &models);
    // Past the sweep the lines are extended, not measured (`--rate 1e9` after a sweep to
    // 200 read as a verdict like any other until 2026-12-07).
    if let Some(most) = rates.iter().copied().reduce(f64::max).filter(|m| at > *m) {
        verdict.push_str(&format!(
            " [extrapolated: {at} events/s is past the highest rate measured, {most}]"
        ));
    }
    if !auto.is_empty() {
        let each: Vec<&str> = auto.iter().map(|a| a.words.as_str()).collect();
        verdict.push_str(&format!(
            "; auto against the cheaper fixed model: {}",
            each.join(", ")
        ));
    }
    FunctionReport {
        function: name.to_string(),
        stateful,
        tradeoffs,
        models,
        card,
        verdicts,
        verdict,
        auto,
    }
}

/// A saved report judged again by this version's rules, at `rate` if given (else at the
/// rate it was judged at).
fn rejudge(report: &mut Report, rate: Option<f64>) {
    for f in &mut report.functions {
        let mut rates: Vec<f64> = f
            .models
            .iter()
            .flat_map(|m| m.phases.iter().map(|p| p.rate))
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        let at = rate.unwrap_or(f.card.rate);
        let models = std::mem::take(&mut f.models);
        *f = judge(
            &f.function,
            models,
            &rates,
            at,
            &report.power,
            &report.prices,
        );
    }
}

/// The recommendation at rate `at`: the first kind of cost, in the order energy, CPU,
/// memory, money, whose verdict names a winner there; the trade-off that explains it.
fn card(
    verdicts: &[Verdict],
    tradeoffs: &[tradeoffs::TradeOff],
    models: &[ModelRun],
    at: f64,
) -> Card {
    let weak = models
        .iter()
        .filter(|m| m.error.is_none())
        .flat_map(|m| &m.costs)
        .any(|c| c.cpu_seconds.confidence < stats::CONFIDENCE);
    let finding = |name: &str| {
        tradeoffs
            .iter()
            .find(|t| t.name == name)
            .map(|t| format!("{}: {}", t.name, t.finding))
            .unwrap_or_default()
    };
    let rate = verdict::rate_words(at);
    let decided = ["energy", "cpu", "memory", "money"].iter().find_map(|k| {
        verdicts
            .iter()
            .find(|v| v.kind == *k && v.winner != verdict::EVEN)
    });
    let Some(v) = decided else {
        // No verdict at all (a model's run failed) recommends nothing: until 2026-12-07
        // its card said "Either model", decided by nothing.
        let (recommended, headline) = if verdicts.is_empty() {
            ("none", "no verdict: a model's run failed".to_string())
        } else {
            (
                "either",
                format!(
                    "Either: at {rate} events/s the two models cost the same within noise in \
                     energy, CPU, memory and money"
                ),
            )
        };
        return Card {
            rate: at,
            recommended: recommended.into(),
            kind: String::new(),
            saving: Estimate::default(),
            headline,
            trade_off: finding("cost predictability"),
            weak,
        };
    };
    let saving = if v.winner == verdict::PERSISTENT {
        v.persistent_saves
    } else {
        v.persistent_saves.map(|x| -x)
    };
    let saving = Estimate {
        low: saving.low.min(saving.high),
        high: saving.high.max(saving.low),
        ..saving
    };
    let trade_off = match (v.kind.as_str(), v.winner.as_str()) {
        ("energy" | "cpu", verdict::PERSISTENT) => finding("cold start"),
        ("energy" | "cpu" | "memory", _) => finding("resource efficiency"),
        _ => billing(models, v),
    };
    let even: Vec<&str> = verdicts
        .iter()
        .filter(|o| o.winner == verdict::EVEN)
        .map(|o| verdict::noun(&o.kind))
        .collect();
    let also = if even.is_empty() {
        String::new()
    } else {
        format!("; {} about even", even.join(", "))
    };
    Card {
        rate: at,
        recommended: v.winner.clone(),
        kind: v.kind.clone(),
        saving,
        headline: format!(
            "Use {}: it costs {:.0}% less {} (±{:.0}%) at {rate} events/s{also}",
            v.winner,
            saving.median * 100.0,
            verdict::noun(&v.kind),
            (saving.high - saving.low) / 2.0 * 100.0
        ),
        trade_off,
        weak,
    }
}

/// The trade-off behind a verdict in money: what each billing scheme charges.
fn billing(models: &[ModelRun], v: &Verdict) -> String {
    let (Some(p), Some(o)) = (
        Model::Persistent.run_in(models),
        Model::OnDemand.run_in(models),
    ) else {
        return String::new();
    };
    let month = |e: Estimate| e.median * HOURS_PER_MONTH;
    let crossing = v.break_even.map_or(String::new(), |b| {
        format!(
            ", so billed by use is cheaper only below {} events/s ({}-{})",
            verdict::rate_words(b.median),
            verdict::rate_words(b.low),
            verdict::rate_words(b.high)
        )
    });
    format!(
        "billing: by use (on demand) costs ${:.3} a month per event/s and nothing idle; \
         reserved (persistent) costs ${:.3} a month standing plus ${:.4} per event/s{crossing}",
        month(o.fit.dollars.marginal),
        month(p.fit.dollars.standing),
        month(p.fit.dollars.marginal)
    )
}

/// The verdict line for one function: its card's headline, and lost events if any.
fn verdict_line(name: &str, card: &Card, verdicts: &[Verdict], models: &[ModelRun]) -> String {
    let lost: u64 = models.iter().flat_map(|m| &m.phases).map(|p| p.lost).sum();
    let failed: Vec<&str> = models
        .iter()
        .filter(|m| m.error.is_some())
        .map(|m| m.model.as_str())
        .collect();
    let mut line = format!("{name}: {}", card.headline);
    if card.weak {
        line.push_str(" [weak: fewer than 6 windows per rate, the intervals cover less than 95%]");
    }
    if verdicts.is_empty() && !failed.is_empty() {
        line.push_str(&format!("; {} failed", failed.join(", ")));
    }
    if lost > 0 {
        line.push_str(&format!("; {lost} events LOST"));
    }
    line
}

/// The models each function runs in, in this order.
pub const MODELS: [Model; 4] = [
    Model::Persistent,
    Model::OnDemand,
    Model::ScaleToZero,
    Model::Auto,
];

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
    /// `mode = "auto"` with its defaults: the agent picks between the two at run time.
    Auto,
}

impl Model {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Persistent => "persistent",
            Self::OnDemand => "on-demand",
            Self::ScaleToZero => "scale-to-zero",
            Self::Auto => "auto",
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
            Self::Auto => Mode::Auto,
        }
    }
}

/// A temporary folder for the agents' configs and state, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self, CompareError> {
        // The folders of runs that were killed (kill -9 leaves no time to remove one).
        let temp = std::env::temp_dir();
        for e in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("edge-agent-compare-"));
            if pid.is_some_and(|p| p.parse::<u32>().is_ok() && !Path::new("/proc").join(p).exists())
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = temp.join(format!("edge-agent-compare-{}", std::process::id()));
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
        "compare: this build has no embedded broker; using {url} (--broker, or a workload file's [broker], names another)"
    );
    Ok(url)
}

/// An agent process, killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    /// Stops the agent as a service manager would: SIGTERM, then SIGKILL after 5 s. A
    /// clean stop disconnects, so the broker sends no last will after [`measure::clear_retained`].
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid, which is not reaped before the
            // wait below, so it cannot name another process.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What [`last_lines`] gives for an agent that wrote nothing.
const NOTHING_SAID: &str = "nothing on stderr";

/// The last `n` lines that say something of what `from` gives until its end, joined by
/// "; ".
fn last_lines(from: impl std::io::Read, n: usize) -> String {
    use std::io::BufRead;
    let mut kept = std::collections::VecDeque::with_capacity(n + 1);
    for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
        if !line.trim().is_empty() {
            kept.push_back(line);
            if kept.len() > n {
                kept.pop_front();
            }
        }
    }
    if kept.is_empty() {
        NOTHING_SAID.into()
    } else {
        Vec::from(kept).join("; ")
    }
}

/// One function in one model, and where to run it.
struct ModelSetup<'a> {
    work: &'a Path,
    broker: &'a BrokerConfig,
    plan: &'a Plan,
    function: &'a FunctionPlan,
    model: Model,
    round: u32,
    idle_secs: f64,
    wrapper: &'a [String],
    progress: &'a Progress,
}

/// One round of one model: what one agent process measured.
#[derive(Debug, Default)]
struct Round {
    idle_rss_bytes: u64,
    peak_rss_bytes: u64,
    phases: Vec<RoundPhase>,
    windows: Vec<Window>,
    rss_over_time: Vec<(f64, u64)>,
    sustained: Option<f64>,
    mb_seconds: f64,
    state_disk_bytes: u64,
    agent: AgentStats,
    error: Option<String>,
    /// It failed because the broker went away.
    broker_gone: bool,
}

/// One phase of one round.
#[derive(Debug)]
struct RoundPhase {
    pattern: String,
    rate: f64,
    sent: u64,
    received: u64,
    duplicates: u64,
    latency: hdrhistogram::Histogram<u64>,
    seconds: f64,
    handled_per_second: f64,
}

/// The broker and agent id of the model being measured, for a stop to clear what that
/// agent retained ([`run`]).
static MEASURING: std::sync::Mutex<Option<(BrokerConfig, String)>> = std::sync::Mutex::new(None);

async fn run_model(setup: ModelSetup<'_>) -> Round {
    let mut round = Round::default();
    *MEASURING.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((setup.broker.clone(), agent_id(&setup)));
    let measured = measure_model(&setup, &mut round).await;
    MEASURING.lock().unwrap_or_else(|p| p.into_inner()).take();
    // Its agent is stopped now (its process dropped): what it retained goes too.
    measure::clear_retained(setup.broker, &agent_id(&setup), Duration::from_secs(2)).await;
    if let Err(e) = measured {
        round.broker_gone = matches!(e, MeasureError::BrokerGone(_));
        let (name, mode) = (&setup.function.name, setup.model.name());
        let e = edge_agent::failure::chain(&e);
        setup.progress.say(format!("{name} {mode} failed: {e}"));
        round.error = Some(e);
    }
    round
}

/// The `agent.id` of `setup`'s agent: a fresh agent, store and topics per round.
fn agent_id(setup: &ModelSetup<'_>) -> String {
    let (f, model, round) = (setup.function, setup.model, setup.round);
    format!("compare-{}-{}-{}", f.name, model.name(), round + 1)
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
        Model::Persistent | Model::Auto => function["instances"] = f.instances.into(),
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
    /// The publishing client was not let in.
    #[error("the broker did not let the publishing client in")]
    Connect(#[source] Box<measure::ReachError>),
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
    /// The agent exited before it was online: a module it cannot load, a config it
    /// refuses. `said` is the end of what it wrote to stderr.
    #[error("the agent exited at start ({status}): {said}")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its last lines on stderr (the error).
        said: String,
    },
    /// A stats report this build cannot read.
    #[error("the agent's stats cannot be read")]
    Stats(#[source] edge_agent::messages::ReadError),
    /// The broker did not answer for this long.
    #[error("the broker went away: no connection to it for {} s", .0.as_secs())]
    BrokerGone(Duration),
    /// The broker's connection dropped during the measurement.
    #[error(
        "the connection to the broker dropped {0} time(s) during the measurement (a broker \
         restart?): what the broker lost meanwhile would count as the agent's loss"
    )]
    BrokerLost(u32),
}

async fn measure_model(setup: &ModelSetup<'_>, run: &mut Round) -> Result<(), MeasureError> {
    let ModelSetup {
        work,
        broker,
        plan,
        function: f,
        model,
        round,
        idle_secs,
        wrapper,
        progress,
    } = *setup;
    let id = agent_id(setup);
    let what = format!("{} {} (round {})", f.name, model.name(), round + 1);
    progress.say(format!("{what}: starting its agent, then idle"));
    let data = work.join(&id);
    // One compile cache for the run's agents (each keeps its own store): only the first
    // start of a `.wasm` compiles it, and no model's idle follows a compile. Loading after
    // a scale to zero read the cache before as well.
    let shared = work.join("compiled");
    let _ = std::fs::create_dir_all(&shared).and_then(|()| std::fs::create_dir_all(&data));
    #[cfg(unix)]
    let _ = std::os::unix::fs::symlink(&shared, data.join("compiled"));
    let file = work.join(format!("{id}.json"));
    let config = serde_json::to_vec_pretty(&agent_config(setup, &id, &data)).unwrap_or_default();
    std::fs::write(&file, config).map_err(|source| MeasureError::Config {
        path: file.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(MeasureError::Exe)?;
    let (mut status, link) = measure::subscribe(
        broker,
        &format!("{id}-status"),
        &format!("edge-agent/{id}/status"),
    )
    .await?;
    // Subscribed before the agent starts, not just before the first event: a broker with
    // Nagle's algorithm on (Mosquitto's default, and the embedded one) holds its first
    // PUBLISH to a client until the client has acknowledged the SUBACK at the TCP level,
    // which Linux delays up to 40 ms. Subscribed just before, the first event of every
    // model read 37-40 ms where the others read under 2 (one in 200 at 20 events/s: the
    // p99 of a short phase).
    let (mut outputs, _) =
        measure::subscribe(broker, &format!("{id}-out"), &f.output_filter).await?;
    // The run's first start of a `.wasm` compiles it into the shared cache, and its
    // process keeps what compiling touched (here 9 MB of RSS: the compiler's pages of the
    // binary and its threads' heap), which no later start has: measured as is, the first
    // model read 27 MB idle against 18 (a probe, 2026-12-07: `--quick` advised on demand
    // for memory in three runs of three, where with `.cwasm` modules memory was even).
    // A start that filled the cache only fills it; the agent is started again from it.
    // (By name, not by count: each agent prunes the entries of modules it does not run.)
    let entries = || -> std::collections::HashSet<std::ffi::OsString> {
        std::fs::read_dir(&shared).map_or_else(
            |_| Default::default(),
            |d| d.flatten().map(|e| e.file_name()).collect(),
        )
    };
    let cached = entries();
    let mut filling = true;
    let (agent, pid, spawned) = loop {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // If this process dies without stopping it (kill -9), the kernel stops the agent.
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The parent died before prctl: nobody would stop it.
                if libc::getppid() != parent as libc::pid_t {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = command
            .args(["run", "--config"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| MeasureError::Start(wrapper.join(" "), e))?;
        // The last lines of its stderr, kept by a thread of ours: if it exits at start, the
        // reason. A pipe, not a file, so that the measurement writes nothing more to the disk
        // that the agent's store flushes to.
        let said = child
            .stderr
            .take()
            .map(|e| std::thread::spawn(move || last_lines(e, 3)));
        let mut agent = AgentProcess(child);
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
        // An agent that exits at start (a module it cannot load) says why at once, rather
        // than after the wait for a slow start.
        let exited = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(Some(status)) = agent.0.try_wait() {
                    return status;
                }
            }
        };
        // A broker gone for BROKER_WAIT fails the model then, not at the end of the wait
        // for a slow start (10 minutes a model in a probe, 2026-12-08).
        let gone = async {
            while link.down_for().is_none_or(|d| d < BROKER_WAIT) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        // Compiling a Python or JavaScript .wasm takes minutes on a Pi (precompile it).
        let up = tokio::select! {
            up = tokio::time::timeout(Duration::from_secs(600), online) => up.unwrap_or(false),
            () = gone => return Err(MeasureError::BrokerGone(BROKER_WAIT)),
            status = exited => {
                // Its stderr is closed now that it has exited: the thread ends.
                let said = said
                    .and_then(|t| t.join().ok())
                    .unwrap_or_else(|| NOTHING_SAID.into());
                return Err(MeasureError::Exited { status, said });
            }
        };
        if !up {
            return Err(MeasureError::Offline);
        }
        if filling && !entries().is_subset(&cached) {
            filling = false;
            drop(agent);
            // Its clean stop wrote a snapshot of its store: the agent measured starts
            // with none, as every other does.
            let _ = std::fs::remove_dir_all(data.join("state"));
            continue;
        }
        break (agent, pid, spawned);
    };
    // What loading the module costs, compile included: a function scaled to zero pays it
    // again on its next event, so a phase must wait at least that long for outputs.
    let startup = spawned.elapsed();
    // Scaled to zero, it is idle once keep_warm_secs have passed (checked four times per
    // keep_warm_secs, at most once a second).
    let settle = match model {
        Model::ScaleToZero => 1.5 + f.keep_warm_secs as f64,
        _ => 0.25,
    };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    run.idle_rss_bytes = edge_agent::clock::process_status_bytes(pid, "VmRSS").unwrap_or(0);
    // From here the process is sampled every 250 ms: its CPU and memory in one-second
    // windows, idle first, then each phase.
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let t0 = std::time::Instant::now();
    let sampler = tokio::spawn(measure::sample(
        pid,
        t0,
        Duration::from_millis(250),
        stop_sampling.clone(),
    ));
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    // Auto starts on demand and stays so until events come: its idle is billed by use.
    let auto = model == Model::Auto;
    let mut spans = vec![(
        0.0,
        0.0,
        0.0,
        t0.elapsed().as_secs_f64(),
        auto.then_some(false),
    )];
    progress.step();
    let (mut stats, _) = measure::subscribe(
        broker,
        &format!("{id}-stats"),
        &format!("edge-agent/{id}/stats"),
    )
    .await?;
    let (client, mut eventloop) = measure::client(broker, &format!("{id}-pub"))?;
    measure::connected(&mut eventloop, BROKER_WAIT)
        .await
        .map_err(|e| MeasureError::Connect(Box::new(e)))?;
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let qos = if plan.qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    let mut first = 0;
    let mut sent = measure::Sent::default();
    let mut own = AgentStats::default();
    for phase in &f.phases {
        let count = phase.offsets.len() as u64;
        progress.say(format!("{what}: {}, {count} events", phase.label));
        let start = t0.elapsed().as_secs_f64();
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
        let end = t0.elapsed().as_secs_f64();
        let seconds = end - start;
        // The model auto was in: its last report's (one a second), near the phase's end.
        own.drain(&mut stats)?;
        let persistent = own.auto_model.as_deref().map(|m| m == "persistent");
        spans.push((
            phase.rate,
            n as f64 / seconds.max(1e-3),
            start,
            end,
            persistent,
        ));
        run.phases.push(RoundPhase {
            pattern: phase.label.clone(),
            rate: phase.rate,
            sent: n,
            received,
            duplicates,
            latency: h,
            seconds,
            handled_per_second: received as f64 / seconds.max(1e-3),
        });
        let slack = (phase.duration.as_secs_f64() * 0.1).max(1.0);
        if received == n && n > 0 && seconds <= phase.duration.as_secs_f64() + slack {
            run.sustained = Some(run.sustained.unwrap_or(0.0).max(phase.rate));
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
    let samples = sampler.await.unwrap_or_default();
    for (rate, events_per_second, from, to, persistent) in spans {
        run.windows
            .extend(measure::windows(&samples, from, to, 1.0).into_iter().map(
                |(seconds, cpu, rss)| Window {
                    round,
                    rate,
                    events_per_second,
                    seconds,
                    cpu_seconds_per_hour: cpu,
                    rss_bytes: rss,
                    persistent,
                },
            ));
    }
    run.rss_over_time = samples.iter().map(|s| (s.t, s.rss)).collect();
    run.mb_seconds = measure::mb_seconds_above(&run.rss_over_time, run.idle_rss_bytes);
    // The agent's own figures: the report after the last event (one a second).
    own.wait_for(&mut stats, first, Duration::from_secs(5))
        .await?;
    run.agent = own;
    poller.abort();
    // The store only: the data directory also keeps the compiled module (compile cache).
    // Read while the agent runs: its clean stop writes a snapshot, even of an empty store.
    run.state_disk_bytes = measure::disk_bytes(&data.join("state"));
    drop(agent);
    // What the broker lost while it was away (a restart without persistence drops what
    // it held) would read as the agent's loss, and the phase's rate and CPU as its own.
    if link.lost() > 0 {
        return Err(MeasureError::BrokerLost(link.lost()));
    }
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
    /// `mode = "auto"`: the model in force at the last report.
    auto_model: Option<String>,
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
            if self.read(&body)? {
                deadline = tokio::time::Instant::now() + quiet;
            }
        }
        Ok(())
    }

    /// Reads the reports that have come, without waiting.
    ///
    /// # Errors
    /// As [`AgentStats::wait_for`].
    fn drain(
        &mut self,
        stats: &mut tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, Vec<u8>)>,
    ) -> Result<(), MeasureError> {
        while let Ok((_, body)) = stats.try_recv() {
            self.read(&body)?;
        }
        Ok(())
    }

    /// Takes one report's figures; whether the agent had handled more events.
    fn read(&mut self, body: &[u8]) -> Result<bool, MeasureError> {
        let report = StatsReport::from_bytes(body).map_err(MeasureError::Stats)?;
        let Some(f) = report.functions.first().map(|f| &f.totals) else {
            return Ok(false);
        };
        let progress = f.succeeded > self.succeeded;
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
            auto_model: f.auto.as_ref().map(|a| a.model.clone()),
        };
        Ok(progress)
    }
}

/// Where two reports' verdicts contradict each other: the same function and kind of cost,
/// overlapping rates, and two different winners, each named with its interval beyond the
/// noise threshold. "About even" contradicts nothing. Empty when they agree.
pub fn contradictions(a: &Report, b: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for fa in &a.functions {
        let Some(fb) = b.functions.iter().find(|f| f.function == fa.function) else {
            continue;
        };
        for va in &fa.verdicts {
            let Some(vb) = fb.verdicts.iter().find(|v| v.kind == va.kind) else {
                continue;
            };
            for ra in va.ranges.iter().filter(|r| r.winner != verdict::EVEN) {
                for rb in vb.ranges.iter().filter(|r| r.winner != verdict::EVEN) {
                    if ra.winner != rb.winner && ra.from <= rb.to && rb.from <= ra.to {
                        out.push(format!(
                            "{} {}: {} at {}-{} events/s in one, {} at {}-{} in the other",
                            fa.function,
                            va.kind,
                            ra.winner,
                            verdict::rate_words(ra.from),
                            verdict::rate_words(ra.to),
                            rb.winner,
                            verdict::rate_words(rb.from),
                            verdict::rate_words(rb.to)
                        ));
                    }
                }
            }
        }
    }
    out
}

/// `175±4%`: a median and half its interval relative to it; `!` when outliers were
/// flagged among its samples.
fn pm(e: &Estimate, scale: f64, digits: usize) -> String {
    let flag = if e.outliers > 0 { "!" } else { "" };
    let spread = e.relative_spread() * 100.0;
    if e.n == 0 {
        "-".into()
    } else if spread < 0.5 {
        format!("{:.digits$}{flag}", e.median * scale)
    } else {
        format!("{:.digits$}±{spread:.0}%{flag}", e.median * scale)
    }
}

/// The report as a table per function (medians ± half their 95% interval), the fitted
/// lines, the verdict per kind of cost, the trade-offs, then one verdict line per function.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "edge-agent {} on {}; workload {}, QoS {}, {} round(s) per model{}; energy by the {} \
         power profile, money by a price list (models, see the end). Figures are medians ± \
         half their 95% interval; ! marks outliers among their samples.",
        report.agent_version,
        report.place(),
        report.workload,
        report.qos,
        report.rounds,
        if report.quick { " (--quick)" } else { "" },
        report.power.name
    );
    for f in &report.functions {
        let _ = writeln!(
            out,
            "\n{} ({})\n{:<13} {:>7} {:>8} {:>5} {:>4} {:>11} {:>11} {:>10} {:>11} {:>9} {:>10} {:>10} {:>12}",
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
            for c in &m.costs {
                let row = match m.phases.iter().find(|p| p.rate == c.rate && c.rate > 0.0) {
                    Some(p) => {
                        // No outputs matched (`outputs = "none"`): no outside latency.
                        let ms = |e: &Estimate| match p.end_to_end_us.max {
                            0 => "-".to_string(),
                            _ => pm(e, 1e-3, 2),
                        };
                        format!(
                            "{:>8} {:>5} {:>4} {:>11} {:>11} {:>10}",
                            p.received,
                            p.lost,
                            p.duplicates,
                            ms(&p.end_to_end_us.p50),
                            ms(&p.end_to_end_us.p99),
                            pm(&p.cpu_per_event_us, 1.0, 0)
                        )
                    }
                    None => format!(
                        "{:>8} {:>5} {:>4} {:>11} {:>11} {:>10}",
                        "idle", "", "", "", "", ""
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:<13} {:>7} {row} {:>11} {:>9} {:>10} {:>10} {:>12}",
                    m.model,
                    c.rate,
                    pm(&c.cpu_seconds, 1.0, 1),
                    pm(&c.memory_mb, 1.0, 1),
                    pm(&c.watts, 1e3, 1),
                    if c.rate > 0.0 {
                        pm(&c.joules_per_event, 1e3, 3)
                    } else {
                        String::new()
                    },
                    pm(&c.dollars, HOURS_PER_MONTH, 4)
                );
            }
        }
        for m in f.models.iter().filter(|m| m.error.is_none()) {
            let fit = &m.fit;
            let _ = writeln!(
                out,
                "{:<13} fitted: {} CPU s/h + {} per event/s; {} mW + {}; ${}/month + {} ({})",
                m.model,
                fit.cpu_seconds.standing.show(1),
                fit.cpu_seconds.marginal.show(3),
                fit.watts.standing.map(|w| w * 1e3).show(1),
                fit.watts.marginal.map(|w| w * 1e3).show(3),
                fit.dollars.standing.map(|d| d * HOURS_PER_MONTH).show(4),
                fit.dollars.marginal.map(|d| d * HOURS_PER_MONTH).show(5),
                billing_words(&m.billing)
            );
            let _ = writeln!(
                out,
                "{:<13} sustained {}; peak {} MB, {} MB-s above idle, state on disk {} KB, \
                 instance {} MB; agent p50s: queue {} us, cold start {} us, execute {} us, \
                 commit {} us, call CPU {} us",
                "",
                m.max_sustained_rate
                    .map_or("no rate".into(), |r| format!("{r:.0} events/s")),
                pm(&m.peak_rss_bytes, 1e-6, 1),
                pm(&m.memory_mb_seconds_above_idle, 1.0, 0),
                pm(&m.state_disk_bytes, 1.0 / 1024.0, 0),
                pm(&m.agent_instance_memory_bytes, 1e-6, 1),
                pm(&m.agent_queue_p50_us, 1.0, 0),
                pm(&m.agent_instantiate_p50_us, 1.0, 0),
                pm(&m.agent_execute_p50_us, 1.0, 0),
                pm(&m.agent_commit_p50_us, 1.0, 0),
                pm(&m.agent_call_cpu_p50_us, 1.0, 0)
            );
        }
        for v in &f.verdicts {
            let _ = writeln!(out, "- {}: {}", v.kind, v.text);
        }
        for t in &f.tradeoffs {
            let _ = writeln!(out, "- {}: {}", t.name, t.finding);
        }
        let flagged: Vec<String> = f
            .models
            .iter()
            .flat_map(|m| {
                m.costs
                    .iter()
                    .filter(|c| c.cpu_seconds.outliers > 0)
                    .map(move |c| {
                        format!(
                            "{} at {}/s: {} of {}",
                            m.model, c.rate, c.cpu_seconds.outliers, c.cpu_seconds.n
                        )
                    })
            })
            .collect();
        if !flagged.is_empty() {
            let _ = writeln!(
                out,
                "warning: outlying CPU windows ({}): kept, the medians hardly move, but \
                 something else was busy on this machine",
                flagged.join(", ")
            );
        }
    }
    let _ = writeln!(out);
    for f in &report.functions {
        let _ = writeln!(out, "{}", f.verdict);
    }
    if report.quick {
        let _ = writeln!(
            out,
            "(--quick: a few windows per rate, so its verdict is weaker; run without --quick for \
             one that holds)"
        );
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

#[cfg(test)]
mod card_tests {
    /// A function whose models all failed to run recommends nothing, and its page card
    /// says so, with no "Decided by" line naming nothing.
    #[test]
    fn no_verdict_recommends_nothing() {
        let c = super::card(&[], &[], &[], 10.0);
        assert_eq!(c.recommended, "none");
        assert!(c.headline.contains("a model's run failed"), "{c:?}");
        assert!(c.trade_off.is_empty(), "{c:?}");
    }
}

//! `edge-agent top`: a live table of what agents are doing, like `docker stats`, read from
//! their retained stats and status topics (`<prefix>/<id>/stats`, `<prefix>/<id>/status`)
//! on any broker, so it runs on the device or on a laptop beside it.
//!
//! One row per function: its model, events/s, p50 and p99 of the last interval, cold
//! starts/s, CPU %, memory, queue depth, errors and restarts; above each agent's rows, its
//! presence, memory, CPU and state size. The figures change as often as the agent reports
//! (`agent.stats_interval_secs`); the screen redraws every second so that the report's age
//! stays true. `q`, Esc or Ctrl-C quits. When stdout is not a terminal, or with `--once`,
//! it prints the table once, as text, and exits.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use edge_agent::messages::{
    DeploymentReport, Message, Presence, ReadError, Report, Snapshot, Status,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use edge_agent_publish::BrokerArgs;

pub mod shadow;

/// Arguments of `edge-agent top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// The broker the agents use.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only this agent (`agent.id`); default: every agent that reports on the broker.
    #[arg(short, long)]
    pub agent: Option<String>,
    /// The agents' `agent.topic_prefix`.
    #[arg(long, default_value = "edge-agent")]
    pub prefix: String,
    /// Print the table once, as text, and exit (also when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// With `--once`: how long to wait for the first report, in seconds.
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
    /// The fleet as one: a summary line (agents online, deployments, events/s), then one
    /// line per agent with its health and deployment, its functions under it (fewer
    /// columns, with each module's version).
    #[arg(long)]
    pub fleet: bool,
}

/// What `top` failed at.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// Bad broker arguments.
    #[error(transparent)]
    Args(#[from] edge_agent_publish::BrokerArgsError),
    /// `--once` heard no report in time.
    #[error(
        "no stats report from {0} within {1} s (is the agent running, with agent.stats_interval_secs > 0?)"
    )]
    NoReport(String, u64),
    /// The broker could not be reached, or refused the connection, until the wait ended.
    #[error("{0} (so no report could be read)")]
    Broker(String),
    /// The terminal could not be used.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// `shadow report` heard no report in time.
    #[error(
        "no shadow report for function `{0}` within {1} s (does it have a [function.shadow], \
         on a running agent, with this --prefix and --agent?)"
    )]
    NoShadow(String, u64),
    /// A report in a format this build does not read.
    #[error("shadow report unreadable: {0}")]
    Unreadable(String),
}

impl TopError {
    /// How the command ends: bad arguments, or no agent and terminal to watch with.
    pub fn exit(&self) -> edge_agent::failure::Exit {
        match self {
            Self::Args(_) => edge_agent::failure::Exit::Usage,
            Self::NoReport(..) | Self::Broker(_) | Self::NoShadow(..) | Self::Terminal(_) => {
                edge_agent::failure::Exit::Unavailable
            }
            Self::Unreadable(_) => edge_agent::failure::Exit::Failure,
        }
    }
}

/// What is known of one agent.
#[derive(Debug, Default)]
struct AgentView {
    /// The last status message (birth or will), or why it could not be read.
    status: Option<Result<Status, ReadError>>,
    /// The last stats report, or why it could not be read (another `schema_version`).
    report: Option<Result<Report, ReadError>>,
    /// When the report arrived here.
    heard: Option<Instant>,
    /// How old it was then (retained: by its `ts_ms`).
    old_when_heard: Duration,
    /// Its last deployment report (`--fleet`).
    deployment: Option<DeploymentReport>,
}

impl AgentView {
    /// Seconds since the agent made its report (0 without one).
    fn report_age(&self) -> u64 {
        self.heard
            .map_or(0, |t| (t.elapsed() + self.old_when_heard).as_secs())
    }

    /// Whether its report's figures are the past's, not what it does now: the agent is
    /// offline, or three of its reports were missed.
    fn stale(&self, r: &Report) -> bool {
        let offline = matches!(&self.status, Some(Ok(s)) if s.status == Presence::Offline);
        offline || self.report_age() as f64 > 3.0 * r.interval_secs
    }

    /// Its report, if its figures are current ([`AgentView::stale`]).
    fn current(&self) -> Option<&Report> {
        let r = self.report.as_ref()?.as_ref().ok()?;
        (!self.stale(r)).then_some(r)
    }
}

/// Every agent heard from, by id.
#[derive(Debug, Default)]
pub struct Board {
    agents: BTreeMap<String, AgentView>,
    /// The connection's state, when it is not simply up.
    pub broker_problem: Option<String>,
    /// Whether the broker has accepted the connection yet.
    pub connected: bool,
    /// `--fleet`: one line per agent, fewer columns, a summary on top.
    pub fleet: bool,
}

/// One agent's part of the table, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The agent's line: id, presence, memory, CPU, state size, the report's age.
    pub title: String,
    /// One row of cells (as [`COLUMNS`]) per function.
    pub rows: Vec<Vec<String>>,
}

/// Column titles of the function rows.
pub const COLUMNS: [&str; 11] = [
    "FUNCTION", "MODEL", "EVENTS/S", "P50", "P99", "COLD/S", "CPU %", "MEMORY", "QUEUE", "ERRORS",
    "RESTARTS",
];

/// Column titles of the function rows with `--fleet`.
pub const FLEET_COLUMNS: [&str; 6] = ["FUNCTION", "MODEL", "EVENTS/S", "P99", "ERRORS", "MODULE"];

/// The model column: an auto function shows the model in force and the reason of its
/// last switch (`auto:persistent (panic)`).
fn model(t: &Snapshot) -> String {
    match &t.auto {
        Some(a) => match &a.last_switch {
            Some(w) => format!("auto:{} ({})", a.model, w.reason),
            None => format!("auto:{}", a.model),
        },
        None => t.mode.clone(),
    }
}

/// A shadow's row, under its function: its model and mismatch ratio (noise subtracted),
/// its call p50 and p99 (not end to end: it publishes nothing), memory, events skipped
/// (in the queue column) and failed where the primary did not.
fn shadow_row(r: &edge_agent::messages::ShadowReport) -> Vec<String> {
    let ratio = r
        .mismatch_ratio
        .map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0));
    vec![
        "└ shadow".into(),
        match &r.canary {
            Some(c) => format!(
                "{} {ratio} differ, canary {:.0}% {}",
                r.model,
                c.weight * 100.0,
                c.status
            ),
            None => format!("{} {ratio} differ", r.model),
        },
        "-".into(),
        us(r.shadow.latency_p50_us),
        us(r.shadow.latency_p99_us),
        "-".into(),
        "-".into(),
        bytes(r.shadow.peak_memory_bytes),
        format!("{} skip", r.skipped),
        r.shadow_failed.to_string(),
        "-".into(),
    ]
}

fn us(v: u64) -> String {
    match v {
        0 => "-".into(),
        n if n < 1_000 => format!("{n}µs"),
        n if n < 1_000_000 => format!("{:.1}ms", n as f64 / 1e3),
        n => format!("{:.2}s", n as f64 / 1e6),
    }
}

fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1}MiB", n / (1024.0 * 1024.0))
    } else if n > 0.0 {
        format!("{:.0}KiB", n / 1024.0)
    } else {
        "-".into()
    }
}

fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

impl Board {
    /// [`Board::apply`] for a retained message (the broker's copy, sent at subscribing): a
    /// report is as old as its own `ts_ms` says, by this machine's clock. An agent that
    /// stopped long ago showed its last report as "0s ago", its events a second as if
    /// current (until 2026-12-07).
    pub fn apply_retained(&mut self, topic: &str, payload: &[u8]) {
        self.apply(topic, payload);
        let Some(id) = topic
            .strip_suffix("/stats")
            .and_then(|t| t.rsplit('/').next())
        else {
            return;
        };
        if let Some(view) = self.agents.get_mut(id)
            && let Some(Ok(report)) = &view.report
        {
            let age = edge_agent::clock::now_ms().saturating_sub(report.ts_ms);
            view.old_when_heard = Duration::from_millis(age);
        }
    }

    /// Takes in a message from `<prefix>/<id>/stats` or `<prefix>/<id>/status`.
    pub fn apply(&mut self, topic: &str, payload: &[u8]) {
        let mut parts = topic.rsplitn(3, '/');
        let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
            return;
        };
        let view = self.agents.entry(id.to_string()).or_default();
        match kind {
            "stats" => {
                view.report = Some(Report::from_bytes(payload));
                view.heard = Some(Instant::now());
                view.old_when_heard = Duration::ZERO;
            }
            "status" => view.status = Some(Status::from_bytes(payload)),
            "deployment" => view.deployment = DeploymentReport::from_bytes(payload).ok(),
            _ => {}
        }
    }

    /// Whether any agent heard from has sent a report. Not every one: an agent that
    /// never reported (stopped before its first, or with `stats_interval_secs = 0`) leaves
    /// a retained status on the broker for ever, and `top --once` then failed with "no
    /// stats report" beside agents that had sent theirs (until 2026-12-07). Those show
    /// as "no stats report yet".
    pub fn has_reports(&self) -> bool {
        self.agents.values().any(|a| a.report.is_some())
    }

    /// The column titles in use.
    pub fn columns(&self) -> &'static [&'static str] {
        if self.fleet { &FLEET_COLUMNS } else { &COLUMNS }
    }

    /// `--fleet`: the fleet in one line: agents online, the deployments in force and how
    /// many agents run each, events and errors per second over all.
    pub fn summary(&self) -> String {
        let online = self
            .agents
            .values()
            .filter(|a| matches!(&a.status, Some(Ok(s)) if s.status == Presence::Online))
            .count();
        let mut deployments: BTreeMap<String, usize> = BTreeMap::new();
        for d in self.agents.values().filter_map(|a| a.deployment.as_ref()) {
            let key = match d.in_force {
                Some(v) => format!("{}/{v}", d.group),
                None => format!("{}/none", d.group),
            };
            *deployments.entry(key).or_default() += 1;
        }
        // What the fleet does now: an agent gone or silent does nothing it can count (until
        // 2026-12-08 its last figures stayed in the sum).
        let reports = || {
            self.agents
                .values()
                .filter_map(AgentView::current)
                .flat_map(|r| &r.functions)
        };
        // From 0, not from the empty sum's -0.0.
        let events = reports().fold(0.0, |a, f| a + f.rates.events_per_sec);
        let errors = reports().fold(0.0, |a, f| a + f.rates.errors_per_sec);
        let deployments = if deployments.is_empty() {
            "no deployments".to_string()
        } else {
            let each: Vec<String> = deployments
                .iter()
                .map(|(d, n)| format!("{d} on {n}"))
                .collect();
            format!("in force: {}", each.join(", "))
        };
        format!(
            "{} agents, {online} online; {deployments}; {} events/s, {} errors/s",
            self.agents.len(),
            rate(events),
            rate(errors)
        )
    }

    /// The table: per agent its line, then its functions.
    pub fn sections(&self) -> Vec<Section> {
        if self.fleet {
            return self.fleet_sections();
        }
        let mut sections = Vec::new();
        for (id, a) in &self.agents {
            let presence = match &a.status {
                None => "status unknown".to_string(),
                Some(Ok(s)) => {
                    let state = match s.status {
                        Presence::Online => "online",
                        Presence::Offline => "offline",
                    };
                    format!("{state}  v{}", s.version)
                }
                Some(Err(e)) => format!("status unreadable ({e})"),
            };
            let title = match &a.report {
                None => format!("{id}  {presence}  (no stats report yet)"),
                Some(Err(ReadError::Version { found, reads, .. })) => format!(
                    "{id}  {presence}  stats in a format this top does not read \
                     (schema_version {found}; it reads {reads})"
                ),
                Some(Err(e)) => format!("{id}  {presence}  stats unreadable: {e}"),
                Some(Ok(r)) => {
                    let age = a.report_age();
                    // Offline, or three reports missed: its figures are the last it sent,
                    // not now's.
                    let stale = a.stale(r);
                    // How old the figures are first: a narrow terminal cuts the line's end,
                    // and cut "(STALE)" off a hung agent's line until 2026-12-08.
                    format!(
                        "{id}  {presence}  report {age}s ago{}, covers {:.0}s  rss {}  \
                         cpu {:.1}%{}  state {} on disk",
                        if stale { " (STALE)" } else { "" },
                        r.interval_secs,
                        bytes(r.process.rss_bytes),
                        r.process.cpu_percent,
                        r.broker_round_trip_ms
                            .map_or_else(String::new, |ms| format!(
                                "  broker rtt {}",
                                us((ms * 1000.0).round() as u64)
                            )),
                        bytes(r.state_disk_bytes),
                    )
                }
            };
            let functions = a.report.as_ref().and_then(|r| r.as_ref().ok());
            let rows = functions
                .into_iter()
                .flat_map(|r| &r.functions)
                .flat_map(|f| {
                    let (t, rates) = (&f.totals, &f.rates);
                    let row = vec![
                        t.function.clone(),
                        model(t),
                        rate(rates.events_per_sec),
                        us(rates.end_to_end_us.p50),
                        us(rates.end_to_end_us.p99),
                        rate(rates.cold_starts_per_sec),
                        rate(rates.cpu_percent),
                        bytes(t.peak_memory_bytes as u64),
                        t.queue_depth.to_string(),
                        t.failed_total().to_string(),
                        if t.stopped_instances > 0 {
                            format!("{} STOPPED", t.restarts)
                        } else {
                            t.restarts.to_string()
                        },
                    ];
                    std::iter::once(row).chain(t.shadow.as_ref().map(shadow_row))
                })
                .collect();
            sections.push(Section { title, rows });
        }
        sections
    }

    /// `--fleet`: per agent one line (presence, events/s, errors, memory, CPU, deployment),
    /// and under it each function's name, model, events/s, p99, errors and module version.
    fn fleet_sections(&self) -> Vec<Section> {
        let mut sections = Vec::new();
        for (id, a) in &self.agents {
            let presence = match &a.status {
                Some(Ok(s)) if s.status == Presence::Online => match &s.degraded {
                    Some(why) => format!("online (degraded: {why})"),
                    None => "online".to_string(),
                },
                Some(Ok(_)) => "offline".to_string(),
                Some(Err(_)) => "status unreadable".to_string(),
                None => "status unknown".to_string(),
            };
            let report = a.report.as_ref().and_then(|r| r.as_ref().ok());
            let figures = report.map_or_else(
                || "no stats yet".to_string(),
                |r| {
                    if a.stale(r) {
                        return format!("last report {}s ago (STALE)", a.report_age());
                    }
                    let events = r
                        .functions
                        .iter()
                        .fold(0.0, |a, f| a + f.rates.events_per_sec);
                    let errors = r
                        .functions
                        .iter()
                        .fold(0.0, |a, f| a + f.rates.errors_per_sec);
                    format!(
                        "{} ev/s  {} err/s  rss {}  cpu {:.1}%",
                        rate(events),
                        rate(errors),
                        bytes(r.process.rss_bytes),
                        r.process.cpu_percent
                    )
                },
            );
            let deployment = a.deployment.as_ref().map_or_else(String::new, |d| {
                format!("  deploy {}", d.summary_at(edge_agent::clock::now_ms()))
            });
            let title = format!("{id}  {presence}  {figures}{deployment}");
            let stale = report.is_some_and(|r| a.stale(r));
            let rows = report
                .into_iter()
                .flat_map(|r| &r.functions)
                .map(|f| {
                    let (t, rates) = (&f.totals, &f.rates);
                    vec![
                        t.function.clone(),
                        model(t),
                        if stale {
                            "-".into()
                        } else {
                            rate(rates.events_per_sec)
                        },
                        us(rates.end_to_end_us.p99),
                        t.failed_total().to_string(),
                        t.module_sha256
                            .as_deref()
                            .map_or_else(|| "-".into(), |s| s.chars().take(12).collect()),
                    ]
                })
                .collect();
            sections.push(Section { title, rows });
        }
        sections
    }

    /// The table as plain text (for `--once` and pipes).
    pub fn text(&self) -> String {
        let sections = self.sections();
        let columns = self.columns();
        let widths = widths(columns, &sections);
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                // Names and models left-aligned, figures right-aligned.
                if i < 2 {
                    out += &format!("{c:<w$}  ");
                } else {
                    out += &format!("{c:>w$}  ");
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = String::new();
        if self.fleet {
            out += &format!("{}\n", self.summary());
        }
        for s in &sections {
            out += &format!("{}\n", s.title);
            if !s.rows.is_empty() {
                out += &line(&columns.iter().map(|c| (*c).to_string()).collect::<Vec<_>>());
            }
            for r in &s.rows {
                out += &line(r);
            }
        }
        out
    }
}

/// How many of the columns of `widths`, from the left, fit in `width` with `spacing`
/// between them; at least the first (a name, which may then be cut).
fn columns_that_fit(widths: &[usize], width: usize, spacing: usize) -> usize {
    let mut used = 0;
    let fit = widths
        .iter()
        .take_while(|&&w| {
            let needed = if used == 0 { w } else { used + spacing + w };
            let fits = needed <= width;
            if fits {
                used = needed;
            }
            fits
        })
        .count();
    fit.max(1).min(widths.len())
}

/// Each column's width: its widest cell or title.
fn widths(columns: &[&str], sections: &[Section]) -> Vec<usize> {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in sections.iter().flat_map(|s| &s.rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    widths
}

/// Connects, subscribes, and sends every message to `tx` (and the connection's troubles as
/// `Err`), reconnecting until `tx` is dropped.
async fn listen(args: TopArgs, tx: mpsc::Sender<Heard>) -> Result<(), TopError> {
    let opts = args.broker.options("top")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let agent = args.agent.as_deref().unwrap_or("+");
    let filters = ["stats", "status", "deployment"].map(|t| format!("{}/{agent}/{t}", args.prefix));
    tokio::spawn(async move {
        loop {
            let sent = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = client.subscribe(f.clone(), QoS::AtMostOnce).await;
                    }
                    tx.send(Heard::Connected)
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    tx.send(Heard::Message(p.topic, p.payload.to_vec(), p.retain))
                }
                Ok(_) => Ok(()),
                Err(e) => {
                    let sent = tx.send(Heard::Problem(format!(
                        "broker {}: {e}",
                        args.broker.broker
                    )));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    sent
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Runs `edge-agent top` until `q` (or, with `--once`, the first reports).
///
/// # Errors
/// [`TopError`]: bad arguments, no report in time with `--once`, or no usable terminal.
pub fn run(args: &TopArgs) -> Result<(), TopError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel();
    rt.block_on(listen(args.clone(), tx))?;
    // The connection runs on a thread of its own while this one draws.
    let background = std::thread::spawn(move || {
        rt.block_on(std::future::pending::<()>());
    });
    drop(background);
    let mut board = Board {
        fleet: args.fleet,
        ..Board::default()
    };
    if args.once || !std::io::stdout().is_terminal() {
        return once(args, &mut board, &rx);
    }
    live(&mut board, &rx)
}

fn take(board: &mut Board, heard: Heard) {
    match heard {
        Heard::Message(topic, payload, retained) => {
            board.broker_problem = None;
            if retained {
                board.apply_retained(&topic, &payload);
            } else {
                board.apply(&topic, &payload);
            }
        }
        Heard::Connected => {
            board.broker_problem = None;
            board.connected = true;
        }
        Heard::Problem(problem) => board.broker_problem = Some(problem),
    }
}

/// What the connection hands the view.
enum Heard {
    /// A message's topic, payload and retain flag.
    Message(String, Vec<u8>, bool),
    /// Connected (again): no problem with the broker now.
    Connected,
    /// The connection failed, and why; it is tried again.
    Problem(String),
}

type Inbox = mpsc::Receiver<Heard>;

fn once(args: &TopArgs, board: &mut Board, rx: &Inbox) -> Result<(), TopError> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    // Retained reports arrive together right after subscribing: wait for the first, then
    // a moment for the others.
    let mut settle: Option<Instant> = None;
    loop {
        let until = settle.unwrap_or(deadline).min(deadline);
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(msg) => take(board, msg),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Refused before any connection (no listener, bad credentials, a certificate):
        // said at once, as by `publish` and `fleet status`, where until 2026-12-08 the
        // whole wait went by first (a probe).
        if board.broker_problem.is_some() && !board.connected {
            break;
        }
        if board.has_reports() && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    if !board.has_reports() {
        // The broker's own problem where there is one: until 2026-12-08 a wrong CA or
        // password ended in "is the agent running?", after the cause on a line of its own.
        if let Some(why) = board.broker_problem.take() {
            return Err(TopError::Broker(why));
        }
        // A port that takes the connection and never answers (a probe, 2026-12-08).
        if !board.connected {
            return Err(TopError::Broker(format!(
                "broker {}: no MQTT answer (CONNACK) within {} s",
                args.broker.broker, args.wait_secs
            )));
        }
        let who = args.agent.clone().unwrap_or_else(|| "any agent".into());
        return Err(TopError::NoReport(who, args.wait_secs));
    }
    print!("{}", board.text());
    Ok(())
}

fn live(board: &mut Board, rx: &Inbox) -> Result<(), TopError> {
    use ratatui::crossterm::event::{self, KeyCode, KeyEventKind, KeyModifiers};

    let mut terminal = ratatui::init();
    let result = (|| -> Result<(), TopError> {
        let mut drawn = Instant::now() - Duration::from_secs(1);
        let mut dirty = true;
        loop {
            while let Ok(msg) = rx.try_recv() {
                take(board, msg);
                dirty = true;
            }
            if dirty || drawn.elapsed() >= Duration::from_secs(1) {
                terminal.draw(|frame| draw(frame, board))?;
                drawn = Instant::now();
                dirty = false;
            }
            if event::poll(Duration::from_millis(100))?
                && let event::Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    result
}

fn draw(frame: &mut ratatui::Frame, board: &Board) {
    use ratatui::layout::{Alignment, Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::text::Text;
    use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

    let sections = board.sections();
    // The title line, then per agent: a blank line, its line, the header, its rows.
    let mut heights = vec![Constraint::Length(1)];
    heights.extend(sections.iter().map(|s| {
        let rows = s.rows.len() as u16;
        Constraint::Length(2 + if rows > 0 { rows + 1 } else { 0 })
    }));
    heights.push(Constraint::Min(0));
    let areas = Layout::vertical(heights).split(frame.area());
    let head = match &board.broker_problem {
        Some(p) => format!("edge-agent top   {p}; retrying"),
        None if sections.is_empty() => {
            "edge-agent top   waiting for an agent's report   q quits".into()
        }
        None if board.fleet => format!("edge-agent top   {}   q quits", board.summary()),
        None => "edge-agent top   q quits".into(),
    };
    // The columns that fit, from the left; the rest are left out whole rather than cut
    // (ratatui cuts right-aligned figures from the left, so that a narrow terminal showed
    // 150 events/s as `50` and 104 µs as `04µs` until 2026-12-08).
    let all = widths(board.columns(), &sections);
    let fit = columns_that_fit(&all, usize::from(frame.area().width), 2);
    let head = if fit < all.len() {
        format!(
            "{head}   {} column(s) hidden: widen the terminal",
            all.len() - fit
        )
    } else {
        head
    };
    let reversed = Style::new().add_modifier(Modifier::REVERSED);
    frame.render_widget(Paragraph::new(head).style(reversed), areas[0]);
    let columns = &board.columns()[..fit];
    let widths: Vec<Constraint> = all[..fit]
        .iter()
        .map(|&w| Constraint::Length(w as u16))
        .collect();
    let cell = |i: usize, c: &str| {
        let text = Text::from(c.to_string());
        Cell::new(if i < 2 {
            text
        } else {
            text.alignment(Alignment::Right)
        })
    };
    let header = Row::new(columns.iter().enumerate().map(|(i, c)| cell(i, c)))
        .style(Style::new().add_modifier(Modifier::UNDERLINED));
    for (s, area) in sections.iter().zip(&areas[1..]) {
        let [_, area] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(*area);
        let title = Block::new()
            .title(s.title.as_str())
            .title_style(Style::new().add_modifier(Modifier::BOLD));
        if s.rows.is_empty() {
            frame.render_widget(title, area);
            continue;
        }
        let rows = s
            .rows
            .iter()
            .map(|r| Row::new(r.iter().take(fit).enumerate().map(|(i, c)| cell(i, c))));
        let table = Table::new(rows, widths.clone())
            .header(header.clone())
            .column_spacing(2)
            .block(title);
        frame.render_widget(table, area);
    }
}

#[cfg(test)]
mod tests {
    use edge_agent::messages::{FunctionReport, Percentiles, ProcessFigures, Rates, Snapshot};

    use super::*;

    fn function(name: &str, mode: &str) -> FunctionReport {
        let none = Percentiles::default();
        FunctionReport {
            totals: Snapshot {
                function: name.into(),
                mode: mode.into(),
                received: 0,
                module_sha256: None,
                queue_depth: 0,
                state_keys: 0,
                succeeded: 0,
                restarts: 0,
                replayed: 0,
                stopped_instances: 0,
                failed: Vec::new(),
                end_to_end_us: none.clone(),
                instantiate_us: none.clone(),
                load_us: none.clone(),
                execute_us: none.clone(),
                queue_us: none.clone(),
                commit_us: none.clone(),
                cpu_us: none,
                cpu_total_us: 0,
                peak_memory_bytes: 0,
                auto: None,
                shadow: None,
            },
            rates: Rates::default(),
        }
    }

    /// An auto function, persistent since a burst.
    fn auto() -> FunctionReport {
        let mut f = function("alert", "auto");
        f.totals.auto = Some(edge_agent::messages::stats::AutoReport {
            model: "persistent".into(),
            last_switch: Some(edge_agent::messages::stats::AutoLastSwitch {
                from: "on-demand".into(),
                to: "persistent".into(),
                reason: "panic".into(),
                ts_ms: 1,
            }),
            ..Default::default()
        });
        f
    }

    /// `echo` with a shadow that differs on a tenth of the events.
    fn shadowed() -> FunctionReport {
        let mut f = function("echo", "on-demand");
        f.totals.shadow = Some(edge_agent::messages::ShadowReport {
            model: "persistent".into(),
            matches: 90,
            mismatches: 10,
            mismatch_ratio: Some(0.1),
            skipped: 4,
            shadow_failed: 1,
            shadow: edge_agent::messages::shadow::ShadowSide {
                latency_p50_us: 40,
                latency_p99_us: 900,
                ..Default::default()
            },
            ..Default::default()
        });
        f
    }

    fn report() -> Vec<u8> {
        let mut counter = function("counter", "persistent");
        let t = &mut counter.totals;
        (t.received, t.succeeded, t.restarts, t.queue_depth) = (10, 9, 1, 3);
        t.stopped_instances = 1;
        t.failed = vec![("timeout".into(), 1)];
        t.peak_memory_bytes = 1_179_648;
        counter.rates = Rates {
            events_per_sec: 2.0,
            errors_per_sec: 0.2,
            cold_starts_per_sec: 0.0,
            cpu_percent: 0.5,
            end_to_end_us: Percentiles {
                count: 9,
                p50: 850,
                p99: 1_250_000,
                ..Percentiles::default()
            },
        };
        Report {
            schema_version: Report::SCHEMA_VERSION,
            agent: "demo".into(),
            ts_ms: 0,
            interval_secs: 5.0,
            process: ProcessFigures {
                rss_bytes: 24_117_248,
                cpu_seconds: 1.0,
                cpu_percent: 3.25,
            },
            state_disk_bytes: 1_048_576,
            state_flushes: 0,
            outputs_dropped: 0,
            broker_round_trip_ms: Some(0.4),
            functions: vec![counter, shadowed(), auto()],
        }
        .to_bytes()
    }

    #[test]
    fn a_retained_report_is_as_old_as_it_says() {
        let mut b = Board::default();
        let mut old: serde_json::Value = serde_json::from_slice(&report()).expect("json");
        old["ts_ms"] = (edge_agent::clock::now_ms() - 1_459_000).into();
        b.apply_retained(
            "edge-agent/gone/stats",
            &serde_json::to_vec(&old).expect("json"),
        );
        let text = b.text();
        assert!(text.contains("report 1459s ago (STALE)"), "{text}");
        // The same heard live is as old as the time since.
        b.apply("edge-agent/gone/stats", &report());
        let text = b.text();
        assert!(text.contains("report 0s ago, covers"), "{text}");
    }

    #[test]
    fn an_agent_that_never_reported_does_not_hide_one_that_did() {
        let mut b = Board::default();
        b.apply("edge-agent/demo/stats", &report());
        let birth = br#"{"schema_version":1,"status":"offline","pid":7,"version":"0.1.0"}"#;
        b.apply("edge-agent/old/status", birth);
        assert!(b.has_reports());
        let text = b.text();
        assert!(
            text.contains("old  offline  v0.1.0  (no stats report yet)"),
            "{text}"
        );
        assert!(text.contains("counter"), "{text}");
    }

    #[test]
    fn a_report_becomes_one_row_per_function_under_its_agent() {
        let mut b = Board::default();
        let birth = br#"{"schema_version":1,"status":"online","pid":7,"version":"0.1.0"}"#;
        b.apply("edge-agent/demo/status", birth);
        assert!(!b.has_reports());
        b.apply("edge-agent/demo/stats", &report());
        assert!(b.has_reports());
        let sections = b.sections();
        assert_eq!(sections.len(), 1);
        let (title, rows) = (&sections[0].title, &sections[0].rows);
        let start = "demo  online  v0.1.0  report 0s ago, covers 5s  rss 23.0MiB  cpu 3.2%  broker rtt 400µs";
        assert!(title.starts_with(start), "{title}");
        let counter = [
            "counter",
            "persistent",
            "2.0",
            "850µs",
            "1.25s",
            "0.0",
            "0.5",
            "1.1MiB",
            "3",
            "1",
            "1 STOPPED",
        ];
        assert_eq!(rows[0], counter);
        assert_eq!(rows[1][..5], ["echo", "on-demand", "0.0", "-", "-"]);
        // Its shadow, under it: model, mismatch ratio, call times, skipped, failed.
        let shadow = &rows[2];
        assert_eq!(
            shadow[..5],
            ["└ shadow", "persistent 10.0% differ", "-", "40µs", "900µs"]
        );
        assert_eq!(shadow[8..10], ["4 skip", "1"]);
        // An auto function: the model in force and why it switched last.
        assert_eq!(rows[3][..2], ["alert", "auto:persistent (panic)"]);
        let text = b.text();
        assert!(text.starts_with("demo  online"), "{text}");
        assert!(text.contains("\nFUNCTION"), "{text}");
        assert!(text.contains("\ncounter   persistent"), "{text}");
    }

    #[test]
    fn the_fleet_view_is_one_line_per_agent_with_a_summary_on_top() {
        let mut b = Board {
            fleet: true,
            ..Board::default()
        };
        let birth = br#"{"schema_version":1,"status":"online","pid":7,"version":"0.1.0"}"#;
        b.apply("edge-agent/a1/status", birth);
        b.apply("edge-agent/a1/stats", &report());
        let deployed = edge_agent::messages::DeploymentReport {
            schema_version: 1,
            agent: "a1".into(),
            group: "site".into(),
            version: Some(8),
            state: edge_agent::messages::DeploymentState::Refused,
            reason: Some("unsigned: ...".into()),
            in_force: Some(7),
            probation: false,
            chunks: None,
            ts_ms: 1,
        };
        b.apply("edge-agent/a1/deployment", &deployed.to_bytes());
        let gone = br#"{"status":"offline","pid":8,"version":"0.1.0"}"#;
        b.apply("edge-agent/a2/status", gone);
        let text = b.text();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("2 agents, 1 online; in force: site/7 on 1; 2.0 events/s, 0.2 errors/s"),
            "{text}"
        );
        let a1 = lines.next().unwrap_or_default();
        assert!(
            a1.starts_with("a1  online  2.0 ev/s  0.2 err/s  rss 23.0MiB"),
            "{a1}"
        );
        assert!(
            a1.ends_with("deploy site/8 refused, in force: 7 (unsigned: ...)"),
            "{a1}"
        );
        assert!(
            lines
                .next()
                .unwrap_or_default()
                .starts_with("FUNCTION  MODEL")
        );
        assert!(text.contains("a2  offline  no stats yet"), "{text}");
        // An agent gone with its last report still there counts for nothing now (its
        // figures stayed in the sum until 2026-12-08).
        b.apply("edge-agent/a2/stats", &report());
        let text = b.text();
        assert!(
            text.starts_with("2 agents, 1 online; in force: site/7 on 1; 2.0 events/s"),
            "{text}"
        );
        assert!(
            text.contains("a2  offline  last report 0s ago (STALE)"),
            "{text}"
        );
    }

    #[test]
    fn columns_that_do_not_fit_are_left_out_whole() {
        let widths = [8, 5, 6, 4];
        assert_eq!(columns_that_fit(&widths, 100, 2), 4);
        assert_eq!(columns_that_fit(&widths, 8 + 2 + 5 + 2 + 6, 2), 3);
        assert_eq!(columns_that_fit(&widths, 8 + 2 + 5 + 2 + 5, 2), 2);
        assert_eq!(columns_that_fit(&widths, 3, 2), 1);
    }

    #[test]
    fn an_old_offline_or_misshapen_agent_says_so() {
        let mut b = Board::default();
        b.apply("edge-agent/old/stats", b"[]");
        b.apply("edge-agent/next/stats", br#"{"schema_version":3}"#);
        // A status from before schema_version was written reads as version 1.
        let gone = br#"{"status":"offline","pid":7,"version":"0.1.0"}"#;
        b.apply("edge-agent/gone/status", gone);
        // A field renamed without a new schema_version: said, not shown as zeros.
        let renamed = String::from_utf8(report())
            .unwrap_or_default()
            .replace("\"rss_bytes\"", "\"rss\"");
        b.apply("edge-agent/odd/stats", renamed.as_bytes());
        let s = b.sections();
        let titles: Vec<&str> = s.iter().map(|s| s.title.as_str()).collect();
        let gone = "gone  offline  v0.1.0  (no stats report yet)";
        assert!(titles[0].starts_with(gone), "{titles:?}");
        assert!(
            titles[1].contains("(schema_version 3; it reads 2)"),
            "{titles:?}"
        );
        assert!(
            titles[2].contains("missing field `rss_bytes`"),
            "{titles:?}"
        );
        assert!(
            titles[3].contains("(schema_version 1; it reads 2)"),
            "{titles:?}"
        );
        assert!(s.iter().all(|s| s.rows.is_empty()), "{s:?}");
    }
}

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
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;

use edge_agent_publish::BrokerArgs;

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
    /// The terminal could not be used.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

impl TopError {
    /// How the command ends: bad arguments, or no agent and terminal to watch with.
    pub fn exit(&self) -> edge_agent::failure::Exit {
        match self {
            Self::Args(_) => edge_agent::failure::Exit::Usage,
            Self::NoReport(..) | Self::Terminal(_) => edge_agent::failure::Exit::Unavailable,
        }
    }
}

/// What is known of one agent.
#[derive(Debug, Default)]
struct AgentView {
    /// The last status message (birth or will).
    status: Option<Value>,
    /// The last stats report.
    report: Option<Value>,
    /// When the report arrived here.
    heard: Option<Instant>,
}

/// Every agent heard from, by id.
#[derive(Debug, Default)]
pub struct Board {
    agents: BTreeMap<String, AgentView>,
    /// The connection's state, when it is not simply up.
    pub broker_problem: Option<String>,
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

fn us(v: &Value) -> String {
    match v.as_u64() {
        None | Some(0) => "-".into(),
        Some(n) if n < 1_000 => format!("{n}µs"),
        Some(n) if n < 1_000_000 => format!("{:.1}ms", n as f64 / 1e3),
        Some(n) => format!("{:.2}s", n as f64 / 1e6),
    }
}

fn bytes(v: &Value) -> String {
    let n = v.as_f64().unwrap_or(0.0);
    if n >= 1024.0 * 1024.0 {
        format!("{:.1}MiB", n / (1024.0 * 1024.0))
    } else if n > 0.0 {
        format!("{:.0}KiB", n / 1024.0)
    } else {
        "-".into()
    }
}

fn rate(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

impl Board {
    /// Takes in a message from `<prefix>/<id>/stats` or `<prefix>/<id>/status`.
    pub fn apply(&mut self, topic: &str, payload: &[u8]) {
        let mut parts = topic.rsplitn(3, '/');
        let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
            return;
        };
        let value = serde_json::from_slice::<Value>(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        let view = self.agents.entry(id.to_string()).or_default();
        match kind {
            "stats" => {
                view.report = Some(value);
                view.heard = Some(Instant::now());
            }
            "status" => view.status = Some(value),
            _ => {}
        }
    }

    /// Whether every agent heard from has sent a report.
    pub fn has_reports(&self) -> bool {
        !self.agents.is_empty() && self.agents.values().all(|a| a.report.is_some())
    }

    /// The table: per agent its line, then its functions.
    pub fn sections(&self) -> Vec<Section> {
        let mut sections = Vec::new();
        for (id, a) in &self.agents {
            let presence = a.status.as_ref().map_or("status unknown".to_string(), |s| {
                let state = s["status"].as_str().unwrap_or("?");
                match s["version"].as_str() {
                    Some(v) => format!("{state}  v{v}"),
                    None => state.to_string(),
                }
            });
            let title = match &a.report {
                None => format!("{id}  {presence}  (no stats report yet)"),
                Some(r) if r["schema_version"].as_u64() != Some(2) => format!(
                    "{id}  {presence}  stats in a format this top does not read \
                     (schema_version {}; it reads 2)",
                    r["schema_version"].as_u64().unwrap_or(1)
                ),
                Some(r) => format!(
                    "{id}  {presence}  rss {}  cpu {:.1}%  state {} on disk  \
                     report {}s ago, covers {:.0}s",
                    bytes(&r["process"]["rss_bytes"]),
                    r["process"]["cpu_percent"].as_f64().unwrap_or(0.0),
                    bytes(&r["state_disk_bytes"]),
                    a.heard.map_or(0, |t| t.elapsed().as_secs()),
                    r["interval_secs"].as_f64().unwrap_or(0.0),
                ),
            };
            let functions = a
                .report
                .as_ref()
                .filter(|r| r["schema_version"].as_u64() == Some(2))
                .and_then(|r| r["functions"].as_array());
            let rows = functions
                .into_iter()
                .flatten()
                .map(|f| {
                    let rates = &f["rates"];
                    let errors: u64 = f["failed"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k[1].as_u64())
                        .sum();
                    vec![
                        f["function"].as_str().unwrap_or("?").to_string(),
                        f["mode"].as_str().unwrap_or("?").to_string(),
                        rate(&rates["events_per_sec"]),
                        us(&rates["end_to_end_us"]["p50"]),
                        us(&rates["end_to_end_us"]["p99"]),
                        rate(&rates["cold_starts_per_sec"]),
                        rate(&rates["cpu_percent"]),
                        bytes(&f["peak_memory_bytes"]),
                        f["queue_depth"].as_u64().unwrap_or(0).to_string(),
                        errors.to_string(),
                        f["restarts"].as_u64().unwrap_or(0).to_string(),
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
        let widths = widths(&sections);
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
        for s in &sections {
            out += &format!("{}\n", s.title);
            if !s.rows.is_empty() {
                out += &line(&COLUMNS.map(String::from));
            }
            for r in &s.rows {
                out += &line(r);
            }
        }
        out
    }
}

/// Each column's width: its widest cell or title.
fn widths(sections: &[Section]) -> Vec<usize> {
    let mut widths: Vec<usize> = COLUMNS.iter().map(|c| c.chars().count()).collect();
    for r in sections.iter().flat_map(|s| &s.rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    widths
}

/// Connects, subscribes, and sends every message to `tx` (and the connection's troubles as
/// `Err`), reconnecting until `tx` is dropped.
async fn listen(
    args: TopArgs,
    tx: mpsc::Sender<Result<(String, Vec<u8>), String>>,
) -> Result<(), TopError> {
    let opts = args.broker.options("top")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let agent = args.agent.as_deref().unwrap_or("+");
    let filters = ["stats", "status"].map(|t| format!("{}/{agent}/{t}", args.prefix));
    tokio::spawn(async move {
        loop {
            let sent = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = client.subscribe(f.clone(), QoS::AtMostOnce).await;
                    }
                    Ok(())
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    tx.send(Ok((p.topic, p.payload.to_vec())))
                }
                Ok(_) => Ok(()),
                Err(e) => {
                    let sent =
                        tx.send(Err(format!("broker {}: {e}; retrying", args.broker.broker)));
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
    let mut board = Board::default();
    if args.once || !std::io::stdout().is_terminal() {
        return once(args, &mut board, &rx);
    }
    live(&mut board, &rx)
}

fn take(board: &mut Board, msg: Result<(String, Vec<u8>), String>) {
    match msg {
        Ok((topic, payload)) => {
            board.broker_problem = None;
            board.apply(&topic, &payload);
        }
        Err(problem) => board.broker_problem = Some(problem),
    }
}

type Inbox = mpsc::Receiver<Result<(String, Vec<u8>), String>>;

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
        if board.has_reports() && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    if !board.has_reports() {
        let who = args.agent.clone().unwrap_or_else(|| "any agent".into());
        let why = board.broker_problem.clone().unwrap_or_default();
        if !why.is_empty() {
            eprintln!("{why}");
        }
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
        Some(p) => format!("edge-agent top   {p}"),
        None if sections.is_empty() => {
            "edge-agent top   waiting for an agent's report   q quits".into()
        }
        None => "edge-agent top   q quits".into(),
    };
    let reversed = Style::new().add_modifier(Modifier::REVERSED);
    frame.render_widget(Paragraph::new(head).style(reversed), areas[0]);
    let widths: Vec<Constraint> = widths(&sections)
        .into_iter()
        .map(|w| Constraint::Length(w as u16))
        .collect();
    let cell = |i: usize, c: &str| {
        let text = Text::from(c.to_string());
        Cell::new(if i < 2 {
            text
        } else {
            text.alignment(Alignment::Right)
        })
    };
    let header = Row::new(COLUMNS.iter().enumerate().map(|(i, c)| cell(i, c)))
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
            .map(|r| Row::new(r.iter().enumerate().map(|(i, c)| cell(i, c))));
        let table = Table::new(rows, widths.clone())
            .header(header.clone())
            .column_spacing(2)
            .block(title);
        frame.render_widget(table, area);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"schema_version":2,"agent":"demo","interval_secs":5.0,
        "process":{"rss_bytes":24117248,"cpu_percent":3.25},"state_disk_bytes":1048576,
        "functions":[
          {"function":"counter","mode":"persistent","received":10,"succeeded":9,
           "failed":[["timeout",1]],"restarts":1,"queue_depth":3,"peak_memory_bytes":1179648,
           "rates":{"events_per_sec":2.0,"errors_per_sec":0.2,"cold_starts_per_sec":0.0,
                    "cpu_percent":0.5,"end_to_end_us":{"count":9,"p50":850,"p99":1250000}}},
          {"function":"echo","mode":"on-demand","received":0,"succeeded":0,"failed":[],
           "restarts":0,"queue_depth":0,"peak_memory_bytes":0,
           "rates":{"events_per_sec":0.0,"errors_per_sec":0.0,"cold_starts_per_sec":0.0,
                    "cpu_percent":0.0,"end_to_end_us":{"count":0,"p50":0,"p99":0}}}]}"#;

    #[test]
    fn a_report_becomes_one_row_per_function_under_its_agent() {
        let mut b = Board::default();
        let birth = br#"{"status":"online","version":"0.1.0"}"#;
        b.apply("edge-agent/demo/status", birth);
        assert!(!b.has_reports());
        b.apply("edge-agent/demo/stats", REPORT.as_bytes());
        assert!(b.has_reports());
        let sections = b.sections();
        assert_eq!(sections.len(), 1);
        let (title, rows) = (&sections[0].title, &sections[0].rows);
        let start = "demo  online  v0.1.0  rss 23.0MiB  cpu 3.2%";
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
            "1",
        ];
        assert_eq!(rows[0], counter);
        assert_eq!(rows[1][..5], ["echo", "on-demand", "0.0", "-", "-"]);
        let text = b.text();
        assert!(text.starts_with("demo  online"), "{text}");
        assert!(text.contains("\nFUNCTION"), "{text}");
        assert!(text.contains("\ncounter   persistent"), "{text}");
    }

    #[test]
    fn an_old_or_offline_agent_says_so() {
        let mut b = Board::default();
        b.apply("edge-agent/old/stats", b"[]");
        b.apply("edge-agent/gone/status", br#"{"status":"offline"}"#);
        let s = b.sections();
        let gone = "gone  offline  (no stats report yet)";
        assert!(s[0].title.starts_with(gone), "{s:?}");
        assert!(s[1].title.contains("schema_version 1; it reads 2"), "{s:?}");
    }
}

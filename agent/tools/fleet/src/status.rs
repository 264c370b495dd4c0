//! `edge-agent fleet status`: every agent on the broker, one line each, from what they
//! retain: presence (`status`), deployment (`deployment`) and health (`stats`: events and
//! errors per second, a degraded state store).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use edge_agent::messages::{DeploymentReport, Message as _, Presence, Report, Status};
use edge_agent_publish::BrokerArgs;
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::FleetError;

/// Arguments of `edge-agent fleet status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The broker the agents use.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The agents' `agent.topic_prefix`.
    #[arg(long, default_value = "edge-agent")]
    pub prefix: String,
    /// Only the agents of this deployment group.
    #[arg(short, long)]
    pub group: Option<String>,
    /// How long to collect the retained messages, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub wait_ms: u64,
    /// Print the agents as JSON, one object each.
    #[arg(long)]
    pub json: bool,
}

/// What the broker retains of one agent.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Its presence and birth.
    pub status: Option<Status>,
    /// Its last deployment report.
    pub deployment: Option<DeploymentReport>,
    /// Its last stats report.
    pub stats: Option<Report>,
}

/// `edge-agent fleet ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FleetCommand {
    /// Print each agent on the broker: presence, deployment version and health.
    Status(StatusArgs),
}

/// Runs `edge-agent fleet`.
///
/// # Errors
/// [`FleetError`]: bad arguments or an unreachable broker.
pub fn run(command: &FleetCommand) -> Result<(), FleetError> {
    let FleetCommand::Status(args) = command;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut agents = rt.block_on(collect(&args.broker, &args.prefix, args.wait_ms))?;
    let all = agents.len();
    if let Some(g) = &args.group {
        agents.retain(|_, s| s.deployment.as_ref().is_some_and(|d| d.group == *g));
    }
    let now_ms = edge_agent::clock::now_ms();
    if args.json {
        for (id, s) in &agents {
            println!("{}", json(id, s, now_ms));
        }
    } else {
        print!("{}", table(&agents, now_ms));
        match &args.group {
            _ if !agents.is_empty() => {}
            // Not "no agent" when there are others (a probe).
            Some(g) if all > 0 => println!(
                "({all} agent(s) under this prefix, none with a deployment of group `{g}`)"
            ),
            _ => println!("(no agent retains a status under this prefix)"),
        }
    }
    Ok(())
}

/// Reads the retained messages of every agent under `prefix` for `wait_ms`.
///
/// # Errors
/// [`FleetError`] if the broker cannot be reached.
pub async fn collect(
    broker: &BrokerArgs,
    prefix: &str,
    wait_ms: u64,
) -> Result<BTreeMap<String, Seen>, FleetError> {
    let opts = broker.options("fleet")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    for what in ["status", "stats", DeploymentReport::TOPIC] {
        let _ = client
            .subscribe(format!("{prefix}/+/{what}"), QoS::AtLeastOnce)
            .await;
    }
    let mut agents: BTreeMap<String, Seen> = BTreeMap::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    // Until the broker accepts the connection, an empty fleet is not an answer: a port
    // that takes the connection and never speaks MQTT printed "no agent retains a
    // status", exit 0, until 2026-12-08 (a probe).
    let mut accepted = false;
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(until), if accepted => break,
            () = tokio::time::sleep_until(until + Duration::from_secs(5)) => {
                return Err(FleetError::Broker(format!(
                    "{}: no MQTT answer (CONNACK) within {} s",
                    broker.broker,
                    wait_ms / 1000 + 5
                )));
            }
            ev = eventloop.poll() => ev,
        };
        let p = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                accepted = true;
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(e) => return Err(FleetError::Broker(format!("{}: {e}", broker.broker))),
        };
        let Some((id, what)) = p
            .topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix('/'))
            .and_then(|t| t.split_once('/'))
        else {
            continue;
        };
        // `<prefix>/fleet/<group>/deployment` is a document, not an agent.
        if id == "fleet" || p.payload.is_empty() {
            continue;
        }
        let seen = agents.entry(id.to_string()).or_default();
        match what {
            "status" => seen.status = Status::from_bytes(&p.payload).ok(),
            "stats" => seen.stats = Report::from_bytes(&p.payload).ok(),
            "deployment" => seen.deployment = DeploymentReport::from_bytes(&p.payload).ok(),
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(agents)
}

/// Its last stats report if that still tells of now: the agent is online and the report
/// is no more than three of its intervals old (as `top` marks a report STALE).
fn current(s: &Seen, now_ms: u64) -> Option<&Report> {
    let online = s
        .status
        .as_ref()
        .is_some_and(|st| st.status == Presence::Online);
    s.stats
        .as_ref()
        .filter(|r| online && now_ms.saturating_sub(r.ts_ms) as f64 <= 3000.0 * r.interval_secs)
}

/// One agent's health at `now_ms` in a word or two: `ok`, `degraded: <why>`,
/// `stopped: <functions>` (instances stopped by their restart policy), `errors`, `stale`
/// (online, but its last stats report is over three intervals old: hung, or cut off from
/// the broker on its side), or `-` (offline, or no stats yet).
pub fn health(s: &Seen, now_ms: u64) -> String {
    if s.status
        .as_ref()
        .is_some_and(|st| st.status == Presence::Offline)
    {
        return "-".into();
    }
    if s.stats.is_some() && current(s, now_ms).is_none() {
        return "stale".into();
    }
    if let Some(why) = s.status.as_ref().and_then(|st| st.degraded.clone()) {
        return format!("degraded: {why}");
    }
    let stopped: Vec<&str> = s
        .stats
        .iter()
        .flat_map(|r| &r.functions)
        .filter(|f| f.totals.stopped_instances > 0)
        .map(|f| f.totals.function.as_str())
        .collect();
    if !stopped.is_empty() {
        return format!("stopped: {}", stopped.join(", "));
    }
    match &s.stats {
        Some(r) if r.functions.iter().any(|f| f.rates.errors_per_sec > 0.0) => "errors".into(),
        Some(_) => "ok".into(),
        None => "-".into(),
    }
}

/// The deployment column at `now_ms` ([`DeploymentReport::summary_at`]), `-` without one.
pub fn deployment(d: Option<&DeploymentReport>, now_ms: u64) -> String {
    d.map_or_else(|| "-".into(), |d| d.summary_at(now_ms))
}

/// The table `fleet status` prints.
pub fn table(agents: &BTreeMap<String, Seen>, now_ms: u64) -> String {
    let mut out = String::new();
    // As wide as the longest id: a longer one shifted every column after it (a probe).
    let w = agents
        .keys()
        .map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .max(20);
    let _ = writeln!(
        out,
        "{:<w$} {:<8} {:>9} {:>6} {:>8} {:<12} DEPLOYMENT",
        "AGENT", "PRESENCE", "FUNCTIONS", "EV/S", "RSS MB", "HEALTH"
    );
    for (id, s) in agents {
        let presence = match s.status.as_ref().map(|st| st.status) {
            Some(Presence::Online) => "online",
            Some(Presence::Offline) => "offline",
            None => "?",
        };
        let functions = s
            .status
            .as_ref()
            .and_then(|st| st.functions.as_ref())
            .map(Vec::len)
            .or_else(|| s.stats.as_ref().map(|r| r.functions.len()));
        // Figures of now only: an agent offline, or three reports behind, shows none (its
        // last rate stayed on show until 2026-12-08, as in `top --fleet`).
        let (rate, rss) = current(s, now_ms).map_or((None, None), |r| {
            // From 0, not from the empty sum's -0.0 ("EV/S -0" for an agent with no functions).
            let rate = r
                .functions
                .iter()
                .map(|f| f.rates.events_per_sec)
                .fold(0.0, |a, b| a + b);
            (Some(rate), Some(r.process.rss_bytes as f64 / 1_048_576.0))
        });
        let _ = writeln!(
            out,
            "{:<w$} {:<8} {:>9} {:>6} {:>8} {:<12} {}",
            id,
            presence,
            functions.map_or_else(|| "-".into(), |n| n.to_string()),
            rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
            rss.map_or_else(|| "-".into(), |r| format!("{r:.1}")),
            health(s, now_ms),
            deployment(s.deployment.as_ref(), now_ms),
        );
    }
    out
}

fn json(id: &str, s: &Seen, now_ms: u64) -> String {
    serde_json::json!({
        "agent": id,
        "presence": s.status.as_ref().map(|st| st.status),
        "version": s.status.as_ref().map(|st| st.version.clone()),
        "functions": s.status.as_ref().and_then(|st| st.functions.as_ref()).map(|f| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>()),
        "health": health(s, now_ms),
        "deployment": s.deployment,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use edge_agent::messages::ProcessFigures;

    use super::*;

    fn seen(presence: Presence, report_ts_ms: u64) -> Seen {
        Seen {
            status: Some(Status {
                schema_version: Status::SCHEMA_VERSION,
                status: presence,
                pid: 7,
                version: "0.1.0".into(),
                functions: None,
                degraded: None,
            }),
            deployment: None,
            stats: Some(Report {
                schema_version: Report::SCHEMA_VERSION,
                agent: "a".into(),
                ts_ms: report_ts_ms,
                interval_secs: 5.0,
                process: ProcessFigures {
                    rss_bytes: 10 * 1_048_576,
                    ..ProcessFigures::default()
                },
                state_disk_bytes: 0,
                state_flushes: 0,
                outputs_dropped: 0,
                broker_round_trip_ms: None,
                functions: Vec::new(),
            }),
        }
    }

    #[test]
    fn only_an_online_agent_with_a_recent_report_shows_figures_and_health() {
        let now = 1_000_000;
        let agents = BTreeMap::from([
            ("fresh".to_string(), seen(Presence::Online, now - 14_000)),
            // Online by its retained presence, but three intervals without a report: a
            // hung agent, which showed "ok" until ten minutes had passed.
            ("hung".to_string(), seen(Presence::Online, now - 16_000)),
            ("gone".to_string(), seen(Presence::Offline, now - 1_000)),
        ]);
        let table = table(&agents, now);
        let row = |id: &str| {
            let line = table.lines().find(|l| l.starts_with(id)).unwrap_or("");
            line.split_whitespace().collect::<Vec<_>>()
        };
        assert_eq!(row("fresh")[3..6], ["0", "10.0", "ok"], "{table}");
        assert_eq!(row("hung")[3..6], ["-", "-", "stale"], "{table}");
        assert_eq!(row("gone")[3..6], ["-", "-", "-"], "{table}");
        assert_eq!(health(&agents["hung"], now), "stale");
        // An id longer than the column moves none of the columns after it.
        let long = "compare-counter-scale-to-zero-1".to_string();
        let agents = BTreeMap::from([
            ("a".to_string(), seen(Presence::Online, now - 1_000)),
            (long.clone(), seen(Presence::Online, now - 1_000)),
        ]);
        let wide = super::table(&agents, now);
        let columns: Vec<usize> = wide
            .lines()
            .skip(1)
            .map(|l| l.find("online").unwrap_or(0))
            .collect();
        assert_eq!(columns, [long.len() + 1; 2], "{wide}");
    }
}

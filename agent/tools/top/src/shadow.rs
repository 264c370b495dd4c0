//! `edge-agent shadow report FUNCTION`: a function's shadow as its agent last retained it
//! on `<prefix>/<id>/shadow/<function>`: the counts, the mismatch ratio with the noise
//! subtracted, each side's cost on the same events, and the mismatches kept in full.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use edge_agent::messages::Message as _;
use edge_agent::messages::shadow::{ShadowMessage, ShadowResult, ShadowSide};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use edge_agent_publish::BrokerArgs;

use crate::TopError;

/// `edge-agent shadow ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ShadowCommand {
    /// Print a function's shadow report and its last mismatches.
    Report(ShadowReportArgs),
}

/// Arguments of `edge-agent shadow report`.
#[derive(Debug, Clone, Args)]
pub struct ShadowReportArgs {
    /// The function (its `[function.shadow]` runs on the agent).
    pub function: String,
    /// The broker the agent uses.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The agent (`agent.id`); default: any agent that has a shadow of this function.
    #[arg(short, long)]
    pub agent: Option<String>,
    /// The agent's `agent.topic_prefix`.
    #[arg(long, default_value = "edge-agent")]
    pub prefix: String,
    /// Print the message as JSON, as retained.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the report, in seconds.
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
}

/// Runs `edge-agent shadow`.
///
/// # Errors
/// [`TopError`]: bad arguments, or no report in time.
pub fn run(command: &ShadowCommand) -> Result<(), TopError> {
    let ShadowCommand::Report(args) = command;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (payload, problem) = rt.block_on(fetch(args))?;
    let Some(payload) = payload else {
        return Err(match problem {
            Some(why) => TopError::Broker(why),
            None => TopError::NoShadow(args.function.clone(), args.wait_secs),
        });
    };
    if args.json {
        println!("{}", String::from_utf8_lossy(&payload));
        return Ok(());
    }
    match ShadowMessage::from_bytes(&payload) {
        Ok(msg) => print!("{}", text(&msg)),
        Err(e) => return Err(TopError::Unreadable(e.to_string())),
    }
    Ok(())
}

/// The retained report, or the broker's last problem if none came within the wait.
async fn fetch(args: &ShadowReportArgs) -> Result<(Option<Vec<u8>>, Option<String>), TopError> {
    let opts = args.broker.options("shadow")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let filter = format!(
        "{}/{}/shadow/{}",
        args.prefix,
        args.agent.as_deref().unwrap_or("+"),
        args.function
    );
    // A port that takes the connection and never answers is a broker problem too, not
    // "does it have a [function.shadow]?" (a probe, 2026-12-08).
    let mut problem = Some(format!(
        "broker {}: no MQTT answer (CONNACK) within {} s",
        args.broker.broker, args.wait_secs
    ));
    // A broker that refuses (no listener, bad credentials, a certificate) before any
    // connection was made is said at once, as by `publish` and `fleet status`: until
    // 2026-12-08 the whole wait went by first (a probe).
    let mut connected = false;
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    problem = None;
                    connected = true;
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => return Some(p.payload.to_vec()),
                Ok(_) => {}
                Err(e) => {
                    problem = Some(format!("broker {}: {e}", args.broker.broker));
                    if !connected {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    let first = tokio::time::timeout(Duration::from_secs(args.wait_secs), wait)
        .await
        .ok()
        .flatten();
    // Several agents may retain a report of the function (with no --agent): they come
    // together, so the others are read for a moment and the newest is shown, with a word
    // about the rest (until 2026-12-08 the first came, a stale one of an agent offline
    // for 13 minutes in a probe).
    let got = match first {
        Some(first) if args.agent.is_none() => {
            let mut all = vec![first];
            let others = async {
                while let Ok(ev) = eventloop.poll().await {
                    if let Event::Incoming(Packet::Publish(p)) = ev {
                        all.push(p.payload.to_vec());
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(300), others).await;
            Some(newest(all, &args.function))
        }
        other => other,
    };
    let _ = client.try_disconnect();
    Ok((got, problem))
}

/// The newest of the reports in `all` (by their time), saying on stderr which agents
/// had the others.
fn newest(all: Vec<Vec<u8>>, function: &str) -> Vec<u8> {
    let when = |p: &Vec<u8>| {
        ShadowMessage::from_bytes(p)
            .ok()
            .map(|m| (m.ts_ms, m.agent))
    };
    let mut all: Vec<_> = all.into_iter().map(|p| (when(&p), p)).collect();
    all.sort_by(|a, b| b.0.cmp(&a.0));
    if all.len() > 1 {
        let agents: Vec<String> = all
            .iter()
            .filter_map(|(w, _)| w.as_ref().map(|(_, a)| a.clone()))
            .collect();
        eprintln!(
            "{} agents report a shadow of `{function}` ({}): the newest report is shown, \
             --agent chooses",
            all.len(),
            agents.join(", ")
        );
    }
    all.swap_remove(0).1
}

/// The time of day of `ms` (since the Unix epoch), UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn side_rows(p: &ShadowSide, s: &ShadowSide) -> Vec<(&'static str, String, String)> {
    let cpu = |c: &ShadowSide| {
        c.cpu_us_per_event
            .map_or_else(|| "-".into(), |v| format!("{v:.0} µs"))
    };
    let cpu_p50 = |c: &ShadowSide| {
        c.cpu_us_p50
            .map_or_else(|| "-".into(), |v| format!("{v} µs"))
    };
    let failed = |c: &ShadowSide| {
        if c.failed.is_empty() {
            "0".to_string()
        } else {
            c.failed
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    vec![
        // The events mirrored to the shadow: the primary's here are those, not all it
        // handled ("events" read as all of them).
        ("mirrored", p.events.to_string(), s.events.to_string()),
        ("CPU per event", cpu(p), cpu(s)),
        ("CPU p50", cpu_p50(p), cpu_p50(s)),
        (
            "call p50",
            format!("{} µs", p.latency_p50_us),
            format!("{} µs", s.latency_p50_us),
        ),
        (
            "call p99",
            format!("{} µs", p.latency_p99_us),
            format!("{} µs", s.latency_p99_us),
        ),
        (
            "peak memory",
            mib(p.peak_memory_bytes),
            mib(s.peak_memory_bytes),
        ),
        ("failures", failed(p), failed(s)),
    ]
}

fn shown(r: &ShadowResult) -> String {
    match r {
        ShadowResult::Ok { outputs } if outputs.is_empty() => "no outputs".into(),
        ShadowResult::Ok { outputs } => outputs
            .iter()
            .map(|o| format!("{} {}", o.topic, o.payload))
            .collect::<Vec<_>>()
            .join("\n             "),
        ShadowResult::Failed { kind, message } => format!("failed ({kind}): {message}"),
    }
}

/// The report as a person reads it.
pub fn text(m: &ShadowMessage) -> String {
    let r = &m.report;
    let mut out = String::new();
    let short = r.module_sha256.get(..12).unwrap_or(&r.module_sha256);
    let _ = writeln!(
        out,
        "shadow of `{}` on agent `{}`: module {short}, {}, fraction {}",
        m.function, m.agent, r.model, r.fraction
    );
    let _ = writeln!(
        out,
        "  compared {}: {} match, {} mismatch: {} with the noise subtracted ({} counting it)",
        r.matches + r.mismatches,
        r.matches,
        r.mismatches,
        pct(r.mismatch_ratio),
        pct(r.raw_mismatch_ratio),
    );
    let _ = writeln!(
        out,
        "  shadow failed {}; skipped {} (not compared: its queue was full, or its state was being copied again); queued {}",
        r.shadow_failed, r.skipped, r.queued
    );
    if r.skipped > 0 {
        let _ = writeln!(
            out,
            "  (if the shadow writes state, it missed the writes of the events it skipped: \
             its later mismatches on their topics may be that drift; raise queue_capacity)"
        );
    }
    let n = &r.noise;
    let paths = if n.paths.is_empty() {
        "none".to_string()
    } else {
        n.paths.join(", ")
    };
    let _ = writeln!(
        out,
        "  noise: the primary against itself on {} of {} events: {} differed; noisy paths: {paths}",
        n.calibrated,
        n.of,
        pct(n.ratio)
    );
    if let Some(c) = &r.canary {
        let failed = c
            .failed
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>();
        let failed = if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join(", ")
        };
        let _ = writeln!(
            out,
            "  canary: {} at {:.0}% of the topics; {} events, failed: {failed}",
            c.status,
            c.weight * 100.0,
            c.events
        );
        for s in &c.steps {
            let mismatch = s
                .mismatch_ratio
                .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
            let _ = writeln!(
                out,
                "    {} {} to {:.0}%: {} events, {} failed, shadow mismatch {mismatch}",
                clock(s.ts_ms),
                s.action,
                s.weight * 100.0,
                s.events,
                s.failures
            );
        }
    }
    let _ = writeln!(out, "\n  {:<14} {:>14} {:>14}", "", "primary", "shadow");
    for (label, p, s) in side_rows(&r.primary, &r.shadow) {
        let _ = writeln!(out, "  {label:<14} {p:>14} {s:>14}");
    }
    if m.mismatches.is_empty() {
        let _ = writeln!(out, "\n  no mismatch kept");
    } else {
        let _ = writeln!(
            out,
            "\n  last {} mismatches, oldest first:",
            m.mismatches.len()
        );
    }
    for (i, x) in m.mismatches.iter().enumerate() {
        let _ = writeln!(out, "  [{}] {} {}", i + 1, x.topic, x.payload);
        let _ = writeln!(out, "      differ at: {}", x.paths.join(", "));
        let _ = writeln!(out, "      primary: {}", shown(&x.primary));
        let _ = writeln!(out, "      shadow:  {}", shown(&x.shadow));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_agent::messages::shadow::{ShadowMismatch, ShadowNoise, ShadowOutput, ShadowReport};

    /// Of several agents' retained reports, the newest is shown (a stale one of an agent
    /// offline for 13 minutes came first in a probe).
    #[test]
    fn of_several_agents_reports_the_newest_is_shown() {
        let of = |agent: &str, ts_ms| {
            ShadowMessage {
                schema_version: ShadowMessage::SCHEMA_VERSION,
                agent: agent.into(),
                function: "f".into(),
                ts_ms,
                report: ShadowReport::default(),
                mismatches: Vec::new(),
            }
            .to_bytes()
        };
        let shown = newest(vec![of("old", 1), of("new", 3), of("mid", 2)], "f");
        assert_eq!(ShadowMessage::from_bytes(&shown).unwrap().agent, "new");
    }

    #[test]
    fn the_report_leads_with_the_ratio_and_shows_each_mismatch() {
        let m = ShadowMessage {
            schema_version: ShadowMessage::SCHEMA_VERSION,
            agent: "pi".into(),
            function: "alert".into(),
            ts_ms: 0,
            report: ShadowReport {
                module_sha256: "0123456789abcdef".into(),
                model: "on-demand".into(),
                fraction: 1.0,
                matches: 9,
                mismatches: 1,
                mismatch_ratio: Some(0.1),
                raw_mismatch_ratio: Some(1.0),
                noise: ShadowNoise {
                    calibrated: 10,
                    of: 10,
                    ratio: Some(1.0),
                    paths: vec!["ts".into()],
                },
                ..Default::default()
            },
            mismatches: vec![ShadowMismatch {
                ts_ms: 0,
                topic: "s/k/t".into(),
                payload: r#"{"value":95}"#.into(),
                paths: vec!["$count".into()],
                primary: ShadowResult::Ok {
                    outputs: vec![ShadowOutput {
                        topic: "alerts/k".into(),
                        payload: "hot".into(),
                        qos: 1,
                        retain: false,
                    }],
                },
                shadow: ShadowResult::Ok { outputs: vec![] },
            }],
        };
        let t = text(&m);
        assert!(
            t.starts_with("shadow of `alert` on agent `pi`: module 0123456789ab, on-demand"),
            "{t}"
        );
        assert!(
            t.contains("1 mismatch: 10.0% with the noise subtracted (100.0% counting it)"),
            "{t}"
        );
        assert!(t.contains("noisy paths: ts"), "{t}");
        assert!(t.contains("[1] s/k/t {\"value\":95}\n      differ at: $count\n      primary: alerts/k hot\n      shadow:  no outputs"), "{t}");
    }
}

//! The agent's log: text for people (colours on a terminal) or JSON for machines
//! (`--log-format json`, one object per line, its fields such as `function` and `topic` at
//! the top level), on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with
//! its syslog priority, `<3>` error to `<7>` debug, which journald reads and strips, so
//! that `journalctl -u edge-agent -p warning` shows warnings and errors only.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The syslog priority of a level, as journald reads it from a `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An event format that puts the `<N>` priority before another format's line.
struct Prioritised<F> {
    inner: F,
    on: bool,
}

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.on {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// The filter: `RUST_LOG` if set (`level` and `target=level` directives, comma-separated:
/// `info,edge_agent::pipeline=debug`), else the level `verbose` asks for; with a
/// warning to log when `RUST_LOG` does not parse.
///
/// `Targets` rather than `EnvFilter`: the same directives without span and field
/// filters, and without the regular-expression engine those need (about 300 KiB of the
/// device build).
fn filter(verbose: u8, rust_log: Option<&str>) -> (Targets, Option<String>) {
    let default = match verbose {
        // rumqttd logs ordinary client disconnects as errors: silent unless asked for,
        // but for its warning that a subscriber fell behind its log and lost messages
        // (crate::mqtt::broker's SEGMENTS).
        0 => "info,rumqttd=off,rumqttd::segments=warn,rumqttc=warn",
        1 => {
            "debug,rumqttd=warn,rumqttc=info,cranelift_codegen=info,wasmtime=info,wasmtime_internal_cranelift=info,notify=info"
        }
        // Cranelift's and regalloc2's trace is a line per instruction compiled:
        // 190,000 lines for one small module (a probe). notify's is a line per file
        // event in the config's folder: a log written there made each of its lines an
        // event, 50 MB a second (a probe). RUST_LOG still asks for either.
        _ => {
            "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,wasmtime_internal_cranelift=info,notify=info"
        }
    };
    let fallback = || default.parse().expect("the default filters parse");
    match rust_log.map(parse) {
        None => (fallback(), None),
        Some(Ok(targets)) => (targets, None),
        Some(Err(e)) => (
            fallback(),
            Some(format!(
                "RUST_LOG={:?} is not a log filter ({e}): using {default:?}",
                rust_log.unwrap_or_default()
            )),
        ),
    }
}

/// `RUST_LOG`'s directives as [`Targets`]. `Targets` would take a span or field filter
/// (`edge_agent[span]=debug`) for a target of that name, which matches nothing: the log
/// was silent, warnings and errors included (a probe, 2026-12-08). And as with
/// `EnvFilter`, targets that no directive names log errors when no bare level is given
/// (`RUST_LOG=edge_agent=debug`), where `Targets` alone would drop them.
fn parse(rust_log: &str) -> Result<Targets, String> {
    if rust_log.contains(['[', ']', '{', '}']) {
        return Err("span and field filters ([...], {...}) are not supported".into());
    }
    let targets: Targets = rust_log.parse().map_err(|e| format!("{e}"))?;
    Ok(match targets.default_level() {
        Some(_) => targets,
        None => targets.with_default(tracing::level_filters::LevelFilter::ERROR),
    })
}

/// Whether stderr goes to journald (systemd sets `JOURNAL_STREAM`): then every line starts
/// with its syslog priority.
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Installs the log: `verbose` raises the default level (`RUST_LOG` overrides it),
/// `format` picks text or JSON.
pub fn init(verbose: u8, format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, warning) = filter(verbose, rust_log.as_deref());
    let journald = under_journald();
    use std::io::IsTerminal;
    let ansi = !journald && std::io::stderr().is_terminal();
    let log = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => log
            .with(layer.event_format(Prioritised {
                inner: tracing_subscriber::fmt::format().with_ansi(ansi),
                on: journald,
            }))
            .init(),
        LogFormat::Json => log
            .with(
                layer
                    .fmt_fields(JsonFields::new())
                    .event_format(Prioritised {
                        inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                        on: journald,
                    }),
            )
            .init(),
    }
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        let p: Vec<u8> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .into_iter()
        .map(priority)
        .collect();
        assert_eq!(p, [3, 4, 6, 7, 7]);
    }

    #[test]
    fn rust_log_overrides_the_level_and_a_bad_one_is_reported() {
        use tracing::level_filters::LevelFilter;
        let (t, w) = filter(0, None);
        assert!(w.is_none());
        assert!(t.would_enable("edge_agent::pipeline", &Level::INFO));
        assert!(!t.would_enable("edge_agent::pipeline", &Level::DEBUG));
        assert!(!t.would_enable("rumqttd::router", &Level::ERROR));
        assert!(t.would_enable("rumqttd::segments", &Level::WARN));
        let (t, w) = filter(0, Some("warn,edge_agent::state=trace"));
        assert!(w.is_none());
        assert!(t.would_enable("edge_agent::state::store", &Level::TRACE));
        assert!(!t.would_enable("edge_agent::pipeline", &Level::INFO));
        let (t, w) = filter(1, Some("info,[span]=x"));
        let w = w.expect("a warning");
        assert!(
            w.contains("RUST_LOG=\"info,[span]=x\" is not a log filter"),
            "{w}"
        );
        assert_eq!(t.default_level(), Some(LevelFilter::DEBUG));
        // A span filter is not taken for a target that silences everything else.
        let (t, w) = filter(0, Some("edge_agent[span]=debug"));
        assert!(w.expect("a warning").contains("not supported"));
        assert!(t.would_enable("edge_agent::pipeline", &Level::WARN));
        // Without a bare level, other targets still log their errors.
        let (t, w) = filter(0, Some("edge_agent=debug"));
        assert!(w.is_none());
        assert!(t.would_enable("edge_agent::state", &Level::DEBUG));
        assert!(t.would_enable("sled::pagecache", &Level::ERROR));
        assert!(!t.would_enable("sled::pagecache", &Level::WARN));
    }
}

//! The agent's log: text for people (colours on a terminal) or JSON for machines
//! (`--log-format json`, one object per line, its fields such as `function` and `topic` at
//! the top level), on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with
//! its syslog priority, `<3>` error to `<7>` debug, which journald reads and strips, so
//! that `journalctl -u edge-agent -p warning` shows warnings and errors only.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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

/// Installs the log: `verbose` raises the default level (`RUST_LOG` overrides it),
/// `format` picks text or JSON.
pub fn init(verbose: u8, format: LogFormat) {
    let default = match verbose {
        // rumqttd logs ordinary client disconnects as errors: silent unless asked for.
        0 => "info,rumqttd=off,rumqttc=warn",
        1 => "debug,rumqttd=warn,rumqttc=info,cranelift_codegen=info,wasmtime=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    use std::io::IsTerminal;
    let ansi = !journald && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder
            .event_format(Prioritised {
                inner: tracing_subscriber::fmt::format().with_ansi(ansi),
                on: journald,
            })
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(Prioritised {
                inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                on: journald,
            })
            .init(),
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
}

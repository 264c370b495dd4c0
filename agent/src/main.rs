//! The `edge-agent` binary: parse, run, exit. Everything else is in the library
//! (`edge_agent_cli`): the commands, their errors and their exit statuses.

use std::process::ExitCode;

use clap::Parser;
use edge_agent::failure::Exit;
use edge_agent_cli::cli::Cli;

/// With the `mimalloc` feature, mimalloc serves every allocation (see agent/Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE) with clap's message; --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let format = cli.log_format;
    edge_agent_cli::logs::init(cli.verbose, format);
    match edge_agent_cli::execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // With JSON logs, one JSON object like every other line (and its priority under
        // systemd, which the log layer adds): the fatal line was plain text until
        // 2026-12-08, which a log shipper reading JSON dropped. Plain text still where the
        // filter would drop an error (RUST_LOG=off): the reason is never lost.
        Err(e)
            if format == edge_agent_cli::logs::LogFormat::Json
                && tracing::enabled!(tracing::Level::ERROR) =>
        {
            for line in e.lines() {
                tracing::error!("{line}");
            }
            e.exit().into()
        }
        Err(e) => {
            // Under systemd with the syslog priority of an error, as the log lines carry
            // theirs: `journalctl -p warning` hid the one line that says why the agent
            // stopped until 2026-12-08.
            let priority = if edge_agent_cli::logs::under_journald() {
                "<3>"
            } else {
                ""
            };
            for line in e.lines() {
                eprintln!("{priority}error: {line}");
            }
            e.exit().into()
        }
    }
}

//! The `edge-agent` binary: parses the command line, loads and validates the config, sets
//! up logging and the tokio runtime, and hands over to the library.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use edge_agent::cli::publish::PublishError;
use edge_agent::cli::{Cli, Command, PublishArgs};
use edge_agent::config::Config;
use edge_agent::{AgentError, Prepared};

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
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    edge_agent::cli::logs::init(cli.verbose, cli.log_format);
    match cli.command {
        Command::Check { config } => match find_config(config.as_deref()) {
            Ok((path, from)) => {
                println!("reading {} (from {from})", path.display());
                check(&path)
            }
            Err(code) => code,
        },
        Command::Run { config } => match find_config(config.as_deref()) {
            Ok((path, _)) => run(&path),
            Err(code) => code,
        },
        #[cfg(feature = "compiler")]
        Command::Precompile {
            target,
            out,
            fuel,
            modules,
        } => match edge_agent::runtime::precompile::precompile(
            target.as_deref(),
            fuel,
            &out,
            &modules,
        ) {
            Ok(artifacts) => {
                for a in artifacts {
                    println!(
                        "{}  {} bytes  sha256 {}",
                        a.path.display(),
                        a.bytes,
                        a.sha256
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", edge_agent::failure::chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::New(args) => match edge_agent::cli::project::new(&args) {
            Ok(dir) => {
                println!("{}", dir.display());
                eprintln!(
                    "new: function `{}` written to {}; build it with `edge-agent build {}`, \
                     then paste function.toml into the agent's config",
                    args.name,
                    dir.display(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Build(args) => match edge_agent::cli::project::build(&args) {
            Ok(built) => {
                for b in built {
                    println!("{b}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Publish(args) => publish(&args),
        Command::Compare(args) => compare(&args),
        #[cfg(feature = "top")]
        Command::Top(args) => match edge_agent::cli::top::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ edge_agent::cli::top::TopError::Usage(_)) => {
                eprintln!("error: {e}");
                ExitCode::from(64)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(69)
            }
        },
    }
}

/// `edge-agent compare`: the table and verdicts on stdout, the JSON and HTML where asked;
/// exit 69 (`EX_UNAVAILABLE`) if it cannot run at all (no modules, no broker), 78
/// (`EX_CONFIG`) on a bad workload file, 66 (`EX_NOINPUT`) if a `--from` report cannot be
/// read.
fn compare(args: &edge_agent::cli::compare::CompareArgs) -> ExitCode {
    use edge_agent::cli::compare;
    let write = |path: &Path, what: &str, body: String| match std::fs::write(path, body) {
        Ok(()) => {
            eprintln!("compare: {what} written to {}", path.display());
            true
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            false
        }
    };
    let mut reports = Vec::new();
    for path in &args.from {
        match compare::load(path) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(66);
            }
        }
    }
    let mut runtime = None;
    if reports.is_empty() {
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match rt.block_on(compare::compare(args)) {
            Ok(r) => reports.push(r),
            Err(e @ compare::CompareError::Workload(_)) => {
                eprintln!("error: {e}");
                return ExitCode::from(78);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(69);
            }
        }
        runtime = Some(rt);
    }
    for r in &reports {
        print!("{}", compare::render(r));
    }
    let mut ok = true;
    if let Some(path) = &args.json {
        if let [report] = reports.as_slice() {
            let json = serde_json::to_string_pretty(report).unwrap_or_default();
            ok &= write(path, "report", json);
        } else {
            eprintln!(
                "error: --json writes one report; --from gave {}",
                reports.len()
            );
            ok = false;
        }
    }
    if let Some(path) = &args.html {
        ok &= write(path, "page", compare::html::render(&reports));
    }
    // The broker's threads cannot be stopped (rumqttd 0.20): leave without waiting.
    if let Some(rt) = runtime {
        rt.shutdown_background();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The config file to use (see `edge_agent::cli::config_path`); exit 78 if there is none.
fn find_config(flag: Option<&Path>) -> Result<(std::path::PathBuf, &'static str), ExitCode> {
    let env = std::env::var_os("EDGE_AGENT_CONFIG");
    edge_agent::cli::config_path(flag, env, &edge_agent::cli::DEFAULT_CONFIGS).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(78)
    })
}

fn prepare(path: &Path) -> Result<Prepared, AgentError> {
    let cfg = Config::load(path)?;
    Prepared::new(cfg)
}

/// `edge-agent check`: everything `run` checks before it opens a socket.
fn check(config: &Path) -> ExitCode {
    match prepare(config) {
        Ok(p) => {
            println!(
                "{}: ok ({} functions, {:?} allocator)",
                config.display(),
                p.config().functions.len(),
                p.runtime().allocator()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `edge-agent run`: until SIGINT or SIGTERM.
fn run(config: &Path) -> ExitCode {
    let prepared = match prepare(config) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(edge_agent::run(prepared, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `edge-agent publish`: exit 64 for bad arguments, 69 (`EX_UNAVAILABLE`) for a broker
/// that cannot be reached.
fn publish(args: &PublishArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(edge_agent::cli::publish::publish(args)) {
        Ok(n) => {
            eprintln!("published {n} message(s) to {}", args.topic);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match e {
                PublishError::Usage(_) => 64,
                _ => 69,
            };
            eprintln!("error: {}", edge_agent::failure::chain(&e));
            ExitCode::from(code)
        }
    }
}

/// Prints the error with its causes on one line, and picks the exit code.
fn fail(e: &AgentError) -> ExitCode {
    for line in e.lines() {
        eprintln!("error: {line}");
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! `edge-agent state`: a stopped agent's state, listed, read and trimmed
//! ([`edge_agent::state::inspect`]).

use std::io::Write;

use edge_agent::config::Config;
use edge_agent::failure::Exit;
use edge_agent::state::StateError;
use edge_agent::state::inspect::{InspectError, Inspector, shown};

use crate::cli::StateCommand;

/// Runs `command` on `config`'s state store.
pub(crate) fn run(config: &Config, command: StateCommand) -> Result<(), InspectError> {
    let state = Inspector::open(&config.agent.data_dir, &config.state)?;
    match command {
        StateCommand::List { function: None, .. } => {
            let all = state.functions()?;
            if all.is_empty() {
                println!("no function has state in this store");
            }
            let width = all.iter().map(|s| s.function.len()).max().unwrap_or(0);
            for s in all {
                // A shadow's namespace is `<function>~<side>`: a copy, made again at its start.
                let base = s.function.split('~').next().unwrap_or(&s.function);
                let note = if s.function.contains('~') {
                    "  (a shadow's copy)"
                } else if config.functions.iter().all(|f| f.name != base) {
                    "  (no such function in the config: renamed or removed? `state delete NAME --all` deletes its keys)"
                } else {
                    ""
                };
                let keys = if s.keys == 1 { "key" } else { "keys" };
                println!(
                    "{:width$}  {:>7} {keys:4}  {:>10} bytes{note}",
                    s.function, s.keys, s.bytes
                );
            }
        }
        StateCommand::List {
            function: Some(function),
            prefix,
        } => {
            let entries = state.entries(&function, prefix.as_deref().unwrap_or(""))?;
            for (key, value) in entries {
                println!("{}\t{}", key.escape_debug(), shown(&value));
            }
        }
        StateCommand::Get { function, key } => {
            let value = state.get(&function, &key)?;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not the store's failure.
            let _ = out.write_all(&value).and_then(|()| out.flush());
        }
        StateCommand::Delete {
            function,
            keys,
            all,
        } => {
            let asked = (!all).then_some(keys.as_slice());
            let deleted = state.delete(&function, asked)?;
            let noun = if deleted == 1 { "key" } else { "keys" };
            let absent = keys.len() as u64 - deleted.min(keys.len() as u64);
            let note = if asked.is_some() && absent > 0 {
                format!(" ({absent} of those named had none)")
            } else {
                String::new()
            };
            eprintln!("deleted {deleted} {noun} of `{function}`{note}");
        }
    }
    Ok(())
}

/// How a failed `state` command ends.
pub(crate) fn exit(e: &InspectError) -> Exit {
    match e {
        InspectError::NoStore(_) | InspectError::NoFunction { .. } => Exit::NoInput,
        InspectError::InUse(_) => Exit::Unavailable,
        InspectError::State(StateError::Damaged { .. }) => Exit::Config,
        InspectError::NoKey { .. } | InspectError::State(_) => Exit::Failure,
    }
}

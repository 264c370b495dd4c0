//! `misbehave`: does whatever the payload says, to test how the agent copes.
//!
//! Replies go to config `out_topic` (`{topic}` is replaced by the incoming topic) with the
//! event's QoS, not retained. Commands (the whole payload, as UTF-8):
//!
//! | payload            | behaviour                                                        |
//! |--------------------|------------------------------------------------------------------|
//! | `ok`               | publishes `ok`                                                   |
//! | `err:MSG`          | returns `Err(MSG)`                                               |
//! | `panic`            | panics (a trap)                                                  |
//! | `loop`             | loops forever, calling the clock                                 |
//! | `sleep:MS`         | busy-waits `MS` ms on the monotonic clock, publishes `slept MS`  |
//! | `alloc:MB`         | allocates and touches `MB` MiB, publishes `allocated MB`         |
//! | `stdout:TEXT`      | prints `TEXT` to stdout and `err TEXT` to stderr                 |
//! | `env`              | publishes `{"env_vars":N,"read_dir":"..."}`: what WASI exposes   |
//! | `publish-many:N`   | publishes `0`, `1`, ... `N-1`                                    |
//! | `publish-then-err` | publishes `should-not-arrive`, then returns `Err`                |
//! | `slow-echo:MS:TEXT` | busy-waits `MS` ms, then publishes `TEXT`                       |
//! | `recurse`          | recurses without end (stack overflow)                            |
//! | `state-incr:KEY`   | increments state `KEY`, publishes the new value                  |
//! | `state-incr-then-err:KEY` | increments state `KEY`, then returns `Err`                |
//! | `state-incr-then-panic:KEY` | increments state `KEY`, then panics                     |
//! | `state-set:BYTES`  | stores `BYTES` bytes under `big`, publishes `stored BYTES`       |
//! | `state-pad:BYTES`  | increments state `n`, publishes the count and `BYTES` bytes more |
//! | `err-big:BYTES`    | returns an `Err` message of `BYTES` bytes                        |
//! | `state-fill:N:BYTES` | sets keys `fill/0` .. `fill/N-1` to `BYTES` bytes each         |
//! | `log-many:N:BYTES` | logs `N` lines of `BYTES` bytes (log interface) and prints them   |
//! | `publish-to:TOPIC` | publishes `forged`, retained, to `TOPIC`                         |
//! | `stamp:TEXT`       | publishes `{"text":"TEXT","at_ns":N}`, N the monotonic clock now |
//!
//! Anything else returns `Err("unknown command: PAYLOAD")`.

use std::hint::black_box;

use edge_agent_sdk::{Event, Function, clock, config, fill_topic, publish, state};

/// The `misbehave` function.
struct Misbehave;

impl Function for Misbehave {
    fn handle(event: Event) -> Result<(), String> {
        let command = event.payload_str()?;
        let reply = |payload: &str| {
            let topic = fill_topic(&config::require("out_topic")?, &event.topic);
            publish(&topic, payload.as_bytes(), event.qos, false)
        };
        let (verb, arg) = command.split_once(':').unwrap_or((command, ""));
        match (verb, command.contains(':')) {
            ("ok", false) => reply("ok"),
            ("stamp", true) => {
                let stamped = serde_json::json!({ "text": arg, "at_ns": clock::monotonic_ns() });
                reply(&stamped.to_string())
            }
            ("err", true) => Err(arg.to_string()),
            ("panic", false) => panic!("misbehave: panicking as asked"),
            ("loop", false) => loop {
                black_box(clock::monotonic_ns());
            },
            ("sleep", true) => {
                let ms: u64 = number(arg)?;
                busy_wait(ms);
                reply(&format!("slept {ms}"))
            }
            ("alloc", true) => {
                let mb: usize = number(arg)?;
                let len = mb
                    .checked_mul(1 << 20)
                    .ok_or_else(|| format!("cannot allocate {mb} MiB"))?;
                let mut memory = vec![0u8; len];
                for i in (0..len).step_by(4096) {
                    memory[i] = 1;
                }
                black_box(&memory);
                reply(&format!("allocated {mb}"))
            }
            ("stdout", true) => {
                println!("{arg}");
                eprintln!("err {arg}");
                Ok(())
            }
            ("env", false) => {
                let env_vars = std::env::vars().count();
                let read_dir = match std::fs::read_dir("/") {
                    Ok(entries) => format!("ok: {} entries", entries.count()),
                    Err(e) => format!("error: {e}"),
                };
                let report = serde_json::json!({ "env_vars": env_vars, "read_dir": read_dir });
                reply(&report.to_string())
            }
            ("publish-many", true) => {
                let n: u32 = number(arg)?;
                let topic = fill_topic(&config::require("out_topic")?, &event.topic);
                for i in 0..n {
                    publish(&topic, i.to_string().as_bytes(), event.qos, false)?;
                }
                Ok(())
            }
            ("publish-then-err", false) => {
                reply("should-not-arrive")?;
                Err("failed after publish".into())
            }
            ("slow-echo", true) => {
                let (ms, text) = arg.split_once(':').unwrap_or((arg, ""));
                busy_wait(number(ms)?);
                reply(text)
            }
            ("recurse", false) => {
                let depth = recurse(black_box(1));
                reply(&format!("recursed {depth}"))
            }
            ("state-incr", true) => reply(&state::increment(arg, 1)?.to_string()),
            ("state-incr-hold", true) => {
                // Holds the state (the namespace's gate) for MS after the increment.
                let (key, ms) = arg.split_once(':').unwrap_or((arg, "0"));
                let n = state::increment(key, 1)?;
                busy_wait(number(ms)?);
                reply(&n.to_string())
            }
            ("state-incr-then-err", true) => {
                state::increment(arg, 1)?;
                Err("failed after a state write".into())
            }
            ("state-incr-then-panic", true) => {
                state::increment(arg, 1)?;
                panic!("misbehave: panicking after a state write")
            }
            ("state-set", true) => {
                let n: usize = number(arg)?;
                state::set("big", &vec![b'x'; n])?;
                reply(&format!("stored {n}"))
            }
            ("state-pad", true) => {
                let n = state::increment("n", 1)?;
                reply(&format!("{n} {}", "x".repeat(number(arg)?)))
            }
            ("err-big", true) => Err("e".repeat(number(arg)?)),
            ("log-many", true) => {
                let (n, bytes) = arg.split_once(':').ok_or("log-many:N:BYTES")?;
                let line = "l".repeat(number(bytes)?);
                for _ in 0..number::<u32>(n)? {
                    edge_agent_sdk::log::info(&line);
                    println!("{line}");
                }
                reply(&format!("logged {n}"))
            }
            ("state-fill", true) => {
                let (n, bytes) = arg.split_once(':').ok_or("state-fill:N:BYTES")?;
                let value = vec![b'v'; number(bytes)?];
                for i in 0..number::<u32>(n)? {
                    state::set(&format!("fill/{i}"), &value)?;
                }
                reply(&format!("filled {n}"))
            }
            ("publish-to", true) => publish(arg, b"forged", 1, true),
            _ => Err(format!("unknown command: {command}")),
        }
    }
}

edge_agent_sdk::export_function!(Misbehave);

/// Spins for `ms` milliseconds on the monotonic clock (WASI has no capabilities to sleep
/// with here, and spinning is what a CPU-bound function looks like anyway).
fn busy_wait(ms: u64) {
    let start = clock::monotonic_ns();
    while clock::monotonic_ns().saturating_sub(start) < ms.saturating_mul(1_000_000) {
        std::hint::spin_loop();
    }
}

/// Recurses until the WebAssembly call stack runs out. Frames stay small (no arrays on
/// the shadow stack in linear memory), so it is the engine's stack limit that is hit;
/// `black_box` keeps the optimiser from turning the recursion into a loop.
fn recurse(n: u64) -> u64 {
    if black_box(n == u64::MAX) {
        return n;
    }
    black_box(recurse(black_box(n + 1))) + 1
}

/// Parses a command's numeric argument.
fn number<T: std::str::FromStr>(arg: &str) -> Result<T, String> {
    arg.parse().map_err(|_| format!("not a number: {arg:?}"))
}

//! edge-agent: MQTT events in, WebAssembly functions run, results out.
//!
//! The modules form layers; each imports only from the layers below it (a test,
//! `tests/integration/architecture.rs`, keeps it so; `docs/architecture.md` has the table):
//!
//! 1. plain data and pure logic: [`config`], [`topic`] (the MQTT topic grammar),
//!    [`event`] (an event on its way in, a message on its way out), [`ack`] (the
//!    acknowledgement order), [`failure`] (the failure kinds), [`clock`], [`rate`] (a
//!    token bucket), [`publisher`] (what the agent publishes, and when the broker has it);
//! 2. [`state`] (sled-backed key-value state) and [`metrics`] (costs, reports);
//! 3. [`runtime`]: everything that touches wasmtime;
//! 4. [`pipeline`]: routing, inboxes, on-demand dispatch, persistent supervision, output;
//! 5. [`mqtt`]: the connection task, client options and the embedded broker;
//! 6. [`daemon`]: the agent assembled ([`Startup`]), run, and stopped in order;
//! 7. [`cli`]: the command line, including the test publisher.
//!
//! Where an event goes, in order: the [`mqtt::connection`] task polls the broker and hands
//! each message to the [`pipeline::router`], which puts an [`event::Inbound`] into the
//! [`pipeline::inbox`] of every function whose filters match; the function's
//! [`pipeline::dispatch`] (on-demand) or [`pipeline::supervisor`] (persistent) calls it in
//! the [`runtime`]; [`pipeline::output`] publishes what the call published (or a dead
//! letter), waits for its state writes to be durable, and completes the delivery, which
//! releases the acknowledgement in arrival order ([`ack`]) back through the connection.

pub mod ack;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod event;
pub mod failure;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod publisher;
pub mod rate;
pub mod runtime;
pub mod state;
pub mod topic;

pub use daemon::{AgentError, Prepared, Ready, Running, Startup, run};

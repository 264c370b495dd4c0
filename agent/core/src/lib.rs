//! edge-agent: MQTT events in, WebAssembly functions run, results out.
//!
//! The modules form layers; each imports only from the layers below it (a test,
//! `tests/integration/architecture.rs`, keeps it so; `docs/architecture.md` has the table):
//!
//! 1. plain data and pure logic: [`config`], [`topic`] (the MQTT topic grammar),
//!    [`event`] (an event on its way in, a message on its way out, and the narrow
//!    [`event::Release`] through which a finished event is acknowledged), [`failure`] (the
//!    failure kinds and exit statuses), [`clock`], [`files`] (files replaced whole), [`rate`] (a token bucket), [`tasks`]
//!    (the background tasks that the stop sequence owns), [`messages`] (what the agent
//!    publishes about itself, typed once for the agent and its clients), [`deployment`]
//!    (signed deployment documents and their chunked modules);
//! 2. [`mqtt`]: the connections, the acknowledgement order, the publisher, client options
//!    and the embedded broker; it hands messages to a [`mqtt::connection::Intake`], which
//!    the pipeline implements, so it never names the pipeline. [`state`] (sled-backed
//!    key-value state);
//! 3. [`metrics`] (costs, reports);
//! 4. [`runtime`]: everything that touches wasmtime;
//! 5. [`pipeline`]: routing, inboxes, the [`pipeline::on_demand`] and
//!    [`pipeline::persistent`] models, output;
//! 6. [`daemon`]: the agent assembled ([`Startup`]), run, and stopped in order.
//!
//! This crate is what a device runs. The command line (`agent/src`) and the tools that
//! drive the agent from outside (`agent/tools/`: `compare`, `top`, `publish`, `new`/`build`)
//! are its clients, in crates of their own.
//!
//! Where an event goes, in order: the [`mqtt::connection`] task polls the broker and hands
//! each message to the [`pipeline::router`], which puts an [`event::Inbound`] into the
//! [`pipeline::inbox`] of every function whose filters match; the function's
//! [`pipeline::on_demand`] or [`pipeline::persistent`] model calls it in the [`runtime`];
//! [`pipeline::output`] publishes what the call published (or a dead letter), waits for
//! its state writes to be durable, and completes the delivery, which releases the
//! acknowledgement in arrival order ([`mqtt::ack`]) back through the connection.

pub mod clock;
pub mod config;
pub mod daemon;
pub mod deployment;
pub mod event;
pub mod failure;
pub mod files;
pub mod messages;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod rate;
pub mod runtime;
pub mod state;
pub mod tasks;
pub mod topic;

pub use daemon::{AgentError, Prepared, Ready, Running, Startup, run};

//! Integration tests: the real agent binary against real brokers (embedded rumqttd and a
//! Mosquitto started per test), real guest components built from `modules/`.

#![allow(clippy::unwrap_used)] // a failed lock in a test is a test failure

mod cli;
mod events;
mod harness;
mod hostile;
mod state;
mod tls;

//! Integration tests: the agent against real brokers (embedded rumqttd on port 0 and a
//! Mosquitto started per test), with real guest components built from `modules/`. Most
//! start the agent inside this process through the library; the binary runs where the
//! process itself is the point (exit codes, signals, `kill -9`). `architecture` checks the
//! house rules on the source and the docs.

mod architecture;
mod auto;
mod cli;
mod deploy;
mod events;
mod faults;
mod fleet;
mod harness;
mod hostile;
mod languages;
mod messages;
mod observability;
mod reload;
mod shadow;
mod state;
mod tls;

//! `big-memory`: echoes `ok`. What matters is its initial memory (see `build.rs`).

use edge_agent_sdk::{Event, Function, publish};

/// The `big-memory` function.
struct BigMemory;

impl Function for BigMemory {
    fn handle(event: Event) -> Result<(), String> {
        publish("out/big-memory", b"ok", event.qos, false)
    }
}

edge_agent_sdk::export_function!(BigMemory);

//! `echo`: republishes every event's payload unchanged.
//!
//! Config: `out_topic`, the topic to publish to; `{topic}` in it is replaced by the
//! incoming topic. The copy keeps the event's QoS and is never retained.

use edge_agent_sdk::{Event, Function, config, fill_topic, publish};

/// The `echo` function.
struct Echo;

impl Function for Echo {
    fn handle(event: Event) -> Result<(), String> {
        let topic = fill_topic(&config::require("out_topic")?, &event.topic);
        publish(&topic, &event.payload, event.qos, false)
    }
}

edge_agent_sdk::export_function!(Echo);

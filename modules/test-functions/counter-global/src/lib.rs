//! `counter-global`: publishes how many events this instance has handled.
//!
//! A `static` counter is incremented for every event and the new count is published as
//! decimal text to config `out_topic` (`{topic}` is replaced by the incoming topic), with
//! the event's QoS, not retained. In on-demand mode every event gets a fresh instance and
//! sees `1`; a persistent instance counts `1`, `2`, `3`, ... This shows which model ran.
//! The payload `panic` makes it panic instead (a trap), which loses the instance.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_agent_sdk::{Event, Function, config, fill_topic, publish};

/// Events handled by this instance so far.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// The `counter-global` function.
struct CounterGlobal;

impl Function for CounterGlobal {
    fn handle(event: Event) -> Result<(), String> {
        if event.payload == b"panic" {
            panic!("counter-global: panicking as asked");
        }
        let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        let topic = fill_topic(&config::require("out_topic")?, &event.topic);
        publish(&topic, count.to_string().as_bytes(), event.qos, false)
    }
}

edge_agent_sdk::export_function!(CounterGlobal);

//! `counter`: counts the events of each topic in the state store and publishes
//! `{"topic": <topic>, "count": <n>}` to config `out_topic` (topic placeholders allowed).
//!
//! The count lives in the agent's state store (key `count/<topic>`), so it is the same in
//! both execution models and survives restarts. When the instance is persistent it also
//! keeps the counts it has seen in memory and skips the read: a cache that is only
//! updated after everything else in the call succeeded, so it never runs ahead of the
//! store (a call that fails, or a commit that fails, drops the instance and its cache).

use std::cell::RefCell;
use std::collections::HashMap;

use edge_agent_sdk::{Event, Function, config, fill_topic, publish, state};

thread_local! {
    /// Counts this instance has already read or written. Empty in every on-demand call.
    static CACHE: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// The `counter` function.
struct Counter;

impl Function for Counter {
    fn handle(event: Event) -> Result<(), String> {
        let out = fill_topic(&config::require("out_topic")?, &event.topic);
        let key = format!("count/{}", event.topic);
        let cached = CACHE.with(|c| c.borrow().get(&key).copied());
        let count = match cached {
            Some(n) => {
                let n = n + 1;
                state::set(&key, n.to_string().as_bytes())?;
                n
            }
            None => state::increment(&key, 1)?,
        };
        let body = serde_json::json!({ "topic": event.topic, "count": count });
        publish(&out, body.to_string().as_bytes(), 1, false)?;
        CACHE.with(|c| c.borrow_mut().insert(key, count));
        Ok(())
    }
}

edge_agent_sdk::export_function!(Counter);

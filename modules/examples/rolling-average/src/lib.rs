//! `rolling-average`: for payloads `{"value": <number>}`, publishes the average of the last
//! `window` values of each topic as `{"topic": t, "average": a, "samples": n}` to config
//! `out_topic` (topic placeholders allowed).
//!
//! Config: `window` (default 5), `checkpoint_every` (default 10), `out_topic`.
//!
//! This function shows the trade-off between the two execution models:
//! - **on-demand** (stateless instances): every call starts cold, reads the window from
//!   the state store and writes it back: one read and one write per event;
//! - **persistent** (a long-lived instance): the window stays in memory, and is written
//!   to the store only every `checkpoint_every` events. Far fewer writes, but after a
//!   crash or restart the instance resumes from the last checkpoint, so up to
//!   `checkpoint_every - 1` recent values are missing from the window until they age out.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use edge_agent_sdk::{Event, Function, config, fill_topic, publish, state};

/// One topic's window and how many events it has taken since its last checkpoint.
struct Window {
    values: VecDeque<f64>,
    since_checkpoint: u32,
}

thread_local! {
    static WINDOWS: RefCell<HashMap<String, Window>> = RefCell::new(HashMap::new());
}

fn load(key: &str) -> Result<VecDeque<f64>, String> {
    match state::get(key) {
        None => Ok(VecDeque::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("stored window `{key}` is corrupt: {e}")),
    }
}

/// The `rolling-average` function.
struct RollingAverage;

impl Function for RollingAverage {
    fn handle(event: Event) -> Result<(), String> {
        let out = fill_topic(&config::require("out_topic")?, &event.topic);
        let size: usize = config::get("window").map_or(Ok(5), |_| config::parse("window"))?;
        let every: u32 = config::get("checkpoint_every")
            .map_or(Ok(10), |_| config::parse("checkpoint_every"))?;
        if size == 0 || every == 0 {
            return Err("window and checkpoint_every must be at least 1".into());
        }
        let json: serde_json::Value = serde_json::from_slice(&event.payload)
            .map_err(|e| format!("payload is not JSON: {e}"))?;
        let value = json
            .get("value")
            .and_then(serde_json::Value::as_f64)
            .ok_or("payload has no numeric \"value\" field")?;

        let key = format!("window/{}", event.topic);
        let cached = WINDOWS.with(|w| w.borrow_mut().remove(&key));
        // Cold (always, on demand): from the store, and write back every event.
        let (mut window, cold) = match cached {
            Some(w) => (w, false),
            None => (
                Window {
                    values: load(&key)?,
                    since_checkpoint: 0,
                },
                true,
            ),
        };
        window.values.push_back(value);
        while window.values.len() > size {
            window.values.pop_front();
        }
        window.since_checkpoint += 1;
        if cold || window.since_checkpoint >= every {
            let bytes = serde_json::to_vec(&window.values).map_err(|e| e.to_string())?;
            state::set(&key, &bytes)?;
            window.since_checkpoint = 0;
        }
        let n = window.values.len();
        let average = window.values.iter().sum::<f64>() / n as f64;
        let body = serde_json::json!({ "topic": event.topic, "average": average, "samples": n });
        publish(&out, body.to_string().as_bytes(), 1, false)?;
        WINDOWS.with(|w| w.borrow_mut().insert(key, window));
        Ok(())
    }
}

edge_agent_sdk::export_function!(RollingAverage);

//! Write edge-agent functions in plain Rust.
//!
//! A function is a WebAssembly component that the agent calls once per MQTT message. This
//! crate hides the component-model bindings of the `edge:agent` world: implement
//! [`Function`] for a type, export it with [`export_function!`], and use [`publish`],
//! [`config`], [`log`] and [`clock`] to talk to the agent. Build the crate as a `cdylib`
//! for `wasm32-wasip2` and the result is a component the agent can load.
//!
//! ```no_run
//! use edge_agent_sdk::{Event, Function, config, fill_topic, publish};
//!
//! /// Republishes every message under `out_topic`.
//! struct Echo;
//!
//! impl Function for Echo {
//!     fn handle(event: Event) -> Result<(), String> {
//!         let topic = fill_topic(&config::require("out_topic")?, &event.topic);
//!         publish(&topic, &event.payload, event.qos, false)
//!     }
//! }
//!
//! edge_agent_sdk::export_function!(Echo);
//! ```
//!
//! Returning `Err(message)` rejects the event: the agent logs the message and sends the
//! event to its dead-letter topic, and anything published during that call is discarded.
//! A panic traps the instance and is treated the same way.
//!
//! The bindings only work inside the agent. On other targets the pure helpers
//! ([`fill_topic`], [`Event::topic_level`], ...) work normally, but calling anything that
//! reaches the agent (publishing, configuration, logging, clocks) panics.

use std::fmt::Display;
use std::str::FromStr;

/// The bindings generated from `wit/agent.wit` (shipped inside this crate). Not part of the API: use the
/// wrappers in this crate instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "function",
        // `export_function!` expands in the function's crate and refers back to here.
        pub_export_macro: true,
        default_bindings_module: "$crate::bindings",
    });
}

use bindings::edge::agent as wit;

/// One MQTT message delivered to a function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The topic the message was published on (never a filter: no `+` or `#`).
    pub topic: String,
    /// The message body, unchanged. It may be empty, binary or invalid UTF-8.
    pub payload: Vec<u8>,
    /// The QoS the message was delivered with (0, 1 or 2).
    pub qos: u8,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
    /// When the agent received the message: milliseconds since the Unix epoch (UTC).
    pub received_at_ms: u64,
    /// MQTT 5 user properties, in order. Empty for MQTT 3.1.1 connections.
    pub user_properties: Vec<(String, String)>,
}

impl Event {
    /// The payload as UTF-8 text, or an error message saying why it is not.
    pub fn payload_str(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.payload).map_err(|e| format!("payload is not valid UTF-8: {e}"))
    }

    /// Level `n` (0-based) of the topic split on `/`: for `sensors/kitchen/temperature`,
    /// level 1 is `kitchen`. `None` if the topic has fewer levels.
    pub fn topic_level(&self, n: usize) -> Option<&str> {
        self.topic.split('/').nth(n)
    }
}

impl From<wit::types::Event> for Event {
    fn from(e: wit::types::Event) -> Self {
        Event {
            topic: e.topic,
            payload: e.payload,
            qos: e.qos,
            retain: e.retain,
            received_at_ms: e.received_at_ms,
            user_properties: e.user_properties,
        }
    }
}

/// A function: the code the agent runs for each event.
///
/// Export the implementing type with [`export_function!`]. Depending on the agent's config
/// the component is instantiated afresh for every event (on-demand) or once and reused
/// (persistent), so do not rely on global state surviving between events.
pub trait Function {
    /// Handles one event. `Err(message)` rejects it (the agent logs the message and
    /// dead-letters the event) and discards whatever was published during the call.
    fn handle(event: Event) -> Result<(), String>;
}

/// Exports a type implementing [`Function`] as the component's `handler`.
///
/// Use it exactly once per function crate, at item level:
///
/// ```ignore
/// edge_agent_sdk::export_function!(MyFunction);
/// ```
#[macro_export]
macro_rules! export_function {
    ($ty:ty) => {
        const _: () = {
            struct EdgeAgentExport;

            impl $crate::__private::Guest for EdgeAgentExport {
                fn handle(
                    event: $crate::__private::WitEvent,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    <$ty as $crate::Function>::handle(::core::convert::From::from(event))
                }
            }

            $crate::bindings::export! { EdgeAgentExport with_types_in $crate::bindings }
        };
    };
}

/// Implementation details of [`export_function!`].
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::edge::agent::types::Event as WitEvent;
    pub use crate::bindings::exports::edge::agent::handler::Guest;
}

/// Queues an MQTT message for publishing.
///
/// Messages are sent in the order queued once [`Function::handle`] returns `Ok`; if it
/// fails they are discarded. `qos` must be 0, 1 or 2. Returns an error (and queues
/// nothing) for an invalid topic (empty, or containing `+`, `#` or NUL) or QoS.
pub fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<(), String> {
    wit::mqtt::publish(topic, payload, qos, retain)
}

/// Fills the placeholders of a topic template from `topic`, the incoming event's topic:
///
/// - `{topic}`: the whole topic;
/// - `{N}`: level N, counted from 0 (`{1}` of `sensors/kitchen/temperature` is `kitchen`);
/// - `{N..}`: levels N to the end, joined by `/` (`{1..}` is `kitchen/temperature`).
///
/// A level that does not exist becomes the empty string; anything else in braces is
/// left as it is.
///
/// `fill_topic("alerts/{1..}", "sensors/kitchen/temperature")` is
/// `"alerts/kitchen/temperature"`.
pub fn fill_topic(template: &str, topic: &str) -> String {
    let levels: Vec<&str> = topic.split('/').collect();
    let mut out = String::with_capacity(template.len() + topic.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        let inner = &after[..close];
        let filled = if inner == "topic" {
            Some(topic.to_string())
        } else if let Some(from) = inner
            .strip_suffix("..")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(levels.get(from..).map(|l| l.join("/")).unwrap_or_default())
        } else {
            inner
                .parse::<usize>()
                .ok()
                .map(|n| levels.get(n).copied().unwrap_or_default().to_string())
        };
        match filled {
            Some(text) => {
                out.push_str(&text);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The function's static configuration: the `[function.config]` table of the agent's
/// config file.
pub mod config {
    use super::*;

    /// The value of `key`, if set.
    pub fn get(key: &str) -> Option<String> {
        wit::config::get(key)
    }

    /// Every key and value, sorted by key.
    pub fn get_all() -> Vec<(String, String)> {
        wit::config::get_all()
    }

    /// The value of `key`, or the error "missing config key `KEY`".
    pub fn require(key: &str) -> Result<String, String> {
        required(key, get(key))
    }

    /// The value of `key` parsed as a `T`, or an error naming the key (and the value, if
    /// it is set but does not parse).
    pub fn parse<T>(key: &str) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        parse_value(key, get(key))
    }

    pub(crate) fn required(key: &str, value: Option<String>) -> Result<String, String> {
        value.ok_or_else(|| format!("missing config key `{key}`"))
    }

    pub(crate) fn parse_value<T>(key: &str, value: Option<String>) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = required(key, value)?;
        value
            .parse()
            .map_err(|e| format!("config key `{key}` has an invalid value {value:?}: {e}"))
    }
}

/// Logging into the agent's log, tagged with the function's name.
///
/// Anything written to stdout or stderr also ends up there, but without a level.
pub mod log {
    use super::wit::log::{Level, log};

    /// Logs `msg` at trace level.
    pub fn trace(msg: &str) {
        log(Level::Trace, msg);
    }

    /// Logs `msg` at debug level.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg);
    }

    /// Logs `msg` at info level.
    pub fn info(msg: &str) {
        log(Level::Info, msg);
    }

    /// Logs `msg` at warn level.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg);
    }

    /// Logs `msg` at error level.
    pub fn error(msg: &str) {
        log(Level::Error, msg);
    }
}

/// The function's own key-value state, kept by the agent on local disk and shared by every
/// instance of the function, in both execution models.
///
/// Writes are applied atomically when [`Function::handle`] returns `Ok` and discarded if
/// it fails; reads see the call's own writes. Errors are limits being exceeded (key or
/// value size, number of keys) or a value that is not an integer for [`increment`].
pub mod state {
    /// The value stored under `key`, if any.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        super::wit::state::get(key)
    }

    /// The value under `key` as UTF-8 text, if any (invalid UTF-8 is replaced).
    pub fn get_string(key: &str) -> Option<String> {
        get(key).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Stores `value` under `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        super::wit::state::set(key, value)
    }

    /// Removes `key`.
    pub fn delete(key: &str) -> Result<(), String> {
        super::wit::state::delete(key)
    }

    /// Adds `delta` to the integer under `key` (stored as decimal text; absent is 0) and
    /// returns the new value.
    pub fn increment(key: &str, delta: i64) -> Result<i64, String> {
        super::wit::state::increment(key, delta)
    }

    /// Up to `limit` keys starting with `prefix`, in key order, with their values.
    pub fn list(prefix: &str, limit: u32) -> Vec<(String, Vec<u8>)> {
        super::wit::state::list(prefix, limit)
    }
}

/// Time, as the agent sees it.
pub mod clock {
    /// Wall-clock time: milliseconds since the Unix epoch (UTC).
    pub fn now_ms() -> u64 {
        super::wit::clock::now_ms()
    }

    /// A monotonic clock for measuring durations, in nanoseconds from an arbitrary start.
    pub fn monotonic_ns() -> u64 {
        super::wit::clock::monotonic_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, payload: &[u8]) -> Event {
        Event {
            topic: topic.into(),
            payload: payload.into(),
            ..Event::default()
        }
    }

    #[test]
    fn fill_topic_replaces_every_placeholder() {
        assert_eq!(fill_topic("out/{topic}", "a/b"), "out/a/b");
        assert_eq!(fill_topic("{topic}/{topic}", "x"), "x/x");
        assert_eq!(fill_topic("fixed/topic", "x"), "fixed/topic");
        assert_eq!(fill_topic("{topic", "x"), "{topic");
    }

    #[test]
    fn fill_topic_levels() {
        let t = "sensors/kitchen/temperature";
        assert_eq!(fill_topic("alerts/{1..}", t), "alerts/kitchen/temperature");
        assert_eq!(fill_topic("{1}/{0}", t), "kitchen/sensors");
        assert_eq!(fill_topic("x/{7}", t), "x/");
        assert_eq!(fill_topic("x/{9..}", t), "x/");
        assert_eq!(fill_topic("{a}/{1}", t), "{a}/kitchen");
        assert_eq!(fill_topic("{{1}}", t), "{kitchen}");
    }

    #[test]
    fn topic_level_is_zero_based() {
        let e = event("sensors/kitchen/temperature", b"");
        assert_eq!(e.topic_level(0), Some("sensors"));
        assert_eq!(e.topic_level(1), Some("kitchen"));
        assert_eq!(e.topic_level(2), Some("temperature"));
        assert_eq!(e.topic_level(3), None);
        assert_eq!(event("/a//b", b"").topic_level(2), Some(""));
    }

    #[test]
    fn payload_str_checks_utf8() {
        assert_eq!(event("t", b"hello").payload_str(), Ok("hello"));
        let err = event("t", b"\xff")
            .payload_str()
            .expect_err("invalid UTF-8");
        assert!(err.starts_with("payload is not valid UTF-8"), "{err}");
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(
            config::required("out_topic", None),
            Err("missing config key `out_topic`".to_string())
        );
        assert_eq!(config::parse_value::<u32>("n", Some("42".into())), Ok(42));
        assert_eq!(
            config::parse_value::<u32>("n", None),
            Err("missing config key `n`".to_string())
        );
        let err =
            config::parse_value::<f64>("threshold", Some("hot".into())).expect_err("not a number");
        assert_eq!(
            err,
            "config key `threshold` has an invalid value \"hot\": invalid float literal"
        );
    }
}

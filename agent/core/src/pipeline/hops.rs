//! Hop counts for chains of functions, kept by the agent itself.
//!
//! MQTT 3.1.1 cannot carry a hop count with a message (it has no user properties), so the
//! agent remembers what it published: each output's topic and a hash of its payload, with
//! the hop count of the event whose call published it, plus one. When a message comes back
//! in on the agent's subscriptions, the router looks it up and the event carries that count
//! on; past `agent.max_hops` it becomes a `hop-limit` dead letter instead of a call. So a
//! loop through this agent's functions (A feeds B feeds A) stops after `max_hops` rounds.
//! It does not see chains that leave the agent (another agent, a bridge).
//!
//! The ledger is bounded: at most [`CAPACITY`] outputs, each forgotten after [`TTL`] or
//! when it comes back.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most outputs remembered at once; the oldest go first.
pub const CAPACITY: usize = 4096;
/// How long an output is remembered.
pub const TTL: Duration = Duration::from_secs(30);

type Key = (u64, u64);

/// Outputs recently published, by topic and payload hash, with their hop counts.
#[derive(Default)]
pub struct HopLedger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    hops: HashMap<Key, (u8, Instant)>,
    order: VecDeque<(Key, Instant)>,
}

fn key(topic: &str, payload: &[u8]) -> Key {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    let t = h.finish();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    (t, h.finish())
}

impl HopLedger {
    /// Remembers that an output on `topic` with `payload` is `hop` hops from outside.
    pub fn published(&self, topic: &str, payload: &[u8], hop: u8) {
        let now = Instant::now();
        let k = key(topic, payload);
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.expire(now);
        while s.order.len() >= CAPACITY {
            if let Some((old, at)) = s.order.pop_front() {
                s.forget(old, at);
            }
        }
        s.hops.insert(k, (hop, now));
        s.order.push_back((k, now));
    }

    /// The hop count of an incoming message: that of the output it is, or 0 if the agent
    /// did not publish it (recently).
    pub fn received(&self, topic: &str, payload: &[u8]) -> u8 {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // The usual case, on the poll task: no output can come back, so hash nothing.
        if s.hops.is_empty() {
            return 0;
        }
        s.expire(Instant::now());
        s.hops
            .remove(&key(topic, payload))
            .map_or(0, |(hop, _)| hop)
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(&(k, at)) = self.order.front() {
            if now.duration_since(at) < TTL {
                break;
            }
            self.order.pop_front();
            self.forget(k, at);
        }
    }

    /// Removes `k` if it is still the entry recorded at `at` (not a later one).
    fn forget(&mut self, k: Key, at: Instant) {
        if self.hops.get(&k).is_some_and(|&(_, t)| t == at) {
            self.hops.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HopLedger;

    #[test]
    fn an_output_that_comes_back_carries_its_hop_count_once() {
        let l = HopLedger::default();
        assert_eq!(l.received("a/x", b"hi"), 0, "not published by the agent");
        l.published("a/x", b"hi", 3);
        assert_eq!(l.received("a/x", b"other"), 0);
        assert_eq!(l.received("b/x", b"hi"), 0);
        assert_eq!(l.received("a/x", b"hi"), 3);
        assert_eq!(l.received("a/x", b"hi"), 0, "used once");
    }

    #[test]
    fn the_ledger_is_bounded() {
        let l = HopLedger::default();
        for i in 0..(super::CAPACITY + 10) {
            l.published("t", &i.to_le_bytes(), 1);
        }
        assert_eq!(
            l.received("t", &0usize.to_le_bytes()),
            0,
            "oldest forgotten"
        );
        assert_eq!(l.received("t", &(super::CAPACITY + 9).to_le_bytes()), 1);
        let s = l.inner.lock().unwrap_or_else(|p| p.into_inner());
        assert!(s.order.len() <= super::CAPACITY && s.hops.len() <= super::CAPACITY);
    }
}

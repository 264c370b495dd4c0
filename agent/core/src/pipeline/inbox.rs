//! A function's inbox: the bounded queue of its waiting events, with the overflow policy
//! chosen in its config.
//!
//! The router pushes without ever waiting (it runs on the MQTT poll task); the function's
//! worker threads pop, blocking while it is empty.
//! When `queue_capacity` events wait:
//! - `backpressure` (default): the function's intake connection stops reading from the
//!   broker until there is room ([`Inbox::room`]), so TCP flow control makes the broker
//!   hold the rest of the stream, QoS 0 as well as QoS 1. It also stops while
//!   `queue_capacity` events are taken and not settled (running, or waiting for their
//!   outputs and their acknowledgement: [`Unsettled`]), so that a function never holds
//!   more than a queue of messages it has not acknowledged, and on a distant broker as
//!   many more as its output window grew ([`Inbox::beyond_capacity`]). Events of a state-writing
//!   function that wait only for the flush that makes their writes durable count apart,
//!   up to [`FLUSH_WAIT_FACTOR`] × capacity ([`Inbox::awaiting_flush`]): the store flushes
//!   a group at a time (at most `state.max_flushes_per_sec`), so a queue's worth per flush
//!   would cap such a function at one queue per flush interval. A broker restart cannot
//!   make them run twice: their receipts commit with their writes. What one read had
//!   already brought in is still taken; as a safety net, past [`BACKPRESSURE_FACTOR`] ×
//!   capacity new events are rejected;
//! - `drop-newest`: the new event is rejected;
//! - `drop-oldest`: the oldest waiting event is rejected to make room.
//!
//! A rejected event becomes a `queue-full` dead letter (counted and logged).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Notify;

use crate::config::Overflow;
use crate::event::{Inbound, Slot, Unsettled};

/// How far past its capacity an inbox under backpressure may grow before it rejects.
pub const BACKPRESSURE_FACTOR: usize = 16;

/// How many queues' worth of a state-writing function's events may wait for their flush
/// besides the queue ([`Inbox::awaiting_flush`]). Sixteen: at the default cap of 100
/// flushes a second and a queue of 64, a flush-bound ceiling of about 100,000 events a
/// second. Four (25,000 a second) held `counter` to 50-66% of `echo`'s rate on a machine
/// where `echo` ran at 42,000-57,000 (docs/benchmarks.md, "Waiting for the flush apart").
pub const FLUSH_WAIT_FACTOR: usize = 16;

/// Most bytes of payload a state-writing function's events waiting for their flush may
/// hold (each keeps its payload, to run again if the store loses its commit): with large
/// payloads this, not [`FLUSH_WAIT_FACTOR`], bounds the memory they take.
pub const FLUSH_WAIT_BYTES: usize = 16 * 1024 * 1024;

struct Inner {
    events: VecDeque<Inbound>,
    closed: bool,
    /// Worker threads blocked in [`Inbox::pop`]: a push wakes one only if there is one
    /// (std's `Condvar::notify_one` is a system call even when nobody waits, and under
    /// load the workers are mostly busy when an event arrives).
    waiting: usize,
}

/// No event came within the wait ([`Inbox::pop_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle;

/// A bounded queue of events: the router pushes, worker threads pop.
pub struct Inbox {
    inner: Mutex<Inner>,
    /// Signalled when an event arrives or the queue closes (for the worker threads).
    ready: Condvar,
    /// Signalled when an event leaves (for an intake waiting for room).
    space: Notify,
    /// Events taken in and not settled yet (see [`Unsettled`]): under backpressure, the
    /// room is what is left of the capacity after them.
    unsettled: Arc<Unsettled>,
    /// Of those, the ones only waiting for the store's flush (see [`Inbox::awaiting_flush`]).
    flushing: Arc<Unsettled>,
    /// Their payloads' bytes.
    flushing_bytes: Arc<Unsettled>,
    capacity: usize,
    overflow: Overflow,
    /// How many events may be unsettled beyond the capacity now ([`Inbox::beyond_capacity`]).
    beyond: Option<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl Inbox {
    /// An empty queue.
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        Self {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                closed: false,
                waiting: 0,
            }),
            ready: Condvar::new(),
            space: Notify::new(),
            unsettled: Arc::default(),
            flushing: Arc::default(),
            flushing_bytes: Arc::default(),
            capacity: capacity.max(1),
            overflow,
            beyond: None,
        }
    }

    /// Lets `more()` events more than the capacity be taken and not settled. An event
    /// settles a round trip to the broker after its outputs leave, so over a long one a
    /// queue's worth unsettled bounds the function's rate (64 over 200 ms: about 310
    /// events a second); the output connection lets each function hold more outputs on
    /// their way as the round trip grows ([`crate::mqtt::publisher::windows`]), and the
    /// events waiting for them may grow as much. Events queued stay within the capacity.
    #[must_use]
    pub fn beyond_capacity(mut self, more: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.beyond = Some(Box::new(more));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `event` without waiting. Returns the event that had to be rejected, if any
    /// (the new one, or the oldest with `drop-oldest`), or `Err(event)` if the queue is
    /// closed.
    ///
    /// # Errors
    /// The event back if the queue is closed (shutting down).
    pub fn push(&self, event: Inbound) -> Result<Option<Inbound>, Inbound> {
        let mut q = self.lock();
        if q.closed {
            return Err(event);
        }
        let len = q.events.len();
        let rejected = if len < self.capacity {
            q.events.push_back(event);
            None
        } else {
            match self.overflow {
                Overflow::Backpressure if len < self.capacity * BACKPRESSURE_FACTOR => {
                    q.events.push_back(event);
                    None
                }
                Overflow::Backpressure | Overflow::DropNewest => Some(event),
                Overflow::DropOldest => {
                    let oldest = q.events.pop_front();
                    q.events.push_back(event);
                    oldest
                }
            }
        };
        let wake = q.waiting > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
        Ok(rejected)
    }

    /// Puts `event` back at the head of the queue, whatever the capacity: an event that
    /// must run again (its commit was lost with a failed store).
    ///
    /// # Errors
    /// The event back if the queue is closed (shutting down).
    pub fn requeue(&self, event: Inbound) -> Result<(), Inbound> {
        let mut q = self.lock();
        if q.closed {
            return Err(event);
        }
        q.events.push_front(event);
        let wake = q.waiting > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next event, blocking the calling thread until there is one; `None` once the
    /// queue is closed and empty. For worker threads, never for async tasks.
    pub fn pop(&self) -> Option<Inbound> {
        self.pop_within(None).unwrap_or(None)
    }

    /// Like [`Inbox::pop`], but gives up after `wait` without an event: `Err(Idle)` then
    /// (the queue is still open). For a worker that has something to do when idle.
    ///
    /// # Errors
    /// [`Idle`]: no event came within `wait`.
    pub fn pop_timeout(&self, wait: std::time::Duration) -> Result<Option<Inbound>, Idle> {
        self.pop_within(Some(std::time::Instant::now() + wait))
    }

    fn pop_within(&self, until: Option<std::time::Instant>) -> Result<Option<Inbound>, Idle> {
        let mut q = self.lock();
        loop {
            if let Some(e) = q.events.pop_front() {
                let now_has_room = q.events.len() + 1 == self.capacity;
                drop(q);
                if now_has_room {
                    self.space.notify_one();
                }
                if !e.delivery.superseded() {
                    return Ok(Some(e));
                }
                // Its connection was lost and the session resumed: the broker redelivers
                // it, and that copy is handled (this one's acknowledgement is void).
                tracing::debug!(topic = %e.topic, pkid = e.pkid, "event left to its redelivery");
                drop(e);
                q = self.lock();
                continue;
            }
            if q.closed {
                return Ok(None);
            }
            q.waiting += 1;
            q = match until {
                None => self.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        q.waiting -= 1;
                        return Err(Idle);
                    }
                    self.ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            q.waiting -= 1;
        }
    }

    /// Whether [`Inbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// No more pushes; `pop` drains what is left, then returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.space.notify_one();
    }

    /// Whether a push now would be taken without going over capacity, or is not held
    /// back anyway (the drop policies, and a closed queue, never make intake wait).
    pub fn has_room(&self) -> bool {
        let q = self.lock();
        q.closed
            || self.overflow != Overflow::Backpressure
            || (q.events.len() < self.capacity
                && self.unsettled.count().saturating_sub(self.flushing.count())
                    < self.capacity + self.beyond.as_ref().map_or(0, |more| more())
                && self.flushing.count() < self.capacity * FLUSH_WAIT_FACTOR
                && self.flushing_bytes.count() < FLUSH_WAIT_BYTES)
    }

    /// Waits until [`Inbox::has_room`].
    pub async fn room(&self) {
        loop {
            let (left, settled, flushed, freed) = (
                self.space.notified(),
                self.unsettled.settled.notified(),
                self.flushing.settled.notified(),
                self.flushing_bytes.settled.notified(),
            );
            if self.has_room() {
                return;
            }
            tokio::select! {
                () = left => {}
                () = settled => {}
                () = flushed => {}
                () = freed => {}
            }
        }
    }

    /// A place for an event that is about to be pushed, held until its delivery settles.
    pub fn slot(&self) -> Slot {
        self.unsettled.take()
    }

    /// Moves an unsettled event with a payload of `bytes` that now waits only for the
    /// flush of its state writes to the flush budget, until the returned places are
    /// dropped (drop them once the event has settled or gone back to the queue: until then
    /// it counts in the flush budget, not the queue's).
    pub fn awaiting_flush(&self, bytes: usize) -> (Slot, Slot) {
        let places = (self.flushing.take(), self.flushing_bytes.take_n(bytes));
        // Its place in the queue's budget is free now: an intake may be waiting for it.
        self.unsettled.settled.notify_one();
        places
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether no events wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8, qos: u8) -> Inbound {
        crate::pipeline::test_event(format!("t/{n}"), vec![n], qos)
    }

    fn topics(q: &Inbox) -> Vec<String> {
        q.lock().events.iter().map(|e| e.topic.clone()).collect()
    }

    #[test]
    fn drop_newest_rejects_the_arrival() {
        let q = Inbox::new(2, Overflow::DropNewest);
        for n in 0..2 {
            assert!(matches!(q.push(event(n, 1)), Ok(None)));
        }
        let rejected = q.push(event(2, 1)).ok().flatten().map(|e| e.topic);
        assert_eq!(rejected.as_deref(), Some("t/2"));
        assert_eq!(topics(&q), ["t/0", "t/1"]);
    }

    #[test]
    fn drop_oldest_makes_room() {
        let q = Inbox::new(2, Overflow::DropOldest);
        for n in 0..3 {
            let rejected = q.push(event(n, 1)).ok().flatten().map(|e| e.topic);
            assert_eq!(rejected.as_deref(), (n == 2).then_some("t/0"));
        }
        assert_eq!(topics(&q), ["t/1", "t/2"]);
    }

    #[tokio::test]
    async fn backpressure_says_when_there_is_room_and_holds_any_qos() {
        let q = Inbox::new(2, Overflow::Backpressure);
        for n in 0..2 {
            assert!(matches!(q.push(event(n, 0)), Ok(None)));
        }
        assert!(!q.has_room());
        assert!(matches!(q.push(event(2, 0)), Ok(None)), "QoS 0 is held too");
        for n in 3..(2 * BACKPRESSURE_FACTOR) as u8 {
            assert!(matches!(q.push(event(n, 1)), Ok(None)), "held {n}");
        }
        assert!(matches!(q.push(event(200, 1)), Ok(Some(_))), "safety net");
        let waiter = async {
            q.room().await;
            q.len()
        };
        let drain = async {
            while q.len() >= 2 {
                assert!(q.pop().is_some());
                tokio::task::yield_now().await;
            }
        };
        let (len, ()) = tokio::join!(waiter, drain);
        assert!(len < 2, "room with {len} waiting");
        assert!(Inbox::new(1, Overflow::DropNewest).has_room());
    }

    #[tokio::test]
    async fn room_waits_for_events_to_settle_not_only_to_leave_the_queue() {
        let q = Inbox::new(2, Overflow::Backpressure);
        let mut taken: Vec<Slot> = (0..2).map(|_| q.slot()).collect();
        assert!(q.is_empty() && !q.has_room(), "two taken and not settled");
        let room = q.room();
        taken.pop();
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("room once one settles");
    }

    #[test]
    fn a_distant_broker_lets_more_events_be_unsettled_as_it_says() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let more = Arc::new(AtomicUsize::new(0));
        let m = more.clone();
        let q = Inbox::new(2, Overflow::Backpressure)
            .beyond_capacity(move || m.load(Ordering::Relaxed));
        let mut taken: Vec<Slot> = (0..2).map(|_| q.slot()).collect();
        assert!(!q.has_room(), "a queue's worth unsettled");
        more.store(3, Ordering::Relaxed);
        assert!(q.has_room(), "three more over a long round trip");
        taken.extend((0..3).map(|_| q.slot()));
        assert!(!q.has_room(), "and no more");
        more.store(0, Ordering::Relaxed);
        taken.truncate(2);
        assert!(!q.has_room(), "near again: the capacity alone");
    }

    #[tokio::test]
    async fn large_payloads_waiting_for_their_flush_are_bounded_by_their_bytes() {
        let q = Inbox::new(64, Overflow::Backpressure);
        let big = FLUSH_WAIT_BYTES / 4;
        let mut held = Vec::new();
        while q.has_room() {
            held.push((q.slot(), q.awaiting_flush(big)));
            assert!(held.len() <= 4, "{} events of {big} bytes", held.len());
        }
        assert_eq!(held.len(), 4, "the bytes, not the count, filled the budget");
        let room = q.room();
        held.pop();
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("room once one is flushed");
    }

    #[tokio::test]
    async fn events_waiting_for_their_flush_have_a_budget_of_their_own() {
        let q = Inbox::new(2, Overflow::Backpressure);
        let mut taken: Vec<Slot> = (0..2).map(|_| q.slot()).collect();
        assert!(!q.has_room(), "two taken and not settled");
        let room = q.room();
        let mut flushing = vec![q.awaiting_flush(10)];
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("room once one only waits for its flush");
        // Up to FLUSH_WAIT_FACTOR queues' worth wait for a flush; then the intake waits.
        while flushing.len() < 2 * FLUSH_WAIT_FACTOR {
            assert!(q.has_room(), "{} waiting for a flush", flushing.len());
            taken.push(q.slot());
            flushing.push(q.awaiting_flush(10));
        }
        assert!(!q.has_room(), "the flush budget is full");
        let room = q.room();
        flushing.pop();
        taken.pop();
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("room once one is flushed");
        // One whose flush is done but whose message waits for another holder counts in
        // the queue's budget again.
        flushing.clear();
        assert_eq!(taken.len(), 2 * FLUSH_WAIT_FACTOR);
        assert!(
            !q.has_room(),
            "unsettled again once out of the flush budget"
        );
    }

    #[test]
    fn close_drains_then_ends() {
        let q = Inbox::new(4, Overflow::Backpressure);
        assert!(q.push(event(1, 1)).is_ok());
        q.close();
        assert!(q.push(event(2, 1)).is_err(), "closed");
        assert_eq!(q.pop().map(|e| e.topic).as_deref(), Some("t/1"));
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_waiting_worker_wakes_for_an_event_and_for_close() {
        let q = Arc::new(Inbox::new(4, Overflow::Backpressure));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || {
                let first = q.pop().map(|e| e.topic);
                (first, q.pop().is_none())
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(q.push(event(1, 0)).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.close();
        let (first, ended) = worker.join().unwrap_or_else(|_| panic!("worker"));
        assert_eq!((first.as_deref(), ended), (Some("t/1"), true));
    }
}

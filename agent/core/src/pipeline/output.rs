//! The output path: everything the agent sends to the broker on behalf of functions, in
//! one place. A successful call's messages go out in order, and its delivery completes
//! once the broker has them (and its state writes are on disk, when it made any); a failed
//! event, whether the router refused it or its call failed, takes the one dead-letter path
//! in [`Output::fail`], and completes once the broker has its dead letter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use base64::Engine as _;
use tokio_util::task::TaskTracker;

use super::hops::HopLedger;
use super::inbox::Inbox;
use crate::event::{BrokerLimits, Inbound, Outbound};
use crate::failure::FailureKind;
use crate::messages::{DeadLetter, Message as _};
use crate::metrics::FunctionStats;
use crate::mqtt::publisher::{
    Place, Publisher, SLOWER, UNCONFIRMED_PER_FUNCTION, UNCONFIRMED_SHARE, WINDOW_GAIN,
    WINDOW_GAIN_HELD_BY_LINK, WINDOW_ROUND_TRIP, windows_at,
};
use crate::runtime::{CallError, CallOutcome};
use crate::state::StateStore;

/// A state store and the flush generation that makes a commit in it durable.
pub type Durable = (Arc<StateStore>, u64);

/// Longest error message a dead letter carries, in bytes; a longer one is cut (on a
/// character boundary) and `message_truncated` says so.
pub const DEAD_LETTER_MAX_MESSAGE: usize = 4096;
/// Most of the original payload a dead letter carries, in bytes before base64; a longer
/// one is cut and `payload_truncated` says so (`payload_bytes` keeps the full size). Less
/// when `broker.max_packet_bytes` leaves less room.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

/// Dead letters of QoS 0 events that may wait for their turn on the output connection at
/// once. Past it they are dropped (counted in the log): under a flood of failing QoS 0
/// events nothing would bound the tasks, and nothing acknowledges or redelivers them.
pub const QOS0_DEAD_LETTERS_WAITING: usize = 64;

// The type is one of the agent's messages (`crate::messages`); how a failed event becomes
// one is the output path's business, so its constructor is here.
impl DeadLetter {
    /// A dead letter for `event` in `function` that carries at most `max_payload` bytes of
    /// its payload.
    pub fn new(
        function: &str,
        event: &Inbound,
        kind: FailureKind,
        mut message: String,
        max_payload: usize,
    ) -> Self {
        let message_truncated = message.len() > DEAD_LETTER_MAX_MESSAGE;
        if message_truncated {
            message.truncate(message.floor_char_boundary(DEAD_LETTER_MAX_MESSAGE));
        }
        let kept = event.payload.len().min(max_payload);
        Self {
            schema_version: DeadLetter::SCHEMA_VERSION,
            function: function.to_string(),
            module_sha256: None,
            topic: event.topic.clone(),
            kind: kind.as_str().to_string(),
            message,
            timestamp_ms: crate::clock::now_ms(),
            received_at_ms: event.received_at_ms,
            qos: event.qos,
            payload_bytes: event.payload.len() + event.payload_skipped,
            payload_base64: base64::engine::general_purpose::STANDARD
                .encode(&event.payload[..kept]),
            payload_truncated: kept < event.payload.len() + event.payload_skipped,
            message_truncated,
            topic_truncated: false,
        }
    }
}

/// Sends functions' messages and dead letters through the agent's output connection.
#[derive(Clone)]
pub struct Output {
    publisher: Arc<Publisher>,
    dead_letter_topic: Arc<str>,
    tracker: TaskTracker,
    broker_limits: BrokerLimits,
    hops: Arc<HopLedger>,
    /// Every running function's topic filters: outputs that match one may come back in.
    /// Shared by the clones; a reload that adds or removes a function replaces it.
    filters: Arc<std::sync::RwLock<Vec<String>>>,
    /// Each function's places among the output connection's unconfirmed publishes.
    /// Shared by the clones.
    places: Arc<Places>,
    /// [`QOS0_DEAD_LETTERS_WAITING`], shared by the clones.
    qos0_letters: Arc<Semaphore>,
}

impl Output {
    /// An output through `publisher` that sends dead letters to `dead_letter_topic`. Work that
    /// outlives a call (waiting for a flush, a dead letter waiting for room) runs on
    /// `tracker`, so that shutdown can wait for it.
    /// Nothing it sends is over `broker_limits`. Outputs that match one of the
    /// agent's own subscriptions ([`Output::set_filters`]) are recorded in `hops`.
    pub fn new(
        publisher: Arc<Publisher>,
        dead_letter_topic: String,
        tracker: TaskTracker,
        broker_limits: BrokerLimits,
        hops: Arc<HopLedger>,
    ) -> Self {
        Self {
            publisher,
            dead_letter_topic: dead_letter_topic.into(),
            tracker,
            broker_limits,
            hops,
            filters: Arc::default(),
            places: Arc::default(),
            qos0_letters: Arc::new(Semaphore::new(QOS0_DEAD_LETTERS_WAITING)),
        }
    }

    /// The agent's subscriptions now: every running function's topic filters.
    pub fn set_filters(&self, filters: Vec<String>) {
        *self.filters.write().unwrap_or_else(|p| p.into_inner()) = filters;
    }

    fn comes_back(&self, topic: &str) -> bool {
        let filters = self.filters.read().unwrap_or_else(|p| p.into_inner());
        filters.iter().any(|f| crate::topic::matches(f, topic))
    }

    /// Publishes a call's outputs (or its dead letter), then completes the delivery so the
    /// message can be acknowledged once the broker has confirmed the outputs. If the call
    /// wrote state, completion waits for the flush that makes it durable, in a task of its
    /// own: the function goes on with its next event meanwhile (otherwise a persistent
    /// instance could handle one event per flush).
    pub async fn finish(
        &self,
        function: &str,
        stats: &Arc<FunctionStats>,
        event: Inbound,
        result: Result<CallOutcome, CallError>,
        inbox: &Arc<Inbox>,
    ) {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                if let Some(cost) = &err.cost {
                    stats.failed_call(cost);
                }
                return self.fail(function, stats, event, err.kind, err.message);
            }
        };
        let called = std::time::Instant::now();
        let mut cost = outcome.cost;
        if outcome.duplicate {
            // Another copy of the message committed first and published its outputs.
            stats.replayed();
            self.complete_when_durable(event, outcome.durable);
            return;
        }
        tracing::debug!(
            function,
            topic = %event.topic,
            instantiate_us = cost.instantiate.as_micros() as u64,
            execute_us = cost.execute.as_micros() as u64,
            end_to_end_us = event.received.elapsed().as_micros() as u64,
            outputs = outcome.outbox.len(),
            "event handled"
        );
        // Counted before its outputs leave, so that whoever receives one sees it counted
        // (a state-writing call is counted once its writes are durable, below).
        if outcome.durable.is_none() {
            stats.succeeded(event.received.elapsed(), cost);
        }
        // Acknowledged only once the broker has every output: they go out on another
        // connection than the acknowledgement, so nothing else orders the two.
        let waiter = event.delivery.needs_ack().then(|| event.delivery.clone());
        if waiter.is_some() {
            event.delivery.add_holders(outcome.outbox.len());
        }
        for msg in outcome.outbox {
            if self.comes_back(&msg.topic) {
                self.hops
                    .published(&msg.topic, &msg.payload, event.hop.saturating_add(1));
            }
            if !self.publish(msg, waiter.clone(), Some(function)).await {
                // Connection gone (shutting down): leave the event unacknowledged.
                return;
            }
        }
        let large_receipt = outcome.large_receipt;
        match outcome.durable {
            Some((store, generation)) => {
                let (stats, inbox) = (stats.clone(), inbox.clone());
                let flush_budget = inbox.awaiting_flush(event.payload.len());
                self.tracker.spawn(async move {
                    if store.durable(generation).await {
                        // Its receipt keeps the outputs for a resend until the broker has
                        // them all and the message is acknowledged.
                        if let Some((ns, m)) = large_receipt {
                            event
                                .delivery
                                .on_finished(move || ns.settled(m.pkid, m.incarnation));
                        }
                        cost.commit = Some(called.elapsed());
                        stats.succeeded(event.received.elapsed(), cost);
                        event.delivery.complete();
                        // Its place goes back to the queue's budget if another holder
                        // still keeps the message unsettled.
                        drop(event);
                        drop(flush_budget);
                    } else {
                        // The store was reopened after an I/O error and the commit was
                        // not on disk: run the event again, first. Its outputs may go out
                        // twice (at least once); its state changes once.
                        tracing::info!(topic = %event.topic, "commit lost with the failed store: the event runs again");
                        if let Err(event) = inbox.requeue(event) {
                            // Stopping: left unacknowledged, for the broker to resend.
                            drop(event);
                        }
                    }
                });
            }
            None => event.delivery.complete(),
        }
    }

    /// A redelivered message whose effects are already in the store: its recorded outputs
    /// go out again (the store cannot know whether the broker had them: outputs are at
    /// least once), then it is acknowledged, once those effects are on disk (`durable`:
    /// the flush they wait for, if they are not yet). The function is not called.
    pub async fn replay(
        &self,
        function: &str,
        stats: &Arc<FunctionStats>,
        event: Inbound,
        outputs: Vec<Outbound>,
        durable: Option<Durable>,
    ) {
        tracing::debug!(function, topic = %event.topic, pkid = event.pkid, outputs = outputs.len(),
            "redelivered message already handled: outputs sent again, not called");
        stats.replayed();
        event.delivery.add_holders(outputs.len());
        for msg in outputs {
            if !self
                .publish(msg, Some(event.delivery.clone()), Some(function))
                .await
            {
                return;
            }
        }
        self.complete_when_durable(event, durable);
    }

    /// Completes the delivery of a message whose effects another copy committed: at once
    /// if they are on disk, or after the flush that makes them durable. If that commit
    /// was lost with a failed store, the message stays unacknowledged: the other copy runs
    /// again, and the broker resends this one.
    fn complete_when_durable(&self, event: Inbound, durable: Option<Durable>) {
        match durable {
            None => event.delivery.complete(),
            Some((store, generation)) => {
                self.tracker.spawn(async move {
                    if store.durable(generation).await {
                        event.delivery.complete();
                    }
                });
            }
        }
    }

    /// Queues a message that no event waits for (a shadow's output, its report); false
    /// if the connection is gone.
    pub async fn publish_unheld(&self, msg: Outbound) -> bool {
        self.publish(msg, None, None).await
    }

    /// The broker's round trip, once measured ([`Publisher::round_trip`]).
    pub fn round_trip(&self) -> Option<Duration> {
        self.publisher.round_trip()
    }

    /// Queues a function's message for the broker, waiting while the connection's request
    /// queue is full, or while `function` already has its most unconfirmed outputs. Returns
    /// false if the connection is gone (shutting down).
    async fn publish(
        &self,
        msg: Outbound,
        then: Option<Arc<crate::event::Delivery>>,
        function: Option<&str>,
    ) -> bool {
        let qos = crate::event::mqtt_qos(msg.qos);
        // Never closed: an error cannot happen, and would only mean no place is held.
        let place = match function {
            Some(f) => {
                let overdue = || self.publisher.confirmations_overdue();
                self.places
                    .take(f, self.publisher.round_trip(), overdue)
                    .await
            }
            None => None,
        };
        self.publisher
            .publish(msg.topic, qos, msg.retain, msg.payload, then, place)
            .await
            .is_ok()
    }

    /// The one path of a failed event: counted, logged, sent as a dead letter, and then
    /// acknowledged. Never waits, so the router may call it on the poll task.
    pub fn fail(
        &self,
        function: &str,
        stats: &FunctionStats,
        event: Inbound,
        kind: FailureKind,
        message: String,
    ) {
        stats.failed(kind);
        let shown = message.get(..message.floor_char_boundary(DEAD_LETTER_MAX_MESSAGE));
        tracing::warn!(function, topic = %crate::topic::shown(&event.topic), kind = %kind,
            "event failed: {}", shown.unwrap_or_default());
        if event.topic == *self.dead_letter_topic {
            // A dead letter about a dead letter would feed the function that failed on it
            // again: one failure could go round for ever, growing each time.
            tracing::warn!(
                function,
                "no dead letter for a dead-letter event (no cascade)"
            );
            event.delivery.complete();
            return;
        }
        let module = stats.module_sha256();
        let Some(body) = self.dead_letter_body(function, module, &event, kind, message) else {
            event.delivery.complete();
            return;
        };
        let topic = self.dead_letter_topic.to_string();
        let qos = rumqttc::QoS::AtLeastOnce;
        // The message is acknowledged once the broker has its dead letter.
        let delivery = event.delivery.clone();
        match self
            .publisher
            .try_publish(topic.clone(), qos, false, body.clone(), Some(delivery))
        {
            Ok(()) => {}
            // Another message was being queued, or the queue is full: wait in a task, up
            // to a bound (a publish holds the queue for a moment, so under load the first
            // try often finds it taken: 97 of 2,000 dead letters were lost to that).
            Err(_) if event.qos == 0 => match self.qos0_letters.clone().try_acquire_owned() {
                Ok(waiting) => {
                    let publisher = self.publisher.clone();
                    self.tracker.spawn(async move {
                        let _waiting = waiting;
                        let then = Some(event.delivery.clone());
                        let _ = publisher.publish(topic, qos, false, body, then, None).await;
                    });
                }
                // Nothing to acknowledge and nothing the broker would redeliver: count it
                // and move on rather than pile up tasks under a QoS 0 flood.
                Err(_) => tracing::warn!(function, topic = %event.topic,
                    "connection backlog full: dead letter of a QoS 0 event dropped"),
            },
            Err(_) => {
                // The output connection's request queue is full. Leaving the message
                // unacknowledged would hold back every later acknowledgement (they leave
                // in order) and stall the stream for good, so wait for room in a task.
                // At most one task per unacknowledged message: the broker's in-flight
                // window bounds them.
                let publisher = self.publisher.clone();
                self.tracker.spawn(async move {
                    let then = Some(event.delivery.clone());
                    let _ = publisher.publish(topic, qos, false, body, then, None).await;
                });
            }
        }
    }

    /// The dead letter as JSON, within the packet limit: the payload is cut to what fits,
    /// and left out if nothing does; then the message, then the topic. `None` only if the
    /// letter's own fields are over it (a limit near its 1,024 floor), which is logged.
    fn dead_letter_body(
        &self,
        function: &str,
        module: Option<Arc<str>>,
        event: &Inbound,
        kind: FailureKind,
        message: String,
    ) -> Option<Vec<u8>> {
        // Room for the payload: the packet, less the topic and the rest of the letter
        // (the event's topic and the message may need escaping: count them twice), less a
        // quarter for base64.
        let fixed = crate::event::publish_packet_bytes(&self.dead_letter_topic, 600)
            + 2 * (event.topic.len() + message.len().min(DEAD_LETTER_MAX_MESSAGE))
            + function.len();
        let max_packet_bytes = self.broker_limits.max_packet_bytes();
        let room = max_packet_bytes.saturating_sub(fixed) / 4 * 3;
        let mut letter = DeadLetter::new(
            function,
            event,
            kind,
            message,
            room.min(DEAD_LETTER_MAX_PAYLOAD),
        );
        letter.module_sha256 = module.map(|m| m.to_string());
        // Still over with the payload left out (a long message under a low limit, or a
        // topic near it): the message is cut to fit, then the topic, each flagged. Each
        // round takes at least the excess off the JSON (escaping only lengthens text).
        loop {
            let body = letter.to_bytes();
            let packet = crate::event::publish_packet_bytes(&self.dead_letter_topic, body.len());
            let Some(over) = packet.checked_sub(max_packet_bytes).filter(|&o| o > 0) else {
                return Some(body);
            };
            let cut =
                |s: &mut String| s.truncate(s.floor_char_boundary(s.len().saturating_sub(over)));
            if !letter.message.is_empty() {
                cut(&mut letter.message);
                letter.message_truncated = true;
            } else if !letter.topic.is_empty() {
                cut(&mut letter.topic);
                letter.topic_truncated = true;
            } else {
                tracing::error!(function, topic = %crate::topic::shown(&event.topic), packet,
                    "dead letter over the packet limit even without its message and topic: not sent");
                return None;
            }
        }
    }
}

/// How long after two functions last took turns at publishing each still counts as
/// publishing beside the other (and holds at most its share of unconfirmed outputs).
const TAKING_TURNS: Duration = Duration::from_secs(1);

/// Each function's places among the output connection's unconfirmed publishes: at most
/// [`UNCONFIRMED_PER_FUNCTION`], and at most [`UNCONFIRMED_SHARE`] while other functions
/// publish too (one took a place after another within [`TAKING_TURNS`]), so that a
/// function's output finds at most a share of each other function's ahead of it in the
/// one stream; a function publishing alone keeps the whole window for its bursts. Both
/// grow with the broker's round trip, as far as the function's rate needs ([`windows_at`]).
#[derive(Default)]
struct Places {
    by_function: std::sync::Mutex<HashMap<String, Arc<FunctionPlaces>>>,
    /// The function that took the last place: its index plus one (0: none yet).
    last: AtomicUsize,
    /// Until when ([`crate::clock::monotonic_ns`], in ms) functions count as publishing
    /// side by side.
    side_by_side_until: AtomicU64,
}

struct FunctionPlaces {
    /// From 1, in the order the functions first published.
    id: usize,
    all: Arc<Semaphore>,
    share: Arc<Semaphore>,
    /// Places of `all` and `share` taken by a wait for several ([`FunctionPlaces::place`])
    /// and not yet used: the function's next outputs take them before anything else.
    spare: [std::sync::Mutex<Option<OwnedSemaphorePermit>>; 2],
    sizes: std::sync::Mutex<Sizes>,
}

/// The places of a function's two windows, and how fast the broker confirms its outputs.
struct Sizes {
    all: Window,
    share: Window,
    rate: DeliveryRate,
}

/// How many places a window's semaphore has (given out or not), and how many it should
/// have: a window too large gives up places as they are free or given back.
#[derive(Clone, Copy)]
struct Window {
    has: usize,
    wants: usize,
}

impl Window {
    fn new(size: usize) -> Self {
        Self {
            has: size,
            wants: size,
        }
    }

    /// Gives `semaphore` `wants` places: those it lacks at once, those over by taking back
    /// the free ones now ([`Window::keep`] the rest).
    fn resize(&mut self, semaphore: &Semaphore, wants: usize) {
        self.wants = wants;
        if wants > self.has {
            semaphore.add_permits(wants - self.has);
            self.has = wants;
        } else {
            self.has -= semaphore.forget_permits(self.has - wants);
        }
    }

    /// Whether a place just taken is kept: not if the window has more than it should. A
    /// function that always waits for its next place never leaves one free, so a window
    /// shrinks only this way while it is full (until 2026-12-07 it did not shrink then).
    fn keep(&mut self, place: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        if self.has > self.wants {
            place.forget();
            self.has -= 1;
            return None;
        }
        Some(place)
    }
}

/// How fast the broker confirms a function's outputs: the places it took, less those it
/// holds more than when the interval began (a place added to a window is taken at once by
/// a function that waits, which is no confirmation: counted, it made the window grow with
/// its own growth). Measured over intervals of a round trip (at least
/// [`DeliveryRate::INTERVAL_MS`]); the most of those within the last ten of them (at least
/// a second) counts, so that a function growing its window is not held to the rate of
/// the window before.
///
/// It also tells a function held back by its link from one held back by its window
/// ([`DeliveryRate::gain`]): both wait for places, but only the second gets more
/// confirmations a second from a larger window. And by Little's law it tells when a full
/// window's outputs take longer than [`SLOWER`] round trips to be confirmed
/// ([`DeliveryRate::taken`]): the round trip may no longer be what was measured.
#[derive(Default)]
struct DeliveryRate {
    /// Places taken since the interval began; when it began (ms), and how many places the
    /// function held then.
    taken: u64,
    since: Option<(u64, usize)>,
    /// The most per second of a recent interval, and when it ended (ms).
    best: Option<(f64, u64)>,
    /// Whether a place was waited for in this interval ([`FunctionPlaces::place`]).
    waited: bool,
    /// The intervals in a row, up to the last, in which places were waited for and the
    /// rate was no higher than the most of the intervals before by
    /// [`DeliveryRate::GROWING`], since the round trip was last found to have changed.
    flat: u8,
    /// The round trip (ms) of the last place counted.
    round_trip_ms: u64,
    /// Whether the round trip changed in this interval: its confirmations, then, say
    /// nothing of whether they are overdue (the first interval after the first estimate
    /// had none of the outputs that were on their way).
    new_round_trip: bool,
}

impl DeliveryRate {
    const INTERVAL_MS: u64 = 50;

    /// How much more than the most of the recent intervals counts as the rate growing
    /// with the window: a window grown by [`WINDOW_GAIN_HELD_BY_LINK`] (a quarter) still
    /// shows as growth, while an interval's spread seldom does.
    const GROWING: f64 = 1.15;

    /// How many flat intervals in a row ([`DeliveryRate::flat`]) show the link holding a
    /// function back. A window's growth shows in the interval after the one it grew in
    /// (its outputs come back a round trip later): with one, a function growing its
    /// window after a link got slower was taken for one held by its link every other
    /// interval, and cleared its backlog later (docs/benchmarks.md, "A full link").
    const FLAT_INTERVALS: u8 = 3;

    /// A place was taken at `now` (ms), the function now holding `held`, the broker
    /// `round_trip_ms` away. True once an interval in which places were waited for ends
    /// with what the function holds taking longer than [`SLOWER`] round trips (at least
    /// [`WINDOW_ROUND_TRIP`]) to be confirmed at the interval's rate: a link that became
    /// slower, or a full one ([`Publisher::confirmations_overdue`]).
    fn taken(&mut self, now: u64, held: usize, round_trip_ms: u64) -> bool {
        if round_trip_ms.abs_diff(self.round_trip_ms) > self.round_trip_ms / 4 {
            // The windows are sized for another round trip now: what held the function
            // back was its window for the old one, not its link.
            (self.flat, self.round_trip_ms) = (0, round_trip_ms);
            self.new_round_trip = true;
        }
        let Some((since, held_then)) = self.since else {
            self.since = Some((now, held));
            return false;
        };
        self.taken += 1;
        let interval = round_trip_ms.max(Self::INTERVAL_MS);
        let elapsed = now.saturating_sub(since);
        if elapsed < interval {
            return false;
        }
        let more = held.saturating_sub(held_then) as u64;
        let fewer = held_then.saturating_sub(held) as u64;
        let confirmed = (self.taken + fewer).saturating_sub(more);
        let rate = confirmed as f64 * 1000.0 / elapsed as f64;
        let keep = interval.saturating_mul(10).max(1000);
        let growing = self
            .best
            .is_none_or(|(best, _)| rate >= best * Self::GROWING);
        let slowest_ms =
            f64::from(SLOWER) * round_trip_ms.max(WINDOW_ROUND_TRIP.as_millis() as u64) as f64;
        // What it held throughout: held at the start and not confirmed by the end would
        // have been, a round trip away (outputs sent in the interval may still be on
        // their way: a window filling after a quiet spell is not overdue).
        let throughout = held.min(held_then) as f64;
        let overdue =
            self.waited && !self.new_round_trip && throughout * 1000.0 > rate * slowest_ms;
        self.new_round_trip = false;
        self.flat = if self.waited && !growing {
            self.flat.saturating_add(1)
        } else {
            0
        };
        self.waited = false;
        if self
            .best
            .is_none_or(|(best, at)| rate >= best || now.saturating_sub(at) >= keep)
        {
            self.best = Some((rate, now));
        }
        (self.taken, self.since) = (0, Some((now, held)));
        overdue
    }

    /// Confirmations a second, once an interval was measured.
    fn rate(&self) -> Option<f64> {
        self.best.map(|(rate, _)| rate)
    }

    /// How many times what the rate keeps on its way the windows hold ([`windows_at`]).
    fn gain(&self) -> f64 {
        if self.flat >= Self::FLAT_INTERVALS {
            WINDOW_GAIN_HELD_BY_LINK
        } else {
            WINDOW_GAIN
        }
    }
}

impl FunctionPlaces {
    fn sizes(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the semaphores the places of [`windows_at`] each.
    fn resize(&self, round_trip: Option<Duration>) {
        let mut sizes = self.sizes();
        let to = windows_at(round_trip, sizes.rate.rate(), sizes.rate.gain());
        sizes.all.resize(&self.all, to.0);
        sizes.share.resize(&self.share, to.1);
    }

    /// Places of `all` (`share` if `share`) kept aside by a wait for several.
    fn spare_places(&self, share: bool) -> usize {
        let spare = self.spare[usize::from(share)].lock();
        let spare = spare.unwrap_or_else(|p| p.into_inner());
        spare.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// A place in `all` (`share` if `share`), once one is free and kept ([`Window::keep`]):
    /// one kept aside by an earlier wait first; when none is free, once an eighth of the
    /// window's base is (the rest kept aside); without `wait`, only if one is free now.
    async fn place(&self, share: bool, wait: bool) -> Option<OwnedSemaphorePermit> {
        let (semaphore, base) = if share {
            (&self.share, UNCONFIRMED_SHARE)
        } else {
            (&self.all, UNCONFIRMED_PER_FUNCTION)
        };
        let spare = &self.spare[usize::from(share)];
        let take_spare = || {
            let mut spare = spare.lock().unwrap_or_else(|p| p.into_inner());
            match spare.as_ref().map(OwnedSemaphorePermit::num_permits) {
                Some(1) => spare.take(),
                Some(_) => spare.as_mut().and_then(|some| some.split(1)),
                None => None,
            }
        };
        let mut waited = false;
        loop {
            let place = match take_spare().map_or_else(|| semaphore.clone().try_acquire_owned(), Ok)
            {
                Ok(place) => place,
                Err(_) if wait => {
                    // A full window: wait for an eighth of it to be free, take one place
                    // and keep the rest for the next outputs to take at once. Woken at
                    // every confirmation, a function that outruns the connection paid a
                    // thread wake-up per output (a tenth of the persistent agent's CPU in
                    // a QoS 0 burst). The rest is kept aside, not given back: given back,
                    // it went to the next of the function's waiting callers (on demand,
                    // four workers wait at once), whom the next confirmation then woke.
                    // Windows never shrink below `base`, so the places waited for always
                    // come.
                    waited = true;
                    let mut some = semaphore
                        .clone()
                        .acquire_many_owned((base / 8).max(1) as u32)
                        .await
                        .ok()?;
                    let one = some.split(1)?;
                    if some.num_permits() > 0 {
                        let mut spare = spare.lock().unwrap_or_else(|p| p.into_inner());
                        match spare.as_mut() {
                            Some(kept) => kept.merge(some),
                            None => *spare = Some(some),
                        }
                    }
                    one
                }
                Err(_) => return None,
            };
            let mut sizes = self.sizes();
            sizes.rate.waited |= waited;
            let window = if share {
                &mut sizes.share
            } else {
                &mut sizes.all
            };
            if let Some(place) = window.keep(place) {
                return Some(place);
            }
        }
    }
}

impl Places {
    /// `function`'s places (made at its first output).
    fn of(&self, function: &str) -> Arc<FunctionPlaces> {
        let mut all = self.by_function.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = all.get(function) {
            return f.clone();
        }
        let f = Arc::new(FunctionPlaces {
            id: all.len() + 1,
            all: Arc::new(Semaphore::new(UNCONFIRMED_PER_FUNCTION)),
            share: Arc::new(Semaphore::new(UNCONFIRMED_SHARE)),
            spare: Default::default(),
            sizes: std::sync::Mutex::new(Sizes {
                all: Window::new(UNCONFIRMED_PER_FUNCTION),
                share: Window::new(UNCONFIRMED_SHARE),
                rate: DeliveryRate::default(),
            }),
        });
        all.insert(function.to_string(), f.clone());
        f
    }

    /// A place for one of `function`'s outputs, once it has one, in windows made for the
    /// broker's `round_trip`; `overdue` is called when its confirmations come slower than
    /// that explains ([`DeliveryRate::taken`]). Cancel-safe. `None` only if a semaphore
    /// were closed, which none is.
    async fn take(
        &self,
        function: &str,
        round_trip: Option<Duration>,
        overdue: impl FnOnce(),
    ) -> Option<Place> {
        let f = self.of(function);
        f.resize(round_trip);
        let all = f.place(false, true).await?;
        let now = crate::clock::monotonic_ns() / 1_000_000;
        let round_trip_ms = round_trip.map_or(0, |d| d.as_millis() as u64);
        let late = {
            let mut sizes = f.sizes();
            let free = f.all.available_permits() + f.spare_places(false);
            let held = sizes.all.has.saturating_sub(free);
            sizes.rate.taken(now, held, round_trip_ms)
        };
        if late {
            overdue();
        }
        let before = self.last.swap(f.id, Ordering::Relaxed);
        if before != f.id && before != 0 {
            let until = now.saturating_add(TAKING_TURNS.as_millis() as u64);
            self.side_by_side_until.fetch_max(until, Ordering::Relaxed);
        }
        // Alone, the share's places are counted while free, never waited for.
        let side_by_side = now < self.side_by_side_until.load(Ordering::Relaxed);
        let share = f.place(true, side_by_side).await;
        Some(Place { all, share })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_qos0_events_dead_letter_waits_while_another_message_is_queued() {
        let opts = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 16);
        let limits = BrokerLimits::new(1 << 20);
        let publisher = Publisher::new(client, limits.clone());
        let tracker = TaskTracker::new();
        let out = Output::new(
            publisher.clone(),
            "dl".into(),
            tracker.clone(),
            limits,
            Arc::default(),
        );
        let stats = FunctionStats::default();
        // Another publish holds the queue for a moment as the event fails.
        let queueing = publisher.hold_queue().await;
        let event = crate::pipeline::test_event("in/a", b"x".to_vec(), 0);
        out.fail("f", &stats, event, FailureKind::GuestError, "no".into());
        drop(queueing);
        tracker.close();
        let waited = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        assert!(waited.is_ok(), "the dead letter's task ended");
        el.clean(); // what was queued for the connection
        let letters: Vec<_> = el
            .pending
            .iter()
            .filter(|r| matches!(r, rumqttc::Request::Publish(p) if p.topic == "dl"))
            .collect();
        assert_eq!(letters.len(), 1, "{:?}", el.pending);
    }

    /// A dead letter that does not fit with its payload left out is cut to fit (its
    /// message, then its topic), not dropped (a probe, 2026-12-07: a 5,000-byte error
    /// under a 4,096-byte limit was never published).
    #[tokio::test]
    async fn a_dead_letter_is_cut_to_the_packet_limit_message_then_topic() {
        let opts = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, _el) = rumqttc::AsyncClient::new(opts, 16);
        let limits = BrokerLimits::new(4096);
        let publisher = Publisher::new(client, limits.clone());
        let out = Output::new(
            publisher,
            "edge-agent/a/dead-letter".into(),
            TaskTracker::new(),
            limits,
            Arc::default(),
        );
        let fits = |body: &[u8]| {
            crate::event::publish_packet_bytes("edge-agent/a/dead-letter", body.len()) <= 4096
        };
        let letter = |topic: &str, message: String| {
            let event = crate::pipeline::test_event(topic, vec![b'p'; 3000], 1);
            let body = out.dead_letter_body("f", None, &event, FailureKind::GuestError, message);
            let body = body.expect("a dead letter");
            assert!(fits(&body), "{} bytes", body.len());
            serde_json::from_slice::<DeadLetter>(&body).expect("a dead letter")
        };
        // A short one keeps what fits of its payload.
        let l = letter("in/x", "no".into());
        assert_eq!((l.message.as_str(), l.payload_truncated), ("no", true));
        assert!(!l.payload_base64.is_empty());
        // A message that does not fit even without the payload: cut.
        let l = letter("in/x", "\"é".repeat(2500));
        assert!(l.message_truncated && !l.topic_truncated, "{l:?}");
        assert!(
            l.message.starts_with("\"é") && l.message.len() > 1000,
            "{l:?}"
        );
        // A topic that does not fit with the rest: the message goes, then the topic is cut.
        let long = format!("in/{}", "t".repeat(4000));
        let l = letter(&long, "why".into());
        assert!(l.topic_truncated && l.message.is_empty(), "{l:?}");
        assert!(
            long.starts_with(&l.topic) && l.topic.len() > 3000,
            "{}",
            l.topic.len()
        );
    }

    async fn soon(places: &Places, function: &str) -> Option<Place> {
        soon_at(places, function, None).await
    }

    /// A place within 50 ms, with the broker `round_trip` away.
    async fn soon_at(
        places: &Places,
        function: &str,
        round_trip: Option<Duration>,
    ) -> Option<Place> {
        let take = places.take(function, round_trip, || ());
        tokio::time::timeout(Duration::from_millis(50), take)
            .await
            .ok()
            .flatten()
    }

    /// `n` places for `function`, each within 50 ms.
    async fn fill(
        places: &Places,
        function: &str,
        round_trip: Option<Duration>,
        n: usize,
    ) -> Vec<Place> {
        let mut taken = Vec::new();
        for i in 0..n {
            let place = soon_at(places, function, round_trip).await;
            taken.push(place.unwrap_or_else(|| panic!("place {i} of {n}")));
        }
        taken
    }

    #[test]
    fn the_windows_grow_only_as_far_as_the_rate_needs() {
        use crate::mqtt::publisher::windows;
        let far = Some(Duration::from_millis(200));
        assert_eq!(
            windows_at(far, None, WINDOW_GAIN),
            windows(far),
            "not measured yet"
        );
        assert_eq!(
            windows_at(far, Some(190.0), WINDOW_GAIN),
            (76, 76),
            "twice 38 on the way"
        );
        assert_eq!(windows_at(far, Some(100.0), WINDOW_GAIN), (64, 40));
        assert_eq!(
            windows_at(far, Some(5.0), WINDOW_GAIN),
            (64, 16),
            "the base windows"
        );
        assert_eq!(
            windows_at(far, Some(1e9), WINDOW_GAIN),
            (800, 200),
            "the round trip's at most"
        );
        let near = Some(Duration::from_millis(2));
        assert_eq!(windows_at(near, Some(1e6), WINDOW_GAIN), (64, 16));
        assert_eq!(
            windows_at(far, Some(190.0), WINDOW_GAIN_HELD_BY_LINK),
            (64, 48),
            "a quarter more than 38 on the way"
        );
    }

    #[test]
    fn a_full_window_that_brings_no_more_confirmations_is_held_by_the_link() {
        let mut r = DeliveryRate::default();
        // A place every `every` ms from `from` to `to`, 20 held, 200 ms away; the
        // windows' gain after it.
        let mut take = |from: u64, to: u64, every: usize, waited: bool| {
            for now in (from..=to).step_by(every) {
                r.waited |= waited;
                r.taken(now, 20, 200);
            }
            r.gain()
        };
        assert_eq!(take(1000, 1200, 10, true), WINDOW_GAIN, "a first rate");
        assert_eq!(take(1210, 1400, 10, true), WINDOW_GAIN, "one flat interval");
        assert_eq!(take(1410, 1600, 10, true), WINDOW_GAIN, "two");
        assert_eq!(
            take(1610, 1800, 10, true),
            WINDOW_GAIN_HELD_BY_LINK,
            "three: waited, and no more a second"
        );
        assert_eq!(
            take(1805, 2000, 5, true),
            WINDOW_GAIN,
            "the larger window brought more"
        );
        for (from, to) in [(2010, 2200), (2210, 2400), (2410, 2600)] {
            assert_eq!(
                take(from, to, 10, false),
                WINDOW_GAIN,
                "no more, but nothing waited: the function has no more to send"
            );
        }
        for (from, to) in [(2610, 2800), (2810, 3000), (3010, 3200)] {
            take(from, to, 10, true);
        }
        assert_eq!(r.gain(), WINDOW_GAIN_HELD_BY_LINK);
        r.waited = true;
        r.taken(3210, 20, 400);
        assert_eq!(r.gain(), WINDOW_GAIN, "windows for another round trip");
    }

    #[test]
    fn a_full_window_confirmed_slower_than_its_round_trip_is_overdue() {
        // 16 held, the round trip measured at 10 ms, a place every `every` ms for a
        // second: whether an interval ended overdue.
        let overdue = |waited: bool, every: usize| {
            let mut r = DeliveryRate::default();
            let mut overdue = false;
            for now in (0..=1000).step_by(every) {
                r.waited |= waited;
                overdue |= r.taken(now, 16, 10);
            }
            overdue
        };
        assert!(
            overdue(true, 31),
            "16 at 32 a second: half a second each, not 10 ms"
        );
        assert!(
            !overdue(false, 31),
            "nothing waited: the function has no more to send"
        );
        assert!(!overdue(true, 1), "16 at 1,000 a second: 16 ms each");
        // Not in an interval in which the round trip changed (its outputs were sent
        // before): here the first, from none to 10 ms.
        let mut r = DeliveryRate {
            waited: true,
            ..DeliveryRate::default()
        };
        r.taken(0, 16, 10);
        r.taken(31, 16, 10);
        assert!(!r.taken(62, 16, 10), "the round trip was new");
        r.waited = true;
        r.taken(93, 16, 10);
        assert!(r.taken(124, 16, 10), "the next interval");
        // Nor a window filling after a quiet spell, 200 ms away: what it holds at the end
        // was sent in the interval, and is on its way.
        let mut r = DeliveryRate::default();
        r.taken(0, 1, 200);
        r.taken(200, 1, 200);
        r.waited = true;
        for i in 1..=22 {
            r.taken(200 + i * 9, 1 + i as usize, 200);
        }
        assert!(!r.taken(400, 23, 200), "22 more sent, 1 confirmed");
    }

    #[test]
    fn the_delivery_rate_is_the_most_of_recent_intervals() {
        let mut r = DeliveryRate::default();
        // A place every `every` ms from `from` to `to`, each as one comes back (20 held),
        // a 200 ms round trip away.
        let mut take = |from: u64, to: u64, every: usize| {
            for now in (from..=to).step_by(every) {
                r.taken(now, 20, 200);
            }
            r.rate()
        };
        assert_eq!(take(1000, 1190, 10), None, "no interval yet");
        assert_eq!(take(1200, 1200, 10), Some(100.0));
        assert_eq!(take(1205, 1400, 5), Some(200.0), "faster counts at once");
        assert_eq!(take(1450, 3350, 50), Some(200.0), "for ten intervals");
        assert_eq!(take(3400, 3400, 50), Some(20.0), "then the slower");
    }

    #[test]
    fn places_added_to_a_window_are_no_confirmations() {
        let mut r = DeliveryRate::default();
        r.taken(0, 20, 200);
        // 60 taken in 200 ms while the window grew from 20 to 60: 20 came back.
        for i in 1..=60 {
            r.taken(i * 200 / 60, 20 + (i as usize * 40).div_ceil(60), 200);
        }
        assert_eq!(r.rate(), Some(100.0));
    }

    #[tokio::test]
    async fn the_windows_grow_with_the_brokers_round_trip_and_shrink_back() {
        use crate::mqtt::publisher::windows;
        let far = Some(Duration::from_millis(200));
        assert_eq!(
            windows(far),
            (800, 200),
            "16 and 64 over 16 ms: the same rates"
        );
        assert_eq!(windows(Some(Duration::from_millis(2))), (64, 16));
        assert_eq!(windows(Some(Duration::from_secs(5))), (1024, 256));
        let places = Places::default();
        let mut loud = fill(&places, "loud", far, 800).await;
        assert!(soon_at(&places, "loud", far).await.is_none(), "and no more");
        // Beside another function, its grown share.
        assert!(soon_at(&places, "quiet", far).await.is_some());
        loud.truncate(199);
        loud.push(soon_at(&places, "loud", far).await.expect("199 + 1"));
        assert!(
            soon_at(&places, "loud", far).await.is_none(),
            "the share is full"
        );
        // The broker is near again: the windows shrink as places come free.
        loud.clear();
        let mut near = Vec::new();
        for _ in 0..UNCONFIRMED_SHARE {
            near.push(soon(&places, "loud").await.expect("the base share"));
        }
        assert!(
            soon(&places, "loud").await.is_none(),
            "back to {UNCONFIRMED_SHARE}"
        );
    }

    #[tokio::test]
    async fn a_full_window_shrinks_as_its_places_come_back() {
        let (far, near) = (
            Some(Duration::from_millis(200)),
            Some(Duration::from_millis(2)),
        );
        let places = Places::default();
        let mut loud = fill(&places, "loud", far, 800).await;
        // The broker is near again while the function waits for its next place: the
        // places it gives back go, down to the base window.
        let next = places.take("loud", near, || ());
        tokio::pin!(next);
        let wait = Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, &mut next).await.is_err());
        loud.truncate(800 - (800 - UNCONFIRMED_PER_FUNCTION));
        assert!(
            tokio::time::timeout(wait, &mut next).await.is_err(),
            "the 736 given back are gone"
        );
        for _ in 1..UNCONFIRMED_PER_FUNCTION / 8 {
            loud.pop();
        }
        assert!(
            tokio::time::timeout(wait, &mut next).await.is_err(),
            "woken once an eighth of the window is free, not at every confirmation"
        );
        loud.pop();
        let place = tokio::time::timeout(wait, &mut next).await;
        assert!(place.is_ok_and(|p| p.is_some()), "the base window's");
    }

    #[tokio::test]
    async fn a_place_waited_for_counts_in_the_delivery_rate() {
        let places = Places::default();
        let mut held = fill(&places, "f", None, UNCONFIRMED_PER_FUNCTION).await;
        let f = places.of("f");
        assert!(!f.sizes().rate.waited, "free places are no wait");
        let next = f.place(false, true);
        tokio::pin!(next);
        let wait = Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, &mut next).await.is_err());
        held.drain(..UNCONFIRMED_PER_FUNCTION / 8);
        let place = tokio::time::timeout(wait, &mut next).await;
        assert!(place.is_ok_and(|p| p.is_some()), "an eighth came back");
        assert!(f.sizes().rate.waited, "the full window held it back");
    }

    #[tokio::test]
    async fn callers_waiting_on_one_full_window_are_woken_once_per_eighth_each() {
        let places = Places::default();
        let mut held = fill(&places, "f", None, UNCONFIRMED_PER_FUNCTION).await;
        // Two of the function's callers wait (on demand, its workers).
        let (first, second) = (places.take("f", None, || ()), places.take("f", None, || ()));
        tokio::pin!(first, second);
        let wait = Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, &mut first).await.is_err());
        assert!(tokio::time::timeout(wait, &mut second).await.is_err());
        held.drain(..UNCONFIRMED_PER_FUNCTION / 8);
        let one = tokio::time::timeout(wait, &mut first).await;
        assert!(one.is_ok_and(|p| p.is_some()), "an eighth came back");
        held.pop();
        assert!(
            tokio::time::timeout(wait, &mut second).await.is_err(),
            "not woken by the next confirmation: the first's seven are kept aside"
        );
        for i in 1..UNCONFIRMED_PER_FUNCTION / 8 {
            let spare = soon(&places, "f").await;
            assert!(spare.is_some(), "the next output takes spare place {i}");
            held.extend(spare);
        }
        assert!(
            soon(&places, "f").await.is_none(),
            "the spare places are used up"
        );
        held.drain(..UNCONFIRMED_PER_FUNCTION / 8 - 1);
        let two = tokio::time::timeout(wait, &mut second).await;
        assert!(two.is_ok_and(|p| p.is_some()), "its own eighth came back");
    }

    #[tokio::test]
    async fn a_function_alone_keeps_its_whole_window_and_beside_another_its_share() {
        let places = Places::default();
        let mut loud = Vec::new();
        for _ in 0..UNCONFIRMED_PER_FUNCTION {
            loud.push(
                soon(&places, "loud")
                    .await
                    .expect("alone: the whole window"),
            );
        }
        assert!(
            soon(&places, "loud").await.is_none(),
            "past the window it waits for a confirmation"
        );
        loud.truncate(UNCONFIRMED_SHARE + 4);
        // Another function publishes: from now on loud holds at most its share, so
        // quiet's next output finds at most that many of loud's ahead of it.
        let quiet = soon(&places, "quiet").await.expect("quiet has room");
        assert!(quiet.share.is_some());
        assert!(
            soon(&places, "loud").await.is_none(),
            "side by side, the share ({UNCONFIRMED_SHARE}) is full"
        );
        // The oldest outputs hold the share's places: one confirmed, one more goes.
        loud.remove(0);
        assert!(soon(&places, "loud").await.is_some());
    }
}

//! Everything the agent publishes (functions' outputs, dead letters, stats, presence) goes
//! through one [`Publisher`] on the output connection, which is not the connection the
//! events came in on. So that a message is still acknowledged only once what it caused is
//! safe, the publisher tells when the broker has each message (PUBACK for QoS 1, PUBREC for
//! QoS 2, written out for QoS 0) and completes the [`Delivery`] that waits on it.
//!
//! rumqttc numbers a publish only when its event loop takes it from the request queue, and
//! then reports `Outgoing::Publish(pkid)` in the order requests were queued. The publisher
//! queues each request in the same order as the delivery waiting on it (at once under the
//! short lock of the waiters' queue, or, when the request queue is full or held, in turn
//! under the `order` lock), and pairs the two as the connection task reports what went out.
//!
//! One connection is one stream: an output waits for every output queued before it, in
//! the agent and in the broker. So that a function that floods outputs cannot make the
//! others wait behind hundreds of its own, each function holds at most
//! [`UNCONFIRMED_PER_FUNCTION`] outputs the broker has not confirmed, and at most
//! [`UNCONFIRMED_SHARE`] while other functions publish too; once it holds them all, its
//! next waits for an eighth of them to be confirmed and keeps the rest aside for its next
//! outputs, so that it is woken once for several
//! ([`Output`](crate::pipeline::output::Output) keeps the places of each function). Both
//! grow with the broker's round trip past [`WINDOW_ROUND_TRIP`] ([`windows`]): on a
//! distant broker, outputs on their way take places without holding anyone up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, ClientError, Event, Outgoing, Packet, PubAck, PubRec, QoS, Request};
use tokio::sync::OwnedSemaphorePermit;

use crate::event::{BrokerLimits, Delivery, publish_packet_bytes};

/// Most outputs of one function on the output connection that the broker has not
/// confirmed (written out, for QoS 0). A function's queue of one-output events (64) never
/// holds more, so it bounds a function that makes many outputs per event: measured in
/// docs/benchmarks.md ("One function's flood of outputs").
pub const UNCONFIRMED_PER_FUNCTION: usize = 64;

/// Most unconfirmed outputs of one function while other functions publish too: what
/// another function's output may find ahead of it in the stream. Measured in
/// docs/benchmarks.md ("A cap that depends on who is publishing").
pub const UNCONFIRMED_SHARE: usize = 16;

/// The broker's round trip that [`UNCONFIRMED_PER_FUNCTION`] and [`UNCONFIRMED_SHARE`] are
/// made for: over it they keep 4,000 and 1,000 outputs a second on their way. Over a
/// longer one both grow with it ([`windows`]), up to [`WINDOW_GROWTH`] times: fixed, 16
/// unconfirmed outputs over 200 ms were at most 80 a second, and two functions at 100
/// events a second each fell further behind every second (docs/benchmarks.md, "A distant
/// broker").
pub const WINDOW_ROUND_TRIP: Duration = Duration::from_millis(16);

/// How many times their base the windows grow at most: [`UNCONFIRMED_PER_FUNCTION`] up to
/// the connection's in-flight limit (1,024), and what a function holds with them.
pub const WINDOW_GROWTH: usize = 16;

/// A function's windows (all its unconfirmed outputs, its share beside other functions)
/// for the broker's `round_trip`, as [`Publisher::round_trip`] measures it.
pub fn windows(round_trip: Option<Duration>) -> (usize, usize) {
    let rt = round_trip.map_or(0, |d| d.as_micros());
    let scale = |base: usize| {
        let grown = (base as u128 * rt).div_ceil(WINDOW_ROUND_TRIP.as_micros());
        usize::try_from(grown)
            .unwrap_or(usize::MAX)
            .clamp(base, base * WINDOW_GROWTH)
    };
    (scale(UNCONFIRMED_PER_FUNCTION), scale(UNCONFIRMED_SHARE))
}

/// How many times what a function's rate keeps on its way its windows may hold
/// ([`windows_at`]): twice while the rate grows with the window, so that a function held
/// back by its window doubles it from one round trip to the next.
pub const WINDOW_GAIN: f64 = 2.0;

/// The same once the link holds the function back: its window was full and a larger one
/// brought no more confirmations a second. What it holds past one round trip's worth
/// waits in the link's queue, ahead of every other function's outputs.
pub const WINDOW_GAIN_HELD_BY_LINK: f64 = 1.25;

/// A function's windows for the broker's `round_trip` when it gets about `rate` outputs a
/// second confirmed: [`windows`] at most, and no more than `gain` times what that rate
/// keeps on its way over the round trip (at least the base windows). A function held back
/// by its window grows it by `gain` from one round trip to the next ([`WINDOW_GAIN`]); one
/// held back by a link that carries no more keeps about a quarter of a round trip's worth
/// queued ahead of the others' outputs ([`WINDOW_GAIN_HELD_BY_LINK`]; a whole round trip's
/// at [`WINDOW_GAIN`]), where [`windows`] alone kept up to sixteen times their base: over a
/// 200 KB/s uplink 200 ms away, a quiet function's outputs waited 1.6-3.0 s behind a
/// flood of 1 KB outputs (docs/benchmarks.md, "A link that gets slower"). Without a rate,
/// [`windows`].
pub fn windows_at(round_trip: Option<Duration>, rate: Option<f64>, gain: f64) -> (usize, usize) {
    let (all, share) = windows(round_trip);
    let Some(rate) = rate else {
        return (all, share);
    };
    let on_the_way = rate * round_trip.map_or(0.0, |d| d.as_secs_f64());
    // At most a window's worth, so the conversion cannot overflow.
    let needed = (gain * on_the_way).ceil().min(all as f64) as usize;
    (
        all.min(needed.max(UNCONFIRMED_PER_FUNCTION)),
        share.min(needed.max(UNCONFIRMED_SHARE)),
    )
}

/// How long each of the two spans lasts whose least round trips make the estimate: a link
/// that became slower is seen within two of them.
const ROUND_TRIP_SPAN: Duration = Duration::from_secs(10);

/// Longest a publish waits for the outputs before it to be confirmed, so as to be timed
/// alone ([`RoundTrip::due`]). What it waits for is ahead of it anyway; a broker slower
/// than this leaves the estimate as it was.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The broker's round trip as the output connection sees it: the least time from writing a
/// QoS 1 publish while nothing else was unconfirmed to its PUBACK (so not the time it
/// waited behind the agent's own outputs), over the last one or two spans of
/// [`ROUND_TRIP_SPAN`] that had one.
///
/// A stream that never leaves the connection alone would never be timed: once a span has
/// passed without a publish alone, the next one waits for those before it to be confirmed
/// ([`Publisher::publish`]), at most [`DRAIN_WAIT`], once a span. Until 2026-12-07 it did
/// not, and a link that got slower under a stream was never seen: two functions at 100
/// events a second fell further behind every second (docs/benchmarks.md, "A link that
/// gets slower"). A publish timed behind others is no cure: on a link whose bandwidth is
/// full it times the queue, the windows grow with it and the queue with them (a quiet
/// function's outputs beside a flood took 4.5 s instead of 0.1 s).
///
/// A round trip [`SLOWER`] than the estimate is timed again at once (by the next publish,
/// waiting for those before it if it must, once), and two in a row are the new estimate:
/// the least of the spans kept a link that had become slower at its old round trip for
/// another 10-20 s, and at 500 ms the backlog built meanwhile took most of a minute to
/// clear (docs/benchmarks.md, "A link that gets slower"). One slow round trip alone (a
/// lost segment resent, a broker that paused) changes nothing. And a function whose
/// outputs the broker confirms slower than the estimate explains
/// ([`Publisher::confirmations_overdue`]) has the next publish timed alone at once too,
/// at most once a span: under a stream the span's wait could come just before the link
/// became slower, and the next only 10 s later.
#[derive(Default)]
struct RoundTrip {
    /// The publish being timed: its packet id, and when it was written.
    probe: Option<(u16, Instant)>,
    /// The least of the span before.
    before: Option<Duration>,
    /// The least of this span, and when it began.
    this: Option<(Duration, Instant)>,
    /// When a publish last waited to be timed alone.
    drained: Option<Instant>,
    /// The last round trip timed, if it was [`SLOWER`] than the estimate.
    slower: Option<Duration>,
    /// When a publish was last asked to be timed alone at once: due until one is timed, or
    /// waits to be.
    again: Option<Instant>,
    /// When confirmations overdue last asked for that ([`RoundTrip::overdue`]), or a wait
    /// to be timed alone last gave up ([`DRAIN_WAIT`]: confirmations take longer than
    /// that, and waiting for overdue ones would not time it either): they ask for none
    /// within a span of it.
    overdue_held: Option<Instant>,
}

/// How many times the estimate a round trip takes to be timed again at once, and, with the
/// next, to be the estimate ([`RoundTrip`]). Both must also be over [`WINDOW_ROUND_TRIP`]:
/// under it the windows do not change.
pub const SLOWER: u32 = 2;

impl RoundTrip {
    /// rumqttc wrote publish `pkid`, `alone` if nothing else was unconfirmed; `now` is read
    /// only if it is timed.
    fn written(&mut self, pkid: u16, alone: bool, now: impl FnOnce() -> Instant) {
        if alone && self.probe.is_none() {
            self.probe = Some((pkid, now()));
        }
    }

    /// The broker confirmed `pkid` at `now`: the new estimate, if it was the one timed.
    fn confirmed(&mut self, pkid: u16, now: impl FnOnce() -> Instant) -> Option<Duration> {
        let (_, at) = self.probe.take_if(|(probe, _)| *probe == pkid)?;
        let now = now();
        let took = now.duration_since(at);
        let estimate = self.estimate();
        if estimate.is_some_and(|e| took > SLOWER * e && took > WINDOW_ROUND_TRIP) {
            match self.slower.take() {
                None => (self.slower, self.again) = (Some(took), Some(now)),
                // Two in a row: the link is slower. The spans begin again.
                Some(first) => {
                    self.before = None;
                    self.this = Some((first.min(took), now));
                    self.again = None;
                    tracing::debug!(?first, then = ?took, "the broker's round trip is slower");
                }
            }
            return self.estimate();
        }
        (self.slower, self.again) = (None, None);
        self.this = match self.this {
            Some((least, since)) if now.duration_since(since) < ROUND_TRIP_SPAN => {
                Some((least.min(took), since))
            }
            over => {
                // The span before is the one just over only if it ended within a span.
                self.before = over
                    .filter(|(_, since)| now.duration_since(*since) < 2 * ROUND_TRIP_SPAN)
                    .map(|(least, _)| least);
                Some((took, now))
            }
        };
        self.estimate()
    }

    /// A function's outputs were confirmed slower than the estimate explains: the next
    /// publish is timed alone at once, unless this asked, or a wait gave up, within a
    /// span. Before the first estimate nothing explains them (the first publish alone is
    /// timed anyway).
    fn overdue(&mut self, now: Instant) {
        let held = self
            .overdue_held
            .is_some_and(|at| now.duration_since(at) < ROUND_TRIP_SPAN);
        if self.this.is_some() && !held {
            (self.overdue_held, self.again) = (Some(now), Some(now));
            tracing::debug!("outputs confirmed slower than the round trip explains: timing it");
        }
    }

    /// The least round trip of this span and the one before.
    fn estimate(&self) -> Option<Duration> {
        self.this
            .map(|(least, _)| self.before.map_or(least, |b| b.min(least)))
    }

    /// Whether a publish at `now`, written behind unconfirmed ones, should wait to be timed
    /// alone: nothing is being timed, and a span has passed since the last span began and
    /// since the last wait, or one was asked for at once ([`SLOWER`],
    /// [`RoundTrip::overdue`]) and none waited since. (Before the first span the first
    /// publish written went alone.)
    fn due(&mut self, now: Instant) -> bool {
        let due = self.would_be_due(|| now);
        if due {
            self.drained = Some(now);
        }
        due
    }

    /// [`RoundTrip::due`] without counting the wait; `now` is read only if something is
    /// being timed.
    fn would_be_due(&self, now: impl FnOnce() -> Instant) -> bool {
        let Some((_, since)) = self.this.filter(|_| self.probe.is_none()) else {
            return false;
        };
        if let Some(at) = self.again
            && self.drained.is_none_or(|d| d < at)
        {
            return true;
        }
        let now = now();
        let over = |at: Instant| now.duration_since(at) >= ROUND_TRIP_SPAN;
        over(since) && self.drained.is_none_or(over)
    }
}

/// What a function's output holds until the broker has it (given back when dropped): its
/// place among the function's unconfirmed outputs, and, while other functions publish
/// too, its place in the function's share of them.
pub struct Place {
    /// One of [`UNCONFIRMED_PER_FUNCTION`].
    pub all: OwnedSemaphorePermit,
    /// One of [`UNCONFIRMED_SHARE`], if one was free or had to be waited for.
    pub share: Option<OwnedSemaphorePermit>,
}

/// Topics whose messages not sent for the broker's limits are logged as errors, once each.
const SAID_TOPICS: usize = 256;

/// What waits on one publish: a delivery to complete, or nothing.
type Waiter = Option<Arc<Delivery>>;

/// A publish [`Publisher::queue_now`] could not queue at once: its topic, payload, waiter
/// and place.
type Later = (String, Bytes, Waiter, Option<Place>);

/// A publish's waiter, its function's place among its unconfirmed outputs (given back
/// when the entry is dropped: confirmed, or dropped with a lost session), the size of its
/// packet ([`publish_packet_bytes`]; 0 if not known), and when it was handed to rumqttc if
/// nothing else was queued or unconfirmed then (a round trip can be timed from there).
struct Entry(Waiter, Option<Place>, usize, Option<Instant>);

impl Waiting {
    /// The entry of a publish handed to rumqttc now.
    fn entry(&self, then: Waiter, place: Option<Place>, bytes: usize) -> Entry {
        let alone = self.queued.is_empty() && self.in_flight.is_empty();
        Entry(then, place, bytes, alone.then(Instant::now))
    }
}

#[derive(Default)]
struct Waiting {
    /// Queued requests not yet numbered, oldest first.
    queued: VecDeque<Entry>,
    /// Numbered QoS 1/2 publishes the broker has not confirmed.
    in_flight: HashMap<u16, Entry>,
    /// A publish rumqttc holds back because its packet id is still in flight.
    collided: Option<(u16, Entry)>,
    /// Queued requests rumqttc took out of its queue when the connection failed: it resends
    /// them (after the unconfirmed ones) if the broker resumes the session, and drops them
    /// with the unconfirmed ones if it does not.
    taken_at_failure: usize,
    /// The largest packet the broker confirmed.
    largest_confirmed: usize,
    round_trip: RoundTrip,
    /// A publish waits to be timed alone ([`Publisher::wait_to_be_timed`]).
    draining: bool,
}

impl Waiting {
    /// Nothing queued, held back or unconfirmed: a publish now is written alone.
    fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.queued.is_empty() && self.collided.is_none()
    }

    /// Whether a publish now would wait to be timed alone ([`RoundTrip::due`]), without
    /// counting it as waited.
    fn timing_due(&self) -> bool {
        !self.in_flight.is_empty() && self.round_trip.would_be_due(Instant::now)
    }
}

/// Publishes on the output connection and reports when the broker has each message.
pub struct Publisher {
    client: AsyncClient,
    /// Lowered when the broker refuses a publish.
    limit: BrokerLimits,
    /// Held while a request and its waiter are queued, so both queues keep one order.
    order: Arc<tokio::sync::Mutex<()>>,
    /// Topics of messages not sent for the broker's limits, said once each (the first
    /// [`SAID_TOPICS`]; the rest at debug level).
    said: Mutex<std::collections::HashSet<String>>,
    /// Messages not sent for the broker's limits, or dropped when it refused them.
    dropped: std::sync::atomic::AtomicU64,
    waiting: Mutex<Waiting>,
    /// [`RoundTrip`]'s estimate in microseconds (0: none yet), read without the lock.
    round_trip_us: std::sync::atomic::AtomicU64,
    /// Told when the broker has confirmed everything ([`Waiting::idle`]).
    idle: tokio::sync::Notify,
}

impl Publisher {
    /// A publisher over the output connection's `client`. Its event loop's events must be
    /// passed to [`Publisher::observe`].
    pub fn new(client: AsyncClient, limit: BrokerLimits) -> Arc<Self> {
        Arc::new(Self {
            client,
            limit,
            order: Arc::default(),
            said: Mutex::default(),
            dropped: std::sync::atomic::AtomicU64::new(0),
            waiting: Mutex::new(Waiting::default()),
            round_trip_us: std::sync::atomic::AtomicU64::new(0),
            idle: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message, waiting while the connection's request queue is full; `then` is
    /// completed once the broker has it, and `place` (the function's, see
    /// [`UNCONFIRMED_PER_FUNCTION`]) given back. A message the broker will not take is not
    /// sent, and `then` is completed at once (see `Publisher::fits`). Cancel-safe: dropped
    /// before it returns, nothing was queued.
    ///
    /// # Errors
    /// The connection is gone (shutting down): `then` is never completed.
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        then: Waiter,
        place: Option<Place>,
    ) -> Result<(), ClientError> {
        /// Takes the waiter back out unless the request went into the queue.
        struct Unqueue<'a>(&'a Publisher, bool);
        impl Drop for Unqueue<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().queued.pop_back();
                }
            }
        }
        let (topic, payload, then, place) =
            match self.queue_now(topic, qos, retain, payload, then, place) {
                Ok(()) => return Ok(()),
                Err(later) => later,
            };
        let _order = self.order.lock().await;
        // Under the lock: what the broker refused meanwhile is known.
        let Some(bytes) = self.fits(&topic, payload.len(), then.as_ref()) else {
            return Ok(());
        };
        if qos != QoS::AtMostOnce {
            self.wait_to_be_timed().await;
        }
        {
            let mut w = self.lock();
            let entry = w.entry(then, place, bytes);
            w.queued.push_back(entry);
        }
        let mut unqueue = Unqueue(self, true);
        let sent = self.client.publish_bytes(topic, qos, retain, payload).await;
        unqueue.1 = sent.is_err();
        sent
    }

    /// Queues a publish at once if it can be: nobody holds the queue or waits for it (the
    /// `order` lock is free), the request queue has room, and no round trip is due to be
    /// timed ([`Publisher::wait_to_be_timed`]). It is then queued under the short lock of
    /// `waiting` alone, which also keeps the two queues in one order: publishes from
    /// several threads no longer wake one another through `order` (11.5% of the samples
    /// of an on-demand burst, docs/benchmarks.md). Otherwise gives everything back, to
    /// wait for its turn. A message the broker will not take is not sent (see
    /// `Publisher::fits`).
    fn queue_now(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        then: Waiter,
        place: Option<Place>,
    ) -> Result<(), Later> {
        let bytes = publish_packet_bytes(&topic, payload.len());
        let mut w = self.lock();
        // Never waits: with `waiting` held, it fails only while someone else holds `order`.
        let Ok(order) = self.order.try_lock() else {
            return Err((topic, payload.into(), then, place));
        };
        if self.limit.over(&topic, bytes).is_some() {
            drop((w, order));
            return match self.fits(&topic, payload.len(), then.as_ref()) {
                None => Ok(()),
                Some(_) => Err((topic, payload.into(), then, place)),
            };
        }
        if qos != QoS::AtMostOnce && w.timing_due() {
            return Err((topic, payload.into(), then, place));
        }
        let entry = w.entry(then, place, bytes);
        w.queued.push_back(entry);
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => Ok(()),
            Err(e) => {
                let Entry(then, place, _, _) = w.queued.pop_back().expect("pushed above");
                drop((w, order));
                match e {
                    ClientError::TryRequest(Request::Publish(p)) => {
                        Err((p.topic, p.payload, then, place))
                    }
                    // try_publish fails only with TryRequest, giving its publish back.
                    _ => unreachable!("try_publish gives its publish back"),
                }
            }
        }
    }

    /// Waits, at most [`DRAIN_WAIT`], for everything before to be confirmed if the round
    /// trip is due to be timed ([`RoundTrip::due`]), so that this publish is written alone.
    async fn wait_to_be_timed(&self) {
        let due = {
            let mut w = self.lock();
            let due = !w.in_flight.is_empty() && w.round_trip.due(Instant::now());
            w.draining = due;
            due
        };
        if !due {
            return;
        }
        let drained = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.lock().idle() {
                    break;
                }
                idle.await;
            }
        };
        let gave_up = tokio::time::timeout(DRAIN_WAIT, drained).await.is_err();
        let mut w = self.lock();
        w.draining = false;
        if gave_up {
            w.round_trip.overdue_held = Some(Instant::now());
        }
    }

    /// The packet's size if the broker takes a message of `payload_len` bytes to `topic`
    /// ([`BrokerLimits`]). If not, it is not sent: guests are refused such messages when
    /// they publish them, so this is the last line (one such packet would break the
    /// connection for everyone, see [`crate::mqtt::refusal`]), and what waits on it is
    /// released.
    fn fits(&self, topic: &str, payload_len: usize, then: Option<&Arc<Delivery>>) -> Option<usize> {
        let bytes = publish_packet_bytes(topic, payload_len);
        let Some(why) = self.limit.over(topic, bytes) else {
            return Some(bytes);
        };
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = {
            let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
            said.len() < SAID_TOPICS && said.insert(topic.to_owned())
        };
        if first {
            tracing::error!(%topic, "not sent: {why}");
        } else {
            tracing::debug!(%topic, "not sent: {why}");
        }
        if let Some(delivery) = then {
            delivery.complete();
        }
        None
    }

    /// Like [`Publisher::publish`], but never waits.
    ///
    /// # Errors
    /// `Err(then)` if the request queue is full, another publish holds it or waits for
    /// it, or the round trip is due to be timed (once a span at most).
    pub fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        then: Waiter,
    ) -> Result<(), Waiter> {
        self.queue_now(topic, qos, retain, payload, then, None)
            .map_err(|(_, _, then, _)| then)
    }

    /// Drops subscriptions on `filters` (an older agent's, left in a resumed session).
    pub fn unsubscribe(&self, filters: &[String]) {
        for f in filters {
            let _ = self.client.try_unsubscribe(f.clone());
        }
    }

    /// Sends a clean DISCONNECT once what is queued has gone.
    pub async fn disconnect(&self) {
        let _order = self.order.lock().await;
        let _ = self.client.disconnect().await;
    }

    /// Follows the output connection: pairs numbered publishes with their waiters and
    /// completes those the broker confirmed.
    pub fn observe(&self, event: &Event) {
        let (done, idle) = {
            let mut w = self.lock();
            let done = match event {
                Event::Outgoing(Outgoing::Publish(0)) => w.queued.pop_front(),
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if !w.in_flight.contains_key(pkid) {
                        let alone = w.in_flight.is_empty();
                        let entry = match w.collided.take() {
                            Some((held, entry)) if held == *pkid => Some(entry),
                            other => {
                                w.collided = other;
                                w.queued.pop_front()
                            }
                        };
                        // Timed from when it was handed over alone, not from now: this
                        // event can be read well after rumqttc wrote it (it queues the
                        // events of a batch), and its PUBACK right after, which made
                        // round trips of 4 us under load (a probe, 2026-12-07; the
                        // estimate is the least of a span, so one such figure was it).
                        if let Some(at) = entry.as_ref().and_then(|e| e.3) {
                            w.round_trip.written(*pkid, alone, || at);
                        }
                        w.in_flight
                            .insert(*pkid, entry.unwrap_or(Entry(None, None, 0, None)));
                    }
                    // Otherwise a resend after a reconnection: its waiter is in place.
                    None
                }
                Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                    let entry = w.queued.pop_front().unwrap_or(Entry(None, None, 0, None));
                    w.collided = Some((*pkid, entry));
                    None
                }
                Event::Incoming(
                    Packet::PubAck(PubAck { pkid, .. }) | Packet::PubRec(PubRec { pkid, .. }),
                ) => {
                    let done = w.in_flight.remove(pkid);
                    if let Some(Entry(_, _, bytes, _)) = done {
                        w.largest_confirmed = w.largest_confirmed.max(bytes);
                    }
                    if let Some(rt) = w.round_trip.confirmed(*pkid, Instant::now) {
                        let us = u64::try_from(rt.as_micros()).unwrap_or(u64::MAX).max(1);
                        self.round_trip_us
                            .store(us, std::sync::atomic::Ordering::Relaxed);
                    }
                    done
                }
                _ => None,
            };
            // Told only while a publish waits for it: this runs on the connection's task.
            (done, w.draining && w.idle())
        };
        if idle {
            self.idle.notify_waiters();
        }
        // The function's place is given back with the entry, after its delivery.
        if let Some(Entry(Some(delivery), _place, _, _)) = done {
            delivery.complete();
        }
    }

    /// The output connection failed: rumqttc has moved every unconfirmed publish aside, and
    /// `taken` requests it had not numbered yet (the oldest queued ones, counted in its
    /// event loop's `pending` and what [`crate::mqtt::refusal`] holds back), to resend if
    /// the session resumes.
    pub fn connection_lost(&self, taken: usize) {
        let mut w = self.lock();
        w.taken_at_failure = taken;
        // Its confirmation, if it comes, counts the reconnection too.
        w.round_trip.probe = None;
    }

    /// A function's outputs are confirmed slower than the round trip explains: a full
    /// window's worth took over [`SLOWER`] round trips (see [`RoundTrip`]).
    pub fn confirmations_overdue(&self) {
        self.lock().round_trip.overdue(Instant::now());
    }

    /// The broker's round trip, once measured (see [`windows`]).
    pub fn round_trip(&self) -> Option<Duration> {
        match self
            .round_trip_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// A message rumqttc wrote and forgot (QoS 0) is to be sent again, first of what is
    /// not numbered: it takes the first place in the queue, waited on by nobody. Only
    /// right after [`Publisher::connection_lost`] (see [`crate::mqtt::refusal`]).
    pub fn resend_front(&self, bytes: usize) {
        let mut w = self.lock();
        w.queued.push_front(Entry(None, None, bytes, None));
        w.taken_at_failure += 1;
    }

    /// The broker took a packet of `bytes` that it does not confirm (QoS 0, proven by a
    /// PINGRESP behind it).
    pub fn taken(&self, bytes: usize) {
        let mut w = self.lock();
        w.largest_confirmed = w.largest_confirmed.max(bytes);
    }

    /// The largest packet the broker confirmed.
    pub fn largest_confirmed(&self) -> usize {
        self.lock().largest_confirmed
    }

    /// Takes every publish that `unsendable` (given it and its packet's size) picks out of
    /// `queues` (what is to be resent, in order: rumqttc's `pending`, then what is held
    /// back), and releases what waits on each as if the broker had it: their events were
    /// handled, and the broker will not take these. Returns each one's topic and size.
    /// Only right after [`Publisher::connection_lost`], with every request not yet
    /// numbered in `queues`.
    pub fn drop_unsendable(
        &self,
        queues: [&mut VecDeque<Request>; 2],
        unsendable: impl Fn(&rumqttc::Publish, usize) -> bool,
    ) -> Vec<(String, usize)> {
        let (mut dropped, mut released) = (Vec::new(), Vec::new());
        let mut w = self.lock();
        // Requests not yet numbered pair with the queued waiters, in order.
        let mut unnumbered = 0;
        for queue in queues {
            let mut kept = VecDeque::with_capacity(queue.len());
            for r in queue.drain(..) {
                let p = match r {
                    Request::Publish(p) => p,
                    other => {
                        kept.push_back(other);
                        continue;
                    }
                };
                let bytes = publish_packet_bytes(&p.topic, p.payload.len());
                if !unsendable(&p, bytes) {
                    unnumbered += usize::from(p.pkid == 0);
                    kept.push_back(Request::Publish(p));
                    continue;
                }
                let entry = if p.pkid == 0 {
                    w.taken_at_failure = w.taken_at_failure.saturating_sub(1);
                    w.queued.remove(unnumbered)
                } else {
                    w.in_flight.remove(&p.pkid)
                };
                if let Some(Entry(Some(delivery), _place, _, _)) = entry {
                    released.push(delivery);
                }
                dropped.push((p.topic, bytes));
            }
            *queue = kept;
        }
        drop(w);
        for delivery in released {
            delivery.complete();
        }
        self.dropped
            .fetch_add(dropped.len() as u64, std::sync::atomic::Ordering::Relaxed);
        dropped
    }

    /// What the broker takes, as far as the agent knows.
    pub fn limits(&self) -> &BrokerLimits {
        &self.limit
    }

    /// Messages the broker will not take (over its packet limit, or to a topic it
    /// refuses) that were not sent, or were dropped when it refused them, since start-up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Holds the request queue: nothing more is queued until the guard is dropped (see
    /// [`crate::mqtt::refusal`]).
    pub async fn hold_queue(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.order.clone().lock_owned().await
    }

    /// The output connection is back. If the broker kept the session, rumqttc resends what
    /// it moved aside, in order, and the pairing stands. If not, rumqttc has dropped it:
    /// those waiters are forgotten, so their events are never acknowledged and the broker
    /// redelivers them (when their intake connections resume), and the outputs are made
    /// again. Returns how many outputs were dropped.
    pub fn reconnected(&self, session_present: bool) -> usize {
        let mut w = self.lock();
        let taken = std::mem::take(&mut w.taken_at_failure);
        if session_present {
            return 0;
        }
        let taken = taken.min(w.queued.len());
        let dropped = taken + w.in_flight.len() + usize::from(w.collided.is_some());
        tracing::debug!(
            taken,
            queued = w.queued.len(),
            in_flight = w.in_flight.len(),
            collided = w.collided.is_some(),
            "session lost: forgetting what it held"
        );
        w.queued.drain(..taken);
        w.in_flight.clear();
        w.collided = None;
        dropped
    }

    /// Publishes the broker has not confirmed yet (queued or in flight).
    pub fn unconfirmed(&self) -> usize {
        let w = self.lock();
        w.queued.len() + w.in_flight.len() + usize::from(w.collided.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::mqtt::ack::AckQueue;

    /// A publisher whose request queue nobody reads, and a delivery that counts.
    fn setup() -> (Arc<Publisher>, rumqttc::EventLoop) {
        let opts = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, eventloop) = AsyncClient::new(opts, 16);
        (
            Publisher::new(client, BrokerLimits::new(1 << 20)),
            eventloop,
        )
    }

    /// A delivery of a QoS 1 message waiting on `outputs` publishes, and the acks it
    /// releases.
    pub(crate) fn delivery(
        outputs: usize,
    ) -> (
        Arc<Delivery>,
        mpsc::UnboundedReceiver<crate::mqtt::ack::Ready>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let acks = AckQueue::new(tx);
        let mut p = rumqttc::Publish::new("in", QoS::AtLeastOnce, "x");
        p.pkid = 7;
        let d = Arc::new(Delivery::new(1, acks.register(&p).ticket, acks));
        d.add_holders(outputs);
        d.complete();
        (d, rx)
    }

    /// Queues a QoS 1 output on `p` that `waiter` waits on.
    async fn queue(p: &Publisher, waiter: Waiter) {
        let sent = p.publish("o".into(), QoS::AtLeastOnce, false, vec![], waiter, None);
        assert!(sent.await.is_ok());
    }

    fn out(pkid: u16) -> Event {
        Event::Outgoing(Outgoing::Publish(pkid))
    }

    /// The round trip runs from the hand-over, not from the moment the event that says
    /// rumqttc wrote it is read: rumqttc queues the events of a batch, and under load that
    /// event was read just before its PUBACK, a round trip of 4 µs.
    #[tokio::test]
    async fn an_event_read_late_does_not_shorten_the_round_trip() {
        let (p, _el) = setup();
        let ack = |pkid| Event::Incoming(Packet::PubAck(PubAck::new(pkid)));
        queue(&p, None).await;
        std::thread::sleep(Duration::from_millis(10));
        p.observe(&out(1));
        p.observe(&ack(1));
        let rt = p.round_trip().expect("timed");
        assert!(rt >= Duration::from_millis(10), "{rt:?}");
    }

    #[tokio::test]
    async fn the_round_trip_is_timed_on_a_publish_written_with_nothing_unconfirmed() {
        let (p, _el) = setup();
        let ack = |pkid| Event::Incoming(Packet::PubAck(PubAck::new(pkid)));
        assert_eq!(p.round_trip(), None);
        // Timed from the hand-over: the first was handed over alone, the second not.
        queue(&p, None).await;
        queue(&p, None).await;
        p.observe(&out(1));
        p.observe(&out(2)); // behind it: not timed
        std::thread::sleep(Duration::from_millis(20));
        p.observe(&ack(2));
        assert_eq!(p.round_trip(), None, "2 waited behind 1");
        p.observe(&ack(1));
        let first = p.round_trip().expect("1 went alone");
        assert!(first >= Duration::from_millis(20), "{first:?}");
        // A quicker one lowers it; one confirmed after a lost connection is not timed.
        queue(&p, None).await;
        p.observe(&out(3));
        p.observe(&ack(3));
        let least = p.round_trip().expect("timed");
        assert!(least < first, "{least:?}");
        queue(&p, None).await;
        p.observe(&out(4));
        p.connection_lost(0);
        std::thread::sleep(Duration::from_millis(5));
        p.observe(&ack(4));
        queue(&p, None).await;
        p.observe(&out(5));
        std::thread::sleep(Duration::from_millis(5));
        p.observe(&ack(5));
        assert_eq!(p.round_trip(), Some(least), "the least of the span");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_is_never_alone_waits_once_a_span_to_be_timed() {
        let (p, _el) = setup();
        let ack = |pkid| Event::Incoming(Packet::PubAck(PubAck::new(pkid)));
        queue(&p, None).await;
        queue(&p, None).await;
        p.observe(&out(1));
        p.observe(&out(2));
        p.observe(&ack(1));
        p.round_trip().expect("1 went alone");
        // 2 is unconfirmed, and a span has passed since the last was timed (at a second,
        // so that whatever 3 takes below is quicker, however the tests' threads run).
        let timed = Duration::from_secs(1);
        let span_ago = || Some((timed, Instant::now() - ROUND_TRIP_SPAN));
        p.lock().round_trip.this = span_ago();
        let publish = queue(&p, None);
        tokio::pin!(publish);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut publish)
                .await
                .is_err(),
            "it waits for 2"
        );
        p.observe(&ack(2));
        publish.await;
        p.observe(&out(3));
        p.observe(&ack(3));
        assert!(p.round_trip() < Some(timed), "3 went alone: timed");
        // Not within a span of the last wait; and a broker that keeps one unconfirmed for
        // longer than DRAIN_WAIT holds a publish no longer than that.
        queue(&p, None).await;
        queue(&p, None).await;
        p.observe(&out(4));
        p.observe(&out(5));
        p.observe(&ack(4));
        p.lock().round_trip.this = span_ago();
        let waited = tokio::time::Instant::now();
        queue(&p, None).await;
        assert_eq!(waited.elapsed(), Duration::ZERO, "waited within a span");
        p.lock().round_trip.drained = None;
        let waited = tokio::time::Instant::now();
        queue(&p, None).await;
        assert_eq!(waited.elapsed(), DRAIN_WAIT);
    }

    /// Publish `pkid` written at `start` ms after `t0` and confirmed `took` ms later: the
    /// estimate then.
    fn sample(
        rt: &mut RoundTrip,
        t0: Instant,
        pkid: u16,
        start: u64,
        took: u64,
    ) -> Option<Duration> {
        let ms = Duration::from_millis;
        rt.written(pkid, true, || t0 + ms(start));
        rt.confirmed(pkid, || t0 + ms(start + took))
    }

    #[test]
    fn the_estimate_is_the_least_of_this_span_and_the_one_before() {
        let t0 = Instant::now();
        let span = u64::try_from(ROUND_TRIP_SPAN.as_millis()).expect("ms");
        let ms = Duration::from_millis;
        let mut rt = RoundTrip::default();
        assert_eq!(sample(&mut rt, t0, 1, 0, 100), Some(ms(100)));
        // 150 ms from now on (not twice as slow): the quick one stands while its span is
        // this one or the last.
        assert_eq!(sample(&mut rt, t0, 2, span / 2, 150), Some(ms(100)));
        assert_eq!(sample(&mut rt, t0, 3, span + 100, 150), Some(ms(100)));
        assert_eq!(
            sample(&mut rt, t0, 4, 2 * span + 300, 150),
            Some(ms(150)),
            "its span is over"
        );
        // After a silence of more than a span, the last span is not the one before.
        assert_eq!(sample(&mut rt, t0, 5, 6 * span, 200), Some(ms(200)));
        assert_eq!(sample(&mut rt, t0, 6, 6 * span + 400, 180), Some(ms(180)));
    }

    #[test]
    fn a_link_that_gets_slower_is_seen_by_two_round_trips_in_a_row() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rt = RoundTrip::default();
        assert_eq!(sample(&mut rt, t0, 1, 0, 10), Some(ms(10)));
        assert!(!rt.would_be_due(|| t0 + ms(20)), "within the span");
        // One slow round trip changes nothing, but the next publish is timed at once.
        assert_eq!(sample(&mut rt, t0, 2, 100, 200), Some(ms(10)));
        assert!(rt.would_be_due(|| t0 + ms(301)), "timed again at once");
        assert_eq!(sample(&mut rt, t0, 3, 400, 12), Some(ms(10)), "a quick one");
        assert!(!rt.would_be_due(|| t0 + ms(413)));
        // Two in a row are the new estimate: the least of them.
        assert_eq!(sample(&mut rt, t0, 4, 500, 250), Some(ms(10)));
        assert!(rt.due(t0 + ms(750)), "timed again at once");
        assert_eq!(sample(&mut rt, t0, 5, 800, 200), Some(ms(200)));
        // Quicker ones lower it as before; one under twice it does not count as slower.
        assert_eq!(sample(&mut rt, t0, 6, 1100, 150), Some(ms(150)));
        assert_eq!(sample(&mut rt, t0, 7, 1300, 290), Some(ms(150)));
        assert!(!rt.would_be_due(|| t0 + ms(1600)));
        // Nor under the windows' base round trip, where the windows do not change.
        let mut quick = RoundTrip::default();
        assert_eq!(sample(&mut quick, t0, 1, 0, 1), Some(ms(1)));
        assert_eq!(sample(&mut quick, t0, 2, 10, 15), Some(ms(1)));
        assert!(!quick.would_be_due(|| t0 + ms(30)));
        // A wait that timed nothing (a broker slower than DRAIN_WAIT) is not waited again
        // until a span has passed.
        let mut stuck = RoundTrip::default();
        assert_eq!(sample(&mut stuck, t0, 1, 0, 10), Some(ms(10)));
        assert_eq!(sample(&mut stuck, t0, 2, 100, 200), Some(ms(10)));
        assert!(stuck.due(t0 + ms(400)));
        assert!(!stuck.would_be_due(|| t0 + ms(400) + DRAIN_WAIT));
    }

    #[test]
    fn confirmations_overdue_time_the_next_publish_alone_once_a_span() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rt = RoundTrip::default();
        rt.overdue(t0);
        assert_eq!(sample(&mut rt, t0, 1, 0, 10), Some(ms(10)));
        assert!(
            !rt.would_be_due(|| t0 + ms(100)),
            "nothing to be overdue against before"
        );
        rt.overdue(t0 + ms(100));
        assert!(rt.due(t0 + ms(100)), "at once");
        assert!(!rt.would_be_due(|| t0 + ms(200)), "it waited once");
        rt.overdue(t0 + ms(300));
        assert!(!rt.would_be_due(|| t0 + ms(300)), "at most once a span");
        // A span later (a publish timed alone began a new one meanwhile), again.
        assert_eq!(sample(&mut rt, t0, 2, 10_050, 10), Some(ms(10)));
        assert!(!rt.would_be_due(|| t0 + ms(10_200)));
        rt.overdue(t0 + ms(10_200));
        assert!(rt.would_be_due(|| t0 + ms(10_200)));
        // Not within a span of a wait that gave up: confirmations slower than DRAIN_WAIT.
        let mut slow = RoundTrip::default();
        assert_eq!(sample(&mut slow, t0, 1, 0, 10), Some(ms(10)));
        slow.overdue_held = Some(t0 + ms(50)); // a wait gave up
        slow.overdue(t0 + ms(100));
        assert!(!slow.would_be_due(|| t0 + ms(100)), "a wait gave up");
    }

    /// Four threads publish at once (as the on-demand model's workers do), through a
    /// request queue of 16 that fills up: whether each publish went at once or waited its
    /// turn, the waiters stay in the order of the requests. Each message is told by its
    /// packet's size, which is its waiter's.
    #[test]
    fn publishes_from_many_threads_keep_the_pairing() {
        const PER_THREAD: usize = 500;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (p, mut el) = {
            let _in = rt.enter();
            setup()
        };
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (p, handle) = (p.clone(), rt.handle().clone());
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let payload = vec![0; t * PER_THREAD + i];
                        let sent =
                            p.publish("o".into(), QoS::AtMostOnce, false, payload, None, None);
                        assert!(handle.block_on(sent).is_ok());
                    }
                })
            })
            .collect();
        let mut requests = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while requests.len() < 4 * PER_THREAD {
            assert!(
                Instant::now() < deadline,
                "{} requests came",
                requests.len()
            );
            el.clean();
            requests.extend(el.pending.drain(..).map(|r| match r {
                Request::Publish(p) => publish_packet_bytes(&p.topic, p.payload.len()),
                other => panic!("not a publish: {other:?}"),
            }));
            std::thread::yield_now();
        }
        for t in threads {
            t.join().expect("publisher thread");
        }
        let waiters: Vec<usize> = p.lock().queued.iter().map(|e| e.2).collect();
        assert_eq!(requests.len(), waiters.len());
        assert!(requests == waiters, "a waiter paired with another publish");
        let slow = requests.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert!(slow > 0, "the threads never interleaved: {slow}");
    }

    #[tokio::test]
    async fn a_delivery_completes_when_the_broker_has_its_outputs() {
        let (p, _el) = setup();
        let (d, mut acks) = delivery(2);
        for _ in 0..2 {
            queue(&p, Some(d.clone())).await;
        }
        p.observe(&out(1));
        p.observe(&out(2));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert!(acks.try_recv().is_err(), "one output still unconfirmed");
        // A resend after a reconnection is not a new publish.
        p.observe(&out(2));
        assert_eq!(p.unconfirmed(), 1);
        p.observe(&Event::Incoming(Packet::PubRec(PubRec::new(2))));
        assert_eq!(acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
        assert_eq!(p.unconfirmed(), 0);
    }

    #[tokio::test]
    async fn qos0_and_unwaited_publishes_keep_the_pairing() {
        let (p, _el) = setup();
        let (d, mut acks) = delivery(1);
        assert!(
            p.try_publish("s".into(), QoS::AtMostOnce, false, vec![], None)
                .is_ok()
        );
        assert!(
            p.try_publish("s".into(), QoS::AtLeastOnce, false, vec![], None)
                .is_ok()
        );
        assert!(
            p.try_publish("o".into(), QoS::AtLeastOnce, false, vec![], Some(d))
                .is_ok()
        );
        p.observe(&out(0));
        p.observe(&out(1));
        // Packet id 1 is still in flight: rumqttc holds the next publish back.
        p.observe(&Event::Outgoing(Outgoing::AwaitAck(1)));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert!(
            acks.try_recv().is_err(),
            "the held publish is not confirmed"
        );
        p.observe(&out(1));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert_eq!(acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
    }

    #[tokio::test]
    async fn a_lost_session_drops_what_was_moved_aside_and_a_kept_one_resends_it() {
        let (p, _el) = setup();
        let (d, mut acks) = delivery(1);
        for waiter in [None, Some(d.clone())] {
            queue(&p, waiter).await;
        }
        p.observe(&out(1));
        p.connection_lost(1);
        // Published during the outage: still in rumqttc's queue, not moved aside.
        let (later, mut later_acks) = delivery(1);
        queue(&p, Some(later)).await;
        assert_eq!(
            p.reconnected(false),
            2,
            "the unconfirmed one and the one moved aside"
        );
        p.observe(&out(1));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert_eq!(later_acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
        assert!(
            acks.try_recv().is_err(),
            "a dropped output never confirms its event"
        );
        drop(d);

        // The session resumes: resends keep their waiters, in order.
        let (p, _el) = setup();
        let (d, mut acks) = delivery(2);
        for _ in 0..2 {
            queue(&p, Some(d.clone())).await;
        }
        p.observe(&out(1));
        p.connection_lost(1);
        assert_eq!(p.reconnected(true), 0);
        p.observe(&out(1));
        p.observe(&out(2));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(2))));
        assert_eq!(acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
    }

    #[tokio::test]
    async fn a_functions_place_is_given_back_when_the_broker_has_its_output() {
        let (p, _el) = setup();
        let places = Arc::new(tokio::sync::Semaphore::new(2));
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let place = places
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|all| Place { all, share: None });
            let sent = p.publish("o".into(), qos, false, vec![], None, place);
            assert!(sent.await.is_ok());
        }
        assert_eq!(places.available_permits(), 0, "both held while unconfirmed");
        p.observe(&out(0));
        assert_eq!(places.available_permits(), 1, "QoS 0: once written out");
        p.observe(&out(1));
        assert_eq!(places.available_permits(), 1, "in flight: still held");
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert_eq!(places.available_permits(), 2, "confirmed");
    }

    #[tokio::test]
    async fn a_publish_given_up_while_waiting_for_room_leaves_no_waiter() {
        let opts = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, _el) = AsyncClient::new(opts, 1);
        let p = Publisher::new(client, BrokerLimits::new(1 << 20));
        let (d, mut acks) = delivery(1);
        let first = p.publish("o".into(), QoS::AtLeastOnce, false, vec![], Some(d), None);
        assert!(first.await.is_ok());
        // The request queue (1) is full: this one waits, and is given up.
        let second = p.publish("s".into(), QoS::AtLeastOnce, false, vec![], None, None);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), second);
        assert!(waited.await.is_err());
        assert_eq!(p.unconfirmed(), 1);
        p.observe(&out(1));
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(1))));
        assert_eq!(acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
    }
}

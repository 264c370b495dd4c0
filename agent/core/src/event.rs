//! The event: one MQTT message on its way to one function, and the bookkeeping that
//! acknowledges the message once every function it went to is done with it.
//!
//! Three things are called "event" around here; in this crate's code they are kept apart
//! by name: [`Inbound`] (this module: what the pipeline carries), the guest's view of it
//! (`runtime::GuestEvent`, generated from the WIT) and rumqttc's connection events (always
//! written `rumqttc::Event`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// A message's place in the acknowledgement order: the connection it came on (a
/// generation, counted up at each reconnect) and its place in line on that connection.
/// Plain data; the order itself is the MQTT layer's (`mqtt::ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The connection it arrived on.
    pub generation: u64,
    /// Its place in line there.
    pub seq: u64,
    /// The message's packet id, so that its completion is remembered even after its
    /// connection is gone.
    pub pkid: u16,
    /// Which delivery of it this is ([`Inbound::incarnation`]).
    pub incarnation: u64,
}

/// What releases a message's acknowledgement once every function is done with it. The
/// MQTT layer's acknowledgement order (`mqtt::ack::AckQueue`) implements it, so that the
/// event, and the pipeline that carries it, never name the transport.
pub trait Release: Send + Sync {
    /// Every holder of the message with `ticket` is done with it.
    fn release(&self, ticket: Ticket);

    /// Whether the message with `ticket` is the broker's again: its connection was lost
    /// and a later one resumed the session, so the broker redelivers it (or has).
    /// Handling this copy too would handle it twice.
    fn superseded(&self, _ticket: Ticket) -> bool {
        false
    }
}

/// One message on its way to one function.
#[derive(Debug)]
pub struct Inbound {
    /// Topic name it was published on.
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// Bytes of the body skipped unread, for being over `broker.max_packet_bytes` (then
    /// `payload` is empty); 0 otherwise.
    pub payload_skipped: usize,
    /// Delivery QoS.
    pub qos: u8,
    /// Retained flag.
    pub retain: bool,
    /// Wall-clock receive time, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Monotonic receive time, for queue-wait and end-to-end latency.
    pub received: Instant,
    /// How many functions of this agent it has passed through (0: it came from outside).
    pub hop: u8,
    /// Its packet id on the intake session (QoS 1/2; 0 for QoS 0).
    pub pkid: u16,
    /// The broker's DUP flag: it may have sent this message before.
    pub dup: bool,
    /// [`checksum`] of its topic and payload, to tell a resend from another message on
    /// the same packet id (QoS 1/2; 0 for QoS 0).
    pub checksum: u32,
    /// Which delivery of `pkid` this is: each delivery that is not a resend of one this
    /// run has had on an earlier connection gets a new number ([`next_incarnation`]), and
    /// such resends the same one; 0 for QoS 0.
    pub incarnation: u64,
    /// A resend (DUP=1) whose first copy this run never saw, early enough on its connection
    /// to be one the broker sent before a restart of the agent: the receipts of earlier
    /// runs may answer for it ([`crate::mqtt::ack::RESEND_WINDOW`]).
    pub from_before: bool,
    /// Acknowledges the message once every function is done with it.
    pub delivery: Arc<Delivery>,
}

/// Acknowledgement bookkeeping for one received message, shared by the [`Inbound`]s made
/// from it (one per function whose filters match).
pub struct Delivery {
    remaining: AtomicUsize,
    ticket: Option<Ticket>,
    acks: Arc<dyn Release>,
    /// The places the message holds in its functions' inboxes: given back when the
    /// delivery is dropped, once every holder is done (outputs confirmed included).
    _slots: Vec<Slot>,
    /// Run once every holder is done ([`Delivery::on_finished`]).
    finished: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

/// A function's count of events taken in and not yet settled: waiting, running, or
/// waiting for the broker to confirm their outputs, until every function is done with
/// the message and its acknowledgement is released. Its inbox under backpressure takes
/// no more while `capacity` are unsettled, so that the events a function has taken and
/// the broker has not seen acknowledged stay about one queue (the acknowledgement may
/// still wait in line for an earlier message of another function, or on the wire).
#[derive(Debug, Default)]
pub struct Unsettled {
    count: AtomicUsize,
    /// Signalled when an event settles.
    pub settled: tokio::sync::Notify,
}

impl Unsettled {
    /// Events taken in and not yet settled.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Counts one more event, until the returned slot is dropped.
    pub fn take(self: &Arc<Self>) -> Slot {
        self.take_n(1)
    }

    /// Counts `n` more (bytes, for a budget of bytes), until the returned slot is dropped.
    pub fn take_n(self: &Arc<Self>, n: usize) -> Slot {
        self.count.fetch_add(n, Ordering::AcqRel);
        Slot(self.clone(), n)
    }
}

/// One event's place in [`Unsettled`] (or its bytes), given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Unsettled>, usize);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(self.1, Ordering::AcqRel);
        self.0.settled.notify_one();
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Delivery {
    /// A delivery shared by `functions` functions (at least one), acknowledged through
    /// `ticket` (none for QoS 0) once all of them are done.
    pub fn new(functions: usize, ticket: Option<Ticket>, acks: Arc<dyn Release>) -> Self {
        Self::holding(functions, ticket, acks, Vec::new())
    }

    /// [`Delivery::new`], holding `slots` in its functions' inboxes until it is dropped.
    pub fn holding(
        functions: usize,
        ticket: Option<Ticket>,
        acks: Arc<dyn Release>,
        slots: Vec<Slot>,
    ) -> Self {
        Self {
            remaining: AtomicUsize::new(functions.max(1)),
            ticket,
            acks,
            _slots: slots,
            finished: std::sync::Mutex::default(),
        }
    }

    /// A delivery for one function that needs no acknowledgement (tests, QoS 0).
    pub fn detached(acks: Arc<dyn Release>) -> Self {
        Self::new(1, None, acks)
    }

    /// Whether the broker redelivers this message on a later connection of its session
    /// (see [`Release::superseded`]): a copy not started yet is left to that redelivery.
    pub fn superseded(&self) -> bool {
        self.ticket.is_some_and(|t| self.acks.superseded(t))
    }

    /// Whether the message waits for an acknowledgement (QoS 1/2).
    pub fn needs_ack(&self) -> bool {
        self.ticket.is_some()
    }

    /// Makes completion wait for `n` more holders, each ending with its own
    /// [`Delivery::complete`] (one per output the broker must confirm first). Call it
    /// before this holder's own `complete`.
    pub fn add_holders(&self, n: usize) {
        self.remaining.fetch_add(n, Ordering::AcqRel);
    }

    /// Marks one function as done with the message; the last one releases its
    /// acknowledgement (sent once every earlier message is acknowledged too). A delivery
    /// that is dropped without being completed is never acknowledged, so the broker
    /// redelivers it when the session resumes.
    pub fn complete(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(t) = self.ticket {
                self.acks.release(t);
            }
            let finished =
                std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()));
            for f in finished {
                f();
            }
        }
    }

    /// Runs `f` once every holder is done with the message (its outputs confirmed by the
    /// broker, its acknowledgement released); never if the delivery is dropped before
    /// that. Call it before this holder's own [`Delivery::complete`].
    pub fn on_finished(&self, f: impl FnOnce() + Send + 'static) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }
}

/// A message a function asked to publish; sent only if its call returns `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Topic name.
    pub topic: String,
    /// Body.
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// A checksum of a message, to tell a resend of it from another message with the same
/// packet id: CRC-32 of its topic, a NUL, and its payload.
pub fn checksum(topic: &str, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(payload);
    h.finalize()
}

/// The first incarnation of this run of the agent: its start time in ms times 2^20, so
/// larger than any of an earlier run (with a million deliveries per millisecond of its
/// life to spare) while the clock only goes forward. For a clock that went back, each
/// function's store raises the count above its receipts ([`no_incarnation_below`]).
fn incarnations() -> &'static (u64, std::sync::atomic::AtomicU64) {
    static NEXT: std::sync::OnceLock<(u64, std::sync::atomic::AtomicU64)> =
        std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let base = crate::clock::now_ms().max(1) << 20;
        (base, std::sync::atomic::AtomicU64::new(base))
    })
}

/// No incarnation of this run of the agent is smaller; every one of an earlier run is,
/// unless the clock went back (a state namespace's own life then takes over).
pub fn this_run() -> u64 {
    incarnations().0
}

/// Makes every later incarnation at least `floor`: above the receipts of earlier runs
/// when the clock is behind them.
pub fn no_incarnation_below(floor: u64) {
    incarnations().1.fetch_max(floor, Ordering::AcqRel);
}

/// A new incarnation for a message's first delivery (see [`Inbound::incarnation`]).
pub fn next_incarnation() -> u64 {
    incarnations().1.fetch_add(1, Ordering::AcqRel)
}

/// Converts a QoS number (0-2, validated earlier) to rumqttc's type.
pub fn mqtt_qos(n: u8) -> rumqttc::QoS {
    match n {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// The size of an MQTT 3.1.1 PUBLISH packet carrying `payload_len` bytes on `topic`, at
/// most: fixed header (5), topic length and name, packet id (2), payload. Nothing the agent
/// sends may exceed `broker.max_packet_bytes`: the client would refuse it and drop the
/// connection.
pub fn publish_packet_bytes(topic: &str, payload_len: usize) -> usize {
    5 + 2 + topic.len() + 2 + payload_len
}

/// What the broker takes from the agent: packets up to `broker.max_packet_bytes`, less
/// once the broker refused a smaller one, and any topic but those it refused. Over MQTT
/// 3.1.1 a broker cannot say why it refuses a message (one over its own size limit, or to
/// a topic its ACL or policy denies): it closes the connection, which the output
/// connection learns from ([`crate::mqtt::refusal`]). Shared by the clones; one per agent,
/// for its one broker, for as long as it runs.
#[derive(Clone, Debug)]
pub struct BrokerLimits {
    configured: usize,
    /// The smallest packet the broker refused (`usize::MAX`: none yet).
    refused: Arc<AtomicUsize>,
    /// Topics the broker refused (read on every publish: behind a flag that says whether
    /// there are any).
    refused_topics: Arc<(
        std::sync::atomic::AtomicBool,
        std::sync::RwLock<Vec<String>>,
    )>,
}

impl BrokerLimits {
    /// `broker.max_packet_bytes`, before the broker has refused anything.
    pub fn new(configured: usize) -> Self {
        Self {
            configured,
            refused: Arc::new(AtomicUsize::new(usize::MAX)),
            refused_topics: Arc::default(),
        }
    }

    /// The largest packet the agent sends now.
    pub fn max_packet_bytes(&self) -> usize {
        self.configured
            .min(self.refused.load(Ordering::Relaxed).saturating_sub(1))
    }

    /// Records that the broker refused a packet of `packet` bytes.
    pub fn refused_size(&self, packet: usize) {
        self.refused.fetch_min(packet, Ordering::Relaxed);
    }

    /// Records that the broker refused a message to `topic`.
    pub fn refused_topic(&self, topic: &str) {
        let (any, topics) = &*self.refused_topics;
        let mut topics = topics.write().unwrap_or_else(|p| p.into_inner());
        if !topics.iter().any(|t| t == topic) {
            topics.push(topic.to_owned());
        }
        any.store(true, Ordering::Release);
    }

    /// Why a message of `packet` bytes ([`publish_packet_bytes`]) to `topic` may not be
    /// sent, if it may not.
    pub fn over(&self, topic: &str, packet: usize) -> Option<String> {
        let refused = self.refused.load(Ordering::Relaxed);
        if packet >= refused {
            return Some(format!(
                "message of {packet} bytes with its topic is too large for the broker: it \
                 closed the connection on one of {refused} bytes (set broker.max_packet_bytes \
                 to the broker's limit)"
            ));
        }
        if packet > self.configured {
            return Some(format!(
                "message of {packet} bytes with its topic is over broker.max_packet_bytes ({})",
                self.configured
            ));
        }
        let (any, topics) = &*self.refused_topics;
        if any.load(Ordering::Acquire)
            && topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t == topic)
        {
            let topic = crate::topic::shown(topic);
            return Some(format!(
                "the broker refuses messages to `{topic}`: it closed the connection on one \
                 each time (its ACL or policy does not let this client publish there; its log \
                 says why). Refused until the agent restarts"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Released(Mutex<Vec<Ticket>>);

    impl Release for Released {
        fn release(&self, ticket: Ticket) {
            self.0.lock().unwrap().push(ticket);
        }
    }

    #[test]
    fn a_delivery_releases_its_ack_when_all_are_done_and_its_places_when_dropped() {
        let acks = Arc::new(Released::default());
        let unsettled = Arc::new(Unsettled::default());
        let ticket = Ticket {
            generation: 0,
            seq: 7,
            pkid: 7,
            incarnation: 1,
        };
        let d = Delivery::holding(
            2,
            Some(ticket),
            acks.clone(),
            vec![unsettled.take(), unsettled.take()],
        );
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        d.on_finished(move || {
            f.fetch_add(1, Ordering::AcqRel);
        });
        d.complete();
        assert!(acks.0.lock().unwrap().is_empty(), "one function still runs");
        assert_eq!(finished.load(Ordering::Acquire), 0);
        d.complete();
        assert_eq!(*acks.0.lock().unwrap(), [ticket]);
        assert_eq!(finished.load(Ordering::Acquire), 1, "finished once");
        // A delivery dropped before every holder is done never finishes.
        let f = finished.clone();
        let unfinished = Delivery::new(2, Some(ticket), acks.clone());
        unfinished.on_finished(move || {
            f.fetch_add(1, Ordering::AcqRel);
        });
        unfinished.complete();
        drop(unfinished);
        assert_eq!(finished.load(Ordering::Acquire), 1);
        assert_eq!(
            unsettled.count(),
            2,
            "places are held while the delivery lives"
        );
        drop(d);
        assert_eq!(unsettled.count(), 0, "and given back when it settles");
    }
}

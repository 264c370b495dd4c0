//! Acknowledgements in the order messages arrived. Pure ordering logic: the connection
//! sends what leaves here.
//!
//! MQTT requires a client to acknowledge QoS 1/2 messages in the order it received them
//! (3.1.1 section 4.6; rumqttd drops a client that does not). Functions finish events in
//! any order, so finished messages wait here until every earlier one is finished too.
//!
//! Packet ids belong to one connection. After a reconnect the broker redelivers what was
//! not acknowledged, so acknowledgements still pending from the old connection are
//! forgotten (their messages will be handled again: at-least-once), and so are those
//! already released but not yet handed to the client: sent on the new connection, an old
//! packet id could settle another message. Once a new connection resumes the session,
//! the old connection's messages not started yet are superseded: the broker redelivers
//! them, and that copy is the one handled.
//!
//! A resend (DUP=1) of a message this run has already finished (every function done, its
//! outputs confirmed, its state on disk) is acknowledged at once and handed to no
//! function: it is the broker that missed the acknowledgement, not the agent the work.
//! It is recognised by packet id, delivery (see `Inbound::incarnation`) and checksum.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttc::{Publish, QoS};
use tokio::sync::{Notify, mpsc};

pub use crate::event::Ticket;

/// Messages an intake holds unacknowledged (taken, not yet released in order) before it
/// reads no more ([`AckQueue::has_room`]). Bounds how many messages whose effects are
/// committed a crash can leave unacknowledged, which bounds the receipts that may answer
/// the broker's resends after a restart ([`crate::state::REPLAY_WINDOW`]). Above what a
/// function with the default `queue_capacity` (64) holds at most: its queue, sixteen
/// queues of events waiting only for a flush, and up to 960 waiting for a distant
/// broker's confirmations (docs/configuration.md); reached with a larger queue.
pub const MAX_UNACKED: usize = 4096;

/// How many messages from the start of a connection that resumes a session may be resends
/// of messages the broker sent before a restart of the agent: it resends what it had not
/// had acknowledged first, in order, and of those the agent can have handled only the
/// [`MAX_UNACKED`] after the acknowledgements it had released (which may have been lost
/// with it). A later resend (DUP=1) whose packet id this run has not had is a message the
/// broker marked so without the agent having handled it: Mosquitto 2.0.11 marks DUP=1 on
/// thousands of queued messages after a reconnect, and with its stream of one payload a
/// probe's counter stopped at the packet ids' wrap after two restarts (2026-12-08),
/// answered from the first lap's receipts.
pub const RESEND_WINDOW: u64 = 2 * MAX_UNACKED as u64;

struct Pending {
    ack: Publish,
    done: bool,
}

/// What this run knows of a packet id's last first delivery (DUP=0) in this session.
#[derive(Clone, Copy, Default)]
struct Delivered {
    /// 0: none (no incarnation is 0).
    incarnation: u64,
    /// [`crate::event::checksum`] of its topic and payload.
    checksum: u32,
    /// Every function is done with it and its outputs are confirmed.
    finished: bool,
    /// The connection it came on: a DUP=1 message on the same connection is not its
    /// resend (a broker resends only on a new connection of the session).
    generation: u64,
}

/// A message's place in line, and what this run knows of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    /// Its acknowledgement's place in line (`None` for QoS 0).
    pub ticket: Option<Ticket>,
    /// [`crate::event::checksum`] of its topic and payload (0 for QoS 0).
    pub checksum: u32,
    /// A resend of a message this run has finished: acknowledge it, handle it no more.
    pub finished: bool,
    /// A resend of a message the broker may have sent before this run
    /// ([`crate::event::Inbound::from_before`]).
    pub from_before: bool,
}

impl Registered {
    /// Which delivery it is (see `Inbound::incarnation`; 0 for QoS 0).
    pub fn incarnation(&self) -> u64 {
        self.ticket.map_or(0, |t| t.incarnation)
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    /// Sequence number of `pending[0]`.
    head: u64,
    /// QoS 1/2 messages taken on the current connection ([`RESEND_WINDOW`]).
    taken: u64,
    pending: VecDeque<Pending>,
    /// Each packet id's last first delivery (DUP=0) in this session, for its resends to
    /// share its incarnation (see `Inbound::incarnation`) and to be recognised once it is
    /// finished. Kept after the message is acknowledged: the acknowledgement may never
    /// reach the broker (a restarting broker resends hundreds), and only a new message on
    /// the id (DUP=0) proves it did. Indexed by packet id, grown to the largest seen:
    /// 16 bytes an id, 1 MiB once a broker has used all 65,535 (a hash map of the
    /// incarnations alone took 2.1 MiB).
    delivered: Vec<Delivered>,
}

impl State {
    /// The packet id's entry, if this session has one.
    fn delivered(&mut self, pkid: u16) -> Option<&mut Delivered> {
        self.delivered
            .get_mut(usize::from(pkid))
            .filter(|d| d.incarnation != 0)
    }

    fn set_delivered(&mut self, pkid: u16, d: Delivered) {
        let i = usize::from(pkid);
        if self.delivered.len() <= i {
            self.delivered.resize(i + 1, Delivered::default());
        }
        self.delivered[i] = d;
    }
}

/// An acknowledgement released in order, and the connection it belongs to.
#[derive(Debug)]
pub struct Ready {
    /// The connection (see [`AckQueue::generation`]); the ack is void on any other.
    pub generation: u64,
    /// The acknowledgement (packet id and QoS).
    pub ack: Publish,
}

/// Orders acknowledgements; ready ones go to a channel drained by the connection's client.
pub struct AckQueue {
    state: Mutex<State>,
    ready: mpsc::UnboundedSender<Ready>,
    /// The current connection's generation, for whoever sends what is ready.
    generation: Arc<AtomicU64>,
    /// The first connection of the current session (the last one the broker did not
    /// resume): messages of earlier connections were forgotten with their session.
    /// Atomic, like `resumed_at`, so that workers ask about every event without the lock.
    session_from: AtomicU64,
    /// The last connection that resumed the session: messages of the session's earlier
    /// connections are redelivered by the broker.
    resumed_at: AtomicU64,
    /// Told when acknowledgements leave the line ([`AckQueue::room`]).
    freed: Notify,
    /// `pending`'s length, kept beside it for [`AckQueue::has_room`], asked before every
    /// message is taken: without the lock.
    unacked: std::sync::atomic::AtomicUsize,
}

impl crate::event::Release for AckQueue {
    fn release(&self, ticket: Ticket) {
        self.done(ticket);
    }

    fn superseded(&self, ticket: Ticket) -> bool {
        ticket.generation < self.resumed_at.load(Ordering::Acquire)
            && ticket.generation >= self.session_from.load(Ordering::Acquire)
    }
}

impl AckQueue {
    /// A queue sending ready acknowledgements to `ready`.
    pub fn new(ready: mpsc::UnboundedSender<Ready>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            ready,
            generation: Arc::default(),
            session_from: AtomicU64::new(0),
            resumed_at: AtomicU64::new(0),
            freed: Notify::new(),
            unacked: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Whether fewer than [`MAX_UNACKED`] messages wait for their acknowledgements.
    pub fn has_room(&self) -> bool {
        self.unacked.load(Ordering::Acquire) < MAX_UNACKED
    }

    /// Completes once [`AckQueue::has_room`].
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }

    /// The current connection's generation, kept up to date: an acknowledgement
    /// ([`Ready`]) of another generation must not be sent.
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place in line for `publish` (no ticket for QoS 0, which needs no ack), and
    /// says which delivery it is: a first delivery (DUP=0) gets a new incarnation, a resend
    /// (DUP=1) that of the last first delivery of its packet id in this run, else 0; and
    /// whether it is a resend of a message this run has finished.
    pub fn register(&self, publish: &Publish) -> Registered {
        if publish.qos == QoS::AtMostOnce {
            return Registered {
                ticket: None,
                checksum: 0,
                finished: false,
                from_before: false,
            };
        }
        // The ack needs only the packet id and QoS: do not keep the payload twice.
        let mut ack = Publish::new("", publish.qos, Vec::new());
        ack.pkid = publish.pkid;
        let checksum = crate::event::checksum(&publish.topic, &publish.payload);
        let mut s = self.lock();
        let early = s.taken < RESEND_WINDOW;
        s.taken += 1;
        let generation = s.generation;
        let resent = match s.delivered(publish.pkid) {
            Some(d) if publish.dup && d.generation < generation => Some(*d),
            _ => None,
        };
        let (incarnation, finished, from_before) = match resent {
            // A resend of a delivery of this run, on an earlier connection.
            Some(d) => (d.incarnation, d.finished && d.checksum == checksum, false),
            // Anything else is a new delivery: its own number, for its receipt and its
            // resends. A resend (DUP=1) whose first copy this run did not have may be of
            // a message an earlier run handled, if it comes early enough.
            None => {
                let incarnation = crate::event::next_incarnation();
                s.set_delivered(
                    publish.pkid,
                    Delivered {
                        incarnation,
                        checksum,
                        finished: false,
                        generation,
                    },
                );
                (incarnation, false, publish.dup && early)
            }
        };
        let seq = s.head + s.pending.len() as u64;
        s.pending.push_back(Pending { ack, done: false });
        self.unacked.store(s.pending.len(), Ordering::Release);
        let ticket = Ticket {
            generation: s.generation,
            seq,
            pkid: publish.pkid,
            incarnation,
        };
        Registered {
            ticket: Some(ticket),
            checksum,
            finished,
            from_before,
        }
    }

    /// Marks a message as finished and releases every acknowledgement now in order.
    pub fn done(&self, ticket: Ticket) {
        let mut s = self.lock();
        // Remembered even when its connection is gone: the broker resends it, and the
        // resend needs only an acknowledgement.
        if let Some(d) = s.delivered(ticket.pkid)
            && d.incarnation == ticket.incarnation
        {
            d.finished = true;
        }
        if ticket.generation != s.generation || ticket.seq < s.head {
            return;
        }
        let Ok(i) = usize::try_from(ticket.seq - s.head) else {
            return;
        };
        if let Some(p) = s.pending.get_mut(i) {
            p.done = true;
        }
        let before = s.pending.len();
        while s.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = s.pending.pop_front() {
                s.head += 1;
                // The receiver only goes away at shutdown, when redelivery is right.
                let _ = self.ready.send(Ready {
                    generation: s.generation,
                    ack: p.ack,
                });
            }
        }
        if s.pending.len() < before {
            self.unacked.store(s.pending.len(), Ordering::Release);
            self.freed.notify_waiters();
        }
    }

    /// The connection is lost: forget its pending acknowledgements, and void those
    /// released but not sent yet (the broker resends their messages).
    pub fn disconnected(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.head += s.pending.len() as u64;
        s.pending.clear();
        self.unacked.store(0, Ordering::Release);
        s.taken = 0;
        self.generation.store(s.generation, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// A new connection: as [`AckQueue::disconnected`] (in case the loss went unseen).
    /// If the broker did not keep the session, packet ids start over, and the messages
    /// not acknowledged are forgotten too.
    /// Messages of the session's earlier connections are then superseded
    /// ([`crate::event::Release::superseded`]).
    pub fn reset(&self, session_present: bool) {
        self.disconnected();
        let mut s = self.lock();
        if session_present {
            self.resumed_at.store(s.generation, Ordering::Release);
        } else {
            s.delivered.clear();
            self.session_from.store(s.generation, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, "x");
        p.pkid = pkid;
        p
    }

    #[test]
    fn an_ack_released_before_the_connection_is_lost_is_marked_void() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let t1 = q.register(&publish(1)).ticket.expect("ticket");
        q.done(t1);
        let generation = q.generation();
        let before = generation.load(Ordering::Acquire);
        q.disconnected();
        let released = rx.try_recv().expect("released before the loss");
        assert_eq!(released.generation, before);
        assert_ne!(
            released.generation,
            generation.load(Ordering::Acquire),
            "an ack released before the loss is marked void"
        );
    }

    #[test]
    fn acks_leave_in_arrival_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let t: Vec<Ticket> = (1..=3)
            .filter_map(|i| q.register(&publish(i)).ticket)
            .collect();
        q.done(t[2]);
        q.done(t[1]);
        assert!(rx.try_recv().is_err(), "nothing before the first is done");
        q.done(t[0]);
        let order: Vec<u16> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.ack.pkid)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    /// The intake reads no more while [`MAX_UNACKED`] messages wait for their
    /// acknowledgements, and reads on once the first leaves the line.
    #[tokio::test]
    async fn no_room_at_max_unacked_until_the_first_leaves() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let tickets: Vec<Ticket> = (0..MAX_UNACKED)
            .filter_map(|i| q.register(&publish(u16::try_from(i + 1).unwrap())).ticket)
            .collect();
        assert!(!q.has_room());
        let room = tokio::spawn({
            let q = q.clone();
            async move { q.room().await }
        });
        tokio::task::yield_now().await;
        q.done(tickets[1]);
        tokio::task::yield_now().await;
        assert!(!room.is_finished(), "the second alone leaves nothing");
        q.done(tickets[0]);
        tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("room once the first two leave")
            .unwrap();
        assert!(q.has_room());
    }

    #[test]
    fn qos0_needs_no_ticket() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let r = q.register(&Publish::new("t", QoS::AtMostOnce, "x"));
        assert_eq!((r.ticket, r.incarnation(), r.finished), (None, 0, false));
    }

    #[test]
    fn reconnect_forgets_old_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let old = q.register(&publish(1)).ticket.expect("ticket");
        q.reset(true);
        let new = q.register(&publish(1)).ticket.expect("ticket");
        q.done(old);
        assert!(rx.try_recv().is_err(), "a stale ack must not be sent");
        q.done(new);
        assert_eq!(rx.try_recv().map(|r| r.ack.pkid).ok(), Some(1));
    }

    #[test]
    fn a_resumed_session_supersedes_the_old_connections_messages_and_a_lost_one_does_not() {
        use crate::event::Release;
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let first = q.register(&publish(1)).ticket.expect("ticket");
        q.disconnected();
        assert!(
            !q.superseded(first),
            "not before the broker says it kept the session"
        );
        q.reset(false);
        assert!(
            !q.superseded(first),
            "a lost session redelivers nothing: handle it"
        );
        let second = q.register(&publish(1)).ticket.expect("ticket");
        q.reset(true);
        assert!(q.superseded(second), "the broker redelivers it");
        assert!(!q.superseded(first), "from before the lost session");
        let third = q.register(&publish(2)).ticket.expect("ticket");
        assert!(!q.superseded(third), "the current connection's");
    }

    #[test]
    fn a_resend_shares_its_first_delivery_s_incarnation() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let mut resend = publish(1);
        resend.dup = true;
        let unseen = q.register(&resend);
        assert!(
            unseen.from_before && unseen.incarnation() != 0,
            "first copy never seen: its own number, and earlier runs' receipts may answer"
        );
        let first = q.register(&publish(1)).incarnation();
        assert!(first > unseen.incarnation());
        q.reset(true);
        let again = q.register(&resend).incarnation();
        assert_eq!(again, first, "the resend of an unacknowledged message");
        let r = q.register(&publish(1));
        let other = r.incarnation();
        assert!(other > first, "another message on the id");
        q.done(r.ticket.expect("ticket"));
        q.reset(true);
        assert_eq!(
            q.register(&resend).incarnation(),
            other,
            "acknowledged, and still its resends' on the next connection"
        );
        q.reset(false);
        let forgotten = q.register(&resend);
        assert!(
            forgotten.from_before && forgotten.incarnation() > other,
            "a lost session forgets"
        );
    }

    /// A broker resends only on a new connection of the session, and what it had not had
    /// acknowledged first: a DUP=1 message later than [`RESEND_WINDOW`] into a connection,
    /// or on the connection of the id's last delivery, is a new one (Mosquitto marks DUP=1
    /// on thousands of queued messages after a reconnect; a probe's stream of one payload
    /// was answered from the receipts of the packet ids' first lap).
    #[test]
    fn a_resend_comes_early_on_a_later_connection_or_is_a_new_message() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let resend = |pkid| {
            let mut p = publish(pkid);
            p.dup = true;
            p
        };
        q.reset(true);
        assert!(q.register(&resend(1)).from_before, "early");
        for pkid in 2..=u16::try_from(RESEND_WINDOW).unwrap() {
            q.register(&publish(pkid));
        }
        let late = q.register(&resend(60_000));
        assert!(!late.from_before && !late.finished, "late: a new message");
        // The same id again, DUP=1, on the same connection: not a resend of it.
        let first = q.register(&publish(7));
        q.done(first.ticket.expect("ticket"));
        let again = q.register(&resend(7));
        assert!(!again.finished && again.incarnation() > first.incarnation());
    }

    #[test]
    fn a_resend_of_a_finished_message_is_known_and_of_an_unfinished_or_other_one_is_not() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let resend = |pkid, payload: &str| {
            let mut p = Publish::new("t", QoS::AtLeastOnce, payload.to_string());
            p.pkid = pkid;
            p.dup = true;
            p
        };
        let first = q.register(&publish(1));
        q.register(&publish(2)); // never done
        // Finished after its connection was lost (its ack is void), before the resend.
        q.disconnected();
        q.done(first.ticket.expect("ticket"));
        q.reset(true);
        let again = q.register(&resend(1, "x"));
        assert!(
            again.finished,
            "the broker missed the ack; the work is done"
        );
        assert!(
            !q.register(&resend(2, "x")).finished,
            "not finished yet: it is handled"
        );
        assert!(
            !q.register(&resend(1, "y")).finished,
            "another message on a reused packet id (its checksum differs)"
        );
        let last = q.register(&publish(u16::MAX));
        q.done(last.ticket.expect("ticket"));
        q.reset(true);
        assert!(
            q.register(&resend(u16::MAX, "x")).finished,
            "the highest packet id"
        );
        q.reset(false);
        assert!(
            !q.register(&resend(1, "x")).finished,
            "a lost session forgets"
        );
    }
}

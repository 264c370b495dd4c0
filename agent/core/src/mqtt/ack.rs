//! Acknowledgements in the order messages arrived. Pure ordering logic: the connection
//! sends what leaves here.
//!
//! MQTT requires a client to acknowledge QoS 1/2 messages in the order it received them
//! (3.1.1 section 4.6; rumqttd drops a client that does not). Functions finish events in
//! any order, so finished messages wait here until every earlier one is finished too.
//!
//! Packet ids belong to a session. When the broker kept the session across a reconnect
//! (CONNACK with session present), the acknowledgements still due are kept too: the broker
//! resends those messages (DUP=1, same packet id), and a resend of a message still in the
//! pipeline is dropped here rather than handled twice; its acknowledgement goes out on the
//! new connection when it is done. Only then, though: an acknowledgement from before a
//! reconnect goes out only once a resend with the same packet id, topic and payload has
//! shown that the id still names that message (a broker restored from its database may
//! have numbered its messages anew, and the acknowledgement would settle another one). Acknowledgements sent shortly before a connection broke
//! may never have reached the broker (they were in a socket buffer, or queued while the
//! connection was already gone): a resend of such a message (same packet id, same topic and
//! payload checksum) is acknowledged again at once and not handled again. When the broker
//! did not keep the session, all of this is forgotten: it will not resend anything, and
//! packet ids mean nothing any more.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

pub use crate::event::Ticket;

/// Acknowledgements sent that are remembered, in case a connection breaks before the broker
/// had them: more than can be in flight (the broker's in-flight window, a function's queue
/// and what its intake had read), far fewer than packet ids (a broker that numbers its
/// messages in turn, as Mosquitto does, reuses one only after 65,535 others).
const REMEMBERED: usize = 1024;

struct Pending {
    ack: Publish,
    /// [`crate::event::checksum`] of the message.
    checksum: u32,
    done: bool,
    /// Kept across a reconnect: the broker will resend the message.
    resend_due: bool,
    /// The broker gave the packet id to another message: the acknowledgement must not
    /// go out (it would acknowledge the other one).
    void: bool,
}

/// A resend of a message that is still in the pipeline, from before a reconnect: its
/// acknowledgement will go out when it is done, so the resend is not handled again.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyHeld;

#[derive(Default)]
struct State {
    generation: u64,
    /// Sequence number of `pending[0]`.
    head: u64,
    pending: VecDeque<Pending>,
    /// The last acknowledgements sent in this session, which the broker may not have had
    /// when a connection broke (or which crossed its resend on the new one): packet id to
    /// checksum, and the ids in the order sent (to forget the oldest).
    recent: HashMap<u16, u32>,
    recent_order: VecDeque<u16>,
}

/// Orders acknowledgements; ready ones go to a channel drained by the connection's client.
pub struct AckQueue {
    state: Mutex<State>,
    ready: mpsc::UnboundedSender<Publish>,
}

impl crate::event::Release for AckQueue {
    fn release(&self, ticket: Ticket) {
        self.done(ticket);
    }
}

impl AckQueue {
    /// A queue sending ready acknowledgements to `ready`.
    pub fn new(ready: mpsc::UnboundedSender<Publish>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            ready,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place in line for `publish`; `None` for QoS 0, which needs no ack.
    ///
    /// # Errors
    /// [`AlreadyHeld`] for a resend (DUP=1) of a message from before a reconnect that is
    /// still in the pipeline: drop it.
    pub fn register(&self, publish: &Publish) -> Result<Option<Ticket>, AlreadyHeld> {
        if publish.qos == QoS::AtMostOnce {
            return Ok(None);
        }
        let checksum = crate::event::checksum(&publish.topic, &publish.payload);
        let mut s = self.lock();
        if let Some(p) = s
            .pending
            .iter_mut()
            .find(|p| p.resend_due && !p.void && p.ack.pkid == publish.pkid)
        {
            // Only the same message: a broker restored from its database may number the
            // messages it had queued anew, and mark them DUP too.
            if publish.dup && p.checksum == checksum {
                p.resend_due = false;
                return Err(AlreadyHeld);
            }
            // Another message with the id: the broker had settled the old one some other
            // way (expiry, a limit, a restore). Its acknowledgement must not go out.
            p.void = true;
        }
        // A resend of a message whose acknowledgement was sent (or held back, below) and
        // perhaps never reached the broker? Any other message with the id means the
        // broker has settled the old one.
        let acked_before = match s.recent.remove(&publish.pkid) {
            Some(c) => publish.dup && c == checksum,
            None => false,
        };
        // The ack needs only the packet id and QoS: do not keep the payload twice.
        let mut ack = Publish::new("", publish.qos, Vec::new());
        ack.pkid = publish.pkid;
        let seq = s.head + s.pending.len() as u64;
        s.pending.push_back(Pending {
            ack,
            checksum,
            done: acked_before,
            resend_due: false,
            void: false,
        });
        if acked_before {
            // Handled and acknowledged before the reconnect, and the broker never had the
            // acknowledgement: acknowledge it again, in its place in line.
            self.release_ready(&mut s);
            return Err(AlreadyHeld);
        }
        Ok(Some(Ticket {
            generation: s.generation,
            seq,
        }))
    }

    /// Marks a message as finished and releases every acknowledgement now in order.
    pub fn done(&self, ticket: Ticket) {
        let mut s = self.lock();
        if ticket.generation != s.generation || ticket.seq < s.head {
            return;
        }
        let Ok(i) = usize::try_from(ticket.seq - s.head) else {
            return;
        };
        if let Some(p) = s.pending.get_mut(i) {
            p.done = true;
        }
        self.release_ready(&mut s);
    }

    /// Sends the acknowledgements at the head of the line that are done.
    fn release_ready(&self, s: &mut State) {
        while s.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = s.pending.pop_front() {
                s.head += 1;
                if p.void {
                    continue;
                }
                if s.recent_order.len() == REMEMBERED
                    && let Some(old) = s.recent_order.pop_front()
                {
                    s.recent.remove(&old);
                }
                s.recent_order.push_back(p.ack.pkid);
                s.recent.insert(p.ack.pkid, p.checksum);
                // From before a reconnect and not resent yet: the broker may have given the
                // id to another message (Mosquitto does, restored from its database), and
                // this acknowledgement would settle that one unseen. It goes out when the
                // resend comes (as for one sent before the connection broke, above).
                if !p.resend_due {
                    // The receiver only goes away at shutdown, when redelivery is right.
                    let _ = self.ready.send(p.ack);
                }
            }
        }
    }

    /// A new connection. If the broker kept the session (`session_present`), the
    /// acknowledgements still due are kept, and the resends of their messages expected;
    /// otherwise they are forgotten.
    pub fn reset(&self, session_present: bool) {
        let mut s = self.lock();
        if session_present {
            for p in &mut s.pending {
                p.resend_due = true;
            }
            return;
        }
        s.generation += 1;
        s.head += s.pending.len() as u64;
        s.pending.clear();
        s.recent.clear();
        s.recent_order.clear();
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
    fn acks_leave_in_arrival_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let t: Vec<Ticket> = (1..=3)
            .filter_map(|i| q.register(&publish(i)).ok().flatten())
            .collect();
        q.done(t[2]);
        q.done(t[1]);
        assert!(rx.try_recv().is_err(), "nothing before the first is done");
        q.done(t[0]);
        let order: Vec<u16> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| p.pkid)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn qos0_needs_no_ticket() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        assert_eq!(
            q.register(&Publish::new("t", QoS::AtMostOnce, "x")),
            Ok(None)
        );
    }

    fn ticket(q: &AckQueue, p: &Publish) -> Ticket {
        q.register(p).ok().flatten().expect("a ticket")
    }

    fn resend(pkid: u16) -> Publish {
        let mut p = publish(pkid);
        p.dup = true;
        p
    }

    #[test]
    fn a_lost_session_forgets_old_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let old = ticket(&q, &publish(1));
        q.reset(false);
        let new = ticket(&q, &publish(1));
        q.done(old);
        assert!(rx.try_recv().is_err(), "a stale ack must not be sent");
        q.done(new);
        assert_eq!(rx.try_recv().map(|p| p.pkid).ok(), Some(1));
    }

    #[test]
    fn a_kept_session_keeps_the_acks_due_and_drops_the_resends() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let (a, b) = (ticket(&q, &publish(1)), ticket(&q, &publish(2)));
        q.reset(true);
        // The broker resends both; they are still in the pipeline.
        assert_eq!(q.register(&resend(1)), Err(AlreadyHeld));
        assert_eq!(q.register(&resend(2)), Err(AlreadyHeld));
        let c = ticket(&q, &publish(3));
        q.done(c);
        q.done(b);
        q.done(a);
        let sent: Vec<u16> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| p.pkid)
            .collect();
        assert_eq!(
            sent,
            [1, 2, 3],
            "the old acks go out on the new connection, in order"
        );
    }

    #[test]
    fn a_resend_of_a_message_acknowledged_before_the_reconnect_is_acknowledged_again() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let a = ticket(&q, &publish(1));
        q.done(a);
        assert_eq!(rx.try_recv().map(|p| p.pkid).ok(), Some(1));
        q.reset(true);
        // The broker never had that ack: it resends the message.
        assert_eq!(q.register(&resend(1)), Err(AlreadyHeld));
        assert_eq!(
            rx.try_recv().map(|p| p.pkid).ok(),
            Some(1),
            "acknowledged again"
        );
        // Another message that happens to reuse the id, with other content, is handled.
        let mut other = resend(1);
        other.payload = "y".into();
        q.reset(true);
        assert!(matches!(q.register(&other), Ok(Some(_))));
    }

    #[test]
    fn an_ack_from_before_a_reconnect_waits_for_the_resend() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let a = ticket(&q, &publish(1));
        q.reset(true);
        q.done(a);
        assert!(
            rx.try_recv().is_err(),
            "the id may name another message now"
        );
        assert_eq!(q.register(&resend(1)), Err(AlreadyHeld));
        assert_eq!(
            rx.try_recv().map(|p| p.pkid).ok(),
            Some(1),
            "the resend shows it does not"
        );
    }

    #[test]
    fn a_new_message_on_a_kept_id_voids_the_old_ack() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let old = ticket(&q, &publish(1));
        q.reset(true);
        let new = ticket(&q, &publish(1));
        q.done(old);
        assert!(
            rx.try_recv().is_err(),
            "the old ack would acknowledge the new message"
        );
        q.done(new);
        assert_eq!(rx.try_recv().map(|p| p.pkid).ok(), Some(1));
    }
}

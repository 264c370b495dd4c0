//! Acknowledgements in the order messages arrived. Pure ordering logic: the connection
//! sends what leaves here.
//!
//! MQTT requires a client to acknowledge QoS 1/2 messages in the order it received them
//! (3.1.1 section 4.6; rumqttd drops a client that does not). Functions finish events in
//! any order, so finished messages wait here until every earlier one is finished too.
//!
//! Packet ids belong to one connection. After a reconnect the broker redelivers what was
//! not acknowledged, so acknowledgements still pending from the old connection are
//! forgotten (their messages will be handled again: at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

pub use crate::event::Ticket;

struct Pending {
    ack: Publish,
    done: bool,
}

#[derive(Default)]
struct State {
    generation: u64,
    /// Sequence number of `pending[0]`.
    head: u64,
    pending: VecDeque<Pending>,
    /// The incarnation of each packet id's last first delivery (DUP=0) in this session,
    /// for its resends to share (see `Inbound::incarnation`). Kept after the message is
    /// acknowledged: the acknowledgement may never reach the broker (a restarting broker
    /// resends hundreds), and only a new message on the id (DUP=0) proves it did.
    unacknowledged: HashMap<u16, u64>,
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

    /// Takes a place in line for `publish` (`None` for QoS 0, which needs no ack), and
    /// says which delivery it is: a first delivery (DUP=0) gets a new incarnation, a resend
    /// (DUP=1) that of the last first delivery of its packet id in this run, else 0.
    pub fn register(&self, publish: &Publish) -> (Option<Ticket>, u64) {
        if publish.qos == QoS::AtMostOnce {
            return (None, 0);
        }
        // The ack needs only the packet id and QoS: do not keep the payload twice.
        let mut ack = Publish::new("", publish.qos, Vec::new());
        ack.pkid = publish.pkid;
        let mut s = self.lock();
        let incarnation = if publish.dup {
            s.unacknowledged.get(&publish.pkid).copied().unwrap_or(0)
        } else {
            let i = crate::event::next_incarnation();
            s.unacknowledged.insert(publish.pkid, i);
            i
        };
        let seq = s.head + s.pending.len() as u64;
        s.pending.push_back(Pending { ack, done: false });
        let ticket = Ticket {
            generation: s.generation,
            seq,
        };
        (Some(ticket), incarnation)
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
        while s.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = s.pending.pop_front() {
                s.head += 1;
                // The receiver only goes away at shutdown, when redelivery is right.
                let _ = self.ready.send(p.ack);
            }
        }
    }

    /// A new connection: forget the old one's pending acknowledgements (the broker
    /// resends their messages). If the broker did not keep the session, packet ids start
    /// over, and the messages not acknowledged are forgotten too.
    pub fn reset(&self, session_present: bool) {
        let mut s = self.lock();
        s.generation += 1;
        s.head += s.pending.len() as u64;
        s.pending.clear();
        if !session_present {
            s.unacknowledged.clear();
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
    fn acks_leave_in_arrival_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let t: Vec<Ticket> = (1..=3).filter_map(|i| q.register(&publish(i)).0).collect();
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
            (None, 0)
        );
    }

    #[test]
    fn reconnect_forgets_old_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let old = q.register(&publish(1)).0.expect("ticket");
        q.reset(true);
        let new = q.register(&publish(1)).0.expect("ticket");
        q.done(old);
        assert!(rx.try_recv().is_err(), "a stale ack must not be sent");
        q.done(new);
        assert_eq!(rx.try_recv().map(|p| p.pkid).ok(), Some(1));
    }

    #[test]
    fn a_resend_shares_its_first_delivery_s_incarnation() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let mut resend = publish(1);
        resend.dup = true;
        assert_eq!(q.register(&resend).1, 0, "first copy never seen");
        let (_, first) = q.register(&publish(1));
        assert_ne!(first, 0);
        q.reset(true);
        let (_, again) = q.register(&resend);
        assert_eq!(again, first, "the resend of an unacknowledged message");
        let (t3, other) = q.register(&publish(1));
        assert!(other > first, "another message on the id");
        q.done(t3.expect("ticket"));
        assert_eq!(
            q.register(&resend).1,
            other,
            "acknowledged, and still its resends'"
        );
        q.reset(false);
        assert_eq!(q.register(&resend).1, 0, "a lost session forgets");
    }
}

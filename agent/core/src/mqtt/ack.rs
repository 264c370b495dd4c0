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

use std::collections::VecDeque;
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
    pub fn register(&self, publish: &Publish) -> Option<Ticket> {
        if publish.qos == QoS::AtMostOnce {
            return None;
        }
        // The ack needs only the packet id and QoS: do not keep the payload twice.
        let mut ack = Publish::new("", publish.qos, Vec::new());
        ack.pkid = publish.pkid;
        let mut s = self.lock();
        let seq = s.head + s.pending.len() as u64;
        s.pending.push_back(Pending { ack, done: false });
        Some(Ticket {
            generation: s.generation,
            seq,
        })
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

    /// A new connection: forget the old one's pending acknowledgements.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.head += s.pending.len() as u64;
        s.pending.clear();
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
        let t: Vec<Ticket> = (1..=3).filter_map(|i| q.register(&publish(i))).collect();
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
        assert!(
            q.register(&Publish::new("t", QoS::AtMostOnce, "x"))
                .is_none()
        );
    }

    #[test]
    fn reconnect_forgets_old_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = AckQueue::new(tx);
        let old = q.register(&publish(1)).unwrap_or_else(|| panic!("ticket"));
        q.reset();
        let new = q.register(&publish(1)).unwrap_or_else(|| panic!("ticket"));
        q.done(old);
        assert!(rx.try_recv().is_err(), "a stale ack must not be sent");
        q.done(new);
        assert_eq!(rx.try_recv().map(|p| p.pkid).ok(), Some(1));
    }
}

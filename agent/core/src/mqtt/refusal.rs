//! A message the broker refuses by closing the output connection.
//!
//! Over MQTT 3.1.1 a broker cannot say why it refuses a message: one over its own packet
//! size limit (Mosquitto's `max_packet_size`, 128 KB on AWS IoT Core), or to a topic its
//! ACL or policy denies (AWS IoT Core, the Greengrass broker, Azure Event Grid), makes it
//! close the connection. rumqttc resends the message on the next connection, which the
//! broker closes again: every output of every function would wait behind it for good.
//!
//! So after [`SUSPICIOUS`] closes in a row by the broker, each with messages unconfirmed,
//! the output connection resends with care: one message at a time, the next once the
//! broker has confirmed the one before, and nothing new queued meanwhile (the publisher's
//! queue is held). One that is alone in flight each time the broker closes the
//! connection is refused: taken out, and what waits on it released (its event was
//! handled; the broker will not take it), once that happened [`CAUGHT`] times if it is
//! larger than any message the broker confirmed, and [`CAUGHT_SMALL`] times if not. The
//! agent's [`BrokerLimits`](crate::event::BrokerLimits) learn from it: no packet as large is sent again; or, once a
//! second message to the same topic has been refused, nothing more to that topic. Guests
//! are refused such messages when they publish, with a dead letter saying why, and what
//! is waiting to be resent is dropped with it. Then the rest is sent as usual (one found
//! explains the closes), and so it is after [`CAREFUL_RUN`] messages taken in a row: a
//! round trip per message held would keep every function's outputs waiting for seconds
//! on a distant broker.
//!
//! A QoS 0 message is not resent: one the broker refuses is gone with the connection, and
//! the next such one closes the next connection. So a close right after QoS 0 messages
//! were written is enough to resend with care, from the reconnection on (what was made
//! while it backed off is what may hold the next one); with care, a QoS 0 message goes out
//! followed by a PINGREQ, and counts as taken once the PINGRESP comes back (the broker
//! reads a connection's packets in order). Until then it is kept, and sent again if the
//! connection closes first, so that it can be caught alone like any other: at least once,
//! like QoS 1, while resending with care (the broker may have taken it just before a
//! close for another reason).
//!
//! Other causes close connections in a row too: another client with the same client id
//! (the broker closes each connection when the other connects), a link that drops. They
//! are taken for a refusal only if they close the connection each time the same message
//! is alone in flight (a round trip each), [`CAUGHT_SMALL`] times for one no larger than
//! messages the broker took, and a topic is refused only after two such messages.

use std::collections::VecDeque;

use rumqttc::{EventLoop, PingReq, Publish, QoS, Request};
use tokio::sync::OwnedMutexGuard;

use crate::mqtt::publisher::Publisher;

/// Closes in a row by the broker, each with messages unconfirmed, after which the
/// connection resends with care.
pub const SUSPICIOUS: u32 = 2;

/// The same, for closes right after QoS 0 messages were written: those are not resent,
/// so a second close would have lost the next ones too.
pub const SUSPICIOUS_QOS0: u32 = 1;

/// Times the broker closes the connection while the same message, larger than any it
/// confirmed, is alone in flight, after which it is taken for one over the broker's
/// packet size limit.
pub const CAUGHT: u32 = 2;

/// The same, for a message no larger than one the broker confirmed (then its topic is
/// what the broker may refuse, and a dropping link is more likely to look the same).
pub const CAUGHT_SMALL: u32 = 3;

/// Messages taken in a row, with care, after which the rest is sent as usual: what closed
/// the connection was one of the first (the broker confirms in order what it read before
/// it), or, for QoS 0, lost with it. Each is a round trip, while every function's outputs
/// wait: seconds on a distant broker. Another one refused among the rest closes the
/// connection again, and the search starts again with what is then unconfirmed first.
pub const CAREFUL_RUN: u32 = 8;

/// What the broker refused, and what was dropped with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// Its topic.
    pub topic: String,
    /// Its packet's size ([`crate::event::publish_packet_bytes`]).
    pub bytes: usize,
    /// Whether it was larger than any message the broker confirmed (then the broker's
    /// packet size limit was taken to be below it).
    pub too_large: bool,
    /// Whether its topic is refused from now on (the second message to it refused).
    pub topic_refused: bool,
    /// The largest message the broker confirmed.
    pub largest_confirmed: usize,
    /// Messages dropped, it included.
    pub dropped: usize,
}

/// Follows the output connection's failures to find a message the broker refuses.
pub struct Refusals {
    publisher: std::sync::Arc<Publisher>,
    /// Closes in a row by the broker, each with messages unconfirmed.
    closes: u32,
    careful: Option<Careful>,
    /// A QoS 0 message was written on the connection that is up.
    qos0_written: bool,
    /// Resend with care from the next connection on ([`Refusals::reconnecting`]).
    begin_later: bool,
    /// Topics of messages refused that were no larger than others the broker took: a
    /// second one refuses the topic.
    refused_once: std::collections::HashSet<String>,
}

/// Resending one message at a time.
struct Careful {
    /// Nothing new is queued while held.
    _queue: OwnedMutexGuard<()>,
    /// What is left to resend, in order, behind what is in rumqttc's `pending`.
    held: VecDeque<Request>,
    /// The message in flight alone: released, not yet confirmed.
    in_flight: bool,
    /// It is QoS 0: kept until the PINGRESP behind it, to be sent again if the
    /// connection closes first (rumqttc forgets a QoS 0 message once written).
    qos0: Option<Publish>,
    /// Whether rumqttc has written it on this connection.
    written: bool,
    /// The one the broker closed the connection on while it was alone in flight (its
    /// packet id, 0 for QoS 0), and how many times.
    caught: Option<(u16, u32)>,
    /// Messages taken since the search began or the connection last closed.
    taken_in_a_row: u32,
}

impl Refusals {
    /// For the output connection through `publisher`, teaching its [`BrokerLimits`](crate::event::BrokerLimits).
    pub fn new(publisher: std::sync::Arc<Publisher>) -> Self {
        Self {
            publisher,
            closes: 0,
            careful: None,
            qos0_written: false,
            begin_later: false,
            refused_once: std::collections::HashSet::new(),
        }
    }

    /// Requests rumqttc took from its queue and has not numbered yet: in its `pending`,
    /// and held back here (see [`Publisher::connection_lost`]).
    pub fn unnumbered(&self, pending: &VecDeque<Request>) -> usize {
        unnumbered(pending) + self.careful.as_ref().map_or(0, |c| unnumbered(&c.held))
    }

    /// The connection failed, after rumqttc moved what is to be resent into its
    /// `pending`, and after [`Publisher::connection_lost`]; `by_broker` if the broker
    /// closed a connection it had accepted shortly before. Returns what was refused, if
    /// this failure shows it.
    pub async fn lost(&mut self, by_broker: bool, eventloop: &mut EventLoop) -> Option<Refused> {
        let qos0_written = std::mem::take(&mut self.qos0_written);
        let pending = &mut eventloop.pending;
        // A message rumqttc wrote (it numbers them as it does) and the broker has not
        // confirmed: the first of them is the first the broker met again.
        let unconfirmed = pending.iter().find_map(|r| match r {
            Request::Publish(p) if p.pkid != 0 => Some(p.pkid),
            _ => None,
        });
        self.closes = if by_broker && (unconfirmed.is_some() || qos0_written) {
            self.closes + 1
        } else {
            0
        };
        let Some(careful) = &mut self.careful else {
            if self.closes >= SUSPICIOUS {
                self.careful = self.begin(eventloop).await;
            } else if qos0_written && self.closes >= SUSPICIOUS_QOS0 {
                // What rumqttc wrote is gone, and what it had not written is seldom the
                // next refused one: the messages made while the reconnection backs off
                // are more likely to hold one.
                self.begin_later = true;
            }
            return None;
        };
        let pending = &mut eventloop.pending;
        // Alone in flight: rumqttc wrote it, and the broker closed before confirming it.
        let alone = careful.in_flight && careful.written && by_broker;
        let culprit = match &careful.qos0 {
            Some(p) => {
                if careful.written {
                    // Written, so gone from rumqttc's queues: first again, with its PINGREQ.
                    pending.retain(|r| !matches!(r, Request::PingReq(_)));
                    pending.push_front(Request::PingReq(PingReq));
                    pending.push_front(Request::Publish(p.clone()));
                    self.publisher.resend_front(packet_bytes(p));
                }
                Some(0)
            }
            None => unconfirmed,
        };
        careful.written = false;
        careful.taken_in_a_row = 0;
        careful.caught = match (culprit, careful.caught) {
            (Some(pkid), Some((before, n))) if alone && pkid == before => Some((pkid, n + 1)),
            (Some(pkid), _) if alone => Some((pkid, 1)),
            _ => None,
        };
        let refused = careful.caught.and_then(|(pkid, times)| {
            let p = match (&careful.qos0, pkid) {
                (Some(p), 0) => p,
                (None, 0) => return None,
                _ => pending.iter().find_map(|r| match r {
                    Request::Publish(p) if p.pkid == pkid => Some(p),
                    _ => None,
                })?,
            };
            let bytes = packet_bytes(p);
            let too_large = bytes > self.publisher.largest_confirmed();
            (times >= if too_large { CAUGHT } else { CAUGHT_SMALL })
                .then(|| (p.clone(), bytes, too_large))
        });
        let Some((refused, bytes, too_large)) = refused else {
            // Nothing in flight (a PINGRESP was awaited): the next goes now.
            careful.release_next(pending, false);
            return None;
        };
        let largest_confirmed = self.publisher.largest_confirmed();
        let topic = refused.topic.clone();
        let mut topic_refused = false;
        if too_large {
            self.publisher.limits().refused_size(bytes);
        } else if !self.refused_once.insert(topic.clone()) {
            self.publisher.limits().refused_topic(&topic);
            topic_refused = true;
        }
        let limits = self.publisher.limits();
        // The refused message itself: by its packet id, or (QoS 0) the first copy.
        let found = std::cell::Cell::new(false);
        let dropped = self
            .publisher
            .drop_unsendable([pending, &mut careful.held], |p, bytes| {
                let it = !found.get() && p.pkid == refused.pkid && (p.pkid != 0 || *p == refused);
                found.set(found.get() || it);
                it || limits.over(&p.topic, bytes).is_some()
            });
        if careful.qos0.is_some() {
            pending.retain(|r| !matches!(r, Request::PingReq(_)));
        }
        // Found what closed the connection: the rest goes as usual. Another one refused
        // among them closes the connection again, and is searched for again.
        self.end(pending);
        self.closes = 0;
        Some(Refused {
            topic,
            bytes,
            too_large,
            topic_refused,
            largest_confirmed,
            dropped: dropped.len(),
        })
    }

    /// The output connection is about to connect again after a failure: resending with
    /// care starts now if a close right after QoS 0 messages asked for it.
    pub async fn reconnecting(&mut self, eventloop: &mut EventLoop) {
        if std::mem::take(&mut self.begin_later) && self.careful.is_none() {
            self.careful = self.begin(eventloop).await;
        }
    }

    /// Starts resending with care: holds the publisher's queue and takes what rumqttc
    /// is to send. None if nothing is left to send (nothing to catch).
    async fn begin(&mut self, eventloop: &mut EventLoop) -> Option<Careful> {
        // In turn behind whoever is queueing now, with room made for them in rumqttc's
        // queue meanwhile: nobody reads it while the connection is down.
        let hold = self.publisher.hold_queue();
        tokio::pin!(hold);
        let queue = loop {
            eventloop.clean();
            tokio::select! {
                queue = &mut hold => break queue,
                () = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
        };
        // What was queued before the hold took effect joins what is held.
        eventloop.clean();
        let pending = &mut eventloop.pending;
        let mut careful = Careful {
            _queue: queue,
            held: std::mem::take(pending),
            in_flight: false,
            qos0: None,
            written: false,
            caught: None,
            taken_in_a_row: 0,
        };
        self.publisher.connection_lost(unnumbered(&careful.held));
        careful.release_next(pending, false);
        tracing::debug!(
            held = careful.held.len(),
            unnumbered = unnumbered(&careful.held),
            released = pending.len(),
            "resending with care"
        );
        if careful.done(pending) {
            return None;
        }
        tracing::warn!(
            closes = self.closes,
            "the broker closes the output connection with messages it has not confirmed: \
             resending them one at a time, to find one it refuses (or, if none is found, \
             another cause: a second client with this client id, a link that drops)"
        );
        Some(careful)
    }

    /// rumqttc wrote a publish (`pkid` 0: QoS 0).
    pub fn written(&mut self, pkid: u16) {
        if pkid == 0 {
            self.qos0_written = true;
        }
        if let Some(careful) = &mut self.careful
            && (pkid != 0 || careful.qos0.is_some())
        {
            careful.written = true;
        }
    }

    /// The broker confirmed a message (PUBACK, PUBREC): with care, the next is released
    /// into `pending`, or, once nothing is left, new messages are let in again.
    /// `ping_outstanding`: rumqttc awaits a PINGRESP (then a QoS 0 message waits for it).
    pub fn confirmed(&mut self, pending: &mut VecDeque<Request>, ping_outstanding: bool) {
        match &mut self.careful {
            Some(careful) if careful.qos0.is_none() => careful.taken(),
            _ => return, // not searching, or not the proof of a QoS 0 message
        }
        self.release(pending, ping_outstanding);
    }

    /// The broker answered a PINGREQ: with care, the QoS 0 message written before it was
    /// taken (the broker reads in order), and the next is released.
    pub fn pinged(&mut self, pending: &mut VecDeque<Request>) {
        let Some(careful) = &mut self.careful else {
            return;
        };
        match &careful.qos0 {
            Some(p) if careful.written => {
                self.publisher.taken(packet_bytes(p));
                careful.taken();
            }
            // Its PINGREQ is still to go: this answered rumqttc's own.
            Some(_) => return,
            None => {}
        }
        self.release(pending, false);
    }

    /// With care, releases the next message; once nothing is left, or after
    /// [`CAREFUL_RUN`] taken in a row, sends the rest as usual and lets new messages in.
    fn release(&mut self, pending: &mut VecDeque<Request>, ping_outstanding: bool) {
        let Some(careful) = &mut self.careful else {
            return;
        };
        if careful.taken_in_a_row >= CAREFUL_RUN {
            return self.end(pending);
        }
        careful.release_next(pending, ping_outstanding);
        if careful.done(pending) {
            self.careful = None;
        }
    }

    /// Ends the search: what is held goes out as usual, and new messages are let in.
    fn end(&mut self, pending: &mut VecDeque<Request>) {
        if let Some(mut careful) = self.careful.take() {
            pending.append(&mut careful.held);
        }
    }

    /// The broker did not keep the session: rumqttc dropped what it was to resend, and so
    /// is what is held back (the publisher forgets their waiters).
    pub fn session_lost(&mut self) {
        self.closes = 0;
        self.careful = None;
        self.begin_later = false;
    }
}

impl Careful {
    /// The message in flight is confirmed (or proven, for QoS 0).
    fn taken(&mut self) {
        self.taken_in_a_row += 1;
        self.in_flight = false;
        self.qos0 = None;
        self.written = false;
        self.caught = None;
    }

    /// Moves what is held into `pending` up to and with the next message, unless one is
    /// in flight already. A QoS 0 message goes with a PINGREQ behind it, and only while
    /// rumqttc awaits no PINGRESP (`ping_outstanding`): one more PINGREQ then is an error,
    /// and that PINGRESP would not say the message was taken.
    fn release_next(&mut self, pending: &mut VecDeque<Request>, ping_outstanding: bool) {
        if self.in_flight || pending.iter().any(confirmable) {
            self.in_flight |= pending.iter().any(confirmable);
            return;
        }
        while let Some(r) = self.held.front() {
            match r {
                Request::Publish(p) if p.qos == QoS::AtMostOnce => {
                    if ping_outstanding {
                        return;
                    }
                    self.qos0 = Some(p.clone());
                    pending.extend(self.held.pop_front());
                    pending.push_back(Request::PingReq(PingReq));
                    self.in_flight = true;
                    return;
                }
                r => {
                    let last = confirmable(r);
                    pending.extend(self.held.pop_front());
                    if last {
                        self.in_flight = true;
                        return;
                    }
                }
            }
        }
    }

    /// Whether everything held has been resent and confirmed.
    fn done(&self, pending: &VecDeque<Request>) -> bool {
        self.held.is_empty() && !self.in_flight && !pending.iter().any(confirmable)
    }
}

/// The size of `p`'s packet ([`crate::event::publish_packet_bytes`]).
fn packet_bytes(p: &Publish) -> usize {
    crate::event::publish_packet_bytes(&p.topic, p.payload.len())
}

/// Requests in `queue` that rumqttc has not numbered yet.
fn unnumbered(queue: &VecDeque<Request>) -> usize {
    queue
        .iter()
        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
        .count()
}

/// A message the broker confirms.
fn confirmable(r: &Request) -> bool {
    matches!(r, Request::Publish(p) if p.qos != QoS::AtMostOnce)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, Outgoing, Packet, PubAck};

    use super::*;
    use crate::event::{BrokerLimits, publish_packet_bytes};
    use crate::mqtt::publisher::tests::delivery;

    /// A publisher, its event loop (never connected: what rumqttc would do is done by
    /// hand), and the refusals that follow it.
    fn setup() -> (Arc<Publisher>, EventLoop, Refusals, BrokerLimits) {
        let (client, eventloop) = AsyncClient::new(rumqttc::MqttOptions::new("t", "h", 1), 16);
        let limits = BrokerLimits::new(1 << 20);
        let p = Publisher::new(client, limits.clone());
        let r = Refusals::new(p.clone());
        (p, eventloop, r, limits)
    }

    /// Queues QoS 1 messages `(topic, payload bytes)` for `waiter`, numbered 1, 2, ... as
    /// rumqttc would, and the first `confirmed` of them confirmed.
    async fn sent(
        p: &Publisher,
        el: &mut EventLoop,
        messages: &[(&str, usize)],
        waiter: &Arc<crate::event::Delivery>,
        confirmed: u16,
    ) {
        for &(topic, bytes) in messages {
            let payload = vec![0; bytes];
            let queued = p.publish(
                topic.into(),
                QoS::AtLeastOnce,
                false,
                payload,
                Some(waiter.clone()),
                None,
            );
            assert!(queued.await.is_ok());
        }
        el.clean(); // rumqttc has taken them from its queue
        el.pending.clear();
        for pkid in 1..=messages.len() as u16 {
            p.observe(&Event::Outgoing(Outgoing::Publish(pkid)));
        }
        for pkid in 1..=confirmed {
            p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(pkid))));
        }
    }

    /// What rumqttc has to resend after a failure: `(pkid, topic, payload bytes)`.
    fn resend(el: &mut EventLoop, messages: &[(u16, &str, usize)]) {
        el.pending = messages
            .iter()
            .map(|&(pkid, topic, bytes)| {
                let mut p = rumqttc::Publish::new(topic, QoS::AtLeastOnce, vec![0; bytes]);
                p.pkid = pkid;
                Request::Publish(p)
            })
            .collect();
    }

    fn pkids(el: &EventLoop) -> Vec<u16> {
        el.pending
            .iter()
            .filter_map(|r| match r {
                Request::Publish(p) => Some(p.pkid),
                _ => None,
            })
            .collect()
    }

    /// rumqttc writes what is pending, and the broker confirms `pkid`.
    fn confirm(p: &Publisher, el: &mut EventLoop, r: &mut Refusals, pkid: u16) {
        r.written(1);
        p.observe(&Event::Incoming(Packet::PubAck(PubAck::new(pkid))));
        r.confirmed(&mut el.pending, false);
    }

    /// Whether a new message can be queued at once (nothing holds the queue).
    async fn queue_open(p: &Publisher) -> bool {
        let publish = p.publish("n".into(), QoS::AtMostOnce, false, vec![], None, None);
        tokio::time::timeout(Duration::from_millis(50), publish)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_message_too_large_for_the_broker_is_found_one_at_a_time_and_dropped() {
        let (p, mut el, mut r, limits) = setup();
        let (d, mut acks) = delivery(3);
        let all = [("o", 100), ("o", 5000), ("o", 10)];
        sent(&p, &mut el, &all, &d, 1).await;
        // The broker closes on the large one, with both unconfirmed, twice.
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &[(2, "o", 5000), (3, "o", 10)]);
            assert_eq!(r.lost(true, &mut el).await, None);
        }
        assert_eq!(pkids(&el), [2], "then one at a time");
        assert!(!queue_open(&p).await, "nothing new meanwhile");
        let caught_once = caught(&mut el, &mut r, CAUGHT - 1).await;
        assert_eq!((caught_once, pkids(&el)), (None, vec![2]));
        r.written(1); // rumqttc writes it
        let bytes = publish_packet_bytes("o", 5000);
        let refused = Refused {
            topic: "o".into(),
            bytes,
            too_large: true,
            topic_refused: false,
            largest_confirmed: publish_packet_bytes("o", 100),
            dropped: 1,
        };
        assert_eq!(r.lost(true, &mut el).await, Some(refused));
        assert_eq!(limits.max_packet_bytes(), bytes - 1);
        assert_eq!(pkids(&el), [3], "the rest");
        assert!(queue_open(&p).await, "found: new messages go again");
        el.pending.clear();
        confirm(&p, &mut el, &mut r, 3);
        assert_eq!(
            acks.try_recv().map(|a| a.ack.pkid).ok(),
            Some(7),
            "its event is done"
        );
    }

    /// The broker closes the connection on each of `times` writes of the message alone
    /// in flight; returns what the last close made of it.
    async fn caught(el: &mut EventLoop, r: &mut Refusals, times: u32) -> Option<Refused> {
        for _ in 1..times {
            r.written(1); // rumqttc writes it
            assert_eq!(r.lost(true, el).await, None);
        }
        r.written(1);
        r.lost(true, el).await
    }

    #[tokio::test]
    async fn messages_to_a_refused_topic_are_found_behind_others_the_broker_takes() {
        let (p, mut el, mut r, limits) = setup();
        let (d, mut acks) = delivery(5);
        let all = [
            ("o", 100),
            ("a", 10),
            ("denied", 10),
            ("denied", 10),
            ("b", 10),
        ];
        sent(&p, &mut el, &all, &d, 1).await;
        let rest = [
            (2, "a", 10),
            (3, "denied", 10),
            (4, "denied", 10),
            (5, "b", 10),
        ];
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &rest);
            assert_eq!(r.lost(true, &mut el).await, None);
        }
        // The first is confirmed alone; the next is one the broker refuses.
        assert_eq!(pkids(&el), [2]);
        el.pending.clear();
        confirm(&p, &mut el, &mut r, 2);
        assert_eq!(pkids(&el), [3]);
        // A failure that is not the broker's (a timeout) catches nothing.
        r.written(1);
        assert_eq!(r.lost(false, &mut el).await, None);
        // No larger than what the broker took: caught more often before it counts.
        assert_eq!(caught(&mut el, &mut r, CAUGHT).await, None);
        let refused = caught(&mut el, &mut r, CAUGHT_SMALL - CAUGHT).await;
        let refused = refused.expect("refused");
        assert_eq!(refused.topic, "denied");
        assert!(!refused.too_large && !refused.topic_refused, "{refused:?}");
        assert!(
            limits.over("denied", 10).is_none(),
            "one message is not the topic"
        );
        // Found: the rest goes as usual, new messages too, until the second message to it
        // closes the connection (with the one behind it in flight); searched for again,
        // the topic is refused.
        assert_eq!(pkids(&el), [4, 5]);
        assert!(queue_open(&p).await);
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &[(4, "denied", 10), (5, "b", 10)]);
            assert_eq!(r.lost(true, &mut el).await, None);
        }
        assert_eq!(pkids(&el), [4]);
        let refused = caught(&mut el, &mut r, CAUGHT_SMALL)
            .await
            .expect("refused");
        assert!(refused.topic_refused, "{refused:?}");
        assert!(limits.over("denied", 10).is_some() && limits.over("a", 10).is_none());
        assert_eq!(limits.max_packet_bytes(), 1 << 20, "not a size limit");
        assert_eq!(pkids(&el), [5, 0], "the rest, and the one queued meanwhile");
        el.pending.clear();
        confirm(&p, &mut el, &mut r, 5);
        assert_eq!(acks.try_recv().map(|a| a.ack.pkid).ok(), Some(7));
    }

    #[tokio::test]
    async fn closes_that_never_catch_one_message_alone_refuse_nothing() {
        let (p, mut el, mut r, limits) = setup();
        let (d, _acks) = delivery(3);
        sent(&p, &mut el, &[("a", 10), ("b", 10), ("c", 10)], &d, 0).await;
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &[(1, "a", 10), (2, "b", 10), (3, "c", 10)]);
            assert_eq!(r.lost(true, &mut el).await, None);
        }
        // Another client with this id closes the connection again and again: before the
        // message released was written, or after it was confirmed.
        for pkid in 1..=3 {
            for _ in 0..2 * CAUGHT_SMALL {
                assert_eq!(pkids(&el), [pkid]);
                assert_eq!(r.lost(true, &mut el).await, None, "not written yet");
            }
            el.pending.clear();
            confirm(&p, &mut el, &mut r, pkid);
            assert_eq!(r.lost(true, &mut el).await, None, "confirmed");
        }
        assert!(limits.over("a", 10).is_none());
        assert!(queue_open(&p).await);
    }

    #[tokio::test]
    async fn a_search_that_catches_nothing_sends_the_rest_as_usual_after_a_run() {
        let (p, mut el, mut r, limits) = setup();
        let n = CAREFUL_RUN as u16 + 5;
        let (d, _acks) = delivery(usize::from(n));
        let all = vec![("o", 10); usize::from(n)];
        sent(&p, &mut el, &all, &d, 0).await;
        let rest: Vec<_> = (1..=n).map(|pkid| (pkid, "o", 10)).collect();
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &rest);
            assert_eq!(r.lost(true, &mut el).await, None);
        }
        for pkid in 1..=3 {
            assert_eq!(pkids(&el), [pkid], "one at a time");
            el.pending.clear();
            confirm(&p, &mut el, &mut r, pkid);
        }
        // A close with the fourth alone in flight: the run starts again from it.
        r.written(1);
        resend(&mut el, &[(4, "o", 10)]);
        assert_eq!(r.lost(true, &mut el).await, None, "caught once");
        for pkid in 4..4 + CAREFUL_RUN as u16 {
            assert_eq!(pkids(&el), [pkid], "one at a time");
            el.pending.clear();
            confirm(&p, &mut el, &mut r, pkid);
        }
        assert_eq!(pkids(&el), [n - 1, n], "then the rest as usual");
        assert!(queue_open(&p).await, "and new messages");
        assert!(limits.over("o", 10).is_none());
    }

    /// Queues a QoS 0 message `(topic, payload bytes)` for `waiter`.
    async fn sent_qos0(
        p: &Publisher,
        topic: &str,
        bytes: usize,
        waiter: Option<Arc<crate::event::Delivery>>,
    ) {
        let queued = p.publish(
            topic.into(),
            QoS::AtMostOnce,
            false,
            vec![0; bytes],
            waiter,
            None,
        );
        assert!(queued.await.is_ok());
    }

    /// rumqttc writes the first of `pending`, a QoS 0 message sent with care (a PINGREQ
    /// behind it), and forgets it.
    fn write_qos0(p: &Publisher, el: &mut EventLoop, r: &mut Refusals) -> String {
        let topic = write_first(p, el, r);
        assert!(
            matches!(el.pending.pop_front(), Some(Request::PingReq(_))),
            "a PINGREQ behind it"
        );
        topic
    }

    /// rumqttc writes the first of `pending`, a QoS 0 message, and forgets it.
    fn write_first(p: &Publisher, el: &mut EventLoop, r: &mut Refusals) -> String {
        let Some(Request::Publish(m)) = el.pending.pop_front() else {
            panic!("not a publish first: {:?}", el.pending);
        };
        assert_eq!(m.qos, QoS::AtMostOnce);
        p.observe(&Event::Outgoing(Outgoing::Publish(0)));
        r.written(0);
        m.topic
    }

    #[tokio::test]
    async fn a_qos0_message_too_large_for_the_broker_is_caught_alone_and_dropped() {
        let (p, mut el, mut r, limits) = setup();
        let (d, _acks) = delivery(1);
        sent(&p, &mut el, &[("o", 100)], &d, 1).await;
        let (small_event, mut acks) = delivery(1);
        sent_qos0(&p, "big", 5000, None).await;
        sent_qos0(&p, "big", 5000, None).await;
        sent_qos0(&p, "small", 10, Some(small_event)).await;
        el.clean(); // rumqttc takes them, writes the first, and the broker closes
        write_first(&p, &mut el, &mut r);
        assert_eq!(r.lost(true, &mut el).await, None);
        r.reconnecting(&mut el).await;
        // QoS 0 is not resent: one close is enough to go on with care, one at a time.
        assert!(!queue_open(&p).await, "nothing new meanwhile");
        assert_eq!(write_qos0(&p, &mut el, &mut r), "big");
        assert_eq!(r.lost(true, &mut el).await, None, "caught once");
        assert_eq!(write_qos0(&p, &mut el, &mut r), "big", "sent again");
        let refused = r.lost(true, &mut el).await.expect("refused");
        let bytes = publish_packet_bytes("big", 5000);
        assert_eq!(
            (refused.too_large, refused.bytes, refused.dropped),
            (true, bytes, 1),
            "{refused:?}"
        );
        assert_eq!(limits.max_packet_bytes(), bytes - 1);
        // Found: the rest goes as usual (no PINGREQ behind it), and new messages too.
        assert_eq!(write_first(&p, &mut el, &mut r), "small");
        assert!(
            acks.try_recv().is_ok(),
            "its event is done once it is written"
        );
        assert!(el.pending.is_empty(), "{:?}", el.pending);
        assert_eq!(p.unconfirmed(), 0, "every waiter paired");
        assert!(queue_open(&p).await);
    }

    #[tokio::test]
    async fn a_qos0_message_the_broker_took_is_not_refused_for_a_close_before_its_pingresp() {
        let (p, mut el, mut r, limits) = setup();
        for _ in 0..3 {
            sent_qos0(&p, "a", 10, None).await;
        }
        el.clean();
        write_first(&p, &mut el, &mut r);
        assert_eq!(r.lost(true, &mut el).await, None);
        r.reconnecting(&mut el).await;
        // A PINGRESP to rumqttc's own PINGREQ, before this one was written, proves nothing.
        r.pinged(&mut el.pending);
        assert_eq!(el.pending.len(), 2, "still in flight: {:?}", el.pending);
        write_qos0(&p, &mut el, &mut r);
        assert_eq!(r.lost(true, &mut el).await, None, "caught once");
        // Sent again, and this time the broker answers the PINGREQ behind it.
        write_qos0(&p, &mut el, &mut r);
        r.pinged(&mut el.pending);
        assert_eq!(write_qos0(&p, &mut el, &mut r), "a", "the next one");
        r.pinged(&mut el.pending);
        assert!(limits.over("a", 10).is_none() && limits.max_packet_bytes() == 1 << 20);
        assert_eq!(p.unconfirmed(), 0, "every waiter paired");
        assert!(queue_open(&p).await);
    }

    #[tokio::test]
    async fn holding_the_queue_waits_for_no_one_stuck_behind_a_full_channel() {
        let (client, mut el) = AsyncClient::new(rumqttc::MqttOptions::new("t", "h", 1), 1);
        let limits = BrokerLimits::new(1 << 20);
        let p = Publisher::new(client, limits.clone());
        let mut r = Refusals::new(p.clone());
        let publish = |p: Arc<Publisher>| async move {
            let queued = p.publish("o".into(), QoS::AtLeastOnce, false, vec![], None, None);
            queued.await.is_ok()
        };
        assert!(publish(p.clone()).await, "fills the channel");
        // Holds the publisher's queue, waiting for room in the channel.
        let stuck = tokio::spawn(publish(p.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..SUSPICIOUS {
            resend(&mut el, &[(1, "a", 10)]);
            let lost = r.lost(true, &mut el);
            let lost = tokio::time::timeout(Duration::from_secs(5), lost).await;
            assert_eq!(lost.ok(), Some(None));
        }
        assert!(stuck.await.unwrap_or_default());
        assert!(!queue_open(&p).await, "held");
    }
}

//! The router: from an MQTT message to the inboxes of the functions whose filters match.
//!
//! It runs on the MQTT poll task, so it never blocks: an oversized payload, or an inbox
//! full past what its overflow policy takes, becomes a dead letter at once. Under the
//! default policy (`backpressure`) the connection stops reading while an inbox is full
//! ([`Router::room`]), so that rarely happens. A QoS 1/2 message is acknowledged to the broker only when
//! every function it was routed to has finished with it (handled, or dead-lettered), so a
//! crash or a stop before that leaves it with the broker for redelivery.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::Publish;

use super::hops::HopLedger;
use super::inbox::Inbox;
use super::output::Output;
use crate::event::{Delivery, Inbound};
use crate::failure::FailureKind;
use crate::metrics::FunctionStats;
use crate::mqtt::ack::AckQueue;
use crate::topic;

/// A function as the router sees it.
pub struct Route {
    /// Function name.
    pub name: Arc<str>,
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Its inboxes: one, or one per persistent instance (a topic always goes to the same
    /// one, so that its events stay in order).
    pub inboxes: Vec<Arc<Inbox>>,
    /// Largest payload passed in.
    pub max_payload_bytes: usize,
    /// Its counters.
    pub stats: Arc<FunctionStats>,
    /// Its state, where the receipts of its messages are.
    pub state: Option<Arc<crate::state::Namespace>>,
    /// `partition`: the part of the topics this agent takes.
    pub partition: Option<crate::config::Partition>,
}

impl Route {
    /// The inbox that takes events on `topic`.
    fn inbox(&self, topic: &str) -> &Inbox {
        let i = match self.inboxes.len() {
            0 | 1 => 0,
            n => {
                use std::hash::{BuildHasher, BuildHasherDefault};
                let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                    .hash_one(topic);
                (h % n as u64) as usize
            }
        };
        &self.inboxes[i]
    }
}

/// Routes messages to function inboxes. Dropping it closes them.
pub struct Router {
    routes: Vec<Route>,
    acks: Arc<AckQueue>,
    output: Output,
    hops: Arc<HopLedger>,
    max_hops: u8,
}

impl Router {
    /// A router over `routes`; acknowledgements are ordered by `acks`, dead letters go to
    /// `output`; events that come from a chain of more than `max_hops` of the agent's
    /// functions (per `hops`) are refused.
    pub fn new(
        routes: Vec<Route>,
        acks: Arc<AckQueue>,
        output: Output,
        hops: Arc<HopLedger>,
        max_hops: u8,
    ) -> Self {
        Self {
            routes,
            acks,
            output,
            hops,
            max_hops,
        }
    }

    /// A (re)connection: packet ids of the previous connection are void; when the broker
    /// did not keep the session, so are the receipts (packet ids start over).
    pub fn connected(&self, session_present: bool) {
        self.acks.reset(session_present);
        if !session_present {
            for ns in self.routes.iter().filter_map(|r| r.state.as_ref()) {
                if let Err(e) = ns.forget_all() {
                    tracing::warn!(error = %e, "could not clear the receipts of a lost session");
                }
            }
        }
    }

    /// Whether the intake holds fewer than [`crate::mqtt::ack::MAX_UNACKED`] messages
    /// unacknowledged and every inbox takes a message now without going over its capacity
    /// (or drops by policy rather than waiting). When not, the connection stops reading.
    pub fn has_room(&self) -> bool {
        self.acks.has_room()
            && self
                .routes
                .iter()
                .flat_map(|r| &r.inboxes)
                .all(|i| i.has_room())
    }

    /// Waits until [`Router::has_room`].
    pub async fn room(&self) {
        self.acks.room().await;
        for i in self.routes.iter().flat_map(|r| &r.inboxes) {
            i.room().await;
        }
    }

    /// The functions whose filters match `topic` (in this agent's partition).
    fn targets(&self, topic: &str) -> Vec<&Route> {
        self.routes
            .iter()
            .filter(|r| r.filters.iter().any(|f| topic::matches(f, topic)))
            .filter(|r| r.partition.is_none_or(|p| p.takes(topic)))
            .collect()
    }

    /// A retained message sent again on a resumed subscription
    /// ([`crate::mqtt::connection::Intake::retained_copy`]): acknowledged in its turn, and
    /// counted as `replayed`, without a call.
    pub fn retained_copy(&self, publish: Publish) {
        let registered = self.acks.register(&publish);
        for route in self.targets(&publish.topic) {
            route.stats.replayed();
        }
        Delivery::new(1, registered.ticket, self.acks.clone()).complete();
    }

    /// Hands `publish` to every function whose filters match its topic. Never blocks.
    pub fn route(&self, publish: Publish) {
        let received = Instant::now();
        let received_at_ms = crate::clock::now_ms();
        let targets = self.targets(&publish.topic);
        let registered = self.acks.register(&publish);
        let (ticket, incarnation) = (registered.ticket, registered.incarnation());
        let from_before = registered.from_before;
        if registered.finished {
            // Every function finished it in this run and the broker has its outputs: the
            // broker missed the acknowledgement (it restarted, or the connection fell).
            tracing::debug!(topic = %publish.topic, pkid = publish.pkid,
                "resend of a message already handled: acknowledged, not handled again");
            for route in &targets {
                route.stats.replayed();
            }
            Delivery::new(1, ticket, self.acks.clone()).complete();
            return;
        }
        let slots = targets
            .iter()
            .map(|r| r.inbox(&publish.topic).slot())
            .collect();
        let delivery = Arc::new(Delivery::holding(
            targets.len(),
            ticket,
            self.acks.clone(),
            slots,
        ));
        if targets.is_empty() {
            // Covered by a merged subscription but wanted by no function (or in another
            // agent's partition).
            tracing::trace!(topic = %publish.topic, "no function for topic");
            delivery.complete();
            return;
        }
        let hop = self.hops.received(&publish.topic, &publish.payload);
        for route in targets {
            route.stats.received();
            let event = Inbound {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                payload_skipped: publish.payload_dropped.unwrap_or(0),
                qos: publish.qos as u8,
                retain: publish.retain,
                received_at_ms,
                received,
                hop,
                pkid: publish.pkid,
                dup: publish.dup,
                checksum: registered.checksum,
                incarnation,
                from_before,
                delivery: delivery.clone(),
            };
            if hop >= self.max_hops {
                let msg = format!(
                    "the event was published by the last of a chain of {hop} of this agent's \
                     functions; agent.max_hops ({}) allows no more: a loop?",
                    self.max_hops
                );
                self.reject(route, event, FailureKind::HopLimit, msg);
                continue;
            }
            if event.payload_skipped > 0 {
                let msg = format!(
                    "a message whose packet (its payload of {} bytes, topic and header) \
                     is over broker.max_packet_bytes: skipped unread, with the connection kept",
                    event.payload_skipped
                );
                self.reject(route, event, FailureKind::PayloadTooLarge, msg);
                continue;
            }
            if event.payload.len() > route.max_payload_bytes {
                let msg = format!(
                    "payload of {} bytes is over max_payload_bytes ({})",
                    event.payload.len(),
                    route.max_payload_bytes
                );
                self.reject(route, event, FailureKind::PayloadTooLarge, msg);
                continue;
            }
            let inbox = route.inbox(&publish.topic);
            match inbox.push(event) {
                Ok(None) => {}
                Ok(Some(rejected)) => {
                    let msg = format!(
                        "queue full ({} events waiting, capacity {})",
                        inbox.len(),
                        inbox.capacity()
                    );
                    self.reject(route, rejected, FailureKind::QueueFull, msg);
                }
                // The function is shutting down: leave the message unacknowledged.
                Err(_) => {}
            }
        }
    }

    fn reject(&self, route: &Route, event: Inbound, kind: FailureKind, message: String) {
        self.output
            .fail(&route.name, &route.stats, event, kind, message);
    }
}

impl crate::mqtt::connection::Intake for Router {
    fn disconnected(&self) {
        self.acks.disconnected();
    }

    fn connected(&self, session_present: bool) {
        Router::connected(self, session_present);
    }

    fn has_room(&self) -> bool {
        Router::has_room(self)
    }

    async fn room(&self) {
        Router::room(self).await;
    }

    fn route(&self, publish: Publish) {
        Router::route(self, publish);
    }

    fn retained_copy(&self, publish: Publish) {
        Router::retained_copy(self, publish);
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for i in self.routes.iter().flat_map(|r| &r.inboxes) {
            i.close();
        }
    }
}

//! The router: from an MQTT message to the inboxes of the functions whose filters match.
//!
//! It runs on the MQTT poll task, so it never blocks: a full inbox or an oversized payload
//! becomes a dead letter at once. A QoS 1/2 message is acknowledged to the broker only when
//! every function it was routed to has finished with it (handled, or dead-lettered), so a
//! crash or a stop before that leaves it with the broker for redelivery.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::Publish;

use super::inbox::Inbox;
use super::output::Output;
use crate::ack::AckQueue;
use crate::event::{Delivery, Inbound};
use crate::failure::FailureKind;
use crate::metrics::FunctionStats;
use crate::topic;

/// A function as the router sees it.
pub struct Route {
    /// Function name.
    pub name: Arc<str>,
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Its inbox.
    pub inbox: Arc<Inbox>,
    /// Largest payload passed in.
    pub max_payload_bytes: usize,
    /// Its counters.
    pub stats: Arc<FunctionStats>,
}

/// Routes messages to function inboxes. Dropping it closes them.
pub struct Router {
    routes: Vec<Route>,
    acks: Arc<AckQueue>,
    output: Output,
}

impl Router {
    /// A router over `routes`; acknowledgements are ordered by `acks`, dead letters go to
    /// `output`.
    pub fn new(routes: Vec<Route>, acks: Arc<AckQueue>, output: Output) -> Self {
        Self {
            routes,
            acks,
            output,
        }
    }

    /// A (re)connection: packet ids of the previous connection are void.
    pub fn connected(&self) {
        self.acks.reset();
    }

    /// Hands `publish` to every function whose filters match its topic. Never blocks.
    pub fn route(&self, publish: Publish) {
        let received = Instant::now();
        let received_at_ms = crate::clock::now_ms();
        let targets: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.filters.iter().any(|f| topic::matches(f, &publish.topic)))
            .collect();
        let delivery = Arc::new(Delivery::new(
            targets.len(),
            self.acks.register(&publish),
            self.acks.clone(),
        ));
        if targets.is_empty() {
            // Covered by a merged subscription but wanted by no function.
            tracing::trace!(topic = %publish.topic, "no function for topic");
            delivery.complete();
            return;
        }
        for route in targets {
            route.stats.received();
            let event = Inbound {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                qos: publish.qos as u8,
                retain: publish.retain,
                received_at_ms,
                received,
                delivery: delivery.clone(),
            };
            if event.payload.len() > route.max_payload_bytes {
                let msg = format!(
                    "payload of {} bytes is over max_payload_bytes ({})",
                    event.payload.len(),
                    route.max_payload_bytes
                );
                self.reject(route, event, FailureKind::PayloadTooLarge, msg);
                continue;
            }
            match route.inbox.push(event) {
                Ok(None) => {}
                Ok(Some(rejected)) => {
                    let msg = format!(
                        "queue full ({} events waiting, capacity {})",
                        route.inbox.len(),
                        route.inbox.capacity()
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

impl Drop for Router {
    fn drop(&mut self) {
        for r in &self.routes {
            r.inbox.close();
        }
    }
}

//! The router: from an MQTT message to the queues of the functions whose filters match.
//!
//! It runs on the MQTT poll task, so it never blocks: a full queue or an oversized payload
//! becomes a dead letter at once. A QoS 1/2 message is acknowledged to the broker only when
//! every function it was routed to has finished with it (handled, or dead-lettered), so a
//! crash or a stop before that leaves it with the broker for redelivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::Publish;

use crate::metrics::FunctionStats;
use crate::mqtt::ack::{AckQueue, Ticket};
use crate::mqtt::topic;
use crate::queue::EventQueue;
use crate::runtime::ErrorKind;
use crate::sink::{DeadLetter, Sink};

/// One message on its way to one function.
#[derive(Debug)]
pub struct Event {
    /// Topic name it was published on.
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// Delivery QoS.
    pub qos: u8,
    /// Retained flag.
    pub retain: bool,
    /// Wall-clock receive time, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Monotonic receive time, for queue-wait and end-to-end latency.
    pub received: Instant,
    /// Acknowledges the message once every function is done with it.
    pub delivery: Arc<Delivery>,
}

/// Acknowledgement bookkeeping for one received message.
pub struct Delivery {
    remaining: AtomicUsize,
    ticket: Option<Ticket>,
    acks: Arc<AckQueue>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Delivery {
    /// A delivery for one function that needs no acknowledgement (tests, QoS 0).
    pub fn detached(acks: Arc<AckQueue>) -> Self {
        Self {
            remaining: AtomicUsize::new(1),
            ticket: None,
            acks,
        }
    }

    /// Marks one function as done with the message; the last one releases its
    /// acknowledgement (sent once every earlier message is acknowledged too). A delivery
    /// that is dropped without being completed is never acknowledged, so the broker
    /// redelivers it when the session resumes.
    pub fn complete(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(t) = self.ticket
        {
            self.acks.done(t);
        }
    }
}

/// A function as the router sees it.
pub struct Route {
    /// Function name.
    pub name: Arc<str>,
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Its queue.
    pub queue: Arc<EventQueue>,
    /// Largest payload passed in.
    pub max_payload_bytes: usize,
    /// Its counters.
    pub stats: Arc<FunctionStats>,
}

/// Routes messages to function queues. Dropping it closes them.
pub struct Router {
    routes: Vec<Route>,
    acks: Arc<AckQueue>,
    sink: Sink,
}

impl Router {
    /// A router over `routes`; acknowledgements are ordered by `acks`, dead letters go to
    /// `sink`.
    pub fn new(routes: Vec<Route>, acks: Arc<AckQueue>, sink: Sink) -> Self {
        Self { routes, acks, sink }
    }

    /// A (re)connection: packet ids of the previous connection are void.
    pub fn connected(&self) {
        self.acks.reset();
    }

    /// Hands `publish` to every function whose filters match its topic. Never blocks.
    pub fn route(&self, publish: Publish) {
        let received = Instant::now();
        let received_at_ms = crate::runtime::host::now_ms();
        let targets: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.filters.iter().any(|f| topic::matches(f, &publish.topic)))
            .collect();
        let delivery = Arc::new(Delivery {
            remaining: AtomicUsize::new(targets.len().max(1)),
            ticket: self.acks.register(&publish),
            acks: self.acks.clone(),
        });
        if targets.is_empty() {
            // Covered by a merged subscription but wanted by no function.
            tracing::trace!(topic = %publish.topic, "no function for topic");
            delivery.complete();
            return;
        }
        for route in targets {
            route.stats.received();
            let event = Event {
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
                self.reject(route, event, ErrorKind::PayloadTooLarge, msg);
                continue;
            }
            match route.queue.push(event) {
                Ok(None) => {}
                Ok(Some(rejected)) => {
                    let msg = format!(
                        "queue full ({} events waiting, capacity {})",
                        route.queue.len(),
                        route.queue.capacity()
                    );
                    self.reject(route, rejected, ErrorKind::QueueFull, msg);
                }
                // The function is shutting down: leave the message unacknowledged.
                Err(_) => {}
            }
        }
    }

    fn reject(&self, route: &Route, event: Event, kind: ErrorKind, message: String) {
        route.stats.failed(kind);
        tracing::warn!(function = %route.name, topic = %event.topic, kind = %kind, "{message}");
        let letter = DeadLetter::new(&route.name, &event, kind, message);
        if self.sink.try_dead_letter(&letter) {
            event.delivery.complete();
            return;
        }
        if event.qos == 0 {
            // Nothing to acknowledge and nothing the broker would redeliver: count it and
            // move on rather than pile up tasks under a QoS 0 flood.
            tracing::warn!(function = %route.name, topic = %event.topic,
                "connection backlog full: dead letter of a QoS 0 event dropped");
            return;
        }
        // The connection's request queue is full. Leaving the message unacknowledged here
        // would hold back every later acknowledgement (they leave in order) and stall the
        // stream for good, so wait for room off the poll task instead.
        tracing::debug!(function = %route.name, topic = %event.topic,
            "connection backlog full; dead letter queued from a task");
        let sink = self.sink.clone();
        tokio::spawn(async move {
            if sink.dead_letter(&letter).await {
                event.delivery.complete();
            }
        });
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for r in &self.routes {
            r.queue.close();
        }
    }
}

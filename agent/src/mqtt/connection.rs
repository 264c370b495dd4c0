//! The connection task: polls rumqttc's event loop without pause (so keep-alives flow),
//! subscribes on every (re)connection, routes incoming messages and backs off
//! exponentially when the broker is unreachable. It never runs guest code or disk I/O.
//! What it sees of the broker is published on a [`ConnectionStatus`] watch: readiness
//! for whoever started the agent, and the last connection error.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Outgoing, Packet, SubscribeFilter,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::pipeline::router::Router;
use crate::topic::Subscription;

/// How long a connection must hold before a failure starts the back-off from its minimum.
const HEALTHY: Duration = Duration::from_secs(10);

/// The connection as last seen by the connection task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The broker accepted the connection (CONNACK success) and it has not failed since.
    pub connected: bool,
    /// The broker answered the subscriptions of the current connection.
    pub subscribed: bool,
    /// Connections that failed or were lost so far.
    pub failures: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// Settings of the connection task.
pub struct ConnectionTask {
    /// rumqttc's event loop.
    pub eventloop: EventLoop,
    /// The client of that event loop (for subscribing).
    pub client: AsyncClient,
    /// What to subscribe to after each connect.
    pub subscriptions: Vec<Subscription>,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Where the task reports what it sees.
    pub status: watch::Sender<ConnectionStatus>,
    /// The agent's status topic: a retained `online` goes there once subscribed.
    pub status_topic: String,
}

impl ConnectionTask {
    /// Runs until `done` is cancelled or a clean disconnect has been sent. When
    /// `stop_intake` is cancelled the router is dropped: later messages are left
    /// unacknowledged for the broker to redeliver, and the functions' queues close.
    pub async fn run(
        mut self,
        router: Router,
        stop_intake: CancellationToken,
        done: CancellationToken,
    ) {
        let mut router = Some(router);
        let mut backoff = self.backoff_min;
        let mut failures: u32 = 0;
        // When the current connection was accepted. The back-off starts again from its
        // minimum only after a connection has held for a while: one that the broker
        // accepts and then drops at once (a protocol error, a client-id takeover) must not
        // turn into a reconnect loop at the minimum delay.
        let mut connected_at: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = done.cancelled() => break,
                () = stop_intake.cancelled(), if router.is_some() => {
                    router = None;
                    tracing::info!("intake stopped; new messages are left with the broker");
                }
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::Publish(p))) => match &router {
                        Some(r) => r.route(p),
                        None => tracing::debug!(topic = %p.topic, "message after intake stopped; not acknowledged"),
                    },
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code == ConnectReturnCode::Success {
                            tracing::info!(session_present = ack.session_present, "connected to broker");
                            self.status.send_modify(|s| {
                                s.connected = true;
                                s.subscribed = false;
                            });
                            connected_at = Some(std::time::Instant::now());
                            if let Some(r) = &router {
                                r.connected();
                            }
                            if router.is_some() {
                                self.subscribe();
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        use rumqttc::SubscribeReasonCode;
                        let mut refused = 0;
                        for (i, code) in ack.return_codes.iter().enumerate() {
                            if matches!(code, SubscribeReasonCode::Failure) {
                                refused += 1;
                                let filter = self.subscriptions.get(i).map(|s| s.filter.as_str()).unwrap_or("?");
                                tracing::error!(filter, "broker refused the subscription");
                            }
                        }
                        tracing::info!(count = ack.return_codes.len(), refused, "subscribed");
                        self.status.send_modify(|s| s.subscribed = true);
                        self.announce();
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        tracing::info!("disconnected from broker");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected_at.take().is_some_and(|t| t.elapsed() >= HEALTHY) {
                            backoff = self.backoff_min;
                            failures = 0;
                        }
                        failures += 1;
                        self.status.send_modify(|s| {
                            s.connected = false;
                            s.subscribed = false;
                            s.failures += 1;
                            s.last_error = Some(e.to_string());
                        });
                        if failures == 1 {
                            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost; reconnecting");
                        } else {
                            tracing::debug!(error = %e, attempt = failures, retry_in_ms = backoff.as_millis() as u64, "reconnect failed");
                        }
                        if failures.is_multiple_of(10) {
                            tracing::warn!(error = %e, attempts = failures, "broker connection keeps failing");
                        }
                        tokio::select! {
                            () = done.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(self.backoff_max);
                    }
                }
            }
        }
    }

    /// Says `online`, retained, on the status topic (the last will says `offline`).
    fn announce(&self) {
        let body = super::options::presence("online");
        let qos = rumqttc::QoS::AtLeastOnce;
        if self
            .client
            .try_publish(self.status_topic.clone(), qos, true, body)
            .is_err()
        {
            tracing::warn!("connection backlog full: presence not announced");
        }
    }

    fn subscribe(&self) {
        let filters: Vec<SubscribeFilter> = self
            .subscriptions
            .iter()
            .map(|s| SubscribeFilter::new(s.filter.clone(), crate::event::mqtt_qos(s.qos)))
            .collect();
        for s in &self.subscriptions {
            tracing::info!(filter = %s.filter, qos = s.qos, "subscribing");
        }
        // Through a task: the request queue may be full and this loop must keep polling.
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(error = %e, "could not subscribe");
            }
        });
    }
}

/// Sends the acknowledgements that [`crate::ack::AckQueue`] releases, in that order, until
/// the queue is dropped or the connection is gone.
pub async fn send_acks(client: AsyncClient, mut ready: mpsc::UnboundedReceiver<rumqttc::Publish>) {
    while let Some(p) = ready.recv().await {
        if client.ack(&p).await.is_err() {
            break;
        }
    }
}

//! The connection task: polls rumqttc's event loop without pause (so keep-alives flow),
//! subscribes on every (re)connection, routes incoming messages and backs off
//! exponentially when the broker is unreachable. It never runs guest code or disk I/O.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Outgoing, Packet, SubscribeFilter,
};
use tokio_util::sync::CancellationToken;

use super::topic::Subscription;
use crate::router::Router;

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
                            backoff = self.backoff_min;
                            if let Some(r) = &router {
                                r.connected();
                            }
                            failures = 0;
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
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        tracing::info!("disconnected from broker");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost; reconnecting");
                        } else {
                            tracing::debug!(error = %e, attempt = failures, retry_in_ms = backoff.as_millis() as u64, "reconnect failed");
                        }
                        if failures.is_multiple_of(10) {
                            tracing::warn!(error = %e, attempts = failures, "still cannot reach the broker");
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

    fn subscribe(&self) {
        let filters: Vec<SubscribeFilter> = self
            .subscriptions
            .iter()
            .map(|s| SubscribeFilter::new(s.filter.clone(), super::qos(s.qos)))
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

//! The ordered stop of a running agent, with its deadlines, in one place.
//!
//! 1. Intake stops: the router is dropped, so later messages stay with the broker,
//!    unacknowledged, and the inboxes close.
//! 2. Drain: dispatchers and supervisors finish what is queued and in flight, and the
//!    calls' outputs, dead letters and flush waits complete, within
//!    `agent.shutdown_grace_ms`. What is still running then is left unacknowledged, for the
//!    broker to redeliver.
//! 3. If connected: the acknowledgements released so far go out ([`ACK_DEADLINE`]), then
//!    a retained `offline` on the status topic and a clean MQTT DISCONNECT
//!    ([`DISCONNECT_DEADLINE`]; past it the connection task is stopped). If not, there is
//!    nobody to tell, and the connection task is stopped at once.
//! 4. The state store is flushed one last time, the stats reporter stops, and each
//!    function's totals are logged.

use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::report::StatsBook;
use crate::mqtt::connection::ConnectionStatus;
use crate::runtime::Runtime;

/// Longest wait for the released acknowledgements to reach the connection.
pub const ACK_DEADLINE: Duration = Duration::from_secs(1);
/// Longest wait for the DISCONNECT to go out before the connection task is stopped.
pub const DISCONNECT_DEADLINE: Duration = Duration::from_secs(2);

/// Everything the stop sequence stops, in the order it stops them.
pub struct Shutdown {
    pub(super) grace: Duration,
    /// Parent of every token below; cancelled last, so nothing outlives the stop.
    pub(super) root: CancellationToken,
    pub(super) intake: CancellationToken,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) tracker: TaskTracker,
    pub(super) acker: JoinHandle<()>,
    pub(super) client: AsyncClient,
    pub(super) status_topic: String,
    pub(super) connection: JoinHandle<()>,
    pub(super) status: watch::Receiver<ConnectionStatus>,
    pub(super) connection_done: CancellationToken,
    pub(super) flusher: JoinHandle<()>,
    pub(super) flusher_stop: CancellationToken,
    pub(super) reporter: Option<JoinHandle<()>>,
    pub(super) stats: StatsBook,
    /// The loaded functions, dropped last.
    pub(super) runtime: Runtime,
}

impl Shutdown {
    /// Runs the stop sequence described in the module documentation.
    pub async fn run(mut self) {
        tracing::info!(
            grace_ms = self.grace.as_millis() as u64,
            "shutting down: stopping intake"
        );
        self.intake.cancel();
        let drained = tokio::time::timeout(self.grace, async {
            for w in self.workers {
                let _ = w.await;
            }
            self.tracker.close();
            self.tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "grace period over: events still in flight are left unacknowledged for redelivery"
            );
        }
        // With no connection there is nobody to send acknowledgements or a DISCONNECT to:
        // do not wait for them.
        let connected = self.status.borrow().connected;
        if connected {
            let _ = tokio::time::timeout(ACK_DEADLINE, self.acker).await;
            // A clean DISCONNECT discards the last will: say `offline` ourselves.
            let offline = crate::mqtt::options::presence("offline");
            let qos = rumqttc::QoS::AtLeastOnce;
            let _ = self
                .client
                .try_publish(self.status_topic, qos, true, offline);
            let _ = self.client.disconnect().await;
        }
        let disconnected = connected
            && tokio::time::timeout(DISCONNECT_DEADLINE, &mut self.connection)
                .await
                .is_ok();
        if !disconnected {
            self.connection_done.cancel();
            let _ = self.connection.await;
        }
        self.flusher_stop.cancel();
        let _ = self.flusher.await;
        self.root.cancel();
        if let Some(r) = self.reporter {
            let _ = r.await;
        }
        self.stats.log_totals();
        drop(self.runtime);
        tracing::info!("stopped");
    }
}

//! The ordered stop of a running agent, with its deadlines, in one place.
//!
//! 0. The reloader stops (a reload under way finishes first, within the grace: one still
//!    compiling then is left, nothing of it in force; a function it is removing
//!    goes on draining, tracked like in-flight work). Then the deployment task: a
//!    probation the stop ends is reported passed while the output connection is up
//!    (within [`DISCONNECT_DEADLINE`]).
//! 1. Intake stops: the router is dropped, so later messages stay with the broker,
//!    unacknowledged, and the inboxes close.
//! 2. Drain: dispatchers and supervisors finish what is queued and in flight, and the
//!    calls' outputs, dead letters and flush waits complete, within
//!    `agent.shutdown_grace_ms`. What is still running then is left unacknowledged, for the
//!    broker to redeliver.
//! 3. If connected: the acknowledgements released so far go out on each intake connection
//!    (within [`ACK_DEADLINE`], which also covers the broker confirming the outputs they
//!    wait on), each intake disconnects, then the output connection sends a retained
//!    `offline` on the status topic and a clean MQTT DISCONNECT ([`DISCONNECT_DEADLINE`];
//!    past it the connection tasks are stopped). If not, there is nobody to tell, and the
//!    connection tasks are stopped at once.
//! 4. The state store is flushed one last time, the stats reporter stops, the background
//!    tasks (watchdog, metrics server, scale to zero, subscription requests) are cancelled
//!    and waited for ([`DISCONNECT_DEADLINE`]), and each function's totals are logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Completes on SIGINT or SIGTERM, with the signal's name. The handlers are installed
/// when it is called (inside a runtime), not when it is first polled, so that a signal
/// between the two is not lost. The agent's `run`, and `compare` and `publish`, stop on it.
pub fn stop_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match signals {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

pub use super::lanes::DISCONNECT_DEADLINE;
use super::lanes::Lanes;
use crate::metrics::report::StatsBook;
use crate::mqtt::connection::Links;
use crate::mqtt::publisher::Publisher;
use crate::runtime::Runtime;
use crate::tasks::Background;

/// Longest wait for the released acknowledgements to reach the connections (and for the
/// broker to confirm the outputs they wait on).
pub const ACK_DEADLINE: Duration = Duration::from_secs(1);
/// Everything the stop sequence stops, in the order it stops them.
pub struct Shutdown {
    pub(super) grace: Duration,
    /// Parent of every token below; cancelled last, so nothing outlives the stop.
    pub(super) root: CancellationToken,
    pub(super) reloader: JoinHandle<()>,
    pub(super) reloader_stop: CancellationToken,
    /// The deployment task, if the agent is in a group: stopped after the reloader (a
    /// deployment it was applying is refused as the agent stops), and waited for while
    /// the output connection can still carry its last report.
    pub(super) deployer: Option<(CancellationToken, JoinHandle<()>)>,
    /// The broker is the embedded one: it stops with the agent, and what it holds is lost.
    pub(super) embedded_broker: bool,
    pub(super) stop_intake: CancellationToken,
    /// The running functions: their workers and intake connections.
    pub(super) lanes: Lanes,
    pub(super) tracker: TaskTracker,
    pub(super) publisher: Arc<Publisher>,
    pub(super) status_topic: String,
    pub(super) output_connection: JoinHandle<()>,
    pub(super) links: watch::Receiver<Links>,
    pub(super) force_stop: CancellationToken,
    pub(super) flusher: JoinHandle<()>,
    pub(super) flusher_stop: CancellationToken,
    pub(super) reporter: Option<JoinHandle<()>>,
    pub(super) presence: JoinHandle<()>,
    /// The watchdog, the metrics server, scale to zero, subscription requests: ended last.
    pub(super) background: Background,
    pub(super) stats: StatsBook,
    /// The engine, dropped last.
    pub(super) runtime: Arc<Runtime>,
}

impl Shutdown {
    /// Runs the stop sequence described in the module documentation.
    pub async fn run(self) {
        self.reloader_stop.cancel();
        // One deadline for the reload under way and the drain: a reload compiling a
        // Python or JavaScript module (seconds here, minutes on a Pi) held the stop for
        // the whole compile, past the grace and systemd's stop timeout (a probe,
        // 2026-12-08). Its plan is dropped; nothing of it was put in force.
        let until = tokio::time::Instant::now() + self.grace;
        let mut reloader = self.reloader;
        if tokio::time::timeout_at(until, &mut reloader).await.is_err() {
            tracing::warn!(
                "a reload was still loading modules: left unfinished, nothing of it in force"
            );
            reloader.abort();
        }
        if let Some((stop, mut deployer)) = self.deployer {
            stop.cancel();
            if tokio::time::timeout(DISCONNECT_DEADLINE, &mut deployer)
                .await
                .is_err()
            {
                deployer.abort();
            }
        }
        tracing::info!(
            grace_ms = self.grace.as_millis() as u64,
            "shutting down: stopping intake"
        );
        if self.embedded_broker {
            // "Left with the broker" is no comfort there (a probe, 2026-12-08: 23,560 of a
            // burst's acknowledged events gone after a clean stop, nothing said).
            tracing::warn!(
                "the embedded broker stops with the agent: the QoS 1/2 messages it has acknowledged to publishers and not yet delivered are lost (docs/state.md); use Mosquitto where that matters"
            );
        }
        self.stop_intake.cancel();
        let (mut workers, mut intakes, mut shadows) = (Vec::new(), Vec::new(), Vec::new());
        for lane in self.lanes.take_all() {
            workers.extend(lane.workers);
            intakes.push(lane.intake);
            shadows.push(lane.shadow);
        }
        let drained = tokio::time::timeout_at(until, async {
            for w in workers {
                let _ = w.await;
            }
            // Once the functions are done, nothing hands their shadows events.
            for s in &shadows {
                if let Some(w) = s.retire() {
                    let _ = w.await;
                }
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
        let connected = self.links.borrow().overall().connected;
        let mut connections = Vec::new();
        if connected {
            let _ = tokio::time::timeout(ACK_DEADLINE, async {
                for i in &mut intakes {
                    let _ = (&mut i.acker).await;
                }
            })
            .await;
            for i in &intakes {
                let _ = i.client.try_disconnect();
            }
            // A clean DISCONNECT discards the last will: say `offline` ourselves.
            use crate::messages::{Message as _, Presence, Status};
            let offline = Status::presence(Presence::Offline).to_bytes();
            let qos = rumqttc::QoS::AtLeastOnce;
            // Waits for its turn: a try would fail whenever another output is being
            // queued at that moment, and the retained status would say `online` for good.
            // Bounded, like the DISCONNECT: a broker that stopped reading must not hold
            // the stop up.
            let offline = self
                .publisher
                .publish(self.status_topic, qos, true, offline, None, None);
            let _ = tokio::time::timeout(DISCONNECT_DEADLINE, offline).await;
            let _ = tokio::time::timeout(DISCONNECT_DEADLINE, self.publisher.disconnect()).await;
        }
        connections.push(self.output_connection);
        // Each intake's client lives until its connection task ends: with its request
        // queue closed, rumqttc would end the connection at once instead of reading on
        // until the broker closes it after the DISCONNECT (see `mqtt::connection`).
        let mut clients = Vec::new();
        for i in intakes {
            connections.push(i.connection);
            clients.push(i.client);
        }
        let all = async {
            for c in &mut connections {
                let _ = c.await;
            }
        };
        let disconnected =
            connected && tokio::time::timeout(DISCONNECT_DEADLINE, all).await.is_ok();
        if !disconnected {
            self.force_stop.cancel();
            for c in connections {
                let _ = c.await;
            }
        }
        drop(clients);
        self.flusher_stop.cancel();
        let _ = self.flusher.await;
        self.root.cancel();
        if let Some(r) = self.reporter {
            let _ = r.await;
        }
        let _ = self.presence.await;
        if !self.background.stop(DISCONNECT_DEADLINE).await {
            tracing::warn!("background tasks still running at the end of the stop sequence");
        }
        self.stats.log_totals(None);
        drop(self.runtime);
        tracing::info!("stopped");
    }
}

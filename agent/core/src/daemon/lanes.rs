//! Each running function as one [`Lane`]: its worker (a dispatcher, or a supervisor per
//! persistent instance) over its inboxes, its stats entry, its place on the links board,
//! and its intake connection with the router that feeds the inboxes. [`Lanes`] starts one
//! per function at start-up, and one for each function a reload adds; it retires the ones a
//! reload removes ([`Lanes::retire`]: unsubscribe, drain the queue, acknowledge,
//! disconnect), and hands the rest to the shutdown sequence ([`Lanes::take_all`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FunctionConfig, Mode};
use crate::metrics::report::StatsBook;
use crate::mqtt::ack::AckQueue;
use crate::mqtt::connection::{
    Backoff, IntakeTask, Link, Links, SessionFilters, intake_name, send_acks,
};
use crate::mqtt::options;
use crate::pipeline::auto::Auto;
use crate::pipeline::hops::HopLedger;
use crate::pipeline::inbox::Inbox;
use crate::pipeline::output::Output;
use crate::pipeline::router::{Route, Router};
use crate::pipeline::shadow::{self, Shadow, Slot};
use crate::pipeline::{Shared, on_demand, persistent};
use crate::runtime::LoadedFunction;

/// Longest wait for the DISCONNECTs to go out before the connection tasks are stopped (a
/// removed function's, and at shutdown every one).
pub const DISCONNECT_DEADLINE: Duration = Duration::from_secs(2);

/// Why a function could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// Its persistent instances do not fit in the instance pool.
    #[error(
        "function `{function}`: its {wanted} persistent instance(s) do not fit in the instance \
         pool ({free} place(s) free of runtime.max_instances)"
    )]
    Pool {
        /// The function.
        function: String,
        /// Its `instances`.
        wanted: u32,
        /// Places free in the pool when it was started.
        free: usize,
    },
    /// A worker thread could not be started.
    #[error("function `{function}`: cannot start a worker thread")]
    Worker {
        /// The function.
        function: String,
        /// Why (the system's thread or memory limit).
        #[source]
        source: std::io::Error,
    },
}

/// A function's shadow and the primary again for its noise calibration, loaded, each
/// with its state namespace (`[function.shadow]`).
pub struct ShadowSides {
    /// `<name>~shadow`.
    pub shadow: Arc<LoadedFunction>,
    /// `<name>~control`, unless `calibrate_events = 0`.
    pub control: Option<Arc<LoadedFunction>>,
    /// `<name>~canary`, with `[function.shadow.canary]`.
    pub canary: Option<Arc<LoadedFunction>>,
}

/// Function `f`'s shadow and control (loaded as `<name>~shadow` and `<name>~control`,
/// found with `loaded`), each given a namespace of its own, which the shadow fills with a
/// copy of the primary's state; `None` without `[function.shadow]`.
///
/// # Errors
/// The namespaces cannot be opened.
pub fn shadow_sides(
    state: &Arc<crate::state::StateStore>,
    f: &crate::config::FunctionConfig,
    primary: &LoadedFunction,
    loaded: impl Fn(&str) -> Option<Arc<LoadedFunction>>,
) -> Result<Option<ShadowSides>, crate::state::StateError> {
    let (Some(side), Some(from)) = (f.shadow_function(), primary.state()) else {
        return Ok(None);
    };
    let attach = |name: &str| -> Result<Option<Arc<LoadedFunction>>, crate::state::StateError> {
        let Some(l) = loaded(name) else {
            return Ok(None);
        };
        if l.state().is_none() {
            // Filled with a copy of the primary's state by the shadow's worker once the
            // shadow is in place (pipeline::shadow).
            l.attach_state(state.namespace(name)?);
        }
        Ok(Some(l))
    };
    let Some(shadow) = attach(&side.name)? else {
        return Ok(None);
    };
    let control = match f.control_function() {
        Some(c) => attach(&c.name)?,
        None => None,
    };
    // The canary works on the function's own state.
    let canary = f.canary_function().and_then(|c| loaded(&c.name));
    if let Some(c) = &canary
        && c.state().is_none()
    {
        c.attach_state(from.clone());
    }
    Ok(Some(ShadowSides {
        shadow,
        control,
        canary,
    }))
}
/// One function's intake connection, as the stop sequence sees it.
pub struct Intake {
    pub(super) client: AsyncClient,
    /// Sends the acknowledgements; ends once every delivery is done or dropped.
    pub(super) acker: JoinHandle<()>,
    pub(super) connection: JoinHandle<()>,
}

/// The running functions, and what starting another takes. Clones share them.
#[derive(Clone)]
pub struct Lanes {
    inner: Arc<Inner>,
}

struct Inner {
    parts: Parts,
    running: Mutex<Vec<Lane>>,
    /// The broker sessions being ended ([`Lanes::end_stale_sessions`]), by function.
    ending: Ending,
}

/// The tokens of the tasks that end stale broker sessions, by function. A function of that
/// name that starts again cancels its task: its clean connection would otherwise take the
/// client id from the new intake (and wipe its session), and drop the receipts it uses.
type Ending = Arc<Mutex<std::collections::BTreeMap<String, CancellationToken>>>;

fn lock(
    ending: &Ending,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, CancellationToken>> {
    ending.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running function.
pub struct Lane {
    name: String,
    topics: Vec<String>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) intake: Intake,
    /// Cancelled to remove the function: its intake unsubscribes, then drops the router.
    retire: CancellationToken,
    /// Cancelled when its connection must end now, without waiting for a clean stop.
    force_stop: CancellationToken,
    link: Link,
    /// Persistent instances' places in the instance pool, given back when it is removed.
    _permits: Option<OwnedSemaphorePermit>,
    loaded: Arc<LoadedFunction>,
    /// Its shadow, which a reload may put in, replace or take out.
    pub(super) shadow: Slot,
}

/// What the lanes share with the rest of the agent.
pub struct Parts {
    /// The connections' status board.
    pub board: watch::Sender<Links>,
    /// Outputs and dead letters.
    pub output: Output,
    /// The hop ledger.
    pub hops: Arc<HopLedger>,
    /// The instance pool and the tracker.
    pub shared: Shared,
    /// The stats of every function.
    pub stats: StatsBook,
    /// Cancelled first by shutdown: every intake stops (the parent of each lane's token).
    pub stop_intake: CancellationToken,
    /// Cancelled by shutdown when the connections did not end by themselves (the parent
    /// of each lane's token).
    pub force_stop: CancellationToken,
}

impl Lanes {
    /// The stats of every function.
    pub fn stats(&self) -> &StatsBook {
        &self.inner.parts.stats
    }

    /// No function running yet.
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts,
                running: Mutex::new(Vec::new()),
                ending: Ending::default(),
            }),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Lane>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts function `f` of `config`, loaded as `loaded` (its shadow's sides as
    /// `shadow`), with an intake connection made with `intake`: its worker (and its
    /// shadow's) first, then its connection, which starts its flow of events.
    ///
    /// # Errors
    /// [`LaneError`] if its persistent instances have no room in the instance pool or a
    /// worker thread cannot start; nothing of the function is left running then.
    pub fn start(
        &self,
        config: &Config,
        f: &FunctionConfig,
        loaded: Arc<LoadedFunction>,
        shadow: Option<ShadowSides>,
        intake: MqttOptions,
    ) -> Result<(), LaneError> {
        let inner = &self.inner.parts;
        if let Some(ending) = lock(&self.inner.ending).remove(&f.name) {
            ending.cancel();
            tracing::info!(function = %f.name, "a function of this name is back: its old broker session is no longer ended");
        }
        // Persistent instances hold their pool places while the function runs.
        let permits = match f.mode {
            // Auto takes its places when it is promoted, if the pool has room then.
            Mode::OnDemand | Mode::Auto => None,
            Mode::Persistent => {
                let pool = inner.shared.instances.clone();
                let free = pool.available_permits();
                Some(
                    pool.try_acquire_many_owned(f.instances)
                        .map_err(|_| LaneError::Pool {
                            function: f.name.clone(),
                            wanted: f.instances,
                            free,
                        })?,
                )
            }
        };
        let stats = inner.stats.add(&f.name, f.mode);
        // One queue, or one per persistent instance sharing the function's capacity.
        let queues = if f.mode != Mode::OnDemand {
            f.instances.max(1) as usize
        } else {
            1
        };
        let capacity = f.queue_capacity.div_ceil(queues);
        let inboxes: Vec<_> = (0..queues)
            .map(|_| {
                // As much more as the function's window of unconfirmed outputs grew
                // with the broker's round trip, shared out like the capacity.
                let output = inner.output.clone();
                let more = move || {
                    let (window, _) = crate::mqtt::publisher::windows(output.round_trip());
                    (window - crate::mqtt::publisher::UNCONFIRMED_PER_FUNCTION) / queues
                };
                Arc::new(Inbox::new(capacity, f.overflow).beyond_capacity(more))
            })
            .collect();
        let queues = inboxes.clone();
        stats.probe_queue_depth(Box::new(move || {
            queues.iter().map(|q| q.len() as u64).sum()
        }));
        let module = loaded.clone();
        stats.probe_module(Box::new(move || module.sha256()));
        if let Some(ns) = loaded.state().cloned() {
            stats.probe_state_keys(Box::new(move || ns.keys()));
        }
        tracing::info!(function = %f.name, mode = f.mode.as_str(), topics = ?f.topics,
            sha256 = %loaded.sha256(), "function ready");
        let auto = (f.mode == Mode::Auto)
            .then(|| Arc::new(Auto::new(&f.name, f.auto.clone(), f.instances)));
        if let Some(auto) = auto.clone() {
            stats.probe_auto(Box::new(move || auto.snapshot()));
        }
        let slot = Slot::default();
        if let Err(e) = self.set_shadow(config, f, shadow, &slot, &loaded) {
            inner.stats.remove(&f.name);
            return Err(e);
        }
        let s = slot.clone();
        stats.probe_shadow(Box::new(move || s.report()));
        let workers = match f.mode {
            Mode::OnDemand => on_demand::run(
                loaded.clone(),
                f.max_concurrency,
                stats.clone(),
                inboxes[0].clone(),
                inner.shared.clone(),
                slot.clone(),
            ),
            Mode::Persistent | Mode::Auto => persistent::run(
                loaded.clone(),
                f,
                stats.clone(),
                inboxes.clone(),
                &inner.shared,
                auto,
                slot.clone(),
            ),
        };
        let workers = match workers {
            Ok(w) => w,
            Err(source) => {
                // The workers that did start end once their queues close.
                for i in &inboxes {
                    i.close();
                }
                inner.stats.remove(&f.name);
                return Err(LaneError::Worker {
                    function: f.name.clone(),
                    source,
                });
            }
        };
        let route = Route {
            name: f.name.as_str().into(),
            filters: f.topics.clone(),
            inboxes,
            max_payload_bytes: f.max_payload_bytes,
            stats,
            state: loaded.state().cloned(),
            partition: f.partition,
        };
        let router = |acks| {
            Router::new(
                vec![route],
                acks,
                inner.output.clone(),
                inner.hops.clone(),
                config.agent.max_hops,
            )
        };
        let link = Link::new(inner.board.clone(), intake_name(&f.name));
        let (stop_intake, force_stop, retire) = (
            inner.stop_intake.child_token(),
            inner.force_stop.child_token(),
            CancellationToken::new(),
        );
        let backoff = Backoff::new(
            Duration::from_millis(config.broker.reconnect_min_ms),
            Duration::from_millis(config.broker.reconnect_max_ms),
        );
        let task = |eventloop, client| IntakeTask {
            background: inner.shared.background.clone(),
            eventloop,
            client,
            subscriptions: subscriptions(f),
            backoff,
            link: link.clone(),
            max_pause: Duration::from_secs(config.broker.keep_alive_secs) / 2,
            retire: retire.clone(),
            session: SessionFilters::load(session_file(config, &f.name)),
        };
        let intake = spawn_intake(
            intake,
            &config.broker,
            task,
            router,
            &stop_intake,
            &force_stop,
        );
        let mut running = self.running();
        running.push(Lane {
            name: f.name.clone(),
            topics: f.topics.clone(),
            workers,
            intake,
            retire,
            force_stop,
            link,
            _permits: permits,
            loaded,
            shadow: slot,
        });
        self.update_filters(&running);
        Ok(())
    }

    /// Puts function `f`'s shadow (its sides loaded as `sides`; none without
    /// `[function.shadow]`) in `slot`, replacing the one there. A shadow taken out has its
    /// retained report cleared.
    ///
    /// # Errors
    /// [`LaneError::Worker`] if the shadow's worker thread cannot start; the slot is left
    /// as it was.
    fn set_shadow(
        &self,
        config: &Config,
        f: &FunctionConfig,
        sides: Option<ShadowSides>,
        slot: &Slot,
        primary: &Arc<LoadedFunction>,
    ) -> Result<(), LaneError> {
        let inner = &self.inner.parts;
        let shadow = match (&f.shadow, sides, f.shadow_function()) {
            (Some(cfg), Some(sides), Some(side)) => Some(
                Shadow::start(
                    shadow::Parts {
                        function: f.name.clone(),
                        cfg: cfg.clone(),
                        model: side.mode,
                        candidate: sides.shadow,
                        control: sides.control.zip(f.control_function().map(|c| c.mode)),
                        primary: primary.clone(),
                        canary: sides.canary,
                        report_topic: config.shadow_topic(&f.name),
                        agent: config.agent.id.clone(),
                    },
                    &inner.shared,
                )
                .map_err(|source| LaneError::Worker {
                    function: f.name.clone(),
                    source,
                })?,
            ),
            _ => None,
        };
        let taken_out = shadow.is_none();
        if slot.replace(shadow).is_some() && taken_out {
            tracing::info!(function = %f.name, "shadow removed");
            let output = inner.output.clone();
            let clear = crate::event::Outbound {
                topic: config.shadow_topic(&f.name),
                payload: Vec::new(),
                qos: 1,
                retain: true,
            };
            tokio::spawn(async move { output.publish_unheld(clear).await });
        }
        Ok(())
    }

    /// A reload changed running function `f`'s `[function.shadow]`: its new shadow (sides
    /// loaded as `sides`), or none, replaces the one it had, between two events.
    ///
    /// # Errors
    /// [`LaneError::Worker`]; the old shadow stays then.
    pub fn reshadow(
        &self,
        config: &Config,
        f: &FunctionConfig,
        sides: Option<ShadowSides>,
    ) -> Result<(), LaneError> {
        let lane = {
            let running = self.running();
            running
                .iter()
                .find(|l| l.name == f.name)
                .map(|l| (l.shadow.clone(), l.loaded.clone()))
        };
        match lane {
            Some((slot, primary)) => self.set_shadow(config, f, sides, &slot, &primary),
            None => Ok(()),
        }
    }

    /// Waits until function `name`'s intake is subscribed, at most `deadline`; whether it
    /// is.
    pub async fn subscribed(&self, name: &str, deadline: Duration) -> bool {
        let link = intake_name(name);
        let mut board = self.inner.parts.board.subscribe();
        let subscribed = board.wait_for(|l| l.get(&link).is_some_and(|s| s.subscribed));
        matches!(tokio::time::timeout(deadline, subscribed).await, Ok(Ok(_)))
    }

    /// The module version of function `name`'s shadow, if it has one running.
    pub fn shadow_version(&self, name: &str) -> Option<Arc<str>> {
        let running = self.running();
        let lane = running.iter().find(|l| l.name == name)?;
        lane.shadow.shadow().map(|s| s.version())
    }

    /// Takes function `name` out of the running ones and returns its retirement, which
    /// the caller runs: the intake unsubscribes, routes what arrives until the broker
    /// confirms, then stops; the queue drains; the acknowledgements go out; the intake
    /// disconnects; the stats entry goes (its totals are logged) and the persistent
    /// instances' pool places are given back. `None` if no such function runs.
    pub fn retire(&self, name: &str) -> Option<impl Future<Output = ()> + Send + 'static> {
        let lane = {
            let mut running = self.running();
            let i = running.iter().position(|l| l.name == name)?;
            let lane = running.remove(i);
            self.update_filters(&running);
            lane
        };
        let stats = self.inner.parts.stats.clone();
        Some(lane.retire(stats))
    }

    /// Every running function, for the shutdown sequence (the lanes are empty after).
    pub fn take_all(&self) -> Vec<Lane> {
        std::mem::take(&mut *self.running())
    }

    /// Outputs that match a running function's filters may come back in (hop counting).
    fn update_filters(&self, running: &[Lane]) {
        let filters = running.iter().flat_map(|l| l.topics.clone()).collect();
        self.inner.parts.output.set_filters(filters);
    }
}

impl Lane {
    async fn retire(mut self, stats: StatsBook) {
        tracing::info!(function = %self.name, "function removed by reload: draining its queue");
        // The intake unsubscribes, routes what the broker still sends, then drops the
        // router (at once if the connection is down or lost): the queue drains.
        self.retire.cancel();
        for w in &mut self.workers {
            let _ = w.await;
        }
        if let Some(w) = self.shadow.retire() {
            let _ = w.await;
        }
        // The acknowledgements of what drained, once the broker has those events' outputs.
        tokio::select! {
            () = self.force_stop.cancelled() => {}
            _ = &mut self.intake.acker => {}
        }
        self.link.remove();
        let _ = self.intake.client.try_disconnect();
        let connection = &mut self.intake.connection;
        if tokio::time::timeout(DISCONNECT_DEADLINE, &mut *connection)
            .await
            .is_err()
        {
            self.force_stop.cancel();
            let _ = connection.await;
        }
        stats.log_totals(Some(&self.name));
        stats.remove(&self.name);
        tracing::info!(function = %self.name, "function removed: queue drained, intake disconnected");
    }
}

/// What `function`'s intake subscribes to. QoS 2 is subscribed as QoS 1: rumqttc 0.25
/// forgets the ids of incoming QoS 2 messages at every reconnection, then takes the
/// broker's resent PUBREL for a protocol error and drops the connection, again at every
/// reconnection: a loop with no end. The agent acknowledges only after handling, so it
/// handles a message at least once either way; QoS 2 would only have saved a duplicate on
/// redelivery.
fn subscriptions(function: &FunctionConfig) -> Vec<crate::topic::Subscription> {
    if function.qos > 1 {
        tracing::warn!(function = %function.name, "qos = 2 is subscribed as QoS 1 (at-least-once)");
    }
    let mut subs = crate::topic::subscriptions(
        function
            .topics
            .iter()
            .map(|t| (t.as_str(), function.qos.min(1))),
    );
    if let Some(group) = &function.share {
        for s in &mut subs {
            s.filter = format!("$share/{group}/{}", s.filter);
        }
    }
    subs
}

/// Anything but letters, digits, `-`, `_` and `.` written as `_`: a file name.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the session files of `config`'s broker are: `<data_dir>/sessions/<broker url>`.
fn session_dir(config: &Config) -> std::path::PathBuf {
    config
        .agent
        .data_dir
        .join("sessions")
        .join(safe(&config.broker.url))
}

/// Where the filters of function `name`'s session on the broker are kept
/// ([`SessionFilters`]): `<session dir>/<client id>`, made safe as a file name.
fn session_file(config: &Config, name: &str) -> std::path::PathBuf {
    session_dir(config).join(safe(&format!("{}.{name}", config.client_id())))
}

/// Ends, on the broker, the sessions of functions that have a session file but are no
/// longer in `config`: removed while the agent was stopped (an edit and a restart, a
/// deployment rolled back at start), or by a reload once their intake has disconnected.
/// Each had a session of its own (`clean_session = false`) that kept its subscriptions:
/// the broker went on queueing every message on its topics for it, for ever (Mosquitto
/// keeps a session until `persistent_client_expiration`, unlimited by default, and queues
/// up to `max_queued_messages`, which the package raises to 100,000), saved them in every
/// autosave, and handed that backlog to a function of the same name added later. Each is
/// connected once with its client id and a clean session, which makes the broker drop
/// the old one. The function's receipts in the state store go with the session: they
/// were kept to know the broker's resends of its packet ids, and there will be none (its
/// state stays, for a function of that name added later). Then its file is deleted, or
/// kept for the next start to try again if the receipts could not be. An unreachable
/// broker is tried again with the reconnection back-off until the agent stops (and at the
/// next start), or until a function of that name starts again ([`Lanes::start`]), which
/// then keeps the session and the receipts.
impl Lanes {
    pub(super) fn end_stale_sessions(
        &self,
        config: &Config,
        addr: &crate::config::BrokerAddress,
        state: &Arc<crate::state::StateStore>,
    ) {
        let Ok(entries) = std::fs::read_dir(session_dir(config)) else {
            return;
        };
        let prefix = format!("{}.", safe(&config.client_id()));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(function) = name.strip_prefix(&prefix) else {
                continue;
            };
            if name.ends_with(".part")
                || config.functions.iter().any(|f| f.name == function)
                || lock(&self.inner.ending).contains_key(function)
            {
                continue;
            }
            let options = match options::intake(config, addr, function) {
                Ok(mut o) => {
                    o.set_clean_session(true).set_manual_acks(false);
                    o
                }
                Err(e) => {
                    tracing::warn!(
                        function,
                        "cannot end the broker session of a removed function: {e}"
                    );
                    continue;
                }
            };
            let token = CancellationToken::new();
            lock(&self.inner.ending).insert(function.to_string(), token.clone());
            let (file, function, state) = (e.path(), function.to_string(), state.clone());
            let registry = self.inner.ending.clone();
            let max = Duration::from_millis(config.broker.reconnect_max_ms);
            let mut wait = Duration::from_millis(config.broker.reconnect_min_ms);
            let broker = config.broker.clone();
            let ended = async move {
                let (client, mut eventloop) = AsyncClient::new(options, 1);
                options::network(&mut eventloop, &broker);
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break,
                        Ok(_) => {}
                        Err(_) => {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(max);
                        }
                    }
                }
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            };
            self.inner.parts.shared.background.spawn_until_stopped(async move {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = ended => {}
                }
                tracing::info!(function = %function, "the broker session of a function no longer configured ended: the broker no longer keeps its messages");
                // Under the lock, so that a function of this name that starts now finds
                // its receipts either dropped already or kept.
                let receipts = {
                    let _ending = lock(&registry);
                    if token.is_cancelled() {
                        return;
                    }
                    state.namespace(&function).and_then(|ns| ns.forget_all())
                };
                let flushed = state.flushed().await;
                let mut ending = lock(&registry);
                if token.is_cancelled() {
                    // Its file is the new intake's now.
                    return;
                }
                ending.remove(&function);
                match receipts {
                    Ok(()) if flushed => {
                        let _ = crate::files::remove_in_turn(&file, crate::files::Turn::take());
                    }
                    Ok(()) => tracing::warn!(function = %function, "the receipts of a removed function are not on disk yet: the next start drops them"),
                    Err(e) => tracing::warn!(function = %function, "the receipts of a removed function stay in the state store until the next start: {e}"),
                }
            });
        }
    }
}

/// Says that the state store is new while the data directory has broker sessions from
/// earlier runs: its state was moved aside, or it is on a disk that is not mounted or was
/// lost (a probe, 2026-12-08: a deleted `state/` started every count from zero, silently).
pub(super) fn warn_of_a_lost_store(config: &Config) {
    if sessions_of_earlier_runs(&config.agent.data_dir) {
        tracing::warn!(
            dir = %config.agent.data_dir.join("state").display(),
            "the state store is new, but this data directory has broker sessions from earlier \
             runs: unless its state was moved aside on purpose, the store is lost or on a disk \
             that is not mounted, and every function's state starts from empty"
        );
    }
}

/// Whether `data_dir` has a session file: `sessions/<broker>/<client id>`.
fn sessions_of_earlier_runs(data_dir: &std::path::Path) -> bool {
    std::fs::read_dir(data_dir.join("sessions"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| std::fs::read_dir(d.path()).is_ok_and(|mut f| f.next().is_some()))
}

/// Says which broker sessions the data directory holds for client ids other than this
/// agent's: an `agent.id` or `broker.client_id` changed on the same `data_dir` leaves the
/// old ids' sessions on the broker, which queues every event on their topics for them for
/// ever (a probe, 2026-12-08: Mosquitto kept them through two restarts under the new id).
/// They are not ended here: another device may run as that id (a data directory copied
/// to clone one), and ending its session would lose its queued events.
pub(super) fn warn_of_other_ids(config: &Config) {
    let Ok(entries) = std::fs::read_dir(session_dir(config)) else {
        return;
    };
    let prefix = format!("{}.", safe(&config.client_id()));
    let others: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(&prefix) && !n.ends_with(".part"))
        .collect();
    if !others.is_empty() {
        let (host, port) = crate::config::BrokerAddress::parse(&config.broker.url)
            .map_or(("HOST".into(), "PORT".into()), |a| {
                (a.host, a.port.to_string())
            });
        tracing::warn!(
            client_ids = ?others,
            dir = %session_dir(config).display(),
            "the data directory holds broker sessions of other client ids (was agent.id or \
             broker.client_id changed?): the broker keeps queueing their topics' events for \
             them. If nothing runs as them any more, end each with `mosquitto_sub -h {host} \
             -p {port} -i <client id> -t x -E` (a clean session; with the agent's TLS and \
             credentials options where it uses them) and delete its file here"
        );
    }
}

/// Starts an intake connection with `options` to `broker` (its settings): its client, its
/// acknowledgement order (and the task that sends what it releases), and the task
/// (`task`) that polls it into the router (`router`).
fn spawn_intake(
    options: MqttOptions,
    broker: &crate::config::BrokerConfig,
    task: impl FnOnce(rumqttc::EventLoop, AsyncClient) -> IntakeTask,
    router: impl FnOnce(Arc<AckQueue>) -> Router,
    stop_intake: &CancellationToken,
    force_stop: &CancellationToken,
) -> Intake {
    let (client, mut eventloop) = AsyncClient::new(options, options::REQUEST_CHANNEL_CAPACITY);
    options::network(&mut eventloop, broker);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acks = AckQueue::new(ack_tx);
    let acker = tokio::spawn(send_acks(client.clone(), ack_rx, acks.generation()));
    let task = task(eventloop, client.clone());
    let connection = tokio::spawn(task.run(router(acks), stop_intake.clone(), force_stop.clone()));
    Intake {
        client,
        acker,
        connection,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_file_tells_of_an_earlier_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!super::sessions_of_earlier_runs(d), "no sessions/");
        std::fs::create_dir_all(d.join("sessions/mqtt___127.0.0.1_1883")).unwrap();
        assert!(
            !super::sessions_of_earlier_runs(d),
            "a broker's folder, empty"
        );
        std::fs::write(d.join("sessions/mqtt___127.0.0.1_1883/edge-agent-a.f"), "").unwrap();
        assert!(super::sessions_of_earlier_runs(d));
    }
}

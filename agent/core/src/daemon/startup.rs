//! Startup: from a [`Prepared`] agent to a [`Running`] one, in named steps: the state
//! store, the embedded broker, the output connection and its publisher, the stats reporter
//! and the state flusher, then the functions (one [`Lanes`] entry each: a dispatcher or
//! supervisor behind a router on an intake connection of its own, which starts the flow of
//! events), and last the presence announcer and the reloader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lanes::{Lanes, Parts, shadow_sides};
use super::shutdown::Shutdown;
use super::{AgentError, Prepared};
use crate::config::{BrokerAddress, Config};
use crate::metrics::report::StatsBook;
use crate::mqtt::connection::{Backoff, ConnectionStatus, Link, Links, OUTPUT, OutputTask};
use crate::mqtt::options::{self, Connections};
use crate::mqtt::publisher::Publisher;
use crate::mqtt::refusal::Refusals;
use crate::pipeline::Shared;
use crate::pipeline::hops::HopLedger;
use crate::pipeline::output::Output;
use crate::runtime::Runtime;
use crate::state::StateStore;
use crate::tasks::Background;

/// Builds a running agent from a [`Prepared`] one.
pub struct Startup {
    prepared: Prepared,
}

/// What a running agent reports once it is ready: connected and subscribed.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where the broker is: `broker.url`, or where the embedded broker really listens
    /// (its port when the configured one is 0).
    pub broker: BrokerAddress,
}

/// A running agent: events flow until [`Running::stop`].
pub struct Running {
    broker: BrokerAddress,
    links: watch::Receiver<Links>,
    stats: StatsBook,
    shutdown: Shutdown,
}

impl Startup {
    /// A startup for `prepared`.
    pub fn new(prepared: Prepared) -> Self {
        Self { prepared }
    }

    /// Opens the state store, starts the embedded broker if configured, and spawns the
    /// pipeline and the connections on the current tokio runtime.
    ///
    /// # Errors
    /// [`AgentError`] if the state store cannot be opened or the embedded broker cannot
    /// start.
    pub fn start(self) -> Result<Running, AgentError> {
        let Prepared {
            config,
            runtime,
            broker,
            connections,
            hangups,
            state,
        } = self.prepared;
        let state = open_state(&config, &runtime, state)?;
        let (broker, connections) = start_broker(&config, broker, connections)?;
        tracing::info!(
            agent = %config.agent.id,
            broker = %broker,
            client_id = %config.client_id(),
            allocator = ?runtime.allocator(),
            functions = config.functions.len(),
            connections = connections.intake.len() + 1,
            "starting"
        );
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let background = Background::new(root.child_token());
        super::systemd::spawn_watchdog(&background);
        let (board, links) =
            watch::channel(Links::new(config.functions.iter().map(|f| f.name.as_str())));
        // The output connection first: functions publish through it.
        let force_stop = root.child_token();
        let (client, mut eventloop) =
            AsyncClient::new(connections.output, options::REQUEST_CHANNEL_CAPACITY);
        options::network(&mut eventloop, &config.broker);
        let publisher = Publisher::new(client, runtime.broker_limits());
        let output_task = OutputTask {
            eventloop,
            publisher: publisher.clone(),
            backoff: Backoff::new(
                Duration::from_millis(config.broker.reconnect_min_ms),
                Duration::from_millis(config.broker.reconnect_max_ms),
            ),
            link: Link::new(board.clone(), OUTPUT.into()),
            stale_filters: stale_filters(&config),
            refusals: Refusals::new(publisher.clone()),
        };
        let output_connection = tokio::spawn(output_task.run(force_stop.clone()));
        let hops = Arc::new(HopLedger::default());
        let output = Output::new(
            publisher.clone(),
            config.dead_letter_topic(),
            tracker.clone(),
            runtime.broker_limits(),
            hops.clone(),
        );
        let shared = Shared {
            output: output.clone(),
            instances: Arc::new(Semaphore::new(config.runtime.max_instances as usize)),
            tracker: tracker.clone(),
            background: background.clone(),
        };
        let stats = StatsBook::default();
        let store = state.clone();
        stats.probe_state_disk(Box::new(move || store.disk_bytes()));
        let store = state.clone();
        stats.probe_state_flushes(Box::new(move || store.flushes()));
        let dropped = publisher.clone();
        stats.probe_outputs_dropped(Box::new(move || dropped.dropped()));
        let timed = publisher.clone();
        stats.probe_round_trip(Box::new(move || timed.round_trip()));
        let reporter = spawn_reporter(&config, &publisher, &stats, root.child_token());
        if let Some(listen) = config.metrics.listen {
            let health = state.health();
            super::prometheus::serve(listen, stats.clone(), links.clone(), health, &background)
                .map_err(|source| AgentError::Metrics {
                    listen: listen.to_string(),
                    source,
                })?;
        }
        let flusher_stop = root.child_token();
        let flusher = tokio::spawn(state.clone().run_flusher(flusher_stop.clone()));
        // The functions last: their intake connections start the flow of events.
        let stop_intake = root.child_token();
        let lanes = Lanes::new(Parts {
            board,
            output,
            hops,
            shared,
            stats: stats.clone(),
            stop_intake: stop_intake.clone(),
            force_stop: force_stop.clone(),
        });
        let mut runtime = runtime;
        let functions: BTreeMap<_, _> = runtime.take_functions().into_iter().collect();
        for (f, intake) in config.functions.iter().zip(connections.intake) {
            // Runtime::new loaded every configured function or failed.
            if let Some(loaded) = functions.get(&f.name) {
                let shadow = shadow_sides(&state, f, loaded, |n| functions.get(n).cloned())?;
                lanes.start(&config, f, loaded.clone(), shadow, intake)?;
            }
        }
        lanes.end_stale_sessions(&config, &broker, &state);
        super::lanes::warn_of_other_ids(&config);
        super::memory::warn_if_the_guests_may_not_fit(&config);
        let runtime = Arc::new(runtime);
        let loaded = |name: &str| functions.get(name).cloned();
        let (birth, births) = watch::channel(super::reload::birth(&config, loaded));
        let health = state.health();
        background.spawn_until_stopped(remind_degraded(state.health()));
        let reloader = super::reload::Reloader::new(
            &config,
            functions,
            super::reload::Parts {
                runtime: runtime.clone(),
                lanes: lanes.clone(),
                state,
                broker: broker.clone(),
                publisher: publisher.clone(),
                birth,
                tracker: tracker.clone(),
            },
        );
        let deployer_stop = root.child_token();
        let deployer = super::deploy::spawn(
            &config,
            &broker,
            reloader.rewriter(),
            publisher.clone(),
            stats.clone(),
            deployer_stop.clone(),
        )
        .map_err(|source| AgentError::Mqtt {
            file: config.source.display().to_string(),
            source,
        })?;
        let reloader_stop = root.child_token();
        let reloader = reloader.spawn(reloader_stop.clone(), hangups);
        // Said online only now, with the reloader listening: `start` runs beside the
        // connection tasks (on `block_on`'s thread), so an earlier announcement could let
        // an edit made on seeing it land before the file watcher was there.
        let presence = tokio::spawn(announce_presence(
            links.clone(),
            publisher.clone(),
            config.status_topic(),
            births,
            health,
            root.child_token(),
        ));
        let shutdown = Shutdown {
            grace: Duration::from_millis(config.agent.shutdown_grace_ms),
            root,
            reloader,
            reloader_stop,
            deployer: deployer.map(|d| (deployer_stop, d)),
            embedded_broker: config.broker.embedded,
            stop_intake,
            lanes,
            tracker,
            publisher,
            status_topic: config.status_topic(),
            output_connection,
            links: links.clone(),
            force_stop,
            flusher,
            flusher_stop,
            reporter,
            presence,
            background,
            stats: stats.clone(),
            runtime,
        };
        Ok(Running {
            broker,
            links,
            stats,
            shutdown,
        })
    }
}

impl Running {
    /// Completes once the agent is connected and subscribed; `None` if the connection
    /// task ended first.
    pub async fn ready(&self) -> Option<Ready> {
        let mut links = self.links.clone();
        links.wait_for(|l| l.overall().subscribed).await.ok()?;
        Some(Ready {
            broker: self.broker.clone(),
        })
    }

    /// The agent's connections as a whole, now (see [`Links::overall`]).
    pub fn status(&self) -> ConnectionStatus {
        self.links.borrow().overall()
    }

    /// Every connection's status, live.
    pub fn links(&self) -> watch::Receiver<Links> {
        self.links.clone()
    }

    /// Every function's counters and costs, live.
    pub fn stats(&self) -> &StatsBook {
        &self.stats
    }

    /// Stops the agent: see [`Shutdown`].
    pub async fn stop(self) {
        self.shutdown.run().await;
    }
}

/// Opens the state store and gives every function its namespace (its shadow's sides get
/// theirs when its lane starts: [`shadow_sides`]).
/// The state store (`opened` by [`Prepared::open`], or opened now), with each function's
/// namespace attached.
fn open_state(
    config: &Config,
    runtime: &Runtime,
    opened: Option<Arc<StateStore>>,
) -> Result<Arc<StateStore>, AgentError> {
    let state = match opened {
        Some(state) => state,
        None => StateStore::open(&config.agent.data_dir, &config.state)?,
    };
    warn_about_the_data_disk(config);
    if state.is_new() {
        super::lanes::warn_of_a_lost_store(config);
    }
    super::reload::drop_stale_shadows(&state, config);
    // A renamed function starts empty, and nothing said where its old state went (a probe).
    match state.unconfigured(|name| config.functions.iter().any(|f| f.name == name)) {
        Ok(names) if !names.is_empty() => tracing::info!(
            functions = ?names,
            "the state store keeps the state of functions no longer in the config (renamed or \
             removed?): unused unless a function of that name comes back. With the agent \
             stopped, `edge-agent state list` shows it and `edge-agent state delete NAME --all` \
             deletes it"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot list the state of functions no longer configured: {e}"),
    }
    for f in &config.functions {
        if let Some(loaded) = runtime.function(&f.name) {
            loaded.attach_state(state.namespace(&f.name)?);
        }
    }
    Ok(state)
}

/// Flushes a second above which an agent on an SD card says what they cost the card.
const CARD_FLUSHES: u64 = 10;

/// Says, once at start (and in `edge-agent check`), what the disk of the data directory
/// needs: [`warn_if_flushes_wear_a_card`], [`warn_if_the_disk_has_met_errors`].
pub fn warn_about_the_data_disk(config: &Config) {
    warn_if_flushes_wear_a_card(config);
    warn_if_the_disk_has_met_errors(config);
}

/// Says that the data directory's ext4 has met errors since it was last checked (its
/// count goes back to 0 only at an `fsck`): a card or disk that may be failing, and a
/// store that will not trust a flush during the next error (docs/state.md).
fn warn_if_the_disk_has_met_errors(config: &Config) {
    let Some(count) = crate::files::ext4_error_count(&config.agent.data_dir) else {
        return;
    };
    if let Some(errors) = count.read().filter(|n| *n > 0) {
        tracing::warn!(
            device = count.device,
            errors,
            "the data directory's file system (ext4 on {}) has met {errors} error(s) since \
             it was last checked (`dmesg` says which): the card or disk may be failing; \
             check it with fsck at the next chance (Raspberry Pi OS does at boot when it \
             is needed)",
            count.device
        );
    }
}

/// Says, once at start, that the state store's flushes wear the SD card or eMMC it is on
/// when they are allowed more than [`CARD_FLUSHES`] a second: about 13 KB each, whatever
/// they hold (docs/state.md, "The card"). The device config caps them at 5.
fn warn_if_flushes_wear_a_card(config: &Config) {
    let st = &config.state;
    let capped = st.max_flushes_per_sec != 0 && st.max_flushes_per_sec <= CARD_FLUSHES;
    let spaced = st.min_flush_interval_ms >= 1000 / CARD_FLUSHES;
    if capped || spaced {
        return;
    }
    let Some(card) = crate::files::flash_card_under(&config.agent.data_dir) else {
        return;
    };
    let most = match st.max_flushes_per_sec {
        0 => "without a cap".to_owned(),
        n => format!("up to {n} times a second"),
    };
    tracing::warn!(
        card,
        max_flushes_per_sec = st.max_flushes_per_sec,
        "the state store is on an SD card or eMMC and may flush {most}, each flush writing \
         about 13 KB to the card: a function writing state at 50 events/s would write about \
         56 GB a day, which wears a card out within months; state.max_flushes_per_sec = 5 \
         (as in configs/device.toml) cuts that to about 9 GB (docs/state.md, \"The card\")"
    );
}

/// Starts the embedded broker if configured; the client then connects where it really
/// listens.
fn start_broker(
    config: &Config,
    broker: BrokerAddress,
    connections: Connections,
) -> Result<(BrokerAddress, Connections), AgentError> {
    if !config.broker.embedded {
        return Ok((broker, connections));
    }
    let err = |source| AgentError::Mqtt {
        file: config.source.display().to_string(),
        source,
    };
    let listen = embedded_broker(config).map_err(err)?;
    let actual = BrokerAddress {
        port: listen.port(),
        ..broker
    };
    let connections = options::connections(config, &actual).map_err(err)?;
    Ok((actual, connections))
}

/// Starts the embedded broker; where it listens.
#[cfg(feature = "broker")]
fn embedded_broker(config: &Config) -> Result<std::net::SocketAddr, crate::mqtt::MqttError> {
    crate::mqtt::broker::start(config)
}

/// A build without the embedded broker (`config::validate` refuses `broker.embedded`
/// there first, with the way out).
#[cfg(not(feature = "broker"))]
fn embedded_broker(_: &Config) -> Result<std::net::SocketAddr, crate::mqtt::MqttError> {
    Err(crate::mqtt::MqttError::broker(
        "start",
        "this build has no embedded broker",
    ))
}

fn spawn_reporter(
    config: &Config,
    publisher: &Arc<Publisher>,
    stats: &StatsBook,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    (config.agent.stats_interval_secs > 0).then(|| {
        tokio::spawn(stats.clone().publish_every(
            config.agent.id.clone(),
            publisher.clone(),
            config.stats_topic(),
            Duration::from_secs(config.agent.stats_interval_secs),
            stop,
        ))
    })
}

/// What an agent with one connection for everything subscribed to under the client id the
/// output connection now uses: each function's filters, and their merged form.
fn stale_filters(config: &Config) -> Vec<String> {
    let topics = || config.functions.iter().flat_map(|f| f.topics.iter());
    let merged = crate::topic::subscriptions(topics().map(|t| (t.as_str(), 1)));
    topics()
        .cloned()
        .chain(merged.into_iter().map(|s| s.filter))
        .collect()
}

/// Says `online`, retained, on the status topic each time every connection is up and
/// subscribed (the output connection's last will says `offline` when it is lost), and
/// again when the message changes (a hot reload put new module versions in force, or the
/// state store became unavailable or available again: `degraded` says why).
async fn announce_presence(
    mut links: watch::Receiver<Links>,
    publisher: Arc<Publisher>,
    topic: String,
    mut birth: watch::Receiver<Vec<u8>>,
    mut health: watch::Receiver<Option<String>>,
    stop: CancellationToken,
) {
    use crate::messages::{Message as _, Status};
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            ready = links.wait_for(|l| l.overall().subscribed) => if ready.is_err() { return },
        }
        tracing::info!("connected and subscribed");
        loop {
            let qos = rumqttc::QoS::AtLeastOnce;
            let mut body = birth.borrow_and_update().clone();
            if let Some(reason) = health.borrow_and_update().clone()
                && let Ok(mut status) = serde_json::from_slice::<Status>(&body)
            {
                status.degraded = Some(reason);
                body = status.to_bytes();
            }
            if publisher
                .publish(topic.clone(), qos, true, body, None, None)
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                lost = links.wait_for(|l| !l.overall().connected) => {
                    if lost.is_err() { return }
                    break;
                }
                changed = birth.changed() => if changed.is_err() { return },
                changed = health.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// While the state store is unavailable, says so in the log once a minute (the change
/// itself is logged when it happens).
async fn remind_degraded(mut health: watch::Receiver<Option<String>>) {
    const EVERY: Duration = Duration::from_secs(60);
    loop {
        if health.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let since = tokio::time::Instant::now();
        let mut next = since + EVERY;
        loop {
            // A new reason meanwhile (the free space falling further) is no reminder.
            let due = tokio::select! {
                () = tokio::time::sleep_until(next) => true,
                changed = health.changed() => if changed.is_err() { return } else { false },
            };
            let Some(reason) = health.borrow().clone() else {
                break;
            };
            if due {
                next += EVERY;
                tracing::warn!(reason = %reason, for_secs = since.elapsed().as_secs(),
                    "still degraded: functions that write state are paused, their events wait with the broker");
            }
        }
    }
}

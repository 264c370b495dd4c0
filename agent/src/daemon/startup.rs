//! Startup: from a [`Prepared`] agent to a [`Running`] one, in named steps: the state
//! store, the embedded broker, the output connection and its publisher, the pipeline (one
//! dispatcher or supervisor per function, each behind a router on an intake connection of
//! its own), the stats reporter and the presence announcer, and last the intake
//! connections, which start the flow of events.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shutdown::{Intake, Shutdown};
use super::{AgentError, Prepared};
use crate::ack::AckQueue;
use crate::config::{BrokerAddress, Config, FunctionConfig, Mode};
use crate::metrics::report::StatsBook;
use crate::mqtt::connection::{
    Backoff, ConnectionStatus, IntakeTask, Link, Links, OutputTask, send_acks,
};
use crate::mqtt::options::{self, Connections};
use crate::pipeline::hops::HopLedger;
use crate::pipeline::inbox::Inbox;
use crate::pipeline::output::Output;
use crate::pipeline::router::{Route, Router};
use crate::pipeline::{Shared, dispatch, supervisor};
use crate::publisher::Publisher;
use crate::runtime::Runtime;
use crate::state::StateStore;

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
        } = self.prepared;
        let state = open_state(&config, &runtime)?;
        let (broker, connections) = start_broker(&config, broker, connections)?;
        tracing::info!(
            agent = %config.agent.id,
            broker = %format_args!("{}:{}", broker.host, broker.port),
            client_id = %config.client_id(),
            allocator = ?runtime.allocator(),
            functions = config.functions.len(),
            connections = connections.intake.len() + 1,
            "starting"
        );
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (board, links) =
            watch::channel(Links::new(config.functions.iter().map(|f| f.name.as_str())));
        let backoff = || {
            Backoff::new(
                Duration::from_millis(config.broker.reconnect_min_ms),
                Duration::from_millis(config.broker.reconnect_max_ms),
            )
        };
        // The output connection first: functions publish through it.
        let connection_done = root.child_token();
        let (client, mut eventloop) =
            AsyncClient::new(connections.output, options::REQUEST_CHANNEL_CAPACITY);
        options::low_latency(&mut eventloop);
        let publisher = Publisher::new(client);
        let output_task = OutputTask {
            eventloop,
            publisher: publisher.clone(),
            backoff: backoff(),
            link: Link::new(board.clone(), 0),
            stale_filters: stale_filters(&config),
        };
        let output_connection = tokio::spawn(output_task.run(connection_done.clone()));
        let hops = Arc::new(HopLedger::default());
        let output = Output::new(
            publisher.clone(),
            config.dead_letter_topic(),
            tracker.clone(),
            config.broker.max_packet_bytes,
            hops.clone(),
            config
                .functions
                .iter()
                .flat_map(|f| f.topics.clone())
                .collect(),
        );
        let shared = Shared {
            output: output.clone(),
            instances: Arc::new(Semaphore::new(config.runtime.max_instances as usize)),
            tracker: tracker.clone(),
        };
        let (routes, workers, stats) = spawn_functions(&config, &runtime, &shared);
        let store = state.clone();
        stats.probe_state_disk(Box::new(move || store.disk_bytes()));
        let reporter = spawn_reporter(&config, &publisher, &stats, root.child_token());
        if let Some(listen) = config.metrics.listen {
            super::prometheus::serve(listen, stats.clone(), links.clone()).map_err(|source| {
                AgentError::Metrics {
                    listen: listen.to_string(),
                    source,
                }
            })?;
        }
        let loaded = |name: &str| runtime.function(name);
        let (birth, births) = watch::channel(super::reload::birth(&config, loaded));
        let presence = tokio::spawn(announce_presence(
            links.clone(),
            publisher.clone(),
            config.status_topic(),
            births,
            root.child_token(),
        ));
        let functions = config
            .functions
            .iter()
            .filter_map(|f| Some((f.name.clone(), runtime.function(&f.name)?)))
            .collect();
        let reloader = super::reload::Reloader::new(&config, functions, publisher.clone(), birth);
        tokio::spawn(reloader.run(root.child_token()));
        let flusher_stop = root.child_token();
        let flusher = tokio::spawn(state.run_flusher(flusher_stop.clone()));
        let stop_intake = root.child_token();
        let intakes = config
            .functions
            .iter()
            .zip(connections.intake)
            .zip(routes)
            .enumerate()
            .map(|(i, ((f, opts), route))| {
                let router = |acks| {
                    Router::new(
                        vec![route],
                        acks,
                        output.clone(),
                        hops.clone(),
                        config.agent.max_hops,
                    )
                };
                let link = Link::new(board.clone(), i + 1);
                spawn_intake(
                    &config,
                    f,
                    opts,
                    router,
                    link,
                    backoff(),
                    &stop_intake,
                    &connection_done,
                )
            })
            .collect();
        let shutdown = Shutdown {
            grace: Duration::from_millis(config.agent.shutdown_grace_ms),
            root,
            stop_intake,
            workers,
            tracker,
            intakes,
            publisher,
            status_topic: config.status_topic(),
            output_connection,
            links: links.clone(),
            connection_done,
            flusher,
            flusher_stop,
            reporter,
            presence,
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

/// Opens the state store and gives every function its namespace.
fn open_state(config: &Config, runtime: &Runtime) -> Result<Arc<StateStore>, AgentError> {
    let state = StateStore::open(&config.agent.data_dir, &config.state)?;
    for f in &config.functions {
        if let Some(loaded) = runtime.function(&f.name) {
            loaded.attach_state(state.namespace(&f.name)?);
        }
    }
    Ok(state)
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
    let listen = crate::mqtt::broker::start(config).map_err(err)?;
    let actual = BrokerAddress {
        port: listen.port(),
        ..broker
    };
    let connections = options::connections(config, &actual).map_err(err)?;
    Ok((actual, connections))
}

type Functions = (Vec<Route>, Vec<JoinHandle<()>>, StatsBook);

/// Spawns each function's dispatcher (on-demand) or supervisor (persistent) over a fresh
/// inbox, and returns the router's view of them.
fn spawn_functions(config: &Config, runtime: &Runtime, shared: &Shared) -> Functions {
    let mut routes = Vec::new();
    let mut workers = Vec::new();
    let mut book = StatsBook::default();
    for f in &config.functions {
        let Some(loaded) = runtime.function(&f.name) else {
            // Runtime::new loaded every configured function or failed.
            continue;
        };
        let stats = book.add(&f.name, f.mode);
        // One queue, or one per persistent instance sharing the function's capacity.
        let queues = if f.mode == Mode::Persistent {
            f.instances.max(1) as usize
        } else {
            1
        };
        let capacity = f.queue_capacity.div_ceil(queues);
        let inboxes: Vec<_> = (0..queues)
            .map(|_| Arc::new(Inbox::new(capacity, f.overflow)))
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
        workers.extend(match f.mode {
            Mode::OnDemand => dispatch::run_on_demand(
                loaded,
                f.max_concurrency,
                stats.clone(),
                inboxes[0].clone(),
                shared.clone(),
            ),
            Mode::Persistent => {
                // Persistent instances hold their pool slots for the agent's lifetime.
                match shared.instances.clone().try_acquire_many_owned(f.instances) {
                    Ok(permits) => permits.forget(),
                    Err(_) => tracing::warn!(function = %f.name, "instance pool exhausted by persistent functions"),
                }
                supervisor::run_persistent(loaded, f, stats.clone(), inboxes.clone(), shared)
            }
        });
        routes.push(Route {
            name: f.name.as_str().into(),
            filters: f.topics.clone(),
            inboxes,
            max_payload_bytes: f.max_payload_bytes,
            stats,
        });
    }
    (routes, workers, book)
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
/// again when the message changes (a hot reload put new module versions in force).
async fn announce_presence(
    mut links: watch::Receiver<Links>,
    publisher: Arc<Publisher>,
    topic: String,
    mut birth: watch::Receiver<Vec<u8>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            ready = links.wait_for(|l| l.overall().subscribed) => if ready.is_err() { return },
        }
        tracing::info!("connected and subscribed");
        loop {
            let qos = rumqttc::QoS::AtLeastOnce;
            let body = birth.borrow_and_update().clone();
            if publisher
                .publish(topic.clone(), qos, true, body, None)
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
            }
        }
    }
}

/// Starts `function`'s intake connection: its client, its acknowledgement order (and the
/// task that sends what it releases), and the task that polls it into `router`.
#[allow(clippy::too_many_arguments)]
fn spawn_intake(
    config: &Config,
    function: &FunctionConfig,
    options: MqttOptions,
    router: impl FnOnce(Arc<AckQueue>) -> Router,
    link: Link,
    backoff: Backoff,
    stop_intake: &CancellationToken,
    done: &CancellationToken,
) -> Intake {
    // QoS 2 is subscribed as QoS 1. rumqttc 0.25 forgets the ids of incoming QoS 2
    // messages at every reconnection, then takes the broker's resent PUBREL for a
    // protocol error and drops the connection, again at every reconnection: a loop with
    // no end. The agent acknowledges only after handling, so it handles a message at
    // least once either way; QoS 2 would only have saved a duplicate on redelivery.
    if function.qos > 1 {
        tracing::warn!(function = %function.name, "qos = 2 is subscribed as QoS 1 (at-least-once)");
    }
    let subscriptions = crate::topic::subscriptions(
        function
            .topics
            .iter()
            .map(|t| (t.as_str(), function.qos.min(1))),
    );
    let (client, mut eventloop) = AsyncClient::new(options, options::REQUEST_CHANNEL_CAPACITY);
    options::low_latency(&mut eventloop);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(send_acks(client.clone(), ack_rx));
    let task = IntakeTask {
        eventloop,
        client: client.clone(),
        subscriptions,
        backoff,
        link,
        max_pause: Duration::from_secs(config.broker.keep_alive_secs) / 2,
    };
    let connection = tokio::spawn(task.run(
        router(AckQueue::new(ack_tx)),
        stop_intake.clone(),
        done.clone(),
    ));
    Intake {
        client,
        acker,
        connection,
    }
}

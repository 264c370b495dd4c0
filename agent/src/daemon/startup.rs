//! Startup: from a [`Prepared`] agent to a [`Running`] one, in named steps: the state
//! store, the embedded broker, the connection's client, the pipeline (one dispatcher or
//! supervisor per function, the router over their inboxes), the stats reporter, and last
//! the connection task, which starts the flow of events.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shutdown::Shutdown;
use super::{AgentError, Prepared};
use crate::ack::AckQueue;
use crate::config::{BrokerAddress, Config, Mode};
use crate::metrics::report::StatsBook;
use crate::mqtt::connection::{ConnectionStatus, ConnectionTask, send_acks};
use crate::mqtt::options;
use crate::pipeline::hops::HopLedger;
use crate::pipeline::inbox::Inbox;
use crate::pipeline::output::Output;
use crate::pipeline::router::{Route, Router};
use crate::pipeline::{Shared, dispatch, supervisor};
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
    status: watch::Receiver<ConnectionStatus>,
    stats: StatsBook,
    shutdown: Shutdown,
}

impl Startup {
    /// A startup for `prepared`.
    pub fn new(prepared: Prepared) -> Self {
        Self { prepared }
    }

    /// Opens the state store, starts the embedded broker if configured, and spawns the
    /// pipeline and the connection on the current tokio runtime.
    ///
    /// # Errors
    /// [`AgentError`] if the state store cannot be opened or the embedded broker cannot
    /// start.
    pub fn start(self) -> Result<Running, AgentError> {
        let Prepared {
            config,
            runtime,
            broker,
            options,
        } = self.prepared;
        let state = open_state(&config, &runtime)?;
        let (broker, options) = start_broker(&config, broker, options)?;
        tracing::info!(
            agent = %config.agent.id,
            broker = %format_args!("{}:{}", broker.host, broker.port),
            client_id = %config.client_id(),
            allocator = ?runtime.allocator(),
            functions = config.functions.len(),
            "starting"
        );
        let (client, mut eventloop) = AsyncClient::new(options, options::REQUEST_CHANNEL_CAPACITY);
        options::low_latency(&mut eventloop);
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(send_acks(client.clone(), ack_rx));
        let hops = Arc::new(HopLedger::default());
        let output = Output::new(
            client.clone(),
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
        let router = Router::new(
            routes,
            AckQueue::new(ack_tx),
            output,
            hops,
            config.agent.max_hops,
        );
        let reporter = spawn_reporter(&config, &client, &stats, root.child_token());
        let flusher_stop = root.child_token();
        let flusher = tokio::spawn(state.run_flusher(flusher_stop.clone()));
        let (status_tx, status) = watch::channel(ConnectionStatus::default());
        let intake = root.child_token();
        let connection_done = root.child_token();
        let connection = spawn_connection(
            &config,
            eventloop,
            &client,
            router,
            status_tx,
            &intake,
            &connection_done,
        );
        let shutdown = Shutdown {
            grace: Duration::from_millis(config.agent.shutdown_grace_ms),
            root,
            intake,
            workers,
            tracker,
            acker,
            client,
            status_topic: config.status_topic(),
            connection,
            status: status.clone(),
            connection_done,
            flusher,
            flusher_stop,
            reporter,
            stats: stats.clone(),
            runtime,
        };
        Ok(Running {
            broker,
            status,
            stats,
            shutdown,
        })
    }
}

impl Running {
    /// Completes once the agent is connected and subscribed; `None` if the connection
    /// task ended first.
    pub async fn ready(&self) -> Option<Ready> {
        let mut status = self.status.clone();
        status.wait_for(|s| s.subscribed).await.ok()?;
        Some(Ready {
            broker: self.broker.clone(),
        })
    }

    /// The connection as the agent sees it, live.
    pub fn status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status.clone()
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
    options: MqttOptions,
) -> Result<(BrokerAddress, MqttOptions), AgentError> {
    if !config.broker.embedded {
        return Ok((broker, options));
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
    let options = options::agent_options(config, &actual).map_err(err)?;
    Ok((actual, options))
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
        let inbox = Arc::new(Inbox::new(f.queue_capacity, f.overflow));
        tracing::info!(function = %f.name, mode = f.mode.as_str(), topics = ?f.topics, "function ready");
        workers.push(match f.mode {
            Mode::OnDemand => tokio::spawn(dispatch::run_on_demand(
                loaded,
                f.max_concurrency,
                stats.clone(),
                inbox.clone(),
                shared.clone(),
            )),
            Mode::Persistent => {
                // Persistent instances hold their pool slots for the agent's lifetime.
                match shared.instances.clone().try_acquire_many_owned(f.instances) {
                    Ok(permits) => permits.forget(),
                    Err(_) => tracing::warn!(function = %f.name, "instance pool exhausted by persistent functions"),
                }
                tokio::spawn(supervisor::run_persistent(loaded, f.clone(), stats.clone(), inbox.clone(), shared.clone()))
            }
        });
        routes.push(Route {
            name: f.name.as_str().into(),
            filters: f.topics.clone(),
            inbox,
            max_payload_bytes: f.max_payload_bytes,
            stats,
        });
    }
    (routes, workers, book)
}

fn spawn_reporter(
    config: &Config,
    client: &AsyncClient,
    stats: &StatsBook,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    (config.agent.stats_interval_secs > 0).then(|| {
        tokio::spawn(stats.clone().publish_every(
            client.clone(),
            config.stats_topic(),
            Duration::from_secs(config.agent.stats_interval_secs),
            stop,
        ))
    })
}

fn spawn_connection(
    config: &Config,
    eventloop: EventLoop,
    client: &AsyncClient,
    router: Router,
    status: watch::Sender<ConnectionStatus>,
    intake: &CancellationToken,
    done: &CancellationToken,
) -> JoinHandle<()> {
    // QoS 2 is subscribed as QoS 1. rumqttc 0.25 forgets the ids of incoming QoS 2
    // messages at every reconnection, then takes the broker's resent PUBREL for a
    // protocol error and drops the connection, again at every reconnection: a loop with
    // no end. The agent acknowledges only after handling, so it handles a message at
    // least once either way; QoS 2 would only have saved a duplicate on redelivery.
    for f in config.functions.iter().filter(|f| f.qos > 1) {
        tracing::warn!(function = %f.name, "qos = 2 is subscribed as QoS 1 (at-least-once)");
    }
    let subscriptions = crate::topic::subscriptions(
        config
            .functions
            .iter()
            .flat_map(|f| f.topics.iter().map(move |t| (t.as_str(), f.qos.min(1)))),
    );
    let task = ConnectionTask {
        eventloop,
        client: client.clone(),
        subscriptions,
        backoff_min: Duration::from_millis(config.broker.reconnect_min_ms),
        backoff_max: Duration::from_millis(config.broker.reconnect_max_ms),
        status,
        status_topic: config.status_topic(),
    };
    tokio::spawn(task.run(router, intake.clone(), done.clone()))
}

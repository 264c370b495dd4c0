//! edge-agent: MQTT events in, WebAssembly functions run, results out.
//!
//! Where an event goes, in order:
//! 1. [`mqtt::connection`] polls the broker and hands each message to the [`router`];
//! 2. the [`router`] matches its topic against every function's filters and puts it on
//!    their bounded queues (or dead-letters it when a queue is full or it is too large);
//! 3. each function's [`worker`] takes events off its queue and calls the function in the
//!    [`runtime`] (a fresh instance per event in the on-demand model) on a blocking thread;
//! 4. what the function published, or a dead letter if it failed, goes out through the
//!    [`sink`]; then the message is acknowledged to the broker.
//!
//! [`config`] loads and validates the configuration before anything starts; [`metrics`]
//! counts per function; [`cli`] holds the command line, [`publish`] the test publisher.

pub mod cli;
pub mod config;
pub mod metrics;
pub mod mqtt;
pub mod publish;
pub mod queue;
pub mod router;
pub mod runtime;
pub mod sink;
pub mod state;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::{Config, ConfigError};
use metrics::FunctionStats;
use mqtt::MqttError;
use runtime::{Runtime, RuntimeError};

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A function's module is unusable, or the engine failed.
    #[error("{file}: {source}")]
    Runtime {
        /// The config file that names the module.
        file: String,
        /// What failed.
        source: RuntimeError,
    },
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// MQTT set-up failed (TLS files, embedded broker).
    #[error("{file}: {source}")]
    Mqtt {
        /// The config file.
        file: String,
        /// What failed.
        source: MqttError,
    },
}

impl AgentError {
    /// The process exit code: 78 (`EX_CONFIG`) for anything the configuration can fix,
    /// 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_)
            | Self::Runtime {
                source: RuntimeError::Load { .. },
                ..
            } => config::EXIT_CONFIG,
            Self::Mqtt {
                source: MqttError::Tls { .. },
                ..
            } => config::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Everything `run` needs that can be checked before a socket is opened: the runtime with
/// every module loaded and the MQTT options (TLS files read).
pub struct Prepared {
    config: Config,
    runtime: Runtime,
    options: rumqttc::MqttOptions,
}

impl Prepared {
    /// Loads every module and reads TLS material. `edge-agent check` stops here.
    ///
    /// # Errors
    /// [`AgentError`] naming the config file and the function or key at fault.
    pub fn new(config: Config) -> Result<Self, AgentError> {
        let file = config.source.display().to_string();
        let runtime = Runtime::new(&config).map_err(|source| AgentError::Runtime {
            file: file.clone(),
            source,
        })?;
        let options = mqtt::options::agent_options(&config)
            .map_err(|source| AgentError::Mqtt { file, source })?;
        Ok(Self {
            config,
            runtime,
            options,
        })
    }

    /// The runtime (for inspection).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// How many functions are loaded.
    pub fn runtime_function_count(&self) -> usize {
        self.config.functions.len()
    }
}

/// Runs the agent until `shutdown` completes, then stops intake, lets in-flight events
/// finish within `agent.shutdown_grace_ms`, and disconnects cleanly.
///
/// # Errors
/// [`AgentError`] if the embedded broker cannot start.
pub async fn run(prepared: Prepared, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let Prepared {
        config: cfg,
        runtime,
        options,
    } = prepared;
    let file = cfg.source.display().to_string();
    let state = state::StateStore::open(&cfg.agent.data_dir, &cfg.state)?;
    for f in &cfg.functions {
        if let Some(loaded) = runtime.function(&f.name) {
            loaded.attach_state(state.namespace(&f.name)?);
        }
    }
    let flusher_stop = CancellationToken::new();
    let flusher = tokio::spawn(state.clone().run_flusher(flusher_stop.clone()));
    if cfg.broker.embedded {
        mqtt::broker::start(&cfg).map_err(|source| AgentError::Mqtt { file, source })?;
    }
    tracing::info!(
        agent = %cfg.agent.id,
        broker = %cfg.broker.url,
        client_id = %cfg.client_id(),
        allocator = ?runtime.allocator(),
        functions = cfg.functions.len(),
        "starting"
    );

    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(options, mqtt::options::REQUEST_CHANNEL_CAPACITY);
    mqtt::options::low_latency(&mut eventloop);
    let sink = sink::Sink::new(client.clone(), cfg.dead_letter_topic());
    let tracker = TaskTracker::new();
    let wctx = worker::WorkerContext {
        sink: sink.clone(),
        instances: Arc::new(Semaphore::new(cfg.runtime.max_instances as usize)),
        tracker: tracker.clone(),
    };

    // Acknowledgements: sent in the order functions finish, through the request queue.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<rumqttc::Publish>();
    let ack_client = client.clone();
    let acker = tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            if ack_client.ack(&p).await.is_err() {
                break;
            }
        }
    });

    let mut routes = Vec::new();
    let mut workers = Vec::new();
    let mut all_stats: Vec<(String, &'static str, Arc<FunctionStats>)> = Vec::new();
    for f in &cfg.functions {
        let stats = Arc::new(FunctionStats::default());
        let queue = Arc::new(queue::EventQueue::new(f.queue_capacity, f.overflow));
        let loaded = runtime
            .function(&f.name)
            .expect("every configured function was loaded by Runtime::new");
        tracing::info!(function = %f.name, mode = ?f.mode, topics = ?f.topics, "function ready");
        workers.push(match f.mode {
            config::Mode::OnDemand => tokio::spawn(worker::run_on_demand(
                loaded,
                f.max_concurrency,
                stats.clone(),
                queue.clone(),
                wctx.clone(),
            )),
            config::Mode::Persistent => {
                // Persistent instances hold their pool slots for the agent's lifetime.
                match wctx.instances.clone().try_acquire_many_owned(f.instances) {
                    Ok(permits) => permits.forget(),
                    Err(_) => tracing::warn!(function = %f.name, "instance pool exhausted by persistent functions"),
                }
                tokio::spawn(worker::run_persistent(loaded, f.clone(), stats.clone(), queue.clone(), wctx.clone()))
            }
        });
        routes.push(router::Route {
            name: f.name.as_str().into(),
            filters: f.topics.clone(),
            queue,
            max_payload_bytes: f.max_payload_bytes,
            stats: stats.clone(),
        });
        let mode = match f.mode {
            config::Mode::OnDemand => "on-demand",
            config::Mode::Persistent => "persistent",
        };
        all_stats.push((f.name.clone(), mode, stats));
    }
    let router = router::Router::new(routes, mqtt::ack::AckQueue::new(ack_tx), sink);
    let subscriptions = mqtt::topic::subscriptions(
        cfg.functions
            .iter()
            .flat_map(|f| f.topics.iter().map(move |t| (t.as_str(), f.qos))),
    );
    let reporter_stop = CancellationToken::new();
    let reporter = (cfg.agent.stats_interval_secs > 0).then(|| {
        tokio::spawn(report_stats(
            client.clone(),
            cfg.stats_topic(),
            Duration::from_secs(cfg.agent.stats_interval_secs),
            all_stats.clone(),
            reporter_stop.clone(),
        ))
    });
    let stop_intake = CancellationToken::new();
    let conn_done = CancellationToken::new();
    let connection = tokio::spawn(
        mqtt::connection::ConnectionTask {
            eventloop,
            client: client.clone(),
            subscriptions,
            backoff_min: Duration::from_millis(cfg.broker.reconnect_min_ms),
            backoff_max: Duration::from_millis(cfg.broker.reconnect_max_ms),
        }
        .run(router, stop_intake.clone(), conn_done.clone()),
    );

    shutdown.await;
    let grace = Duration::from_millis(cfg.agent.shutdown_grace_ms);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: stopping intake"
    );
    stop_intake.cancel();
    // The router is gone, so queues close; workers drain them and finish.
    let drained = tokio::time::timeout(grace, async {
        for w in workers {
            let _ = w.await;
        }
        tracker.close();
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "grace period over: events still in flight are left unacknowledged for redelivery"
        );
    }
    // Remaining acks first, then a clean DISCONNECT, both through the request queue.
    drop(wctx);
    let _ = tokio::time::timeout(Duration::from_secs(1), acker).await;
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(2), connection)
        .await
        .is_err()
    {
        conn_done.cancel();
    }
    flusher_stop.cancel();
    let _ = flusher.await;
    reporter_stop.cancel();
    if let Some(r) = reporter {
        let _ = r.await;
    }
    for (name, mode, stats) in &all_stats {
        let s = stats.snapshot(name, mode);
        tracing::info!(
            function = %name,
            mode,
            received = s.received,
            succeeded = s.succeeded,
            restarts = s.restarts,
            failed = ?s.failed,
            e2e_p50_us = s.end_to_end_us.p50,
            e2e_p99_us = s.end_to_end_us.p99,
            instantiate_p50_us = s.instantiate_us.p50,
            execute_p50_us = s.execute_us.p50,
            cpu_total_us = s.cpu_total_us,
            peak_memory_bytes = s.peak_memory_bytes,
            "function totals"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Publishes every function's snapshot as one retained JSON array every `every`.
async fn report_stats(
    client: rumqttc::AsyncClient,
    topic: String,
    every: Duration,
    stats: Vec<(String, &'static str, Arc<FunctionStats>)>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let snaps: Vec<_> = stats.iter().map(|(n, m, s)| s.snapshot(n, m)).collect();
        let body = serde_json::to_vec(&snaps).unwrap_or_default();
        if client
            .try_publish(topic.clone(), rumqttc::QoS::AtMostOnce, true, body)
            .is_err()
        {
            tracing::debug!("stats not published: connection backlog full");
        }
    }
}

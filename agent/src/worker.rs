//! A function's workers: they take events off the function's queue, run them in the
//! runtime on blocking threads, publish what the call published (or a dead letter), wait
//! until the call's state writes are on disk, and then release the message's
//! acknowledgement.
//!
//! - On-demand ([`run_on_demand`]): a fresh instance per event, at most `max_concurrency`
//!   at once and never more than `runtime.max_instances` across all functions.
//! - Persistent ([`run_persistent`]): `instances` long-lived instances, each fed one event
//!   at a time from its own mailbox; events are assigned by a hash of their topic so one
//!   topic's events stay in order. An instance that traps is dropped and replaced by a
//!   fresh one after an exponential back-off, within the restart policy.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::config::{FunctionConfig, RestartPolicy};
use crate::metrics::{CallCost, FunctionStats};
use crate::queue::EventQueue;
use crate::router::Event;
use crate::runtime::bindings::edge::agent::types::Event as WitEvent;
use crate::runtime::{CallError, CallOutcome, ErrorKind, Instance, LoadedFunction};
use crate::sink::{DeadLetter, Sink};

/// Shared resources of all workers.
#[derive(Clone)]
pub struct WorkerContext {
    /// Where outputs and dead letters go.
    pub sink: Sink,
    /// Instances in flight across all functions.
    pub instances: Arc<Semaphore>,
    /// Tracks every call so shutdown can wait for them.
    pub tracker: TaskTracker,
}

fn wit_event(event: &Event) -> WitEvent {
    WitEvent {
        topic: event.topic.clone(),
        payload: event.payload.to_vec(),
        qos: event.qos,
        retain: event.retain,
        received_at_ms: event.received_at_ms,
        user_properties: Vec::new(),
    }
}

fn join_error(e: tokio::task::JoinError) -> CallError {
    CallError {
        kind: ErrorKind::Trap,
        message: format!("agent task failed: {e}"),
    }
}

/// Runs `function`'s events from `queue` until the queue is closed and empty.
pub async fn run_on_demand(
    function: Arc<LoadedFunction>,
    max_concurrency: u32,
    stats: Arc<FunctionStats>,
    queue: Arc<EventQueue>,
    ctx: WorkerContext,
) {
    let own = Arc::new(Semaphore::new(max_concurrency as usize));
    while let Some(event) = queue.pop().await {
        // Both semaphores live as long as the worker; acquire cannot fail.
        let Ok(own_permit) = own.clone().acquire_owned().await else {
            break;
        };
        let Ok(pool_permit) = ctx.instances.clone().acquire_owned().await else {
            break;
        };
        let function = function.clone();
        let stats = stats.clone();
        let sink = ctx.sink.clone();
        let tracker = ctx.tracker.clone();
        ctx.tracker.spawn(async move {
            let wit = wit_event(&event);
            let f = function.clone();
            let result = tokio::task::spawn_blocking(move || f.call_on_demand(&wit))
                .await
                .unwrap_or_else(|e| Err(join_error(e)));
            drop(pool_permit);
            finish(function.name(), &stats, &sink, &tracker, event, result).await;
            drop(own_permit);
        });
    }
}

/// Publishes a call's outputs (or its dead letter), then completes the delivery so the
/// message can be acknowledged. If the call wrote state, completion waits for the flush
/// that makes it durable, in a task of its own: the function goes on with its next
/// event meanwhile (otherwise a persistent instance could handle one event per flush).
async fn finish(
    name: &str,
    stats: &Arc<FunctionStats>,
    sink: &Sink,
    tracker: &TaskTracker,
    event: Event,
    result: Result<CallOutcome, CallError>,
) {
    match result {
        Ok(outcome) => {
            let cost = CallCost {
                instantiate: outcome.instantiate,
                execute: outcome.execute,
                cpu: outcome.cpu,
                peak_memory: outcome.peak_memory,
            };
            tracing::debug!(
                function = name,
                topic = %event.topic,
                instantiate_us = outcome.instantiate.as_micros() as u64,
                execute_us = outcome.execute.as_micros() as u64,
                end_to_end_us = event.received.elapsed().as_micros() as u64,
                outputs = outcome.outbox.len(),
                "event handled"
            );
            for msg in outcome.outbox {
                if !sink.publish(msg).await {
                    // Connection gone (shutting down): leave the event unacknowledged.
                    return;
                }
            }
            match outcome.durable {
                Some((store, generation)) => {
                    let stats = stats.clone();
                    tracker.spawn(async move {
                        store.durable(generation).await;
                        stats.succeeded(event.received.elapsed(), cost);
                        event.delivery.complete();
                    });
                }
                None => {
                    stats.succeeded(event.received.elapsed(), cost);
                    event.delivery.complete();
                }
            }
        }
        Err(err) => {
            stats.failed(err.kind);
            tracing::warn!(function = name, topic = %event.topic, kind = %err.kind, "event failed: {}", err.message);
            let letter = DeadLetter::new(name, &event, err.kind, err.message);
            if sink.dead_letter(&letter).await {
                event.delivery.complete();
            }
        }
    }
}

/// Persistent mode: runs `cfg.instances` long-lived instances fed from `queue` until it
/// closes; each instance finishes its mailbox before the function stops.
pub async fn run_persistent(
    function: Arc<LoadedFunction>,
    cfg: FunctionConfig,
    stats: Arc<FunctionStats>,
    queue: Arc<EventQueue>,
    ctx: WorkerContext,
) {
    let n = cfg.instances.max(1) as usize;
    let mut mailboxes = Vec::with_capacity(n);
    for index in 0..n {
        // Small mailboxes: the function's queue is where events wait.
        let (tx, rx) = mpsc::channel(4);
        mailboxes.push(tx);
        let inst = PersistentInstance {
            function: function.clone(),
            index,
            policy: cfg.restart,
            max_restarts: cfg.max_restarts,
            window: Duration::from_secs(cfg.restart_window_secs),
            stats: stats.clone(),
            sink: ctx.sink.clone(),
            tracker: ctx.tracker.clone(),
        };
        ctx.tracker.spawn(inst.run(rx));
    }
    while let Some(event) = queue.pop().await {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        event.topic.hash(&mut h);
        let i = (h.finish() % n as u64) as usize;
        if mailboxes[i].send(event).await.is_err() {
            break;
        }
    }
}

struct PersistentInstance {
    function: Arc<LoadedFunction>,
    index: usize,
    policy: RestartPolicy,
    max_restarts: u32,
    window: Duration,
    stats: Arc<FunctionStats>,
    sink: Sink,
    tracker: TaskTracker,
}

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl PersistentInstance {
    async fn instantiate(&self) -> Result<Instance, CallError> {
        let f = self.function.clone();
        tokio::task::spawn_blocking(move || f.instantiate())
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    }

    async fn run(self, mut mailbox: mpsc::Receiver<Event>) {
        let name = self.function.name().to_string();
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut live = match self.instantiate().await {
            Ok(i) => {
                tracing::info!(function = %name, instance = self.index, "persistent instance started");
                Some(i)
            }
            Err(e) => {
                tracing::error!(function = %name, instance = self.index, "instance failed to start: {e}");
                None
            }
        };
        if live.is_none() {
            live = self.restart(&name, &mut restarts, &mut backoff).await;
        }
        while let Some(event) = mailbox.recv().await {
            let Some(instance) = live.take() else {
                let err = CallError {
                    kind: ErrorKind::FunctionStopped,
                    message: format!("instance {} is stopped by its restart policy", self.index),
                };
                finish(
                    &name,
                    &self.stats,
                    &self.sink,
                    &self.tracker,
                    event,
                    Err(err),
                )
                .await;
                continue;
            };
            let wit = wit_event(&event);
            let (result, back) = tokio::task::spawn_blocking(move || instance.call(&wit))
                .await
                .unwrap_or_else(|e| (Err(join_error(e)), None));
            if result.is_ok() {
                backoff = RESTART_BACKOFF_MIN;
            }
            let killed = back.is_none();
            if let (true, Err(e)) = (killed, &result) {
                tracing::warn!(function = %name, instance = self.index, kind = %e.kind,
                    "persistent instance dropped after a failed call");
            }
            live = back;
            finish(&name, &self.stats, &self.sink, &self.tracker, event, result).await;
            if killed {
                // Replace it now, not when the next event arrives; events wait meanwhile.
                live = self.restart(&name, &mut restarts, &mut backoff).await;
            }
        }
    }

    /// Waits out the back-off and starts a fresh instance, unless the policy says stop.
    async fn restart(
        &self,
        name: &str,
        restarts: &mut VecDeque<Instant>,
        backoff: &mut Duration,
    ) -> Option<Instance> {
        loop {
            if self.policy == RestartPolicy::Never {
                tracing::error!(function = %name, instance = self.index, "instance stopped (restart = \"never\")");
                return None;
            }
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.window)
            {
                restarts.pop_front();
            }
            if restarts.len() >= self.max_restarts as usize {
                tracing::error!(function = %name, instance = self.index, max_restarts = self.max_restarts,
                    window_secs = self.window.as_secs(), "instance stopped: too many restarts");
                return None;
            }
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(RESTART_BACKOFF_MAX);
            restarts.push_back(Instant::now());
            self.stats.restarted();
            match self.instantiate().await {
                Ok(i) => {
                    tracing::info!(function = %name, instance = self.index, restarts = restarts.len(), "persistent instance restarted");
                    return Some(i);
                }
                Err(e) => {
                    tracing::error!(function = %name, instance = self.index, "restart failed: {e}")
                }
            }
        }
    }
}

//! A function's worker: takes events from its queue and runs each in a fresh instance (the
//! on-demand model) on a blocking thread, at most `max_concurrency` at once and never more
//! than `runtime.max_instances` across all functions. Outputs are published when the call
//! succeeds; failures become dead letters. Either way the event is then acknowledged.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::metrics::FunctionStats;
use crate::router::Event;
use crate::runtime::bindings::edge::agent::types::Event as WitEvent;
use crate::runtime::{CallError, ErrorKind, LoadedFunction};
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

/// Runs `function`'s events from `queue` until the queue is closed and empty.
pub async fn run_on_demand(
    function: Arc<LoadedFunction>,
    max_concurrency: u32,
    stats: Arc<FunctionStats>,
    mut queue: mpsc::Receiver<Event>,
    ctx: WorkerContext,
) {
    let own = Arc::new(Semaphore::new(max_concurrency as usize));
    while let Some(event) = queue.recv().await {
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
        ctx.tracker.spawn(async move {
            handle(&function, &stats, &sink, event).await;
            drop((own_permit, pool_permit));
        });
    }
}

async fn handle(function: &Arc<LoadedFunction>, stats: &FunctionStats, sink: &Sink, event: Event) {
    let wit = WitEvent {
        topic: event.topic.clone(),
        payload: event.payload.to_vec(),
        qos: event.qos,
        retain: event.retain,
        received_at_ms: event.received_at_ms,
        user_properties: Vec::new(),
    };
    let f = function.clone();
    let result = tokio::task::spawn_blocking(move || f.call_on_demand(&wit))
        .await
        .unwrap_or_else(|e| {
            Err(CallError {
                kind: ErrorKind::Trap,
                message: format!("agent task failed: {e}"),
            })
        });
    let name = function.name();
    match result {
        Ok(outcome) => {
            tracing::debug!(
                function = name,
                topic = %event.topic,
                instantiate_us = outcome.instantiate.as_micros() as u64,
                execute_us = outcome.execute.as_micros() as u64,
                queue_us = (event.received.elapsed().saturating_sub(outcome.instantiate + outcome.execute)).as_micros() as u64,
                outputs = outcome.outbox.len(),
                "event handled"
            );
            for msg in outcome.outbox {
                if !sink.publish(msg).await {
                    // Connection gone (shutting down): leave the event unacknowledged.
                    return;
                }
            }
            stats.succeeded();
            event.delivery.complete();
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

//! On-demand dispatch (the serverless model): each event runs in a fresh instance, on one of
//! the function's `max_concurrency` worker threads, never more than `runtime.max_instances`
//! at once across all functions. A worker takes the next event as soon as it has handed
//! the last one's outputs to the connection: no task, thread hand-off or allocation per
//! event beyond the call itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use tokio::sync::Semaphore;

use super::auto::{Auto, Model};
use super::inbox::Inbox;
use super::output::Output;
use super::shadow::Slot;
use super::{Shared, already_done, guest_event, message_id, next_state_retry, spawn_worker};
use crate::event::Inbound;
use crate::failure::FailureKind;
use crate::metrics::FunctionStats;
use crate::runtime::LoadedFunction;

/// Starts `function`'s `max_concurrency` workers over `inbox`; they end once the inbox is
/// closed and empty.
///
/// # Errors
/// A worker thread could not be started (see [`spawn_worker`]).
pub fn run(
    function: Arc<LoadedFunction>,
    max_concurrency: u32,
    stats: Arc<FunctionStats>,
    inbox: Arc<Inbox>,
    shared: Shared,
    shadow: Slot,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    if let Some(keep) = function.keep_warm() {
        shared.background.spawn_until_stopped(scale_to_zero(
            Arc::downgrade(&function),
            inbox.clone(),
            keep,
        ));
    }
    (0..max_concurrency.max(1))
        .map(|i| {
            let (function, stats, inbox, shared, shadow) = (
                function.clone(),
                stats.clone(),
                inbox.clone(),
                shared.clone(),
                shadow.clone(),
            );
            let name = format!("{}#{i}", function.name());
            spawn_worker(name, move |rt| {
                work(&rt, &function, &stats, &inbox, &shared, &shadow)
            })
        })
        .collect()
}

/// Releases `function`'s module once it has had no event for its keep-alive (`keep` at
/// the start), checking four times per `keep` (at most once a second); ends with the
/// function or its inbox.
pub(super) async fn scale_to_zero(
    function: Weak<LoadedFunction>,
    inbox: Arc<Inbox>,
    keep: Duration,
) {
    let mut tick =
        tokio::time::interval((keep / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(f) = function.upgrade() else { return };
        if inbox.is_closed() {
            return;
        }
        if f.release_if_idle() {
            crate::runtime::release_freed_memory();
            tracing::info!(
                function = f.name(),
                // Learned (`"auto"`): what it was when the module was released.
                keep_warm_secs = f.keep_warm().unwrap_or(keep).as_secs_f64(),
                "scaled to zero: module released after keep_warm_secs without events; the next event loads it again"
            );
        }
    }
}

fn work(
    rt: &Handle,
    function: &LoadedFunction,
    stats: &Arc<FunctionStats>,
    inbox: &Arc<Inbox>,
    shared: &Shared,
    shadow: &Slot,
) {
    while let Some(event) = inbox.pop() {
        handle(
            rt,
            function,
            stats,
            inbox,
            &shared.instances,
            &shared.output,
            event,
            None,
            shadow,
        );
    }
}

/// Calls `function` with `event` in a fresh instance, holding a place in `instances` for
/// the call; a call that met an unavailable state store is tried again once the store
/// may take it. `None` if the agent is stopping meanwhile (the event stays
/// unacknowledged, for the broker to deliver again).
fn call(
    rt: &Handle,
    function: &LoadedFunction,
    inbox: &Arc<Inbox>,
    instances: &Semaphore,
    event: &Inbound,
    id: Option<crate::runtime::MessageId>,
) -> Option<Result<crate::runtime::CallOutcome, crate::runtime::CallError>> {
    let mut wait = Duration::from_millis(100);
    loop {
        // The semaphore lives as long as the agent: acquiring cannot fail.
        let permit = match instances.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => rt.block_on(instances.acquire()).ok(),
        };
        let queued = event.received.elapsed();
        let result = function
            .call_on_demand(&guest_event(event), id)
            .map(|o| o.queued(queued));
        drop(permit);
        match result {
            // The store, not the event, failed: nothing of the call was kept; try it
            // again once the store may take it (the queue fills meanwhile, and the
            // broker holds the rest).
            Err(e) if e.kind == FailureKind::State => {
                if inbox.is_closed() {
                    return None;
                }
                tracing::debug!(function = function.name(), error = %e.message, "state store unavailable: the event waits");
                rt.block_on(tokio::time::sleep(next_state_retry(&mut wait)));
            }
            other => return Some(other),
        }
    }
}

/// Runs `event` in a fresh instance, holding a place in the instance pool `instances`
/// for the call, then hands the result to `output`. The call's costs go to `auto` too
/// (an auto function on demand), and the event and its result to `shadow`.
#[allow(clippy::too_many_arguments)]
pub(super) fn handle(
    rt: &Handle,
    function: &LoadedFunction,
    stats: &Arc<FunctionStats>,
    inbox: &Arc<Inbox>,
    instances: &Semaphore,
    output: &Output,
    event: Inbound,
    auto: Option<&Auto>,
    shadow: &Slot,
) {
    let id = message_id(function, &event);
    if let Some((outputs, durable)) = already_done(function, &event, id) {
        rt.block_on(output.replay(function.name(), stats, event, outputs, durable));
        return;
    }
    // A canary topic runs on the shadow's version first; if it fails there, the event
    // runs on the primary (nothing of the failed call was kept: no outputs, no state).
    let shadowed = shadow.shadow();
    if let Some(s) = &shadowed
        && let Some(canary) = s.canary(&event.topic)
    {
        let Some(result) = call(rt, canary, inbox, instances, &event, id) else {
            return;
        };
        s.canary_done(&result);
        if result.is_ok() {
            rt.block_on(output.finish(function.name(), stats, event, result, inbox));
            return;
        }
    }
    let result = call(rt, function, inbox, instances, &event, id);
    // Stopping while the store is unavailable: the event stays unacknowledged, for the
    // broker to deliver again.
    if let Some(result) = result {
        if let (Some(auto), Ok(outcome)) = (auto, &result) {
            auto.record(Model::OnDemand, &outcome.cost);
        }
        if let Some(s) = &shadowed {
            s.offer(&event, &result);
        }
        rt.block_on(output.finish(function.name(), stats, event, result, inbox));
    }
}

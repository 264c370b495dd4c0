//! The pipeline: what happens to an event between the connection and its acknowledgement.
//!
//! - [`router`]: matches a message's topic against every function's filters and pushes it
//!   into their inboxes (or takes the dead-letter path at once);
//! - [`inbox`]: a function's bounded queue, with its overflow policy;
//! - [`on_demand`]: the on-demand model, a fresh instance per event;
//! - [`persistent`]: the persistent model, long-lived instances restarted by policy;
//! - [`auto`]: either model, chosen at run time by a controller per function;
//! - [`output`]: the calls' messages and the dead letters out to the broker, then the
//!   delivery's completion, which releases the acknowledgement in arrival order;
//! - [`hops`]: what the agent published, so that a loop through its functions stops;
//! - [`shadow`]: a second version beside a function, its outputs compared.

pub mod auto;
pub mod hops;
pub mod inbox;
pub mod on_demand;
pub mod output;
pub mod persistent;
pub mod router;
pub mod shadow;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use std::time::Duration;

use crate::event::{Inbound, Outbound};
use crate::runtime::{GuestEvent, LoadedFunction, MessageId};
use output::Durable;

/// What every function's dispatcher or supervisor shares.
#[derive(Clone)]
pub struct Shared {
    /// Where outputs and dead letters go.
    pub output: output::Output,
    /// Instances in flight across all functions (the instance pool's size).
    pub instances: Arc<Semaphore>,
    /// Tracks work that outlives a call (flush waits), so shutdown can wait for it.
    pub tracker: TaskTracker,
    /// Tasks beside the functions (scale to zero), which the stop sequence ends last.
    pub background: crate::tasks::Background,
}

/// Runs `work` on a thread of its own named `name` (as `top -H` and profilers show it),
/// with the current tokio runtime's handle for what it must await (handing outputs to the
/// connection). The returned task completes when `work` returns. Guest calls block for up
/// to their timeout, so they run on these threads, never on the runtime's.
///
/// # Errors
/// The thread could not be started (the system's thread or memory limit): the function
/// would never run, so its start fails rather than being only logged.
pub fn spawn_worker(
    name: String,
    work: impl FnOnce(tokio::runtime::Handle) + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::current();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name(name).spawn(move || {
        let _guard = rt.enter();
        work(rt.clone());
        drop(done);
    })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

/// The message's identity for its receipt: QoS 1/2 only, for a function with state.
fn message_id(function: &LoadedFunction, event: &Inbound) -> Option<MessageId> {
    (event.qos > 0 && function.state().is_some()).then_some(MessageId {
        pkid: event.pkid,
        incarnation: event.incarnation,
        from_before: event.from_before,
        checksum: event.checksum,
    })
}

/// The recorded outputs of a redelivered message whose effects are already in the store
/// (its receipt matches), with the flush that makes them durable if they are not on disk
/// yet; `None` if the function must be called.
fn already_done(
    function: &LoadedFunction,
    event: &Inbound,
    id: Option<MessageId>,
) -> Option<(Vec<Outbound>, Option<Durable>)> {
    let (id, ns) = (id?, function.state()?);
    if !event.dup {
        return None;
    }
    match ns.receipt(id.pkid, id.checksum, id.incarnation, id.from_before) {
        Ok(r) => r.map(|r| {
            let pending = ns.receipt_pending(id.pkid);
            // Outputs kept past their message's end (a crash came first): let go of them
            // once this delivery has them confirmed.
            if crate::state::large_outputs(&r.outputs) {
                let (ns, incarnation) = (ns.clone(), r.incarnation);
                event
                    .delivery
                    .on_finished(move || ns.settled(id.pkid, incarnation));
            }
            (r.outputs, pending.map(|g| (ns.store().clone(), g)))
        }),
        // The call will meet the same error at its commit, and wait.
        Err(_) => None,
    }
}

/// How long a call that met an unavailable state store waits before it is tried again:
/// doubling from 100 ms to 1 s (a retry is one call; a paused function resumes within a
/// second of the store taking writes again).
fn next_state_retry(wait: &mut Duration) -> Duration {
    let now = *wait;
    *wait = (*wait * 2).min(Duration::from_secs(1));
    now
}

/// The guest's view of an event.
fn guest_event(event: &Inbound) -> GuestEvent {
    GuestEvent {
        topic: event.topic.clone(),
        payload: event.payload.to_vec(),
        qos: event.qos,
        retain: event.retain,
        received_at_ms: event.received_at_ms,
        user_properties: Vec::new(),
    }
}

/// A message on `topic` for tests, received now, whose acknowledgement goes nowhere.
#[cfg(test)]
pub(crate) fn test_event(
    topic: impl Into<String>,
    payload: Vec<u8>,
    qos: u8,
) -> crate::event::Inbound {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    crate::event::Inbound {
        topic: topic.into(),
        payload: payload.into(),
        payload_skipped: 0,
        qos,
        retain: false,
        received_at_ms: 0,
        received: std::time::Instant::now(),
        hop: 0,
        pkid: 0,
        dup: false,
        checksum: 0,
        incarnation: 0,
        from_before: false,
        delivery: std::sync::Arc::new(crate::event::Delivery::detached(
            crate::mqtt::ack::AckQueue::new(tx),
        )),
    }
}

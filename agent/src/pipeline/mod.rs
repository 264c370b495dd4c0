//! The pipeline: what happens to an event between the connection and its acknowledgement.
//!
//! - [`router`]: matches a message's topic against every function's filters and pushes it
//!   into their inboxes (or takes the dead-letter path at once);
//! - [`inbox`]: a function's bounded queue, with its overflow policy;
//! - [`dispatch`]: the on-demand model, a fresh instance per event;
//! - [`supervisor`]: the persistent model, long-lived instances restarted by policy;
//! - [`output`]: the calls' messages and the dead letters out to the broker, then the
//!   delivery's completion, which releases the acknowledgement in arrival order;
//! - [`hops`]: what the agent published, so that a loop through its functions stops.

pub mod dispatch;
pub mod hops;
pub mod inbox;
pub mod output;
pub mod router;
pub mod supervisor;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::event::Inbound;
use crate::failure::FailureKind;
use crate::runtime::{CallError, GuestEvent};

/// What every function's dispatcher or supervisor shares.
#[derive(Clone)]
pub struct Shared {
    /// Where outputs and dead letters go.
    pub output: output::Output,
    /// Instances in flight across all functions (the instance pool's size).
    pub instances: Arc<Semaphore>,
    /// Tracks every call so shutdown can wait for them.
    pub tracker: TaskTracker,
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

fn join_error(e: tokio::task::JoinError) -> CallError {
    CallError {
        kind: FailureKind::Trap,
        message: format!("agent task failed: {e}"),
    }
}

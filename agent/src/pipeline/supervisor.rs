//! Persistent supervision (the container model): `instances` long-lived instances per
//! function, each fed one event at a time from its own mailbox; events are assigned by a
//! hash of their topic so one topic's events stay in order. An instance that traps is
//! dropped and replaced by a fresh one after an exponential back-off, within the restart
//! policy.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::inbox::Inbox;
use super::output::Output;
use super::{Shared, guest_event, join_error};
use crate::config::{FunctionConfig, RestartPolicy};
use crate::event::Inbound;
use crate::failure::FailureKind;
use crate::metrics::FunctionStats;
use crate::runtime::{CallError, Instance, LoadedFunction};

/// Runs `cfg.instances` long-lived instances fed from `inbox` until it
/// closes; each instance finishes its mailbox before the function stops.
pub async fn run_persistent(
    function: Arc<LoadedFunction>,
    cfg: FunctionConfig,
    stats: Arc<FunctionStats>,
    inbox: Arc<Inbox>,
    shared: Shared,
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
            output: shared.output.clone(),
        };
        shared.tracker.spawn(inst.run(rx));
    }
    while let Some(event) = inbox.pop().await {
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
    output: Output,
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

    async fn run(self, mut mailbox: mpsc::Receiver<Inbound>) {
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
                    kind: FailureKind::FunctionStopped,
                    message: format!("instance {} is stopped by its restart policy", self.index),
                };
                self.output
                    .finish(&name, &self.stats, event, Err(err))
                    .await;
                continue;
            };
            let guest = guest_event(&event);
            let (result, back) = tokio::task::spawn_blocking(move || instance.call(&guest))
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
            self.output.finish(&name, &self.stats, event, result).await;
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

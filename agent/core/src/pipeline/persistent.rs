//! Persistent supervision (the container model): `instances` long-lived instances per
//! function, each on a worker thread of its own that takes one event at a time from its own
//! inbox (the router assigns events by a hash of their topic, so one topic's events stay in
//! order). An instance that traps is dropped and replaced by a fresh one after an
//! exponential back-off, within the restart policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::inbox::Inbox;
use super::output::Output;
use super::{Shared, guest_event, spawn_worker};
use crate::config::{FunctionConfig, RestartPolicy};
use crate::failure::FailureKind;
use crate::metrics::FunctionStats;
use crate::runtime::{CallError, Instance, LoadedFunction};

/// Starts one instance per inbox in `inboxes` (`cfg.instances` of them); each finishes its
/// inbox once it is closed, then ends.
///
/// # Errors
/// A worker thread could not be started (see [`spawn_worker`]).
pub fn run(
    function: Arc<LoadedFunction>,
    cfg: &FunctionConfig,
    stats: Arc<FunctionStats>,
    inboxes: Vec<Arc<Inbox>>,
    shared: &Shared,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    inboxes
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| {
            let inst = PersistentInstance {
                function: function.clone(),
                index,
                policy: cfg.restart,
                max_restarts: cfg.max_restarts,
                window: Duration::from_secs(cfg.restart_window_secs),
                stats: stats.clone(),
                output: shared.output.clone(),
            };
            let name = format!("{}@{index}", function.name());
            spawn_worker(name, move |rt| inst.run(&rt, &inbox))
        })
        .collect()
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
    fn run(self, rt: &Handle, inbox: &Inbox) {
        let name = self.function.name().to_string();
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut generation = self.function.generation();
        let mut live = match self.function.instantiate() {
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
            live = self.restart(rt, &name, &mut restarts, &mut backoff);
        }
        while let Some(event) = inbox.pop() {
            // A reload put a new version in force: this instance finished its last event
            // on the old one; the next runs on a fresh instance of the new one (its state
            // is in the store, not in the instance).
            let now = self.function.generation();
            if now != generation && live.is_some() {
                generation = now;
                live = match self.function.instantiate() {
                    Ok(i) => {
                        tracing::info!(function = %name, instance = self.index,
                            sha256 = %self.function.sha256(), "persistent instance moved to the reloaded version");
                        Some(i)
                    }
                    Err(e) => {
                        tracing::error!(function = %name, instance = self.index, "reloaded version failed to start: {e}");
                        self.restart(rt, &name, &mut restarts, &mut backoff)
                    }
                };
            }
            let Some(instance) = live.take() else {
                let err = CallError {
                    kind: FailureKind::FunctionStopped,
                    message: format!("instance {} is stopped by its restart policy", self.index),
                };
                rt.block_on(self.output.finish(&name, &self.stats, event, Err(err)));
                continue;
            };
            let queued = event.received.elapsed();
            let (result, back) = instance.call(&guest_event(&event));
            let result = result.map(|o| o.queued(queued));
            if result.is_ok() {
                backoff = RESTART_BACKOFF_MIN;
            }
            let killed = back.is_none();
            if let (true, Err(e)) = (killed, &result) {
                tracing::warn!(function = %name, instance = self.index, kind = %e.kind,
                    "persistent instance dropped after a failed call");
            }
            live = back;
            rt.block_on(self.output.finish(&name, &self.stats, event, result));
            if killed {
                // Replace it now, not when the next event arrives; events wait meanwhile.
                live = self.restart(rt, &name, &mut restarts, &mut backoff);
            }
        }
    }

    /// Waits out the back-off and starts a fresh instance, unless the policy says stop.
    fn restart(
        &self,
        rt: &Handle,
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
            rt.block_on(tokio::time::sleep(*backoff));
            *backoff = (*backoff * 2).min(RESTART_BACKOFF_MAX);
            restarts.push_back(Instant::now());
            self.stats.restarted();
            match self.function.instantiate() {
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

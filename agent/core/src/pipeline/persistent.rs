//! Persistent supervision (the container model): `instances` long-lived instances per
//! function, each on a worker thread of its own that takes one event at a time from its own
//! inbox (the router assigns events by a hash of their topic, so one topic's events stay in
//! order). An instance that traps is dropped and replaced by a fresh one after an
//! exponential back-off, within the restart policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
// Tokio's clock (the real one outside tests), so that a test can let the time pass.
use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auto::{Auto, Model};
use super::inbox::Inbox;
use super::output::Output;
use super::shadow::Slot;
use super::{
    Shared, already_done, guest_event, message_id, next_state_retry, on_demand, spawn_worker,
};
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
    auto: Option<Arc<Auto>>,
    shadow: Slot,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    if let Some(auto) = &auto {
        if let (Some(keep), Some(inbox)) = (function.keep_warm(), inboxes.first()) {
            shared
                .background
                .spawn_until_stopped(on_demand::scale_to_zero(
                    Arc::downgrade(&function),
                    inbox.clone(),
                    keep,
                ));
        }
        let (a, s, f) = (auto.clone(), stats.clone(), function.clone());
        let first = inboxes.first().cloned();
        shared.background.spawn_until_stopped(a.run(
            move || s.received_count(),
            move || f.sha256(),
            move || first.as_ref().is_none_or(|i| i.is_closed()),
        ));
    }
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
                pool: shared.instances.clone(),
                auto: auto.clone(),
                shadow: shadow.clone(),
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
    /// The instance pool: an auto function takes its place in it when promoted, and for
    /// each call on demand.
    pool: Arc<Semaphore>,
    /// `mode = "auto"`: the model in force decides how each event runs.
    auto: Option<Arc<Auto>>,
    /// `[function.shadow]`: gets each event with its result.
    shadow: Slot,
}

/// How often an idle promoted worker of an auto function checks for a demotion.
const IDLE_CHECK: Duration = Duration::from_millis(250);

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a restart's back-off looks whether the agent is stopping.
const BACK_OFF_SLICE: Duration = Duration::from_millis(20);

/// Whether the instance has been restarted `max_restarts` times within the last `window`
/// (forgetting the restarts older than that).
fn window_full(restarts: &mut VecDeque<Instant>, window: Duration, max_restarts: u32) -> bool {
    let now = Instant::now();
    while restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        restarts.pop_front();
    }
    restarts.len() >= max_restarts as usize
}

impl PersistentInstance {
    fn run(self, rt: &Handle, inbox: &Arc<Inbox>) {
        let name = self.function.name().to_string();
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut generation = self.function.generation();
        let mut live = None;
        // Auto: the place in the pool while promoted, and how many more events a demoted
        // instance finishes (those queued behind the event that saw the demotion).
        let mut promoted: Option<OwnedSemaphorePermit> = None;
        let mut finishing: Option<usize> = None;
        // Auto: the promoted instance failed; the next one is a restart, which the restart
        // policy may refuse (the events run on demand meanwhile).
        let mut failed = false;
        // Counted in the function's instances stopped by the restart policy.
        let mut counted = false;
        if self.auto.is_none() {
            live = self.start(&name);
            if live.is_none() {
                live = self.restart(inbox, &name, &mut restarts, &mut backoff);
            }
            self.stopped(&mut counted, live.is_none());
        }
        loop {
            let event = match &self.auto {
                // A promoted worker wakes when idle, so that a demotion frees the
                // instance's memory without waiting for an event.
                Some(auto) if promoted.is_some() => match inbox.pop_timeout(IDLE_CHECK) {
                    Ok(event) => event,
                    Err(_) => {
                        if auto.model() == Model::OnDemand {
                            (live, promoted, finishing) = (None, None, None);
                            self.demoted(&name);
                        }
                        continue;
                    }
                },
                _ => inbox.pop(),
            };
            let Some(event) = event else { break };
            if let Some(auto) = &self.auto {
                match auto.model() {
                    Model::OnDemand if promoted.is_some() => {
                        let left = finishing.get_or_insert(inbox.len());
                        if *left == 0 {
                            (live, promoted, finishing) = (None, None, None);
                            self.demoted(&name);
                        } else {
                            *left -= 1;
                        }
                    }
                    Model::Persistent => {
                        finishing = None;
                        if promoted.is_none()
                            && (!failed || self.may_restart(&mut restarts))
                            && let Ok(place) = self.pool.clone().try_acquire_owned()
                        {
                            // Made before the event is handed to it: this event pays the
                            // one cold start of the switch.
                            generation = self.function.generation();
                            live = self.start(&name);
                            promoted = live.is_some().then_some(place);
                            if failed && promoted.is_some() {
                                failed = false;
                                restarts.push_back(Instant::now());
                                self.stats.restarted();
                                tracing::info!(function = %name, instance = self.index, restarts = restarts.len(), "persistent instance restarted");
                            }
                        }
                    }
                    Model::OnDemand => {}
                }
                if live.is_none() {
                    // On demand (or promoted with no room in the pool or no instance).
                    self.on_demand(rt, inbox, event, Some(auto));
                    continue;
                }
            }
            // A canary topic runs on the canary's version, in a fresh instance (and on a
            // fresh one of the primary if it fails there): this instance never sees it,
            // and starts afresh when the canary's share changes.
            if self
                .shadow
                .shadow()
                .is_some_and(|s| s.canary(&event.topic).is_some())
            {
                self.on_demand(rt, inbox, event, None);
                continue;
            }
            // A reload put a new version in force: this instance finished its last event
            // on the old one; the next runs on a fresh instance of the new one (its state
            // is in the store, not in the instance). An instance stopped by its restart
            // policy starts again, with the policy's count from zero: the reload is how a
            // user puts right what stopped it (until 2026-12-07 it stayed stopped, and
            // every event after a reload that reported success was dead-lettered).
            let now = self.function.generation();
            if now != generation {
                generation = now;
                let stopped = live.is_none();
                if stopped {
                    restarts.clear();
                    backoff = RESTART_BACKOFF_MIN;
                }
                live = match self.function.instantiate() {
                    Ok(i) => {
                        tracing::info!(function = %name, instance = self.index,
                            sha256 = %self.function.sha256(), stopped,
                            "persistent instance moved to the reloaded version");
                        Some(i)
                    }
                    Err(e) => {
                        tracing::error!(function = %name, instance = self.index, "reloaded version failed to start: {e}");
                        self.restart(inbox, &name, &mut restarts, &mut backoff)
                    }
                };
                self.stopped(&mut counted, live.is_none());
            }

            let Some(instance) = live.take() else {
                let err = CallError {
                    kind: FailureKind::FunctionStopped,
                    message: format!("instance {} is stopped by its restart policy", self.index),
                    cost: None,
                };
                rt.block_on(
                    self.output
                        .finish(&name, &self.stats, event, Err(err), inbox),
                );
                continue;
            };
            let id = message_id(&self.function, &event);
            if let Some((outputs, durable)) = already_done(&self.function, &event, id) {
                live = Some(instance);
                rt.block_on(
                    self.output
                        .replay(&name, &self.stats, event, outputs, durable),
                );
                continue;
            }
            let mut wait = Duration::from_millis(100);
            let mut instance = Some(instance);
            let (result, back) = loop {
                let Some(i) = instance.take() else {
                    break (
                        Err(CallError {
                            kind: FailureKind::Instantiate,
                            message: "no instance to retry the call on".into(),
                            cost: None,
                        }),
                        None,
                    );
                };
                let queued = event.received.elapsed();
                let (result, back) = i.call(&guest_event(&event), id);
                let result = result.map(|o| o.queued(queued));
                match result {
                    // The store, not the event or the instance, failed: nothing of the
                    // call was kept. Try again on a fresh instance (its memory may
                    // assume the writes), counted as no restart, once the store may take
                    // it; the queue fills meanwhile and the broker holds the rest.
                    Err(e) if e.kind == FailureKind::State && !inbox.is_closed() => {
                        tracing::debug!(function = %name, error = %e.message, "state store unavailable: the event waits");
                        rt.block_on(tokio::time::sleep(next_state_retry(&mut wait)));
                        instance = back.or_else(|| self.function.instantiate().ok());
                    }
                    // Stopping while the store is unavailable: the event stays
                    // unacknowledged, for the broker to deliver again.
                    Err(e) if e.kind == FailureKind::State => {
                        break (Err(e), back.or_else(|| self.function.instantiate().ok()));
                    }
                    other => break (other, back),
                }
            };
            if matches!(&result, Err(e) if e.kind == FailureKind::State) {
                live = back;
                continue;
            }
            if result.is_ok() {
                backoff = RESTART_BACKOFF_MIN;
            }
            // Another copy of the message had committed first: the instance's memory
            // assumes writes that were dropped. A fresh one, counted as no restart.
            let back = match (&result, back) {
                (Ok(o), None) if o.duplicate => self.function.instantiate().ok(),
                (_, back) => back,
            };
            let killed = back.is_none();
            if let (true, Err(e)) = (killed, &result) {
                tracing::warn!(function = %name, instance = self.index, kind = %e.kind,
                    "persistent instance dropped after a failed call");
            }
            live = back;
            if let Some(auto) = &self.auto {
                // Busy persistent is not idle: the keep-alive must not release the
                // module under it, nor count the stretch as an idle period.
                self.function.touch();
                if let Ok(outcome) = &result {
                    auto.record(Model::Persistent, &outcome.cost);
                }
            }
            self.shadow.offer(&event, &result);
            rt.block_on(self.output.finish(&name, &self.stats, event, result, inbox));
            if killed && self.auto.is_some() {
                // Auto: the next events run on demand until a fresh instance is made at
                // the next one, if the restart policy allows one (no back-off to wait out:
                // on demand serves meanwhile).
                promoted = None;
                failed = true;
                if !self.may_restart(&mut restarts) {
                    tracing::warn!(function = %name, instance = self.index,
                        "no new persistent instance for now (restart policy): its events run on demand");
                }
            } else if killed {
                // Replace it now, not when the next event arrives; events wait meanwhile.
                live = self.restart(inbox, &name, &mut restarts, &mut backoff);
                self.stopped(&mut counted, live.is_none());
            }
        }
        self.stopped(&mut counted, false);
    }

    /// Counts this instance in the function's stopped instances while `now` says so.
    fn stopped(&self, counted: &mut bool, now: bool) {
        if *counted != now {
            *counted = now;
            self.stats.instance_stopped(now);
        }
    }

    /// Runs `event` in a fresh instance, as the on-demand model does (an auto function on
    /// demand, or a canary topic).
    fn on_demand(
        &self,
        rt: &Handle,
        inbox: &Arc<Inbox>,
        event: crate::event::Inbound,
        auto: Option<&Auto>,
    ) {
        on_demand::handle(
            rt,
            &self.function,
            &self.stats,
            inbox,
            &self.pool,
            &self.output,
            event,
            auto,
            &self.shadow,
        );
    }

    /// A fresh instance, logged either way.
    fn start(&self, name: &str) -> Option<Instance> {
        match self.function.instantiate() {
            Ok(i) => {
                tracing::info!(function = %name, instance = self.index, "persistent instance started");
                Some(i)
            }
            Err(e) => {
                tracing::error!(function = %name, instance = self.index, "instance failed to start: {e}");
                None
            }
        }
    }

    fn demoted(&self, name: &str) {
        tracing::info!(function = %name, instance = self.index,
            "auto: persistent instance dropped, its queue finished; events run on demand");
        crate::runtime::release_freed_memory();
    }

    /// Waits out the back-off and starts a fresh instance, unless the policy says stop.
    /// Whether the restart policy lets a failed instance be replaced now: `always`, and
    /// fewer than `max_restarts` restarts within the window.
    fn may_restart(&self, restarts: &mut VecDeque<Instant>) -> bool {
        self.policy == RestartPolicy::Always
            && !window_full(restarts, self.window, self.max_restarts)
    }

    fn restart(
        &self,
        inbox: &Inbox,
        name: &str,
        restarts: &mut VecDeque<Instant>,
        backoff: &mut Duration,
    ) -> Option<Instance> {
        loop {
            if self.policy == RestartPolicy::Never {
                tracing::error!(function = %name, instance = self.index, "instance stopped (restart = \"never\")");
                return None;
            }
            if window_full(restarts, self.window, self.max_restarts) {
                tracing::error!(function = %name, instance = self.index, max_restarts = self.max_restarts,
                    window_secs = self.window.as_secs(), "instance stopped: too many restarts");
                return None;
            }
            // A plain sleep, in slices, cut short when the agent stops (the inbox closes):
            // tokio's timer panics on a runtime that is shutting down, which a stop during
            // a back-off met, with a backtrace after "stopped" (a probe, 2026-12-07).
            let until = std::time::Instant::now() + *backoff;
            while !inbox.is_closed() && std::time::Instant::now() < until {
                std::thread::sleep(
                    BACK_OFF_SLICE.min(until.saturating_duration_since(std::time::Instant::now())),
                );
            }
            if inbox.is_closed() && inbox.is_empty() {
                return None;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_restart_window_forgets_restarts_older_than_the_window() {
        let (window, max) = (Duration::from_secs(10), 3);
        let mut restarts = VecDeque::new();
        for _ in 0..3 {
            assert!(!window_full(&mut restarts, window, max), "{restarts:?}");
            restarts.push_back(Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Three restarts at 0 s, 1 s and 2 s: a fourth within the window is refused.
        assert!(window_full(&mut restarts, window, max));
        // At 10 s the first is exactly a window old: still counted.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(window_full(&mut restarts, window, max));
        // Just past it, the first falls out and one more restart is allowed.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!window_full(&mut restarts, window, max));
        assert_eq!(restarts.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_restart_is_allowed_with_max_restarts_zero() {
        let mut restarts = VecDeque::new();
        assert!(window_full(&mut restarts, Duration::from_secs(10), 0));
    }
}

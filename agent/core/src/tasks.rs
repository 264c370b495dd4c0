//! The agent's background tasks: what runs beside the functions rather than for one event
//! (the systemd watchdog, the metrics server, scale to zero, subscription requests). Each
//! is spawned through [`Background`], so that the stop sequence (`daemon::shutdown`) owns
//! it: it cancels their token, then waits for them, bounded, before the agent returns.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns background tasks that the stop sequence cancels and waits for.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Background tasks stopped by `stop` (or by [`Background::stop`]).
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop,
        }
    }

    /// Spawns the future that `task` makes from the stop token; it must end soon after
    /// the token is cancelled.
    pub fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.stop.clone()));
    }

    /// Spawns `task`, dropped at once when the stop token is cancelled (for tasks with
    /// nothing to finish).
    pub fn spawn_until_stopped(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Cancels every task's token and waits until all have ended; `false` if some were
    /// still running after `deadline`.
    pub async fn stop(&self, deadline: std::time::Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_and_waits_for_every_task() {
        let b = Background::new(CancellationToken::new());
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let t = tx.clone();
        b.spawn(|stop| async move {
            stop.cancelled().await;
            // A graceful end takes a moment, and is waited for.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = t.send("graceful").await;
        });
        b.spawn_until_stopped(async move {
            std::future::pending::<()>().await;
            let _ = tx.send("never").await;
        });
        assert!(b.stop(Duration::from_secs(1)).await);
        assert_eq!(rx.recv().await, Some("graceful"));
        assert_eq!(rx.recv().await, None, "the other was dropped, not finished");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_its_token_is_reported() {
        let b = Background::new(CancellationToken::new());
        b.spawn(|_stop| std::future::pending::<()>());
        assert!(!b.stop(Duration::from_secs(1)).await);
    }
}

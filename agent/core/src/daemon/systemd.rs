//! systemd's notify protocol (`Type=notify`): `READY=1` once the agent is connected and
//! subscribed, `STOPPING=1` when it starts to shut down, and `WATCHDOG=1` at half the
//! unit's `WatchdogSec` while the async runtime is alive. Each is a no-op when the agent
//! is not started by systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The agent is connected and subscribed: the unit is started.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// The agent is shutting down.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// The watchdog period systemd asks this process for, as `sd_watchdog_enabled(3)` reads
/// it: `WATCHDOG_USEC`, for this process when `WATCHDOG_PID` names it or is not set.
/// (The `sd-notify` crate's own reader requires `WATCHDOG_PID`.)
fn watchdog_usec(usec: Option<&str>, pid: Option<&str>) -> Option<u64> {
    let usec = usec?.parse::<u64>().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(usec),
    }
}

/// Pings systemd's watchdog at half its period for as long as the runtime runs, when the
/// unit sets `WatchdogSec` (a runtime that stalls stops the pings, and systemd restarts
/// the agent).
pub fn spawn_watchdog(background: &crate::tasks::Background) {
    let Some(usec) = watchdog_usec(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    ) else {
        return;
    };
    let period = Duration::from_micros(usec) / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
    background.spawn_until_stopped(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify(NotifyState::Watchdog);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_for_this_process_only() {
        let me = std::process::id().to_string();
        assert_eq!(watchdog_usec(Some("200000"), None), Some(200_000));
        assert_eq!(watchdog_usec(Some("200000"), Some(&me)), Some(200_000));
        assert_eq!(watchdog_usec(Some("200000"), Some("1")), None);
        assert_eq!(watchdog_usec(Some("0"), None), None);
        assert_eq!(watchdog_usec(Some("x"), None), None);
        assert_eq!(watchdog_usec(None, Some(&me)), None);
    }
}

//! Counters per function, recorded where things happen and summarised at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::ErrorKind;

const KINDS: [ErrorKind; 13] = [
    ErrorKind::GuestError,
    ErrorKind::Timeout,
    ErrorKind::MemoryLimit,
    ErrorKind::StackOverflow,
    ErrorKind::Trap,
    ErrorKind::Instantiate,
    ErrorKind::PayloadTooLarge,
    ErrorKind::QueueFull,
    ErrorKind::State,
    ErrorKind::FunctionStopped,
    ErrorKind::RateLimit,
    ErrorKind::StateQuota,
    ErrorKind::FuelExhausted,
];

/// Event counters of one function.
#[derive(Debug, Default)]
pub struct FunctionStats {
    received: AtomicU64,
    succeeded: AtomicU64,
    restarts: AtomicU64,
    failed: [AtomicU64; KINDS.len()],
}

impl FunctionStats {
    /// An event was routed to the function.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was handled successfully.
    pub fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    /// A persistent instance was restarted.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// An event failed with `kind`.
    pub fn failed(&self, kind: ErrorKind) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A snapshot: received, succeeded, and failures by kind (non-zero only).
    pub fn snapshot(&self) -> (u64, u64, Vec<(&'static str, u64)>) {
        let failed = KINDS
            .iter()
            .zip(&self.failed)
            .map(|(k, n)| (k.as_str(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        (
            self.received.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            failed,
        )
    }
}

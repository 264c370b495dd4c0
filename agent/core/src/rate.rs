//! A token bucket: the rate limit behind `publish_rate`, `log_rate` and, over it, the state
//! store's `max_flushes_per_sec`.

use std::time::Instant;

/// Most and least events a second a command line takes (`publish --rate`, `compare
/// --rate`): one a microsecond, one in about 11 days. Until 2026-12-07 `publish` panicked
/// on `inf`, `1e10` and `1e-300` and took `0`, `-5` and `NaN` for no rate; `compare`
/// printed verdicts such as "3626% less money at -5 events/s".
pub const RATES: std::ops::RangeInclusive<f64> = 1e-6..=1e6;

/// Parses a rate given on the command line: a number of events a second within [`RATES`].
///
/// # Errors
/// What it must be, for clap to print.
pub fn parse(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if RATES.contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "events a second, from {} to {}",
            RATES.start(),
            RATES.end()
        ))
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst` (by default `rate`,
/// so bursts of up to one second's worth are allowed).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second.
    pub fn new(rate: u32) -> Self {
        Self::with_burst(rate, f64::from(rate.max(1)))
    }

    /// A full bucket of `burst` tokens (at least one) refilling at `rate` per second.
    pub fn with_burst(rate: u32, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// How long until a token is there (zero if one is there now).
    pub fn wait(&mut self, now: Instant) -> std::time::Duration {
        self.refill(now);
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        // Less a rounding error: after waiting out `wait`, a token is there.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::TokenBucket;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10);
        let t0 = Instant::now();
        assert_eq!(
            (0..20).filter(|_| b.take(t0)).count(),
            10,
            "a burst of one second's worth"
        );
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}

//! How sure a figure is. Every figure `compare` reports is an [`Estimate`]: a median with
//! a 95% interval, the number of samples behind it and how many of them are outliers.
//!
//! - A figure measured directly (CPU per hour at one rate, from one-second windows over
//!   every round) gets the distribution-free interval for a median: the order statistics
//!   `x(k)` and `x(n-k+1)` whose binomial coverage is at least 95%. It assumes nothing
//!   about the distribution's shape. With fewer than 6 samples no pair of order statistics
//!   reaches 95%; the interval is then the samples' range and [`Estimate::confidence`]
//!   says how sure it is (87.5% with 4 samples).
//! - A figure derived from several (a fitted standing cost, a break-even rate, one model's
//!   saving over the other at a rate) gets a bootstrap percentile interval: the windows of
//!   each rate are resampled with replacement, the medians and fits recomputed, 1,000
//!   times, and the 2.5th and 97.5th percentiles of the results bound it ([`Bootstrap`]).
//! - A latency percentile gets the order-statistic interval of that quantile over every
//!   event ([`quantile_bounds`]).
//!
//! Outliers are counted with Tukey's fences (beyond 1.5 interquartile ranges from the
//! quartiles, as criterion.rs and hyperfine flag them): kept, since a median is not moved
//! by them, but shown.

use serde::{Deserialize, Serialize};

/// The confidence every interval aims at.
pub const CONFIDENCE: f64 = 0.95;

/// A figure: its median and a 95% interval.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    /// The median of the samples (for a derived figure, the figure computed from the
    /// medians).
    pub median: f64,
    /// Lower bound of the interval.
    pub low: f64,
    /// Upper bound of the interval.
    pub high: f64,
    /// Samples behind it (for a derived figure, the fewest in any of its inputs).
    pub n: usize,
    /// How sure the interval is: 0.95, or less when there were too few samples to reach it.
    pub confidence: f64,
    /// Samples beyond Tukey's fences: kept, but a sign of a disturbed measurement.
    pub outliers: usize,
}

impl Estimate {
    /// One exact figure (a count, a single reading): its interval is itself.
    pub fn exact(v: f64) -> Self {
        Self {
            median: v,
            low: v,
            high: v,
            n: 1,
            confidence: 1.0,
            outliers: 0,
        }
    }

    /// The median of `samples` with its distribution-free interval. No samples: zero,
    /// with `n` 0.
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return Self::default();
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let (k, confidence) = median_ranks(n);
        Self {
            median: median_sorted(&s),
            low: s[k],
            high: s[n - 1 - k],
            n,
            confidence,
            outliers: outliers_sorted(&s),
        }
    }

    /// A derived figure: `point` (computed from the medians) and the percentile interval of
    /// its bootstrap `replicates`; `n` samples in the smallest input.
    pub fn bootstrapped(point: f64, replicates: &[f64], n: usize) -> Self {
        let mut r: Vec<f64> = replicates
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if r.is_empty() {
            return Self {
                n,
                ..Self::exact(point)
            };
        }
        r.sort_by(f64::total_cmp);
        let tail = (1.0 - CONFIDENCE) / 2.0;
        Self {
            median: point,
            low: quantile_sorted(&r, tail).min(point),
            high: quantile_sorted(&r, 1.0 - tail).max(point),
            n,
            confidence: if n >= 6 {
                CONFIDENCE
            } else {
                median_ranks(n).1
            },
            outliers: 0,
        }
    }

    /// The same estimate with every value passed through `f`, an increasing function (a
    /// change of unit).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            median: f(self.median),
            low: f(self.low),
            high: f(self.high),
            ..self
        }
    }

    /// Half the interval's width, relative to the median (0 when the median is 0).
    pub fn relative_spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.high - self.low) / 2.0 / self.median.abs()
        }
    }

    /// Whether the two intervals share a value.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.low <= other.high && other.low <= self.high
    }

    /// `12.3 [11.9-12.8]`, with `digits` after the point.
    pub fn show(&self, digits: usize) -> String {
        if self.low == self.high {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} [{:.digits$}-{:.digits$}]",
                self.median, self.low, self.high
            )
        }
    }
}

/// The 0-based rank `k` of the lower order statistic of the median's interval for `n`
/// samples (the upper is `n - 1 - k`), and its exact coverage: the largest `k` whose
/// coverage `1 - 2 P(Binomial(n, 1/2) <= k)` is still at least 95%, or `k = 0` (the range)
/// when none is.
pub fn median_ranks(n: usize) -> (usize, f64) {
    if n == 0 {
        return (0, 0.0);
    }
    // P(B <= k) for B ~ Binomial(n, 1/2), accumulated in logs to stay exact for large n.
    // The interval x(k)..x(n-1-k) misses the median when k or fewer samples fall on one
    // side of it: coverage 1 - 2 P(B <= k).
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut cdf = ln_half_n.exp();
    let mut best = (0, (1.0 - 2.0 * cdf).max(0.0));
    let mut k = 1;
    while 2 * k + 1 < n {
        ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
        cdf += (ln_choose + ln_half_n).exp();
        let coverage = 1.0 - 2.0 * cdf;
        if coverage < CONFIDENCE {
            break;
        }
        best = (k, coverage);
        k += 1;
    }
    best
}

/// The quantiles that bound a 95% interval of quantile `q` over `n` events (the normal
/// approximation of the binomial order-statistic interval), clamped to 0..1.
pub fn quantile_bounds(q: f64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (q, q);
    }
    let n = n as f64;
    let half = 1.96 * (q * (1.0 - q) / n).sqrt() + 0.5 / n;
    ((q - half).max(0.0), (q + half).min(1.0))
}

fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Linear interpolation between order statistics (type 7, as R and NumPy default to).
fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match s.get(i + 1) {
        Some(next) => s[i] + (next - s[i]) * frac,
        None => s[i],
    }
}

fn outliers_sorted(s: &[f64]) -> usize {
    if s.len() < 4 {
        return 0;
    }
    let (q1, q3) = (quantile_sorted(s, 0.25), quantile_sorted(s, 0.75));
    let fence = 1.5 * (q3 - q1);
    s.iter()
        .filter(|&&v| v < q1 - fence || v > q3 + fence)
        .count()
}

/// The median of `samples` (0 with none).
pub fn median(samples: &[f64]) -> f64 {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    median_sorted(&s)
}

/// Resampling with replacement, seeded: the same samples give the same intervals, so a
/// saved report renders the same verdict again.
pub struct Bootstrap {
    rng: fastrand::Rng,
    /// Resamples drawn.
    pub replicates: usize,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            rng: fastrand::Rng::with_seed(0xb007_5724),
            replicates: 1000,
        }
    }
}

impl Bootstrap {
    /// The median of one resample of `samples` (0 with none).
    pub fn resampled_median(&mut self, samples: &[f64]) -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let mut r: Vec<f64> = (0..samples.len())
            .map(|_| samples[self.rng.usize(..samples.len())])
            .collect();
        r.sort_by(f64::total_cmp);
        median_sorted(&r)
    }

    /// Indices of one resample of `n` items.
    pub fn indices(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|_| self.rng.usize(..n.max(1))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normal samples (Box-Muller) from a seeded generator.
    fn normal(rng: &mut fastrand::Rng, mean: f64, sd: f64) -> f64 {
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    #[test]
    fn median_ranks_reach_95_percent_from_six_samples() {
        assert_eq!(median_ranks(0), (0, 0.0));
        // Two samples: the range covers the median half the time; five: 93.75%.
        assert!((median_ranks(2).1 - 0.5).abs() < 1e-12);
        assert!((median_ranks(5).1 - 0.9375).abs() < 1e-12);
        assert_eq!(median_ranks(5).0, 0);
        // Six: the range covers 96.9%.
        assert_eq!(median_ranks(6).0, 0);
        assert!((median_ranks(6).1 - 0.96875).abs() < 1e-12);
        // Nine: x(2)..x(8) covers 96.1% (the tables' value).
        assert_eq!(median_ranks(9).0, 1);
        assert!((median_ranks(9).1 - 0.9609375).abs() < 1e-9);
        for n in 6..200 {
            let (k, c) = median_ranks(n);
            assert!(c >= CONFIDENCE && k < n - 1 - k, "{n}: {k} {c}");
        }
    }

    /// The intervals cover the truth at the rate they state: 1,000 experiments each, on a
    /// symmetric, a skewed and a heavy-tailed distribution, with the sample sizes a full
    /// run has.
    #[test]
    fn intervals_cover_the_true_median_at_the_stated_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        type Draw = fn(&mut fastrand::Rng) -> f64;
        let draws: [(&str, f64, Draw); 3] = [
            ("normal", 10.0, |r| normal(r, 10.0, 2.0)),
            // Log-normal: median e^1.
            ("log-normal", 1f64.exp(), |r| normal(r, 1.0, 0.8).exp()),
            // Exponential with mean 1: median ln 2.
            ("exponential", std::f64::consts::LN_2, |r| {
                -(r.f64().max(1e-12)).ln()
            }),
        ];
        for (name, truth, draw) in draws {
            for n in [9, 15, 40] {
                let trials = 1000;
                let covered = (0..trials)
                    .filter(|_| {
                        let s: Vec<f64> = (0..n).map(|_| draw(&mut rng)).collect();
                        let e = Estimate::of(&s);
                        e.low <= truth && truth <= e.high
                    })
                    .count();
                let rate = covered as f64 / trials as f64;
                // The exact coverage is at least 95%; 1,000 trials put 2.2 points of noise
                // (3 sigma) on the observed rate.
                assert!(rate >= 0.928, "{name}, n = {n}: covered {rate}");
            }
        }
    }

    /// A difference of medians, bootstrapped: the interval covers the true difference
    /// about 95% of the time, and excludes zero when the difference is real.
    #[test]
    fn bootstrapped_differences_cover_the_truth() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut boot = Bootstrap {
            replicates: 400,
            ..Bootstrap::default()
        };
        let trials = 300;
        let mut covered = 0;
        for _ in 0..trials {
            let a: Vec<f64> = (0..15).map(|_| normal(&mut rng, 10.0, 1.0)).collect();
            let b: Vec<f64> = (0..15).map(|_| normal(&mut rng, 11.0, 1.0)).collect();
            let reps: Vec<f64> = (0..boot.replicates)
                .map(|_| boot.resampled_median(&b) - boot.resampled_median(&a))
                .collect();
            let e = Estimate::bootstrapped(median(&b) - median(&a), &reps, 15);
            if e.low <= 1.0 && 1.0 <= e.high {
                covered += 1;
            }
        }
        let rate = f64::from(covered) / f64::from(trials);
        // Percentile intervals of medians run slightly wide or narrow at n = 15.
        assert!((0.90..=1.0).contains(&rate), "covered {rate}");
    }

    #[test]
    fn outliers_are_flagged_and_the_median_kept() {
        let mut s: Vec<f64> = (0..20).map(|i| 100.0 + f64::from(i % 5)).collect();
        s.push(1000.0);
        let e = Estimate::of(&s);
        assert_eq!(e.outliers, 1);
        assert!((e.median - 102.0).abs() < 1e-9, "{e:?}");
        assert!(e.high < 1000.0, "{e:?}");
        assert_eq!(Estimate::of(&[]).n, 0);
        let one = Estimate::of(&[3.0]);
        assert_eq!((one.low, one.median, one.high), (3.0, 3.0, 3.0));
        assert!(Estimate::of(&[1.0, 2.0]).overlaps(&Estimate::of(&[2.0, 3.0])));
        assert!(!Estimate::of(&[1.0, 2.0]).overlaps(&Estimate::of(&[2.5, 3.0])));
    }

    #[test]
    fn quantile_bounds_narrow_with_more_events() {
        let (lo, hi) = quantile_bounds(0.99, 100);
        let (lo2, hi2) = quantile_bounds(0.99, 100_000);
        assert!(
            lo < lo2 && hi2 < hi.max(hi2 + 1e-12) && hi2 - lo2 < 0.002,
            "{lo2} {hi2}"
        );
        assert_eq!(quantile_bounds(0.5, 0), (0.5, 0.5));
    }
}

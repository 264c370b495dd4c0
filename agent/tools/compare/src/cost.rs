//! What the measured figures cost, by two models that are *not* measurements: a device
//! power profile (watts idle and busy, from a cited source) turns CPU time into energy,
//! and a price list turns CPU, memory and invocations into money under the two billing
//! schemes of the serverless-vs-containers comparison:
//! - **by use** (the serverless scheme, for on-demand): a price per million invocations
//!   plus a price per GB-second of memory held while handling;
//! - **reserved** (the container scheme, for persistent): vCPU-hours and GB-hours held
//!   whether events come or not, sized to what the model used at that rate.
//!
//! Each model's cost is then fitted as `standing + rate × marginal` over the measured
//! rates (and the idle measurement at rate 0), and the rate where two models cost the same
//! is the break-even.

use serde::{Deserialize, Serialize};

use crate::stats::Estimate;

/// A device's power draw: a model, from a cited source, not a measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PowerProfile {
    /// Short name (`pi4`).
    pub name: String,
    /// Where the figures come from.
    pub source: String,
    /// Processor cores.
    pub cores: u32,
    /// The whole board, idle, watts.
    pub idle_watts: f64,
    /// The whole board with every core busy, watts.
    pub busy_watts: f64,
}

impl PowerProfile {
    /// Watts one fully busy core adds to the idle board.
    pub fn watts_per_busy_core(&self) -> f64 {
        (self.busy_watts - self.idle_watts).max(0.0) / f64::from(self.cores.max(1))
    }
}

fn profile(name: &str, source: &str, cores: u32, idle: f64, busy: f64) -> PowerProfile {
    PowerProfile {
        name: name.into(),
        source: source.into(),
        cores,
        idle_watts: idle,
        busy_watts: busy,
    }
}

/// The power profiles that ship with the agent (`--power NAME`).
pub fn power_profiles() -> Vec<PowerProfile> {
    vec![
        profile(
            "pi-zero-2w",
            "Raspberry Pi Zero 2 W (4 x Cortex-A53): 0.6 W idle, measured by CNX Software, \
             https://www.cnx-software.com/2021/12/09/raspberry-pi-zero-2-w-power-consumption/ \
             (2021-12-09); 3.0 W busy is an ESTIMATE (no citable all-core figure found): \
             measure yours and use a custom profile",
            4,
            0.6,
            3.0,
        ),
        profile(
            "pi4",
            "Raspberry Pi 4 Model B (4 x Cortex-A72): 1.6 W idle, 5.0 W under \
             stress-ng --matrix 0, at the wall; Jeff Geerling's sbc-reviews, \
             https://github.com/geerlingguy/sbc-reviews/issues/4 (2023)",
            4,
            1.6,
            5.0,
        ),
        profile(
            "pi5",
            "Raspberry Pi 5 (4 x Cortex-A76): 2.8 W idle, 9.7 W under stress-ng --matrix 0, \
             at the wall; Jeff Geerling's sbc-reviews, \
             https://github.com/geerlingguy/sbc-reviews/issues/21 (2023)",
            4,
            2.8,
            9.7,
        ),
        profile(
            "x86-laptop",
            "Framework Laptop 13 (AMD Ryzen 7040 series, 8 cores assumed): 2.7 W idle, \
             46.7 W under stress-ng --matrix 0; Jeff Geerling's sbc-reviews, \
             https://github.com/geerlingguy/sbc-reviews/issues/90 (2025)",
            8,
            2.7,
            46.7,
        ),
    ]
}

/// A power profile name that [`power_profiles`] does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown power profile '{name}' (known: {})", .known.join(", "))]
pub struct UnknownPowerProfile {
    /// The name asked for.
    pub name: String,
    /// The names there are.
    pub known: Vec<String>,
}

/// The profile for a name, or the one that suits this machine's architecture.
///
/// # Errors
/// [`UnknownPowerProfile`] for a name no profile has.
pub fn power_profile(name: Option<&str>) -> Result<PowerProfile, UnknownPowerProfile> {
    let all = power_profiles();
    let name = name.unwrap_or(if cfg!(target_arch = "x86_64") {
        "x86-laptop"
    } else {
        "pi4"
    });
    all.iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| UnknownPowerProfile {
            name: name.to_string(),
            known: all.iter().map(|p| p.name.clone()).collect(),
        })
}

/// The price list is the agent's own (`mode = "auto"` prices money with it too).
pub use edge_agent::config::Prices;

/// What a model costs at one rate, per hour.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Costs {
    /// Events per second.
    pub rate: f64,
    /// CPU seconds per hour (the process, idle share included).
    pub cpu_seconds: f64,
    /// Mean resident memory, MB.
    pub memory_mb: f64,
    /// Watts the agent adds to the idle board (CPU × the profile's watts per busy core).
    pub watts: f64,
    /// Energy per event at this rate, joules (the idle share included); 0 at rate 0.
    pub joules_per_event: f64,
    /// Dollars per hour under the model's billing scheme.
    pub dollars: f64,
}

/// What one model used at one rate, as measured; the input of [`Costs`].
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Events per second.
    pub rate: f64,
    /// Process CPU per hour, seconds.
    pub cpu_seconds_per_hour: f64,
    /// Mean resident memory, bytes.
    pub rss_bytes: f64,
    /// Linear memory one call holds, bytes.
    pub call_memory_bytes: f64,
    /// How long one call holds it (instantiation and execution), seconds.
    pub call_seconds: f64,
}

/// How a model is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// Per invocation and GB-second while handling (serverless).
    ByUse,
    /// vCPU-hours and GB-hours held (containers).
    Reserved,
}

impl Costs {
    /// Prices `usage` with `power` and `prices` under `billing`.
    pub fn of(usage: Usage, power: &PowerProfile, prices: &Prices, billing: Billing) -> Self {
        let cpu_fraction = usage.cpu_seconds_per_hour / 3600.0;
        let dollars = match billing {
            Billing::ByUse => {
                let per_call = prices.per_million_invocations / 1e6
                    + prices.per_gb_second * usage.call_memory_bytes / 1e9 * usage.call_seconds;
                usage.rate * 3600.0 * per_call
            }
            Billing::Reserved => {
                prices.per_vcpu_hour * cpu_fraction + prices.per_gb_hour * usage.rss_bytes / 1e9
            }
        };
        let watts = cpu_fraction * power.watts_per_busy_core();
        Self {
            rate: usage.rate,
            cpu_seconds: usage.cpu_seconds_per_hour,
            memory_mb: usage.rss_bytes / 1e6,
            watts,
            joules_per_event: if usage.rate > 0.0 {
                watts / usage.rate
            } else {
                0.0
            },
            dollars,
        }
    }
}

/// `cost(rate) = standing + rate × marginal`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// Cost at rate 0, per hour.
    pub standing: f64,
    /// Cost per event/s more, per hour.
    pub marginal: f64,
}

impl Line {
    /// Least squares through `(rate, cost)` points, each weighted by 1/cost² so that
    /// every rate counts alike (relative error) and rate 0 and 1 matter as much as 1000.
    pub fn fit(points: &[(f64, f64)]) -> Self {
        let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let floor = points.iter().map(|p| p.1.abs()).fold(0.0, f64::max) * 1e-6 + 1e-12;
        for &(x, y) in points {
            let w = 1.0 / y.abs().max(floor).powi(2);
            sw += w;
            sx += w * x;
            sy += w * y;
            sxx += w * x * x;
            sxy += w * x * y;
        }
        let det = sw * sxx - sx * sx;
        if points.is_empty() {
            return Self::default();
        }
        if det.abs() < f64::EPSILON * sw * sxx.max(1.0) {
            return Self {
                standing: sy / sw,
                marginal: 0.0,
            };
        }
        let marginal = (sw * sxy - sx * sy) / det;
        let standing = (sy - marginal * sx) / sw;
        // Costs are never negative: a noisy fit that says so is clamped.
        Self {
            standing: standing.max(0.0),
            marginal: marginal.max(0.0),
        }
    }

    /// The cost at `rate`.
    pub fn at(&self, rate: f64) -> f64 {
        self.standing + rate * self.marginal
    }
}

impl Line {
    /// The rate in `0..=max_rate` where this line and `other` cross, if they do.
    pub fn crossing(&self, other: &Self, max_rate: f64) -> Option<f64> {
        let dm = self.marginal - other.marginal;
        if dm.abs() <= f64::EPSILON {
            return None;
        }
        Some((other.standing - self.standing) / dm).filter(|r| *r > 0.0 && *r < max_rate)
    }
}

/// A fitted line with intervals on both terms (bootstrap: the windows resampled).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LineEstimate {
    /// Cost at rate 0, per hour.
    pub standing: Estimate,
    /// Cost per event/s more, per hour.
    pub marginal: Estimate,
}

impl LineEstimate {
    /// The line through the medians.
    pub fn line(&self) -> Line {
        Line {
            standing: self.standing.median,
            marginal: self.marginal.median,
        }
    }
}

/// Each kind of cost's fitted line, with intervals.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct FitEstimates {
    /// CPU seconds per hour.
    pub cpu_seconds: LineEstimate,
    /// Resident memory, MB.
    pub memory_mb: LineEstimate,
    /// Watts above the idle board.
    pub watts: LineEstimate,
    /// Dollars per hour under the model's billing scheme.
    pub dollars: LineEstimate,
}

impl FitEstimates {
    /// In the order of [`KINDS`].
    pub fn lines(&self) -> [LineEstimate; 4] {
        [self.cpu_seconds, self.memory_mb, self.watts, self.dollars]
    }
}

/// What a model costs at one rate, per hour: each a median over the windows with its 95%
/// interval.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CostEstimates {
    /// Events per second (0: idle).
    pub rate: f64,
    /// CPU seconds per hour.
    pub cpu_seconds: Estimate,
    /// Resident memory, MB.
    pub memory_mb: Estimate,
    /// Watts the agent adds to the idle board.
    pub watts: Estimate,
    /// Energy per event, joules (the idle share included); 0 at rate 0.
    pub joules_per_event: Estimate,
    /// Dollars per hour under the model's billing scheme.
    pub dollars: Estimate,
}

impl CostEstimates {
    /// In the order of [`KINDS`].
    pub fn kinds(&self) -> [Estimate; 4] {
        [self.cpu_seconds, self.memory_mb, self.watts, self.dollars]
    }
}

/// The kinds of cost, in the order [`Costs::kind`] numbers them.
pub const KINDS: [&str; 4] = ["cpu", "memory", "energy", "money"];

impl Costs {
    /// The cost of kind `k` of [`KINDS`].
    pub fn kind(&self, k: usize) -> f64 {
        match k {
            0 => self.cpu_seconds,
            1 => self.memory_mb,
            2 => self.watts,
            _ => self.dollars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fit_recovers_a_line_and_weighs_low_rates() {
        let pts: Vec<(f64, f64)> = [0.0, 1.0, 10.0, 100.0, 1000.0]
            .iter()
            .map(|&r| (r, 18.0 + 0.36 * r))
            .collect();
        let l = Line::fit(&pts);
        assert!((l.standing - 18.0).abs() < 1e-6, "{l:?}");
        assert!((l.marginal - 0.36).abs() < 1e-9, "{l:?}");
        // A single point: all standing.
        let one = Line::fit(&[(0.0, 5.0)]);
        assert_eq!(
            one,
            Line {
                standing: 5.0,
                marginal: 0.0
            }
        );
    }

    #[test]
    fn lines_cross_where_they_cost_the_same_or_not_at_all() {
        // By use: nothing standing, 1 per event/s; reserved: 10 standing, 0.5 marginal.
        let by_use = Line {
            standing: 0.0,
            marginal: 1.0,
        };
        let reserved = Line {
            standing: 10.0,
            marginal: 0.5,
        };
        assert_eq!(by_use.crossing(&reserved, 1000.0), Some(20.0));
        assert_eq!(reserved.crossing(&by_use, 1000.0), Some(20.0));
        // Past the measured range: none.
        assert_eq!(by_use.crossing(&reserved, 10.0), None);
        // Parallel lines never cross.
        let parallel = Line {
            standing: 1.0,
            ..reserved
        };
        assert_eq!(reserved.crossing(&parallel, 1e6), None);
    }

    #[test]
    fn billing_schemes_price_what_was_used() {
        let p = Prices::default();
        let power = power_profile(Some("pi4")).unwrap();
        let usage = Usage {
            rate: 10.0,
            cpu_seconds_per_hour: 360.0, // 10% of a core
            rss_bytes: 20e6,
            call_memory_bytes: 1.1e6,
            call_seconds: 1e-4,
        };
        let by_use = Costs::of(usage, &power, &p, Billing::ByUse);
        // 36,000 calls an hour at $0.20 a million, plus their GB-seconds.
        let expected = 36_000.0 * (0.2e-6 + 0.000_013_333_4 * 1.1e-3 * 1e-4);
        assert!((by_use.dollars - expected).abs() < 1e-12, "{by_use:?}");
        let reserved = Costs::of(usage, &power, &p, Billing::Reserved);
        assert!((reserved.dollars - (0.1 * 0.032_38 + 0.02 * 0.003_56)).abs() < 1e-12);
        // 10% of one core of a Pi 4: (5.0 - 1.6) / 4 W per core.
        assert!((by_use.watts - 0.1 * 3.4 / 4.0).abs() < 1e-9);
        assert!((by_use.joules_per_event - by_use.watts / 10.0).abs() < 1e-12);
        assert!(power_profile(Some("nope")).is_err());
        assert_eq!(power_profiles().len(), 4);
    }
}

//! From windows to a verdict that holds still. Each model's one-second windows are priced
//! ([`Priced`]), their medians per rate fitted as `standing + rate × marginal`, and the
//! whole of it bootstrapped: the windows of every rate resampled 1,000 times, the medians
//! and fits recomputed. Where the two models' costs differ by less than that noise, the
//! verdict says "about even (within noise)"; it names a winner only where the whole 95%
//! interval of the difference lies beyond the noise threshold on one side, and says by how
//! much, with its interval.

use serde::{Deserialize, Serialize};

use crate::cost::{
    Billing, CostEstimates, Costs, FitEstimates, KINDS, Line, LineEstimate, PowerProfile, Prices,
    Usage,
};
use crate::measure::Window;
use crate::stats::{Bootstrap, Estimate, median};

/// Who wins where the data does not say.
pub const EVEN: &str = "about even (within noise)";

/// One model's windows priced, grouped by offered rate (idle, rate 0, first), each with
/// the round it came from.
pub struct Priced {
    strata: Vec<(f64, Vec<(u32, Costs)>)>,
    rounds: Vec<u32>,
}

/// What the pricing needs besides the windows.
pub struct Pricing<'a> {
    /// How the model is billed (auto's windows say which model they were in).
    pub billing: Billing,
    /// Linear memory one call holds, bytes (by use).
    pub call_memory_bytes: f64,
    /// How long one call holds it, seconds (by use).
    pub call_seconds: f64,
    /// Watts per busy core.
    pub power: &'a PowerProfile,
    /// The price list.
    pub prices: &'a Prices,
}

impl Priced {
    /// Prices every window.
    pub fn of(windows: &[Window], pricing: &Pricing<'_>) -> Self {
        let mut strata: Vec<(f64, Vec<(u32, Costs)>)> = Vec::new();
        for w in windows {
            let usage = Usage {
                rate: w.rate,
                cpu_seconds_per_hour: w.cpu_seconds_per_hour,
                rss_bytes: w.rss_bytes,
                call_memory_bytes: pricing.call_memory_bytes,
                call_seconds: pricing.call_seconds,
            };
            // Auto is billed as the model it was in: reserved only while persistent.
            let billing = match w.persistent {
                Some(true) => Billing::Reserved,
                Some(false) => Billing::ByUse,
                None => pricing.billing,
            };
            let c = Costs::of(usage, pricing.power, pricing.prices, billing);
            match strata.iter_mut().find(|(r, _)| *r == w.rate) {
                Some((_, v)) => v.push((w.round, c)),
                None => strata.push((w.rate, vec![(w.round, c)])),
            }
        }
        strata.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rounds: Vec<u32> = windows.iter().map(|w| w.round).collect();
        rounds.sort_unstable();
        rounds.dedup();
        Self { strata, rounds }
    }

    /// The cost of each kind at each rate, median and interval.
    pub fn estimates(&self) -> Vec<CostEstimates> {
        self.strata
            .iter()
            .map(|(rate, costs)| {
                let of = |k: usize| {
                    Estimate::of(&costs.iter().map(|(_, c)| c.kind(k)).collect::<Vec<_>>())
                };
                let watts = of(2);
                CostEstimates {
                    rate: *rate,
                    cpu_seconds: of(0),
                    memory_mb: of(1),
                    watts,
                    joules_per_event: if *rate > 0.0 {
                        watts.map(|w| w / rate)
                    } else {
                        Estimate::default()
                    },
                    dollars: of(3),
                }
            })
            .collect()
    }

    /// The fewest windows at any rate.
    pub fn n(&self) -> usize {
        self.strata.iter().map(|s| s.1.len()).min().unwrap_or(0)
    }

    /// The rounds this model's windows come from.
    pub fn rounds(&self) -> &[u32] {
        &self.rounds
    }

    /// The median of each kind at each rate; with a resample, the medians of the windows
    /// of the `drawn` rounds, each round's windows drawn again with replacement.
    /// Resampling rounds first lets what varies from one agent process to the next widen
    /// the intervals too.
    fn medians(&self, resample: Option<(&[u32], &mut Bootstrap)>) -> Medians {
        let mut resample = resample;
        self.strata
            .iter()
            .map(|(rate, costs)| {
                let picked: Vec<&Costs> = match resample.as_mut() {
                    Some((drawn, b)) => drawn
                        .iter()
                        .flat_map(|r| {
                            let these: Vec<&Costs> = costs
                                .iter()
                                .filter(|(round, _)| round == r)
                                .map(|(_, c)| c)
                                .collect();
                            b.indices(these.len())
                                .into_iter()
                                .filter_map(|i| these.get(i).copied())
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                    None => costs.iter().map(|(_, c)| c).collect(),
                };
                let m = |k: usize| median(&picked.iter().map(|c| c.kind(k)).collect::<Vec<_>>());
                (*rate, [m(0), m(1), m(2), m(3)])
            })
            .collect()
    }

    /// The fit through the medians, and one fit per entry of `draws`: the rounds drawn for
    /// that resample. The models of one function share their draws, so that their
    /// replicates are paired by round: the rounds were interleaved (A B C A B C), and what
    /// the machine did during one round weighs on every model's windows of it alike.
    pub fn fits(&self, draws: &[Vec<u32>], boot: &mut Bootstrap) -> Fitted {
        let point = Measured::of(self.medians(None));
        let replicates = draws
            .iter()
            .map(|drawn| Measured::of(self.medians(Some((drawn, &mut *boot)))))
            .collect();
        Fitted {
            point,
            replicates,
            n: self.n(),
        }
    }
}

/// The median of each kind of cost at each rate measured, by rate.
type Medians = Vec<(f64, [f64; 4])>;

/// One model's medians per rate and the lines fitted through them, once for the windows
/// and once per resample.
struct Measured {
    medians: Medians,
    lines: [Line; 4],
}

impl Measured {
    fn of(medians: Medians) -> Self {
        let lines = std::array::from_fn(|k| {
            Line::fit(&medians.iter().map(|(r, m)| (*r, m[k])).collect::<Vec<_>>())
        });
        Self { medians, lines }
    }

    /// Cost of kind `k` at `at` on the straight lines joining the medians
    /// ([`between_measured`]).
    fn joined_at(&self, k: usize, at: f64) -> Option<f64> {
        let points: Vec<(f64, f64)> = self.medians.iter().map(|(r, m)| (*r, m[k])).collect();
        between_measured(&points, at)
    }
}

/// The value at `at` of the straight lines joining `points` (rate, value), sorted by rate:
/// between two rates measured, on the line between them; past either end, on the line of
/// the nearest two (one point: its value). None without points.
pub fn between_measured(points: &[(f64, f64)], at: f64) -> Option<f64> {
    let (first, rest) = points.split_first()?;
    let Some(last) = rest.last() else {
        return Some(first.1);
    };
    let (a, b) = points
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|(_, b)| at <= b.0)
        .unwrap_or((points[points.len() - 2], *last));
    if b.0 == a.0 {
        return Some(b.1);
    }
    Some(a.1 + (b.1 - a.1) * (at - a.0) / (b.0 - a.0))
}

/// How much dearer `auto` is at `at` than the cheaper of the two fixed models, per kind of
/// cost, as a fraction of that model's cost (negative: cheaper), with its interval over
/// the paired resamples. The fixed models are read from their fitted lines; auto from its
/// medians joined by straight lines, since it is billed as the model it was in and its
/// money jumps where it switched: nothing while idle on demand, reserved once persistent
/// (one line fitted through both put it 25-39% under persistent at rates where it was
/// persistent and cost what persistent cost; a probe, 2026-12-07).
pub fn auto_against(
    auto: &Fitted,
    persistent: &Fitted,
    on_demand: &Fitted,
    at: f64,
) -> Vec<(f64, f64, f64, Estimate)> {
    let over = |a: &Measured, p: &Measured, o: &Measured, k: usize| {
        let (p, o) = (p.lines[k].at(at), o.lines[k].at(at));
        let auto = a.joined_at(k, at)?;
        let cheaper = p.min(o);
        let over = if cheaper > 0.0 {
            (auto - cheaper) / cheaper
        } else {
            0.0
        };
        Some((auto, p, o, over))
    };
    let n = auto.n.min(persistent.n).min(on_demand.n);
    (0..KINDS.len())
        .filter_map(|k| {
            let (a, p, o, point) = over(&auto.point, &persistent.point, &on_demand.point, k)?;
            let reps: Vec<f64> = auto
                .replicates
                .iter()
                .zip(&persistent.replicates)
                .zip(&on_demand.replicates)
                .filter_map(|((a, p), o)| over(a, p, o, k).map(|r| r.3))
                .collect();
            Some((a, p, o, Estimate::bootstrapped(point, &reps, n)))
        })
        .collect()
}

/// `boot.replicates` draws with replacement of `rounds`, shared by the models of one
/// function (see [`Priced::fits`]).
pub fn draw_rounds(rounds: &[u32], boot: &mut Bootstrap) -> Vec<Vec<u32>> {
    (0..boot.replicates)
        .map(|_| {
            boot.indices(rounds.len())
                .into_iter()
                .filter_map(|i| rounds.get(i).copied())
                .collect()
        })
        .collect()
}

/// A model's medians per rate and its fitted lines, and the same on every resample.
pub struct Fitted {
    point: Measured,
    replicates: Vec<Measured>,
    n: usize,
}

impl Fitted {
    /// The lines with intervals.
    pub fn estimates(&self) -> FitEstimates {
        let of = |k: usize| {
            let term = |f: fn(&Line) -> f64| {
                let reps: Vec<f64> = self.replicates.iter().map(|r| f(&r.lines[k])).collect();
                Estimate::bootstrapped(f(&self.point.lines[k]), &reps, self.n)
            };
            LineEstimate {
                standing: term(|l| l.standing),
                marginal: term(|l| l.marginal),
            }
        };
        FitEstimates {
            cpu_seconds: of(0),
            memory_mb: of(1),
            watts: of(2),
            dollars: of(3),
        }
    }
}

/// The models compared, under their report names.
pub const PERSISTENT: &str = "persistent";
/// See [`PERSISTENT`].
pub const ON_DEMAND: &str = "on-demand";

/// Which model is cheaper over a range of rates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Range {
    /// From this rate (events/s)...
    pub from: f64,
    /// ...to this one.
    pub to: f64,
    /// `persistent`, `on-demand`, or [`EVEN`].
    pub winner: String,
}

/// The verdict for one kind of cost: who is cheaper at the rate asked about, by how much,
/// and over which rates, with the break-even where the lines cross.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// `cpu`, `memory`, `energy` or `money`.
    pub kind: String,
    /// The rate the winner and saving are stated at (events/s).
    pub rate: f64,
    /// `persistent`, `on-demand`, or [`EVEN`] when the 95% interval of the difference
    /// reaches within the noise threshold of zero.
    pub winner: String,
    /// How much less the cheaper model costs at `rate`, as a fraction of the dearer one's
    /// cost, with its interval: positive when persistent is cheaper, negative when on
    /// demand is.
    pub persistent_saves: Estimate,
    /// Who is cheaper over which rates, from 0 to the highest rate measured.
    pub ranges: Vec<Range>,
    /// Where the lines cross, when they do in most resamples (at least half): the rate, with
    /// its interval over the resamples that cross.
    pub break_even: Option<Estimate>,
    /// The share of resamples whose lines cross within the measured rates.
    pub crossing_share: f64,
    /// Differences smaller than this fraction are "about even" even when the interval
    /// excludes zero ([`noise_threshold`]).
    pub noise_threshold: f64,
    /// The verdict in words, e.g. "persistent costs 38% less energy (±6%) at 100 events/s;
    /// about even (within noise) below 20 events/s, persistent above".
    pub text: String,
}

/// The relative difference `(on-demand − persistent) / the dearer`, in -1..1.
fn relative(on_demand: f64, persistent: f64) -> f64 {
    let dearer = on_demand.max(persistent);
    if dearer <= 0.0 {
        0.0
    } else {
        (on_demand - persistent) / dearer
    }
}

/// Rates the verdict is checked at: 0, 40 steps spaced evenly on a log scale from a
/// hundredth of the lowest rate measured to the highest, and `at`. Between the idle point
/// (rate 0) and the lowest phase the fitted lines interpolate, so the low rates, where
/// by-use billing and idle costs decide, are judged too.
fn grid(rates: &[f64], at: f64) -> Vec<f64> {
    let positive: Vec<f64> = rates.iter().copied().filter(|r| *r > 0.0).collect();
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min) / 100.0;
    let hi = positive.iter().copied().fold(0.0, f64::max);
    let mut g = vec![0.0];
    if lo.is_finite() && hi > 0.0 {
        let steps = 40;
        g.extend((0..=steps).map(|i| lo * (hi / lo).powf(f64::from(i) / f64::from(steps))));
    }
    if at > 0.0 {
        g.push(at);
    }
    g.sort_by(f64::total_cmp);
    g.dedup();
    g
}

/// The smallest difference a verdict names a winner for, as a fraction of the dearer
/// model's cost (criterion.rs calls it the noise threshold). Windows within one agent
/// process cannot show how much the next process differs (its memory layout, its threads'
/// timing): 5% covers that when rounds were repeated and the resampling of rounds saw some
/// of it; a single round (`--quick`) allows 25%.
pub fn noise_threshold(rounds: u32) -> f64 {
    if rounds >= 2 { 0.05 } else { 0.25 }
}

fn winner_of(d: &Estimate, threshold: f64) -> &'static str {
    if d.low > threshold {
        PERSISTENT
    } else if d.high < -threshold {
        ON_DEMAND
    } else {
        EVEN
    }
}

/// A rate for people: three significant figures at most.
pub fn rate_words(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}").trim_end_matches(".0").to_string()
    } else {
        format!("{r:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The verdict per kind of cost between the two models, at rate `at`, with the noise
/// threshold for `rounds` rounds.
pub fn verdicts(
    on_demand: &Fitted,
    persistent: &Fitted,
    rates: &[f64],
    at: f64,
    rounds: u32,
) -> Vec<Verdict> {
    let threshold = noise_threshold(rounds);
    let max_rate = rates.iter().copied().fold(0.0, f64::max);
    let g = grid(rates, at);
    let n = on_demand.n.min(persistent.n);
    KINDS
        .iter()
        .enumerate()
        .map(|(k, kind)| {
            let diff = |r: f64| {
                let point = relative(
                    on_demand.point.lines[k].at(r),
                    persistent.point.lines[k].at(r),
                );
                let reps: Vec<f64> = on_demand
                    .replicates
                    .iter()
                    .zip(&persistent.replicates)
                    .map(|(o, p)| relative(o.lines[k].at(r), p.lines[k].at(r)))
                    .collect();
                Estimate::bootstrapped(point, &reps, n)
            };
            let mut ranges: Vec<Range> = Vec::new();
            for &r in &g {
                let w = winner_of(&diff(r), threshold);
                match ranges.last_mut() {
                    Some(last) if last.winner == w => last.to = r,
                    _ => ranges.push(Range {
                        from: r,
                        to: r,
                        winner: w.into(),
                    }),
                }
            }
            let crossings: Vec<f64> = on_demand
                .replicates
                .iter()
                .zip(&persistent.replicates)
                .filter_map(|(o, p)| o.lines[k].crossing(&p.lines[k], max_rate))
                .collect();
            let crossing_share = crossings.len() as f64 / on_demand.replicates.len().max(1) as f64;
            let break_even = (crossing_share >= 0.5).then(|| {
                let point = on_demand.point.lines[k]
                    .crossing(&persistent.point.lines[k], max_rate)
                    .unwrap_or_else(|| median(&crossings));
                Estimate::bootstrapped(point, &crossings, n)
            });
            let d = diff(at);
            let winner = winner_of(&d, threshold);
            let text = words(kind, at, winner, &d, &ranges, break_even.as_ref(), max_rate);
            Verdict {
                kind: (*kind).into(),
                rate: at,
                winner: winner.into(),
                persistent_saves: d,
                ranges,
                break_even,
                crossing_share,
                noise_threshold: threshold,
                text,
            }
        })
        .collect()
}

/// The noun a kind of cost goes by in a sentence.
pub fn noun(kind: &str) -> &str {
    match kind {
        "cpu" => "CPU",
        "money" => "money",
        other => other,
    }
}

/// "persistent costs 38% less energy (±6%) at 100 events/s" or "about even (within
/// noise) in energy at 100 events/s (persistent 3% less, ±9%)".
pub fn at_rate(kind: &str, at: f64, winner: &str, d: &Estimate) -> String {
    let pct = |v: f64| v.abs() * 100.0;
    let pm = (d.high - d.low) / 2.0 * 100.0;
    let at = rate_words(at);
    if winner == EVEN {
        let leaning = if d.median >= 0.0 {
            PERSISTENT
        } else {
            ON_DEMAND
        };
        format!(
            "{EVEN} in {} at {at} events/s ({leaning} {:.0}% less, ±{pm:.0}%)",
            noun(kind),
            pct(d.median)
        )
    } else {
        format!(
            "{winner} costs {:.0}% less {} (±{pm:.0}%) at {at} events/s",
            pct(d.median),
            noun(kind)
        )
    }
}

fn words(
    kind: &str,
    at: f64,
    winner: &str,
    d: &Estimate,
    ranges: &[Range],
    break_even: Option<&Estimate>,
    max_rate: f64,
) -> String {
    let mut out = at_rate(kind, at, winner, d);
    let over = match ranges {
        [only] => format!(
            "{} at every rate up to {} events/s",
            only.winner,
            rate_words(max_rate)
        ),
        _ => {
            let last = ranges.len() - 1;
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| match i {
                    0 => format!("{} below {} events/s", r.winner, rate_words(ranges[1].from)),
                    i if i == last => format!("{} above", r.winner),
                    _ => format!(
                        "{} from {} to {}",
                        r.winner,
                        rate_words(r.from),
                        rate_words(ranges[i + 1].from)
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    out.push_str("; ");
    out.push_str(&over);
    if let Some(b) = break_even {
        out.push_str(&format!(
            "; the lines cross at {} events/s ({}-{})",
            rate_words(b.median),
            rate_words(b.low),
            rate_words(b.high)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(round: u32, rate: f64, cpu: f64, rss: f64) -> Window {
        Window {
            round,
            rate,
            events_per_second: rate,
            seconds: 1.0,
            cpu_seconds_per_hour: cpu,
            rss_bytes: rss,
            persistent: None,
        }
    }

    /// Windows of a model whose CPU per hour is `standing + marginal × rate`, with a
    /// deterministic ± `noise` spread.
    fn model(seed: u64, standing: f64, marginal: f64, noise: f64) -> Vec<Window> {
        let mut rng = fastrand::Rng::with_seed(seed);
        [0.0, 1.0, 10.0, 100.0, 1000.0]
            .iter()
            .flat_map(|&rate| {
                (0..15)
                    .map(|i| {
                        let jitter = 1.0 + noise * (rng.f64() * 2.0 - 1.0);
                        window(i / 5, rate, (standing + marginal * rate) * jitter, 20e6)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn fitted(windows: &[Window], billing: Billing) -> Fitted {
        let power = crate::cost::power_profile(Some("pi4")).unwrap_or_else(|e| panic!("{e}"));
        let prices = Prices::default();
        let pricing = Pricing {
            billing,
            call_memory_bytes: 1.1e6,
            call_seconds: 1e-4,
            power: &power,
            prices: &prices,
        };
        let priced = Priced::of(windows, &pricing);
        let mut boot = Bootstrap::default();
        let draws = draw_rounds(priced.rounds(), &mut boot);
        priced.fits(&draws, &mut boot)
    }

    /// Auto idle on demand (nothing to bill), then persistent (reserved) at every rate, with
    /// persistent's own windows: it costs what persistent costs. One line fitted through
    /// its medians ran from $0 at idle with a shallow slope and put it far under
    /// persistent (a probe's "money -39%", 2026-12-07).
    #[test]
    fn auto_is_priced_at_the_rates_measured_not_by_one_line_across_its_billings() {
        // A --quick sweep's rates: idle and two, where the idle point weighs on a line.
        let persistent: Vec<Window> = model(2, 36.0, 0.36, 0.05)
            .into_iter()
            .filter(|w| w.rate <= 100.0 && w.rate != 1.0)
            .collect();
        let auto: Vec<Window> = persistent
            .iter()
            .map(|w| Window {
                persistent: Some(w.rate > 0.0),
                ..*w
            })
            .collect();
        let p = fitted(&persistent, Billing::Reserved);
        let o = fitted(&model(1, 3.6, 0.72, 0.05), Billing::ByUse);
        let a = fitted(&auto, Billing::Reserved);
        let money = &auto_against(&a, &p, &o, 50.0)[3];
        assert!(
            money.3.median.abs() < 0.05 && money.3.low < 0.0 && money.3.high > 0.0,
            "{money:?}"
        );
        // What the old single line said, for the record: far under.
        let line = a.point.lines[3].at(50.0);
        assert!(line < 0.8 * money.1, "{line} against {money:?}");
    }

    #[test]
    fn between_measured_joins_the_points_and_extends_the_nearest_two() {
        let p = [(0.0, 0.0), (20.0, 2.0), (200.0, 20.0)];
        assert_eq!(between_measured(&p, 10.0), Some(1.0));
        assert_eq!(between_measured(&p, 20.0), Some(2.0));
        assert_eq!(between_measured(&p, 110.0), Some(11.0));
        assert_eq!(between_measured(&p, 400.0), Some(40.0));
        assert_eq!(between_measured(&p[..1], 5.0), Some(0.0));
        assert_eq!(between_measured(&[], 5.0), None);
    }

    #[test]
    fn auto_is_billed_as_the_model_it_was_in() {
        let power = crate::cost::power_profile(Some("pi4")).unwrap_or_else(|e| panic!("{e}"));
        let prices = Prices::default();
        // The model's default billing is the other one each time: the window decides.
        let pricing = |billing| Pricing {
            billing,
            call_memory_bytes: 1.1e6,
            call_seconds: 1e-4,
            power: &power,
            prices: &prices,
        };
        // Idle on demand (before its first event), then persistent at 10 events/s.
        let mut idle = window(0, 0.0, 3.6, 20e6);
        idle.persistent = Some(false);
        let mut busy = window(0, 10.0, 20.0, 20e6);
        busy.persistent = Some(true);
        let dollars = |w: Window, b| Priced::of(&[w], &pricing(b)).estimates()[0].dollars.median;
        assert_eq!(
            dollars(idle, Billing::Reserved),
            0.0,
            "on demand and idle: nothing to bill"
        );
        let reserved = Costs::of(
            Usage {
                rate: 10.0,
                cpu_seconds_per_hour: 20.0,
                rss_bytes: 20e6,
                call_memory_bytes: 1.1e6,
                call_seconds: 1e-4,
            },
            &power,
            &prices,
            Billing::Reserved,
        )
        .dollars;
        assert!(reserved > 0.0);
        assert_eq!(
            dollars(busy, Billing::ByUse),
            reserved,
            "persistent: reserved"
        );
    }

    #[test]
    fn a_real_difference_is_named_with_its_margin() {
        // Same standing cost; persistent half the marginal CPU.
        let o = fitted(&model(1, 3.6, 0.72, 0.05), Billing::ByUse);
        let p = fitted(&model(2, 3.6, 0.36, 0.05), Billing::Reserved);
        let v = verdicts(&o, &p, &[1.0, 10.0, 100.0, 1000.0], 100.0, 3);
        let cpu = &v[0];
        assert_eq!(cpu.kind, "cpu");
        assert_eq!(cpu.winner, PERSISTENT, "{cpu:?}");
        // (3.6 + 72) vs (3.6 + 36): persistent saves 47.6%.
        assert!(
            (cpu.persistent_saves.median - 0.476).abs() < 0.03,
            "{cpu:?}"
        );
        assert!(cpu.text.starts_with("persistent costs 4"), "{}", cpu.text);
        // At rate 0 they cost the same: even there, persistent above.
        assert_eq!(cpu.ranges.first().map(|r| r.winner.as_str()), Some(EVEN));
        assert_eq!(
            cpu.ranges.last().map(|r| r.winner.as_str()),
            Some(PERSISTENT)
        );
    }

    /// Two models that cost the same, measured with 30% noise, 40 times over: the verdict
    /// at the rate asked about names a winner about 5% of the time (the interval's 95%),
    /// and no two runs name opposite winners there with both sure.
    #[test]
    fn models_that_cost_the_same_are_about_even() {
        let mut named = Vec::new();
        for seed in 0..40 {
            let o = fitted(&model(2 * seed, 3.6, 0.36, 0.3), Billing::ByUse);
            let p = fitted(&model(2 * seed + 1, 3.6, 0.36, 0.3), Billing::ByUse);
            let v = verdicts(&o, &p, &[1.0, 10.0, 100.0, 1000.0], 100.0, 3);
            if v[0].winner != EVEN {
                named.push(v[0].winner.clone());
            }
        }
        assert!(
            named.len() <= 5,
            "a winner named in {} of 40: {named:?}",
            named.len()
        );
        let noisy = fitted(&model(7, 3.6, 0.367, 0.3), Billing::ByUse);
        let other = fitted(&model(8, 3.6, 0.36, 0.3), Billing::ByUse);
        let v = verdicts(&noisy, &other, &[1.0, 10.0, 100.0, 1000.0], 100.0, 3);
        assert!(v[0].text.contains(EVEN), "{}", v[0].text);
    }

    #[test]
    fn a_crossing_is_an_interval() {
        // By use: nothing standing, 0.5 per event/s; reserved: 20 standing, 0.1 marginal:
        // they cross at 50 events/s.
        let o = fitted(&model(1, 0.0001, 0.5, 0.05), Billing::ByUse);
        let p = fitted(&model(2, 20.0, 0.1, 0.05), Billing::ByUse);
        let v = verdicts(&o, &p, &[1.0, 10.0, 100.0, 1000.0], 500.0, 3);
        let b = v[0].break_even.unwrap_or_else(|| panic!("{:?}", v[0]));
        assert!(b.low <= 50.0 && 50.0 <= b.high && b.high < 70.0, "{b:?}");
        assert_eq!(v[0].winner, PERSISTENT);
        assert_eq!(
            v[0].ranges.first().map(|r| r.winner.as_str()),
            Some(ON_DEMAND)
        );
        assert!(v[0].text.contains("the lines cross at"), "{}", v[0].text);
    }

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(rate_words(1000.0), "1000");
        assert_eq!(rate_words(44.64), "44.6");
        assert_eq!(rate_words(20.0), "20");
        assert_eq!(rate_words(1.5), "1.5");
        assert_eq!(rate_words(0.0), "0");
    }
}

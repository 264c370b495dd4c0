//! `mode = "auto"`: a controller per function picks the cheaper execution model from the
//! function's own measurements, and its workers switch between the two without losing,
//! repeating or reordering an event.
//!
//! **The workers** are the persistent model's ([`super::persistent`]): one thread per
//! inbox, the router assigning events by a hash of their topic. Each reads [`Auto::model`]
//! before an event: on demand it runs the event in a fresh instance; persistent it keeps a
//! long-lived one (made, with a place in the instance pool, before the first event it
//! handles: a promotion costs one cold start). A demoted instance finishes the events
//! queued behind it, then is dropped. One thread per topic hash either way, so a switch
//! keeps per-topic order, and an event is handled once, by whichever model is in force.
//!
//! **The controller** ticks every `tick_secs`. It reads the function's event rate over a
//! stable window and a panic window, and the costs the workers measured per model: CPU per
//! event, call time, linear memory. Each model's cost is a line, `standing + rate ×
//! marginal`, in the objective's unit; the rate where they cross is the break-even. It
//! promotes when the stable rate holds above the break-even by `margin` (or at once when
//! the panic window sees `panic_factor` times it), and demotes after a stable window below
//! it; no switch comes sooner than `min_secs_in_model` after the last (Knative's stable
//! and panic windows, with hysteresis). Costs are kept per rate class and compared at
//! one (`RATE_CLASSES`). Until the function has run persistently at that rate, its
//! persistent CPU per event is estimated from the on-demand calls' execution share; the
//! same estimate comes back once persistent calls are [`FORGET_AFTER_WINDOWS`] stable
//! windows old, and every estimate starts afresh when a reload changes the module.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{AutoConfig, Objective};
use crate::messages::stats::{AutoLastSwitch, AutoReport, AutoSwitch};
use crate::metrics::CallCost;

/// The model an auto function runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A fresh instance per event.
    OnDemand,
    /// Long-lived instances.
    Persistent,
}

impl Model {
    /// The name used in logs and reports (as `mode` spells it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on-demand",
            Self::Persistent => "persistent",
        }
    }
}

/// Calls' costs since the controller's last tick, per model.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    calls: u64,
    cpu_us: f64,
    call_us: f64,
    execute_us: f64,
}

/// The last on-demand call times kept for the latency bound's p99.
const LATENCY_SAMPLES: usize = 256;

/// Stable windows after its last call for which persistent's measured CPU per event is
/// kept while on demand. A demotion because persistent measured dearer (a loaded machine
/// can make it so for a while) would otherwise hold until a restart: after this, the
/// estimate from the on-demand calls is back, and the next traffic tries persistent
/// again (a cold start and at least a stable window, every ten windows, if it is dearer
/// for good).
pub const FORGET_AFTER_WINDOWS: f64 = 10.0;

#[derive(Debug, Default)]
struct Measured {
    /// Indexed by `Model as usize`.
    sums: [Sums; 2],
    peak_memory: usize,
    /// Ring of recent on-demand call times (load, instantiation, execution), µs.
    od_calls_us: Vec<u32>,
    next: usize,
}

/// Rate classes of half a decade each: under 1 event/s, 1 to 3.2, 3.2 to 10, ... and
/// 1,000 and over. A call's CPU depends on the rate it runs at (at 1 event/s every call
/// finds cold caches and pays a wake-up; at 200/s it shares them), by a factor of two on
/// the same function: the two models are compared on calls made at about the same rate,
/// never persistent's from a trickle against on demand's from a burst.
const RATE_CLASSES: usize = 8;

fn rate_class(rate: f64) -> usize {
    if rate < 1.0 {
        0
    } else {
        ((rate.log10() * 2.0).floor() as usize + 1).min(RATE_CLASSES - 1)
    }
}

/// What the calls made at one rate class cost (EWMA over ticks with calls).
#[derive(Debug, Clone, Copy, Default)]
struct AtRate {
    od_cpu_us: Option<f64>,
    od_call_us: Option<f64>,
    od_execute_share: Option<f64>,
    p_cpu_us: Option<f64>,
}

/// The controller's running estimates.
#[derive(Debug, Clone, Copy, Default)]
struct Estimates {
    by_rate: [AtRate; RATE_CLASSES],
    memory_bytes: f64,
}

impl Estimates {
    /// The costs to compare at `rate`: those of the rate class nearest it in which on
    /// demand was measured (its own, when it was), so that both models' figures come from
    /// calls at the same rate; `None` before any on-demand call.
    fn at(&self, rate: f64) -> Option<AtRate> {
        self.nearest(rate, |a| a.od_cpu_us).copied()
    }

    /// The rate class nearest `rate` in which `f` was measured.
    fn nearest(&self, rate: f64, f: impl Fn(&AtRate) -> Option<f64>) -> Option<&AtRate> {
        let c = rate_class(rate);
        (0..RATE_CLASSES)
            .flat_map(|d| [c.checked_sub(d), Some(c + d)])
            .flatten()
            .filter_map(|i| self.by_rate.get(i))
            .find(|a| f(a).is_some())
    }
}

/// A model's cost as a function of the event rate: `standing + rate × marginal`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// At rate 0.
    pub standing: f64,
    /// Per event/s.
    pub marginal: f64,
}

impl Line {
    fn at(self, rate: f64) -> f64 {
        self.standing + rate * self.marginal
    }

    fn scaled(self, by: f64) -> Self {
        Self {
            standing: self.standing * by,
            marginal: self.marginal * by,
        }
    }

    /// The rate above which `persistent` costs less than `on_demand`; `None` if it never
    /// does.
    fn break_even(on_demand: Self, persistent: Self) -> Option<f64> {
        let (ds, dm) = (
            persistent.standing - on_demand.standing,
            on_demand.marginal - persistent.marginal,
        );
        if ds <= 0.0 && dm >= 0.0 {
            Some(0.0)
        } else if dm > 0.0 {
            Some(ds / dm)
        } else {
            None
        }
    }
}

/// Why the controller switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The stable window's rate crossed the break-even (with the margin).
    Rate,
    /// The panic window saw a burst.
    Panic,
    /// On demand, the calls' p99 broke `latency_p99_ms`.
    Latency,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Panic => "panic",
            Self::Latency => "latency",
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    estimates: Estimates,
    /// `(tick time, events received by then)`, oldest first, covering the stable window.
    arrivals: std::collections::VecDeque<(Instant, u64)>,
    since: Option<Instant>,
    last: Option<AutoReport>,
    switches: Vec<AutoSwitch>,
    last_switch: Option<(Model, Model, Reason, u64)>,
    /// The last tick that folded in persistent calls.
    persistent_measured: Option<Instant>,
    /// The module (SHA-256) the estimates are of.
    module: Option<std::sync::Arc<str>>,
}

/// One auto function's model, measurements and controller.
pub struct Auto {
    function: String,
    cfg: AutoConfig,
    /// Persistent instances when promoted (the function's `instances`).
    instances: u32,
    model: AtomicU8,
    measured: Mutex<Measured>,
    book: Mutex<Book>,
}

/// What a tick decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Switch to this model, for this reason.
    pub switch: Option<(Model, Reason)>,
    /// The stable window's rate, events/s.
    pub rate_stable: f64,
    /// The panic window's rate, events/s.
    pub rate_panic: f64,
    /// Where persistent becomes cheaper, events/s (`None`: never).
    pub break_even: Option<f64>,
    /// On demand's cost at the stable rate (the objective's unit, per hour).
    pub cost_on_demand: f64,
    /// Persistent's.
    pub cost_persistent: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.7 * o + 0.3 * new))
}

impl Auto {
    /// A function that starts on demand.
    pub fn new(function: &str, cfg: AutoConfig, instances: u32) -> Self {
        Self {
            function: function.into(),
            cfg,
            instances: instances.max(1),
            model: AtomicU8::new(Model::OnDemand as u8),
            measured: Mutex::new(Measured::default()),
            book: Mutex::new(Book::default()),
        }
    }

    /// The model the workers run next.
    pub fn model(&self) -> Model {
        if self.model.load(Ordering::Acquire) == Model::Persistent as u8 {
            Model::Persistent
        } else {
            Model::OnDemand
        }
    }

    /// A call's costs, measured by a worker in `model`.
    pub fn record(&self, model: Model, cost: &CallCost) {
        let mut m = lock(&self.measured);
        let s = &mut m.sums[model as usize];
        let call = cost.load.unwrap_or_default() + cost.instantiate + cost.execute;
        s.calls += 1;
        s.cpu_us += cost.cpu.as_secs_f64() * 1e6;
        s.call_us += call.as_secs_f64() * 1e6;
        s.execute_us += cost.execute.as_secs_f64() * 1e6;
        m.peak_memory = m.peak_memory.max(cost.peak_memory);
        if model == Model::OnDemand {
            let us = u32::try_from(call.as_micros()).unwrap_or(u32::MAX);
            if m.od_calls_us.len() < LATENCY_SAMPLES {
                m.od_calls_us.push(us);
            } else {
                let i = m.next;
                m.od_calls_us[i] = us;
            }
            m.next = (m.next + 1) % LATENCY_SAMPLES;
        }
    }

    /// The module the calls now run (its SHA-256): when a reload has changed it, what was
    /// measured of the old one is dropped, and the estimates start afresh from the new
    /// one's calls. The model in force stays until they say otherwise.
    pub fn module(&self, sha256: &std::sync::Arc<str>) {
        let mut book = lock(&self.book);
        if book.module.as_ref() == Some(sha256) {
            return;
        }
        // The first module seen is the one measured so far.
        if book.module.replace(sha256.clone()).is_none() {
            return;
        }
        book.estimates = Estimates::default();
        book.persistent_measured = None;
        *lock(&self.measured) = Measured::default();
        tracing::info!(function = %self.function, sha256 = %sha256,
            "auto: module changed; its costs are measured afresh");
    }

    /// The 99th percentile of the recent on-demand calls, ms.
    fn od_p99_ms(&self) -> Option<f64> {
        let mut v = lock(&self.measured).od_calls_us.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
        Some(f64::from(v[i]) / 1000.0)
    }

    /// The two models' cost lines from the costs at one rate class and the memory, in
    /// the objective's unit per hour; persistent's CPU per event, if measured, times
    /// `p_measured_by`.
    fn lines(&self, e: &AtRate, memory_bytes: f64, p_measured_by: f64) -> Option<(Line, Line)> {
        let od_cpu = e.od_cpu_us? / 1e6;
        let od_call = e.od_call_us? / 1e6;
        // Persistent CPU per event: measured, or on demand's without the instantiation.
        let p_cpu = e
            .p_cpu_us
            .map_or(od_cpu * e.od_execute_share.unwrap_or(1.0), |us| {
                us / 1e6 * p_measured_by
            });
        let n = f64::from(self.instances);
        let gb = memory_bytes / 1e9;
        Some(match self.cfg.objective {
            // CPU seconds per hour; energy is CPU times watts per busy core (the idle
            // board's watts are the same in both models), so the same lines.
            Objective::Cpu | Objective::Energy => (
                Line {
                    standing: 0.0,
                    marginal: 3600.0 * od_cpu,
                },
                Line {
                    standing: 0.0,
                    marginal: 3600.0 * p_cpu,
                },
            ),
            // MB held on average: on demand while handling, persistent always.
            Objective::Memory => (
                Line {
                    standing: 0.0,
                    marginal: memory_bytes / 1e6 * od_call,
                },
                Line {
                    standing: memory_bytes / 1e6 * n,
                    marginal: 0.0,
                },
            ),
            // Dollars per hour: by use against reserved.
            Objective::Money => {
                let p = &self.cfg.prices;
                (
                    Line {
                        standing: 0.0,
                        marginal: 3600.0
                            * (p.per_million_invocations / 1e6 + p.per_gb_second * gb * od_call),
                    },
                    Line {
                        standing: p.per_gb_hour * gb * n,
                        marginal: p.per_vcpu_hour * p_cpu,
                    },
                )
            }
        })
    }

    /// One tick at `now` with `received` events so far: folds the calls measured since
    /// the last tick into the estimates, decides, and switches if it should.
    pub fn tick(&self, now: Instant, received: u64) -> Decision {
        let (sums, peak) = {
            let mut m = lock(&self.measured);
            (std::mem::take(&mut m.sums), m.peak_memory)
        };
        let mut book = lock(&self.book);
        let (od, p) = (
            sums[Model::OnDemand as usize],
            sums[Model::Persistent as usize],
        );
        // The calls since the last tick ran at this rate (of calls, not of arrivals: a
        // backlog runs at the workers' pace).
        let calls_rate = (od.calls + p.calls) as f64
            / book
                .arrivals
                .back()
                .map_or(self.cfg.tick_secs, |(t, _)| {
                    now.duration_since(*t).as_secs_f64()
                })
                .max(1e-3);

        let since = *book.since.get_or_insert(now);
        let stable = Duration::from_secs_f64(self.cfg.stable_window_secs);
        let panic = Duration::from_secs_f64(self.cfg.panic_window_secs);
        book.arrivals.push_back((now, received));
        while book
            .arrivals
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= stable)
        {
            book.arrivals.pop_front();
        }
        let rate_over = |window: Duration| {
            let (t, n) = book
                .arrivals
                .iter()
                .find(|(t, _)| now.duration_since(*t) <= window)
                .or(book.arrivals.front())
                .copied()
                .unwrap_or((now, received));
            let secs = now.duration_since(t).as_secs_f64();
            if secs > 0.0 {
                received.saturating_sub(n) as f64 / secs
            } else {
                0.0
            }
        };
        let (rate_stable, rate_panic) = (rate_over(stable), rate_over(panic));

        let e = &mut book.estimates.by_rate[rate_class(calls_rate)];
        if od.calls > 0 {
            let n = od.calls as f64;
            e.od_cpu_us = ewma(e.od_cpu_us, od.cpu_us / n);
            e.od_call_us = ewma(e.od_call_us, od.call_us / n);
            if od.call_us > 0.0 {
                e.od_execute_share = ewma(e.od_execute_share, od.execute_us / od.call_us);
            }
        }
        if p.calls > 0 {
            e.p_cpu_us = ewma(e.p_cpu_us, p.cpu_us / p.calls as f64);
            book.persistent_measured = Some(now);
        }
        book.estimates.memory_bytes = peak as f64;
        if self.model() == Model::OnDemand
            && book
                .persistent_measured
                .is_some_and(|t| now.duration_since(t) >= stable.mul_f64(FORGET_AFTER_WINDOWS))
        {
            book.persistent_measured = None;
            for e in &mut book.estimates.by_rate {
                e.p_cpu_us = None;
            }
            tracing::info!(function = %self.function, stable_windows = FORGET_AFTER_WINDOWS,
                "auto: persistent's measured CPU per event expired (stable_windows after the last persistent call); estimated from the on-demand calls again");
        }
        let estimates = book.estimates;

        let m = 1.0 + self.cfg.margin;
        let lines_at = |rate: f64, p_measured_by: f64| {
            estimates
                .at(rate)
                .and_then(|a| self.lines(&a, estimates.memory_bytes, p_measured_by))
        };
        let lines = lines_at(rate_stable, 1.0);
        let break_even = lines.and_then(|(o, p)| Line::break_even(o, p));
        let (cost_on_demand, cost_persistent) =
            lines.map_or((0.0, 0.0), |(o, p)| (o.at(rate_stable), p.at(rate_stable)));
        // A promotion against persistent's measured CPU per event needs on demand dearer
        // by the margin, as a demotion needs persistent dearer by it: figures within each
        // other's noise (one call a tick at 1 event/s moves an average by a third) would
        // otherwise flap. Against the estimate from the on-demand calls themselves there is
        // no second measurement to be noisy, and no margin.
        let promote_at = |rate: f64| lines_at(rate, m).and_then(|(o, p)| Line::break_even(o, p));

        let model = self.model();
        let in_model = now.duration_since(since);
        let settled = in_model.as_secs_f64() >= self.cfg.min_secs_in_model;
        // Sorted only when a bound is set.
        let slow = self
            .cfg
            .latency_p99_ms
            .is_some_and(|bound| self.od_p99_ms().is_some_and(|p99| p99 > bound));
        // A demotion needs persistent dearer by the margin: its line discounted by it. On
        // the memory line that is a rate under the break-even divided by 1 + margin; by
        // CPU, where the break-even is 0 or none, it is calls measured dearer by the
        // margin, since two models' CPU per event can lie within each other's noise (a
        // loaded machine has measured persistent a few percent dearer for a while, and
        // demoting on that would flap).
        // Without both lines (a new module, not yet measured on demand while it runs
        // persistent) only a quiet window demotes.
        let demote_at = lines.map_or(Some(0.0), |(o, p)| Line::break_even(o, p.scaled(1.0 / m)));
        let switch = match model {
            Model::OnDemand if slow && rate_stable > 0.0 && settled => {
                Some((Model::Persistent, Reason::Latency))
            }
            Model::OnDemand
                if rate_panic > 0.0
                    && promote_at(rate_panic)
                        .is_some_and(|b| rate_panic > b * self.cfg.panic_factor) =>
            {
                Some((Model::Persistent, Reason::Panic))
            }
            Model::OnDemand
                if settled && promote_at(rate_stable).is_some_and(|b| rate_stable > b * m) =>
            {
                Some((Model::Persistent, Reason::Rate))
            }
            // A demotion needs a whole stable window below the break-even, and no latency
            // bound that on demand breaks while events come.
            Model::Persistent
                if settled
                    && in_model >= stable
                    && !(slow && rate_stable > 0.0)
                    && demote_at.is_none_or(|b| rate_stable <= b) =>
            {
                Some((Model::OnDemand, Reason::Rate))
            }
            _ => None,
        };
        let decision = Decision {
            switch,
            rate_stable,
            rate_panic,
            break_even,
            cost_on_demand,
            cost_persistent,
        };
        if let Some((to, reason)) = switch {
            self.model.store(to as u8, Ordering::Release);
            book.since = Some(now);
            let ts_ms = crate::clock::now_ms();
            book.last_switch = Some((model, to, reason, ts_ms));
            match book.switches.iter_mut().find(|s| {
                s.from == model.as_str() && s.to == to.as_str() && s.reason == reason.as_str()
            }) {
                Some(s) => s.count += 1,
                None => book.switches.push(AutoSwitch {
                    from: model.as_str().into(),
                    to: to.as_str().into(),
                    reason: reason.as_str().into(),
                    count: 1,
                }),
            }
            tracing::info!(
                function = %self.function,
                from = model.as_str(),
                to = to.as_str(),
                reason = reason.as_str(),
                objective = self.cfg.objective.as_str(),
                rate_stable = format_args!("{rate_stable:.2}"),
                rate_panic = format_args!("{rate_panic:.2}"),
                break_even = break_even.map_or("never".into(), |b| format!("{b:.3}")),
                cost_on_demand = format_args!("{cost_on_demand:.6}"),
                cost_persistent = format_args!("{cost_persistent:.6}"),
                on_demand_p99_ms = self.od_p99_ms().map(|v| format!("{v:.2}")).unwrap_or_default(),
                "auto: switched model"
            );
        }
        book.last = Some(self.report(&book, &decision));
        decision
    }

    fn report(&self, book: &Book, d: &Decision) -> AutoReport {
        // Each model's CPU per event as measured nearest the stable rate (the decision
        // compares them only where both were measured at about the same rate).
        let e = &book.estimates;
        let near = |f: fn(&AtRate) -> Option<f64>| e.nearest(d.rate_stable, f).and_then(f);
        AutoReport {
            model: self.model().as_str().into(),
            objective: self.cfg.objective.as_str().into(),
            rate_stable: d.rate_stable,
            rate_panic: d.rate_panic,
            break_even: d.break_even,
            cost_on_demand: d.cost_on_demand,
            cost_persistent: d.cost_persistent,
            on_demand_cpu_us: near(|a| a.od_cpu_us),
            persistent_cpu_us: near(|a| a.p_cpu_us),
            memory_bytes: book.estimates.memory_bytes as u64,
            switches: book.switches.clone(),
            last_switch: book
                .last_switch
                .map(|(from, to, reason, ts_ms)| AutoLastSwitch {
                    from: from.as_str().into(),
                    to: to.as_str().into(),
                    reason: reason.as_str().into(),
                    ts_ms,
                }),
        }
    }

    /// The controller's view after its last tick (for the stats and the metrics).
    pub fn snapshot(&self) -> AutoReport {
        let book = lock(&self.book);
        book.last.clone().unwrap_or_else(|| AutoReport {
            model: self.model().as_str().into(),
            objective: self.cfg.objective.as_str().into(),
            ..AutoReport::default()
        })
    }

    /// Ticks every `tick_secs`, reading the events received with `received` and the
    /// module in force with `module`, until `ended` says the function is gone (a reload
    /// removed it) or the task is dropped.
    pub async fn run(
        self: std::sync::Arc<Self>,
        received: impl Fn() -> u64 + Send,
        module: impl Fn() -> std::sync::Arc<str> + Send,
        ended: impl Fn() -> bool + Send,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(self.cfg.tick_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tick.tick().await;
            if ended() {
                return;
            }
            self.module(&module());
            self.tick(now, received());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Prices;

    fn cost(cpu_us: u64, instantiate_us: u64, execute_us: u64, memory: usize) -> CallCost {
        CallCost {
            instantiate: Duration::from_micros(instantiate_us),
            execute: Duration::from_micros(execute_us),
            cpu: Duration::from_micros(cpu_us),
            peak_memory: memory,
            ..CallCost::default()
        }
    }

    /// Drives `auto` for `secs` seconds at `rate` events/s, a tick a second, each event
    /// measured in the model in force with `each`; returns the switches seen.
    fn drive(
        auto: &Auto,
        clock: &mut (Instant, u64),
        secs: u64,
        rate: u64,
        each: impl Fn(Model) -> CallCost,
    ) -> Vec<(Model, Reason)> {
        let mut seen = Vec::new();
        for _ in 0..secs {
            for _ in 0..rate {
                auto.record(auto.model(), &each(auto.model()));
            }
            clock.0 += Duration::from_secs(1);
            clock.1 += rate;
            if let Some(s) = auto.tick(clock.0, clock.1).switch {
                seen.push(s);
            }
        }
        seen
    }

    /// On demand 100 µs of CPU a call (40 making the instance, 60 running), persistent
    /// `persistent_us`, 1 MiB of memory either way.
    fn by_cpu(persistent_us: u64) -> impl Fn(Model) -> CallCost + Copy {
        move |m| match m {
            Model::OnDemand => cost(100, 40, 60, 1 << 20),
            Model::Persistent => cost(persistent_us, 0, persistent_us, 1 << 20),
        }
    }

    fn config(objective: Objective) -> AutoConfig {
        AutoConfig {
            objective,
            tick_secs: 1.0,
            stable_window_secs: 10.0,
            panic_window_secs: 2.0,
            min_secs_in_model: 5.0,
            ..AutoConfig::default()
        }
    }

    #[test]
    fn break_even_is_where_the_lines_cross() {
        let l = |standing, marginal| Line { standing, marginal };
        assert_eq!(Line::break_even(l(0.0, 2.0), l(10.0, 1.0)), Some(10.0));
        // Persistent never dearer: cheaper from the first event.
        assert_eq!(Line::break_even(l(0.0, 2.0), l(0.0, 1.0)), Some(0.0));
        // Persistent dearer per event and standing: never.
        assert_eq!(Line::break_even(l(0.0, 1.0), l(1.0, 2.0)), None);
    }

    #[test]
    fn by_cpu_traffic_promotes_at_once_and_a_quiet_stable_window_demotes() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let mut clock = (Instant::now(), 0);
        // Instantiation is most of an on-demand call's CPU here.
        let each = |m| match m {
            Model::OnDemand => cost(100, 80, 20, 1 << 20),
            Model::Persistent => cost(20, 0, 20, 1 << 20),
        };
        assert_eq!(drive(&auto, &mut clock, 3, 0, each), vec![]);
        // Any traffic: persistent is cheaper from the first event (break-even 0), and the
        // panic window sees it at the first tick.
        let up = drive(&auto, &mut clock, 30, 5, each);
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
        let r = auto.snapshot();
        assert_eq!((r.model.as_str(), r.break_even), ("persistent", Some(0.0)));
        assert!((r.persistent_cpu_us.unwrap() - 20.0).abs() < 1e-6, "{r:?}");
        // Quiet: nothing for less than a stable window, then back on demand.
        assert_eq!(drive(&auto, &mut clock, 9, 0, each), vec![]);
        assert_eq!(
            drive(&auto, &mut clock, 2, 0, each),
            vec![(Model::OnDemand, Reason::Rate)]
        );
        let r = auto.snapshot();
        assert_eq!(r.switches.len(), 2, "{r:?}");
        assert_eq!(r.last_switch.unwrap().to, "on-demand");
    }

    /// Persistent measured a little dearer than on demand under traffic (within the
    /// margin: noise) stays persistent; clearly dearer, it is demoted though events come,
    /// and not promoted again.
    #[test]
    fn by_cpu_a_demotion_under_traffic_needs_persistent_dearer_by_the_margin() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let mut clock = (Instant::now(), 0);
        let up = drive(&auto, &mut clock, 3, 50, by_cpu(60));
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
        // 10% dearer than on demand, for six stable windows.
        assert_eq!(drive(&auto, &mut clock, 60, 50, by_cpu(110)), vec![]);
        assert_eq!(auto.snapshot().break_even, None, "dearer, by the lines");
        // 50% dearer: demoted after a stable window, and it stays on demand.
        let down = drive(&auto, &mut clock, 60, 50, by_cpu(150));
        assert_eq!(down, vec![(Model::OnDemand, Reason::Rate)]);
    }

    /// A demotion because persistent measured dearer holds while the measurement is
    /// recent; ten stable windows later persistent is estimated from the on-demand calls
    /// again and tried under the same traffic, and demoted again if it is still dearer.
    #[test]
    fn by_cpu_a_demotion_by_measurement_is_tried_again_once_the_measurement_is_old() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let mut clock = (Instant::now(), 0);
        let each = by_cpu(150);
        let up = drive(&auto, &mut clock, 3, 50, each);
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
        while auto.model() == Model::Persistent {
            assert!(drive(&auto, &mut clock, 1, 50, each).len() <= 1);
        }
        // The stable window is 10 s: nothing for nearly ten of them.
        let demoted = clock.0;
        while clock.0.duration_since(demoted) < Duration::from_secs(99) {
            let seen = drive(&auto, &mut clock, 1, 50, each);
            assert_eq!(seen, vec![], "tried again after {:?}", clock.0 - demoted);
        }
        assert!(auto.snapshot().persistent_cpu_us.is_some());
        let again = drive(&auto, &mut clock, 10, 50, each);
        assert_eq!(again, vec![(Model::Persistent, Reason::Panic)]);
        let down = drive(&auto, &mut clock, 30, 50, each);
        assert_eq!(down, vec![(Model::OnDemand, Reason::Rate)]);
    }

    /// CPU per call depends on the rate (cold caches at a trickle): persistent measured at
    /// 1 event/s is not compared with on demand measured in a 200/s burst, which demoted
    /// it, promoted it again on the next on-demand figure, and then held a 500/s burst on
    /// demand (a probe, 2026-12-07). Each is compared at the rate it was measured.
    #[test]
    fn by_cpu_costs_are_compared_at_the_rate_they_were_measured() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let mut clock = (Instant::now(), 0);
        let burst = |m| match m {
            Model::OnDemand => cost(38, 20, 18, 1 << 20),
            Model::Persistent => cost(20, 0, 20, 1 << 20),
        };
        let trickle = |m| match m {
            Model::OnDemand => cost(150, 100, 50, 1 << 20),
            Model::Persistent => cost(77, 0, 77, 1 << 20),
        };
        let up = drive(&auto, &mut clock, 10, 200, burst);
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
        assert_eq!(
            drive(&auto, &mut clock, 120, 1, trickle),
            vec![],
            "a trickle"
        );
        let r = auto.snapshot();
        assert!((r.persistent_cpu_us.unwrap() - 77.0).abs() < 1.0, "{r:?}");
        assert_eq!(drive(&auto, &mut clock, 5, 500, burst), vec![], "a burst");
        // Quiet, then a trickle on demand: persistent measured at that rate is cheaper.
        let down = drive(&auto, &mut clock, 12, 0, trickle);
        assert_eq!(down, vec![(Model::OnDemand, Reason::Rate)]);
        let up = drive(&auto, &mut clock, 10, 1, trickle);
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
    }

    /// After a demotion because persistent measured dearer, a few noisy on-demand calls
    /// that put on demand just above persistent's measured figure do not promote it (and
    /// the next stable window demote it again): a promotion against a measured figure
    /// needs the margin too.
    #[test]
    fn by_cpu_a_promotion_against_measured_persistent_needs_the_margin() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let mut clock = (Instant::now(), 0);
        let seen = drive(&auto, &mut clock, 30, 50, by_cpu(150));
        assert_eq!(seen.last(), Some(&(Model::OnDemand, Reason::Rate)));
        let noisy = |m| match m {
            Model::OnDemand => cost(200, 40, 160, 1 << 20),
            Model::Persistent => cost(150, 0, 150, 1 << 20),
        };
        assert_eq!(drive(&auto, &mut clock, 3, 50, noisy), vec![], "noise");
        assert_eq!(drive(&auto, &mut clock, 30, 50, by_cpu(150)), vec![]);
        // Clearly dearer on demand now: promoted.
        let up = drive(&auto, &mut clock, 10, 50, |_| cost(250, 40, 210, 1 << 20));
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
    }

    /// A reload that changes the module drops what was measured of the old one: a
    /// function demoted because the old persistent calls were dearer is tried again.
    #[test]
    fn a_new_module_is_measured_afresh() {
        let auto = Auto::new("f", config(Objective::Cpu), 1);
        let (v1, v2): (std::sync::Arc<str>, std::sync::Arc<str>) = ("aa".into(), "bb".into());
        auto.module(&v1);
        let mut clock = (Instant::now(), 0);
        let old = by_cpu(150);
        let seen = drive(&auto, &mut clock, 30, 50, old);
        assert_eq!(seen.last(), Some(&(Model::OnDemand, Reason::Rate)));
        assert_eq!(drive(&auto, &mut clock, 10, 50, old), vec![]);
        auto.module(&v1);
        assert_eq!(drive(&auto, &mut clock, 10, 50, old), vec![], "same module");
        auto.module(&v2);
        let r = auto.snapshot();
        assert_eq!(r.model, "on-demand", "the model in force stays");
        let new = by_cpu(60);
        let up = drive(&auto, &mut clock, 10, 50, new);
        assert_eq!(up, vec![(Model::Persistent, Reason::Panic)]);
        let r = auto.snapshot();
        assert!((r.persistent_cpu_us.unwrap() - 60.0).abs() < 1.0, "{r:?}");
        // A new module while persistent under traffic: nothing measured of it on demand,
        // so it stays persistent until a quiet window.
        auto.module(&"cc".into());
        assert_eq!(drive(&auto, &mut clock, 30, 50, new), vec![]);
        let down = drive(&auto, &mut clock, 12, 0, new);
        assert_eq!(down, vec![(Model::OnDemand, Reason::Rate)]);
    }

    #[test]
    fn by_memory_the_break_even_has_hysteresis_and_a_least_time_in_a_model() {
        // 1 MB instances, 10 ms calls: on demand holds 1 MB × rate × 10 ms, persistent
        // 1 MB always; they cross at 100 events/s.
        let auto = Auto::new("f", config(Objective::Memory), 1);
        let mut clock = (Instant::now(), 0);
        let each = |_| cost(500, 1_000, 9_000, 1_000_000);
        assert_eq!(drive(&auto, &mut clock, 20, 80, each), vec![]);
        let b = auto.snapshot().break_even.unwrap();
        assert!((b - 100.0).abs() < 0.5, "{b}");
        // 115/s: above the break-even, not by the margin (20%).
        assert_eq!(drive(&auto, &mut clock, 20, 115, each), vec![]);
        // 150/s: promoted once the stable rate passes 120, not by panic (under 200).
        let up = drive(&auto, &mut clock, 20, 150, each);
        assert_eq!(up, vec![(Model::Persistent, Reason::Rate)]);
        // 90/s: under the break-even, not by the margin (83.3): stays.
        assert_eq!(drive(&auto, &mut clock, 30, 90, each), vec![]);
        // 50/s: demoted after a stable window of it.
        let down = drive(&auto, &mut clock, 30, 50, each);
        assert_eq!(down, vec![(Model::OnDemand, Reason::Rate)]);
        // A burst: the panic window promotes at once, least time in a model or not.
        let burst = drive(&auto, &mut clock, 1, 400, each);
        assert_eq!(burst, vec![(Model::Persistent, Reason::Panic)]);
    }

    #[test]
    fn a_latency_bound_that_cold_starts_break_keeps_the_function_persistent() {
        let auto = Auto::new(
            "f",
            AutoConfig {
                latency_p99_ms: Some(5.0),
                ..config(Objective::Memory)
            },
            1,
        );
        let mut clock = (Instant::now(), 0);
        // 8 ms cold starts at 1 event/s: memory alone says on demand.
        let each = |_| cost(500, 8_000, 200, 1_000_000);
        let up = drive(&auto, &mut clock, 10, 1, each);
        assert_eq!(up, vec![(Model::Persistent, Reason::Latency)]);
        assert_eq!(drive(&auto, &mut clock, 60, 1, each), vec![]);
    }

    #[test]
    fn by_money_a_persistent_instance_pays_for_its_memory_by_the_hour() {
        let auto = Auto::new("f", config(Objective::Money), 1);
        let mut clock = (Instant::now(), 0);
        // Persistent CPU per event as estimated from on demand's execution share (half).
        drive(&auto, &mut clock, 3, 1, |m| match m {
            Model::OnDemand => cost(100, 50, 50, 64_000_000),
            Model::Persistent => cost(50, 0, 50, 64_000_000),
        });
        let p = Prices::default();
        let r = auto.snapshot();
        // By use: per invocation and GB-seconds; reserved: GB-hours (and vCPU-hours).
        let gb = 0.064;
        let by_use = 3600.0 * (p.per_million_invocations / 1e6 + p.per_gb_second * gb * 100e-6);
        let reserved = p.per_gb_hour * gb;
        let cpu = p.per_vcpu_hour * 100e-6 * (50.0 / 100.0);
        let b = reserved / (by_use - cpu);
        assert!(
            (r.break_even.unwrap() - b).abs() < 1e-9 * b.max(1.0),
            "{r:?} vs {b}"
        );
    }
}

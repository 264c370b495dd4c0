//! The trade-offs the serverless-vs-containers literature names, each filled in with this
//! run's measured numbers for one function: cold start, statelessness, resource limits,
//! resource efficiency and cost predictability. docs/compare.md explains how to read them.

use serde::{Deserialize, Serialize};

use super::{Model, ModelRun};

/// One trade-off and what this run measured for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TradeOff {
    /// `cold start`, `statelessness`, `resource limits`, `resource efficiency` or `cost
    /// predictability`.
    pub name: String,
    /// What was measured, in one sentence.
    pub finding: String,
}

/// A median in µs, in milliseconds.
fn ms(us: crate::stats::Estimate) -> String {
    format!("{:.2} ms", us.median / 1000.0)
}

/// The trade-offs for one function, from its model runs (the ones that did not fail).
pub fn of(models: &[ModelRun], stateful: bool) -> Vec<TradeOff> {
    let find = |m: Model| m.run_in(models);
    let (Some(p), Some(o)) = (find(Model::Persistent), find(Model::OnDemand)) else {
        return Vec::new();
    };
    let z = find(Model::ScaleToZero);
    let mut out = Vec::new();
    let mut say = |name: &str, finding: String| {
        out.push(TradeOff {
            name: name.into(),
            finding,
        });
    };
    let zero = z.map_or(String::new(), |z| {
        format!(
            "; scaled to zero, the first event after {} idle loads the module again first: \
             {} ({} full cold start(s) in the run)",
            "keep_warm_secs",
            ms(z.agent_full_cold_start_load_p50_us),
            z.agent_full_cold_starts
        )
    });
    say(
        "cold start",
        format!(
            "on-demand instantiates per event: {} (p50) before its {} call; persistent pays \
             that once, at start-up{zero}",
            ms(o.agent_instantiate_p50_us),
            ms(o.agent_execute_p50_us)
        ),
    );
    let cpu = |r: &ModelRun| r.fit.cpu_seconds.marginal.median / 3600.0 * 1e6;
    say(
        "statelessness",
        if stateful {
            format!(
                "both models keep state in the store; an on-demand instance starts empty each \
                 event and must read it, a persistent one may cache it in memory: {:.0} vs \
                 {:.0} us of CPU per event, commit p50 {} vs {}, {:.0} KB on disk",
                cpu(o),
                cpu(p),
                ms(o.agent_commit_p50_us),
                ms(p.agent_commit_p50_us),
                o.state_disk_bytes.median.max(p.state_disk_bytes.median) / 1024.0
            )
        } else {
            format!(
                "the function keeps no state, so statelessness costs it nothing here; its CPU \
                 per event is {:.0} us on demand and {:.0} us persistent (the difference is \
                 the instance per event)",
                cpu(o),
                cpu(p)
            )
        },
    );
    say(
        "resource limits",
        format!(
            "each instance reached {:.1} MB of linear memory: persistent holds it all the time \
             (per instance), on demand only during a call ({} p50 each)",
            p.agent_instance_memory_bytes
                .median
                .max(o.agent_instance_memory_bytes.median)
                / 1e6,
            ms(crate::stats::Estimate::exact(
                o.agent_instantiate_p50_us.median + o.agent_execute_p50_us.median
            ))
        ),
    );
    let idle = |r: &ModelRun| format!("{:.1} MB", r.idle_rss_bytes.median / 1e6);
    say(
        "resource efficiency",
        format!(
            "idle, the agent process holds {} persistent, {} on demand{}; over the run it held \
             {:.0} and {:.0} MB-s above its idle RSS",
            idle(p),
            idle(o),
            z.map_or(String::new(), |z| format!(", {} scaled to zero", idle(z))),
            p.memory_mb_seconds_above_idle.median,
            o.memory_mb_seconds_above_idle.median
        ),
    );
    let spread = |r: &ModelRun| {
        let per_event: Vec<f64> = r
            .phases
            .iter()
            .filter(|ph| ph.sent > 0)
            .map(|ph| ph.cpu_per_event_us.median)
            .collect();
        let (lo, hi) = per_event
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let p99: Vec<f64> = r
            .phases
            .iter()
            .map(|ph| ph.end_to_end_us.p99.median)
            .collect();
        (
            if lo > 0.0 && lo < f64::MAX {
                hi / lo
            } else {
                1.0
            },
            p99.iter().copied().fold(0.0, f64::max),
        )
    };
    let (sp, lp) = spread(p);
    let (so, lo) = spread(o);
    say(
        "cost predictability",
        format!(
            "across the phases, CPU per event varied {sp:.1}x persistent and {so:.1}x on \
             demand, and the worst phase's end-to-end p99 was {} and {}; billed by use, money \
             follows the events exactly, reserved it is the same whether they come or not",
            ms(crate::stats::Estimate::exact(lp)),
            ms(crate::stats::Estimate::exact(lo))
        ),
    );
    out
}

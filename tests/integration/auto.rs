//! `mode = "auto"`: the controller switches a function between the models on steps of its
//! traffic, and every event is handled once, in order per topic, across the switches.

use std::collections::BTreeMap;
use std::time::Duration;

use super::harness::*;

/// Steps up (a burst on four topics) and down (quiet), three times, through the `counter`
/// example (state-writing, with a cache in a persistent instance's memory, so that a
/// switch that lost, repeated or reordered an event, or kept a stale instance, shows as a
/// wrong count). By a price list that bills invocations and reserves for free, persistent
/// is cheaper at any rate: each burst promotes it (the panic window), each quiet stable
/// window demotes it. (Not by CPU: for this guest the two models' CPU per event are within
/// a fifth of each other, and a loaded CI machine has measured them the other way round
/// for a whole burst, which rightly did not promote it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_switches_on_steps_up_and_down_and_every_event_counts_once_in_order() {
    let id = unique("auto");
    let config = embedded(&id)
        + &format!(
            "\n[[function]]\nname = \"c\"\nmodule = \"{}\"\nmode = \"auto\"\ninstances = 2\n\
             topics = [\"in/+\"]\n\
             auto = {{ objective = \"money\", tick_secs = 0.05, stable_window_secs = 0.6, \
             panic_window_secs = 0.1, min_secs_in_model = 0.2, prices = {{ \
             per_million_invocations = 1.0, per_gb_second = 0.0, per_vcpu_hour = 0.0, \
             per_gb_hour = 0.0 }} }}\n\
             [function.config]\nout_topic = \"out/c\"\n",
            guest("counter")
        );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/c"]).await;
    let model = |agent: &Agent| agent.snapshot("c").auto.expect("an auto report").model;
    assert_eq!(
        model(&agent),
        "on-demand",
        "an auto function starts on demand"
    );
    const STEPS: usize = 3;
    const PER_TOPIC: usize = 100;
    let mut counts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for step in 0..STEPS {
        for i in 0..PER_TOPIC {
            for t in 0..4 {
                c.publish(&format!("in/{t}"), format!("{step}-{i}")).await;
            }
        }
        for _ in 0..4 * PER_TOPIC {
            let j = c.recv().await.json();
            let topic = j["topic"].as_str().expect("topic").to_string();
            counts
                .entry(topic)
                .or_default()
                .push(j["count"].as_i64().expect("count"));
        }
        let promoted = |agent: &Agent| -> u64 {
            let a = agent.snapshot("c").auto.expect("an auto report");
            a.switches
                .iter()
                .filter(|s| s.to == "persistent")
                .map(|s| s.count)
                .sum()
        };
        // At least one per burst: on a loaded machine (CI runs tests side by side) a
        // burst's publishing can stall for a stable window, which demotes it mid-burst
        // and promotes it again (seen once: 4 promotions in 3 bursts). On an idle one a
        // burst can be handled within one tick, and the promotion comes at the next: it
        // was asserted at once and failed three runs in four run alone (2026-12-07). The
        // counts below are what must hold whatever the switches.
        eventually("a promotion for every burst", || {
            promoted(&agent) > step as u64
        })
        .await;
        eventually("a demotion after a quiet stable window", || {
            model(&agent) == "on-demand"
        })
        .await;
    }
    // Each topic's counts, in the order their outputs came: 1, 2, ... with nothing
    // missing, repeated or out of order.
    let want: Vec<i64> = (1..=(STEPS * PER_TOPIC) as i64).collect();
    for t in 0..4 {
        let got = counts.get(&format!("in/{t}")).cloned().unwrap_or_default();
        assert!(got == want, "in/{t}: counts {got:?}");
    }
    let s = agent.snapshot("c");
    assert_eq!(s.succeeded, (4 * STEPS * PER_TOPIC) as u64, "{s:?}");
    let a = s.auto.expect("an auto report");
    let by = |to: &str| -> Vec<&str> {
        a.switches
            .iter()
            .filter(|s| s.to == to)
            .map(|s| s.reason.as_str())
            .collect()
    };
    assert_eq!(by("persistent"), ["panic"], "{a:?}");
    assert_eq!(by("on-demand"), ["rate"], "{a:?}");
    assert_eq!(
        (a.objective.as_str(), a.break_even),
        ("money", Some(0.0)),
        "{a:?}"
    );
    assert!(
        a.persistent_cpu_us.is_some(),
        "persistent calls measured: {a:?}"
    );
    // Nothing arrives after the last output.
    assert!(c.next(Duration::from_millis(200)).await.is_none());
    agent.stop().await;
}

/// An auto function whose persistent instance keeps failing: each failure sends its events
/// on demand, and a new instance is made at the next event only while the restart policy
/// allows (`max_restarts` within the window): after that the function runs on demand, and
/// no event is lost for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_replaces_a_failed_instance_only_as_the_restart_policy_allows() {
    let id = unique("autorestart");
    let config = embedded(&id)
        + &format!(
            "\n[[function]]\nname = \"m\"\nmodule = \"{}\"\nmode = \"auto\"\ninstances = 1\n\
             max_restarts = 2\ntopics = [\"in\"]\n\
             auto = {{ objective = \"cpu\", tick_secs = 0.05, stable_window_secs = 60, \
             panic_window_secs = 0.1, min_secs_in_model = 0.2 }}\n\
             [function.config]\nout_topic = \"out\"\n",
            guest("misbehave")
        );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out"]).await;
    let model = |agent: &Agent| agent.snapshot("m").auto.expect("an auto report").model;
    let mut sent = 0;
    while model(&agent) != "persistent" {
        for _ in 0..50 {
            c.publish("in", "ok").await;
            sent += 1;
        }
        for _ in 0..50 {
            assert_eq!(c.recv().await.text(), "ok");
        }
        assert!(sent < 5000, "never promoted");
    }
    for _ in 0..5 {
        c.publish("in", "panic").await;
        for _ in 0..20 {
            c.publish("in", "ok").await;
        }
        for _ in 0..20 {
            assert_eq!(
                c.recv().await.text(),
                "ok",
                "every ok answered, on demand or not"
            );
        }
    }
    let s = agent.snapshot("m");
    assert_eq!(
        model(&agent),
        "persistent",
        "no demotion in this test: {s:?}"
    );
    assert_eq!(s.restarts, 2, "two restarts, then on demand: {s:?}");
    let traps: u64 = s.failed.iter().map(|(_, n)| n).sum();
    assert_eq!(traps, 5, "each panic failed once: {s:?}");
    agent.stop().await;
}

/// A demotion while events are still queued: a burst of slow events (25 ms each) promotes
/// the function, the burst ends, and a stable window later the controller demotes it with
/// most of the burst still in the queue. The instance finishes the events queued behind
/// it and is dropped; events after that run in whichever model is in force: every event
/// once, in order, nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_with_events_queued_finishes_them_once_and_in_order() {
    let id = unique("auto-demote");
    let config = embedded(&id)
        + &format!(
            "\n[[function]]\nname = \"s\"\nmodule = \"{}\"\nmode = \"auto\"\ninstances = 1\n\
             topics = [\"in/s\"]\n\
             auto = {{ objective = \"cpu\", tick_secs = 0.05, stable_window_secs = 0.3, \
             panic_window_secs = 0.1, min_secs_in_model = 0.1 }}\n\
             [function.config]\nout_topic = \"out/s\"\n",
            guest("misbehave")
        );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/s"]).await;
    const BURST: usize = 60; // 1.5 s of work, published in a few ms
    for i in 0..BURST {
        c.publish("in/s", format!("slow-echo:25:{i}")).await;
    }
    let switched = |agent: &Agent, to: &str| {
        agent
            .snapshot("s")
            .auto
            .is_some_and(|a| a.switches.iter().any(|s| s.to == to && s.count > 0))
    };
    eventually("a promotion by the burst", || {
        switched(&agent, "persistent")
    })
    .await;
    eventually("a demotion once the burst has ended", || {
        switched(&agent, "on-demand")
    })
    .await;
    let handled = agent.snapshot("s").succeeded;
    eprintln!("demoted after {handled} of {BURST} events");
    assert!(
        handled < BURST as u64 - 10,
        "the demotion came after {handled} of {BURST} events: none were queued behind it"
    );
    // Then a few more, while the queue is still being finished.
    for i in BURST..BURST + 5 {
        c.publish("in/s", format!("slow-echo:1:{i}")).await;
    }
    let got: Vec<String> = payloads(&mut c, BURST + 5).await;
    let want: Vec<String> = (0..BURST + 5).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every event once, in the order it came");
    assert!(
        c.next(Duration::from_millis(200)).await.is_none(),
        "nothing after the last"
    );
    let s = agent.snapshot("s");
    assert_eq!(s.succeeded, (BURST + 5) as u64, "{s:?}");
    agent.stop().await;
}

async fn payloads(c: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(String::from_utf8_lossy(&c.recv().await.payload).into_owned());
    }
    got
}

//! The two execution models side by side, the state store, and delivery across crashes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{Agent, Client, Mosquitto, Process, edge_agent, embedded, guest, unique};

fn function(name: &str, module: &str, mode: &str, topic: &str, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\nmodule = \"{}\"\nmode = \"{mode}\"\ntopics = [\"{topic}\"]\n{extra}\n\
         [function.config]\nout_topic = \"out/{name}\"\n",
        guest(module)
    )
}

async fn texts(c: &mut Client, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(c.recv().await.text());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_instance_keeps_memory_until_a_trap_and_on_demand_never_does() {
    let id = unique("s");
    let config = embedded(&id)
        + &function("warm", "counter-global", "persistent", "warm/in", "")
        + &function("cold", "counter-global", "on-demand", "cold/in", "");
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut warm = Client::connect(port, &["out/warm", &dlq]).await;
    let mut cold = Client::connect(port, &["out/cold"]).await;
    for _ in 0..3 {
        warm.publish("warm/in", "x").await;
        cold.publish("cold/in", "x").await;
    }
    assert_eq!(
        texts(&mut warm, 3).await,
        ["1", "2", "3"],
        "persistent instance keeps its memory"
    );
    assert_eq!(
        texts(&mut cold, 3).await,
        ["1", "1", "1"],
        "on-demand starts fresh every time"
    );

    warm.publish("warm/in", "panic").await;
    let m = warm.recv().await;
    assert_eq!(m.json()["kind"], "trap", "{}", m.text());
    warm.publish("warm/in", "x").await;
    assert_eq!(
        warm.recv().await.text(),
        "1",
        "a restarted instance starts from scratch"
    );
    assert_eq!(agent.snapshot("warm").restarts, 1, "restart counted");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_stops_the_instance() {
    let id = unique("s");
    let config = embedded(&id)
        + &function(
            "fragile",
            "counter-global",
            "persistent",
            "f/in",
            "restart = \"never\"",
        );
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(port, &["out/#", &dlq]).await;
    c.publish("f/in", "panic").await;
    assert_eq!(c.recv().await.json()["kind"], "trap");
    c.publish("f/in", "x").await;
    let j = c.recv().await.json();
    assert_eq!(j["kind"], "function-stopped", "{j}");
    assert_eq!(agent.snapshot("fragile").stopped_instances, 1, "told");

    // A reload (a fix, or here an edit of its config) starts it again.
    let mut reports = Client::connect(port, &[&format!("edge-agent/{id}/reload")]).await;
    let edited = config.replace("[function.config]\n", "[function.config]\nfixed = \"1\"\n");
    std::fs::write(agent.dir().join("agent.toml"), edited).expect("edit the config");
    let report = reports.recv().await.text();
    assert!(report.contains("\"ok\":true"), "{report}");
    c.publish("f/in", "x").await;
    let m = c.recv().await;
    assert_eq!(m.topic, "out/fragile", "{}", m.text());
    assert_eq!(agent.snapshot("fragile").stopped_instances, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_is_identical_in_both_models_and_survives_a_restart() {
    let id = unique("s");
    let config = embedded(&id)
        + &function("od", "counter", "on-demand", "od/+", "max_concurrency = 1")
        + &function("p", "counter", "persistent", "p/+", "");
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let mut c = Client::connect(port, &["out/#"]).await;
    let counts = |msgs: Vec<crate::harness::Msg>, topic: &str| -> Vec<i64> {
        msgs.iter()
            .map(|m| m.json())
            .filter(|j| j["topic"] == topic)
            .map(|j| j["count"].as_i64().unwrap_or(-1))
            .collect()
    };
    for _ in 0..5 {
        c.publish("od/a", "x").await;
        c.publish("p/a", "x").await;
    }
    c.publish("p/b", "x").await;
    let mut got = Vec::new();
    for _ in 0..11 {
        got.push(c.recv().await);
    }
    assert_eq!(counts(got.clone(), "od/a"), [1, 2, 3, 4, 5]);
    assert_eq!(counts(got.clone(), "p/a"), [1, 2, 3, 4, 5]);
    assert_eq!(counts(got, "p/b"), [1]);

    // Counts live in the state store: a restart (cold caches) continues them. The new
    // agent has its own embedded broker: connect to it.
    let agent = agent.restart(&config).await;
    drop(c);
    let mut c = Client::connect(agent.port, &["out/#"]).await;
    c.publish("od/a", "x").await;
    c.publish("p/a", "x").await;
    let got = vec![c.recv().await, c.recv().await];
    assert_eq!(counts(got.clone(), "od/a"), [6]);
    assert_eq!(counts(got, "p/a"), [6]);

    // `edge-agent state` on the stopped agent reads the counts and resets one, which the
    // next start takes up.
    let dir = agent.stop().await;
    let state = |args: &[&str]| {
        let args = [&["state", "--config", "agent.toml"], args].concat();
        edge_agent(dir.path(), &[], &args)
    };
    assert_eq!(state(&["list", "p"]), "count/p/a\t6\ncount/p/b\t1\n");
    assert_eq!(state(&["get", "od", "count/od/a"]), "6");
    state(&["delete", "p", "count/p/a"]);
    let agent = Agent::start_in(dir, &config).await;
    let mut c = Client::connect(agent.port, &["out/#"]).await;
    c.publish("p/a", "x").await;
    c.publish("p/b", "x").await;
    let got = vec![c.recv().await, c.recv().await];
    assert_eq!(counts(got.clone(), "p/a"), [1]);
    assert_eq!(counts(got, "p/b"), [2]);
    agent.stop().await;
}

/// A state-writing call whose outputs are over 4 KiB (`counter` puts the event's topic in
/// its output): its receipt keeps them until the message is finished, so that a resend
/// after a crash publishes them again, then lets them go, and the store keeps only the
/// receipt's 12 bytes of identity for the id's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_messages_receipt_lets_go_of_large_outputs() {
    // A topic level of 240 bytes (the count's key must stay under 256), 20 times over in
    // the output's topic: 4,820 bytes.
    let config = embedded(&unique("s"))
        + &format!(
            "[[function]]\nname = \"p\"\nmodule = \"{}\"\nmode = \"persistent\"\n\
             topics = [\"p/+\"]\n[function.config]\nout_topic = \"out{}\"\n",
            guest("counter"),
            "/{1}".repeat(20)
        );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/#"]).await;
    c.publish(&format!("p/{}", "x".repeat(240)), "x").await;
    assert_eq!(c.recv().await.json()["count"], 1);
    let (db, _dir) = agent.stop_and_open_store().await;
    let tree = db.open_tree("function/p").expect("p's tree");
    let receipts: Vec<usize> = tree
        .scan_prefix(b"\0receipt/")
        .map(|kv| kv.expect("a receipt").1.len())
        .collect();
    assert_eq!(receipts, [12], "one receipt, without its outputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_per_function_and_failed_calls_write_nothing() {
    let id = unique("s");
    let config = embedded(&id)
        + &function("a", "misbehave", "on-demand", "a/in", "")
        + &function("b", "misbehave", "persistent", "b/in", "");
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(port, &["out/#", &dlq]).await;
    c.publish("a/in", "state-incr:k").await;
    assert_eq!(c.recv().await.text(), "1");
    c.publish("b/in", "state-incr:k").await;
    assert_eq!(c.recv().await.text(), "1", "b cannot see a's key");
    for (topic, payload, kind) in [
        ("a/in", "state-incr-then-err:k", "guest-error"),
        ("a/in", "state-incr-then-panic:k", "trap"),
        ("b/in", "state-incr-then-err:k", "guest-error"),
        ("b/in", "state-incr-then-panic:k", "trap"),
    ] {
        c.publish(topic, payload).await;
        let m = c.recv().await;
        assert_eq!(m.topic, dlq);
        assert_eq!(m.json()["kind"], kind, "{payload}");
    }
    c.publish("a/in", "state-incr:k").await;
    assert_eq!(
        c.recv().await.text(),
        "2",
        "failed calls' writes were discarded"
    );
    c.publish("b/in", "state-incr:k").await;
    assert_eq!(c.recv().await.text(), "2");

    // Limits are errors the guest sees, not crashes.
    c.publish("a/in", "state-set:100000").await;
    let j = c.recv().await.json();
    assert_eq!(j["kind"], "state-quota");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or("")
            .contains("over the limit"),
        "{j}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_average_agrees_across_models() {
    let id = unique("s");
    let window = "window = \"3\"\ncheckpoint_every = \"2\"\n";
    let config = embedded(&id)
        + &function(
            "avg-od",
            "rolling-average",
            "on-demand",
            "avg-od/+",
            "max_concurrency = 1",
        )
        + window
        + &function("avg-p", "rolling-average", "persistent", "avg-p/+", "")
        + window;
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let mut c = Client::connect(port, &["out/#"]).await;
    for v in [1, 2, 3, 4, 5] {
        c.publish("avg-od/s", format!("{{\"value\": {v}}}")).await;
        c.publish("avg-p/s", format!("{{\"value\": {v}}}")).await;
    }
    let (mut od, mut p) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let m = c.recv().await;
        let avg = m.json()["average"].as_f64().unwrap_or(f64::NAN);
        if m.topic == "out/avg-od" {
            od.push(avg);
        } else {
            p.push(avg);
        }
    }
    assert_eq!(od, [1.0, 1.5, 2.0, 3.0, 4.0]);
    assert_eq!(p, od);
}

/// kill -9 in the middle of a QoS 1 stream, restart: every event is handled at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_qos1_event() {
    let broker = Mosquitto::start();
    let config = format!(
        "[agent]\nid = \"crash\"\n[broker]\nurl = \"{}\"\nclean_session = false\n{}",
        broker.url(),
        function("echo", "misbehave", "persistent", "crash/in", "")
    );
    let mut c = Client::connect(broker.port, &["out/echo"]).await;
    let agent = Process::start(&config, broker.port, "crash", &[]).await;
    const N: u64 = 400;
    let url = broker.url();
    let publisher = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::harness::agent_bin())
            // 2 ms of work per event: a backlog of received, unacknowledged events builds
            // up, and the kill catches some of them in flight.
            .args([
                "publish",
                "--broker",
                &url,
                "--topic",
                "crash/in",
                "--payload",
                "slow-echo:2:{seq}",
            ])
            .args(["--count", &N.to_string(), "--rate", "400", "--qos", "1"])
            .output()
            .expect("publish")
    });
    // Mid-stream: the first 50 outputs are out, the publisher goes on.
    let mut seen = BTreeSet::new();
    while seen.len() < 50 {
        seen.insert(c.recv().await.text().parse::<u64>().unwrap_or(u64::MAX));
    }
    let agent = agent.kill_and_restart(&config, &[]).await;
    let out = publisher.await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < N as usize && tokio::time::Instant::now() < deadline {
        for m in c.drain(Duration::from_millis(500)).await {
            seen.insert(m.text().parse::<u64>().unwrap_or(u64::MAX));
        }
    }
    let missing: Vec<u64> = (0..N).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lost {} events: {:?}\nagent log after restart:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        agent.log_text()
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// The broker goes away while functions are still publishing; when it is back every
/// output arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_survive_a_broker_outage_in_order() {
    let broker = Mosquitto::start_persistent();
    let port = broker.port;
    let config = format!(
        "[agent]\nid = \"outage\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_max_ms = 500\n{}",
        function(
            "slow",
            "misbehave",
            "persistent",
            "slow/in",
            "timeout_ms = 5000"
        )
    );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect_persistent(port, "outage-reader", &["out/slow"]).await;
    // Ten events of 200 ms each: two seconds of work, with the broker down in the middle.
    for i in 0..10 {
        c.publish("slow/in", format!("slow-echo:200:{i}")).await;
    }
    // The first output is out: the broker goes down in the middle of the work.
    let early = c.recv().await;
    let dir = broker.stop();
    // Lets the rest of the work (about 1.8 s) run with the broker down: the outage is the
    // point, not a wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _broker = Mosquitto::restart_persistent(port, dir);
    // At-least-once: events whose acks were lost with the connection run again, so an
    // output may come twice; the first arrivals are complete and in order.
    let mut first = vec![early.text()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while first.len() < 10 && tokio::time::Instant::now() < deadline {
        for m in c.drain(Duration::from_millis(300)).await {
            let t = m.text();
            if !first.contains(&t) {
                first.push(t);
            }
        }
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(first, expected);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_models_report_their_costs() {
    let id = unique("s");
    let config = embedded(&id).replace("[broker]", "stats_interval_secs = 1\n[broker]")
        + &function("od", "echo", "on-demand", "od/in", "")
        + &function("p", "echo", "persistent", "p/in", "");
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let mut c = Client::connect(port, &["out/#"]).await;
    for _ in 0..5 {
        c.publish("od/in", "x").await;
        c.publish("p/in", "x").await;
    }
    texts(&mut c, 10).await;
    let mut stats = Client::connect(port, &[&format!("edge-agent/{id}/stats")]).await;
    // The retained snapshot may predate the events: wait for one that counts them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = stats.recv().await.json();
        let find = |name: &str| {
            j["functions"]
                .as_array()
                .and_then(|a| a.iter().find(|f| f["function"] == name))
                .cloned()
        };
        let (od, p) = (
            find("od").unwrap_or_default(),
            find("p").unwrap_or_default(),
        );
        if od["succeeded"] == 5 && p["succeeded"] == 5 {
            assert_eq!(od["mode"], "on-demand");
            assert_eq!(p["mode"], "persistent");
            assert_eq!(od["end_to_end_us"]["count"], 5);
            assert_eq!(
                od["instantiate_us"]["count"], 5,
                "every on-demand event is a cold start"
            );
            assert_eq!(
                p["instantiate_us"]["count"], 0,
                "a warm instance pays no instantiation"
            );
            assert!(od["cpu_total_us"].as_u64().unwrap_or(0) > 0);
            assert!(p["peak_memory_bytes"].as_u64().unwrap_or(0) > 0);
            assert_eq!(
                (od["queue_depth"].as_u64(), p["queue_depth"].as_u64()),
                (Some(0), Some(0))
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never counted the events: {j}"
        );
    }
}

/// Waiting for a flush must not hold up the next event: a persistent instance that writes
/// state handles many events per flush interval, not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_writes_do_not_serialise_on_the_flush_interval() {
    let id = unique("s");
    let config = embedded(&id)
        .replace("[broker]", "[state]\nmin_flush_interval_ms = 500\n[broker]")
        + &function("p", "counter", "persistent", "p/+", "");
    let agent = Agent::start(&config).await;
    let port = agent.port;
    let mut c = Client::connect(port, &["out/#"]).await;
    let start = std::time::Instant::now();
    for _ in 0..40 {
        c.publish("p/x", "x").await;
    }
    let counts: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(c.recv().await.json()["count"].as_i64().unwrap_or(-1));
        }
        v
    };
    assert_eq!(counts, (1..=40).collect::<Vec<i64>>());
    // One event per flush would take 20 s.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// A call's wait for the state, while calls ahead of it hold it, is not its own time: four
/// calls that each hold the state for 150 ms, with a timeout of 400 ms, all count. Until
/// 2026-12-08 the wait counted, and the third and fourth were `timeout` dead letters, their
/// events acknowledged and never counted (a probe lost 43 of 6,000 so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_the_state_is_not_the_calls_timeout() {
    let config = embedded(&unique("s"))
        + &function(
            "od",
            "misbehave",
            "on-demand",
            "od/+",
            "timeout_ms = 400\nmax_concurrency = 4",
        );
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/#", "edge-agent/+/dead-letter"]).await;
    for i in 0..4 {
        c.publish(&format!("od/{i}"), "state-incr-hold:k:150").await;
    }
    let mut got = texts(&mut c, 4).await;
    got.sort_unstable();
    assert_eq!(got, ["1", "2", "3", "4"], "four counts, no dead letter");
    agent.stop().await;
}

/// Concurrent calls of one function behave as if they ran one at a time: every increment
/// of one key returns a distinct value, on-demand with the default concurrency and
/// persistent with several instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_no_update() {
    let broker = Mosquitto::start();
    let config = format!(
        "[agent]\nid = \"{}\"\n[broker]\nurl = \"{}\"\n",
        unique("s"),
        broker.url()
    ) + &function("od", "misbehave", "on-demand", "od/+", "")
        + &function("p", "misbehave", "persistent", "p/+", "instances = 4");
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(broker.port, &["out/#"]).await;
    const N: i64 = 200;
    for i in 0..N {
        c.publish(&format!("od/{}", i % 8), "state-incr:k").await;
        c.publish(&format!("p/{}", i % 8), "state-incr:k").await;
    }
    let (mut od, mut p) = (Vec::new(), Vec::new());
    for _ in 0..2 * N {
        let m = c.recv().await;
        let n = m.text().parse::<i64>().unwrap_or(-1);
        if m.topic == "out/od" {
            od.push(n)
        } else {
            p.push(n)
        }
    }
    od.sort_unstable();
    p.sort_unstable();
    let all: Vec<i64> = (1..=N).collect();
    assert_eq!(od, all, "on-demand: lost or repeated increments");
    assert_eq!(
        p, all,
        "persistent, 4 instances: lost or repeated increments"
    );
    agent.stop().await;
}

/// A burst of QoS 1 events to state-writing functions on the embedded broker (the demo's
/// default) is handled in full: acknowledgements held back for the flush must not stall
/// the broker's in-flight window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_writing_burst_on_the_embedded_broker_completes() {
    let id = unique("s");
    let config = embedded(&id)
        + &function("od", "counter", "on-demand", "od/+", "")
        + &function("p", "counter", "persistent", "p/+", "");
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/#"]).await;
    const N: i64 = 500;
    for _ in 0..N {
        c.publish("od/x", "x").await;
        c.publish("p/x", "x").await;
    }
    let (mut od, mut p) = (0, 0);
    while od < N || p < N {
        let j = c.recv().await.json();
        let count = j["count"].as_i64().unwrap_or(-1);
        match j["topic"].as_str() {
            Some("od/x") => od = od.max(count),
            _ => p = p.max(count),
        }
    }
    assert_eq!((od, p), (N, N));
    agent.stop().await;
}

/// A retained message is one event. The agent subscribes again at every connect, and over
/// MQTT 3.1.1 the broker then sends a filter's retained messages again, even to a session
/// that has the filter: until 2026-12-05 a counter counted a retained reading once more at
/// every restart of the agent and every reconnect. A filter new to the session still gets
/// its retained messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_is_one_event_across_restarts_and_reconnects() {
    let broker = Mosquitto::start_persistent();
    let port = broker.port;
    let base = format!(
        "[agent]\nid = \"{}\"\n[broker]\nurl = \"{}\"\nreconnect_max_ms = 200\n",
        unique("s"),
        broker.url()
    );
    let config = |topics: &str| base.clone() + &function("c", "counter", "persistent", topics, "");
    let publisher = Client::connect(port, &[]).await;
    publisher.publish_retained("r/a", "x").await;
    let mut out = Client::connect_persistent(port, "out", &["out/c"]).await;
    let count = |m: crate::harness::Msg| {
        let j = m.json();
        (
            j["topic"].as_str().unwrap_or_default().to_string(),
            j["count"].as_i64().unwrap_or(-1),
        )
    };

    let agent = Agent::start(&config("r/a")).await;
    assert_eq!(count(out.recv().await), ("r/a".into(), 1));
    let agent = agent.restart(&config("r/a")).await;
    let broker = Mosquitto::restart_persistent(port, broker.stop());
    crate::harness::eventually("the agent back on the broker", || {
        let s = agent.status();
        s.connected && s.subscribed && s.failures > 0
    })
    .await;
    let again = out.drain(Duration::from_millis(700)).await;
    assert!(again.is_empty(), "handled again: {again:?}");
    publisher.publish("r/a", "y").await;
    assert_eq!(count(out.recv().await), ("r/a".into(), 2));
    // Retained as it is published, to a subscription already made: an event.
    publisher.publish_retained("r/a", "z").await;
    assert_eq!(count(out.recv().await), ("r/a".into(), 3));

    // A filter the session did not have: its retained message is new to the function.
    publisher.publish_retained("r/b", "x").await;
    let agent = agent.restart(&config("r/a\", \"r/b")).await;
    assert_eq!(count(out.recv().await), ("r/b".into(), 1));
    let again = out.drain(Duration::from_millis(700)).await;
    assert!(again.is_empty(), "handled again: {again:?}");
    agent.stop().await;
    drop(broker);
}

/// A second agent started on a `data_dir` in use stops at the state store's lock before it
/// compiles its modules (minutes on a Pi for Python ones) and writes into the compile cache
/// the first agent uses. Its module here cannot be compiled: which error it gives says
/// which came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_a_data_dir_in_use_stops_before_it_compiles() {
    let id = unique("s");
    let agent =
        Agent::start(&(embedded(&id) + &function("c", "counter", "persistent", "c/in", ""))).await;
    let dir = agent.dir().to_path_buf();
    std::fs::write(dir.join("bogus.wasm"), "not a module").expect("write");
    let second = format!(
        "[agent]\nid = \"{id}-2\"\ndata_dir = \"{}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{}\"\n\
         [[function]]\nname = \"b\"\nmodule = \"{}\"\ntopics = [\"b/in\"]\n",
        dir.join("data").display(),
        agent.port,
        dir.join("bogus.wasm").display()
    );
    std::fs::write(dir.join("second.toml"), second).expect("write");
    let config = dir.join("second.toml");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::harness::agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("in use by another process"), "{said}");
    assert!(!said.contains("bogus"), "compiled before the lock: {said}");
    agent.stop().await;
}

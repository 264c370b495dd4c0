//! Events end to end: publish with a real client, assert what arrives on output topics and
//! on the dead-letter topic.

use std::time::{Duration, Instant};

use crate::harness::{Agent, Client, Mosquitto, free_port, guest};

/// Which broker a test runs against.
#[derive(Clone, Copy, Debug)]
enum Broker {
    Embedded,
    Mosquitto,
}

/// An agent plus the broker it uses (kept alive for the test).
struct Setup {
    agent: Agent,
    port: u16,
    _mosquitto: Option<Mosquitto>,
}

fn broker_section(broker: Broker) -> (String, u16, Option<Mosquitto>) {
    match broker {
        Broker::Embedded => {
            let port = free_port();
            (
                format!("[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nembedded = true\n"),
                port,
                None,
            )
        }
        Broker::Mosquitto => {
            let m = Mosquitto::start();
            (
                format!("[broker]\nurl = \"{}\"\n", m.url()),
                m.port,
                Some(m),
            )
        }
    }
}

/// Starts an agent whose config is `[agent]` + broker + `functions` (TOML).
fn setup(broker: Broker, functions: &str) -> Setup {
    let (broker_toml, port, mosquitto) = broker_section(broker);
    let id = format!("t{}", port);
    let config =
        format!("[agent]\nid = \"{id}\"\nshutdown_grace_ms = 3000\n{broker_toml}\n{functions}");
    let agent = Agent::start(&config);
    Setup {
        agent,
        port,
        _mosquitto: mosquitto,
    }
}

fn dead_letter_topic(port: u16) -> String {
    format!("edge-agent/t{port}/dead-letter")
}

fn threshold_fn() -> String {
    format!(
        r#"
[[function]]
name = "threshold"
module = "{}"
topics = ["sensors/+/temperature"]
[function.config]
threshold = "30"
alert_topic = "alerts/{{1..}}"
"#,
        guest("threshold-alert")
    )
}

async fn threshold_alerts_and_dead_letters(broker: Broker) {
    let s = setup(broker, &threshold_fn());
    let dlq = dead_letter_topic(s.port);
    let mut c = Client::connect(s.port, &["alerts/#", &dlq]).await;

    c.publish("sensors/kitchen/temperature", r#"{"value": 31.5}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(m.topic, "alerts/kitchen/temperature");
    assert_eq!(
        m.text(),
        r#"{"sensor":"kitchen","value":31.5,"threshold":30}"#
    );

    // Below the threshold: nothing. Then garbage: a dead letter naming the function.
    c.publish("sensors/hall/temperature", r#"{"value": 12}"#)
        .await;
    c.publish("sensors/hall/temperature", "not json").await;
    let m = c.recv().await;
    assert_eq!(m.topic, dlq, "expected only the dead letter, got {m:?}");
    let j = m.json();
    assert_eq!(j["function"], "threshold");
    assert_eq!(j["topic"], "sensors/hall/temperature");
    assert_eq!(j["kind"], "guest-error");
    assert!(
        j["message"].as_str().unwrap_or("").contains("not JSON"),
        "{j}"
    );
    assert_eq!(j["payload_base64"], "bm90IGpzb24=");
    assert!(j["timestamp_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000);

    // The agent keeps going after a failure.
    c.publish("sensors/attic/temperature", r#"{"value": 40}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(m.topic, "alerts/attic/temperature");
    assert_eq!(m.text(), r#"{"sensor":"attic","value":40,"threshold":30}"#);

    let (status, log) = s.agent.stop();
    assert!(status.success(), "agent exit {status}:\n{log}");
    assert!(log.contains("function totals"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_alert_embedded_broker() {
    threshold_alerts_and_dead_letters(Broker::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_alert_mosquitto() {
    threshold_alerts_and_dead_letters(Broker::Mosquitto).await;
}

async fn overlapping_filters_each_get_the_event_once(broker: Broker) {
    let echo = guest("echo");
    let functions = format!(
        r#"
[[function]]
name = "narrow"
module = "{echo}"
topics = ["sensors/+/temperature"]
[function.config]
out_topic = "out/narrow/{{topic}}"

[[function]]
name = "wide"
module = "{echo}"
topics = ["sensors/#", "other/x"]
[function.config]
out_topic = "out/wide/{{topic}}"
"#
    );
    let s = setup(broker, &functions);
    let mut c = Client::connect(s.port, &["out/#"]).await;
    c.publish("sensors/kitchen/temperature", "21").await;
    c.publish("sensors/kitchen/humidity", "50").await;
    let mut got: Vec<(String, String)> = c
        .drain(Duration::from_millis(1500))
        .await
        .into_iter()
        .map(|m| (m.topic.clone(), m.text()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("out/narrow/sensors/kitchen/temperature".into(), "21".into()),
            ("out/wide/sensors/kitchen/humidity".into(), "50".into()),
            ("out/wide/sensors/kitchen/temperature".into(), "21".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_embedded() {
    overlapping_filters_each_get_the_event_once(Broker::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_mosquitto() {
    overlapping_filters_each_get_the_event_once(Broker::Mosquitto).await;
}

fn misbehave_fn(name: &str, topic: &str, extra: &str) -> String {
    format!(
        r#"
[[function]]
name = "{name}"
module = "{}"
topics = ["{topic}"]
{extra}
[function.config]
out_topic = "out/{name}"
"#,
        guest("misbehave")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_function_does_not_stall_another() {
    let functions = misbehave_fn("slow", "slow/in", "max_concurrency = 1\ntimeout_ms = 5000")
        + &misbehave_fn("fast", "fast/in", "");
    let s = setup(Broker::Embedded, &functions);
    let mut c = Client::connect(s.port, &["out/#"]).await;
    // Keep "slow" busy for about three seconds.
    for _ in 0..3 {
        c.publish("slow/in", "sleep:1000").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    c.publish("fast/in", "ok").await;
    let m = c.recv().await;
    assert_eq!((m.topic.as_str(), m.text().as_str()), ("out/fast", "ok"));
    let fast = start.elapsed();
    assert!(
        fast < Duration::from_millis(900),
        "fast function waited {fast:?} behind the slow one"
    );
    // The slow ones all complete, in order, afterwards.
    for _ in 0..3 {
        let m = c.recv_on("out/slow").await;
        assert_eq!(m.text(), "slept 1000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_become_dead_letters_and_the_agent_survives() {
    let functions = misbehave_fn("bad", "bad/in", "timeout_ms = 300\nmemory_limit_mb = 16");
    let s = setup(Broker::Mosquitto, &functions);
    let dlq = dead_letter_topic(s.port);
    let mut c = Client::connect(s.port, &["out/#", &dlq]).await;
    let cases = [
        ("err:custom failure", "guest-error", "custom failure"),
        ("panic", "trap", ""),
        ("loop", "timeout", "300 ms"),
        ("alloc:64", "memory-limit", "limit"),
        ("publish-then-err", "guest-error", "failed after publish"),
        ("no-such-command", "guest-error", "unknown command"),
    ];
    for (payload, kind, text) in cases {
        let start = Instant::now();
        c.publish("bad/in", payload).await;
        let m = c.recv().await;
        assert_eq!(m.topic, dlq, "{payload}: expected a dead letter, got {m:?}");
        let j = m.json();
        assert_eq!(j["kind"], kind, "{payload}: {j}");
        assert!(
            j["message"].as_str().unwrap_or("").contains(text),
            "{payload}: {j}"
        );
        if kind == "timeout" {
            // Stopped within the timeout plus a tick or two, not left running.
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{:?}",
                start.elapsed()
            );
        }
    }
    // Still healthy, and nothing published by the failed calls ever arrived.
    c.publish("bad/in", "ok").await;
    let m = c.recv().await;
    assert_eq!((m.topic.as_str(), m.text().as_str()), ("out/bad", "ok"));
    let (status, log) = s.agent.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("should-not-arrive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_dead_lettered_without_a_call() {
    let functions = misbehave_fn("small", "small/in", "max_payload_bytes = 1024");
    let s = setup(Broker::Embedded, &functions);
    let dlq = dead_letter_topic(s.port);
    let mut c = Client::connect(s.port, &["out/#", &dlq]).await;
    c.publish("small/in", vec![b'x'; 5000]).await;
    let j = c.recv().await.json();
    assert_eq!(j["kind"], "payload-too-large");
    assert_eq!(j["payload_bytes"], 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_have_no_capabilities_and_their_output_is_logged() {
    let functions = misbehave_fn("probe", "probe/in", "");
    let s = setup(Broker::Embedded, &functions);
    let mut c = Client::connect(s.port, &["out/#"]).await;
    c.publish("probe/in", "env").await;
    let j = c.recv().await.json();
    assert_eq!(j["env_vars"], 0, "{j}");
    assert!(
        j["read_dir"].as_str().unwrap_or("").starts_with("error"),
        "{j}"
    );
    c.publish("probe/in", "stdout:hello from the guest").await;
    s.agent.wait_log("hello from the guest");
    let log = s.agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("hello from the guest"))
        .unwrap_or_default();
    assert!(
        line.contains("probe"),
        "not tagged with the function: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_events_then_exits_zero() {
    let functions = misbehave_fn("slow", "slow/in", "timeout_ms = 5000");
    let s = setup(Broker::Mosquitto, &functions);
    let mut c = Client::connect(s.port, &["out/#"]).await;
    c.publish("slow/in", "sleep:1000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, log) = s.agent.stop();
    assert!(status.success(), "{log}");
    // The in-flight event finished and its output went out before the disconnect.
    let m = c.recv().await;
    assert_eq!(m.text(), "slept 1000");
    assert!(log.contains("disconnected from broker"), "{log}");
}

/// On a kernel whose address space is too small for the instance pool (some 39-bit
/// aarch64 kernels) the probe fails: the agent says so and runs with on-demand allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooling_probe_failure_falls_back_to_on_demand_allocation() {
    let port = free_port();
    let config = format!(
        "[agent]\nid = \"probe\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nembedded = true\n{}",
        misbehave_fn("f", "f/in", "")
    );
    let agent = Agent::start_with_env(&config, &[("EDGE_AGENT_FORCE_POOLING_FAILURE", "1")]);
    let mut c = Client::connect(port, &["out/#"]).await;
    c.publish("f/in", "ok").await;
    assert_eq!(c.recv().await.text(), "ok");
    let log = agent.log_text();
    assert!(
        log.contains("falling back to on-demand allocation"),
        "{log}"
    );
    assert!(log.contains("allocator=OnDemand"), "{log}");

    // With allocator = "pooling" the same failure is an error at start-up instead.
    let forced = config.replace("[broker]", "[runtime]\nallocator = \"pooling\"\n[broker]");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, forced).expect("write");
    let out = std::process::Command::new(crate::harness::agent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("EDGE_AGENT_FORCE_POOLING_FAILURE", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pooling allocator probe failed"),
        "{stderr}"
    );
}

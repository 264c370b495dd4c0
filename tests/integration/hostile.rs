//! Hostile guests and hostile input: each ends with the right error kind on the
//! dead-letter topic, the agent keeps running, and a healthy neighbour keeps its latency.

use std::time::{Duration, Instant};

use crate::harness::{
    Agent, Client, Mosquitto, Process, checks_latency, embedded, eventually, guest, rss_kib, unique,
};

struct Setup {
    _agent: Option<Agent>,
    client: Client,
    dlq: String,
    _broker: Option<Mosquitto>,
}

async fn setup(functions: &str) -> Setup {
    let id = unique("h");
    let config = format!("{}{functions}", embedded(&id));
    let agent = Agent::start(&config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let client = Client::connect(agent.port, &["out/#", &dlq]).await;
    Setup {
        _agent: Some(agent),
        client,
        dlq,
        _broker: None,
    }
}

/// Against Mosquitto with TCP_NODELAY, for latency measurements (rumqttd, the embedded
/// broker, leaves Nagle's algorithm on, which adds about 40 ms per round trip).
async fn setup_mosquitto(functions: &str) -> Setup {
    let broker = Mosquitto::start();
    let id = unique("h");
    let config = format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"{}\"\n{functions}",
        broker.url()
    );
    let agent = Agent::start(&config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let client = Client::connect(broker.port, &["out/#", &dlq]).await;
    Setup {
        _agent: Some(agent),
        client,
        dlq,
        _broker: Some(broker),
    }
}

fn misbehave(name: &str, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\nmodule = \"{}\"\ntopics = [\"{name}/in\"]\n{extra}\n\
         [function.config]\nout_topic = \"out/{name}\"\n",
        guest("misbehave")
    )
}

/// Publishes `payload` and returns the kind of the dead letter that follows.
async fn kind_of(s: &mut Setup, topic: &str, payload: impl Into<Vec<u8>>) -> String {
    dead_letter_of(s, topic, payload).await.kind
}

/// Publishes `payload` and returns the dead letter that follows.
async fn dead_letter_of(
    s: &mut Setup,
    topic: &str,
    payload: impl Into<Vec<u8>>,
) -> edge_agent::messages::DeadLetter {
    s.client.publish(topic, payload).await;
    let m = s.client.recv().await;
    assert_eq!(
        m.topic,
        s.dlq,
        "expected a dead letter, got {} {}",
        m.topic,
        m.text()
    );
    m.message::<edge_agent::messages::DeadLetter>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_get_the_right_error_kind() {
    let functions = misbehave(
        "od",
        "timeout_ms = 300\nmemory_limit_mb = 16\npublish_rate = 50",
    ) + &misbehave(
        "p",
        "mode = \"persistent\"\ntimeout_ms = 300\nmemory_limit_mb = 16\npublish_rate = 50",
    ) + &misbehave("fuel", "fuel = 5000000\ntimeout_ms = 5000");
    let mut s = setup(&functions).await;
    for f in ["od", "p"] {
        let topic = format!("{f}/in");
        for (payload, kind) in [
            ("loop", "timeout"),
            ("alloc:100", "memory-limit"),
            ("recurse", "stack-overflow"),
            ("panic", "trap"),
            ("publish-many:5000", "rate-limit"),
            ("state-set:1000000", "state-quota"),
        ] {
            let dead = dead_letter_of(&mut s, &topic, payload).await;
            assert_eq!(dead.kind, kind, "{f}: {payload}");
            // A panic's own words, from the guest's stderr, not only the trap.
            if payload == "panic" {
                assert!(
                    dead.message.contains("misbehave: panicking as asked")
                        && !dead.message.contains("stderr:  |"),
                    "{f}: {}",
                    dead.message
                );
            }
        }
        // Still healthy afterwards (persistent: a fresh instance after the restarts).
        // Lets the publish bucket (50/s) refill a token or more: a timer, not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.client.publish(&topic, "ok").await;
        let m = s.client.recv().await;
        assert_eq!(
            (m.topic.as_str(), m.text().as_str()),
            (format!("out/{f}").as_str(), "ok")
        );
    }
    // With a fuel budget, an endless loop ends deterministically, before the timeout.
    let start = Instant::now();
    assert_eq!(kind_of(&mut s, "fuel/in", "loop").await, "fuel-exhausted");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    s.client.publish("fuel/in", "ok").await;
    assert_eq!(
        s.client.recv().await.text(),
        "ok",
        "normal calls fit the budget"
    );
}

/// The binary, since its RSS is the point (in the test process, other tests share it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bombs_do_not_grow_the_agent() {
    let broker = Mosquitto::start();
    let config = format!(
        "[agent]\nid = \"bomb\"\n[broker]\nurl = \"{}\"\n{}",
        broker.url(),
        misbehave("bomb", "memory_limit_mb = 32")
    );
    let agent = Process::start(&config, broker.port, "bomb", &[]).await;
    let dlq = "edge-agent/bomb/dead-letter".to_string();
    let mut s = Setup {
        _agent: None,
        client: Client::connect(broker.port, &["out/#", &dlq]).await,
        dlq,
        _broker: None,
    };
    for _ in 0..20 {
        assert_eq!(
            kind_of(&mut s, "bomb/in", "alloc:200").await,
            "memory-limit"
        );
    }
    // Allocations within the limit are given back when the instance goes.
    for _ in 0..10 {
        s.client.publish("bomb/in", "alloc:24").await;
        assert_eq!(s.client.recv().await.text(), "allocated 24");
    }
    let rss = rss_kib(agent.pid());
    assert!(
        rss > 0 && rss < 200 * 1024,
        "agent RSS {rss} KiB after memory bombs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_reach_the_guest_or_the_dead_letter_topic() {
    let functions = format!(
        "\n[[function]]\nname = \"t\"\nmodule = \"{}\"\ntopics = [\"s/+/t\"]\nmax_payload_bytes = 65536\n\
         [function.config]\nthreshold = \"30\"\nalert_topic = \"out/{{1}}\"\n",
        guest("threshold-alert")
    );
    let mut s = setup(&functions).await;
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "guest-error"),
        (vec![0xff, 0xfe, 0x00, 0x01, 0x80], "guest-error"),
        (b"\xc3\x28 invalid utf-8".to_vec(), "guest-error"),
        (br#"{"value": "warm"}"#.to_vec(), "guest-error"),
        (br#"[1, 2, 3]"#.to_vec(), "guest-error"),
        (nested.as_bytes()[..60_000].to_vec(), "guest-error"),
        (vec![b'{'; 70_000], "payload-too-large"),
    ];
    for (payload, kind) in cases {
        let preview = String::from_utf8_lossy(&payload[..payload.len().min(16)]).into_owned();
        assert_eq!(
            kind_of(&mut s, "s/x/t", payload).await,
            kind,
            "payload {preview:?}"
        );
    }
    s.client.publish("s/x/t", r#"{"value": 99}"#).await;
    assert_eq!(
        s.client.recv().await.text(),
        r#"{"sensor":"x","value":99,"threshold":30}"#
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency of `n` sequential round trips through the healthy echo function, one every
/// 10 ms (a steady stream, so both runs see the same amount of hostile traffic).
async fn healthy_latencies(c: &mut Client, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..n {
        tick.tick().await;
        let start = Instant::now();
        c.publish("healthy/in", format!("{i}")).await;
        let m = c.recv_on("out/healthy").await;
        assert_eq!(m.text(), i.to_string());
        v.push(start.elapsed());
    }
    v.sort();
    v
}

/// The healthy neighbour's p99 with and without a hostile one hammering the agent; the
/// ratio is printed (see docs/limits.md) and must stay within a loose bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_neighbour_keeps_its_latency() {
    let functions = format!(
        "\n[[function]]\nname = \"healthy\"\nmodule = \"{}\"\ntopics = [\"healthy/in\"]\n\
         [function.config]\nout_topic = \"out/healthy\"\n",
        guest("echo")
    ) + &misbehave(
        "hostile",
        "timeout_ms = 200\nmemory_limit_mb = 16\nmax_concurrency = 1\noverflow = \"drop-oldest\"",
    );
    let mut s = setup_mosquitto(&functions).await;
    let quiet = healthy_latencies(&mut s.client, 200).await;

    // A hostile stream: endless loops, memory bombs and panics, back to back.
    let stop = tokio_util::sync::CancellationToken::new();
    let hostile = {
        let stop = stop.clone();
        let port = s.client.port();
        tokio::spawn(async move {
            let c = Client::connect(port, &[]).await;
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let cmd = ["loop", "alloc:100", "panic", "recurse"][(i % 4) as usize];
                c.publish("hostile/in", cmd).await;
                i += 1;
                // Pacing: an event every 20 ms.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        })
    };
    let agent = s._agent.as_ref().expect("agent");
    let failed = || -> u64 {
        agent
            .snapshot("hostile")
            .failed
            .iter()
            .map(|(_, n)| n)
            .sum()
    };
    eventually("the hostile neighbour's first failure", || failed() > 0).await;
    let noisy = healthy_latencies(&mut s.client, 200).await;
    // Every healthy round trip came back (healthy_latencies checks each answer) while
    // the neighbour kept failing.
    assert!(failed() > 1, "the neighbour was not hostile");
    stop.cancel();
    let sent = hostile.await.unwrap_or(0);

    let (q50, q99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
    let (n50, n99) = (percentile(&noisy, 0.5), percentile(&noisy, 0.99));
    let ratio = n99.as_secs_f64() / q99.as_secs_f64();
    println!(
        "healthy neighbour (echo, 200 round trips each): alone p50 {q50:?} p99 {q99:?}; \
         with a hostile neighbour ({sent} hostile events) p50 {n50:?} p99 {n99:?}; p99 ratio {ratio:.2}"
    );
    // Wall-clock bounds only on a quiet machine (tests/bench/isolation.sh): on a shared
    // runner they fail for reasons of their own. No healthy event may wait for the
    // hostile function: each function has its own connection, so its own in-flight window
    // and acknowledgement order. (With one shared connection the hostile messages filled
    // the broker's window and the healthy p99 was one hostile timeout, 200 ms;
    // docs/limits.md. That regression is caught on every run by
    // `a_hostile_neighbour_does_not_hold_up_a_healthy_function`.)
    if !checks_latency() {
        return;
    }
    assert!(
        n50 < q50 + Duration::from_millis(50),
        "healthy p50 {n50:?} vs {q50:?} alone"
    );
    assert!(
        n99 < Duration::from_millis(400),
        "healthy p99 {n99:?} with a hostile neighbour"
    );
}

/// No message the agent publishes may exceed the packet limit: a dead letter for an
/// 800 KB payload (under the default config, from any publisher) or for a guest's 1 MB
/// error message is cut to documented bounds and says so, and the connection is never
/// broken by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_dead_letters_are_cut_and_never_break_the_connection() {
    let id = unique("h");
    let config = format!("{}{}", embedded(&id), misbehave("big", ""));
    let agent = Agent::start(&config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(agent.port, &["out/#", &dlq]).await;

    c.publish("big/in", vec![b'x'; 800 * 1024]).await;
    let m = c.recv().await;
    assert_eq!(m.topic, dlq);
    assert!(m.payload.len() < 1024 * 1024, "{} bytes", m.payload.len());
    let j = m.json();
    assert_eq!(j["kind"], "payload-too-large", "{}", m.text().len());
    assert_eq!(j["payload_bytes"], 800 * 1024);
    assert_eq!(j["payload_truncated"], true);
    let kept = j["payload_base64"].as_str().unwrap_or_default().len();
    assert!(kept > 0 && kept <= 4 * 64 * 1024 / 3 + 4, "{kept}");

    c.publish("big/in", "err-big:1048576").await;
    let j = c.recv_on(&dlq).await.json();
    assert_eq!(j["kind"], "guest-error");
    assert_eq!(j["message_truncated"], true);
    assert_eq!(j["message"].as_str().unwrap_or_default().len(), 4096);

    // Still connected, never dropped, and working.
    c.publish("big/in", "ok").await;
    assert_eq!(c.recv_on("out/big").await.text(), "ok");
    let status = agent.status();
    assert!(status.connected && status.failures == 0, "{status:?}");
    agent.stop().await;
}

/// A message over the agent's largest packet (`broker.max_packet_bytes`, 1 MiB by default)
/// from a broker that takes it (Mosquitto takes up to 256 MiB, the embedded broker 16 MiB):
/// its payload is skipped unread, the event dead-lettered with its size and acknowledged,
/// and the connection kept. Until 2026-12-05 the agent's MQTT client broke the connection
/// on it, Mosquitto sent it again on the next one, and the function received nothing more,
/// for ever; the embedded broker dropped the publisher instead, without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_packet_limit_is_dead_lettered_and_the_function_goes_on() {
    let broker = Mosquitto::start();
    let id = unique("h");
    let on_mosquitto = format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"{}\"\n",
        broker.url()
    );
    over_the_packet_limit(&id, &on_mosquitto, Some(broker.port)).await;
    let id = unique("h");
    over_the_packet_limit(&id, &embedded(&id), None).await;
}

/// One agent on `broker_toml` (at `port`, or its embedded broker's) gets a message over
/// its packet limit, then a small one.
async fn over_the_packet_limit(id: &str, broker_toml: &str, port: Option<u16>) {
    let config = format!(
        "{broker_toml}max_packet_bytes = 65536\n{}",
        misbehave("big", "max_payload_bytes = 1024\nmax_publish_bytes = 1024")
    );
    let agent = Agent::start(&config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(port.unwrap_or(agent.port), &["out/#", &dlq]).await;
    c.publish("big/in", vec![b'x'; 1_000_000]).await;
    c.publish("big/in", "ok").await;
    let j = c.recv_on(&dlq).await.json();
    assert_eq!(j["kind"], "payload-too-large", "{j}");
    assert_eq!(j["payload_bytes"], 1_000_000, "{j}");
    assert_eq!(j["payload_truncated"], true, "{j}");
    assert_eq!(c.recv_on("out/big").await.text(), "ok");
    let rest = c.drain(Duration::from_millis(500)).await;
    assert!(rest.is_empty(), "sent again? {rest:?}");
    let status = agent.status();
    assert!(status.connected && status.failures == 0, "{status:?}");
    agent.stop().await;
}

/// A broker that takes smaller packets than `broker.max_packet_bytes` (Mosquitto's
/// `max_packet_size`; a cloud broker's 128 or 256 KB) closes the connection on a larger
/// one, and over MQTT 3.1.1 cannot say why. Until 2026-12-06 the output connection resent
/// it on every reconnection, and every function's outputs waited for good. Now the
/// connection resends one message at a time until it catches the one the broker closes
/// on; such outputs are dropped (their events counted once, not again), the other
/// function's outputs go on, and later ones are refused when published, with a dead
/// letter saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_larger_than_the_broker_takes_are_dropped_and_the_others_go_on() {
    let broker = Mosquitto::start_with("max_packet_size 4096\n");
    let id = unique("h");
    let config = format!(
        "[agent]\nid = \"{id}\"\nstats_interval_secs = 1\n[broker]\nurl = \"{}\"\n{}{}",
        broker.url(),
        misbehave("big", "mode = \"persistent\""),
        misbehave("small", ""),
    );
    let agent = Process::start(&config, broker.port, &id, &[]).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(broker.port, &["out/#", &dlq]).await;
    for _ in 0..3 {
        c.publish("big/in", "state-pad:8000").await;
    }
    c.publish("small/in", "ok").await;
    assert_eq!(c.recv_on("out/small").await.text(), "ok");
    eventually("the refused output found", || {
        agent.log_text().contains("larger than any it took")
    })
    .await;

    c.publish("big/in", "state-pad:8000").await;
    let j = c.recv_on(&dlq).await.json();
    assert_eq!(j["kind"], "guest-error", "{j}");
    let why = j["message"].as_str().unwrap_or_default();
    assert!(why.contains("too large for the broker"), "{why}");
    // Each of the three events whose output was dropped counted once; the refused one not.
    c.publish("big/in", "state-pad:10").await;
    let reply = c.recv_on("out/big").await.text();
    assert_eq!(reply.split(' ').next(), Some("4"), "{reply}");
    let rest = c.drain(Duration::from_millis(300)).await;
    assert!(rest.is_empty(), "more than expected: {rest:?}");
    // The three dropped outputs are counted.
    let mut stats = Client::connect(broker.port, &[&format!("edge-agent/{id}/stats")]).await;
    let report = stats.recv().await.json();
    assert_eq!(report["outputs_dropped"], 3, "{report}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// The same for QoS 0 outputs, which are not resent: each would close the output
/// connection anew, and every function's outputs stalled behind the reconnections. The
/// output connection sends them one at a time with a PINGREQ behind each, catches one
/// alone, and learns the limit; the other function's outputs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_outputs_larger_than_the_broker_takes_are_refused_and_the_others_go_on() {
    let broker = Mosquitto::start_with("max_packet_size 4096\n");
    let id = unique("h");
    let config = format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"{}\"\n{}{}",
        broker.url(),
        misbehave("big", "qos = 0"),
        misbehave("small", ""),
    );
    let agent = Process::start(&config, broker.port, &id, &[]).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(broker.port, &["out/#", &dlq]).await;
    // A stream of them, as from a function whose every output is too large: those written
    // before the search are lost with their connections (QoS 0: at most once).
    let mut sent = 0;
    while !agent.log_text().contains("larger than any it took") {
        assert!(sent < 200, "not found after {sent} events");
        c.publish("big/in", "state-pad:8000").await;
        sent += 1;
        if sent % 10 == 0 {
            c.publish("small/in", "ok").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        c.publish("small/in", "ok").await;
    }
    let replies = sent / 10 + 3;
    for n in 0..replies {
        let m = c.recv_on("out/small").await;
        assert_eq!(m.text(), "ok", "reply {n} of {replies}");
    }
    // Refused when published now, with the reason; and small ones still go.
    c.publish("big/in", "state-pad:8000").await;
    let j = c.recv_on(&dlq).await.json();
    let why = j["message"].as_str().unwrap_or_default();
    assert!(why.contains("too large for the broker"), "{j}");
    c.publish("big/in", "state-pad:10").await;
    let reply = c.recv_on("out/big").await.text();
    assert!(reply.len() > 10, "{reply}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("refuses the topic"), "{log}");
}

/// A function that listens to the dead-letter topic and fails on what it gets must not
/// start a cascade of dead letters, each embedding the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_about_dead_letters_do_not_cascade() {
    let id = unique("h");
    let dlq = format!("edge-agent/{id}/dead-letter");
    let listener = format!(
        "\n[[function]]\nname = \"dlq-reader\"\nmodule = \"{}\"\ntopics = [\"{dlq}\"]\n\
         [function.config]\nout_topic = \"out/reader\"\n",
        guest("misbehave")
    );
    let config = format!("{}{}{listener}", embedded(&id), misbehave("bad", ""));
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out/#", &dlq]).await;
    c.publish("bad/in", "err:first failure").await;
    let first = c.recv_on(&dlq).await.json();
    assert_eq!(first["function"], "bad");
    // The reader fails on it ("unknown command"): counted, but no second dead letter.
    let more = c.drain(Duration::from_millis(800)).await;
    assert!(more.is_empty(), "cascade: {more:?}");
    let reader = agent.snapshot("dlq-reader");
    assert_eq!(reader.failed, vec![("guest-error".into(), 1)]);
    agent.stop().await;
}

/// The agent's own topics are the agent's: a function cannot forge its stats, its
/// dead letters or its presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_cannot_publish_under_the_agent_prefix() {
    let mut s = setup(&misbehave("forger", "")).await;
    for topic in [
        "edge-agent/x/stats",
        "edge-agent/x/dead-letter",
        "edge-agent",
    ] {
        s.client
            .publish("forger/in", format!("publish-to:{topic}"))
            .await;
        let m = s.client.recv().await;
        assert_eq!(m.topic, s.dlq, "{topic}: {}", m.text());
        let j = m.json();
        assert!(
            j["message"]
                .as_str()
                .unwrap_or_default()
                .contains("reserved"),
            "{j}"
        );
    }
    s.client
        .publish("forger/in", "publish-to:elsewhere/x")
        .await;
    // Elsewhere is fine (nobody subscribes there): no dead letter.
    s.client.publish("forger/in", "ok").await;
    assert_eq!(s.client.recv().await.text(), "ok");
}

/// A call cannot make the agent hold unbounded memory through state writes it has not
/// committed: past the per-call budget `set` fails, and the call is a `state-quota` dead
/// letter with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_state_writes_have_a_budget_per_call() {
    let mut s = setup(&misbehave("filler", "timeout_ms = 20000")).await;
    s.client
        .publish("filler/in", "state-fill:10000:65536")
        .await;
    let m = s.client.recv().await;
    assert_eq!(m.topic, s.dlq, "{}", m.text());
    let j = m.json();
    assert_eq!(j["kind"], "state-quota", "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_pending_bytes_per_call"),
        "{j}"
    );
    // Small calls still fit; the key budget holds too.
    s.client.publish("filler/in", "state-fill:10:100").await;
    assert_eq!(s.client.recv().await.text(), "filled 10");
    s.client.publish("filler/in", "state-fill:1001:1").await;
    let j = s.client.recv().await.json();
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_pending_keys_per_call"),
        "{j}"
    );
}

/// The binary, since its log is the point: a guest that logs 2,000 lines of 100 KB (200 MB
/// through the log interface, as much again on stdout) makes the agent log at most
/// `log_rate` lines a second, each cut at 4 KiB, and say how many it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_logs_are_cut_and_rate_limited() {
    let broker = Mosquitto::start();
    let config = format!(
        "[agent]\nid = \"chatty\"\n[broker]\nurl = \"{}\"\n{}",
        broker.url(),
        misbehave("chatty", "timeout_ms = 20000\nlog_rate = 50")
    );
    let agent = Process::start(&config, broker.port, "chatty", &[]).await;
    let mut c = Client::connect(broker.port, &["out/#"]).await;
    let start = Instant::now();
    c.publish("chatty/in", "log-many:2000:100000").await;
    assert_eq!(c.recv().await.text(), "logged 2000");
    // A burst of 50, then 50 a second for as long as the flood lasted.
    let allowed = 50 + (50.0 * start.elapsed().as_secs_f64()).ceil() as usize + 5;
    // The count of dropped lines is told as the call ends; the rate limiter lets lines
    // through again a second later (a timer, not a wait).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.publish("chatty/in", "stdout:after the flood").await;
    c.publish("chatty/in", "ok").await;
    assert_eq!(c.recv().await.text(), "ok");
    let (status, log) = agent.stop();
    assert!(status.success());
    let guest_lines = log.lines().filter(|l| l.contains("lllll")).count();
    assert!(
        guest_lines <= allowed && guest_lines < 1000,
        "{guest_lines} guest lines let through, {allowed} allowed"
    );
    // Without the cut and the limit this would be 400 MB.
    assert!(
        log.len() < allowed * 4400 + 64 * 1024,
        "{} bytes of log",
        log.len()
    );
    assert!(log.contains("[line truncated]"), "lines are cut");
    assert!(
        log.contains("guest log lines dropped"),
        "drops are reported:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(log.contains("after the flood"));
}

/// A function may not feed itself: a publish to a topic its own filters match is refused
/// (it would call the function again with its own output, until only the rate limit
/// stopped it), unless `allow_feedback` says it is deliberate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_cannot_feed_themselves_unless_allowed() {
    let looped = format!(
        "\n[[function]]\nname = \"self\"\nmodule = \"{m}\"\ntopics = [\"self/#\"]\n\
         [function.config]\nout_topic = \"out/self\"\n\
         \n[[function]]\nname = \"fed\"\nmodule = \"{m}\"\ntopics = [\"fed/#\"]\nallow_feedback = true\n\
         [function.config]\nout_topic = \"out/fed\"\n",
        m = guest("misbehave")
    );
    let mut s = setup(&looped).await;
    s.client.publish("self/in", "publish-to:self/again").await;
    let j = s.client.recv().await.json();
    assert_eq!(j["kind"], "guest-error", "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("own filter"),
        "{j}"
    );
    // Allowed: its output comes back to it once ("forged" is no command: a dead letter).
    s.client.publish("fed/in", "publish-to:fed/again").await;
    let j = s.client.recv().await.json();
    assert_eq!(
        (j["function"].as_str(), j["topic"].as_str()),
        (Some("fed"), Some("fed/again")),
        "{j}"
    );
}

/// Two functions that feed each other (A publishes what B handles and back) stop after
/// `agent.max_hops` rounds with a `hop-limit` dead letter, although MQTT 3.1.1 carries no
/// hop count: the agent remembers what it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_between_functions_stop_at_max_hops() {
    let id = unique("h");
    let echo = guest("echo");
    let config = format!(
        "[agent]\nid = \"{id}\"\nmax_hops = 6\n[broker]\nurl = \"mqtt://127.0.0.1:0\"\nembedded = true\n\
         \n[[function]]\nname = \"ping\"\nmodule = \"{echo}\"\ntopics = [\"ping/#\"]\n\
         [function.config]\nout_topic = \"pong/x\"\n\
         \n[[function]]\nname = \"pong\"\nmodule = \"{echo}\"\ntopics = [\"pong/#\"]\n\
         [function.config]\nout_topic = \"ping/x\"\n"
    );
    let agent = Agent::start(&config).await;
    let dlq = format!("edge-agent/{id}/dead-letter");
    let mut c = Client::connect(agent.port, &["ping/#", "pong/#", &dlq]).await;
    c.publish("ping/x", "round and round").await;
    let letter = c.recv_on(&dlq).await.json();
    assert_eq!(letter["kind"], "hop-limit", "{letter}");
    // Then quiet: the loop is over.
    let rest = c.drain(Duration::from_millis(500)).await;
    assert!(rest.is_empty(), "still looping: {} more", rest.len());
    let handled = agent.snapshot("ping").succeeded + agent.snapshot("pong").succeeded;
    assert_eq!(handled, 6, "a chain of six calls, the seventh refused");
    agent.stop().await;
}

/// A call's wait for its turn under `publish_rate` counts as waiting (`queue`), not as
/// the call's execution: a burst slowed to the rate does not read as a slow function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_wait_counts_as_waiting_not_as_execution() {
    let functions = misbehave("paced", "mode = \"persistent\"\npublish_rate = 10");
    let mut s = setup(&functions).await;
    // The bucket holds ten: the eleventh to thirteenth wait about 100 ms each for a turn.
    for _ in 0..13 {
        s.client.publish("paced/in", "ok").await;
    }
    for _ in 0..13 {
        assert_eq!(s.client.recv().await.text(), "ok");
    }
    let agent = s._agent.as_ref().expect("an in-process agent");
    eventually("the thirteen counted", || {
        agent.snapshot("paced").succeeded == 13
    })
    .await;
    let stats = agent.snapshot("paced");
    assert!(
        stats.queue_us.max >= 80_000,
        "the waits for a turn count as waiting: {stats:?}"
    );
    assert!(
        stats.execute_us.max < 50_000,
        "and not as the call's execution: {stats:?}"
    );
}

/// A call that waits for its turn under `publish_rate` never waits past its own deadline:
/// a turn that would come too late is a `rate-limit` dead letter at once, not a timeout,
/// and the persistent instance that made it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_wait_never_outlives_the_call() {
    let functions = misbehave(
        "slowed",
        "mode = \"persistent\"\ntimeout_ms = 300\npublish_rate = 1",
    );
    let mut s = setup(&functions).await;
    s.client.publish("slowed/in", "ok").await;
    assert_eq!(
        s.client.recv().await.text(),
        "ok",
        "the first takes the token"
    );
    // The next token is a second away, the call's deadline 300 ms.
    assert_eq!(kind_of(&mut s, "slowed/in", "ok").await, "rate-limit");
    let agent = s._agent.as_ref().expect("an in-process agent");
    let stats = agent.snapshot("slowed");
    assert_eq!(stats.restarts, 0, "the instance was kept: {stats:?}");
    assert!(
        stats.failed.iter().all(|(kind, _)| *kind != "timeout"),
        "{stats:?}"
    );
}

/// A client id the embedded broker refuses (`/`, `+`, `#`, `$`), connecting twice: the
/// second connection panicked in rumqttd (a sender of the first, refused, connection left
/// behind and unwrapped), and with `panic = abort` the agent died with the broker (a probe,
/// 2026-12-08: one `mosquitto_sub -i a/b` against the demo, exit 134). The patch in
/// `agent/vendor/rumqttd` mends it; this build unwinds, so the panic shows in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_the_embedded_broker_refuses_does_not_take_it_down() {
    let id = unique("badid");
    let port = crate::harness::broker_port();
    let config = format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nembedded = true\n\
         [[function]]\nname = \"e\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
         [function.config]\nout_topic = \"out\"\n",
        guest("echo")
    );
    let agent = Process::start(&config, port, &id, &[]).await;
    // Reconnects every 50 ms, each time refused.
    let refused = Client::resume(port, "a/b").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(refused);
    let mut c = Client::connect(port, &["out"]).await;
    c.publish("in", "still here").await;
    assert_eq!(c.recv().await.text(), "still here");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

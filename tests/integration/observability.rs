//! The agent seen from outside: the Prometheus endpoint against the stats topic, and the
//! text it serves through a real parser of the format (`promtool check metrics`).

use std::io::{Read, Write};
use std::time::Duration;

use edge_agent::messages::{Presence, Report, Status, StatusFunction};

use crate::harness::{Client, Mosquitto, Process, broker_port, guest};

/// GET `path` from the agent's metrics listener: (status code, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of the sample `series` (`name{a="1",b="2"}`, labels in any order).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    let key = |s: &str| -> (String, Vec<String>) {
        let (name, labels) = s.split_once('{').unwrap_or((s, ""));
        let mut l: Vec<String> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        l.sort();
        (name.to_string(), l)
    };
    let want = key(series);
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (key(s) == want).then(|| v.parse().ok())?
    })
}

/// Clients that open connections to the metrics listener and send nothing (a port scanner,
/// a scraper that lost power) cannot take the agent's file descriptors: past 32 at once
/// a new one is closed as it comes, the log says so once, and scrapes work again as soon
/// as they let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_metrics_connections_cannot_take_every_file_descriptor() {
    let broker = Mosquitto::start();
    let metrics = broker_port();
    let config = format!(
        "[agent]\nid = \"idle\"\n[broker]\nurl = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [[function]]\nname = \"f\"\nmodule = \"{}\"\ntopics = [\"f/in\"]\n\
         [function.config]\nout_topic = \"out/f\"\n",
        broker.url(),
        guest("echo")
    );
    let agent = Process::start(&config, broker.port, "idle", &[]).await;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    let before = fds();
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).expect("connect"))
        .collect();
    // Every one accepted (and the ones over the bound closed) by now.
    let closed = |mut s: &std::net::TcpStream| {
        s.set_nonblocking(true).expect("nonblocking");
        match s.read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    crate::harness::eventually(
        "the listener has closed all but 32 of 200 connections",
        || idle.iter().filter(|s| closed(s)).count() == 200 - 32,
    )
    .await;
    let during = fds();
    assert!(
        during <= before + 32,
        "the agent holds {during} file descriptors with 200 idle connections ({before} before)"
    );
    drop(idle);
    crate::harness::eventually("a scrape after the idle connections went", || {
        std::panic::catch_unwind(|| get(metrics, "/healthz")).is_ok_and(|r| r.0 == 200)
    })
    .await;
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("metrics listener: a connection closed at once")
            .count(),
        1,
        "said once a minute, not once per connection:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_same_figures_as_the_stats_topic() {
    let broker = Mosquitto::start();
    let metrics = broker_port();
    let config = format!(
        "[agent]\nid = \"prom\"\nstats_interval_secs = 1\n[broker]\nurl = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [[function]]\nname = \"f\"\nmodule = \"{}\"\ntopics = [\"f/in\"]\n\
         [function.config]\nout_topic = \"out/f\"\n\
         [[function]]\nname = \"slow\"\nmodule = \"{}\"\nmode = \"persistent\"\n\
         topics = [\"slow/in\"]\ntimeout_ms = 10000\n\
         [function.config]\nout_topic = \"out/slow\"\n",
        broker.url(),
        guest("misbehave"),
        guest("misbehave")
    );
    let agent = Process::start(&config, broker.port, "prom", &[]).await;
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(metrics, "/readyz"), (200, "ready\n".into()));
    let mut c = Client::connect(
        broker.port,
        &[
            "out/f",
            "out/slow",
            "edge-agent/prom/stats",
            "edge-agent/prom/status",
            "edge-agent/prom/dead-letter",
        ],
    )
    .await;
    // The birth message names each function, its model and its module's hash.
    let birth: Status = c.recv_on("edge-agent/prom/status").await.message();
    let module = std::fs::read(guest("misbehave")).expect("module");
    let sha = edge_agent::runtime::function::sha256_hex(&module);
    let want = StatusFunction {
        name: "f".into(),
        mode: "on-demand".into(),
        module: Some("misbehave.wasm".into()),
        sha256: Some(sha.clone()),
    };
    assert_eq!(birth.status, Presence::Online, "{birth:?}");
    assert_eq!(
        birth.functions.as_ref().map(|f| &f[0]),
        Some(&want),
        "{birth:?}"
    );
    for _ in 0..50 {
        c.publish("f/in", "ok").await;
    }
    for _ in 0..2 {
        c.publish("f/in", "err:on purpose").await;
    }
    for key in ["a", "b", "a"] {
        c.publish("f/in", format!("state-incr:{key}")).await;
    }
    for _ in 0..53 {
        c.recv_on("out/f").await;
    }
    // The stats topic's report once it has counted every event, then a scrape.
    let (report, stats) = loop {
        // Read with the type the agent builds it from: a renamed field fails here.
        let v: Report = c.recv_on("edge-agent/prom/stats").await.message();
        let f = v.functions[0].clone();
        if f.totals.succeeded == 53
            && f.totals
                .failed
                .iter()
                .any(|(k, n)| k == "guest-error" && *n == 2)
        {
            break (v, f);
        }
    };
    // Every event made its instance, the two that failed too (until 2026-12-08 a failed
    // call was no cold start, and its CPU counted nowhere).
    assert_eq!(stats.totals.instantiate_us.count, 55, "{:?}", stats.totals);
    assert_eq!(report.agent, "prom", "{report:?}");
    assert!(report.interval_secs > 0.5, "{report:?}");
    assert!(report.process.rss_bytes > 1_000_000, "{report:?}");
    // The rates are there: the report was read into its type.
    let stats = stats.totals;
    assert_eq!(stats.state_keys, 2, "{stats:?}");
    // The module in force, by hash, in the stats and in each dead letter.
    assert_eq!(
        stats.module_sha256.as_deref(),
        Some(sha.as_str()),
        "{stats:?}"
    );
    let (code, body) = get(metrics, "/metrics");
    assert_eq!(code, 200, "{body}");
    let labels = "function=\"f\",mode=\"on-demand\"";
    let ok = sample(
        &body,
        &format!("edge_agent_events_total{{{labels},outcome=\"succeeded\"}}"),
    );
    assert_eq!(ok, Some(stats.succeeded as f64), "{body}");
    let failed = sample(
        &body,
        &format!("edge_agent_events_total{{{labels},outcome=\"guest-error\"}}"),
    );
    assert_eq!(failed, Some(2.0), "{body}");
    let e2e = sample(
        &body,
        &format!("edge_agent_event_duration_seconds_count{{{labels},phase=\"end_to_end\"}}"),
    );
    assert_eq!(e2e, Some(stats.end_to_end_us.count as f64), "{body}");
    let inf = sample(
        &body,
        &format!(
            "edge_agent_event_duration_seconds_bucket{{{labels},phase=\"end_to_end\",le=\"+Inf\"}}"
        ),
    );
    assert_eq!(inf, e2e, "{body}");
    let cold = sample(
        &body,
        "edge_agent_cold_starts_total{function=\"f\",kind=\"instantiate\"}",
    );
    assert_eq!(cold, Some(stats.instantiate_us.count as f64), "{body}");
    let cpu = sample(
        &body,
        &format!("edge_agent_function_cpu_seconds_total{{{labels}}}"),
    );
    let expected_cpu = stats.cpu_total_us as f64 / 1e6;
    assert!(
        cpu.is_some_and(|c| c >= expected_cpu && c > 0.0),
        "{cpu:?} {body}"
    );
    assert_eq!(sample(&body, "edge_agent_broker_connected"), Some(1.0));
    assert_eq!(
        sample(&body, "edge_agent_state_keys{function=\"f\"}"),
        Some(stats.state_keys as f64),
        "{body}"
    );
    let disk = sample(&body, "edge_agent_state_disk_bytes");
    assert!(disk.is_some_and(|b| b > 0.0), "{body}");
    assert!(report.state_disk_bytes > 0, "{report:?}");
    // The three state writes were flushed: counted in the report, and by the scrape since.
    assert!(report.state_flushes > 0, "{report:?}");
    let flushes = sample(&body, "edge_agent_state_flushes_total");
    assert!(
        flushes.is_some_and(|n| n >= report.state_flushes as f64),
        "{flushes:?} {body}"
    );
    assert_eq!(
        sample(&body, "edge_agent_outputs_dropped_total"),
        Some(0.0),
        "{body}"
    );
    // The broker's round trip, timed on an output that went alone: a loopback's, and the
    // least of it can only have fallen between the report and the scrape.
    let reported = report.broker_round_trip_ms.expect("measured");
    let scraped = sample(&body, "edge_agent_broker_round_trip_seconds");
    assert!(
        scraped.is_some_and(|s| s > 0.0 && s * 1000.0 <= reported + 1e-6) && reported < 16.0,
        "{scraped:?} {reported} {body}"
    );
    assert!(sample(&body, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert!(body.contains("edge_agent_build_info{version=\""), "{body}");

    // Queue depth: a persistent instance busy for 3.5 s while 4 events wait behind it, seen
    // by a scrape and by a stats report, then back to 0.
    c.publish("slow/in", "sleep:3500").await;
    for _ in 0..4 {
        c.publish("slow/in", "ok").await;
    }
    let depth = |body: &str| sample(body, "edge_agent_queue_depth{function=\"slow\"}");
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while depth(&get(metrics, "/metrics").1) != Some(4.0) {
        assert!(std::time::Instant::now() < deadline, "queue depth never 4");
        std::thread::sleep(Duration::from_millis(20));
    }
    let queued = loop {
        let v = c.recv_on("edge-agent/prom/stats").await.json();
        let slow = v["functions"][1].clone();
        if slow["queue_depth"] == 4 || slow["succeeded"] == 5 {
            break slow;
        }
    };
    assert_eq!(queued["queue_depth"], 4, "{queued}");
    for _ in 0..5 {
        c.recv_on("out/slow").await;
    }
    assert_eq!(depth(&get(metrics, "/metrics").1), Some(0.0));
    let body = get(metrics, "/metrics").1;

    // A real parser of the format: promtool (Debian's `prometheus` package).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &body).expect("write");
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("promtool (apt-get install prometheus)");
    // It parses the body (a parse error fails here). Its linter is for the classic text
    // format, where a counter's HELP names `x_total`; OpenMetrics (which /metrics serves
    // and Prometheus reads) names the family `x`, so the one complaint allowed is "no help
    // text" for a `_total` counter whose family has its HELP line.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("parsing error"), "promtool: {said}\n{body}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        let family = line
            .strip_suffix(" no help text")
            .and_then(|n| n.strip_suffix("_total"))
            .unwrap_or_else(|| panic!("promtool: {line}\n{said}"));
        assert!(body.contains(&format!("# HELP {family} ")), "{line}");
    }
    dashboard_queries_parse_and_name_served_metrics(&body);
    c.publish("f/in", "err:once more").await;
    let letter = c.recv_on("edge-agent/prom/dead-letter").await.json();
    assert_eq!(
        letter["module_sha256"].as_str(),
        Some(sha.as_str()),
        "{letter}"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// The Grafana dashboard (docs/grafana/edge-agent.json): every query is PromQL that
/// promtool parses (as recording rules), and every metric it names is in `body`, a real
/// scrape. Its shape against Grafana's schema is checked by tests/grafana/check.sh.
fn dashboard_queries_parse_and_name_served_metrics(body: &str) {
    let path = crate::harness::repo_root().join("docs/grafana/edge-agent.json");
    let text = std::fs::read_to_string(&path).expect("docs/grafana/edge-agent.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = variable["query"]["query"].as_str() {
            // label_values(metric, label) is Grafana's, not PromQL: check its metric.
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .expect("label_values query");
            queries.push(metric.to_string());
        }
    }
    assert!(queries.len() >= 15, "{queries:?}");
    let served: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut rules = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let promql = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let names = promql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("edge_agent_") || w.starts_with("process_"));
        for name in names {
            assert!(
                served.contains(name),
                "the dashboard asks for {name}, not served:\n{body}"
            );
        }
        rules.push(serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": promql }));
    }
    // JSON is YAML: promtool reads it as a rule file.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let groups = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(file.path(), groups.to_string()).expect("write rules");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `edge-agent top` in a real terminal (tmux): both models' rows come live, and `q` quits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_both_models_live_and_quits_on_q() {
    let id = crate::harness::unique("top");
    let mut config = format!(
        "[agent]\nid = \"{id}\"\nstats_interval_secs = 1\n\
         [broker]\nurl = \"mqtt://127.0.0.1:0\"\nembedded = true\n"
    );
    for (name, mode) in [("od", "on-demand"), ("p", "persistent")] {
        config += &format!(
            "[[function]]\nname = \"{name}\"\nmodule = \"{}\"\nmode = \"{mode}\"\n\
             topics = [\"{name}/in\"]\n[function.config]\nout_topic = \"out/{name}\"\n",
            guest("echo")
        );
    }
    let agent = crate::harness::Agent::start(&config).await;
    let c = Client::connect(agent.port, &[]).await;
    // A tmux server of the test's own, so that nothing else's sessions are touched.
    let socket = format!("edge-agent-{id}");
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux)")
    };
    let command = format!(
        "{} top --broker mqtt://127.0.0.1:{} --agent {id}",
        crate::harness::agent_bin(),
        agent.port
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "20",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    // Events on both functions until both rows show a rate above zero.
    let row = |screen: &str, name: &str, mode: &str| -> Option<Vec<String>> {
        screen
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cells| cells.len() == 11 && cells[0] == name && cells[1] == mode)
    };
    let busy = |cells: &Option<Vec<String>>| {
        cells
            .as_ref()
            .and_then(|c| c[2].parse::<f64>().ok())
            .is_some_and(|rate| rate > 0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let screen = loop {
        for _ in 0..5 {
            c.publish("od/in", "x").await;
            c.publish("p/in", "x").await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pane = tmux(&["capture-pane", "-p", "-t", "top"]);
        let screen = String::from_utf8_lossy(&pane.stdout).into_owned();
        let (od, p) = (
            row(&screen, "od", "on-demand"),
            row(&screen, "p", "persistent"),
        );
        if busy(&od) && busy(&p) {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "top never showed both functions busy:\n{screen}"
        );
    };
    assert!(screen.contains(&format!("{id}  online")), "{screen}");
    assert!(screen.contains("FUNCTION"), "{screen}");
    // On demand, every event is a cold start; the persistent instance has none.
    let cold = |name, mode| row(&screen, name, mode).map(|c| c[5].clone());
    assert_ne!(cold("od", "on-demand").as_deref(), Some("0.0"), "{screen}");
    assert_eq!(cold("p", "persistent").as_deref(), Some("0.0"), "{screen}");
    tmux(&["send-keys", "-t", "top", "q"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tmux(&["has-session", "-t", "top"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "top did not quit on q"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tmux(&["kill-server"]);
    agent.stop().await;
}

/// A broker that refuses a function's subscription (SUBACK 0x80: an ACL or policy, as AWS
/// IoT Core and EMQX answer): `/readyz` says so, and the agent asks again until the broker
/// takes it, then the function hears its topic. Until 2026-12-08 the agent said it was
/// ready and never asked again: deaf until a restart (a probe). Mosquitto answers an ACL
/// denial with success and silence, so the broker here is a socket speaking MQTT with
/// rumqttc's codec, which refuses the intake's first two SUBSCRIBEs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_not_ready_and_asked_for_again() {
    use bytes::BytesMut;
    use rumqttc::{
        ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAX: usize = 1 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let refusals = Arc::new(AtomicUsize::new(0));
    let outputs = Arc::new(Mutex::new(Vec::<String>::new()));
    let (r, o) = (refusals.clone(), outputs.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (r, o) = (r.clone(), o.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let mut intake = false;
                loop {
                    let packet = loop {
                        if let Ok(p) = Packet::read(&mut buf, MAX) {
                            break p;
                        }
                        if !matches!(socket.read_buf(&mut buf).await, Ok(n) if n > 0) {
                            return;
                        }
                    };
                    let mut answer = Vec::new();
                    match packet {
                        Packet::Connect(c, ..) => {
                            intake = c.client_id.contains('.');
                            answer.push(Packet::ConnAck(ConnAck::new(
                                ConnectReturnCode::Success,
                                false,
                            )));
                        }
                        Packet::Subscribe(s) => {
                            let refuse = intake && r.fetch_add(1, Ordering::AcqRel) < 2;
                            let code = if refuse {
                                SubscribeReasonCode::Failure
                            } else {
                                SubscribeReasonCode::Success(QoS::AtLeastOnce)
                            };
                            answer.push(Packet::SubAck(SubAck::new(
                                s.pkid,
                                vec![code; s.filters.len()],
                            )));
                            if !refuse && intake {
                                answer.push(Packet::Publish(Publish::new(
                                    "in",
                                    QoS::AtMostOnce,
                                    "heard",
                                )));
                            }
                        }
                        Packet::Publish(p) => {
                            o.lock()
                                .expect("outputs")
                                .push(String::from_utf8_lossy(&p.payload).into_owned());
                            if p.qos != QoS::AtMostOnce {
                                answer.push(Packet::PubAck(PubAck::new(p.pkid)));
                            }
                        }
                        Packet::PingReq => answer.push(Packet::PingResp),
                        _ => {}
                    }
                    let mut out = BytesMut::new();
                    for p in answer {
                        p.write(&mut out, MAX).expect("encode");
                    }
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let metrics = broker_port();
    let config = format!(
        "[agent]\nid = \"refused\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [[function]]\nname = \"f\"\nmodule = \"{}\"\ntopics = [\"in\"]\n\
         [function.config]\nout_topic = \"out\"\n",
        guest("echo")
    );
    let agent = Process::spawn_in(
        tempfile::tempdir().expect("tempdir"),
        &config,
        port,
        "refused",
        &[],
    );
    crate::harness::eventually("the first refusal", || {
        refusals.load(Ordering::Acquire) >= 1
    })
    .await;
    crate::harness::eventually("readyz says the refusal", || {
        std::panic::catch_unwind(|| get(metrics, "/readyz")).is_ok_and(|(code, body)| {
            code == 503 && body.contains("the broker refused the subscription to in")
        })
    })
    .await;
    // Asked again after 1 s and 2 s: taken the third time, and the topic is heard.
    crate::harness::eventually("the function hears its topic", || {
        outputs
            .lock()
            .expect("outputs")
            .iter()
            .any(|o| o == "heard")
    })
    .await;
    assert_eq!(get(metrics, "/readyz"), (200, "ready\n".into()));
    let (_, log) = agent.stop();
    assert!(
        log.contains("broker took the subscription it had refused"),
        "{log}"
    );
}

//! Functions in Python and JavaScript (modules/examples-py, modules/examples-js): the same
//! outputs as the Rust examples, event for event, in both execution models, and the
//! agent's limits still hold over an interpreter.
//!
//! These components are built by `modules/build.sh` with the pinned toolchains of
//! `modules/guest-tools`. Without them the tests say so and pass, unless
//! `EDGE_AGENT_REQUIRE_GUEST_LANGS` is set (as `.ci/run` does), when they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

/// The languages, by the suffix of their components in `modules/dist`.
const LANGUAGES: [(&str, &str); 3] = [("rust", ""), ("py", "-py"), ("js", "-js")];
const MODES: [&str; 2] = ["on-demand", "persistent"];

/// Whether the Python and JavaScript components are built; panics if they must be.
fn guest_languages_built() -> bool {
    let dist = guests();
    let missing: Vec<_> = [
        "threshold-alert-py",
        "counter-py",
        "spin-py",
        "threshold-alert-js",
        "counter-js",
    ]
    .into_iter()
    .filter(|name| !dist.join(format!("{name}.wasm")).exists())
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{missing:?} not built: install the toolchains with modules/guest-tools/install.sh"
    );
    assert!(
        std::env::var_os("EDGE_AGENT_REQUIRE_GUEST_LANGS").is_none(),
        "{why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// One function per example, language and model, each publishing under its own label.
fn config() -> String {
    let mut cfg = embedded("languages");
    for (lang, suffix) in LANGUAGES {
        for mode in MODES {
            let label = format!("{lang}-{mode}");
            cfg.push_str(&format!(
                r#"
[[function]]
name = "threshold-{label}"
module = "{}"
mode = "{mode}"
topics = ["sensors/+/temperature"]
timeout_ms = 2000
[function.config]
threshold = "30"
# Every kind of placeholder, and text in braces that is not one: the SDKs' fill_topic
# must agree too.
alert_topic = "alerts/{label}/{{1..}}/{{a}}/{{{{1}}}}/x{{7}}/{{topic"

[[function]]
name = "counter-{label}"
module = "{}"
mode = "{mode}"
topics = ["counter/#"]
timeout_ms = 2000
[function.config]
out_topic = "counts/{label}/{{1..}}/{{0}}/{{9..}}"
"#,
                guest(&format!("threshold-alert{suffix}")),
                guest(&format!("counter{suffix}")),
            ));
        }
    }
    cfg
}

/// Payloads for threshold-alert, each on a topic of its own so that every outcome names
/// its event: alerts (number forms: integers exact past 2^53 and up to u64, floats in
/// shortest form with and without an exponent, sensor names to escape) and rejections.
fn threshold_payloads() -> Vec<(String, Vec<u8>)> {
    let values: &[&[u8]] = &[
        br#"{"value": 31.5}"#,
        br#"{"value": 30}"#,
        br#"{"value": 29.9}"#,
        br#"{"value": 45}"#,
        br#"{"value": 30.000001}"#,
        br#"{"value": 30.0000000000000001}"#,
        br#"{"value": 3.1e1}"#,
        br#"{"value": 1e3}"#,
        br#"{"value": 1e20}"#,
        br#"{"value": 123456789012345678}"#,
        br#"{"value": 18446744073709551615}"#,
        br#"{"value": 100000000000000000000}"#,
        br#"{"value": 1.7976931348623157e308}"#,
        br#"{"value": 12345678.125}"#,
        br#"{"value": -5}"#,
        br#"{"value": 31, "extra": {"list": [1, 2.5, "x"]}}"#,
        br#"{"value": "31"}"#,
        br#"{"temp": 31}"#,
        br#"{"value": true}"#,
        br#"{"value": null}"#,
        br#"[31]"#,
        b"31",
        b"hot",
        b"",
        br#"{"value": NaN}"#,
        b"{\"value\": 31, \"s\": \"\xff\xfe\"}",
        // What JavaScript or Python alone took (a probe, 2026-12-07): a number out of a
        // double's range, a byte-order mark, a lone surrogate escape.
        br#"{"value": 1e400}"#,
        b"\xef\xbb\xbf{\"value\": 40}",
        br#"{"value": 31, "note": "\ud800"}"#,
    ];
    let mut events: Vec<(String, Vec<u8>)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("sensors/s{i:02}/temperature"), v.to_vec()))
        .collect();
    // Sensor names JSON must escape or keep as they are.
    for (i, sensor) in ["küche", "a\"b\\c", "emoji🌡", ""].into_iter().enumerate() {
        events.push((
            format!("sensors/{sensor}{i}/temperature"),
            br#"{"value": 33.25}"#.to_vec(),
        ));
    }
    events
}

/// What each function did with the events: its outputs and its rejected topics.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcomes {
    published: BTreeSet<(String, String)>,
    rejected: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_match_rust_event_for_event_in_both_models() {
    if !guest_languages_built() {
        return;
    }
    let agent = Agent::start(&config()).await;
    let dead_letters = "edge-agent/languages/dead-letter";
    let mut c = Client::connect(agent.port, &["alerts/#", "counts/#", dead_letters]).await;

    let thresholds = threshold_payloads();
    for (topic, payload) in &thresholds {
        c.publish(topic, payload.clone()).await;
    }
    // Counter: interleaved topics, each counted from 1 by every function in its own state.
    let counted: Vec<String> = (0..24).map(|i| format!("counter/c{}", i % 3)).collect();
    for topic in &counted {
        c.publish(topic, "x").await;
    }

    // Wait until every function has finished every event it was sent.
    let expected = |name: &str| {
        if name.starts_with("threshold") {
            thresholds.len()
        } else {
            counted.len()
        }
    };
    let names: Vec<String> = LANGUAGES
        .iter()
        .flat_map(|(lang, _)| MODES.iter().map(move |mode| format!("{lang}-{mode}")))
        .flat_map(|label| [format!("threshold-{label}"), format!("counter-{label}")])
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut messages = Vec::new();
    loop {
        messages.extend(c.drain(Duration::from_millis(200)).await);
        let done = names.iter().all(|name| {
            let s = agent.snapshot(name);
            let failed: u64 = s.failed.iter().map(|(_, n)| n).sum();
            s.succeeded + failed == expected(name) as u64
        });
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "functions did not finish: {:?}",
            names
                .iter()
                .map(|n| (n, agent.snapshot(n).succeeded, agent.snapshot(n).failed))
                .collect::<Vec<_>>()
        );
    }
    messages.extend(c.drain(Duration::from_secs(1)).await);

    // Sort what arrived by the function that produced it.
    let mut by_function: BTreeMap<String, Outcomes> = BTreeMap::new();
    for m in &messages {
        if m.topic == dead_letters {
            let j = m.json();
            let function = j["function"].as_str().expect("function").to_string();
            assert_eq!(j["kind"], "guest-error", "{j}");
            by_function
                .entry(function)
                .or_default()
                .rejected
                .insert(j["topic"].as_str().expect("topic").to_string());
        } else {
            let mut levels = m.topic.splitn(3, '/');
            let kind = levels.next().expect("kind");
            let label = levels.next().expect("label");
            let rest = levels.next().expect("rest").to_string();
            let example = if kind == "alerts" {
                "threshold"
            } else {
                "counter"
            };
            by_function
                .entry(format!("{example}-{label}"))
                .or_default()
                .published
                .insert((rest, m.text()));
        }
    }

    // The Rust on-demand function is the reference; check it is the one we mean.
    let reference = |example: &str| &by_function[&format!("{example}-rust-on-demand")];
    let alerts = &reference("threshold").published;
    let at = |sensor: &str| format!("{sensor}/temperature/{{a}}/{{{sensor}}}/x/{{topic");
    assert!(alerts.contains(&(
        at("s00"),
        r#"{"sensor":"s00","value":31.5,"threshold":30}"#.into()
    )));
    assert!(alerts.contains(&(
        at("s10"),
        r#"{"sensor":"s10","value":18446744073709551615,"threshold":30}"#.into()
    )));
    assert!(
        alerts.contains(&(
            at("s08"),
            r#"{"sensor":"s08","value":1e+20,"threshold":30}"#.into()
        )),
        "{alerts:#?}"
    );
    assert_eq!(alerts.len(), 16, "{alerts:#?}");
    assert_eq!(reference("threshold").rejected.len(), 13);
    let counts = &reference("counter").published;
    assert_eq!(counts.len(), counted.len());
    assert!(counts.contains(&(
        "c2/counter/".into(),
        r#"{"count":8,"topic":"counter/c2"}"#.into()
    )));

    for example in ["threshold", "counter"] {
        for (lang, _) in LANGUAGES {
            for mode in MODES {
                let name = format!("{example}-{lang}-{mode}");
                assert_eq!(
                    by_function.get(&name),
                    Some(reference(example)),
                    "{name} differs from {example}-rust-on-demand"
                );
            }
        }
    }
    // Persistent instances were started once, on-demand ones once per event.
    for lang in ["py", "js"] {
        let p = agent.snapshot(&format!("counter-{lang}-persistent"));
        assert_eq!(p.restarts, 0, "{p:?}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_python_loop_is_stopped_by_the_timeout() {
    if !guest_languages_built() {
        return;
    }
    let mut cfg = embedded("spin");
    for mode in MODES {
        cfg.push_str(&format!(
            r#"
[[function]]
name = "spin-{mode}"
module = "{}"
mode = "{mode}"
topics = ["spin/{mode}"]
timeout_ms = 500
[function.config]
out_topic = "spun/{mode}"
"#,
            guest("spin-py")
        ));
    }
    let agent = Agent::start(&cfg).await;
    let dead_letters = "edge-agent/spin/dead-letter";
    let mut c = Client::connect(agent.port, &["spun/#", dead_letters]).await;
    for mode in MODES {
        let started = std::time::Instant::now();
        c.publish(&format!("spin/{mode}"), "loop").await;
        let m = c.recv_on(dead_letters).await;
        let j = m.json();
        assert_eq!(j["function"], format!("spin-{mode}"), "{j}");
        assert_eq!(j["kind"], "timeout", "{j}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped after {:?}",
            started.elapsed()
        );
        // And the function goes on with the next event.
        c.publish(&format!("spin/{mode}"), "next").await;
        let m = c.recv_on(&format!("spun/{mode}")).await;
        assert_eq!(m.text(), "done next");
    }
    let p = agent.snapshot("spin-persistent");
    assert_eq!(p.failed, vec![("timeout".into(), 1)]);
    assert_eq!(p.restarts, 1, "the looping instance was replaced: {p:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_projects_are_made_built_and_run_outside_the_repo() {
    // Where modules/guest-tools/install.sh put them (CI keeps them in its cache folder).
    let tools = std::env::var_os("EDGE_AGENT_GUEST_TOOLS")
        .map_or_else(|| repo_root().join("target/guest-tools"), PathBuf::from);
    if !guest_languages_built() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // The pinned toolchains, installed once (modules/guest-tools/install.sh), rather than
    // a venv and node_modules per project.
    let env = [("EDGE_AGENT_GUEST_TOOLS", tools.as_os_str())];
    let edge_agent = |args: &[&str]| edge_agent(tmp.path(), &env, args);
    edge_agent(&["new", "heat", "--lang", "python", "--template", "threshold"]);
    edge_agent(&["new", "tally", "--lang", "js", "-t", "counter"]);
    edge_agent(&["new", "say", "-l", "py"]);
    let mut config = embedded("outside");
    for name in ["heat", "tally", "say"] {
        let started = std::time::Instant::now();
        let printed = edge_agent(&["build", name]);
        eprintln!("{name}: built in {:.1?}", started.elapsed());
        // One line, `PATH  N bytes  sha256 HEX`, and the file is that component.
        let fields: Vec<&str> = printed.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "{printed}");
        let wasm = tmp
            .path()
            .join(name)
            .join("dist")
            .join(format!("{name}.wasm"));
        assert_eq!(fields[0], wasm.display().to_string());
        let bytes = std::fs::read(&wasm).expect("the built component");
        assert_eq!(
            fields[4],
            edge_agent::runtime::function::sha256_hex(&bytes),
            "{printed}"
        );
        config += &std::fs::read_to_string(tmp.path().join(name).join("function.toml"))
            .expect("function.toml");
    }
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["alerts/#", "tally/count/#", "say/out/#"]).await;
    c.publish("sensors/kitchen/temperature", r#"{"value": 31.5}"#)
        .await;
    let m = c.recv_on("alerts/kitchen/temperature").await;
    assert_eq!(
        m.text(),
        r#"{"sensor":"kitchen","value":31.5,"threshold":30}"#
    );
    for n in 1..=3 {
        c.publish("tally/in/door", "open").await;
        let m = c.recv_on("tally/count/door").await;
        assert_eq!(m.json()["count"], n, "{}", m.text());
    }
    c.publish("say/in/hello", "hi").await;
    assert_eq!(c.recv_on("say/out/hello").await.text(), "hi");
    agent.stop().await;
}

/// A function scaled to zero whose module takes longer to load than `keep_warm_secs` (a
/// Python `.wasm` compiles for seconds): the events that arrive during the load must all
/// use it, not load it again one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_after_scale_to_zero_serves_every_waiting_event() {
    if !guest_languages_built() {
        return;
    }
    let cfg = embedded("slowload")
        + &format!(
            r#"
[[function]]
name = "echo-py"
module = "{}"
mode = "on-demand"
topics = ["in/#"]
keep_warm_secs = 1
[function.config]
out_topic = "out/{{1..}}"
"#,
            guest("echo-py")
        );
    let agent = Agent::start(&cfg).await;
    let mut c = Client::connect(agent.port, &["out/#"]).await;
    // Lets the scale-to-zero timer run: idle for keep_warm_secs (1 s) since the load,
    // checked every 250 ms, so released by 1.25 s; nothing outside says it was, the load
    // count below does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..4 {
        c.publish(&format!("in/{i}"), "x").await;
        // Pacing: the events arrive one by one while the module loads again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while seen.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {seen:?} arrived"
        );
        seen.extend(
            c.drain(Duration::from_secs(1))
                .await
                .into_iter()
                .map(|m| m.topic),
        );
    }
    let s = agent.snapshot("echo-py");
    assert_eq!(
        s.load_us.count, 1,
        "the module was loaded again {} times for 4 events: {s:?}",
        s.load_us.count
    );
    agent.stop().await;
}

//! The fault suite: one fault per test, each with exact counts. The `counter` example keeps
//! one count per topic in the state store, so after a fault its count must equal the
//! number of distinct events sent: one more is an event whose effects were applied twice,
//! one fewer is an event lost. The agent runs as its own process (it is killed, its broker
//! restarted), and its store is read once it has stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Client, Mosquitto, Process, agent_bin, guest};

/// Two `counter`s, one per model, on `p/in` and `od/in`, counting into `out/p`, `out/od`.
fn counters(id: &str, url: &str, extra: &str) -> String {
    let function = |name: &str, mode: &str| {
        format!(
            "\n[[function]]\nname = \"{name}\"\nmodule = \"{}\"\nmode = \"{mode}\"\ntopics = [\"{name}/in\"]\n\
             [function.config]\nout_topic = \"out/{name}\"\n",
            guest("counter")
        )
    };
    format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"{url}\"\nclean_session = false\nreconnect_max_ms = 500\n{extra}{}{}",
        function("p", "persistent"),
        function("od", "on-demand"),
    )
}

/// Publishes `count` QoS 1 events to `topic` with `edge-agent publish`, in a blocking task.
fn publish(url: &str, topic: &str, count: u64) -> tokio::task::JoinHandle<()> {
    let (url, topic) = (url.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(agent_bin())
            .args(["publish", "--broker", &url, "--topic", &topic])
            .args([
                "--payload",
                "{seq}",
                "--qos",
                "1",
                "--count",
                &count.to_string(),
            ])
            .output()
            .expect("run edge-agent publish");
        assert!(
            out.status.success(),
            "publish to {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

/// Follows the counters' outputs: the highest count seen per function.
struct Counts {
    client: Client,
    seen: BTreeMap<String, i64>,
}

impl Counts {
    async fn follow(port: u16) -> Self {
        Self {
            client: Client::connect(port, &["out/#"]).await,
            seen: BTreeMap::new(),
        }
    }

    fn of(&self, function: &str) -> i64 {
        self.seen
            .get(&format!("out/{function}"))
            .copied()
            .unwrap_or(0)
    }

    /// Reads outputs until each of `functions` has counted `at_least`, or nothing has come
    /// for `quiet` (then it returns what it has).
    async fn until(&mut self, functions: &[&str], at_least: i64, quiet: Duration) {
        while functions.iter().any(|f| self.of(f) < at_least) {
            let Some(m) = self.client.next(quiet).await else {
                return;
            };
            let n = m.json()["count"].as_i64().unwrap_or(-1);
            let best = self.seen.entry(m.topic).or_default();
            *best = (*best).max(n);
        }
    }
}

/// The count under `count/<topic>` of `function` in the store of a stopped agent in `dir`.
fn stored_count(dir: &Path, function: &str, topic: &str) -> i64 {
    let store = edge_agent::state::StateStore::open(&dir.join("data"), &Default::default())
        .expect("the store opens after the fault");
    let ns = store.namespace(function).expect("namespace");
    let value = ns
        .begin()
        .get(&format!("count/{topic}"))
        .expect("read the count");
    value.map_or(0, |v| {
        String::from_utf8_lossy(&v)
            .parse()
            .expect("an integer count")
    })
}

/// Stops the agent and checks that each counter counted exactly `expected`; returns its log.
fn assert_counted(agent: Process, expected: i64, what: &str) -> String {
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(status.success(), "the agent did not stop cleanly:\n{log}");
    for f in ["p", "od"] {
        let n = stored_count(dir.path(), f, &format!("{f}/in"));
        assert_eq!(
            n,
            expected,
            "{what}: `{f}` counted {n} of {expected} events ({}):\n{}",
            if n > expected {
                "some twice"
            } else {
                "some lost"
            },
            log.lines()
                .filter(|l| !l.contains(" INFO "))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    log
}

/// Starts the counters on `broker`, stops them, and publishes `n` events to each while
/// they are away: the broker queues them on the agent's sessions, and the agent that
/// starts next finds a backlog.
async fn with_backlog(broker: &Mosquitto, id: &str, config: &str, n: u64) -> Process {
    let agent = Process::start(config, broker.port, id, &[]).await;
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(status.success(), "{log}");
    let (a, b) = (
        publish(&broker.url(), "p/in", n),
        publish(&broker.url(), "od/in", n),
    );
    a.await.expect("publish p");
    b.await.expect("publish od");
    Process::start_in(dir, config, broker.port, id).await
}

/// Mosquitto, persistent, is stopped (it saves its sessions and queues) in the middle of a
/// QoS 1 backlog and started again; more events follow. The broker resends what it had
/// not seen acknowledged, with DUP set: every event changes the count exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_persistence_counts_every_event_once() {
    const N: u64 = 3000;
    let broker = Mosquitto::start_persistent();
    let (port, url) = (broker.port, broker.url());
    let config = counters("restart-p", &url, "");
    let mut counts = Counts::follow(port).await;
    let agent = with_backlog(&broker, "restart-p", &config, N).await;
    // In the middle of the backlog.
    counts
        .until(&["p", "od"], 300, Duration::from_secs(10))
        .await;
    let broker = Mosquitto::restart_persistent(port, broker.stop());
    let (a, b) = (publish(&url, "p/in", N), publish(&url, "od/in", N));
    a.await.expect("publish p");
    b.await.expect("publish od");
    let mut counts = Counts::follow(port).await;
    counts
        .until(&["p", "od"], 2 * N as i64, Duration::from_secs(5))
        .await;
    assert_counted(agent, 2 * N as i64, "broker restarted with persistence");
    drop(broker);
}

/// Mosquitto without persistence restarts: it forgets the session (subscriptions, queued
/// messages, packet ids). The agent subscribes again; what it had counted stays counted,
/// once, and the events sent after the restart count once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_without_persistence_loses_no_count_and_repeats_none() {
    const N: u64 = 500;
    let broker = Mosquitto::start();
    let (port, url) = (broker.port, broker.url());
    let config = counters("restart-np", &url, "");
    let agent = Process::start(&config, port, "restart-np", &[]).await;
    let mut counts = Counts::follow(port).await;
    let (a, b) = (publish(&url, "p/in", N), publish(&url, "od/in", N));
    a.await.expect("publish p");
    b.await.expect("publish od");
    counts
        .until(&["p", "od"], N as i64, Duration::from_secs(5))
        .await;
    assert_eq!((counts.of("p"), counts.of("od")), (N as i64, N as i64));
    drop(counts);
    // Nothing kept: a new broker on the same port.
    let dir = broker.stop();
    drop(dir);
    let broker = Mosquitto::restart(port);
    // The agent is back when its new birth message is there.
    let mut status = Client::connect(port, &["edge-agent/restart-np/status"]).await;
    status.recv().await;
    let mut counts = Counts::follow(port).await;
    let (a, b) = (publish(&url, "p/in", N), publish(&url, "od/in", N));
    a.await.expect("publish p");
    b.await.expect("publish od");
    counts
        .until(&["p", "od"], 2 * N as i64, Duration::from_secs(5))
        .await;
    assert_counted(agent, 2 * N as i64, "broker restarted without persistence");
    drop(broker);
}

/// `kill -9` of the agent in the middle of a QoS 1 backlog, then a restart on the same
/// store: what was committed and acknowledged stays, what was committed and not yet
/// acknowledged is answered from its receipt when the broker sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_counts_every_event_once() {
    const N: u64 = 3000;
    let broker = Mosquitto::start();
    let config = counters("kill9", &broker.url(), "");
    let mut counts = Counts::follow(broker.port).await;
    let agent = with_backlog(&broker, "kill9", &config, N).await;
    counts
        .until(&["p", "od"], 300, Duration::from_secs(10))
        .await;
    let agent = agent.kill_and_restart(&config, &[]).await;
    counts
        .until(&["p", "od"], N as i64, Duration::from_secs(5))
        .await;
    assert_counted(agent, N as i64, "kill -9 mid-stream");
}

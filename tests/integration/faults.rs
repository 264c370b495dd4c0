//! The fault suite: one fault per test, each with exact counts. The `counter` example keeps
//! one count per topic in the state store, so after a fault its count must equal the
//! number of distinct events sent: one more is an event whose effects were applied twice,
//! one fewer is an event lost. The agent runs as its own process (it is killed, its broker
//! restarted), and its store is read once it has stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::harness::{
    Agent, Client, Mosquitto, Process, Proxy, SmallDisk, agent_bin, eventually, guest,
};

/// How many times each of the stream faults strikes within one stream: 1 here,
/// `EDGE_AGENT_FAULT_ROUNDS` in `tests/bench/faults.sh` (10 restarts, 10 kills, 5 cuts).
fn rounds() -> u64 {
    std::env::var("EDGE_AGENT_FAULT_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The count at which fault `round` (1-based) of `rounds()` strikes in a stream of `n`.
fn strike_at(round: u64, n: u64) -> i64 {
    (round * n / (rounds() + 1)).max(100) as i64
}

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

/// [`counters`] and `e`, an on-demand `echo` that writes no state (`e/in` to `out/e`).
fn counters_and_echo(id: &str, url: &str, extra: &str) -> String {
    counters(id, url, extra)
        + &format!(
            "\n[[function]]\nname = \"e\"\nmodule = \"{}\"\nmode = \"on-demand\"\n\
             topics = [\"e/in\"]\n[function.config]\nout_topic = \"out/e\"\n",
            guest("echo")
        )
}

/// Sends 20 events to each counter and waits until both have counted them.
async fn twenty_counted_before_the_fault(counts: &mut Counts, url: &str) {
    publish_both(url, 20, "{seq}").await;
    counts
        .until(&["p", "od"], 20, Duration::from_secs(10))
        .await;
    assert_eq!(
        (counts.of("p"), counts.of("od")),
        (20, 20),
        "before the fault"
    );
}

/// Publishes `count` QoS 1 events to `topic` with `edge-agent publish`, in a blocking task.
fn publish(url: &str, topic: &str, count: u64) -> tokio::task::JoinHandle<()> {
    publish_as(url, topic, count, "{seq}")
}

/// Publishes `count` events to each counter (`p/in`, `od/in`) at once, payloads from
/// `payload` ([`publish_as`]), and waits for both publishers.
async fn publish_both(url: &str, count: u64, payload: &str) {
    let (p, od) = (
        publish_as(url, "p/in", count, payload),
        publish_as(url, "od/in", count, payload),
    );
    p.await.expect("publish p");
    od.await.expect("publish od");
}

/// [`publish`] with a payload template (`{seq}` is the sequence number).
fn publish_as(url: &str, topic: &str, count: u64, payload: &str) -> tokio::task::JoinHandle<()> {
    let (url, topic, payload) = (url.to_string(), topic.to_string(), payload.to_string());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(agent_bin())
            .args(["publish", "--broker", &url, "--topic", &topic])
            .args(["--payload", &payload, "--qos", "1"])
            .args(["--count", &count.to_string()])
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

    /// Reads outputs until `n` have come from `e`, the echo of [`counters_and_echo`]
    /// (whatever the counters say meanwhile counts as in [`Self::until`]).
    async fn echoed(&mut self, n: usize) {
        let mut echoed = 0;
        while echoed < n {
            let m = self.client.recv().await;
            if m.topic == "out/e" {
                echoed += 1;
            } else if let Some(count) = m.json()["count"].as_i64() {
                let best = self.seen.entry(m.topic).or_default();
                *best = (*best).max(count);
            }
        }
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

/// The counts under `count/<f>/in` of each function `f` in the store of a stopped agent in
/// `dir` (one opening: sled lets go of its lock a moment after it is dropped).
fn stored_counts(dir: &Path, functions: &[&str]) -> Vec<i64> {
    let store = edge_agent::state::StateStore::open(&dir.join("data"), &Default::default())
        .expect("the store opens after the fault");
    functions
        .iter()
        .map(|f| {
            let ns = store.namespace(f).expect("namespace");
            let value = ns
                .begin()
                .get(&format!("count/{f}/in"))
                .expect("read the count");
            value.map_or(0, |v| {
                String::from_utf8_lossy(&v)
                    .parse()
                    .expect("an integer count")
            })
        })
        .collect()
}

/// Stops the agent and checks that each counter counted exactly `expected`; returns its log.
fn assert_counted(agent: Process, expected: i64, what: &str) -> String {
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(status.success(), "the agent did not stop cleanly:\n{log}");
    let functions = ["p", "od"];
    for (f, n) in functions.iter().zip(stored_counts(dir.path(), &functions)) {
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
                .filter(|l| !l.contains(" INFO ") || l.contains("function totals"))
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
    publish_both(&broker.url(), n, "{seq}").await;
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
    let mut broker = broker;
    for round in 1..=rounds() {
        // In the middle of the backlog.
        counts
            .until(&["p", "od"], strike_at(round, N), Duration::from_secs(10))
            .await;
        broker = Mosquitto::restart_persistent(port, broker.stop());
        counts = Counts::follow(port).await;
    }
    // Distinct from the first batch's: a message with the same topic and payload as an
    // earlier one on the same packet id can be taken for its resend (docs/state.md), and
    // Mosquitto numbers its messages from 1 again after a restart.
    publish_both(&url, N, "second-{seq}").await;
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
    publish_both(&url, N, "{seq}").await;
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
    publish_both(&url, N, "{seq}").await;
    counts
        .until(&["p", "od"], 2 * N as i64, Duration::from_secs(5))
        .await;
    let log = assert_counted(agent, 2 * N as i64, "broker restarted without persistence");
    // Each function is told its session went (until 2026-12-08 nothing was said).
    assert_eq!(
        log.matches("the broker did not keep this function's session")
            .count(),
        2,
        "{log}"
    );
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
    let mut agent = with_backlog(&broker, "kill9", &config, N).await;
    for round in 1..=rounds() {
        counts
            .until(&["p", "od"], strike_at(round, N), Duration::from_secs(10))
            .await;
        agent = agent.kill_and_restart(&config, &[]).await;
    }
    counts
        .until(&["p", "od"], N as i64, Duration::from_secs(5))
        .await;
    assert_counted(agent, N as i64, "kill -9 mid-stream");
}

/// `succeeded` of `function` in the agent's `function totals` log line at shutdown.
fn succeeded(log: &str, function: &str) -> u64 {
    total(log, function, "succeeded")
}

/// A count (`succeeded`, `replayed`) from `function`'s totals in the agent's log at stop.
fn total(log: &str, function: &str, count: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("function totals") && l.contains(&format!("function={function} ")))
        .unwrap_or_else(|| panic!("no totals for {function}:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(count)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {count}= in {line}"))
}

/// `echo` (no state, so no receipts in the store) in both models through a broker restart
/// with persistence in the middle of a backlog: no event is lost, and the resends of
/// events the agent had finished (their acknowledgements unread by the stopping broker)
/// are acknowledged without handling them again. How many are handled twice is printed
/// (tests/bench/faults.sh collects it) and held to issue 23's bound: the broker's in-flight
/// window plus one queue (20 + 64); 81-137 before resends were recognised, 0 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_stateless_event() {
    const N: u64 = 3000;
    let broker = Mosquitto::start_persistent();
    let (port, url) = (broker.port, broker.url());
    let echo = |name: &str, mode: &str| {
        format!(
            "\n[[function]]\nname = \"{name}\"\nmodule = \"{}\"\nmode = \"{mode}\"\ntopics = [\"{name}/in\"]\n\
             [function.config]\nout_topic = \"out/{name}\"\n",
            guest("echo")
        )
    };
    let config = format!(
        "[agent]\nid = \"dups\"\n[broker]\nurl = \"{url}\"\nclean_session = false\nreconnect_max_ms = 500\n{}{}",
        echo("p", "persistent"),
        echo("od", "on-demand")
    );
    let mut out = Client::connect(port, &["out/#"]).await;
    let agent = with_backlog(&broker, "dups", &config, N).await;
    let mut seen = 0;
    while seen < 300 {
        out.recv().await;
        seen += 1;
    }
    let broker = Mosquitto::restart_persistent(port, broker.stop());
    // Done when nothing more comes: the agent's totals say how many it handled.
    let mut out = Client::connect(port, &["out/#"]).await;
    while out.next(Duration::from_secs(3)).await.is_some() {}
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    for f in ["p", "od"] {
        let twice = succeeded(&log, f).saturating_sub(N);
        let known = total(&log, f, "replayed");
        eprintln!(
            "{f}: {twice} of {N} events handled twice across one broker restart \
             ({known} resends acknowledged as already handled)"
        );
        assert!(succeeded(&log, f) >= N, "{f}: events lost");
        assert!(
            twice <= 84,
            "{f}: {twice} events handled twice, over the in-flight window plus one queue (84)"
        );
    }
    drop(broker);
}

/// A slow function (20 ms an event) holds a full queue of a backlog when Mosquitto
/// restarts with persistence. Once the agent's new connection resumes the session, the
/// broker redelivers those events: the queued copies are left to the redelivery instead of
/// being handled twice. Only what ran before the reconnection is handled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resumed_session_queued_events_are_left_to_their_redelivery() {
    const N: usize = 150;
    let broker = Mosquitto::start_persistent();
    let (port, url) = (broker.port, broker.url());
    let config = format!(
        "[agent]\nid = \"slow\"\n[broker]\nurl = \"{url}\"\nclean_session = false\nreconnect_max_ms = 200\n\
         [[function]]\nname = \"p\"\nmodule = \"{}\"\nmode = \"persistent\"\ntopics = [\"p/in\"]\n\
         [function.config]\nout_topic = \"out/p\"\n",
        guest("misbehave")
    );
    let agent = Process::start(&config, port, "slow", &[]).await;
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(status.success(), "{log}");
    publish_as(&url, "p/in", N as u64, "slow-echo:20:{seq}")
        .await
        .expect("publish");
    // A session of its own that outlives the restart: the outputs the broker took before
    // it stopped are its to deliver (the agent does not send them again).
    let mut out = Client::connect_persistent(port, "slow-out", &["out/p"]).await;
    let agent = Process::start_in(dir, &config, port, "slow").await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        seen.insert(out.recv().await.payload);
    }
    let broker = Mosquitto::restart_persistent(port, broker.stop());
    while seen.len() < N {
        let m = out.recv().await;
        seen.insert(m.payload);
    }
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let twice = succeeded(&log, "p").saturating_sub(N as u64);
    eprintln!("{twice} of {N} events handled twice across one broker restart");
    // 0-1 here: an event still running when its resend arrived. Handling the queued
    // copies as well made it 83 (the queue, 64, and more); handling again the resends of
    // events already finished, 25.
    assert!(
        twice <= 40,
        "{twice} events handled twice: the queued copies were handled as well as their redeliveries"
    );
    drop(broker);
}

/// The agent's connections go silent (a proxy stops all traffic, the sockets stay open)
/// for longer than the keep-alive, in the middle of a backlog. The agent notices by its
/// keep-alive, reconnects once the path is back, and catches up: every event counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_longer_than_the_keep_alive_loses_and_repeats_nothing() {
    const N: u64 = 1000;
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port).await;
    let config = counters(
        "partition",
        &format!("mqtt://127.0.0.1:{}", proxy.port),
        "keep_alive_secs = 5\n",
    );
    let mut counts = Counts::follow(broker.port).await;
    let agent = with_backlog(&broker, "partition", &config, N).await;
    counts
        .until(&["p", "od"], 100, Duration::from_secs(10))
        .await;
    proxy.pause(true);
    // Mosquitto drops a client after 1.5 keep-alives of silence; the agent gives up on
    // its connections after a keep-alive without a ping answered.
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.pause(false);
    let healed = std::time::Instant::now();
    counts
        .until(&["p", "od"], N as i64, Duration::from_secs(10))
        .await;
    eprintln!(
        "caught up {:?} after the partition healed",
        healed.elapsed()
    );
    assert_counted(agent, N as i64, "a silent partition");
}

/// A broker slower to answer a connection than rumqttc's own 5 s (a connection takes
/// about three round trips of a slow mobile link over TLS): the agent waits for the answer
/// (`broker.connect_timeout_secs`, 30 s by default) rather than give up and begin again,
/// which on such a link never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_slower_to_answer_than_five_seconds_is_waited_for() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port).await;
    proxy.pause(true);
    let id = format!("slow-{}", std::process::id());
    let url = format!("mqtt://127.0.0.1:{}", proxy.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Process::spawn_in(dir, &counters(&id, &url, ""), broker.port, &id, &[]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.pause(false);
    agent.wait_online().await;
    let (status, log) = agent.stop();
    assert!(
        status.success() && !log.contains("Network timeout"),
        "a connection attempt was given up on:\n{log}"
    );
}

/// Two agents with one id on one broker (a config copied to a second device, a second
/// `edge-agent run` by mistake): Mosquitto closes the older connection whenever the other
/// connects with the same client id, so each takes the other's sessions in turn, and over
/// MQTT 3.1.1 the broker says nothing about why. Each agent must say what is probably
/// wrong rather than reconnect in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_id_are_told_so() {
    let broker = Mosquitto::start();
    let config = counters("twin", &broker.url(), "");
    let (a, b) = (Agent::start(&config).await, Agent::start(&config).await);
    let told = |agent: &Agent| {
        let last = agent.links().borrow().overall().last_error;
        last.is_some_and(|e| e.contains("same client id"))
    };
    eventually("both agents to name the client id they share", || {
        told(&a) && told(&b)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// An ext4 file system on a loop device over an image file, mounted on `dir`: a disk whose
/// power can be cut. The image file holds exactly what reached the block device: what was
/// synced, plus whatever the kernel happened to write back (also a legal state after a
/// power cut), and none of the dirty pages still in the page cache. A copy of it taken
/// while the agent is frozen is the disk as a power cut at that instant leaves it.
struct PowerDisk {
    dir: std::path::PathBuf,
    image: std::path::PathBuf,
    device: String,
}

impl PowerDisk {
    fn mount(dir: &Path, image: &Path) -> Option<Self> {
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let img = image.to_str().expect("utf-8 path");
        if !image.exists() {
            // ext4, the Pi's; `EDGE_AGENT_FAULT_FS=xfs` (or `btrfs`) runs the power-cut
            // tests on another.
            let fs = std::env::var("EDGE_AGENT_FAULT_FS").unwrap_or_else(|_| "ext4".into());
            let (mb, force) = match fs.as_str() {
                "xfs" => (320, "-f"),
                "btrfs" => (256, "-f"),
                _ => (256, "-F"),
            };
            std::fs::File::create(image)
                .and_then(|f| f.set_len(mb * 1024 * 1024))
                .expect("image file");
            run(&format!("mkfs.{fs}"), &["-q", force, img])
                .unwrap_or_else(|| panic!("mkfs.{fs} failed or is not installed"));
        }
        std::fs::create_dir_all(dir).expect("mount point");
        let device = run("losetup", &["-f", "--show", img]);
        let mounted = device
            .as_ref()
            .and_then(|d| run("mount", &[d, dir.to_str().expect("utf-8 path")]));
        let (Some(device), Some(_)) = (device.clone(), mounted) else {
            if let Some(d) = device {
                run("losetup", &["-d", &d]);
            }
            assert!(
                std::env::var_os("EDGE_AGENT_REQUIRE_FAULTS").is_none(),
                "EDGE_AGENT_REQUIRE_FAULTS is set but a loop device cannot be mounted (run as root)"
            );
            eprintln!("skipped: mounting a loop device needs root");
            return None;
        };
        Some(Self {
            dir: dir.into(),
            image: image.into(),
            device,
        })
    }

    /// The disk as a power cut now leaves it: a copy of the image (take it while the
    /// writer is frozen).
    fn cut(&self, to: &Path) {
        std::fs::copy(&self.image, to).expect("copy the image");
    }
}

impl Drop for PowerDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.device])
            .status();
    }
}

/// The power goes out in the middle of a QoS 1 backlog: the agent is frozen, the disk is
/// taken as a cut leaves it (unsynced writes gone), the agent is killed, and a new one
/// starts on that disk. The store opens, nothing acknowledged is lost (a lost write whose
/// event was acknowledged would leave the count short: the broker would not resend it),
/// and nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_mid_stream_loses_nothing_acknowledged_and_counts_once() {
    const N: u64 = 3000;
    let images = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Some(disk) = PowerDisk::mount(&data, &images.path().join("disk.img")) else {
        return;
    };
    let broker = Mosquitto::start();
    let config = counters("power", &broker.url(), "");
    let mut counts = Counts::follow(broker.port).await;
    let agent = Process::start_in(dir, &config, broker.port, "power").await;
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(status.success(), "{log}");
    publish_both(&broker.url(), N, "{seq}").await;
    let mut agent = Process::start_in(dir, &config, broker.port, "power").await;
    let mut disk = disk;
    for round in 1..=rounds() {
        counts
            .until(&["p", "od"], strike_at(round, N), Duration::from_secs(10))
            .await;
        agent.signal("STOP");
        let after = images.path().join(format!("after-cut-{round}.img"));
        disk.cut(&after);
        let dir = agent.kill_keeping_dir();
        drop(disk);
        disk = PowerDisk::mount(&data, &after).expect("the disk after the cut mounts");
        agent = Process::start_in(dir, &config, broker.port, "power").await;
    }
    counts
        .until(&["p", "od"], N as i64, Duration::from_secs(5))
        .await;
    let log = assert_counted(agent, N as i64, "a power cut mid-stream");
    assert!(
        !log.contains("empty/corrupt configuration"),
        "sled's conf lost:\n{log}"
    );
    drop(disk);
}

/// A file the agent replaces (a config a deployment rewrites, the deployment record, a
/// session file, a compiled module) is on the disk when `replace` returns: a power cut
/// right after leaves the new one. Until 2026-12-06 the rename waited for ext4's next
/// commit (up to 5 s), and a cut in between brought the old file back after the agent had
/// gone on with the new one.
#[test]
fn a_replaced_file_is_the_new_one_after_a_power_cut_right_after() {
    let images = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Some(disk) = PowerDisk::mount(&data, &images.path().join("disk.img")) else {
        return;
    };
    let path = data.join("agent.toml");
    edge_agent::files::replace(&path, b"old").expect("write the file");
    edge_agent::files::replace(&path, b"new").expect("replace it");
    let after = images.path().join("after-cut.img");
    disk.cut(&after);
    drop(disk);
    let disk = PowerDisk::mount(&data, &after).expect("the disk after the cut mounts");
    let kept = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
    drop(disk);
    assert_eq!(kept, "new", "the file after a power cut");
}

/// A disk fault the agent meets while running.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DiskFault {
    /// Another program fills the disk to the last byte; the store keeps its default
    /// reserve, so it stops writing before sled meets the full disk.
    FullDisk,
    /// The same with the reserve off (`min_free_mb = 0`): sled meets ENOSPC in a flush
    /// and stops for good, so the agent reopens it once the space is back, and runs again
    /// the events whose commits were in memory only.
    FullDiskNoReserve,
    /// The disk stops answering writes (`fsfreeze`, as an SD card that stalls for its own
    /// housekeeping or is failing): nothing fails, a flush just never ends until it thaws.
    Stall,
    /// The disk is full when the agent starts (a restart, a reboot): sled cannot open the
    /// store at all, and the agent starts without it.
    FullAtStart,
}

/// The disk under a fault: a small tmpfs to fill, or an ext4 on a loop device to freeze.
enum FaultyDisk {
    Small(SmallDisk),
    Loop {
        disk: PowerDisk,
        _images: tempfile::TempDir,
    },
}

impl FaultyDisk {
    fn mount(fault: DiskFault, data: &Path) -> Option<Self> {
        if fault == DiskFault::Stall {
            let images = tempfile::tempdir().expect("tempdir");
            let disk = PowerDisk::mount(data, &images.path().join("disk.img"))?;
            Some(Self::Loop {
                disk,
                _images: images,
            })
        } else {
            // The default reserve (64 MiB) on a small disk.
            SmallDisk::mount(data, 80).map(Self::Small)
        }
    }

    /// Brings the fault on; what it returns takes it away when dropped.
    fn strike(&self) -> Box<dyn std::any::Any> {
        struct Filler(std::path::PathBuf);
        impl Drop for Filler {
            fn drop(&mut self) {
                std::fs::remove_file(&self.0).expect("free the space");
            }
        }
        struct Frozen(std::path::PathBuf);
        impl Drop for Frozen {
            fn drop(&mut self) {
                // Also when the test fails: a frozen file system cannot be unmounted.
                let ok = std::process::Command::new("fsfreeze")
                    .arg("-u")
                    .arg(&self.0)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "fsfreeze -u {}", self.0.display());
            }
        }
        match self {
            Self::Small(disk) => Box::new(Filler(disk.fill())),
            Self::Loop { disk, .. } => {
                let ok = std::process::Command::new("fsfreeze")
                    .arg("-f")
                    .arg(&disk.dir)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "fsfreeze -f {} (util-linux)", disk.dir.display());
                Box::new(Frozen(disk.dir.clone()))
            }
        }
    }
}

/// Runs the counters and `echo` (no state) on a small disk, brings on `fault` with 100
/// events waiting for each, and takes it away again. The functions that write state pause:
/// none of their events is dead-lettered, no instance restarted, the agent says it is
/// degraded (and why); `echo` goes on. Once the fault is gone the paused functions resume
/// by themselves within seconds, and every event counts exactly once.
async fn pause_and_resume(fault: DiskFault) {
    let broker = Mosquitto::start();
    let (port, url) = (broker.port, broker.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = FaultyDisk::mount(fault, &dir.path().join("data")) else {
        return;
    };
    let id = format!("disk-{}", std::process::id());
    let state = match fault {
        DiskFault::FullDiskNoReserve => "[state]\nmin_free_mb = 0\n",
        _ => "",
    };
    let config = counters_and_echo(&id, &url, state);
    let mut dead = Client::connect(port, &[&format!("edge-agent/{id}/dead-letter")]).await;
    let mut counts = Counts::follow(port).await;
    let agent = Process::start_in(dir, &config, port, &id).await;
    twenty_counted_before_the_fault(&mut counts, &url).await;

    let (agent, fault_on) = if fault == DiskFault::FullAtStart {
        let (status, log, dir) = agent.stop_keeping_dir();
        assert!(status.success(), "{log}");
        let fault_on = disk.strike();
        (Process::start_in(dir, &config, port, &id).await, fault_on)
    } else {
        (agent, disk.strike())
    };
    for topic in ["p/in", "od/in", "e/in"] {
        publish(&url, topic, 100).await.expect("publish");
    }
    // The function without state goes on.
    let mut echoed = 0;
    while echoed < 100 {
        let m = counts.client.recv().await;
        if m.topic == "out/e" {
            echoed += 1;
        } else {
            let n = m.json()["count"].as_i64().unwrap_or(-1);
            counts.seen.insert(m.topic, n);
        }
    }
    // The agent says why the others wait (a stall once a flush has waited 5 s).
    let mut status = Client::connect(port, &[&format!("edge-agent/{id}/status")]).await;
    let degraded = async {
        loop {
            let s: edge_agent::messages::Status = status.recv().await.message();
            if let Some(reason) = s.degraded {
                break reason;
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(15), degraded)
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: the agent's status never said it was degraded"));
    match fault {
        DiskFault::FullDisk | DiskFault::FullAtStart => {
            assert!(reason.contains("disk is full"), "{reason}");
        }
        DiskFault::Stall => assert!(reason.contains("waited 5 s for the disk"), "{reason}"),
        DiskFault::FullDiskNoReserve => {}
    }
    // Nothing is counted while the disk fails, beyond commits made in memory before sled
    // met the fault (those are run again later, and counted once).
    tokio::time::sleep(Duration::from_millis(500)).await;

    drop(fault_on);
    let back = std::time::Instant::now();
    let before = (counts.of("p"), counts.of("od"));
    counts
        .until(
            &["p", "od"],
            before.0.min(before.1) + 1,
            Duration::from_secs(10),
        )
        .await;
    let resumed = back.elapsed();
    eprintln!("{fault:?}: resumed {resumed:?} after the fault went");
    assert!(
        resumed < Duration::from_secs(5),
        "{fault:?}: resumed {resumed:?} after the fault went"
    );
    counts
        .until(&["p", "od"], 120, Duration::from_secs(5))
        .await;
    // The last status says so (earlier ones may be queued: each change of reason is one).
    loop {
        let s: edge_agent::messages::Status = status.recv().await.message();
        if s.degraded.is_none() {
            break;
        }
    }
    let letters = dead.drain(Duration::from_millis(200)).await;
    assert!(
        letters.is_empty(),
        "{fault:?}: {} dead letters, the first: {}",
        letters.len(),
        letters[0].text()
    );
    let log = assert_counted(agent, 120, &format!("{fault:?}, then back"));
    assert!(
        !log.contains("instance restarted") && !log.contains("instance stopped"),
        "{fault:?} counted against the restart policy:\n{log}"
    );
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_state_functions_until_space_returns() {
    pause_and_resume(DiskFault::FullDisk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_met_by_sled_itself_reopens_the_store_and_counts_once() {
    pause_and_resume(DiskFault::FullDiskNoReserve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_pauses_the_state_functions_and_says_so() {
    pause_and_resume(DiskFault::Stall).await;
}

/// Started on a full disk, the agent runs the functions without state and opens the store
/// once there is room (before, it exited at start-up, and systemd restarted it every 2 s:
/// no function ran at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_on_a_full_disk_runs_and_opens_its_store_when_there_is_room() {
    pause_and_resume(DiskFault::FullAtStart).await;
}

/// A data directory on a read-only file system: the agent does not start, and says which
/// directory and why (one that turns read-only while the agent runs: the next test).
#[test]
fn a_read_only_data_directory_is_refused_at_start_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), 8) else {
        return;
    };
    disk.remount("ro");
    let config = counters("ro", "mqtt://127.0.0.1:1", "");
    std::fs::write(dir.path().join("agent.toml"), config).expect("config");
    let out = std::process::Command::new(agent_bin())
        .args(["run", "--config", "agent.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("agent.data_dir") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}

/// An agent's folder whose `data` is a file system of its own, on a loop device over an
/// image file; `None` (the test skipped) without root, or without the file system's tools
/// (unless `EDGE_AGENT_REQUIRE_FAULTS` is set).
struct DiskUnder {
    /// The agent's folder (its data directory is `data` in it).
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    /// The image's folder, kept for as long as the disk is used.
    _images: tempfile::TempDir,
    image: std::path::PathBuf,
    disk: PowerDisk,
}

/// [`DiskUnder`] of `bytes` made by `mkfs` (the command and its arguments; the image's
/// path comes last).
fn disk_under(mkfs: &[&str], bytes: u64) -> Option<DiskUnder> {
    let (dir, images) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (data, image) = (dir.path().join("data"), images.path().join("disk.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(bytes))
        .expect("image file");
    let made = std::process::Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&image)
        .status();
    if made.is_err() {
        assert!(
            std::env::var_os("EDGE_AGENT_REQUIRE_FAULTS").is_none(),
            "EDGE_AGENT_REQUIRE_FAULTS is set but there is no {}",
            mkfs[0]
        );
        eprintln!("skipped: no {}", mkfs[0]);
        return None;
    }
    assert!(made.is_ok_and(|s| s.success()), "{mkfs:?}");
    let disk = PowerDisk::mount(&data, &image)?;
    Some(DiskUnder {
        dir,
        data,
        _images: images,
        image,
        disk,
    })
}

/// A [`DiskUnder`] of ext4 made with `errors` (`mkfs.ext4 -e`: what the file system does
/// at an error; the mount takes it from the superblock), and the file that makes it meet
/// an error (`trigger_fs_error`); `None` (the test skipped) without that file.
fn ext4_that_errs(errors: &str) -> Option<(DiskUnder, String)> {
    let ext4 = disk_under(&["mkfs.ext4", "-q", "-F", "-e", errors], 256 * 1024 * 1024)?;
    let knob = format!(
        "/sys/fs/ext4/{}/trigger_fs_error",
        ext4.disk.device.trim_start_matches("/dev/")
    );
    if !Path::new(&knob).exists() {
        assert!(
            std::env::var_os("EDGE_AGENT_REQUIRE_FAULTS").is_none(),
            "EDGE_AGENT_REQUIRE_FAULTS is set but this kernel has no {knob}"
        );
        eprintln!("skipped: no {knob}");
        return None;
    }
    Some((ext4, knob))
}

/// After a fault on the disk of an agent running [`counters_and_echo`]: 100 events to
/// each function, the echo's 100 answers (it writes no state), then the agent's status
/// until its degraded reason is `wanted` (`what`), for 15 s at most. The agent is stopped;
/// it must have said so and stopped cleanly. Returns its log and folder.
async fn paused_saying(
    agent: Process,
    counts: &mut Counts,
    (url, port, id): (&str, u16, &str),
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> (String, tempfile::TempDir) {
    for topic in ["p/in", "od/in", "e/in"] {
        publish(url, topic, 100).await.expect("publish");
    }
    counts.echoed(100).await;
    let mut status = Client::connect(port, &[&format!("edge-agent/{id}/status")]).await;
    let mut reasons = Vec::new();
    let said = async {
        loop {
            let s: edge_agent::messages::Status = status.recv().await.message();
            match s.degraded {
                Some(reason) if wanted(&reason) => break,
                Some(reason) => reasons.push(reason),
                None => {}
            }
        }
    };
    let named = tokio::time::timeout(Duration::from_secs(15), said)
        .await
        .is_ok();
    let (status, log, dir) = agent.stop_keeping_dir();
    assert!(
        named,
        "the agent's status never named {what}: {reasons:?}\n{log}"
    );
    assert!(status.success(), "the agent did not stop cleanly:\n{log}");
    (log, dir)
}

/// The data directory's ext4 turns read-only under the agent, as an ext4 mounted
/// `errors=remount-ro` (Raspberry Pi OS's root) does at its first disk error (made here
/// with ext4's `trigger_fs_error`): the functions that write state pause and the agent
/// names the cause; the one without state goes on. Only `fsck` and a new mount end it, so
/// the agent is stopped, the disk checked and mounted again, and a new agent counts every
/// event once: nothing acknowledged is lost (the error comes while the last of the first
/// 20 are being flushed, where ext4's fsync can say that writes are on disk that its
/// aborted journal never committed), and the commits that were not on disk run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_turned_read_only_pauses_with_its_cause_and_counts_once_after_fsck() {
    let broker = Mosquitto::start();
    let (port, url) = (broker.port, broker.url());
    let Some((ext4, knob)) = ext4_that_errs("remount-ro") else {
        return;
    };
    let id = format!("ro-{}", std::process::id());
    let config = counters_and_echo(&id, &url, "");
    let mut counts = Counts::follow(port).await;
    let agent = Process::start_in(ext4.dir, &config, port, &id).await;
    twenty_counted_before_the_fault(&mut counts, &url).await;

    std::fs::write(&knob, "edge-agent test").expect("trigger an ext4 error");
    // The first reason may be the write that met the error (EIO); the store's reopen then
    // meets the read-only file system, and the reason names it, and what to do.
    let (log, dir) = paused_saying(
        agent,
        &mut counts,
        (&url, port, &id),
        "the read-only file system and fsck",
        |r| r.contains("Read-only file system") && r.contains("fsck"),
    )
    .await;
    // Shown only if the test fails: what the store did around the error.
    eprintln!("the agent before the fsck:\n{log}");
    drop(ext4.disk);
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-y", ext4.image.to_str().expect("utf-8 path")])
        .output()
        .expect("e2fsck (e2fsprogs)");
    let said = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        fsck.status.code().is_some_and(|c| c < 4),
        "e2fsck left errors: {said}"
    );
    eprintln!("e2fsck: {said}");
    let disk = PowerDisk::mount(&ext4.data, &ext4.image).expect("the disk mounts after fsck");
    let agent = Process::start_in(dir, &config, port, &id).await;
    // What was acknowledged is on disk; the broker sends the rest again, and each counts
    // once.
    counts
        .until(&["p", "od"], 120, Duration::from_secs(10))
        .await;
    assert_counted(agent, 120, "an ext4 error, then fsck");
    drop(disk);
}

/// What the store's flush relies on to tell an `fdatasync` answered by an aborted journal
/// (ext4 counts the error in `errors_count` only after it has written the journal's
/// superblock, and a flush in between saw success and the old count): a journal
/// transaction begun after the error fails, with the read-only file system's error.
#[test]
fn an_aborted_ext4_journal_refuses_the_flushs_last_check() {
    let Some((ext4, knob)) = ext4_that_errs("remount-ro") else {
        return;
    };
    // EROFS
    flushs_last_check_refused(ext4, 30, |_| {
        std::fs::write(&knob, "edge-agent test").expect("trigger an ext4 error");
    });
}

/// The same check on an XFS shut down (an `fsync` under way at the shutdown can say yes
/// for writes that its log replay then does not have): refused with the I/O error.
#[test]
fn a_shut_down_xfs_refuses_the_flushs_last_check() {
    let Some(xfs) = disk_under(&["mkfs.xfs", "-q", "-f"], 320 * 1024 * 1024) else {
        return;
    };
    // EIO
    flushs_last_check_refused(xfs, 5, |data| {
        let shut = std::process::Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(data)
            .status()
            .expect("xfs_io (xfsprogs)");
        assert!(shut.success(), "xfs_io -x -c shutdown");
    });
}

/// On `disk`: a synced file passes the store's last check, and after `fault` (given the
/// disk's mount point) fails it with the error `errno`.
fn flushs_last_check_refused(disk: DiskUnder, errno: i32, fault: impl FnOnce(&Path)) {
    let db = disk.data.join("db");
    std::fs::write(&db, [7u8; 4096]).expect("write a file on the disk");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open it for writing");
    file.sync_data().expect("fdatasync");
    edge_agent::files::takes_writes_after_sync(&file).expect("a healthy disk takes a write");
    fault(&disk.data);
    let refused = edge_agent::files::takes_writes_after_sync(&file)
        .expect_err("the file system took a change after its fault");
    assert_eq!(refused.raw_os_error(), Some(errno), "{refused}");
    drop(file);
    drop(disk.disk);
}

/// A disk that turns read-only while the agent is idle: no write of the store meets the
/// error before the stop, whose last flush does. The agent says so and stops cleanly;
/// sled's drop used to panic when its own sync failed (the agent aborted: status 134 on a
/// device build, 101 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_turned_read_only_while_idle_lets_the_agent_stop_cleanly() {
    let broker = Mosquitto::start();
    let Some((ext4, knob)) = ext4_that_errs("remount-ro") else {
        return;
    };
    let id = format!("idle-ro-{}", std::process::id());
    let mut counts = Counts::follow(broker.port).await;
    let agent = Process::start_in(
        ext4.dir,
        &counters(&id, &broker.url(), ""),
        broker.port,
        &id,
    )
    .await;
    twenty_counted_before_the_fault(&mut counts, &broker.url()).await;
    std::fs::write(&knob, "edge-agent test").expect("trigger an ext4 error");
    let (status, log) = agent.stop();
    assert!(
        status.success() && !log.contains("panicked"),
        "the agent did not stop cleanly ({status}):\n{log}"
    );
    assert!(
        log.contains("the state store's last flush failed")
            && log.contains("Read-only file system"),
        "{log}"
    );
    drop(ext4.disk);
}

/// The data directory's file system shuts down under the agent, as XFS does at a
/// metadata or log error (made here with `xfs_io -x -c shutdown`, which also drops the
/// log it has not written, as a crash does): every later I/O fails. The functions that
/// write state pause and the agent names the I/O error and what to do (the store's reopen
/// used to say "File exists": sled's `create_dir_all` on a shut-down XFS); the one without
/// state goes on, a reload that adds a counter is taken, and `check` refuses the data
/// directory with the I/O error. Stopped, the disk mounted again (XFS replays its log), a
/// new agent counts every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_shut_down_under_the_agent_says_so_and_counts_once_mounted_again() {
    let kernel = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !kernel
        .lines()
        .any(|l| l.trim_start_matches("nodev").trim() == "xfs")
    {
        eprintln!("skipped: this kernel has no XFS");
        return;
    }
    // XFS's smallest (xfsprogs 5.19 and later), sparse.
    if let Some(xfs) = disk_under(&["mkfs.xfs", "-q", "-f"], 320 * 1024 * 1024) {
        shut_down_under_the_agent(xfs).await;
    }
}

/// The same on ext4, which takes the same request (`EXT4_IOC_SHUTDOWN`): its journal is
/// aborted with the transaction under way, where an `fsync` may be answered before the
/// abort is seen (the flush's journal check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ext4_shut_down_under_the_agent_says_so_and_counts_once_mounted_again() {
    if let Some(ext4) = disk_under(&["mkfs.ext4", "-q", "-F"], 256 * 1024 * 1024) {
        shut_down_under_the_agent(ext4).await;
    }
}

async fn shut_down_under_the_agent(disk: DiskUnder) {
    let broker = Mosquitto::start();
    let (port, url) = (broker.port, broker.url());
    let id = format!("shut-{}", std::process::id());
    let config = counters_and_echo(&id, &url, "");
    let mut counts = Counts::follow(port).await;
    let agent = Process::start_in(disk.dir, &config, port, &id).await;
    twenty_counted_before_the_fault(&mut counts, &url).await;
    let shut = std::process::Command::new("xfs_io")
        .args(["-x", "-c", "shutdown"])
        .arg(&disk.data)
        .status()
        .expect("xfs_io (xfsprogs)");
    assert!(shut.success(), "xfs_io -x -c shutdown");
    // A reload during the fault is taken, and the counter it adds pauses like the others:
    // it was refused, by the data directory's probe and then for the new function's state.
    let mut reloads = Client::connect(port, &[&format!("edge-agent/{id}/reload")]).await;
    let added = "\n[[function]]\nname = \"q\"\nmodule = \"".to_string()
        + &guest("counter")
        + "\"\nmode = \"persistent\"\ntopics = [\"q/in\"]\n";
    std::fs::write(agent.config_path(), config.clone() + &added).expect("edit the config");
    agent.signal("HUP");
    let reload = reloads
        .next(Duration::from_secs(20))
        .await
        .expect("no reload result")
        .json();
    assert_eq!(reload["ok"], true, "{reload}");
    let (log, dir) = paused_saying(
        agent,
        &mut counts,
        (&url, port, &id),
        "the I/O error of the reopen",
        |r| {
            r.starts_with("the state store cannot be opened again")
                && r.contains("I/O error, see `dmesg`")
        },
    )
    .await;
    assert!(
        !log.contains("File exists")
            && !log.contains("last flush failed: the state store is not open"),
        "an error named by its symptom:\n{log}"
    );
    // Until it is mounted again the data directory is refused, with the I/O error (the
    // check used to find it missing and probe the folder above instead).
    let check = std::process::Command::new(agent_bin())
        .args(["check", "--config", "agent.toml"])
        .current_dir(dir.path())
        .output()
        .expect("edge-agent check");
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.code() == Some(78)
            && said.contains("agent.data_dir")
            && said.contains("Input/output error"),
        "{said}"
    );
    drop(disk.disk);
    let mounted = PowerDisk::mount(&disk.data, &disk.image).expect("the disk mounts again");
    let agent = Process::start_in(dir, &config, port, &id).await;
    counts
        .until(&["p", "od"], 120, Duration::from_secs(10))
        .await;
    // On a miscount, the agent before the fault says what it did too (one CI run found
    // both counters at 100 of 120: the 20 acknowledged before the fault gone).
    let before: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" INFO ") || l.contains("function totals"))
        .collect();
    let what = format!(
        "a file system shut down, then mounted again (the agent before the fault:\n{})",
        before.join("\n")
    );
    assert_counted(agent, 120, &what);
    drop(mounted);
}

/// An ext4 that goes on after an error (`errors=continue`, mkfs's default) stays writable,
/// but a flush under way at the error cannot tell whether its writes reached the disk
/// (ext4's fsync says yes either way): the store says why, opens again, and runs that
/// flush's commits again; every event counts once, with no restart. `check` says the disk
/// has met an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ext4_error_on_a_disk_that_goes_on_costs_a_reopen_and_counts_once() {
    let broker = Mosquitto::start();
    let (port, url) = (broker.port, broker.url());
    let Some((ext4, knob)) = ext4_that_errs("continue") else {
        return;
    };
    let id = format!("errs-{}", std::process::id());
    let config = counters(&id, &url, "");
    let mut counts = Counts::follow(port).await;
    let agent = Process::start_in(ext4.dir, &config, port, &id).await;
    twenty_counted_before_the_fault(&mut counts, &url).await;
    std::fs::write(&knob, "edge-agent test").expect("trigger an ext4 error");
    publish_both(&url, 100, "{seq}").await;
    counts
        .until(&["p", "od"], 120, Duration::from_secs(10))
        .await;
    // Until an fsck, `check` (and each start) says that the disk has met an error.
    let config_path = agent.config_path();
    let check = std::process::Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&config_path)
        .current_dir(config_path.parent().expect("the agent's folder"))
        .output()
        .expect("edge-agent check");
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && said.contains("has met 1 error(s) since it was last checked"),
        "{said}"
    );
    let log = assert_counted(agent, 120, "an ext4 error on a disk that goes on");
    assert!(
        log.contains("met an error (ext4 errors_count 0 when the store was opened, 1 now")
            && log.contains("state store reopened"),
        "the store neither said that its file system met an error nor opened again:\n{log}"
    );
    drop(ext4.disk);
}

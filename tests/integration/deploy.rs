//! Signed deployments to three agents on one Mosquitto (`[fleet]`, `edge-agent keygen`,
//! `edge-agent deploy`): a deployment swaps a function on every agent under a stream and
//! loses nothing; every kind of bad deployment is refused by every agent, whose functions
//! stay as they were; functions that fail on probation are rolled back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edge_agent::deployment::{Document, Envelope};
use edge_agent::messages::{DeploymentReport, DeploymentState};

use super::harness::*;

/// A key pair made by `edge-agent keygen` in `dir`; the private key's path and the public
/// key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new(agent_bin())
        .arg("keygen")
        .arg(&key)
        .output()
        .expect("run keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (key, public)
}

/// A directory to deploy: `functions.toml` with `function` (a `[[function]]` table) and the
/// guest modules it names.
fn bundle(dir: &Path, function: &str, guests_used: &[&str]) -> PathBuf {
    let b = dir.join(format!("bundle-{}", unique("b")));
    std::fs::create_dir_all(&b).expect("bundle dir");
    for g in guests_used {
        std::fs::copy(guest(g), b.join(format!("{g}.wasm"))).expect("copy module");
    }
    std::fs::write(b.join("functions.toml"), function).expect("functions.toml");
    b
}

/// The deployment most tests make: `f` becomes `misbehave` (shared by `g`, `in/+` to `out`).
fn misbehave_bundle(dir: &Path) -> PathBuf {
    bundle(
        dir,
        "[[function]]\nname = \"f\"\nmodule = \"misbehave.wasm\"\nshare = \"g\"\n\
         topics = [\"in/+\"]\n[function.config]\nout_topic = \"out\"\n",
        &["misbehave"],
    )
}

fn deploy(broker: &Mosquitto, key: &Path, bundle: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args([
            "deploy",
            "--group",
            "site",
            "--broker",
            &broker.url(),
            "--key",
        ])
        .arg(key)
        .args(extra)
        .arg(bundle)
        .output()
        .expect("run deploy")
}

/// `echo` shared by the group, out on `out`: what every agent runs before a deployment.
fn member(broker: &Mosquitto, id: &str, public: &str) -> String {
    format!(
        "[agent]\nid = \"{id}\"\n[broker]\nurl = \"{}\"\n\
         [fleet]\ngroup = \"site\"\ntrusted_keys = [\"{public}\"]\nprobation_secs = 1\n\
         [[function]]\nname = \"f\"\nmodule = \"{}\"\nshare = \"g\"\ntopics = [\"in/+\"]\n\
         [function.config]\nout_topic = \"out\"\n",
        broker.url(),
        guest("echo")
    )
}

async fn fleet(broker: &Mosquitto, public: &str) -> Vec<Agent> {
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(Agent::start(&member(broker, &unique(&format!("dep{i}")), public)).await);
    }
    agents
}

fn sha256_of(path: &str) -> String {
    edge_agent::deployment::sha256_hex(&std::fs::read(path).expect("module"))
}

/// `deploy` ended well (with `--wait`: every agent applied it).
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `guest`'s module to `to` with its last byte changed: a file that does not match
/// the signed SHA-256.
fn changed_copy(guest_name: &str, to: &Path) {
    let mut bytes = std::fs::read(guest(guest_name)).expect("the module");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(to, &bytes).expect("a changed copy");
}

/// Waits until each of `n` agents has reported `state` for a deployment, whose reason
/// contains `reason`; the reports.
async fn reports(
    c: &mut Client,
    n: usize,
    state: DeploymentState,
    reason: &str,
) -> BTreeMap<String, DeploymentReport> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        let m = c.recv().await;
        if !m.topic.ends_with("/deployment") {
            continue;
        }
        let r: DeploymentReport = m.message();
        if r.state == state && r.reason.as_deref().unwrap_or("").contains(reason) && !r.probation {
            got.insert(r.agent.clone(), r);
        }
    }
    got
}

/// Three agents share `echo`; a signed deployment of `misbehave` (several chunks) swaps it
/// on all three under a 500 events/s stream: every event is answered once, by one version
/// or the other, and every agent ends on the new module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_deployment_swaps_a_function_on_three_agents_under_a_stream() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path(), "ops.key");
    let agents = fleet(&broker, &public).await;
    let b = misbehave_bundle(dir.path());
    let mut out = Client::connect(broker.port, &["out"]).await;
    let producer = Client::connect(broker.port, &[]).await;
    const N: usize = 3000;
    let stream = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for i in 0..N {
            tick.tick().await;
            producer
                .publish(&format!("in/{}", i % 10), format!("slow-echo:0:{i}"))
                .await;
        }
        producer
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let (broker_url, key2, b2) = (broker.url(), key.clone(), b.clone());
    let done = tokio::task::spawn_blocking(move || {
        Command::new(agent_bin())
            .args([
                "deploy",
                "--group",
                "site",
                "--broker",
                &broker_url,
                "--key",
            ])
            .arg(&key2)
            .args(["--chunk-bytes", "16384", "--wait", "3", "--wait-secs", "30"])
            .arg(&b2)
            .output()
            .expect("run deploy")
    })
    .await
    .expect("deploy");
    let took = started.elapsed();
    assert!(
        done.status.success(),
        "deploy: {}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("chunk(s)") && !stderr.contains(" 1 chunk(s)"),
        "{stderr}"
    );
    let _producer = stream.await.expect("the stream");
    let (mut seen, mut new_version) = (vec![0u32; N], 0usize);
    let mut distinct = 0;
    while distinct < N {
        let text = out.recv().await.text();
        let (i, new) = match text.strip_prefix("slow-echo:0:") {
            Some(i) => (i, false),
            None => (text.as_str(), true),
        };
        let i: usize = i.parse().expect("an event number");
        if seen[i] == 0 {
            distinct += 1;
        }
        seen[i] += 1;
        new_version += usize::from(new);
    }
    let extra = out.drain(Duration::from_millis(300)).await;
    let twice: u32 = seen.iter().map(|n| n - 1).sum::<u32>() + extra.len() as u32;
    eprintln!(
        "deployment applied by 3 agents in {took:?} (1 s probation included); \
         {N} of {N} answered, {new_version} by the new version, {twice} twice"
    );
    assert_eq!(twice, 0, "answered twice");
    assert!(new_version > 0, "the new version answered nothing");
    let sha = sha256_of(&guest("misbehave"));
    for a in &agents {
        assert_eq!(a.snapshot("f").module_sha256.as_deref(), Some(sha.as_str()));
        let text = std::fs::read_to_string(a.dir().join("agent.toml")).expect("config");
        assert!(text.contains(&sha) && text.contains("[fleet]"), "{text}");
    }
    // One agent gone: a wait for three that runs out names it with its last report, read
    // from what the broker retains (until 2026-12-08 those were dropped unread, and the
    // error said no agent of the group had reported).
    let mut agents = agents;
    let gone = agents.pop().expect("three agents");
    let config = std::fs::read_to_string(gone.dir().join("agent.toml")).expect("config");
    let gone_id = config
        .lines()
        .find_map(|l| l.strip_prefix("id = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("agent.id")
        .to_string();
    gone.stop().await;
    let again = deploy(&broker, &key, &b, &["--wait", "3", "--wait-secs", "3"]);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{said}");
    assert!(
        said.contains("2 of 3 agent(s) applied deployment 2")
            && said.contains(&format!(
                "not applied by: {gone_id} (no report since this deployment: offline?; its \
                 last, from before: site/1 applied"
            )),
        "{said}"
    );
    // The same version again, signed by a key the agents do not trust: refused, which the
    // agents' retained "applied" of that version from before must not hide (it did, the
    // wait read it as this deployment's, 2026-12-08).
    let (other, _) = keygen(dir.path(), "other.key");
    let forged = deploy(
        &broker,
        &other,
        &b,
        &["--version", "2", "--wait", "2", "--wait-secs", "10"],
    );
    let said = String::from_utf8_lossy(&forged.stderr);
    assert!(!forged.status.success(), "{said}");
    assert!(said.contains("refused"), "{said}");
}

/// Every kind of bad deployment is refused by all three agents with one clear line, and
/// their functions and config files stay as they were; then a deployment whose function
/// fails every event is applied and rolled back on probation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployments_are_refused_by_every_agent_and_change_nothing() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path(), "ops.key");
    let (other, _) = keygen(dir.path(), "other.key");
    let agents = fleet(&broker, &public).await;
    let configs: Vec<String> = agents
        .iter()
        .map(|a| std::fs::read_to_string(a.dir().join("agent.toml")).expect("config"))
        .collect();
    let echo = sha256_of(&guest("echo"));
    let mut c = Client::connect(broker.port, &["edge-agent/+/deployment", "out"]).await;
    let good = misbehave_bundle(dir.path());
    let unchanged = |what: &str| {
        for (a, before) in agents.iter().zip(&configs) {
            assert_eq!(
                a.snapshot("f").module_sha256.as_deref(),
                Some(echo.as_str()),
                "{what}"
            );
            let now = std::fs::read_to_string(a.dir().join("agent.toml")).expect("config");
            assert_eq!(&now, before, "{what}: the config file changed");
        }
    };
    let doc_topic = "edge-agent/fleet/site/deployment";
    let signed = |version: u64| -> (Envelope, Document) {
        let b = edge_agent_fleet::bundle(&good).expect("bundle");
        let k = edge_agent_fleet::read_key(&key).expect("key");
        edge_agent_fleet::seal(&b, "site", version, 16384, None, &k)
    };

    // Unsigned.
    let (mut e, _) = signed(1);
    e.signature = None;
    c.publish(doc_topic, serde_json::to_vec(&e).expect("json"))
        .await;
    reports(&mut c, 3, DeploymentState::Refused, "unsigned").await;
    unchanged("unsigned");

    // Retained, unsigned, with the largest version there is: deploy takes nothing from a
    // document its key did not sign (until 2026-12-08 this refused every --version as not
    // newer, and the next default version wrapped to 0).
    let (mut e, _) = signed(u64::MAX);
    e.signature = None;
    c.publish_retained(doc_topic, serde_json::to_vec(&e).expect("json"))
        .await;
    reports(&mut c, 3, DeploymentState::Refused, "unsigned").await;

    // Signed with a key the agents do not trust: `--wait` says so with the agents' reason
    // (it cannot be told by its version, which the agents cannot trust).
    let wait = ["--version", "2", "--wait", "3", "--wait-secs", "60"];
    let started = std::time::Instant::now();
    let wrong = deploy(&broker, &other, &good, &wait);
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{said}");
    assert!(said.contains("refused: wrongly signed"), "{said}");
    assert!(
        said.contains("(it claims version 18446744073709551615) was not signed by this key"),
        "{said}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{said}"
    );
    reports(&mut c, 3, DeploymentState::Refused, "wrongly signed").await;
    unchanged("wrongly signed");

    // A tampered module: the signed document is right, a chunk on the broker is not.
    let (e, doc) = signed(5);
    let m = &doc.modules["misbehave.wasm"];
    let bytes = std::fs::read(good.join("misbehave.wasm")).expect("module");
    for (i, chunk) in bytes.chunks(16384).enumerate() {
        let mut chunk = chunk.to_vec();
        if i == 1 {
            chunk[10] ^= 0xff;
        }
        let topic = edge_agent::deployment::chunk_topic("edge-agent", "site", &m.sha256, i);
        c.publish_retained(&topic, chunk).await;
    }
    c.publish(doc_topic, serde_json::to_vec(&e).expect("json"))
        .await;
    let r = reports(
        &mut c,
        3,
        DeploymentState::Refused,
        "tampered module misbehave.wasm",
    )
    .await;
    eprintln!(
        "tampered: {:?}",
        r.values().next().and_then(|r| r.reason.clone())
    );
    unchanged("tampered");

    // Older than (or a replay of) the last one tried.
    let (e, _) = signed(4);
    c.publish(doc_topic, serde_json::to_vec(&e).expect("json"))
        .await;
    reports(&mut c, 3, DeploymentState::Refused, "replayed or older").await;
    unchanged("older");

    // A deployment that would not pass `check` (its function subscribes to nothing).
    let bad = bundle(
        dir.path(),
        "[[function]]\nname = \"f\"\nmodule = \"echo.wasm\"\nshare = \"g\"\ntopics = []\n",
        &["echo"],
    );
    let refused = deploy(
        &broker,
        &key,
        &bad,
        &["--version", "6", "--wait", "3", "--wait-secs", "20"],
    );
    assert!(
        !refused.status.success(),
        "deploy --wait must fail when refused"
    );
    let line = String::from_utf8_lossy(&refused.stderr);
    assert!(line.contains("refused: does not pass check"), "{line}");
    reports(&mut c, 3, DeploymentState::Refused, "does not pass check").await;
    unchanged("check");

    // The functions still answer, with the old version.
    c.publish("in/x", "still here").await;
    assert_eq!(c.recv_on("out").await.text(), "still here");

    // Applied, then every event fails (`nope` is no command of misbehave's): rolled back
    // within probation, back to echo.
    // The events go on until the rollback is seen: applying takes each agent a compile,
    // which on a loaded machine outlasted a fixed stream of 4 s (nothing then failed
    // within probation, and no rollback came).
    let producer = Client::connect(broker.port, &[]).await;
    let streaming = Arc::new(AtomicBool::new(true));
    let stream = tokio::spawn({
        let streaming = streaming.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while streaming.load(Ordering::Relaxed) {
                tick.tick().await;
                producer.publish("in/y", "nope").await;
            }
        }
    });
    let applied = deploy(&broker, &key, &good, &["--version", "7"]);
    succeeded(&applied);
    let r = reports(
        &mut c,
        3,
        DeploymentState::RolledBack,
        "failed within probation",
    )
    .await;
    eprintln!(
        "rolled back: {:?}",
        r.values().next().and_then(|r| r.reason.clone())
    );
    streaming.store(false, Ordering::Relaxed);
    stream.await.expect("the stream");
    unchanged("rolled back");

    // Modules already on the devices (`--modules-at`): a file that does not match the
    // signed hash is refused like a tampered chunk; the right one is applied.
    let on_device = dir.path().join("on-device");
    std::fs::create_dir(&on_device).expect("dir");
    changed_copy("counter", &on_device.join("counter.wasm"));
    let b = bundle(
        dir.path(),
        "[[function]]\nname = \"f\"\nmodule = \"counter.wasm\"\nshare = \"g\"\n\
         topics = [\"in/+\"]\n[function.config]\nout_topic = \"out\"\n",
        &["counter"],
    );
    let at = on_device.display().to_string();
    let tampered = deploy(&broker, &key, &b, &["--version", "8", "--modules-at", &at]);
    succeeded(&tampered);
    reports(
        &mut c,
        3,
        DeploymentState::Refused,
        "counter.wasm: the file at",
    )
    .await;
    unchanged("a changed file on the device");
    std::fs::copy(guest("counter"), on_device.join("counter.wasm")).expect("the right copy");
    let good = deploy(
        &broker,
        &key,
        &b,
        &["--version", "9", "--modules-at", &at, "--wait", "3"],
    );
    succeeded(&good);
    let counter = sha256_of(&guest("counter"));
    for a in &agents {
        assert_eq!(
            a.snapshot("f").module_sha256.as_deref(),
            Some(counter.as_str())
        );
    }

    // Modules on a web server (`--modules-at http://...`): fetched by each agent (through
    // a redirect here), checked like a download: a changed file is refused, the right one
    // applied.
    let web = dir.path().join("web");
    std::fs::create_dir(&web).expect("dir");
    changed_copy("rolling-average", &web.join("rolling-average.wasm"));
    let server = FileServer::start(web.clone()).await;
    let b = bundle(
        dir.path(),
        "[[function]]\nname = \"f\"\nmodule = \"rolling-average.wasm\"\nshare = \"g\"\n\
         topics = [\"in/+\"]\n[function.config]\nout_topic = \"out\"\n",
        &["rolling-average"],
    );
    let url = format!("http://127.0.0.1:{}/redirect", server.port);
    let tampered = deploy(
        &broker,
        &key,
        &b,
        &["--version", "10", "--modules-at", &url],
    );
    succeeded(&tampered);
    reports(
        &mut c,
        3,
        DeploymentState::Refused,
        "rolling-average.wasm: the file at http://127.0.0.1",
    )
    .await;
    std::fs::copy(guest("rolling-average"), web.join("rolling-average.wasm"))
        .expect("the right copy");
    let good = deploy(
        &broker,
        &key,
        &b,
        &["--version", "11", "--modules-at", &url, "--wait", "3"],
    );
    succeeded(&good);
    let average = sha256_of(&guest("rolling-average"));
    for a in &agents {
        assert_eq!(
            a.snapshot("f").module_sha256.as_deref(),
            Some(average.as_str())
        );
    }
    assert!(
        server.requests() >= 12,
        "each agent fetched each version through the redirect: {} requests",
        server.requests()
    );

    // A forged document refused, then the one in force published again: the agents say it
    // is in force (their last report was the refusal, and `--wait` waited out its time).
    let (mut e, _) = signed(12);
    e.signature = None;
    c.publish_retained(doc_topic, serde_json::to_vec(&e).expect("json"))
        .await;
    reports(&mut c, 3, DeploymentState::Refused, "unsigned").await;
    let again = deploy(
        &broker,
        &key,
        &b,
        &["--version", "11", "--modules-at", &url, "--wait", "3"],
    );
    succeeded(&again);

    // A broker that comes back without its retained messages hears each agent's state
    // again once it reconnects (until 2026-12-08 `fleet status` showed none until the next
    // deployment).
    drop(c);
    let port = broker.port;
    drop(broker.stop());
    let broker = Mosquitto::restart(port);
    let mut c = Client::connect(broker.port, &["edge-agent/+/deployment"]).await;
    let again = reports(&mut c, 3, DeploymentState::Applied, "").await;
    assert!(again.values().all(|r| r.version == Some(11)), "{again:?}");
}

/// A web server for the files of one directory, for as long as it lives: `GET /NAME`
/// answers the file, `GET /redirect/NAME` a redirect to `/NAME`, anything else 404.
struct FileServer {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    async fn start(dir: PathBuf) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = dir.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (status, extra, body) = if let Some(rest) = path.strip_prefix("/redirect") {
                        ("302 Found", format!("Location: {rest}\r\n"), Vec::new())
                    } else {
                        match std::fs::read(dir.join(path.trim_start_matches('/'))) {
                            Ok(b) => ("200 OK", String::new(), b),
                            Err(_) => ("404 Not Found", String::new(), Vec::new()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self {
            port,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `deploy` cannot use is named before it connects, with exit status 64.
/// A deployment that meets a full disk is refused for now, says why, changes nothing, and
/// is taken by itself once there is room again (no new version needed). Its module is in
/// more chunks (1,275) than Mosquitto queues for one client by default (1,000, retained
/// messages sent on a subscription included; the rest are dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_meets_a_full_disk_is_taken_once_there_is_room() {
    let broker = Mosquitto::start_with("max_queued_messages 1000\n");
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "ops.key");
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), 16) else {
        return;
    };
    // No state here: the store's free-space reserve would only pause stateful functions.
    let config = member(&broker, &unique("full"), &public) + "[state]\nmin_free_mb = 0\n";
    let agent = Agent::start_in(dir, &config).await;
    let mut c = Client::connect(broker.port, &["edge-agent/+/deployment", "out"]).await;
    let filler = disk.fill();
    let b = misbehave_bundle(keys.path());
    succeeded(&deploy(&broker, &key, &b, &["--chunk-bytes", "100"]));
    let refused = reports(&mut c, 1, DeploymentState::Refused, "No space left").await;
    let why = refused.values().next().and_then(|r| r.reason.clone());
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("trying again in")),
        "{why:?}"
    );
    // Still the version before.
    c.publish("in/1", "slow-echo:0:1").await;
    assert_eq!(c.recv_on("out").await.text(), "slow-echo:0:1");
    let sha = sha256_of(&guest("misbehave"));
    assert_ne!(
        agent.snapshot("f").module_sha256.as_deref(),
        Some(sha.as_str())
    );

    std::fs::remove_file(filler).expect("free the space");
    let freed = Instant::now();
    reports(&mut c, 1, DeploymentState::Applied, "").await;
    eprintln!("applied {:?} after the space came back", freed.elapsed());
    assert_eq!(
        agent.snapshot("f").module_sha256.as_deref(),
        Some(sha.as_str())
    );
    c.publish("in/1", "slow-echo:0:2").await;
    assert_eq!(c.recv_on("out").await.text(), "2");
    drop(agent);
    drop(disk);
}

/// An agent that stops during a deployment's probation without a clean stop (SIGKILL
/// here; out of memory, a crash and a power cut end the same way) starts again on the
/// config it had before and reports the deployment rolled back: a deployment that kills
/// the agent would otherwise be started again at every restart, and never rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_on_probation_starts_again_on_the_config_before() {
    let broker = Mosquitto::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "ops.key");
    let id = unique("onprobation");
    let config = member(&broker, &id, &public).replace("probation_secs = 1", "probation_secs = 60");
    let agent = Process::start(&config, broker.port, &id, &[]).await;
    let mut c = Client::connect(broker.port, &["edge-agent/+/deployment", "out"]).await;
    succeeded(&deploy(&broker, &key, &misbehave_bundle(keys.path()), &[]));
    loop {
        let m = c.recv().await;
        if m.topic.ends_with("/deployment") {
            let r: DeploymentReport = m.message();
            if r.state == DeploymentState::Applied && r.probation {
                break;
            }
        }
    }
    let deployed = std::fs::read_to_string(agent.config_path()).expect("config");
    assert!(deployed.contains("misbehave"), "{deployed}");
    let agent = agent.kill_and_restart(&deployed, &[]).await;
    let r = reports(
        &mut c,
        1,
        DeploymentState::RolledBack,
        "stopped during the probation",
    )
    .await;
    assert_eq!(r.values().next().map(|r| r.in_force), Some(None), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(agent.config_path()).expect("config"),
        config,
        "the config file as it was before the deployment"
    );
    // echo again (misbehave would answer "2"), and the deployment is not taken again when
    // its retained document comes at the next connection.
    c.publish("in/1", "slow-echo:0:2").await;
    assert_eq!(c.recv_on("out").await.text(), "slow-echo:0:2");
    let (status, log, _) = agent.stop_keeping_dir();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("deployment applied").count(), 0, "{log}");
}

/// A clean stop (SIGTERM) during probation ends it as passed, and the retained report
/// says so: it was published after the output connection had closed, and said
/// `probation: true` until the next start (a probe, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_on_probation_is_reported_as_past_it() {
    let broker = Mosquitto::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "ops.key");
    let id = unique("stoponprobation");
    let config = member(&broker, &id, &public).replace("probation_secs = 1", "probation_secs = 60");
    let agent = Agent::start(&config).await;
    let topic = format!("edge-agent/{id}/deployment");
    let mut c = Client::connect(broker.port, &[topic.as_str()]).await;
    succeeded(&deploy(&broker, &key, &misbehave_bundle(keys.path()), &[]));
    loop {
        let r: DeploymentReport = c.recv_on(&topic).await.message();
        if r.state == DeploymentState::Applied && r.probation {
            break;
        }
    }
    let dir = agent.stop().await;
    let mut retained = Client::connect(broker.port, &[topic.as_str()]).await;
    let r: DeploymentReport = retained.recv_on(&topic).await.message();
    assert!(
        r.state == DeploymentState::Applied && !r.probation && r.in_force == Some(1),
        "{r:?}"
    );
    assert!(
        !dir.path().join("data/deployment/probation.json").exists(),
        "the probation is over"
    );
}

/// Through the embedded broker (the demo's): rumqttd 0.20 hands a new subscription at most
/// 100 retained messages at QoS 1 and drops the rest, so a module of more than 100 chunks
/// never arrived (an 18 MB Python component in 281). The agent takes chunks at QoS 0
/// there. About 320 chunks here, in two blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_of_many_chunks_arrives_through_the_embedded_broker() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "ops.key");
    let config = embedded(&unique("embdeploy"))
        + &format!(
            "[fleet]\ngroup = \"site\"\ntrusted_keys = [\"{public}\"]\nprobation_secs = 1\n\
             [[function]]\nname = \"f\"\nmodule = \"{}\"\nshare = \"g\"\ntopics = [\"in/+\"]\n\
             [function.config]\nout_topic = \"out\"\n",
            guest("echo")
        );
    let agent = Agent::start(&config).await;
    let out = Command::new(agent_bin())
        .args(["deploy", "--group", "site", "--broker"])
        .arg(format!("mqtt://127.0.0.1:{}", agent.port))
        .arg("--key")
        .arg(&key)
        .args(["--chunk-bytes", "400", "--wait", "1"])
        .arg(misbehave_bundle(keys.path()))
        .output()
        .expect("run deploy");
    succeeded(&out);
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Over 100 chunks, in two blocks of up to 256 (the module's size varies a little with
    // the toolchain that built it).
    let chunks: usize = said
        .split(" bytes in ")
        .nth(1)
        .and_then(|t| t.split(' ').next()?.parse().ok())
        .expect("the chunk count");
    assert!(chunks > 256, "{said}");
    let sha = sha256_of(&guest("misbehave"));
    assert_eq!(
        agent.snapshot("f").module_sha256.as_deref(),
        Some(sha.as_str())
    );
    agent.stop().await;
}

/// The agent's connections go silent (a proxy stops all traffic, the sockets stay open) as
/// a download starts (at its first progress report, with its chunks' subscription on its
/// way), for longer than the keep-alive: it notices, reconnects once the path is back,
/// takes the chunks from their retained topics, and applies the deployment. (A download
/// of these chunks takes under a second here, less than the progress reports' spacing,
/// so the cut cannot be placed later by watching them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_met_by_a_silent_partition_is_applied_once_the_path_is_back() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port).await;
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "ops.key");
    let config = member(&broker, &unique("silent"), &public).replace(
        &format!("url = \"{}\"\n", broker.url()),
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\nkeep_alive_secs = 5\n",
            proxy.port
        ),
    );
    assert!(config.contains("keep_alive_secs"), "{config}");
    let agent = Agent::start(&config).await;
    let mut c = Client::connect(broker.port, &["edge-agent/+/deployment", "out"]).await;
    let b = misbehave_bundle(keys.path());
    // About 5,000 chunks, in blocks.
    succeeded(&deploy(&broker, &key, &b, &["--chunk-bytes", "25"]));
    reports(&mut c, 1, DeploymentState::Downloading, "").await;
    proxy.pause(true);
    // Mosquitto drops a client after 1.5 keep-alives of silence; the agent gives up on
    // its connections after a keep-alive without a ping answered.
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.pause(false);
    let healed = Instant::now();
    // Still downloading once the path is back, then applied.
    let mut resumed = None;
    let applied = loop {
        let m = c.recv().await;
        if !m.topic.ends_with("/deployment") {
            continue;
        }
        let r: DeploymentReport = m.message();
        match r.state {
            DeploymentState::Downloading => resumed = resumed.or(r.chunks),
            DeploymentState::Applied if !r.probation && r.version == Some(1) => break r,
            DeploymentState::Refused | DeploymentState::RolledBack => panic!("{r:?}"),
            _ => {}
        }
    };
    let [have, want] = resumed.expect("a downloading report after the partition");
    assert!(
        have < want,
        "{have}/{want}: the download was over before the partition"
    );
    eprintln!(
        "downloading again at {have}/{want} chunks; applied {:?} after the path came back",
        healed.elapsed()
    );
    assert_eq!(applied.version, Some(1));
    let sha = sha256_of(&guest("misbehave"));
    assert_eq!(
        agent.snapshot("f").module_sha256.as_deref(),
        Some(sha.as_str())
    );
    c.publish("in/1", "slow-echo:0:1").await;
    assert_eq!(c.recv_on("out").await.text(), "1");
}

#[test]
fn deploy_names_a_bad_directory_or_key_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(agent_bin())
            .args(args)
            .output()
            .expect("run edge-agent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = dir.path().display().to_string();
    let (code, err) = run(&["deploy", "-g", "g", "-k", "nokey", &d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("functions.toml"), "{err}");
    std::fs::write(
        dir.path().join("functions.toml"),
        "[[function]]\nname = \"f\"\nmodule = \"missing.wasm\"\ntopics = [\"t\"]\n",
    )
    .expect("functions.toml");
    let (code, err) = run(&["deploy", "-g", "g", "-k", "nokey", &d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("function `f`: cannot read") && err.contains("missing.wasm"),
        "{err}"
    );
    std::fs::write(dir.path().join("missing.wasm"), b"x").expect("module");
    std::fs::write(dir.path().join("k"), "not a key\n").expect("key");
    let k = dir.path().join("k").display().to_string();
    let (code, err) = run(&["deploy", "-g", "g", "-k", &k, &d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("not a key from edge-agent keygen"), "{err}");
    let (code, err) = run(&["keygen", &k]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("does not overwrite"), "{err}");
    // Chunks or a document (a SHA-256 per chunk) larger than the agents' packets, refused
    // before anything is published (no broker here).
    std::fs::remove_file(&k).expect("remove the key");
    let (_, out) = run(&["keygen", &k]);
    std::fs::write(dir.path().join("missing.wasm"), vec![0u8; 40_000]).expect("module");
    let deploy_with = |extra: &[&str]| {
        let mut args = vec!["deploy", "-g", "g", "-k", &k];
        args.extend_from_slice(extra);
        args.push(&d);
        run(&args)
    };
    let (code, err) = deploy_with(&["--chunk-bytes", "2000000"]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(err.contains("--chunk-bytes 2000000 does not fit"), "{err}");
    let (code, err) = deploy_with(&["--chunk-bytes", "1", "--max-packet-bytes", "1000000"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("(40000 chunks, each named by its sha256)")
            && err.contains("larger --chunk-bytes"),
        "{err}"
    );
    // A group no agent can be in.
    for group in ["bad/group", ""] {
        let (code, err) = run(&["deploy", "-g", group, "-k", &k, &d]);
        assert_eq!(code, Some(64), "{group}: {err}");
        assert!(err.contains("as the agents' [fleet] group"), "{err}");
    }
}

//! Test harness: guest modules built once, real brokers (the embedded one on port 0,
//! Mosquitto on a port no port-0 bind can take), the agent in the test process through the
//! library ([`Agent`]) or as the real binary where the process is the point ([`Process`]),
//! and an MQTT client that collects what arrives.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use edge_agent::config::Config;
use edge_agent::metrics::Snapshot;
use edge_agent::mqtt::connection::{ConnectionStatus, Links};
use edge_agent::{AgentError, Prepared, Running, Startup};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until `fact` holds, checking every 20 ms; panics with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut fact: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !fact() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {WAIT:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the latency bounds are checked too: only by `tests/bench/isolation.sh`, on a
/// quiet machine and a release build (docs/benchmarks.md), never on a shared test runner.
pub fn checks_latency() -> bool {
    std::env::var_os("EDGE_AGENT_BENCH_LATENCY").is_some()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds every guest with `modules/build.sh` once per test run; returns `modules/dist`.
pub fn guests() -> PathBuf {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let root = repo_root();
        let out = Command::new("bash")
            .arg(root.join("modules/build.sh"))
            .output()
            .expect("run modules/build.sh");
        assert!(
            out.status.success(),
            "modules/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("modules/dist")
            .canonicalize()
            .expect("modules/dist exists")
    })
    .clone()
}

pub fn guest(name: &str) -> String {
    guests().join(format!("{name}.wasm")).display().to_string()
}

/// A port for a broker that a test starts as a separate process (Mosquitto). It comes
/// from below the kernel's ephemeral range, which port-0 binds (the embedded brokers of
/// in-process agents, every client socket) never use, so nothing in this test process can
/// take it between this check and the broker's bind; a per-process offset keeps parallel
/// test runs apart, and a broker that still fails to bind is started again on the next.
/// The offset is a hash of the process id: nextest runs each test in a process of its
/// own, with ids a few apart, and with an offset of the id itself a test whose id was 7
/// above another's walked the same ports one step behind it: both could find a port free
/// before either bound it (a CI run on 2026-12-07 failed with an agent's metrics port
/// already in use).
pub fn broker_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let base = 10_000u16;
    let span = low.saturating_sub(base).max(1000);
    let offset =
        (u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(span);
    let offset = offset as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + (offset.wrapping_add(n.wrapping_mul(7))) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    !matches!(child.try_wait(), Ok(Some(_)))
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Mosquitto broker started for one test, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// The TLS listener's port, for a broker started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// A TLS listener beside the plain one (which stays anonymous, for the test's clients).
pub struct Tls {
    pub cafile: PathBuf,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub require_certificate: bool,
    /// Clients of the TLS listener must log in with a name and password from this file.
    pub password_file: Option<PathBuf>,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::on_a_free_port(false, None, "")
    }

    /// A broker with `conf` added to its configuration (later lines win: `max_queued_messages
    /// 1000` gives Mosquitto's default queue back).
    pub fn start_with(conf: &str) -> Self {
        Self::on_a_free_port(false, None, conf)
    }

    /// A broker that saves sessions and queued messages to disk when stopped.
    pub fn start_persistent() -> Self {
        Self::on_a_free_port(true, None, "")
    }

    /// Starts a persistent broker again from the directory [`Mosquitto::stop`] returned.
    pub fn restart_persistent(port: u16, dir: tempfile::TempDir) -> Self {
        Self::launch(port, dir, true, None, "").expect("mosquitto restarts on its port")
    }

    /// Starts a broker without persistence again on `port` (it remembers nothing).
    pub fn restart(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::launch(port, dir, false, None, "").expect("mosquitto restarts on its port")
    }

    /// A broker with a plain listener (`port`) and a TLS one (`tls_port`).
    pub fn start_tls(tls: &Tls) -> Self {
        Self::on_a_free_port(false, Some(tls), "")
    }

    /// Starts a broker with a TLS listener again on the same two ports, with `tls`'s files
    /// (it remembers nothing).
    pub fn restart_tls(port: u16, tls_port: u16, tls: &Tls) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::launch(port, dir, false, Some((tls_port, tls)), "")
            .expect("mosquitto restarts on its ports")
    }

    /// Launches on new ports until the broker listens.
    fn on_a_free_port(persistent: bool, tls: Option<&Tls>, conf: &str) -> Self {
        loop {
            let dir = tempfile::tempdir().expect("tempdir");
            let tls = tls.map(|t| (broker_port(), t));
            if let Some(m) = Self::launch(broker_port(), dir, persistent, tls, conf) {
                return m;
            }
        }
    }

    /// Stops the broker with SIGTERM (it saves its state) and returns its directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, dir)
    }

    /// `None` if it could not listen on `port`.
    fn launch(
        port: u16,
        dir: tempfile::TempDir,
        persistent: bool,
        tls: Option<(u16, &Tls)>,
        conf_extra: &str,
    ) -> Option<Self> {
        let conf = dir.path().join("mosquitto.conf");
        // Run as root, mosquitto drops to its own user: let it write its database here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777));
        }
        let persistence = if persistent {
            format!(
                "persistence true\npersistence_location {}/\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        // Tests send backlogs of thousands: queue them all (Mosquitto's default drops QoS 1
        // messages past 1000 queued for a client).
        let mut persistence = persistence + "max_queued_messages 0\n" + conf_extra;
        // Every packet in and out, to find out what the broker saw (debugging only).
        if let Ok(log) = std::env::var("EDGE_AGENT_TEST_BROKER_LOG") {
            let at = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis());
            persistence += &format!("log_type all\nlog_dest file {log}.{port}.{at}\n");
        }
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{persistence}"
        );
        if let Some((tls_port, tls)) = tls {
            // The plain listener stays anonymous while the TLS one may ask for a password.
            text = format!(
                "per_listener_settings true\n{text}listener {tls_port} 127.0.0.1\n\
                 cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.cafile.display(),
                tls.certfile.display(),
                tls.keyfile.display(),
                tls.require_certificate,
            );
            match &tls.password_file {
                Some(f) => {
                    text += &format!("allow_anonymous false\npassword_file {}\n", f.display());
                }
                None => text += "allow_anonymous true\n",
            }
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let listening = wait_for_port(port, &mut child)
            && tls.is_none_or(|(tls_port, _)| wait_for_port(tls_port, &mut child));
        if !listening {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Self {
            child,
            port,
            tls_port: tls.map(|(p, _)| p),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// The agent, started inside the test process through the library: the same startup as
/// `edge-agent run`, with readiness a future and shutdown a call.
pub struct Agent {
    running: Option<Running>,
    /// The broker's port (where the embedded broker really listens when it was given 0).
    pub port: u16,
    dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Writes `config` to a temp dir (its `data_dir` resolves there) and starts the agent;
    /// returns once it is connected and subscribed.
    pub async fn start(config: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Self {
        match Self::try_start_in(dir, config).await {
            Ok(a) => a,
            Err(e) => panic!("agent did not start: {}", edge_agent::failure::chain(&e)),
        }
    }

    /// Starts the agent without waiting for it to connect (for brokers it cannot use).
    pub async fn start_unready(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        match Self::launch(dir, config).await {
            Ok((running, dir)) => Self {
                port: 0,
                running: Some(running),
                dir: Some(dir),
            },
            Err(e) => panic!("agent did not start: {}", edge_agent::failure::chain(&e)),
        }
    }

    async fn launch(
        dir: tempfile::TempDir,
        config: &str,
    ) -> Result<(Running, tempfile::TempDir), AgentError> {
        init_log();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cfg = Config::load_with_env(&path, std::iter::empty())?;
        if cfg.agent.data_dir.is_relative() {
            cfg.agent.data_dir = dir.path().join(&cfg.agent.data_dir);
        }
        // Loading compiles every module: CPU work, off the async threads.
        let prepared = tokio::task::spawn_blocking(move || Prepared::open(cfg))
            .await
            .expect("prepare")?;
        Ok((Startup::new(prepared).start()?, dir))
    }

    pub async fn try_start_in(dir: tempfile::TempDir, config: &str) -> Result<Self, AgentError> {
        let (running, dir) = Self::launch(dir, config).await?;
        let ready = match tokio::time::timeout(WAIT, running.ready()).await {
            Ok(r) => r.expect("connection task alive"),
            // Which connection did not get there, and how far it got.
            Err(_) => panic!(
                "agent not connected and subscribed within {WAIT:?}: {:?}",
                running.links().borrow().links
            ),
        };
        Ok(Self {
            running: Some(running),
            port: ready.broker.port,
            dir: Some(dir),
        })
    }

    /// Its directory: `agent.toml`, and `data/` for a relative `data_dir`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// The snapshot of `function`'s counters and costs.
    pub fn snapshot(&self, function: &str) -> Snapshot {
        self.running()
            .stats()
            .snapshots()
            .into_iter()
            .find(|s| s.function == function)
            .expect("function is configured")
    }

    pub fn status(&self) -> ConnectionStatus {
        self.running().status()
    }

    pub fn links(&self) -> watch::Receiver<Links> {
        self.running().links()
    }

    /// Stops the agent in order (as on SIGTERM); returns its directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(WAIT, r.stop())
                .await
                .expect("agent stops in time");
        }
        self.dir.take().expect("dir")
    }

    /// Stops the agent and opens its state store (in `data/state`) as sled, for a test to
    /// read. A flush the stop cut short may still be writing on a blocking thread, holding
    /// the store's lock a moment longer (seen once under load: `could not acquire lock`);
    /// the open waits for it, up to [`WAIT`].
    pub async fn stop_and_open_store(self) -> (sled::Db, tempfile::TempDir) {
        let dir = self.stop().await;
        let deadline = Instant::now() + WAIT;
        loop {
            match sled::open(dir.path().join("data/state")) {
                Ok(db) => return (db, dir),
                Err(e)
                    if Instant::now() < deadline && format!("{e:?}").contains("acquire lock") =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the store opens: {e:?}"),
            }
        }
    }

    /// Stops the agent and starts a new one in the same directory, so it finds the same
    /// state.
    pub async fn restart(self, config: &str) -> Self {
        let dir = self.stop().await;
        Self::start_in(dir, config).await
    }
}

/// In-process agents log to stderr when `EDGE_AGENT_TEST_LOG` is set (a `RUST_LOG`-style
/// filter): for looking into a failing test.
fn init_log() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Ok(filter) = std::env::var("EDGE_AGENT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// The agent binary, for the tests where the process itself is the point: signals,
/// `kill -9`, the environment, what it prints.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads the agent's stderr into `log`; ends when the agent has exited.
    reader: Option<std::thread::JoinHandle<()>>,
    broker_port: u16,
    status_topic: String,
    _dir: tempfile::TempDir,
}

/// The resident memory of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

/// Whether the broker on `port` keeps a session for client `id`: connects as it without
/// a clean session and reads CONNACK's session-present flag (a session is made for it if
/// there was none, so ask once).
pub async fn session_present(port: u16, id: &str) -> bool {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::ConnAck(ack))) = eventloop.poll().await {
                return ack.session_present;
            }
        }
    })
    .await
    .expect("the broker answered the connection");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    present
}

/// The names of the files under `dir`, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// `[agent]` with `id`, and the embedded broker on any free port: the head of most test
/// configs.
pub fn embedded(id: &str) -> String {
    format!("[agent]\nid = \"{id}\"\n[broker]\nurl = \"mqtt://127.0.0.1:0\"\nembedded = true\n")
}

/// Runs `edge-agent ARGS` in `dir` with `env`, asserts that it succeeded, and returns its
/// standard output.
pub fn edge_agent(dir: &Path, env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("run edge-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Process {
    /// Starts `edge-agent run` on `config`, whose broker listens on `broker_port` and whose
    /// `agent.id` is `id`; returns once the agent has said `online` on its status topic.
    pub async fn start(config: &str, broker_port: u16, id: &str, env: &[(&str, &str)]) -> Self {
        let p = Self::spawn_in(
            tempfile::tempdir().expect("tempdir"),
            config,
            broker_port,
            id,
            env,
        );
        p.wait_online().await;
        p
    }

    /// Starts `edge-agent run` in `dir` without waiting for it to be online (its broker
    /// may be away).
    pub fn spawn_in(
        dir: tempfile::TempDir,
        config: &str,
        broker_port: u16,
        id: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(agent_bin())
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&path)
            // data_dir defaults to ./data: one per test.
            .current_dir(dir.path())
            .env(
                "RUST_LOG",
                std::env::var("EDGE_AGENT_TEST_LOG")
                    .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edge-agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        Self {
            child,
            log,
            reader: Some(reader),
            broker_port,
            status_topic: format!("edge-agent/{id}/status"),
            _dir: dir,
        }
    }

    /// Waits for this process's retained `online` on the status topic (an earlier run's
    /// message has another pid).
    pub async fn wait_online(&self) {
        let mut c = Client::connect(self.broker_port, &[&self.status_topic]).await;
        let pid = self.child.id();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = tokio::time::timeout(left, c.rx.recv()).await;
            match got {
                Ok(Some(m)) => {
                    let s: edge_agent::messages::Status = m.message();
                    if s.status == edge_agent::messages::Presence::Online && s.pid == pid {
                        return;
                    }
                }
                _ => panic!("agent never said online:\n{}", self.log_text()),
            }
        }
    }

    /// Stops this agent with SIGKILL (no cleanup at all) and starts a new one in the same
    /// directory, so it finds the same state.
    pub async fn kill_and_restart(mut self, config: &str, env: &[(&str, &str)]) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        let (port, topic) = (self.broker_port, self.status_topic.clone());
        drop(self);
        let id = topic
            .strip_prefix("edge-agent/")
            .and_then(|t| t.strip_suffix("/status"))
            .unwrap_or_default()
            .to_string();
        let p = Self::spawn_in(dir, config, port, &id, env);
        p.wait_online().await;
        p
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The config file this agent runs on (editable: hot reload reads it again).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("agent.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit status and the whole log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        let (status, log, _dir) = self.stop_keeping_dir();
        (status, log)
    }

    /// Starts an agent in `dir` (where an earlier one ran: its state store is there).
    pub async fn start_in(
        dir: tempfile::TempDir,
        config: &str,
        broker_port: u16,
        id: &str,
    ) -> Self {
        let p = Self::spawn_in(dir, config, broker_port, id, &[]);
        p.wait_online().await;
        p
    }

    /// `kill -9`, and the directory it ran in, kept.
    pub fn kill_keeping_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"))
    }

    /// [`Process::stop`], and the directory it ran in, kept (to read its state store).
    pub fn stop_keeping_dir(mut self) -> (std::process::ExitStatus, String, tempfile::TempDir) {
        let (status, log) = self.stop_now();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        (status, log, dir)
    }

    fn stop_now(&mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The whole log: the reader ends at the end of the agent's stderr.
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("log reader");
                }
                return (status, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
    /// The payload read as one of the agent's messages, with the type the agent builds it
    /// from (another `schema_version` or a missing field fails the test, saying which).
    pub fn message<M: edge_agent::messages::Message>(&self) -> M {
        M::from_bytes(&self.payload).unwrap_or_else(|e| panic!("{}: {e}", self.text()))
    }
}

/// A test MQTT client with a random id: subscribes, publishes, collects.
pub struct Client {
    port: u16,
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(port: u16, subscriptions: &[&str]) -> Self {
        Self::connect_with(port, unique("test-client"), true, subscriptions).await
    }

    /// A client with a persistent session (`clean_session = false`) that keeps
    /// reconnecting: it gets what was queued for it while the broker was away.
    pub async fn connect_persistent(port: u16, name: &str, subscriptions: &[&str]) -> Self {
        Self::connect_with(port, unique(name), false, subscriptions).await
    }

    /// Connects as client `id` resuming its session (what the broker kept for it arrives).
    pub async fn resume(port: u16, id: &str) -> Self {
        Self::connect_with(port, id.to_string(), false, &[]).await
    }

    async fn connect_with(port: u16, id: String, clean: bool, subscriptions: &[&str]) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        edge_agent::mqtt::options::network(&mut eventloop, &Default::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for s in subscriptions {
            client
                .subscribe(*s, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(WAIT, ready_rx.recv())
                .await
                .expect("suback in time");
        }
        Self {
            port,
            client,
            rx,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }

    /// The next message, or panic after [`WAIT`].
    pub async fn recv(&mut self) -> Msg {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message in time")
            .expect("client alive")
    }

    /// The next message on `topic`, skipping others.
    pub async fn recv_on(&mut self, topic: &str) -> Msg {
        loop {
            let m = self.recv().await;
            if m.topic == topic {
                return m;
            }
        }
    }

    /// Everything that arrives within `window`.
    /// The next message, or `None` if none comes within `quiet`.
    pub async fn next(&mut self, quiet: Duration) -> Option<Msg> {
        tokio::time::timeout(quiet, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Messages until `n` have come (or `within` has passed), and any that follow within
    /// 200 ms (a duplicate, one too many).
    pub async fn at_least(&mut self, n: usize, within: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                _ => return out,
            }
        }
        out.extend(self.drain(Duration::from_millis(200)).await);
        out
    }

    pub async fn drain(&mut self, window: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            out.push(m);
        }
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy to a local port that can go silent: while paused it neither reads nor
/// writes, so both ends see a connection that is open and says nothing (a partition that
/// only keep-alives can detect).
pub struct Proxy {
    pub port: u16,
    paused: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(to: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (paused, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(Self::pipe(ri, wo, watch.clone()));
                    Self::pipe(ro, wi, watch).await;
                });
            }
        });
        Self { port, paused, task }
    }

    /// Stops (true) or resumes (false) all traffic.
    pub fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut paused: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 * 1024];
        loop {
            if paused.wait_for(|p| !p).await.is_err() {
                return;
            }
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = paused.wait_for(|p| *p) => continue,
            };
            if paused.wait_for(|p| !p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A file system of `mb` MiB mounted on `dir` for one test (tmpfs, which runs out of
/// space like a full SD card), unmounted on drop. `None` where this process may not mount
/// (not root): the test then says so and passes only if `EDGE_AGENT_REQUIRE_FAULTS` is unset
/// (CI sets it).
pub struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, mb: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("EDGE_AGENT_REQUIRE_FAULTS").is_none(),
                "EDGE_AGENT_REQUIRE_FAULTS is set but a tmpfs cannot be mounted (run as root)"
            );
            eprintln!("skipped: mounting a small file system needs root");
            return None;
        }
        Some(Self { dir: dir.into() })
    }

    /// Writes a file until the disk is full to the last byte; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0xA5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last partial block, byte by byte (tmpfs allocates whole pages).
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl SmallDisk {
    /// `mount -o remount,<how>`: `ro` or `rw`.
    pub fn remount(&self, how: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {how}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

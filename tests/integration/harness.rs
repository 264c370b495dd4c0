//! Test harness: guest modules built once, real brokers on free ports, the agent as a real
//! process, and an MQTT client that collects what arrives.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

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

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unique(prefix: &str) -> String {
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
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::launch(port, tempfile::tempdir().expect("tempdir"), false)
    }

    /// A broker that saves sessions and queued messages to disk when stopped.
    pub fn start_persistent(port: u16) -> Self {
        Self::launch(port, tempfile::tempdir().expect("tempdir"), true)
    }

    /// Starts a persistent broker again from the directory [`Mosquitto::stop`] returned.
    pub fn restart_persistent(port: u16, dir: tempfile::TempDir) -> Self {
        Self::launch(port, dir, true)
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

    fn launch(port: u16, dir: tempfile::TempDir, persistent: bool) -> Self {
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
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{persistence}"
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        wait_for_port(port);
        Self {
            child,
            port,
            _dir: dir,
        }
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

/// The agent binary running a config, with its log captured.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

impl Agent {
    /// Writes `config` to a temp dir and starts `edge-agent run`; waits until it has
    /// subscribed.
    pub fn start(config: &str) -> Self {
        let agent = Self::spawn(config);
        agent.wait_log("subscribed");
        agent
    }

    pub fn spawn(config: &str) -> Self {
        Self::spawn_in(tempfile::tempdir().expect("tempdir"), config)
    }

    /// Stops this agent with SIGKILL (no cleanup at all) and starts a new one in the same
    /// directory, so it finds the same state; waits until it has subscribed.
    pub fn kill_and_restart(mut self, config: &str) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn(config)
    }

    /// Stops this agent with SIGTERM, checks it exited 0, and starts a new one in the same
    /// directory; waits until it has subscribed.
    pub fn stop_and_restart(mut self, config: &str) -> Self {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "agent exit {status}:\n{}",
            self.log_text()
        );
        self.respawn(config)
    }

    fn respawn(mut self, config: &str) -> Self {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        let agent = Self::spawn_in(dir, config);
        agent.wait_log("subscribed");
        agent
    }

    pub fn spawn_in(dir: tempfile::TempDir, config: &str) -> Self {
        Self::spawn_with_env(dir, config, &[])
    }

    /// Starts with extra environment variables; waits until it has subscribed.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let agent = Self::spawn_with_env(tempfile::tempdir().expect("tempdir"), config, env);
        agent.wait_log("subscribed");
        agent
    }

    fn spawn_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Self {
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child_status() {
                panic!(
                    "agent exited ({status}) before logging `{needle}`:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent never logged `{needle}`:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // try_wait needs &mut; use the pid through /proc instead of keeping a lock.
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return Ok(Some(std::os::unix::process::ExitStatusExt::from_raw(0)));
        }
        Ok(None)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the log reader catch up.
                std::thread::sleep(Duration::from_millis(100));
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

impl Drop for Agent {
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
}

/// A test MQTT client with a random id: subscribes, publishes, collects.
pub struct Client {
    port: u16,
    client: AsyncClient,
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

    async fn connect_with(port: u16, id: String, clean: bool, subscriptions: &[&str]) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        edge_agent::mqtt::options::low_latency(&mut eventloop);
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

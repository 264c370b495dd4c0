//! Signed deployments over MQTT (`[fleet]`, docs/fleet.md): the agent reads its group's
//! retained document on `<topic_prefix>/fleet/<group>/deployment` through a connection of
//! its own (`<client id>.deploy`), and for each new version:
//!
//! 1. checks the signature against `[fleet] trusted_keys`, the group, and that the version
//!    is newer than the last it tried (`<data_dir>/deployment/record.json`);
//! 2. receives the modules it does not have yet, chunk by chunk from their retained topics,
//!    each chunk checked against its SHA-256 on arrival, then the whole file; a module is
//!    staged in `<data_dir>/deployment/modules/<sha256>/` only once whole and checked (a
//!    half-received module never replaces anything);
//! 3. writes the deployment's `[[function]]` tables into its config file and reloads
//!    (`reload::Rewrite`): every module is loaded and started once before anything is put
//!    in force, and a refused reload leaves the file and the functions as they were;
//! 4. watches the new functions for `probation_secs`, and goes back to the config it had
//!    before if more than `max_failure_ratio` of their events fail, or if the agent stops
//!    without a clean stop meanwhile (killed, crashed, out of memory, a power cut): the
//!    probation is kept on disk, and the next start puts the config back before it loads
//!    anything ([`roll_back_unfinished`]).
//!
//! Each step is reported, retained, on `<topic_prefix>/<id>/deployment`
//! ([`DeploymentReport`]); a refusal says why in one line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reload::Rewrite;
use crate::config::deploy::Staged;
use crate::config::{BrokerAddress, Config};
use crate::deployment::{self, Assembly, Document, Envelope, Refusal};
use crate::messages::{DeploymentReport, DeploymentState, Message as _};
use crate::metrics::report::StatsBook;
use crate::mqtt::MqttError;
use crate::mqtt::publisher::Publisher;

/// Fewest events of the new functions that must fail during probation before a roll-back.
const PROBATION_MIN_FAILED: u64 = 10;

/// Why a deployment is rolled back: too many of its functions' events failed on probation.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {events} events failed within probation (fleet.max_failure_ratio {max_failure_ratio})"
)]
struct ProbationFailed {
    /// The events that failed.
    failed: u64,
    /// The events handled, failed or not.
    events: u64,
    /// `fleet.max_failure_ratio`.
    max_failure_ratio: f64,
}

/// The first wait before a deployment refused for a passing reason ([`Refusal::is_transient`])
/// is tried again; it doubles with each try, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between tries.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long a deployment connection must have lasted for its next reconnection to start
/// again from `broker.reconnect_min_ms`.
const STABLE: Duration = Duration::from_secs(10);

/// Blocks of chunks subscribed to at once: their retained messages (256 each) stay well
/// within what a broker queues for one client (Mosquitto: 1,000).
const WINDOW_BLOCKS: usize = 2;

/// The blocks of chunks being received: those still to subscribe to, in order, and those
/// subscribed to now.
struct Window {
    queue: std::collections::VecDeque<(String, usize)>,
    open: Vec<(String, usize)>,
}

/// What the agent remembers of deployments across restarts.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    /// The last version it tried (applied, refused after its signature checked, or rolled
    /// back): older ones and other documents of this version are refused.
    tried: Option<u64>,
    /// [`Document::digest`] of that version.
    digest: Option<String>,
    /// The version whose functions are in force.
    in_force: Option<u64>,
}

/// A deployment on probation, kept in `<data_dir>/deployment/probation.json` from just
/// before it is put in force until its probation ends. Found at a start, it is a
/// probation the agent did not live through: a deployment that kills the agent (out of
/// memory, say) would otherwise be started again at every restart, never rolled back.
#[derive(Debug, Serialize, Deserialize)]
struct Probation {
    /// Its version.
    version: u64,
    /// Its [`Document::digest`].
    digest: String,
    /// The version in force before it.
    previous: Option<u64>,
    /// The config file before it.
    before: String,
    /// The config file it wrote.
    after: String,
}

const PROBATION_FILE: &str = "probation.json";

impl Probation {
    /// Its file in `dir`, the agent's `<data_dir>/deployment`.
    fn path(dir: &Path) -> PathBuf {
        dir.join(PROBATION_FILE)
    }

    fn read(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Why a deployment found on probation at a start is rolled back.
fn unfinished(version: u64) -> String {
    format!(
        "the agent stopped during the probation of deployment {version} without a clean stop \
         (killed, crashed, out of memory, or a power cut); the config it had before is back"
    )
}

/// At a start, before anything is loaded: if `config`'s agent stopped during a deployment's
/// probation (see [`Probation`]), puts its config file back as it was before that
/// deployment. Returns whether it did (the caller loads the file again); the deployment
/// task reports the roll-back once connected.
///
/// # Errors
/// The config file could not be written back.
pub fn roll_back_unfinished(config: &Config) -> std::io::Result<bool> {
    if config.fleet.group.is_none() {
        return Ok(false);
    }
    let Some(p) = Probation::read(&config.agent.data_dir.join("deployment")) else {
        return Ok(false);
    };
    // Only the file as the deployment wrote it: edited since, it is someone's to keep.
    if std::fs::read_to_string(&config.source).ok().as_ref() != Some(&p.after) {
        return Ok(false);
    }
    tracing::warn!(version = p.version, config = %config.source.display(), "{}", unfinished(p.version));
    crate::files::replace(&config.source, p.before.as_bytes())?;
    Ok(true)
}

/// The deployment task of one agent.
struct Deployer {
    group: String,
    trusted: Vec<[u8; 32]>,
    prefix: String,
    agent: String,
    /// The config file, absolute.
    path: PathBuf,
    /// `<data_dir>/deployment`.
    dir: PathBuf,
    fleet: crate::config::FleetConfig,
    max_packet_bytes: usize,
    max_module_bytes: u64,
    rewrite: mpsc::Sender<Rewrite>,
    publisher: Arc<Publisher>,
    stats: StatsBook,
    record: Record,
    client: AsyncClient,
    /// Filters to subscribe to on every connection, with their QoS: the document's, and
    /// the chunks of modules being received.
    filters: Arc<Mutex<BTreeMap<String, QoS>>>,
    /// The QoS chunks are subscribed at: 1, but 0 on the embedded broker. rumqttd 0.20
    /// hands a new subscription at most as many retained messages as the connection has
    /// free in-flight slots (a constant 100 at QoS 1; at QoS 0 its
    /// `max_outgoing_packet_count`) and drops the rest, so a block of 256 chunks never came
    /// whole there, and a module of more than 100 chunks never arrived. A chunk lost at
    /// QoS 0 (a connection that breaks) comes again with the subscription's retained copy
    /// on the next connection, as at QoS 1.
    chunk_qos: QoS,
    /// A document that arrived while another was in hand: the newest is taken next.
    pending: Option<Bytes>,
    /// A document refused for a passing reason, and when to try it again.
    retry: Option<(Instant, Bytes)>,
    /// The wait before the next such try.
    backoff: Duration,
    /// The last report published, to publish again when the connection comes back: a
    /// broker that lost its retained messages (no persistence, or killed before it saved
    /// them) had no deployment state for this agent until the next deployment, and `fleet
    /// status` showed none (a probe, 2026-12-07).
    last_report: Mutex<Option<Vec<u8>>>,
}

/// Starts the deployment task if `[fleet] group` is set; it ends when `stop` is
/// cancelled, once it has reported a probation that the stop ended (as passed), so the
/// stop sequence waits for it before the output connection closes: in the background
/// tasks, stopped last, that report found the connection closed, and the retained one
/// said `probation: true` until the next start (a probe, 2026-12-07).
///
/// # Errors
/// [`MqttError::Tls`] if the connection's TLS files cannot be used.
pub fn spawn(
    config: &Config,
    broker: &BrokerAddress,
    rewrite: mpsc::Sender<Rewrite>,
    publisher: Arc<Publisher>,
    stats: StatsBook,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, MqttError> {
    let Some(group) = config.fleet.group.clone() else {
        return Ok(None);
    };
    let options = crate::mqtt::options::deployment(config, broker)?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    crate::mqtt::options::network(&mut eventloop, &config.broker);
    let prefix = config.agent.topic_prefix.clone();
    let dir = config.agent.data_dir.join("deployment");
    let record = std::fs::read(dir.join("record.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let deployer = Deployer {
        trusted: config
            .fleet
            .trusted_keys
            .iter()
            .filter_map(|k| deployment::parse_key(k).ok())
            .collect(),
        filters: Arc::new(Mutex::new(
            [(
                deployment::document_topic(&prefix, &group),
                QoS::AtLeastOnce,
            )]
            .into(),
        )),
        chunk_qos: if config.broker.embedded {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        group,
        prefix,
        agent: config.agent.id.clone(),
        path: std::path::absolute(&config.source).unwrap_or_else(|_| config.source.clone()),
        dir,
        fleet: config.fleet.clone(),
        max_packet_bytes: config.broker.max_packet_bytes,
        max_module_bytes: config.runtime.max_module_mb * 1024 * 1024,
        rewrite,
        publisher,
        stats,
        record,
        client,
        pending: None,
        retry: None,
        backoff: RETRY_FIRST,
        last_report: Mutex::new(None),
    };
    let reconnect = (
        Duration::from_millis(config.broker.reconnect_min_ms),
        Duration::from_millis(config.broker.reconnect_max_ms),
    );
    Ok(Some(tokio::spawn(deployer.run(eventloop, reconnect, stop))))
}

/// What the poller hands the deployer when a connection is made (no topic is empty).
const CONNECTED: &str = "";

/// Polls the deployment connection: subscribes on each connection and hands every message
/// to the deployer.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Arc<Mutex<BTreeMap<String, QoS>>>,
    tx: mpsc::Sender<(String, Bytes)>,
    (min, max): (Duration, Duration),
) {
    let mut delay = min;
    let mut failures = 0u32;
    let mut up: Option<Instant> = None;
    // What the log said of the last failure: a new cause is said at once (until
    // 2026-12-08 only a row's first failure was, so a broker back with a certificate the
    // agent does not trust was never named on this connection).
    let mut said = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                up = Some(Instant::now());
                let filters: Vec<(String, QoS)> = lock(&filters)
                    .iter()
                    .map(|(f, q)| (f.clone(), *q))
                    .collect();
                for (f, qos) in filters {
                    let _ = client.try_subscribe(f, qos);
                }
                // Connected: the deployer says where it is again ([`CONNECTED`]).
                if tx.send((CONNECTED.into(), Bytes::new())).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send((p.topic, p.payload)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // A connection that dies soon after it is made (a retained message larger
                // than this agent takes ends every one) keeps backing off, not retrying
                // ten times a second.
                let was_up = up.take();
                if was_up.is_some_and(|t| t.elapsed() >= STABLE) {
                    delay = min;
                    failures = 0;
                }
                failures += 1;
                let what = crate::mqtt::connection::first_failure(&e, was_up.is_some());
                if failures == 1 || said != Some(what) {
                    if let rumqttc::ConnectionError::MqttState(
                        rumqttc::StateError::Deserialization(
                            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
                        ),
                    ) = &e
                    {
                        tracing::error!(
                            connection = "deploy",
                            bytes = n,
                            "a deployment message is larger than broker.max_packet_bytes: raise it on this agent, or deploy with a larger --chunk-bytes"
                        );
                    } else {
                        tracing::warn!(connection = "deploy", error = %e, "{what}");
                    }
                }
                said = Some(what);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Deployer {
    async fn run(
        mut self,
        eventloop: EventLoop,
        reconnect: (Duration, Duration),
        stop: CancellationToken,
    ) {
        let (tx, mut rx) = mpsc::channel(256);
        let poller = tokio::spawn(poll(
            eventloop,
            self.client.clone(),
            self.filters.clone(),
            tx,
            reconnect,
        ));
        let topic = deployment::document_topic(&self.prefix, &self.group);
        // A probation this agent did not live through: the start put the config back
        // (roll_back_unfinished); the record and the report follow.
        if let Some(p) = Probation::read(&self.dir) {
            self.unfinished_probation(p).await;
        }
        tracing::info!(group = %self.group, %topic, in_force = ?self.record.in_force, "taking signed deployments");
        loop {
            let retry_at = self.retry.as_ref().map(|(at, _)| *at);
            let payload = match self.pending.take() {
                Some(p) => p,
                None => tokio::select! {
                    () = stop.cancelled() => break,
                    m = rx.recv() => match m {
                        Some((t, p)) if t == topic => p,
                        Some((t, _)) if t == CONNECTED => {
                            self.report_again().await;
                            continue;
                        }
                        Some(_) => continue,
                        None => break,
                    },
                    () = sleep_until(retry_at) => match self.retry.take() {
                        Some((_, p)) => p,
                        None => continue,
                    },
                },
            };
            // Whatever comes now replaces a try still waiting (the same document again
            // after a reconnection, or a newer one).
            self.retry = None;
            // An empty retained message clears the topic: nothing to deploy.
            if !payload.is_empty() {
                self.take(payload, &mut rx, &stop).await;
            }
        }
        poller.abort();
        let _ = self.client.try_disconnect();
    }

    /// Handles one document.
    async fn take(
        &mut self,
        payload: Bytes,
        rx: &mut mpsc::Receiver<(String, Bytes)>,
        stop: &CancellationToken,
    ) {
        let doc = match Envelope::open(&payload, &self.trusted, &self.group) {
            Ok(d) => d,
            Err(refusal) => return self.refused(None, &refusal).await,
        };
        let digest = doc.digest();
        if let Some(last) = self.record.tried {
            if doc.version == last && self.record.digest.as_deref() == Some(digest.as_str()) {
                // The retained copy of the one in hand, read again on a new connection, or
                // published again. If it is in force, say so unless the last report does:
                // a refusal since (of a forged document, say) had replaced it, and a
                // `deploy --wait` of the same document again waited out its time without
                // a word (a probe, 2026-12-07).
                tracing::debug!(version = doc.version, "deployment already taken");
                let said = lock(&self.last_report)
                    .as_deref()
                    .and_then(|b| DeploymentReport::from_bytes(b).ok())
                    .is_some_and(|r| {
                        r.version == Some(doc.version)
                            && r.state == DeploymentState::Applied
                            && !r.probation
                    });
                if self.record.in_force == Some(doc.version) && !said {
                    self.report_in_force(doc.version).await;
                }
                return;
            }
            if doc.version <= last {
                let refusal = Refusal::Old {
                    version: doc.version,
                    last,
                };
                return self.refused(Some(doc.version), &refusal).await;
            }
        }
        tracing::info!(
            version = doc.version,
            functions = doc.functions.len(),
            "deployment received"
        );
        let staged = match self.stage(&doc, rx, stop).await {
            Ok(s) => s,
            Err(refusal) if refusal.is_transient() => {
                return self.try_again(doc.version, payload, &refusal).await;
            }
            Err(refusal) => {
                self.tried(doc.version, &digest, self.record.in_force);
                return self.refused(Some(doc.version), &refusal).await;
            }
        };
        self.backoff = RETRY_FIRST;
        if stop.is_cancelled() {
            return;
        }
        self.report(
            Some(doc.version),
            DeploymentState::Checking,
            None,
            false,
            None,
        )
        .await;
        let before = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let why = Refusal::Check(format!("cannot read {}: {e}", self.path.display()));
                return self.refused(Some(doc.version), &why).await;
            }
        };
        let text =
            crate::config::deploy::with_functions(&self.path, &before, &doc.functions, &staged)
                .map_err(|e| crate::failure::chain(&e))
                .and_then(|t| {
                    Config::load_text(&self.path, &t).map(|_| t).map_err(|e| {
                        e.each()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                });
        let text = match text {
            Ok(t) => t,
            Err(why) => {
                self.tried(doc.version, &digest, self.record.in_force);
                return self.refused(Some(doc.version), &Refusal::Check(why)).await;
            }
        };
        let on_probation = Probation {
            version: doc.version,
            digest: digest.clone(),
            previous: self.record.in_force,
            before: before.clone(),
            after: text.clone(),
        };
        if let Err(e) = self.keep_probation(Some(&on_probation)) {
            let why = Refusal::Storage {
                what: Probation::path(&self.dir).display().to_string(),
                why: e.to_string(),
            };
            return self.try_again(doc.version, payload, &why).await;
        }
        let report = match self.ask(format!("deployment {}", doc.version), text).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.keep_probation(None);
                let why = Refusal::Storage {
                    what: self.path.display().to_string(),
                    why: e.to_string(),
                };
                return self.try_again(doc.version, payload, &why).await;
            }
        };
        if !report.ok {
            let _ = self.keep_probation(None);
            self.tried(doc.version, &digest, self.record.in_force);
            let why = report.error.clone().unwrap_or_else(|| {
                report
                    .failed
                    .iter()
                    .flatten()
                    .map(|f| format!("function `{}` did not start: {}", f.function, f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            // Refused by the reload: nothing changed. Put in force in part: taken back.
            let state = if report.error.is_some() {
                DeploymentState::Refused
            } else {
                DeploymentState::RolledBack
            };
            tracing::warn!(version = doc.version, "deployment not applied: {why}");
            let why = Refusal::Check(why).to_string();
            return self
                .report(Some(doc.version), state, Some(why), false, None)
                .await;
        }
        let previous = self.record.in_force;
        self.tried(doc.version, &digest, Some(doc.version));
        tracing::info!(version = doc.version, "deployment applied; on probation");
        self.report(
            Some(doc.version),
            DeploymentState::Applied,
            None,
            true,
            None,
        )
        .await;
        let outcome = self.probation(&doc, rx, stop).await;
        if outcome.is_ok() {
            let _ = self.keep_probation(None);
        }
        match outcome {
            Ok(()) => {
                tracing::info!(version = doc.version, "deployment past probation");
                self.report_in_force(doc.version).await;
                self.clean(&staged);
            }
            Err(why) => {
                tracing::warn!(version = doc.version, "deployment rolled back: {why}");
                let back = self
                    .ask(format!("deployment {} roll-back", doc.version), before)
                    .await;
                let why = match back {
                    Ok(back) if back.ok => why.to_string(),
                    Ok(back) => format!(
                        "{why}; the roll-back failed too: {}",
                        back.error.unwrap_or_default()
                    ),
                    Err(e) => format!(
                        "{why}; the roll-back failed too: cannot write {}: {e}",
                        self.path.display()
                    ),
                };
                self.tried(doc.version, &digest, previous);
                let _ = self.keep_probation(None);
                self.report(
                    Some(doc.version),
                    DeploymentState::RolledBack,
                    Some(why),
                    false,
                    None,
                )
                .await;
            }
        }
    }

    /// Receives and stages every module of `doc` that is not staged yet.
    async fn stage(
        &mut self,
        doc: &Document,
        rx: &mut mpsc::Receiver<(String, Bytes)>,
        stop: &CancellationToken,
    ) -> Result<BTreeMap<String, Staged>, Refusal> {
        let mut staged = BTreeMap::new();
        let mut wanted: BTreeMap<String, Assembly> = BTreeMap::new();
        for (name, m) in &doc.modules {
            if m.size > self.max_module_bytes {
                return Err(Refusal::TooLarge {
                    module: name.clone(),
                    why: format!("{} bytes, more than runtime.max_module_mb allows", m.size),
                });
            }
            let path = self.dir.join("modules").join(&m.sha256).join(name);
            let s = Staged {
                path: path.clone(),
                sha256: m.sha256.clone(),
            };
            if std::fs::read(&path).is_ok_and(|b| deployment::sha256_hex(&b) == m.sha256) {
                staged.insert(name.clone(), s);
                continue;
            }
            // On the device already, or on a web server: read or fetched, then checked like
            // a download and staged. A file not there yet, or a server that does not answer,
            // is tried again on the next connection.
            let source = match (&m.path, &m.url) {
                (Some(from), _) => Some((from, std::fs::read(from).map_err(|e| e.to_string()))),
                (None, Some(url)) => {
                    self.report(
                        Some(doc.version),
                        DeploymentState::Downloading,
                        None,
                        false,
                        None,
                    )
                    .await;
                    let timeout = Duration::from_secs(self.fleet.download_timeout_secs);
                    let got = tokio::select! {
                        () = stop.cancelled() => return Ok(staged),
                        got = super::fetch::fetch(url, m.size, timeout) => got,
                    };
                    Some((url, got.map_err(|e| crate::failure::chain(&e))))
                }
                (None, None) => None,
            };
            if let Some((from, got)) = source {
                let bytes = got.map_err(|why| Refusal::Unreadable {
                    module: name.clone(),
                    path: from.clone(),
                    why,
                })?;
                if deployment::sha256_hex(&bytes) != m.sha256 {
                    return Err(Refusal::Tampered {
                        module: name.clone(),
                        what: format!("the file at {from}"),
                    });
                }
                crate::files::replace(&path, &bytes).map_err(|e| storage(name, &e))?;
                staged.insert(name.clone(), s);
                continue;
            }
            if m.chunk_bytes as usize + deployment::CHUNK_OVERHEAD_BYTES > self.max_packet_bytes {
                return Err(Refusal::TooLarge {
                    module: name.clone(),
                    why: format!(
                        "chunks of {} bytes do not fit broker.max_packet_bytes ({}); deploy with a smaller --chunk-bytes",
                        m.chunk_bytes, self.max_packet_bytes
                    ),
                });
            }
            staged.insert(name.clone(), s);
            wanted.insert(m.sha256.clone(), Assembly::new(name, m));
        }
        if wanted.is_empty() {
            return Ok(staged);
        }
        // Each module is written chunk by chunk into `<file>.part` beside where it goes,
        // and renamed into place only once whole and checked.
        let mut parts: BTreeMap<String, (PathBuf, std::fs::File)> = BTreeMap::new();
        for (sha, a) in &wanted {
            let Some(s) = staged.get(a.name()) else {
                continue;
            };
            let part = s.path.with_extension("part");
            let file = s
                .path
                .parent()
                .map_or(Ok(()), crate::files::create_dir_all)
                .and_then(|()| std::fs::File::create(&part))
                .map_err(|e| storage(a.name(), &e))?;
            parts.insert(sha.clone(), (part, file));
        }
        // The chunks' blocks, subscribed to a few at a time.
        let mut window = Window {
            queue: wanted
                .iter()
                .flat_map(|(sha, a)| (0..a.blocks()).map(move |b| (sha.clone(), b)))
                .collect(),
            open: Vec::new(),
        };
        self.fill(&mut window).await;
        let outcome = self
            .receive(doc, &mut wanted, &mut window, &parts, rx, stop)
            .await;
        for (sha, block) in std::mem::take(&mut window.open) {
            self.close(&sha, block).await;
        }
        let placed = outcome.and_then(|()| {
            for (sha, assembly) in wanted {
                let Some((part, file)) = parts.get(&sha) else {
                    continue;
                };
                let name = assembly.name().to_string();
                let io = |e: std::io::Error| storage(&name, &e);
                file.sync_all().map_err(io)?;
                let (size, hash) = hash_file(part).map_err(io)?;
                assembly.finish(size, &hash)?;
                let to = part.with_extension(Path::new(&name).extension().unwrap_or_default());
                std::fs::rename(part, &to).map_err(io)?;
            }
            Ok(())
        });
        if placed.is_err() {
            for (part, _) in parts.values() {
                let _ = std::fs::remove_file(part);
            }
        }
        placed.map(|()| staged)
    }

    /// Subscribes to the next blocks of chunks until [`WINDOW_BLOCKS`] are open.
    async fn fill(&self, window: &mut Window) {
        while window.open.len() < WINDOW_BLOCKS {
            let Some((sha, block)) = window.queue.pop_front() else {
                return;
            };
            let filter = deployment::block_filter(&self.prefix, &self.group, &sha, block);
            // Kept in `filters`: subscribed again on a new connection.
            lock(&self.filters).insert(filter.clone(), self.chunk_qos);
            let _ = self.client.subscribe(filter, self.chunk_qos).await;
            window.open.push((sha, block));
        }
    }

    /// Unsubscribes from a block of chunks.
    async fn close(&self, sha: &str, block: usize) {
        let filter = deployment::block_filter(&self.prefix, &self.group, sha, block);
        lock(&self.filters).remove(&filter);
        let _ = self.client.unsubscribe(filter).await;
    }

    /// Takes chunks until every module of `wanted` is whole, one is tampered, or the
    /// download times out; moves the window on as blocks come in whole.
    async fn receive(
        &mut self,
        doc: &Document,
        wanted: &mut BTreeMap<String, Assembly>,
        window: &mut Window,
        parts: &BTreeMap<String, (PathBuf, std::fs::File)>,
        rx: &mut mpsc::Receiver<(String, Bytes)>,
        stop: &CancellationToken,
    ) -> Result<(), Refusal> {
        let secs = self.fleet.download_timeout_secs;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let chunks = |w: &BTreeMap<String, Assembly>| {
            w.values().fold([0, 0], |[h, n], a| {
                let (have, want) = a.progress();
                [h + have, n + want]
            })
        };
        // Reported at once, then at most once a second.
        let mut last_report: Option<Instant> = None;
        let doc_topic = deployment::document_topic(&self.prefix, &self.group);
        while !wanted.values().all(Assembly::complete) {
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_report = Some(Instant::now());
                self.report(
                    Some(doc.version),
                    DeploymentState::Downloading,
                    None,
                    false,
                    Some(chunks(wanted)),
                )
                .await;
            }
            let (topic, payload) = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(deadline) => {
                    let (name, have, want) = wanted
                        .values()
                        .find(|a| !a.complete())
                        .map(|a| (a.name().to_string(), a.progress().0, a.progress().1))
                        .unwrap_or_default();
                    return Err(Refusal::Incomplete { module: name, have, want, secs });
                }
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
            };
            if topic == doc_topic {
                // A newer deployment, rightly signed, replaces this one at once; anything
                // else waits (and is refused) until this one is done.
                let newer = Envelope::open(&payload, &self.trusted, &self.group)
                    .ok()
                    .map(|d| d.version)
                    .filter(|v| *v > doc.version);
                self.pending = Some(payload);
                if let Some(v) = newer {
                    return Err(Refusal::Superseded(v));
                }
                continue;
            }
            // A chunk topic cleared by a later `deploy` (an empty retained message).
            if payload.is_empty() {
                continue;
            }
            let Some((sha, index)) =
                deployment::parse_chunk_topic(&self.prefix, &self.group, &topic)
            else {
                continue;
            };
            let Some(assembly) = wanted.get_mut(sha) else {
                continue;
            };
            if let Some(offset) = assembly.add(index, &payload)?
                && let Some((_, file)) = parts.get(sha)
            {
                use std::os::unix::fs::FileExt as _;
                file.write_all_at(&payload, offset)
                    .map_err(|e| storage(assembly.name(), &e))?;
            }
            let block = index / deployment::CHUNKS_PER_BLOCK;
            if assembly.has_block(block)
                && let Some(i) = window
                    .open
                    .iter()
                    .position(|(s, b)| s == sha && *b == block)
            {
                let (sha, block) = window.open.swap_remove(i);
                self.close(&sha, block).await;
                self.fill(window).await;
            }
        }
        Ok(())
    }

    /// Watches `doc`'s functions for `probation_secs`; why they should be rolled back, if
    /// they should.
    async fn probation(
        &mut self,
        doc: &Document,
        rx: &mut mpsc::Receiver<(String, Bytes)>,
        stop: &CancellationToken,
    ) -> Result<(), ProbationFailed> {
        let names: Vec<&str> = doc
            .functions
            .iter()
            .filter_map(|f| f.get("name").and_then(|n| n.as_str()))
            .collect();
        let outcomes = || -> (u64, u64) {
            names
                .iter()
                .filter_map(|n| self.stats.get(n))
                .map(|s| s.outcomes())
                .fold((0, 0), |(a, b), (s, f)| (a + s, b + f))
        };
        let (ok0, failed0) = outcomes();
        let until = Instant::now() + Duration::from_secs(self.fleet.probation_secs);
        let doc_topic = deployment::document_topic(&self.prefix, &self.group);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let (ok, failed) = outcomes();
            let (ok, failed) = (ok - ok0.min(ok), failed - failed0.min(failed));
            if failed >= PROBATION_MIN_FAILED
                && failed as f64 > self.fleet.max_failure_ratio * (ok + failed) as f64
            {
                return Err(ProbationFailed {
                    failed,
                    events: ok + failed,
                    max_failure_ratio: self.fleet.max_failure_ratio,
                });
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                m = rx.recv() => if let Some((t, p)) = m && t == doc_topic {
                    self.pending = Some(p);
                },
            }
        }
    }

    /// Refused for a passing reason: reported, and tried again after a wait that doubles
    /// with each try (and at once when the broker sends the document again).
    async fn try_again(&mut self, version: u64, payload: Bytes, why: &Refusal) {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        self.retry = Some((Instant::now() + wait, payload));
        let why = format!("{why}; trying again in {} s", wait.as_secs());
        tracing::warn!(version, "deployment not taken yet: {why}");
        self.report(
            Some(version),
            DeploymentState::Refused,
            Some(why),
            false,
            None,
        )
        .await;
    }

    /// Asks the reloader to put `text` in force: its report, or why the config file could
    /// not be written.
    async fn ask(
        &self,
        trigger: String,
        text: String,
    ) -> std::io::Result<crate::messages::ReloadReport> {
        let (reply, answer) = oneshot::channel();
        let stopping = || {
            Ok(crate::messages::ReloadReport::refused(
                &trigger,
                "the agent is stopping".into(),
            ))
        };
        if self
            .rewrite
            .send(Rewrite {
                trigger: trigger.clone(),
                text,
                reply,
            })
            .await
            .is_err()
        {
            return stopping();
        }
        answer.await.unwrap_or_else(|_| stopping())
    }

    /// Remembers that `version` (of `digest`) was tried, and which version is in force.
    fn tried(&mut self, version: u64, digest: &str, in_force: Option<u64>) {
        self.record = Record {
            tried: Some(version),
            digest: Some(digest.to_string()),
            in_force,
        };
        let body = serde_json::to_vec(&self.record).unwrap_or_default();
        if let Err(e) = crate::files::replace(&self.dir.join("record.json"), &body) {
            tracing::error!(dir = %self.dir.display(), "cannot record the deployment tried: {e}");
        }
    }

    /// Ends probation `p`, found at the start: reported rolled back if the start put the
    /// config back; left for the next start if it could not; forgotten if the config
    /// file was edited since the deployment wrote it (the edit stays).
    async fn unfinished_probation(&mut self, p: Probation) {
        let now = std::fs::read_to_string(&self.path).ok();
        if now.as_ref() == Some(&p.after) {
            return;
        }
        if let Err(e) = self.keep_probation(None) {
            tracing::error!("cannot delete the finished probation: {e}");
        }
        if now.as_ref() != Some(&p.before) {
            tracing::warn!(version = p.version, config = %self.path.display(),
                "the agent stopped during the probation of this deployment, and the config file was edited since: it is left as it is");
            return;
        }
        self.tried(p.version, &p.digest, p.previous);
        let why = unfinished(p.version);
        tracing::warn!(version = p.version, "deployment rolled back: {why}");
        self.report(
            Some(p.version),
            DeploymentState::RolledBack,
            Some(why),
            false,
            None,
        )
        .await;
    }

    /// Keeps `probation` on disk (synced), or with `None` deletes it.
    fn keep_probation(&self, probation: Option<&Probation>) -> std::io::Result<()> {
        let path = Probation::path(&self.dir);
        match probation {
            Some(p) => {
                // It holds a copy of the config file, password included.
                crate::files::replace_private(&path, &serde_json::to_vec(p).unwrap_or_default())
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Deletes the staged modules that neither the deployment in force nor `keep` use.
    fn clean(&self, keep: &BTreeMap<String, Staged>) {
        let keep: BTreeSet<&str> = keep.values().map(|s| s.sha256.as_str()).collect();
        let Ok(entries) = std::fs::read_dir(self.dir.join("modules")) else {
            return;
        };
        for e in entries.flatten() {
            if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    async fn refused(&self, version: Option<u64>, why: &Refusal) {
        tracing::warn!(version = ?version, "deployment refused: {why}");
        self.report(
            version,
            DeploymentState::Refused,
            Some(why.to_string()),
            false,
            None,
        )
        .await;
    }

    /// Publishes (retained) where this agent is with its deployment.
    async fn report(
        &self,
        version: Option<u64>,
        state: DeploymentState,
        reason: Option<String>,
        probation: bool,
        chunks: Option<[usize; 2]>,
    ) {
        let body = DeploymentReport {
            schema_version: <DeploymentReport as crate::messages::Message>::SCHEMA_VERSION,
            agent: self.agent.clone(),
            group: self.group.clone(),
            version,
            state,
            reason,
            in_force: self.record.in_force,
            probation,
            chunks,
            ts_ms: crate::clock::now_ms(),
        };
        *lock(&self.last_report) = Some(body.to_bytes());
        self.report_again().await;
    }

    /// Reports `version` applied and past its probation.
    async fn report_in_force(&self, version: u64) {
        self.report(Some(version), DeploymentState::Applied, None, false, None)
            .await;
    }

    /// Publishes (retained) the last report again, if there is one.
    async fn report_again(&self) {
        let Some(body) = lock(&self.last_report).clone() else {
            return;
        };
        let topic = format!("{}/{}/{}", self.prefix, self.agent, DeploymentReport::TOPIC);
        let sent = self
            .publisher
            .publish(topic, QoS::AtLeastOnce, true, body, None, None);
        let _ = tokio::time::timeout(Duration::from_secs(5), sent).await;
    }
}

/// The size and SHA-256 of the file at `path`, read in pieces.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, format!("{:x}", hasher.finalize())))
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A staged module that could not be written.
fn storage(module: &str, e: &std::io::Error) -> Refusal {
    Refusal::Storage {
        what: format!("module {module} to the data directory"),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start puts back the config from before a deployment whose probation did not end,
    /// but only the file as that deployment wrote it: an edit made since stays.
    #[test]
    fn a_start_puts_back_only_the_config_the_deployment_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.fleet.group = Some("site".into());
        config.agent.data_dir = dir.path().join("data");
        config.source = dir.path().join("agent.toml");
        let deployment = config.agent.data_dir.join("deployment");
        std::fs::create_dir_all(&deployment).unwrap();
        let p = Probation {
            version: 3,
            digest: "d".into(),
            previous: Some(2),
            before: "before".into(),
            after: "after".into(),
        };
        std::fs::write(
            Probation::path(&deployment),
            serde_json::to_vec(&p).unwrap(),
        )
        .unwrap();
        let file = || std::fs::read_to_string(&config.source).unwrap();

        std::fs::write(&config.source, "edited").unwrap();
        assert!(!roll_back_unfinished(&config).unwrap());
        assert_eq!(file(), "edited");

        std::fs::write(&config.source, "after").unwrap();
        config.fleet.group = None;
        assert!(
            !roll_back_unfinished(&config).unwrap(),
            "not a fleet member"
        );
        config.fleet.group = Some("site".into());
        assert!(roll_back_unfinished(&config).unwrap());
        assert_eq!(file(), "before");
    }
}

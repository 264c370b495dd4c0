//! The operator's side of a fleet: `edge-agent keygen` writes an ed25519 key pair,
//! `edge-agent deploy` signs a directory of functions and modules and publishes it to a
//! group of agents over MQTT (modules in chunks, all retained), and
//! `edge-agent fleet status` prints every agent on the broker ([`status`]).

pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use edge_agent::deployment::{self, Document, Envelope, Module};
use edge_agent::failure::Exit;
use edge_agent::messages::{DeploymentReport, DeploymentState, Message as _};
use edge_agent_publish::{BrokerArgs, BrokerArgsError};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

/// Why a fleet command failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad arguments or input files.
    #[error("{0}")]
    Usage(String),
    /// The broker flags.
    #[error(transparent)]
    Args(#[from] BrokerArgsError),
    /// The broker could not be reached, or stopped answering.
    #[error("broker {0}")]
    Broker(String),
    /// `deploy --wait`: agents refused, rolled back, or did not answer in time.
    #[error("{0}")]
    NotApplied(String),
    /// The async runtime.
    #[error("cannot start the async runtime")]
    Runtime(#[from] std::io::Error),
}

impl FleetError {
    /// How the process ends.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) | Self::Args(_) => Exit::Usage,
            Self::Broker(_) => Exit::Unavailable,
            Self::NotApplied(_) | Self::Runtime(_) => Exit::Failure,
        }
    }
}

/// Arguments of `edge-agent keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600); the public key goes to `<KEY>.pub`.
    pub key: PathBuf,
}

/// Writes a new ed25519 key pair: the private key (PKCS#8, base64) at `args.key`, readable
/// by its owner only, and the public key (base64, the form `[fleet] trusted_keys` takes)
/// at `<key>.pub`. Returns the public key.
///
/// # Errors
/// [`FleetError::Usage`] if either file exists or cannot be written.
pub fn keygen(args: &KeygenArgs) -> Result<String, FleetError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let public_path = pub_path(&args.key);
    for p in [&args.key, &public_path] {
        if p.exists() {
            return Err(FleetError::Usage(format!(
                "{} exists; keygen does not overwrite keys",
                p.display()
            )));
        }
    }
    // fleet.md's `~/.config/edge-agent/ops.key` is in a folder a fresh machine does not
    // have: made, private, as ssh-keygen makes `~/.ssh`.
    if let Some(dir) = args.key.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| FleetError::Usage(format!("cannot make {}: {e}", dir.display())))?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| FleetError::Usage("cannot generate a key: no system randomness".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| FleetError::Usage("the generated key does not read back".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = b64.encode(pair.public_key().as_ref());
    let write = |path: &Path, text: String, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| FleetError::Usage(format!("cannot write {}: {e}", path.display())))
    };
    write(
        &args.key,
        format!("{}\n", b64.encode(pkcs8.as_ref())),
        0o600,
    )?;
    write(&public_path, format!("{public}\n"), 0o644)?;
    Ok(public)
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Reads a private key written by [`keygen`].
///
/// # Errors
/// [`FleetError::Usage`] if it cannot be read or is not an ed25519 key.
pub fn read_key(path: &Path) -> Result<Ed25519KeyPair, FleetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FleetError::Usage(format!("cannot read key {}: {e}", path.display())))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| {
            FleetError::Usage(format!(
                "{}: not a key from edge-agent keygen: {e}",
                path.display()
            ))
        })?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
        FleetError::Usage(format!(
            "{}: not an ed25519 private key (edge-agent keygen writes one)",
            path.display()
        ))
    })
}

/// Arguments of `edge-agent deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// The directory to deploy: `functions.toml` (`[[function]]` tables as in an agent's
    /// config; `module` paths relative to the directory) and the modules it names.
    pub dir: PathBuf,
    /// The deployment group (the agents' `[fleet] group`).
    #[arg(short, long)]
    pub group: String,
    /// The private key to sign with (edge-agent keygen).
    #[arg(short, long)]
    pub key: PathBuf,
    /// The broker the agents use.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The agents' `agent.topic_prefix`.
    #[arg(long, default_value = "edge-agent")]
    pub prefix: String,
    /// The deployment's version; default: one more than the group's current one (read
    /// from the broker), or 1.
    #[arg(long)]
    pub version: Option<u64>,
    /// Bytes per module chunk: each chunk is one MQTT message, which must fit the agents'
    /// `broker.max_packet_bytes` and the broker's own limit.
    #[arg(long, default_value_t = deployment::DEFAULT_CHUNK_BYTES)]
    pub chunk_bytes: usize,
    /// The modules are on every device already, in this directory (put there by other
    /// means), or on a web server every device can reach (`http://...` or `https://...`):
    /// the document names `DIR/<file name>` (or `URL/<file name>`) for each, checked by
    /// its SHA-256, and no chunk is published.
    #[arg(long, value_name = "DIR|URL")]
    pub modules_at: Option<String>,
    /// Wait until this many agents report the deployment applied (or one refuses it).
    #[arg(long, default_value_t = 0)]
    pub wait: usize,
    /// Longest wait for `--wait`, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// The largest MQTT packet the agents take (their `broker.max_packet_bytes`): a chunk
    /// or a document that does not fit is refused here, before anything is published.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_packet_bytes: usize,
}

/// A directory read for deployment: its functions and modules.
#[derive(Debug)]
pub struct Bundle {
    /// The `[[function]]` tables, `module` made the module's file name.
    pub functions: Vec<serde_json::Value>,
    /// The modules' bytes by file name.
    pub modules: BTreeMap<String, Vec<u8>>,
}

/// Reads `dir/functions.toml` and every module its functions name.
///
/// # Errors
/// [`FleetError::Usage`] naming the file or function at fault.
pub fn bundle(dir: &Path) -> Result<Bundle, FleetError> {
    let file = dir.join("functions.toml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| FleetError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let value: serde_json::Value = toml_edit::de::from_str(&text)
        .map_err(|e| FleetError::Usage(format!("{}: {e}", file.display())))?;
    let mut functions = value
        .get("function")
        .and_then(|f| f.as_array())
        .cloned()
        .unwrap_or_default();
    if functions.is_empty() {
        return Err(FleetError::Usage(format!(
            "{}: no [[function]] to deploy",
            file.display()
        )));
    }
    let mut modules: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in &mut functions {
        let name = f
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let mut take = |module: &mut serde_json::Value| -> Result<(), FleetError> {
            let Some(rel) = module.as_str() else {
                return Ok(());
            };
            let path = dir.join(rel);
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    FleetError::Usage(format!("function `{name}`: module `{rel}` is not a file"))
                })?;
            if let Some(other) = sources.get(&file_name)
                && *other != path
            {
                return Err(FleetError::Usage(format!(
                    "function `{name}`: modules {} and {} have the same file name; rename one",
                    other.display(),
                    path.display()
                )));
            }
            if !modules.contains_key(&file_name) {
                let bytes = std::fs::read(&path).map_err(|e| {
                    FleetError::Usage(format!(
                        "function `{name}`: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                modules.insert(file_name.clone(), bytes);
                sources.insert(file_name.clone(), path);
            }
            *module = file_name.into();
            Ok(())
        };
        if let Some(m) = f.get_mut("module") {
            take(m)?;
        } else {
            return Err(FleetError::Usage(format!(
                "function `{name}` has no module"
            )));
        }
        if let Some(m) = f.get_mut("shadow").and_then(|s| s.get_mut("module")) {
            take(m)?;
        }
    }
    Ok(Bundle { functions, modules })
}

/// The document for `bundle`, signed with `key`, and each module's chunks.
pub fn seal(
    bundle: &Bundle,
    group: &str,
    version: u64,
    chunk_bytes: usize,
    modules_at: Option<&str>,
    key: &Ed25519KeyPair,
) -> (Envelope, Document) {
    let document = Document {
        schema_version: deployment::SCHEMA_VERSION,
        group: group.to_string(),
        version,
        created_ms: edge_agent::clock::now_ms(),
        functions: bundle.functions.clone(),
        modules: bundle
            .modules
            .iter()
            .map(|(name, bytes)| {
                let m = match modules_at {
                    Some(dir) => Module::at(bytes, format!("{}/{name}", dir.trim_end_matches('/'))),
                    None => Module::of(bytes, chunk_bytes),
                };
                (name.clone(), m)
            })
            .collect(),
    };
    let envelope = Envelope::signed(&document, key.public_key().as_ref(), |b| {
        key.sign(b).as_ref().to_vec()
    });
    (envelope, document)
}

/// Runs `edge-agent deploy`: reads the directory, signs it, publishes the modules' chunks
/// and then the document (all retained), and with `--wait` follows the agents' reports.
///
/// # Errors
/// [`FleetError`]: bad input, an unreachable broker, or (with `--wait`) agents that did not
/// apply it.
pub fn deploy(args: &DeployArgs) -> Result<(), FleetError> {
    let bundle = bundle(&args.dir)?;
    let key = read_key(&args.key)?;
    if args.chunk_bytes == 0 {
        return Err(FleetError::Usage("--chunk-bytes must be at least 1".into()));
    }
    if args.chunk_bytes + deployment::CHUNK_OVERHEAD_BYTES > args.max_packet_bytes {
        return Err(FleetError::Usage(format!(
            "--chunk-bytes {} does not fit the agents' packets (--max-packet-bytes {}, less {} for the topic)",
            args.chunk_bytes,
            args.max_packet_bytes,
            deployment::CHUNK_OVERHEAD_BYTES
        )));
    }
    // What the agents take as their `[fleet] group`: another name would go out to a topic
    // no agent listens on (until 2026-12-07 `bad/group` and `` did, with exit 0).
    if !edge_agent::config::is_name(&args.group) {
        return Err(FleetError::Usage(format!(
            "--group `{}`: 1-64 letters, digits, `-`, `_` or `.`, as the agents' [fleet] group",
            args.group
        )));
    }
    edge_agent::topic::validate_name(&deployment::document_topic(&args.prefix, &args.group))
        .map_err(|e| FleetError::Usage(format!("--group/--prefix: {e}")))?;
    // The document names every chunk's SHA-256 (67 bytes each): with small chunks and big
    // modules it outgrows a packet, and no agent could read it. Measured with the longest
    // version there is, before anything is published.
    let (probe, document) = seal(
        &bundle,
        &args.group,
        u64::MAX,
        args.chunk_bytes,
        args.modules_at.as_deref(),
        &key,
    );
    let size = serde_json::to_vec(&probe).map_or(0, |b| b.len());
    if size + deployment::CHUNK_OVERHEAD_BYTES > args.max_packet_bytes {
        let chunks: usize = document.modules.values().map(|m| m.chunks.len()).sum();
        return Err(FleetError::Usage(format!(
            "the signed document would be {size} bytes ({chunks} chunks, each named by its sha256), more than the agents' packets take (--max-packet-bytes {}): deploy with a larger --chunk-bytes, or raise every agent's broker.max_packet_bytes and pass it here",
            args.max_packet_bytes
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(publish(args, &bundle, &key))
}

async fn publish(
    args: &DeployArgs,
    bundle: &Bundle,
    key: &Ed25519KeyPair,
) -> Result<(), FleetError> {
    let url = args.broker.broker.clone();
    let opts = args.broker.options("deploy")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let doc_topic = deployment::document_topic(&args.prefix, &args.group);
    let reports = format!("{}/+/{}", args.prefix, DeploymentReport::TOPIC);
    client
        .subscribe(doc_topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| FleetError::Broker(format!("{url}: {e}")))?;
    if args.wait > 0 {
        let _ = client.subscribe(reports.clone(), QoS::AtLeastOnce).await;
    }
    // The group's current version, from the retained document: read until the broker has
    // answered the subscription and a moment more.
    let mut retained = None;
    // The agents' reports that come before `wait` follows them (their retained ones come
    // right after the subscription): until 2026-12-08 they were dropped, so a wait that
    // ran out could not name the agents that had reported only before it (a probe).
    let mut early: Vec<rumqttc::Publish> = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    let mut subscribed = false;
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(until), if subscribed => break,
            ev = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()) => ev,
        };
        match ev {
            Err(_) => return Err(FleetError::Broker(format!("{url}: no answer in 10 s"))),
            Ok(Err(e)) => return Err(FleetError::Broker(format!("{url}: {e}"))),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == doc_topic => {
                retained = Some(p.payload);
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => early.push(p),
            Ok(Ok(_)) => {}
        }
    }
    let current = retained
        .filter(|p| !p.is_empty())
        .and_then(|p| signed_by(&p, key, &args.group));
    let version = match (args.version, current.as_ref().map(|d| d.version)) {
        (Some(v), Some(c)) if v <= c => {
            return Err(FleetError::Usage(format!(
                "--version {v} is not newer than the group's version {c}; agents would refuse it"
            )));
        }
        (Some(v), _) => v,
        (None, None) => 1,
        (None, Some(c)) => c.checked_add(1).ok_or_else(|| {
            FleetError::Usage(format!(
                "the group's version is {c}, the largest there is: no deployment can be newer"
            ))
        })?,
    };
    let (envelope, document) = seal(
        bundle,
        &args.group,
        version,
        args.chunk_bytes,
        args.modules_at.as_deref(),
        key,
    );
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    let mut messages = 0usize;
    for (name, bytes) in &bundle.modules {
        let m = &document.modules[name];
        if let Some(path) = &m.path {
            eprintln!(
                "module {name}: {} bytes, sha256 {}, read by each device at {path}",
                m.size, m.sha256
            );
            continue;
        }
        for (i, chunk) in bytes.chunks(args.chunk_bytes).enumerate() {
            let topic = deployment::chunk_topic(&args.prefix, &args.group, &m.sha256, i);
            send(
                &client,
                &mut eventloop,
                &url,
                topic,
                chunk.to_vec(),
                &mut messages,
                &mut early,
            )
            .await?;
        }
        eprintln!(
            "module {name}: {} bytes in {} chunk(s), sha256 {}",
            m.size,
            m.chunks.len(),
            m.sha256
        );
    }
    // What came before the document cannot be about it (retained reports, and those of
    // an earlier deployment of the same version): named in the end, never counted.
    let before_document = early.len();
    // The document last: an agent that reads it finds every chunk already retained.
    send(
        &client,
        &mut eventloop,
        &url,
        doc_topic,
        body,
        &mut messages,
        &mut early,
    )
    .await?;
    // The chunks only the replaced document used: cleared, so that the broker does not
    // keep every module version ever deployed (an agent that reads the new document never
    // asks for them).
    for m in current.iter().flat_map(|d| d.modules.values()) {
        let keep = document
            .modules
            .values()
            .find(|n| n.sha256 == m.sha256)
            .map_or(0, |n| n.chunks.len());
        for i in keep..m.chunks.len() {
            let topic = deployment::chunk_topic(&args.prefix, &args.group, &m.sha256, i);
            send(
                &client,
                &mut eventloop,
                &url,
                topic,
                Vec::new(),
                &mut messages,
                &mut early,
            )
            .await?;
        }
    }
    // Every PUBACK in.
    while messages > 0 {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Err(_) => {
                return Err(FleetError::Broker(format!(
                    "{url}: no acknowledgement in 30 s"
                )));
            }
            Ok(Err(e)) => return Err(FleetError::Broker(format!("{url}: {e}"))),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => messages -= 1,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => early.push(p),
            Ok(Ok(_)) => {}
        }
    }
    println!(
        "deployment {version} of group {} published: {} function(s), {} module(s)",
        args.group,
        document.functions.len(),
        document.modules.len()
    );
    if args.wait == 0 {
        let _ = client.disconnect().await;
        return Ok(());
    }
    wait(args, version, &mut eventloop, early, before_document).await
}

/// Hands one retained QoS 1 message to the client, polling the event loop meanwhile so
/// that the request queue never fills.
async fn send(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    url: &str,
    topic: String,
    payload: Vec<u8>,
    unacked: &mut usize,
    received: &mut Vec<rumqttc::Publish>,
) -> Result<(), FleetError> {
    client
        .try_publish(topic, QoS::AtLeastOnce, true, payload)
        .map_err(|e| FleetError::Broker(format!("{url}: {e}")))?;
    *unacked += 1;
    // Drive the loop until the message has gone out.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Err(_) => return Err(FleetError::Broker(format!("{url}: stalled"))),
            Ok(Err(e)) => return Err(FleetError::Broker(format!("{url}: {e}"))),
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => return Ok(()),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => *unacked -= 1,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => received.push(p),
            Ok(Ok(_)) => {}
        }
    }
}

/// The group's retained document, if this key signed it. Only then are its version and
/// modules taken: anyone who can publish on the broker can retain a document, and until
/// 2026-12-08 an unsigned one with version 2^64-1 made the next deploy wrap to version 0,
/// which every agent refused, and made any `--version` "not newer than the group's" (a
/// probe, 2026-12-07). One signed by another trusted key is said, and left too.
fn signed_by(payload: &[u8], key: &Ed25519KeyPair, group: &str) -> Option<Document> {
    let own: [u8; 32] = key.public_key().as_ref().try_into().ok()?;
    match Envelope::open(payload, &[own], group) {
        Ok(document) => Some(document),
        Err(why) => {
            let claimed = serde_json::from_slice::<Envelope>(payload)
                .ok()
                .and_then(|e| serde_json::from_str::<Document>(&e.document).ok())
                .map_or_else(String::new, |d| {
                    format!(" (it claims version {})", d.version)
                });
            eprintln!(
                "warning: the group's retained document{claimed} was not signed by this key \
                 ({why}): its version is not taken. If the agents refuse this deployment as \
                 not newer, deploy again with a --version above the one they name"
            );
            None
        }
    }
}

/// Follows the agents' reports on `version` until `args.wait` have applied it (past
/// probation), one refused or rolled it back, or the wait is over.
async fn wait(
    args: &DeployArgs,
    version: u64,
    eventloop: &mut rumqttc::EventLoop,
    early: Vec<rumqttc::Publish>,
    before_document: usize,
) -> Result<(), FleetError> {
    // Each with whether it may tell of this deployment: not before its document was
    // published (until 2026-12-08, a probe: the agents' retained "applied" of the version
    // in force made a redeploy of that version, which they refused, "applied by 2").
    let mut early = early
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i >= before_document));
    let until = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let mut done: BTreeMap<String, DeploymentReport> = BTreeMap::new();
    // Every agent of the group heard of (its retained report, of any version) and what it
    // said last: at the end of the wait, those that have not applied are named with it
    // (until 2026-12-08 the error gave a count alone).
    // With whether it came after the document, live: a report from before names what the
    // agent did before (a probe, 2026-12-08: two offline agents were listed as
    // "site/2 applied" in the error that version 2 was not applied).
    let mut heard: BTreeMap<String, (DeploymentReport, bool)> = BTreeMap::new();
    loop {
        let applied = done
            .values()
            .filter(|r| r.state == DeploymentState::Applied)
            .count();
        if applied >= args.wait {
            println!("applied by {applied} agent(s)");
            return Ok(());
        }
        let (p, after_document) = match early.next() {
            Some(early) => early,
            None => {
                let ev = tokio::select! {
                    () = tokio::time::sleep_until(until) => {
                        return Err(FleetError::NotApplied(format!(
                            "{applied} of {} agent(s) applied deployment {version} within {} s; {}",
                            args.wait,
                            args.wait_secs,
                            not_yet(&args.group, &heard, &done, edge_agent::clock::now_ms()),
                        )));
                    }
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => (p, true),
                    Ok(_) => continue,
                    Err(e) => {
                        return Err(FleetError::Broker(format!("{}: {e}", args.broker.broker)));
                    }
                }
            }
        };
        let Ok(r) = DeploymentReport::from_bytes(&p.payload) else {
            continue;
        };
        // A deployment an agent cannot open (wrongly signed, another group's key) has no
        // version it can trust: refused without one. Live (not the retained copy of an
        // older report) it is this deployment's; until 2026-12-07 `--wait` ignored it and
        // ran out its time without the agent's reason.
        let unopened = r.version.is_none() && r.state == DeploymentState::Refused && !p.retain;
        if r.group == args.group {
            heard.insert(r.agent.clone(), (r.clone(), after_document && !p.retain));
        }
        if r.group != args.group
            || (r.version != Some(version) && !unopened)
            || p.retain
            || !after_document
        {
            continue;
        }
        match r.state {
            DeploymentState::Applied if !r.probation => {
                println!("{}: applied", r.agent);
                done.insert(r.agent.clone(), r);
            }
            DeploymentState::Refused | DeploymentState::RolledBack => {
                let why = r.reason.clone().unwrap_or_default();
                let state = if r.state == DeploymentState::Refused {
                    "refused"
                } else {
                    "rolled back"
                };
                // The agents' record is the truth the retained document may not tell (the
                // broker lost it, or someone replayed an older one).
                let hint = if why.starts_with("replayed or older") {
                    ": deploy again with a --version above the one the agent names"
                } else {
                    ""
                };
                return Err(FleetError::NotApplied(format!(
                    "{}: {state}: {why}{hint}",
                    r.agent
                )));
            }
            _ => {}
        }
    }
}

/// For `deploy --wait`'s error when the wait ran out: each agent of `group` heard of that
/// has not applied, with its last report at `now_ms`.
fn not_yet(
    group: &str,
    heard: &BTreeMap<String, (DeploymentReport, bool)>,
    done: &BTreeMap<String, DeploymentReport>,
    now_ms: u64,
) -> String {
    let waiting: Vec<String> = heard
        .iter()
        .filter(|(agent, _)| !done.contains_key(*agent))
        .map(|(agent, (r, live))| {
            if *live {
                format!("{agent} ({})", r.summary_at(now_ms))
            } else {
                format!(
                    "{agent} (no report since this deployment: offline?; its last, from before: {})",
                    r.summary_at(now_ms)
                )
            }
        })
        .collect();
    if waiting.is_empty() {
        format!(
            "no other agent of group `{group}` has reported on this broker (are they \
             online, with `[fleet] group = \"{group}\"` and this --prefix?)"
        )
    } else {
        format!("not applied by: {}", waiting.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_runs_out_names_the_agents_that_have_not_applied() {
        let report = |agent: &str, version, state, chunks| DeploymentReport {
            schema_version: DeploymentReport::SCHEMA_VERSION,
            agent: agent.into(),
            group: "site".into(),
            version: Some(version),
            state,
            reason: None,
            in_force: Some(6),
            probation: false,
            chunks,
            ts_ms: 1_000_000,
        };
        let heard = BTreeMap::from([
            (
                "a".into(),
                (report("a", 7, DeploymentState::Applied, None), true),
            ),
            (
                "b".into(),
                (
                    report("b", 7, DeploymentState::Downloading, Some([3, 10])),
                    true,
                ),
            ),
            (
                "c".into(),
                (report("c", 6, DeploymentState::Applied, None), true),
            ),
            (
                "d".into(),
                (report("d", 7, DeploymentState::Applied, None), false),
            ),
        ]);
        let done = BTreeMap::from([("a".into(), heard["a"].0.clone())]);
        assert_eq!(
            not_yet("site", &heard, &done, 1_040_000),
            "not applied by: b (site/7 downloading 3/10 chunks, in force: 6, no chunk for 40 s), \
             c (site/6 applied), d (no report since this deployment: offline?; its last, from \
             before: site/7 applied)"
        );
        assert!(
            not_yet("site", &BTreeMap::new(), &done, 0).contains("no other agent of group `site`")
        );
    }

    #[test]
    fn a_key_pair_signs_what_an_agent_trusting_it_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        // In a folder that is not there yet, as fleet.md's `~/.config/edge-agent/ops.key`
        // on a fresh machine.
        let key = dir.path().join("config/edge-agent/ops.key");
        let public = keygen(&KeygenArgs { key: key.clone() }).expect("keygen");
        let again = keygen(&KeygenArgs { key: key.clone() })
            .unwrap_err()
            .to_string();
        assert!(again.contains("does not overwrite"), "{again}");
        std::fs::write(
            dir.path().join("functions.toml"),
            "[[function]]\nname = \"e\"\nmodule = \"m/e.wasm\"\ntopics = [\"t\"]\n",
        )
        .expect("functions.toml");
        std::fs::create_dir(dir.path().join("m")).expect("m");
        std::fs::write(dir.path().join("m/e.wasm"), vec![7u8; 1000]).expect("module");
        let b = bundle(dir.path()).expect("a bundle");
        assert_eq!(b.functions[0]["module"], "e.wasm");
        let (envelope, doc) = seal(&b, "g", 4, 300, None, &read_key(&key).expect("the key"));
        assert_eq!(doc.modules["e.wasm"].chunks.len(), 4);
        let trusted = [edge_agent::deployment::parse_key(&public).expect("32 bytes")];
        let payload = serde_json::to_vec(&envelope).expect("json");
        let opened = Envelope::open(&payload, &trusted, "g").expect("opens");
        assert_eq!(opened.version, 4);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is its owner's only");
    }
}

//! The embedded broker (rumqttd), for a zero-setup agent: `[broker] embedded = true`.
//!
//! It keeps sessions in memory only, so queued messages do not survive a restart of the
//! agent. Production devices point `broker.url` at Mosquitto or a clustered broker.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::MqttError;
use crate::config::{BrokerAddress, Config};

/// Starts rumqttd on the host and port of `broker.url` on its own threads and waits until
/// it accepts connections; returns the address it listens on. Port 0 picks a free port
/// (tests run many agents at once this way, with no race for ports). The broker runs until
/// the process exits: rumqttd 0.20 has no way to stop it.
///
/// # Errors
/// [`MqttError::Broker`] if the address is unusable or taken, or the broker does not come
/// up within five seconds.
pub fn start(cfg: &Config) -> Result<SocketAddr, MqttError> {
    let addr = BrokerAddress::parse(&cfg.broker.url)?;
    let listen = (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| MqttError::broker(format!("cannot resolve {}", addr.host), e))?
        .next()
        .ok_or_else(|| MqttError::broker(format!("cannot resolve {}", addr.host), "no address"))?;
    // rumqttd only logs a failed bind from its own thread; check first for a clear error.
    if listen.port() != 0 {
        TcpListener::bind(listen).map_err(|e| {
            MqttError::broker(
                format!(
                    "cannot listen on {listen} (is another broker running? set broker.url or embedded = false)"
                ),
                e,
            )
        })?;
    }
    let broker_cfg = broker_config(cfg, listen);
    // rumqttd binds inside its own thread and does not say where: for port 0, the new
    // listening socket of this process is the broker's. One start at a time, so that two
    // brokers starting at once cannot take each other's socket for their own.
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    let before = own_listeners();
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(broker_cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| MqttError::broker("cannot start its thread", e))?;

    let deadline = Instant::now() + Duration::from_secs(5);
    let bound = loop {
        let candidate = match listen.port() {
            0 => own_listeners()
                .difference(&before)
                .next()
                .map(|&(_, port)| SocketAddr::new(listen.ip(), port)),
            _ => Some(listen),
        };
        if let Some(a) = candidate
            && TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
        {
            break a;
        }
        if Instant::now() > deadline {
            return Err(MqttError::broker(
                format!("did not start listening on {listen}"),
                "no listening socket after 5 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let auth = match (&cfg.broker.username, addr.is_loopback()) {
        (Some(_), _) => "username and password",
        (None, true) => "anonymous, loopback only",
        (None, false) => "anonymous, open to the network (allow_anonymous = true)",
    };
    tracing::info!(listen = %bound, auth, "embedded MQTT broker (rumqttd) listening; sessions are kept in memory only");
    Ok(bound)
}

/// Largest packet the embedded broker takes from a client: 16 MiB, or
/// `broker.max_packet_bytes` if larger. It holds a message whole while it routes it.
const EMBEDDED_MAX_PACKET: usize = 16 * 1024 * 1024;

/// rumqttd keeps every message it routes in a log per subscription filter, delivered or
/// not, and drops a log's oldest segment only once it has `SEGMENTS` of `SEGMENT_BYTES`
/// (counting topic and payload bytes; each message takes about 200 bytes more memory).
/// The log is also each subscriber's queue, and publishers are acknowledged at once, so a
/// burst lands in it whole: a subscriber (the agent's intake) that falls further behind
/// than its log reaches skips to the log's start, losing what was between (rumqttd then
/// warns "jumping to head", which the agent's log shows). So these bound both the
/// broker's memory and the burst it absorbs: 24-32 MiB of topics and payloads per filter,
/// 24,000 events of 1 KB at least (about 45 MB of memory) or 600,000 of 40 bytes (about
/// 180 MB), like the 32 MiB per client the package sets for Mosquitto
/// (cross/deb/mosquitto.conf). Until 2026-12-06 it was 10 of 100 MiB, 1 GiB per filter,
/// which a demo filled by 85 MB per 50,000 events of 1 KB and never gave back.
const SEGMENT_BYTES: usize = 8 * 1024 * 1024;
const SEGMENTS: usize = 4;

/// rumqttd's configuration: one plain-TCP listener on `listen`, with the agent's
/// credentials when it has some.
fn broker_config(cfg: &Config, listen: SocketAddr) -> rumqttd::Config {
    let auth = cfg.broker.username.as_ref().map(|user| {
        let password = cfg.broker.password.clone().unwrap_or_default();
        HashMap::from([(user.clone(), password)])
    });
    let server = rumqttd::ServerSettings {
        name: "embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            // Past the agent's own limit, so that a message too large for the agent reaches
            // it and becomes a `payload-too-large` dead letter (its payload skipped unread),
            // rather than the broker dropping the publisher's connection without a word.
            max_payload_size: cfg.broker.max_packet_bytes.max(EMBEDDED_MAX_PACKET),
            max_inflight_count: 100,
            auth,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            // Also how many retained messages a new QoS 0 subscription is handed (the rest
            // are dropped): a deployment's block of chunks whole (daemon::deploy's
            // `chunk_qos`), two at once.
            max_outgoing_packet_count: 2 * crate::deployment::CHUNKS_PER_BLOCK as u64,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// The TCP sockets this process listens on, as (inode, port), from `/proc`.
fn own_listeners() -> HashSet<(u64, u16)> {
    let own: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut out = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // Columns: sl local_address rem_address st ... inode (the 10th).
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, inode.parse::<u64>())
                && own.contains(&inode)
            {
                out.insert((inode, port));
            }
        }
    }
    out
}

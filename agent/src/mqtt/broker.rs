//! The embedded broker (rumqttd), for a zero-setup agent: `[broker] embedded = true`.
//!
//! It keeps sessions in memory only, so queued messages do not survive a restart of the
//! agent. Production devices point `broker.url` at Mosquitto or a clustered broker.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::MqttError;
use crate::config::{BrokerAddress, Config};

/// Starts rumqttd on the host and port of `broker.url` on its own threads and waits until
/// it accepts connections. It runs until the process exits.
///
/// # Errors
/// [`MqttError::Broker`] if the address is unusable or taken, or the broker does not come
/// up within five seconds.
pub fn start(cfg: &Config) -> Result<SocketAddr, MqttError> {
    let addr = BrokerAddress::parse(&cfg.broker.url).map_err(MqttError::Broker)?;
    let listen = (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| MqttError::Broker(format!("cannot resolve {}: {e}", addr.host)))?
        .next()
        .ok_or_else(|| MqttError::Broker(format!("{} has no address", addr.host)))?;
    // rumqttd only logs a failed bind from its own thread; check first for a clear error.
    TcpListener::bind(listen).map_err(|e| {
        MqttError::Broker(format!(
            "cannot listen on {listen}: {e} (is another broker running? set broker.url or embedded = false)"
        ))
    })?;

    let auth = match (&cfg.broker.username, &cfg.broker.password) {
        (Some(u), p) => format!(
            "[v4.1.connections.auth]\n{} = {}\n",
            toml_string(u),
            toml_string(p.as_deref().unwrap_or(""))
        ),
        _ => String::new(),
    };
    let max_payload = cfg.broker.max_packet_bytes;
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "embedded"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = 100
dynamic_filters = true
{auth}"#
    );
    let broker_cfg: rumqttd::Config = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| MqttError::Broker(format!("internal broker config: {e}")))?;
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(broker_cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| MqttError::Broker(format!("cannot start thread: {e}")))?;

    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(MqttError::Broker(format!(
                "did not start listening on {listen}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%listen, "embedded MQTT broker (rumqttd) listening; sessions are kept in memory only");
    Ok(listen)
}

fn toml_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

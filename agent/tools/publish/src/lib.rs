//! `edge-agent publish`: a test publisher that waits until the broker has acknowledged
//! every message (QoS 1 and 2) before it returns; and [`BrokerArgs`], the broker flags that
//! every client command (`publish`, `top`) shares.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet};

use clap::Args;
use std::path::PathBuf;

/// Why the broker arguments cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerArgsError {
    /// `--broker` is not a broker URL.
    #[error("--broker")]
    Url(#[from] edge_agent::config::UrlError),
    /// `--ca-file`, `--cert-file` or `--key-file` cannot be used (the error names which).
    #[error(transparent)]
    Tls(#[from] edge_agent::mqtt::MqttError),
    /// A TLS file with a plain `mqtt://` broker, which would never read it.
    #[error(
        "{0} is for an mqtts:// broker; --broker {1} is plain mqtt:// (use mqtts:// to \
         connect with TLS, or leave {0} out)"
    )]
    CaWithoutTls(&'static str, String),
}

/// Where the broker is and how to log in: the commands that connect as clients.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker URL, e.g. mqtt://127.0.0.1:1883 or mqtts://broker.example:8883.
    #[arg(short, long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// User name for the broker.
    #[arg(long)]
    pub username: Option<String>,
    /// Password for the broker.
    #[arg(long)]
    pub password: Option<String>,
    /// CA certificate (PEM) for mqtts:// brokers.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for mqtts:// brokers that require one (mutual TLS,
    /// as AWS IoT Core does); with --key-file.
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted); with --cert-file.
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// Client options for a connection of the `edge-agent <command>` process (a client id
    /// of its own: command, pid and time; clean session, 30 s keep-alive).
    ///
    /// # Errors
    /// A bad `--broker` URL or TLS file.
    pub fn options(&self, command: &str) -> Result<rumqttc::MqttOptions, BrokerArgsError> {
        let client_id = format!(
            "edge-agent-{command}-{}-{}",
            std::process::id(),
            edge_agent::clock::now_ms()
        );
        let client_id = client_id.as_str();
        let addr = edge_agent::config::BrokerAddress::parse(&self.broker)?;
        // Refused as the config refuses `[broker.tls]` with mqtt://: until 2026-12-08 the
        // file was silently never read, and the connection went out in plain text.
        let given = [
            ("--ca-file", self.ca_file.is_some()),
            ("--cert-file", self.cert_file.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given && !addr.tls) {
            return Err(BrokerArgsError::CaWithoutTls(flag, self.broker.clone()));
        }
        let tls = edge_agent::config::TlsConfig {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        let mut opts = edge_agent::mqtt::options::client_options(&addr, client_id, Some(&tls))
            .map_err(|e| match e {
                // The flag, where the agent's error names its config key.
                edge_agent::mqtt::MqttError::Tls { key, what, source } => {
                    edge_agent::mqtt::MqttError::Tls {
                        key: match key {
                            "broker.tls.ca_file" => "--ca-file",
                            "broker.tls.cert_file" => "--cert-file",
                            "broker.tls.key_file" => "--key-file",
                            key => key,
                        },
                        what,
                        source,
                    }
                }
                e => e,
            })?;
        opts.set_keep_alive(std::time::Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
        if let Some(u) = &self.username {
            opts.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        Ok(opts)
    }
}

/// Arguments of `edge-agent publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Topic to publish on.
    #[arg(short, long)]
    pub topic: String,
    /// Payload; `{seq}` (0, 1, ...) and `{ts_ms}` (ms since the Unix epoch) are replaced
    /// in each message.
    #[arg(
        short,
        long,
        conflicts_with = "payload_file",
        required_unless_present = "payload_file"
    )]
    pub payload: Option<String>,
    /// Read the payload from a file (placeholders are replaced too if it is UTF-8).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Number of messages.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: u64,
    /// Messages per second (default: as fast as the broker takes them).
    #[arg(short, long, value_parser = rate)]
    pub rate: Option<f64>,
    /// QoS (0, 1 or 2).
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Set the retain flag.
    #[arg(long)]
    pub retain: bool,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Bad broker arguments.
    #[error(transparent)]
    Args(#[from] BrokerArgsError),
    /// The broker could not be reached or dropped the connection.
    #[error("broker {url}, with {done} of {count} messages {what}")]
    Broker {
        /// The broker's URL.
        url: String,
        /// Messages the broker had acknowledged (QoS 0: sent) by then.
        done: u64,
        /// Messages asked for.
        count: u64,
        /// "acknowledged" or, at QoS 0, "sent".
        what: &'static str,
        /// What the connection said (boxed: it is large).
        #[source]
        source: Box<rumqttc::ConnectionError>,
    },
    /// Stopped by SIGINT (Ctrl-C) or SIGTERM before the end.
    #[error("stopped, with {done} of {count} messages {what}")]
    Stopped {
        /// As in [`PublishError::Broker`].
        done: u64,
        /// Messages asked for.
        count: u64,
        /// "acknowledged" or, at QoS 0, "sent".
        what: &'static str,
    },
    /// The broker stopped acknowledging.
    #[error("broker {url}: no progress for 30 s, with {done} of {count} messages {what}")]
    Stalled {
        /// The broker's URL.
        url: String,
        /// As in [`PublishError::Broker`].
        done: u64,
        /// Messages asked for.
        count: u64,
        /// "acknowledged" or, at QoS 0, "sent".
        what: &'static str,
    },
}

impl PublishError {
    /// How the command ends: bad arguments, or a broker that is not there.
    pub fn exit(&self) -> edge_agent::failure::Exit {
        match self {
            Self::Usage(_) | Self::Args(_) => edge_agent::failure::Exit::Usage,
            Self::Broker { .. } | Self::Stalled { .. } => edge_agent::failure::Exit::Unavailable,
            Self::Stopped { .. } => edge_agent::failure::Exit::Failure,
        }
    }
}

/// Replaces `{seq}` and `{ts_ms}` in a payload template.
pub fn render(template: &str, seq: u64, ts_ms: u64) -> String {
    template
        .replace("{seq}", &seq.to_string())
        .replace("{ts_ms}", &ts_ms.to_string())
}

/// The payload: text with placeholders, or bytes sent as they are.
type Template = Result<String, Vec<u8>>;

fn template(args: &PublishArgs) -> Result<Template, PublishError> {
    match (&args.payload, &args.payload_file) {
        (Some(p), _) => Ok(Ok(p.clone())),
        (None, Some(f)) => {
            let bytes = std::fs::read(f)
                .map_err(|e| PublishError::Usage(format!("cannot read {}: {e}", f.display())))?;
            Ok(String::from_utf8(bytes).map_err(|e| e.into_bytes()))
        }
        (None, None) => Err(PublishError::Usage(
            "give --payload or --payload-file".into(),
        )),
    }
}

fn connect(args: &PublishArgs) -> Result<(AsyncClient, rumqttc::EventLoop), PublishError> {
    let opts = args.broker.options("publish")?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    // The agent's defaults: TCP_NODELAY, and the connect timeout of a slow link.
    edge_agent::mqtt::options::network(
        &mut eventloop,
        &edge_agent::config::BrokerConfig::default(),
    );
    Ok((client, eventloop))
}

/// Publishes `args.count` messages and waits for the broker's acknowledgements.
///
/// # Errors
/// [`PublishError`] for bad arguments or a broker that cannot be reached.
pub async fn publish(args: &PublishArgs) -> Result<u64, PublishError> {
    edge_agent::topic::validate_name(&args.topic)
        .map_err(|e| PublishError::Usage(format!("topic `{}` {e}", args.topic)))?;
    let template = template(args)?;
    let (client, mut eventloop) = connect(args)?;
    let producer = tokio::spawn(produce(client.clone(), args.clone(), template));
    let count = args.count;
    let (mut sent, mut acked) = (0u64, 0u64);
    // How far it got: at QoS 0 what was sent, else what the broker acknowledged (a fault
    // test, a broker restarted under the stream, needs to know it when the stream fails).
    let (what, so_far): (&str, fn(u64, u64) -> u64) = if args.qos == 0 {
        ("sent", |sent, _| sent)
    } else {
        ("acknowledged", |_, acked| acked)
    };
    // A long stream stopped by Ctrl-C says how far it got (it ended silently, 130).
    let stop = edge_agent::daemon::shutdown::stop_signal();
    tokio::pin!(stop);
    while so_far(sent, acked) < count {
        let polled = tokio::select! {
            polled = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()) => polled,
            _ = &mut stop => {
                return Err(PublishError::Stopped { done: so_far(sent, acked), count, what });
            }
        };
        match polled {
            Err(_) => {
                return Err(PublishError::Stalled {
                    url: args.broker.broker.clone(),
                    done: so_far(sent, acked),
                    count,
                    what,
                });
            }
            Ok(Err(source)) => {
                return Err(PublishError::Broker {
                    url: args.broker.broker.clone(),
                    done: so_far(sent, acked),
                    count,
                    what,
                    source: Box::new(source),
                });
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))) => acked += 1,
            Ok(Ok(_)) => {}
        }
    }
    let _ = producer.await;
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(sent)
}

/// Parses `--rate` ([`edge_agent::rate::parse`]).
fn rate(s: &str) -> Result<f64, String> {
    edge_agent::rate::parse(s)
        .map_err(|e| format!("{e} (leave it out for as fast as the broker takes them)"))
}

/// Hands the messages to the client, paced at `--rate` if given.
async fn produce(client: AsyncClient, args: PublishArgs, template: Template) {
    let qos = edge_agent::event::mqtt_qos(args.qos);
    let mut ticker = args.rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for seq in 0..args.count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let payload = match &template {
            Ok(text) => render(text, seq, edge_agent::clock::now_ms()).into_bytes(),
            Err(bytes) => bytes.clone(),
        };
        if client
            .publish(args.topic.clone(), qos, args.retain, payload)
            .await
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tls_file_with_a_plain_broker_is_refused() {
        let mut args = super::BrokerArgs {
            broker: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            ca_file: Some("/nonexistent.pem".into()),
            cert_file: None,
            key_file: None,
        };
        let e = args.options("t").expect_err("refused").to_string();
        assert!(e.contains("--ca-file is for an mqtts:// broker"), "{e}");
        args.ca_file = None;
        args.cert_file = Some("/nonexistent.pem".into());
        args.key_file = Some("/nonexistent.key".into());
        let e = args.options("t").expect_err("refused").to_string();
        assert!(e.contains("--cert-file is for an mqtts:// broker"), "{e}");
        // On mqtts://, a file that cannot be read is named by its flag.
        args.broker = "mqtts://127.0.0.1:8883".into();
        let e = args.options("t").expect_err("refused");
        let e = edge_agent::failure::chain(&e);
        assert!(e.starts_with("`--cert-file`: /nonexistent.pem"), "{e}");
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(
            super::render("{\"n\":{seq},\"t\":{ts_ms}}", 7, 42),
            "{\"n\":7,\"t\":42}"
        );
        assert_eq!(super::render("plain", 1, 2), "plain");
    }

    #[test]
    fn a_rate_is_a_number_of_messages_a_second_that_can_be_paced() {
        for ok in ["0.5", "300", "1e6", "0.000001"] {
            let r = super::rate(ok).expect(ok);
            // The period every rate taken gives: non-zero, and a Duration.
            assert!(
                !std::time::Duration::from_secs_f64(1.0 / r).is_zero(),
                "{ok}"
            );
        }
        for bad in ["0", "-5", "NaN", "inf", "1e10", "1e-300", "fast"] {
            assert!(super::rate(bad).is_err(), "{bad} was taken");
        }
    }
}

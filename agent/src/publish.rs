//! `edge-agent publish`: a test publisher that waits until the broker has acknowledged
//! every message (QoS 1 and 2) before it returns.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet};

use crate::cli::PublishArgs;
use crate::config::{Config, TlsConfig};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The broker could not be reached or dropped the connection.
    #[error("broker: {0}")]
    Broker(String),
}

/// Replaces `{seq}` and `{ts_ms}` in a payload template.
pub fn render(template: &str, seq: u64, ts_ms: u64) -> String {
    template
        .replace("{seq}", &seq.to_string())
        .replace("{ts_ms}", &ts_ms.to_string())
}

/// Publishes `args.count` messages and waits for the broker's acknowledgements.
///
/// # Errors
/// [`PublishError`] for bad arguments or a broker that cannot be reached.
pub async fn publish(args: &PublishArgs) -> Result<u64, PublishError> {
    crate::mqtt::topic::validate_name(&args.topic)
        .map_err(|e| PublishError::Usage(format!("topic `{}` {e}", args.topic)))?;
    let template: Result<String, Vec<u8>> = match (&args.payload, &args.payload_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            let bytes = std::fs::read(f)
                .map_err(|e| PublishError::Usage(format!("cannot read {}: {e}", f.display())))?;
            String::from_utf8(bytes).map_err(|e| e.into_bytes())
        }
        (None, None) => {
            return Err(PublishError::Usage(
                "give --payload or --payload-file".into(),
            ));
        }
    };
    let mut cfg_for_tls: Config = Config {
        agent: Default::default(),
        broker: Default::default(),
        runtime: Default::default(),
        state: Default::default(),
        functions: Vec::new(),
        source: "command line".into(),
    };
    cfg_for_tls.broker.tls = args.ca_file.clone().map(|ca| TlsConfig {
        ca_file: Some(ca),
        ..TlsConfig::default()
    });
    let id = format!(
        "edge-agent-publish-{}-{}",
        std::process::id(),
        crate::runtime::host::now_ms()
    );
    let mut opts = crate::mqtt::options::client_options(&args.broker, &id, &cfg_for_tls)
        .map_err(|e| PublishError::Usage(e.to_string()))?;
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
    if let Some(u) = &args.username {
        opts.set_credentials(u.clone(), args.password.clone().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    crate::mqtt::options::low_latency(&mut eventloop);
    let qos = crate::mqtt::qos(args.qos);
    let count = args.count;
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let topic = args.topic.clone();
    let retain = args.retain;
    let producer_client = client.clone();
    let producer = tokio::spawn(async move {
        let mut ticker = interval.map(|i| {
            let mut t = tokio::time::interval(i);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        for seq in 0..count {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let payload = match &template {
                Ok(text) => render(text, seq, crate::runtime::host::now_ms()).into_bytes(),
                Err(bytes) => bytes.clone(),
            };
            if producer_client
                .publish(topic.clone(), qos, retain, payload)
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let (mut sent, mut acked) = (0u64, 0u64);
    let done = |sent: u64, acked: u64| match args.qos {
        0 => sent >= count,
        _ => acked >= count,
    };
    while !done(sent, acked) {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Err(_) => return Err(PublishError::Broker("no progress for 30 s".into())),
            Ok(Err(e)) => return Err(PublishError::Broker(format!("{} : {e}", args.broker))),
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

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(
            super::render("{\"n\":{seq},\"t\":{ts_ms}}", 7, 42),
            "{\"n\":7,\"t\":42}"
        );
        assert_eq!(super::render("plain", 1, 2), "plain");
    }
}

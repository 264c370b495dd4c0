//! `edge-agent publish`: a test publisher that waits until the broker has acknowledged
//! every message (QoS 1 and 2) before it returns.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet};

use super::PublishArgs;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The broker could not be reached or dropped the connection.
    #[error("broker {url}")]
    Broker {
        /// The broker's URL.
        url: String,
        /// What the connection said (boxed: it is large).
        #[source]
        source: Box<rumqttc::ConnectionError>,
    },
    /// The broker stopped acknowledging.
    #[error("broker {0}: no progress for 30 s")]
    Stalled(String),
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
    let opts = args
        .broker
        .options("publish")
        .map_err(PublishError::Usage)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    crate::mqtt::options::low_latency(&mut eventloop);
    Ok((client, eventloop))
}

/// Publishes `args.count` messages and waits for the broker's acknowledgements.
///
/// # Errors
/// [`PublishError`] for bad arguments or a broker that cannot be reached.
pub async fn publish(args: &PublishArgs) -> Result<u64, PublishError> {
    crate::topic::validate_name(&args.topic)
        .map_err(|e| PublishError::Usage(format!("topic `{}` {e}", args.topic)))?;
    let template = template(args)?;
    let (client, mut eventloop) = connect(args)?;
    let producer = tokio::spawn(produce(client.clone(), args.clone(), template));
    let count = args.count;
    let (mut sent, mut acked) = (0u64, 0u64);
    let done = |sent: u64, acked: u64| match args.qos {
        0 => sent >= count,
        _ => acked >= count,
    };
    while !done(sent, acked) {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Err(_) => return Err(PublishError::Stalled(args.broker.broker.clone())),
            Ok(Err(source)) => {
                return Err(PublishError::Broker {
                    url: args.broker.broker.clone(),
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

/// Hands the messages to the client, paced at `--rate` if given.
async fn produce(client: AsyncClient, args: PublishArgs, template: Template) {
    let qos = crate::event::mqtt_qos(args.qos);
    let mut ticker = args.rate.filter(|r| *r > 0.0).map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for seq in 0..args.count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let payload = match &template {
            Ok(text) => render(text, seq, crate::clock::now_ms()).into_bytes(),
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
    fn placeholders_are_replaced() {
        assert_eq!(
            super::render("{\"n\":{seq},\"t\":{ts_ms}}", 7, 42),
            "{\"n\":7,\"t\":42}"
        );
        assert_eq!(super::render("plain", 1, 2), "plain");
    }
}

//! Tests of the patch carried in `agent/vendor/rumqttc` (docs/architecture.md, "Vendored
//! crates"): requests that are ready leave together before one flush, in order, under the
//! in-flight limit and packet-id collisions; messages read before a lost connection are
//! not handed out after it; a message over the largest packet keeps the connection. A broker cannot show when a client flushes, so the peer here
//! is a plain socket speaking MQTT with rumqttc's own codec.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, Outgoing,
    Packet, PubAck, Publish, QoS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: usize = 64 * 1024;

/// The broker's side of one connection.
struct Peer {
    socket: TcpStream,
    buf: BytesMut,
}

impl Peer {
    /// A client connected to a fresh listener (its CONNECT answered), and the peer.
    async fn connect(inflight: u16) -> (AsyncClient, EventLoop, Self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut options = MqttOptions::new("batch", "127.0.0.1", port);
        options.set_inflight(inflight).set_max_request_batch(64);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let accept = async {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut peer = Self {
                socket,
                buf: BytesMut::new(),
            };
            assert!(matches!(peer.next().await, Some(Packet::Connect(_))));
            peer.send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )))
            .await;
            peer
        };
        let (peer, connack) = tokio::join!(accept, eventloop.poll());
        assert!(matches!(connack, Ok(Event::Incoming(Incoming::ConnAck(_)))));
        (client, eventloop, peer)
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, MAX).expect("encode");
        self.socket.write_all(&out).await.expect("write");
    }

    /// The next packet, or `None` if none comes within 300 ms.
    async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Ok(p) = Packet::read(&mut self.buf, MAX) {
                return Some(p);
            }
            let read = self.socket.read_buf(&mut self.buf);
            match tokio::time::timeout(Duration::from_millis(300), read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// The packet ids of the PUBLISHes that arrive until none comes for 300 ms.
    async fn published(&mut self) -> Vec<u16> {
        let mut ids = Vec::new();
        while let Some(p) = self.next().await {
            match p {
                Packet::Publish(p) => ids.push(p.pkid),
                other => panic!("unexpected {other:?}"),
            }
        }
        ids
    }
}

async fn publish(client: &AsyncClient, n: usize) {
    for i in 0..n {
        client
            .publish("t", QoS::AtLeastOnce, false, vec![i as u8])
            .await
            .expect("queued");
    }
}

/// Polls `eventloop` until stopped, so that the peer sees what it writes.
fn keep_polling(mut eventloop: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} })
}

#[tokio::test]
async fn ready_requests_leave_in_order_with_one_poll() {
    let (client, mut eventloop, mut peer) = Peer::connect(100).await;
    publish(&client, 5).await;
    // One poll: upstream writes one request per poll, the patch every ready one.
    let first = eventloop.poll().await.expect("poll");
    assert!(
        matches!(first, Event::Outgoing(Outgoing::Publish(1))),
        "{first:?}"
    );
    assert_eq!(peer.published().await, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_batch_stops_at_the_in_flight_limit() {
    let (client, eventloop, mut peer) = Peer::connect(3).await;
    publish(&client, 5).await;
    let polling = keep_polling(eventloop);
    assert_eq!(peer.published().await, [1, 2, 3], "three in flight at most");
    peer.send(Packet::PubAck(PubAck::new(1))).await;
    assert_eq!(
        peer.published().await,
        [1],
        "one more once one is confirmed"
    );
    polling.abort();
}

#[tokio::test]
async fn a_batch_stops_at_a_packet_id_collision() {
    let (client, eventloop, mut peer) = Peer::connect(3).await;
    publish(&client, 3).await;
    let polling = keep_polling(eventloop);
    assert_eq!(peer.published().await, [1, 2, 3]);
    // Confirmed out of order: id 1 is still taken when the next publish wraps to it.
    for id in [2, 3] {
        peer.send(Packet::PubAck(PubAck::new(id))).await;
    }
    publish(&client, 2).await;
    assert!(peer.published().await.is_empty(), "held until id 1 is free");
    peer.send(Packet::PubAck(PubAck::new(1))).await;
    assert_eq!(peer.published().await, [1, 2], "then in order");
    polling.abort();
}

#[tokio::test]
async fn messages_read_before_a_lost_connection_are_not_handed_out_after_it() {
    let (_client, mut eventloop, _peer) = Peer::connect(10).await;
    let mut stale = Publish::new("t", QoS::AtLeastOnce, "x");
    stale.pkid = 7;
    let events = &mut eventloop.state.events;
    events.push_back(Event::Incoming(Packet::Publish(stale)));
    events.push_back(Event::Outgoing(Outgoing::PingReq));
    eventloop.clean();
    let left: Vec<_> = eventloop.state.events.iter().collect();
    assert!(
        matches!(left[..], [Event::Outgoing(Outgoing::PingReq)]),
        "{left:?}"
    );
}

/// The next incoming PUBLISH, skipping anything else.
async fn incoming(eventloop: &mut EventLoop) -> Publish {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("poll") {
            return p;
        }
    }
}

#[tokio::test]
async fn a_message_over_the_largest_packet_is_skipped_and_the_connection_kept() {
    let (_client, mut eventloop, mut peer) = Peer::connect(10).await;
    // Its payload unread; the connection must go on, or the broker sends it again on the
    // next one, for ever. MqttOptions' largest incoming packet is 10 KiB by default.
    let (size, topic) = (300_000, "sensors/big");
    let mut big = Publish::new(topic, QoS::AtLeastOnce, vec![7; size]);
    big.pkid = 1;
    let mut small = Publish::new("sensors/small", QoS::AtMostOnce, "after");
    small.pkid = 0;
    let mut out = BytesMut::new();
    Packet::Publish(big)
        .write(&mut out, 1 << 20)
        .expect("encode");
    Packet::Publish(small).write(&mut out, MAX).expect("encode");
    // In pieces, so that the headers and the payload arrive in separate reads.
    let send = async {
        for piece in out.chunks(7_000) {
            peer.socket.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let receive = async {
        (
            incoming(&mut eventloop).await,
            incoming(&mut eventloop).await,
        )
    };
    let ((), (first, second)) = tokio::join!(send, receive);
    assert_eq!(
        (first.topic.as_str(), first.pkid, first.qos),
        (topic, 1, QoS::AtLeastOnce)
    );
    assert_eq!(first.payload_dropped, Some(size));
    assert!(first.payload.is_empty());
    assert_eq!(second.topic, "sensors/small");
    assert_eq!(
        (second.payload_dropped, &second.payload[..]),
        (None, &b"after"[..])
    );
}

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{parse_fixed_header, Error, Packet, PacketType, Publish, QoS};

/// MQTT v4 codec
#[derive(Debug, Clone)]
pub struct Codec {
    /// Maximum packet size allowed by client
    pub max_incoming_size: usize,
    /// Maximum packet size allowed by broker
    pub max_outgoing_size: usize,
    /// Patched (edge-agent): bytes still to skip of an incoming PUBLISH over
    /// `max_incoming_size`, whose headers were already handed out.
    pub discard: usize,
}

// Patched (edge-agent): an oversized PUBLISH is handed out without its payload.
impl Codec {
    /// Skips what is left of an oversized PUBLISH. True once nothing is left.
    fn skip(&mut self, src: &mut BytesMut) -> bool {
        let n = self.discard.min(src.len());
        src.advance(n);
        self.discard -= n;
        self.discard == 0
    }

    /// A PUBLISH over `max_incoming_size`: its topic and packet id, once they have arrived,
    /// with its payload left unread (skipped as it arrives). Any other packet that large
    /// is an error.
    fn oversized(&mut self, src: &mut BytesMut, len: usize) -> Result<Option<Packet>, Error> {
        let header = parse_fixed_header(src.iter())?;
        if header.packet_type()? != PacketType::Publish {
            return Err(Error::PayloadSizeLimitExceeded(len));
        }
        let start = header.fixed_header_len;
        let qos = super::qos((header.byte1 & 0b0110) >> 1)?;
        // The topic's length, then the topic, then the packet id if QoS > 0.
        let Some(topic_len) = src.get(start..start + 2) else {
            src.reserve(start + 2 - src.len());
            return Ok(None);
        };
        let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let topic_len = usize::from(u16::from_be_bytes([topic_len[0], topic_len[1]]));
        let headers = start + 2 + topic_len + pkid_len;
        if headers > header.frame_length() {
            return Err(Error::MalformedPacket);
        }
        if src.len() < headers {
            src.reserve(headers - src.len());
            return Ok(None);
        }
        let mut publish = Publish::read(header, src.split_to(headers).freeze())?;
        publish.payload_dropped = Some(header.frame_length() - headers);
        self.discard = header.frame_length() - headers;
        self.skip(src);
        Ok(Some(Packet::Publish(publish)))
    }
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if !self.skip(src) {
            return Ok(None);
        }
        match Packet::read(src, self.max_incoming_size) {
            Ok(packet) => Ok(Some(packet)),
            Err(Error::InsufficientBytes(b)) => {
                // Get more packets to construct the incomplete packet
                src.reserve(b);
                Ok(None)
            }
            // An oversized message must not break the connection: the broker would deliver
            // it again on the next one, for ever.
            Err(Error::PayloadSizeLimitExceeded(len)) => self.oversized(src, len),
            Err(e) => Err(e),
        }
    }
}

impl Encoder<Packet> for Codec {
    type Error = Error;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.write(dst, self.max_outgoing_size)?;

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Encoder;

    use super::Codec;
    use crate::{mqttbytes::Error, Packet, Publish, QoS};

    #[test]
    fn outgoing_max_packet_size_check() {
        let mut buf = BytesMut::new();
        let mut codec = Codec {
            max_incoming_size: 100,
            max_outgoing_size: 200,
            discard: 0,
        };

        let mut small_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 100]);
        small_publish.pkid = 1;
        codec
            .encode(Packet::Publish(small_publish), &mut buf)
            .unwrap();

        let large_publish = Publish::new("hello/world", QoS::AtLeastOnce, vec![1; 265]);
        match codec.encode(Packet::Publish(large_publish), &mut buf) {
            Err(Error::OutgoingPacketTooLarge {
                pkt_size: 281,
                max: 200,
            }) => {}
            _ => unreachable!(),
        }
    }
}

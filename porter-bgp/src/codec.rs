//! Framing and wire encoding: netgauze-bgp-pkt does the parsing and writing;
//! this layer checks the header first, so that a bad length or marker is
//! answered with the right NOTIFICATION instead of waiting for bytes that
//! will never come, and maps every decode failure to a NOTIFICATION.
use bytes::BytesMut;
use netgauze_bgp_pkt::{
    BgpMessage,
    codec::{BgpCodec, BgpCodecDecoderError},
    notification::{BgpNotificationMessage, MessageHeaderError},
    wire::serializer::BgpMessageWritingError,
};
use tokio_util::codec::{Decoder, Encoder};

/// RFC 4271 message size limits. We never advertise the extended message
/// capability (RFC 8654), so 4096 bounds every message in both directions.
pub const MIN_MESSAGE_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;
const MARKER_LEN: usize = 16;

/// Why a received byte stream could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("reading from the peer: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something malformed; the NOTIFICATION says what.
    #[error("malformed message from the peer: {reason}")]
    Malformed {
        reason: String,
        notification: BgpNotificationMessage,
    },
}

/// A [`BgpCodec`] with header validation in front of it.
#[derive(Debug, Default)]
pub struct WireCodec {
    inner: BgpCodec,
}

impl WireCodec {
    pub fn new() -> Self {
        Self {
            inner: BgpCodec::new(true),
        }
    }

    /// A codec that reads ADD-PATH NLRIs, as a peer receiving our UPDATEs
    /// does (for tests and tools that play the peer).
    pub fn expecting_path_ids() -> Self {
        use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
        use netgauze_iana::address_family::AddressType;
        let mut ctx = BgpParsingContext::default();
        ctx.add_path_mut().insert(AddressType::Ipv4Unicast, true);
        ctx.add_path_mut().insert(AddressType::Ipv6Unicast, true);
        Self {
            inner: BgpCodec::new_from_ctx(true, ctx),
        }
    }
}

fn header_error(reason: String, error: MessageHeaderError) -> DecodeError {
    DecodeError::Malformed {
        reason,
        notification: BgpNotificationMessage::MessageHeaderError(error),
    }
}

impl Decoder for WireCodec {
    type Item = BgpMessage;
    type Error = DecodeError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BgpMessage>, DecodeError> {
        if buf.len() < MIN_MESSAGE_LEN {
            return Ok(None);
        }
        if buf[..MARKER_LEN].iter().any(|byte| *byte != 0xff) {
            return Err(header_error(
                "the 16-octet marker is not all ones".into(),
                MessageHeaderError::ConnectionNotSynchronized {
                    value: Box::new([]),
                },
            ));
        }
        let length = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
        if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&length) {
            return Err(header_error(
                format!("message length {length} is outside 19..=4096"),
                MessageHeaderError::BadMessageLength {
                    value: Box::new(u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes()),
                },
            ));
        }
        if buf.len() < length {
            buf.reserve(length - buf.len());
            return Ok(None);
        }
        match self.inner.decode(buf) {
            Ok(Some((message, _ignored))) => Ok(Some(message)),
            Ok(None) => Ok(None),
            Err(BgpCodecDecoderError::IoError(error)) => {
                Err(DecodeError::Io(std::io::Error::other(error.to_string())))
            }
            Err(BgpCodecDecoderError::Incomplete(_)) => Err(header_error(
                "message shorter than its header says".into(),
                MessageHeaderError::BadMessageLength {
                    value: Box::new([]),
                },
            )),
            Err(BgpCodecDecoderError::BgpMessageParsingError(error)) => {
                Err(DecodeError::Malformed {
                    reason: error.to_string(),
                    notification: error.into(),
                })
            }
        }
    }
}

impl Encoder<BgpMessage> for WireCodec {
    type Error = std::io::Error;

    fn encode(&mut self, message: BgpMessage, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner
            .encode(message, dst)
            .map_err(|error: BgpMessageWritingError| {
                std::io::Error::other(format!("encoding a BGP message: {error}"))
            })
    }
}

/// The (code, subcode) pair of a NOTIFICATION, for logs and status.
pub fn notification_code(notification: &BgpNotificationMessage) -> (u8, u8) {
    use netgauze_bgp_pkt::notification::{
        CeaseError as C, FiniteStateMachineError as F, MessageHeaderError as H,
        OpenMessageError as O, RouteRefreshError as R, UpdateMessageError as U,
    };
    match notification {
        BgpNotificationMessage::MessageHeaderError(error) => (
            1,
            match error {
                H::Unspecific { .. } => 0,
                H::ConnectionNotSynchronized { .. } => 1,
                H::BadMessageLength { .. } => 2,
                H::BadMessageType { .. } => 3,
            },
        ),
        BgpNotificationMessage::OpenMessageError(error) => (
            2,
            match error {
                O::Unspecific { .. } => 0,
                O::UnsupportedVersionNumber { .. } => 1,
                O::BadPeerAs { .. } => 2,
                O::BadBgpIdentifier { .. } => 3,
                O::UnsupportedOptionalParameter { .. } => 4,
                O::UnacceptableHoldTime { .. } => 6,
                O::UnsupportedCapability { .. } => 7,
                O::RoleMismatch { .. } => 11,
            },
        ),
        BgpNotificationMessage::UpdateMessageError(error) => (
            3,
            match error {
                U::Unspecific { .. } => 0,
                U::MalformedAttributeList { .. } => 1,
                U::UnrecognizedWellKnownAttribute { .. } => 2,
                U::MissingWellKnownAttribute { .. } => 3,
                U::AttributeFlagsError { .. } => 4,
                U::AttributeLengthError { .. } => 5,
                U::InvalidOriginAttribute { .. } => 6,
                U::InvalidNextHopAttribute { .. } => 8,
                U::OptionalAttributeError { .. } => 9,
                U::InvalidNetworkField { .. } => 10,
                U::MalformedAsPath { .. } => 11,
            },
        ),
        BgpNotificationMessage::HoldTimerExpiredError(_) => (4, 0),
        BgpNotificationMessage::FiniteStateMachineError(error) => (
            5,
            match error {
                F::Unspecific { .. } => 0,
                F::ReceiveUnexpectedMessageInOpenSentState { .. } => 1,
                F::ReceiveUnexpectedMessageInOpenConfirmState { .. } => 2,
                F::ReceiveUnexpectedMessageInEstablishedState { .. } => 3,
            },
        ),
        BgpNotificationMessage::CeaseError(error) => (
            6,
            match error {
                C::MaximumNumberOfPrefixesReached { .. } => 1,
                C::AdministrativeShutdown { .. } => 2,
                C::PeerDeConfigured { .. } => 3,
                C::AdministrativeReset { .. } => 4,
                C::ConnectionRejected { .. } => 5,
                C::OtherConfigurationChange { .. } => 6,
                C::ConnectionCollisionResolution { .. } => 7,
                C::OutOfResources { .. } => 8,
                C::HardReset { .. } => 9,
                C::BfdDown { .. } => 10,
            },
        ),
        BgpNotificationMessage::RouteRefreshError(R::InvalidMessageLength { .. }) => (7, 1),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netgauze_bgp_pkt::{
        capabilities::{BgpCapability, FourOctetAsCapability},
        open::{BgpOpenMessage, BgpOpenMessageParameter},
    };

    use super::*;

    fn encode(message: BgpMessage) -> BytesMut {
        let mut buf = BytesMut::new();
        WireCodec::new()
            .encode(message, &mut buf)
            .expect("test messages encode");
        buf
    }

    #[test]
    fn open_and_keepalive_round_trip() {
        let open = BgpMessage::Open(BgpOpenMessage::new(
            23456,
            90,
            Ipv4Addr::new(10, 0, 0, 1),
            vec![BgpOpenMessageParameter::Capabilities(Box::new([
                BgpCapability::FourOctetAs(FourOctetAsCapability::new(4_200_000_000)),
            ]))],
        ));
        let mut buf = encode(open.clone());
        buf.extend_from_slice(&encode(BgpMessage::KeepAlive));
        let mut codec = WireCodec::new();
        assert_eq!(codec.decode(&mut buf).expect("decodes"), Some(open));
        assert_eq!(
            codec.decode(&mut buf).expect("decodes"),
            Some(BgpMessage::KeepAlive)
        );
        assert_eq!(codec.decode(&mut buf).expect("empty"), None);
    }

    #[test]
    fn partial_message_waits_for_more_bytes() {
        let full = encode(BgpMessage::KeepAlive);
        let mut buf = BytesMut::from(&full[..10]);
        assert_eq!(WireCodec::new().decode(&mut buf).expect("waits"), None);
    }

    fn malformed(bytes: &[u8]) -> (u8, u8) {
        let mut buf = BytesMut::from(bytes);
        match WireCodec::new().decode(&mut buf) {
            Err(DecodeError::Malformed { notification, .. }) => notification_code(&notification),
            other => panic!("expected a malformed-message error, got {other:?}"),
        }
    }

    #[test]
    fn bad_headers_map_to_header_error_subcodes() {
        let mut bad_marker = encode(BgpMessage::KeepAlive).to_vec();
        bad_marker[3] = 0;
        assert_eq!(malformed(&bad_marker), (1, 1));

        let mut too_long = encode(BgpMessage::KeepAlive).to_vec();
        too_long[16..18].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(malformed(&too_long), (1, 2));

        let mut too_short = encode(BgpMessage::KeepAlive).to_vec();
        too_short[16..18].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(malformed(&too_short), (1, 2));

        let mut bad_type = encode(BgpMessage::KeepAlive).to_vec();
        bad_type[18] = 9;
        assert_eq!(malformed(&bad_type), (1, 3));
    }

    #[test]
    fn keepalive_with_a_body_is_a_bad_length() {
        let mut long_keepalive = encode(BgpMessage::KeepAlive).to_vec();
        long_keepalive.push(0);
        long_keepalive[16..18].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(malformed(&long_keepalive), (1, 2));
    }

    #[test]
    fn truncated_open_is_an_open_message_error() {
        let mut open = encode(BgpMessage::Open(BgpOpenMessage::new(
            65000,
            90,
            Ipv4Addr::new(10, 0, 0, 1),
            vec![],
        )))
        .to_vec();
        // Claim an optional-parameters length that runs past the message.
        let last = open.len() - 1;
        open[last] = 40;
        let (code, _) = malformed(&open);
        assert_eq!(code, 2, "an OPEN problem is an OPEN Message Error");
    }

    /// A small deterministic PRNG, so the fuzz cases are the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn valid_messages() -> Vec<Vec<u8>> {
        use crate::rib::{self, AdjRibOut, FamilyPolicy, SendPolicy};
        let family = FamilyPolicy {
            add_path: false,
            max_paths: 1,
        };
        let policy = SendPolicy {
            peer: "10.0.0.2".parse().expect("address"),
            local_address: None,
            next_hop_self: Vec::new(),
            peer_policy: crate::PeerPolicy::default(),
            local_as: 65000,
            ebgp: true,
            asn4: true,
            ipv4: Some(family),
            ipv6: Some(family),
        };
        let attributes = std::sync::Arc::new(crate::PathAttributes {
            communities: vec![0xfde8_0001],
            large_communities: vec![(65000, 1, 2)],
            link_bandwidth: Some(crate::LinkBandwidth::for_endpoints(2, false)),
            ..crate::PathAttributes::default()
        });
        let routes: crate::PathTable = [("1.1.1.0/24", "10.0.0.1"), ("fd00:1::/64", "fd00::1")]
            .iter()
            .map(|(net, hop)| {
                (
                    net.parse().expect("prefix"),
                    [(hop.parse().expect("hop"), attributes.clone())]
                        .into_iter()
                        .collect(),
                )
            })
            .collect();
        let (desired, _) = rib::desired_paths(&routes, &policy);
        let mut messages = rib::encode(&AdjRibOut::default().update(desired, &policy), &policy);
        messages.push(BgpMessage::KeepAlive);
        messages.push(BgpMessage::Open(BgpOpenMessage::new(
            65001,
            90,
            Ipv4Addr::new(10, 0, 0, 2),
            vec![BgpOpenMessageParameter::Capabilities(Box::new([
                BgpCapability::FourOctetAs(FourOctetAsCapability::new(65001)),
                BgpCapability::RouteRefresh,
            ]))],
        )));
        messages.into_iter().map(|m| encode(m).to_vec()).collect()
    }

    /// The receive path never panics: random bytes and mutated valid
    /// messages either decode, wait for more, or produce a NOTIFICATION with
    /// a defined code. Bounded so that it runs in CI in well under a second.
    #[test]
    fn fuzzed_input_never_panics_and_errors_carry_a_notification() {
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        let seeds = valid_messages();
        let (mut decoded, mut rejected) = (0, 0);
        for case in 0..20_000 {
            let mut bytes = if case % 4 == 0 {
                let mut bytes = vec![0xff; 16];
                let len = rng.below(200);
                bytes.extend_from_slice(&(19 + len as u16).to_be_bytes());
                bytes.extend((0..=len).map(|_| rng.next() as u8));
                bytes
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..=rng.below(4) {
                // Flip bytes after the marker, where the interesting parsing is.
                let at = 16 + rng.below(bytes.len() - 16);
                bytes[at] = rng.next() as u8;
            }
            if rng.below(8) == 0 {
                bytes.truncate(rng.below(bytes.len()));
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = if case % 2 == 0 {
                WireCodec::new()
            } else {
                WireCodec::expecting_path_ids()
            };
            // Decode until the buffer is used up or an error ends the session.
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => decoded += 1,
                    Ok(None) => break,
                    Err(DecodeError::Malformed { notification, .. }) => {
                        let (code, _) = notification_code(&notification);
                        assert!((1..=7).contains(&code));
                        rejected += 1;
                        break;
                    }
                    Err(DecodeError::Io(error)) => panic!("no I/O here: {error}"),
                }
            }
        }
        assert!(
            decoded > 1000 && rejected > 1000,
            "{decoded} decoded, {rejected} rejected"
        );
    }
}

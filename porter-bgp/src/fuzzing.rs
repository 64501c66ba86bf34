//! The receive path's contract, as a function the cargo-fuzz target
//! `bgp_receive` (fuzz/, feature `fuzzing`) calls with arbitrary bytes, and
//! the unit test below replays the checked-in seed corpus through. It lives
//! in the crate because the FSM is private.
//!
//! Contract: bytes from a peer decode to messages or to an error carrying a
//! NOTIFICATION; the FSM answers every message or error without panicking;
//! whenever it drops the session it closes the connection and arms the
//! restart timer; and everything it sends can be put on the wire.
use std::{net::Ipv4Addr, time::Duration};

use bytes::BytesMut;
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
        MultiProtocolExtensionsCapability,
    },
    open::{BgpOpenMessage, BgpOpenMessageParameter},
};
use netgauze_iana::address_family::AddressType;
use tokio_util::codec::{Decoder, Encoder};

use crate::{
    Family,
    codec::{DecodeError, MAX_MESSAGE_LEN, WireCodec, notification_code},
    fsm::{Action, Event, Fsm, FsmConfig, State, Timer},
};

const LOCAL_AS: u32 = 65000;
const PEER_AS: u32 = 65001;

/// Feeds `data` to a session as if a peer had sent it. The first byte picks
/// the codec (bit 0: expect ADD-PATH NLRIs) and the state the bytes arrive
/// in (OpenSent, OpenConfirm or Established); the rest is the byte stream.
pub fn receive(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut codec = if selector & 1 == 0 {
        WireCodec::new()
    } else {
        WireCodec::expecting_path_ids()
    };
    let mut fsm = session_in(match (selector >> 1) % 3 {
        0 => State::OpenSent,
        1 => State::OpenConfirm,
        _ => State::Established,
    });
    let mut buf = BytesMut::from(stream);
    // A dropped session reads no further bytes from that connection.
    while fsm.state() != State::Idle {
        let actions = match codec.decode(&mut buf) {
            Ok(Some(message)) => fsm.handle(Event::Message(message)),
            Ok(None) => return,
            Err(DecodeError::Malformed {
                reason,
                notification,
            }) => {
                let (code, _) = notification_code(&notification);
                assert!((1..=7).contains(&code), "NOTIFICATION code {code}");
                let actions = fsm.handle(Event::Malformed {
                    reason,
                    notification: notification.clone(),
                });
                assert!(
                    actions.contains(&Action::Send(BgpMessage::Notification(notification))),
                    "a malformed message is answered with its NOTIFICATION: {actions:?}"
                );
                assert_eq!(fsm.state(), State::Idle);
                actions
            }
            Err(DecodeError::Io(error)) => panic!("decoding bytes in memory did I/O: {error}"),
        };
        check_actions(&fsm, &actions);
    }
}

/// What holds after any event, whatever the peer sent.
fn check_actions(fsm: &Fsm, actions: &[Action]) {
    for action in actions {
        if let Action::Send(message) = action {
            let mut wire = BytesMut::new();
            WireCodec::new()
                .encode(message.clone(), &mut wire)
                .unwrap_or_else(|error| panic!("{message:?} does not encode: {error}"));
            assert!(
                wire.len() <= MAX_MESSAGE_LEN,
                "a {}-byte message is too long for the peer: {message:?}",
                wire.len()
            );
        }
    }
    if fsm.state() == State::Idle {
        assert!(actions.contains(&Action::CloseConnection), "{actions:?}");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _))),
            "a dropped session restarts: {actions:?}"
        );
    }
}

/// An active session to AS 65001 (IPv4 and IPv6, ADD-PATH, graceful
/// restart) driven to `state` by a well-behaved peer.
fn session_in(state: State) -> Fsm {
    let mut fsm = Fsm::new(FsmConfig {
        local_as: LOCAL_AS,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        remote_as: PEER_AS,
        passive: false,
        hold_time: 90,
        keepalive: None,
        connect_retry: Duration::from_secs(1),
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        add_path_send_max: 4,
        graceful_restart: Some(120),
        long_lived_stale_time: None,
        restarting: false,
        jitter_seed: 0,
    });
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpEstablished);
    if state != State::OpenSent {
        fsm.handle(Event::Message(peer_open()));
        if state == State::Established {
            fsm.handle(Event::Message(BgpMessage::KeepAlive));
        }
    }
    assert_eq!(fsm.state(), state, "the canned peer is accepted");
    fsm
}

fn peer_open() -> BgpMessage {
    BgpMessage::Open(BgpOpenMessage::new(
        PEER_AS as u16,
        90,
        Ipv4Addr::new(10, 0, 0, 2),
        vec![BgpOpenMessageParameter::Capabilities(Box::new([
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv4Unicast,
            )),
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(PEER_AS)),
            BgpCapability::RouteRefresh,
            BgpCapability::AddPath(AddPathCapability::new(vec![AddPathAddressFamily::new(
                AddressType::Ipv4Unicast,
                false,
                true,
            )])),
        ]))],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed of the fuzz target goes through the same checks here, so
    /// that `cargo test` replays the corpus without a nightly fuzz build.
    #[test]
    fn seed_corpus_replays_cleanly() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/bgp_receive");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus is checked in") {
            let path = entry.expect("readable directory").path();
            let data = std::fs::read(&path).expect("readable seed");
            // Each seed is a well-formed exchange: it decodes completely.
            let mut buf = BytesMut::from(&data[1..]);
            let mut codec = if data[0] & 1 == 0 {
                WireCodec::new()
            } else {
                WireCodec::expecting_path_ids()
            };
            while !buf.is_empty() {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    other => panic!("{}: {other:?}", path.display()),
                }
            }
            receive(&data);
            seeds += 1;
        }
        assert!(seeds >= 3, "{seeds} seeds in {dir}");
    }
}

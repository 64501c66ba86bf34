//! Checks behind the cargo-fuzz target in fuzz/ (docs/fuzzing.md), kept here
//! so that unit tests replay the seed corpus through the same code.
use std::time::{Duration, Instant};

use crate::{
    fsm::{Action, Session, Timers},
    packet::{ControlPacket, State},
};

/// Bytes a peer sends, after a first byte that picks how far the receiving
/// session has got (Down, Init, Up, AdminDown). Every payload decodes or is
/// dropped with a reason; a decoded packet re-encodes to itself; the session
/// handles it and everything it sends is a valid packet without both Poll
/// and Final; state changes are ones RFC 5880 allows.
pub fn receive(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut session = Session::new(Timers::default(), 0x5eed, u64::from(selector), now);
    let mut peer = ControlPacket::new(State::Down, 0xbeef, 0, Duration::from_millis(300));
    match selector % 4 {
        0 => {}
        1 => {
            check(&session.receive(&peer, now));
        }
        2 => {
            check(&session.receive(&peer, now));
            peer.state = State::Up;
            peer.your_discriminator = 0x5eed;
            check(&session.receive(&peer, now));
        }
        _ => {
            check(&session.admin_down(now));
        }
    }
    for (step, chunk) in payload.chunks(64).enumerate() {
        let at = now + Duration::from_millis(100 * step as u64);
        check(&session.on_timer(at));
        let Ok(packet) = ControlPacket::decode(chunk) else {
            continue;
        };
        let reencoded = ControlPacket::decode(&packet.encode());
        assert_eq!(reencoded.as_ref(), Ok(&packet), "re-encodes to itself");
        let before = session.state();
        let actions = session.receive(&packet, at);
        check(&actions);
        if before == State::AdminDown {
            assert_eq!(
                session.state(),
                State::AdminDown,
                "AdminDown ignores packets"
            );
        }
    }
}

fn check(actions: &[Action]) {
    for action in actions {
        match action {
            Action::Send(packet) => {
                assert!(!(packet.poll && packet.final_), "Poll and Final together");
                assert_eq!(
                    ControlPacket::decode(&packet.encode()).as_ref(),
                    Ok(packet),
                    "sent packets are valid"
                );
            }
            Action::StateChanged(change) => {
                let allowed = matches!(
                    (change.from, change.to),
                    (State::Down, State::Init | State::Up | State::AdminDown)
                        | (State::Init, State::Up | State::Down | State::AdminDown)
                        | (State::Up, State::Down | State::AdminDown)
                        | (State::AdminDown, State::Down)
                );
                assert!(allowed, "transition {change:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Replays the checked-in seed corpus through the fuzz target's checks.
    #[test]
    fn seeds_replay() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/bfd_receive");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("seed");
            super::receive(&bytes);
            count += 1;
        }
        assert!(count > 0, "no seeds in {}", dir.display());
    }

    /// Bounded random bytes through the same checks, on the stable toolchain.
    #[test]
    fn random_payloads_never_panic() {
        let mut x: u64 = 0x1234_5678;
        for round in 0..3000u32 {
            let len = 1 + (round % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly valid-looking headers so that the session code runs.
                    match i % 64 {
                        1 => 0x20,
                        4 => 24,
                        _ => x as u8,
                    }
                })
                .collect();
            super::receive(&bytes);
        }
    }
}

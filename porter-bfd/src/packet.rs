//! The BFD Control packet (RFC 5880 section 4.1): encoding, and bounds-checked
//! decoding that applies the reception checks of section 6.8.6 that need no
//! session state. Decoding never panics; every rejection says why, so that the
//! runtime can count it.
use std::{fmt, time::Duration};

/// Length of a Control packet without an authentication section.
pub const MANDATORY_LEN: usize = 24;
/// The only version this codec speaks.
pub const VERSION: u8 = 1;

/// Session states as carried in the Sta field (RFC 5880 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::AdminDown => 0,
            Self::Down => 1,
            Self::Init => 2,
            Self::Up => 3,
        }
    }

    /// The name operators see in status, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdminDown => "AdminDown",
            Self::Down => "Down",
            Self::Init => "Init",
            Self::Up => "Up",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Diagnostic codes (RFC 5880 section 4.1): why the session last left Up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Diag {
    None,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    /// Codes 9-31 are reserved; kept so that a peer's diagnostic is shown as sent.
    Reserved(u8),
}

impl Diag {
    fn from_bits(bits: u8) -> Self {
        match bits & 0x1f {
            0 => Self::None,
            1 => Self::ControlDetectionTimeExpired,
            2 => Self::EchoFunctionFailed,
            3 => Self::NeighborSignaledSessionDown,
            4 => Self::ForwardingPlaneReset,
            5 => Self::PathDown,
            6 => Self::ConcatenatedPathDown,
            7 => Self::AdministrativelyDown,
            8 => Self::ReverseConcatenatedPathDown,
            other => Self::Reserved(other),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::ControlDetectionTimeExpired => 1,
            Self::EchoFunctionFailed => 2,
            Self::NeighborSignaledSessionDown => 3,
            Self::ForwardingPlaneReset => 4,
            Self::PathDown => 5,
            Self::ConcatenatedPathDown => 6,
            Self::AdministrativelyDown => 7,
            Self::ReverseConcatenatedPathDown => 8,
            Self::Reserved(code) => code & 0x1f,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Self::None => "no diagnostic".into(),
            Self::ControlDetectionTimeExpired => "control detection time expired".into(),
            Self::EchoFunctionFailed => "echo function failed".into(),
            Self::NeighborSignaledSessionDown => "neighbor signaled session down".into(),
            Self::ForwardingPlaneReset => "forwarding plane reset".into(),
            Self::PathDown => "path down".into(),
            Self::ConcatenatedPathDown => "concatenated path down".into(),
            Self::AdministrativelyDown => "administratively down".into(),
            Self::ReverseConcatenatedPathDown => "reverse concatenated path down".into(),
            Self::Reserved(code) => format!("reserved diagnostic {code}"),
        }
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// One Control packet. Intervals are microseconds on the wire; here they are
/// [`Duration`]s (whole microseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    /// Control Plane Independent: always clear for Porter, whose BFD runs in
    /// the same process as BGP (RFC 5882 section 4.3).
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    pub required_min_echo_rx: Duration,
}

/// Why a received packet was dropped before it reached a session. Each
/// variant is a counter the runtime exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the mandatory section, or than its own Length field.
    Truncated,
    BadVersion,
    /// Length field below the minimum for the A bit, or the auth section
    /// does not fit it.
    BadLength,
    ZeroDetectMult,
    Multipoint,
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while the sender is neither Down nor AdminDown.
    ZeroYourDiscriminator,
    /// The A bit is set; Porter does not run BFD authentication.
    Authenticated,
    /// Single hop (RFC 5881 section 5): the TTL or hop limit was not 255.
    WrongTtl,
    /// Your Discriminator names no session, or no session exists for the sender.
    UnknownSession,
    /// The socket could not tell the TTL or the destination of the packet.
    MissingAncillaryData,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        Self::Truncated,
        Self::BadVersion,
        Self::BadLength,
        Self::ZeroDetectMult,
        Self::Multipoint,
        Self::ZeroMyDiscriminator,
        Self::ZeroYourDiscriminator,
        Self::Authenticated,
        Self::WrongTtl,
        Self::UnknownSession,
        Self::MissingAncillaryData,
    ];

    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::BadLength => "bad_length",
            Self::ZeroDetectMult => "zero_detect_mult",
            Self::Multipoint => "multipoint",
            Self::ZeroMyDiscriminator => "zero_my_discriminator",
            Self::ZeroYourDiscriminator => "zero_your_discriminator",
            Self::Authenticated => "authenticated",
            Self::WrongTtl => "wrong_ttl",
            Self::UnknownSession => "unknown_session",
            Self::MissingAncillaryData => "missing_ancillary_data",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn micros(value: u32) -> Duration {
    Duration::from_micros(u64::from(value))
}

fn wire_micros(value: Duration) -> u32 {
    u32::try_from(value.as_micros()).unwrap_or(u32::MAX)
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl ControlPacket {
    /// A plain packet in `state` (no diagnostic, flags or echo), Detect Mult
    /// 3, advertising `interval` both ways.
    pub fn new(
        state: State,
        my_discriminator: u32,
        your_discriminator: u32,
        interval: Duration,
    ) -> Self {
        Self {
            diag: Diag::None,
            state,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator,
            your_discriminator,
            desired_min_tx: interval,
            required_min_rx: interval,
            required_min_echo_rx: Duration::ZERO,
        }
    }

    /// Decodes `bytes` (one UDP payload) and applies the stateless checks of
    /// RFC 5880 section 6.8.6. Bytes after the Length are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, DropReason> {
        if bytes.len() < MANDATORY_LEN {
            return Err(DropReason::Truncated);
        }
        let version = bytes[0] >> 5;
        if version != VERSION {
            return Err(DropReason::BadVersion);
        }
        let flags = bytes[1];
        let authenticated = flags & 0x04 != 0;
        let length = usize::from(bytes[3]);
        // With the A bit the auth section adds at least Auth Type and Auth Len.
        let minimum = if authenticated {
            MANDATORY_LEN + 2
        } else {
            MANDATORY_LEN
        };
        if length < minimum {
            return Err(DropReason::BadLength);
        }
        if length > bytes.len() {
            return Err(DropReason::Truncated);
        }
        if authenticated {
            let auth_len = usize::from(bytes[MANDATORY_LEN + 1]);
            if auth_len < 2 || MANDATORY_LEN + auth_len > length {
                return Err(DropReason::BadLength);
            }
        }
        let detect_mult = bytes[2];
        if detect_mult == 0 {
            return Err(DropReason::ZeroDetectMult);
        }
        if flags & 0x01 != 0 {
            return Err(DropReason::Multipoint);
        }
        let state = State::from_bits(flags >> 6);
        let my_discriminator = word(bytes, 4);
        if my_discriminator == 0 {
            return Err(DropReason::ZeroMyDiscriminator);
        }
        let your_discriminator = word(bytes, 8);
        if your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DropReason::ZeroYourDiscriminator);
        }
        // Checked last among the header checks so that counters say what is
        // wrong with a malformed packet first; an intact authenticated one is
        // refused because no session here uses authentication (section 6.8.6).
        if authenticated {
            return Err(DropReason::Authenticated);
        }
        Ok(Self {
            diag: Diag::from_bits(bytes[0]),
            state,
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult,
            my_discriminator,
            your_discriminator,
            desired_min_tx: micros(word(bytes, 12)),
            required_min_rx: micros(word(bytes, 16)),
            required_min_echo_rx: micros(word(bytes, 20)),
        })
    }

    /// The 24 octets of the packet (no authentication section).
    pub fn encode(&self) -> [u8; MANDATORY_LEN] {
        let mut out = [0u8; MANDATORY_LEN];
        out[0] = (VERSION << 5) | self.diag.bits();
        out[1] = (self.state.bits() << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.final_) << 4)
            | (u8::from(self.control_plane_independent) << 3)
            | (u8::from(self.demand) << 1);
        out[2] = self.detect_mult;
        out[3] = MANDATORY_LEN as u8;
        out[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        out[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        out[12..16].copy_from_slice(&wire_micros(self.desired_min_tx).to_be_bytes());
        out[16..20].copy_from_slice(&wire_micros(self.required_min_rx).to_be_bytes());
        out[20..24].copy_from_slice(&wire_micros(self.required_min_echo_rx).to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diag: Diag::ControlDetectionTimeExpired,
            state: State::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 0x0a0b_0c0d,
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            required_min_echo_rx: Duration::ZERO,
        }
    }

    #[test]
    fn encodes_the_rfc_layout_and_decodes_back() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 0x21, "version 1, diag 1");
        assert_eq!(bytes[1], 0xe0, "state Up, poll");
        assert_eq!(bytes[2], 3);
        assert_eq!(bytes[3], 24);
        assert_eq!(&bytes[12..16], &300_000u32.to_be_bytes());
        assert_eq!(ControlPacket::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn every_flag_round_trips() {
        for state in [State::AdminDown, State::Down, State::Init, State::Up] {
            for bits in 0..8u8 {
                let mut packet = sample();
                packet.state = state;
                packet.poll = bits & 1 != 0;
                packet.final_ = bits & 2 != 0;
                packet.control_plane_independent = bits & 4 != 0;
                assert_eq!(ControlPacket::decode(&packet.encode()), Ok(packet));
            }
        }
    }

    #[test]
    fn trailing_bytes_after_length_are_ignored() {
        let mut bytes = sample().encode().to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        assert_eq!(ControlPacket::decode(&bytes), Ok(sample()));
    }

    fn mutated(change: impl Fn(&mut Vec<u8>)) -> Result<ControlPacket, DropReason> {
        let mut bytes = sample().encode().to_vec();
        change(&mut bytes);
        ControlPacket::decode(&bytes)
    }

    #[test]
    fn malformed_packets_say_why_they_are_dropped() {
        assert_eq!(mutated(|b| b.truncate(23)), Err(DropReason::Truncated));
        assert_eq!(ControlPacket::decode(&[]), Err(DropReason::Truncated));
        assert_eq!(mutated(|b| b[0] = 0x41), Err(DropReason::BadVersion));
        assert_eq!(mutated(|b| b[3] = 20), Err(DropReason::BadLength));
        assert_eq!(mutated(|b| b[3] = 40), Err(DropReason::Truncated));
        assert_eq!(mutated(|b| b[2] = 0), Err(DropReason::ZeroDetectMult));
        assert_eq!(mutated(|b| b[1] |= 0x01), Err(DropReason::Multipoint));
        assert_eq!(
            mutated(|b| b[4..8].fill(0)),
            Err(DropReason::ZeroMyDiscriminator)
        );
        assert_eq!(
            mutated(|b| b[8..12].fill(0)),
            Err(DropReason::ZeroYourDiscriminator)
        );
    }

    #[test]
    fn down_packets_may_leave_your_discriminator_zero() {
        let mut packet = sample();
        packet.state = State::Down;
        packet.your_discriminator = 0;
        assert_eq!(ControlPacket::decode(&packet.encode()), Ok(packet));
    }

    #[test]
    fn authenticated_packets_are_refused_and_bad_auth_sections_are_malformed() {
        // Simple password auth: type 1, len 3 + password.
        let with_auth = |auth: &[u8]| {
            mutated(|b| {
                b[1] |= 0x04;
                b.extend_from_slice(auth);
                b[3] = b.len() as u8;
            })
        };
        assert_eq!(
            with_auth(&[1, 7, 1, b'k', b'e', b'y', b'!']),
            Err(DropReason::Authenticated)
        );
        assert_eq!(with_auth(&[1]), Err(DropReason::BadLength));
        assert_eq!(with_auth(&[1, 40, 1, 0]), Err(DropReason::BadLength));
        assert_eq!(with_auth(&[1, 0]), Err(DropReason::BadLength));
    }

    #[test]
    fn reserved_diagnostics_are_kept() {
        let decoded = mutated(|b| b[0] = 0x20 | 17).expect("valid");
        assert_eq!(decoded.diag, Diag::Reserved(17));
        assert_eq!(decoded.encode()[0], 0x20 | 17);
    }

    #[test]
    fn oversized_intervals_saturate_on_the_wire() {
        let mut packet = sample();
        packet.desired_min_tx = Duration::from_secs(10_000);
        assert_eq!(&packet.encode()[12..16], &u32::MAX.to_be_bytes());
    }
}

//! An announce-only BGP speaker: it sends the routes it is given to its peers,
//! one path per next hop with ADD-PATH, and never installs what it receives.
//!
//! Layers, each in its own module:
//! - [`codec`]: framing and NOTIFICATION mapping over netgauze-bgp-pkt;
//! - `fsm`: the RFC 4271 state machine, pure (events in, actions out);
//! - `policy`: per-path attributes and per-peer policy, pure;
//! - `path_table`: the desired paths, shared from the caller to every session;
//! - `rib`: per-peer Adj-RIB-Out, diffing and UPDATE packing, pure;
//! - `session`: one tokio task per peer doing the I/O and timers;
//! - `speaker`: the public handle, the listener and the peer table.
pub mod codec;
mod fsm;
/// Entry points for the fuzz targets in fuzz/; not a stable API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod log_limit;
mod path_table;
mod policy;
mod rib;
mod session;
mod socket;
mod speaker;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

pub use fsm::{State as SessionState, backoff};
pub use path_table::{NextHops, PathTable};
pub use policy::{
    CommunityError, DEFAULT_LOCAL_PREF, LinkBandwidth, LinkBandwidthPolicy, MAX_COMMUNITIES,
    MAX_LARGE_COMMUNITIES, PathAttributes, PeerPolicy, applies_to, parse_community,
    parse_large_community,
};
pub use rib::{Routes, path_id};
pub use speaker::Speaker;

/// Next hop self: a path with this next hop is sent with the session's own
/// IPv4 address as next hop, whatever it is (the per-node speaker mode). A
/// session without an address of the prefix's family sends the peer's
/// [`PeerConfig::next_hop_self`] address of that family, or leaves the path out.
pub const NEXT_HOP_SELF_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Next hop self for IPv6 prefixes: the session's own IPv6 address.
pub const NEXT_HOP_SELF_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The default passive port, as in the Porter seed (179 needs privileges).
pub const DEFAULT_LISTEN_PORT: u16 = 17900;

/// Address families the speaker can announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

/// RFC 4724 graceful restart as the restarting speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// How long peers should keep our routes after the session drops, in seconds (≤ 4095).
    pub restart_time: u16,
    /// Set the restart flag in the first OPEN to each peer: this speaker
    /// instance follows an earlier one whose routes the peers may still hold.
    pub restarting: bool,
    /// RFC 9494 long-lived graceful restart: after the restart time, peers
    /// keep our routes for this many seconds more (≤ 16,777,215), marked
    /// LLGR_STALE and less preferred than any route without it, so that a
    /// fresh path to the same prefix (from another speaker) replaces them
    /// while they still carry the traffic nothing else can.
    pub long_lived_stale_time: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Passive listener; the seed uses port 17900. Only configured peers are accepted.
    pub listen: Option<SocketAddr>,
    pub graceful_restart: Option<GracefulRestart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    pub remote_port: u16,
    /// Wait for the peer to connect instead of connecting to it.
    pub passive: bool,
    /// Proposed hold time in seconds (0, or ≥ 3).
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs, where fewer than a third of the
    /// negotiated hold time (never under 1). A router whose main loop only
    /// acts on some timers when woken (BIRD 2.0, docs/bfd.md) acts sooner
    /// on a session that hears from us more often.
    pub keepalive: Option<u16>,
    /// Base of the reconnect backoff.
    pub connect_retry: Duration,
    pub md5_password: Option<String>,
    /// eBGP multihop: the TTL of our packets. Without it eBGP uses TTL 1.
    pub ebgp_multihop_ttl: Option<u8>,
    /// GTSM (RFC 5082): our packets leave with TTL 255 and the kernel drops
    /// the peer's that arrive with less than this (255: directly connected).
    /// A spoofer further away cannot reach the session, not even with RSTs.
    pub min_ttl: Option<u8>,
    /// Paths per prefix with ADD-PATH; 0 disables ADD-PATH.
    pub add_path_send_max: u8,
    pub families: Vec<Family>,
    pub local_address: Option<IpAddr>,
    /// Next hop self where the session has no address of the prefix's
    /// family: the first of these of that family. MP-BGP carries IPv6
    /// prefixes over an IPv4 session (and the reverse), and their next hop
    /// must still be an address of this speaker that the peer can reach.
    /// Without one such paths are not announced.
    pub next_hop_self: Vec<IpAddr>,
    /// How paths' attributes are shaped for this peer.
    pub policy: PeerPolicy,
}

impl PeerConfig {
    /// A peer on port 179 with common defaults: active, hold 90 s, connect
    /// retry 5 s, ADD-PATH send-max 8, the family of its address, the
    /// default [`PeerPolicy`] (communities and link bandwidth as each path says).
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        Self {
            address,
            remote_as,
            remote_port: 179,
            passive: false,
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(5),
            md5_password: None,
            ebgp_multihop_ttl: None,
            min_ttl: None,
            add_path_send_max: 8,
            families: vec![match address {
                IpAddr::V4(_) => Family::Ipv4Unicast,
                IpAddr::V6(_) => Family::Ipv6Unicast,
            }],
            local_address: None,
            next_hop_self: Vec::new(),
            policy: PeerPolicy::default(),
        }
    }
}

/// A peer's session as seen from outside, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    pub state: SessionState,
    /// How long the session has been Established.
    pub uptime: Option<Duration>,
    /// Times the session reached Established.
    pub established_count: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub updates_sent: u64,
    /// Paths the peer currently holds from us.
    pub paths_announced: u64,
    pub families: Vec<Family>,
    /// Families where ADD-PATH send was negotiated.
    pub add_path: Vec<Family>,
    pub last_error: Option<String>,
    /// NOTIFICATIONs sent to the peer by (code, subcode), since the session
    /// was configured.
    pub notifications_sent: BTreeMap<(u8, u8), u64>,
    /// NOTIFICATIONs received from the peer by (code, subcode).
    pub notifications_received: BTreeMap<(u8, u8), u64>,
}

impl PeerStatus {
    /// Every NOTIFICATION count as (`"sent"` or `"received"`, code,
    /// subcode, count): the labels of the binaries' `porter_bgp_notifications`
    /// metric.
    pub fn notifications(&self) -> impl Iterator<Item = (&'static str, u8, u8, u64)> + '_ {
        let sent = self
            .notifications_sent
            .iter()
            .map(|(&(code, subcode), &n)| ("sent", code, subcode, n));
        let received = self
            .notifications_received
            .iter()
            .map(|(&(code, subcode), &n)| ("received", code, subcode, n));
        sent.chain(received)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error(
        "cannot listen for BGP on {address}: {source}; is another speaker using the port? Set another listen port or none"
    )]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

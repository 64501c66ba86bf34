//! Types shared by the eBPF programs (`porter-ebpf`) and the agent.
//!
//! Everything here is `no_std` and `#[repr(C)]`, because the same bytes are
//! read by the kernel program and by userspace through the BPF maps.
//!
//! Conventions: addresses are four 32-bit words holding the address bytes in
//! network order, exactly as in packets (word-sized so the kernel program
//! moves them with word loads); an IPv4 address is the first word, the rest
//! zero, and `family` says which. Ports are in network byte order too, so the
//! hot path never swaps bytes. Padding is explicit, so keys hash the same on
//! both sides.
#![no_std]

/// Names of the BPF maps, so that the loader and the programs agree on them.
pub mod map_names {
    /// Per-CPU array of global counters, indexed by [`crate::Stat`].
    pub const STATS: &str = "PORTER_STATS";
    /// Hash: [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "PORTER_SERVICES";
    /// Hash: [`crate::VipKey`] → number of services on that address.
    pub const VIPS: &str = "PORTER_VIPS";
    /// Array indexed by [`crate::vip_filter_slot`]: how many VIPs fall in
    /// each slot. A zero settles "not a service address" with one array
    /// read, which costs far less than a hash lookup.
    pub const VIP_FILTER: &str = "PORTER_VIP_FILTER";
    /// Array: backend id → [`crate::BackendValue`]; `family == 0` marks a free id.
    pub const BACKENDS: &str = "PORTER_BACKENDS";
    /// Array of backend ids ([`crate::MaglevSlot`]s, four to an element):
    /// every service owns two Maglev tables of M slots.
    pub const MAGLEV: &str = "PORTER_MAGLEV";
    /// LRU hash: client-side [`crate::FlowKey4`] → [`crate::CtValue`] (IPv4 flows).
    pub const CONNTRACK: &str = "PORTER_CT";
    /// LRU hash: client-side [`crate::FlowKey6`] → [`crate::CtValue`] (IPv6 flows).
    pub const CONNTRACK6: &str = "PORTER_CT6";
    /// Hash: [`crate::BackendKey`] → [`crate::RevNatValue`], kept by
    /// userspace: how replies from a backend are rewritten.
    pub const BACKEND_REVNAT: &str = "PORTER_BE_REVNAT";
    /// LRU hash: backend-side (reply) [`crate::FlowKey4`] → [`crate::RevNatValue`],
    /// only for flows to backends that serve several services ([`crate::BACKEND_SHARED`]).
    pub const REVNAT: &str = "PORTER_REVNAT";
    /// [`REVNAT`]'s IPv6 twin, keyed by [`crate::FlowKey6`].
    pub const REVNAT6: &str = "PORTER_REVNAT6";
    /// Per-CPU array of [`crate::ServiceCounters`], indexed by service id.
    pub const SERVICE_COUNTERS: &str = "PORTER_SVC_STATS";

    /// Array of `u32` settings, indexed by [`crate::config`] constants.
    pub const CONFIG: &str = "PORTER_CONFIG";

    /// Hash: [`crate::L2Key`] (EIP, interface) → [`crate::L2Value`]: the
    /// Layer 2 EIPs this node leads, whose ARP requests and neighbour
    /// solicitations XDP answers on that interface.
    pub const L2_LEADS: &str = "PORTER_L2_LEADS";

    /// Every map, for pinning: all of them outlive the agent.
    pub const ALL: &[&str] = &[
        CONFIG,
        STATS,
        SERVICES,
        VIPS,
        VIP_FILTER,
        BACKENDS,
        MAGLEV,
        CONNTRACK,
        CONNTRACK6,
        BACKEND_REVNAT,
        REVNAT,
        REVNAT6,
        SERVICE_COUNTERS,
        L2_LEADS,
    ];
}

/// Program names in the eBPF object.
pub mod program_names {
    /// The XDP load balancer for the uplink.
    pub const XDP: &str = "porter_xdp";
    /// An XDP program that only passes: the benchmark's baseline.
    pub const XDP_EMPTY: &str = "porter_xdp_empty";
    /// tc classifier that rewrites replies from backends back to `VIP:port`.
    pub const TC_REVNAT: &str = "porter_tc_revnat";
    /// XDP program returning `XDP_TX`: the packet-rate benchmark's generator
    /// (BPF_PROG_TEST_RUN with live frames).
    pub const XDP_TX: &str = "porter_xdp_tx";
    /// XDP program that counts (`Stat::PacketsSeen`) and drops: the
    /// packet-rate benchmark's receiving pod.
    pub const XDP_SINK: &str = "porter_xdp_sink";
}

/// The packet-rate benchmark's generated frames (see the `porter_xdp_tx`
/// program): Ethernet + IPv4 + UDP with no checksum, whose payload holds a
/// copy of those headers. The kernel hands the generator recycled frames
/// that the path under test has rewritten (DNAT, TTL, MACs), so the
/// generator restores the headers from the copy before each send.
pub mod pktgen {
    /// Bytes of Ethernet, IPv4 (no options) and UDP headers.
    pub const HEADER_BYTES: usize = 42;
    /// Where the copy of the headers starts.
    pub const TEMPLATE_OFFSET: usize = 64;
    /// The frame's length: headers, then payload up to the copy's end.
    pub const FRAME_BYTES: usize = TEMPLATE_OFFSET + HEADER_BYTES;
    /// Low bits of the UDP source port the generator randomises per frame,
    /// so the load is 2^FLOW_BITS flows.
    pub const FLOW_BITS: u32 = 6;
}

/// Compile-time capacities of the maps (userspace may resize some at load).
pub mod limits {
    /// Default Maglev table size M (prime). Userspace can choose another prime.
    pub const DEFAULT_MAGLEV_SIZE: u32 = 65_537;
    /// Default number of services (each owns two Maglev tables).
    pub const DEFAULT_MAX_SERVICES: u32 = 64;
    /// Backend ids are below it, so a Maglev slot holds one in 16 bits.
    pub const MAX_BACKENDS: u32 = 65_536;
    pub const CONNTRACK_ENTRIES: u32 = 262_144;
    /// Layer 2 EIPs this node may lead at once, summed over interfaces.
    pub const L2_LEADS: u32 = 4_096;
    /// A [`crate::MaglevSlot`] per 2 bytes of each 8-byte element of
    /// [`crate::map_names::MAGLEV`] (the kernel spaces array values 8 bytes
    /// apart).
    pub const MAGLEV_SLOTS_PER_ENTRY: u32 = 4;
}

/// A Maglev table slot: a backend id. 16 bits rather than 32 halve the
/// table (128 KiB at the default M), whose random reads are a new flow's
/// cache misses.
pub type MaglevSlot = u16;
const _: () = assert!(limits::MAX_BACKENDS <= MaglevSlot::MAX as u32 + 1);

/// Settings in [`map_names::CONFIG`].
pub mod config {
    /// Slot of the forwarding mode: [`FORWARD_KERNEL`] or [`FORWARD_REDIRECT`].
    pub const FORWARD: u32 = 0;
    /// Slot of the last [`crate::BackendValue::epoch`] the agents handed
    /// out, so that a restarted agent never hands one out again.
    pub const LAST_EPOCH: u32 = 1;
    pub const SLOTS: u32 = 2;
    /// Translated packets go to the kernel, which routes them to the pod.
    pub const FORWARD_KERNEL: u32 = 0;
    /// Translated packets are redirected straight to the pod's interface
    /// (FIB lookup in XDP), bypassing the node's netfilter: see porter-ebpf's
    /// docs for where that is correct, and why it is not the default.
    pub const FORWARD_REDIRECT: u32 = 1;
}

/// Number of slots of [`map_names::VIP_FILTER`] (a power of two).
pub const VIP_FILTER_SLOTS: u32 = 65_536;

/// The [`map_names::VIP_FILTER`] slot of an address (words as in keys).
#[inline(always)]
pub fn vip_filter_slot(addr: &[u32; 4]) -> u32 {
    let mut folded =
        addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    folded ^= folded >> 16;
    folded & (VIP_FILTER_SLOTS - 1)
}

/// The controller's node liveness probe (central mode): a UDP datagram to a
/// node's InternalIP that the node's XDP program answers itself, so that an
/// answer proves the node's data plane forwards, not only that a process runs.
///
/// Payload, [`probe::LEN`] bytes: [`probe::MAGIC`], a kind byte
/// ([`probe::REQUEST`] or [`probe::REPLY`]), three zero bytes, and the
/// sender's 8-byte token, echoed unchanged. The reply is the request with
/// addresses and ports swapped and the kind turned to `REPLY`, so a reply
/// is never answered again, even by the sender's own node's program.
pub mod wire;

pub mod probe {
    /// The BFD echo port (RFC 5881): what a firewall between controller and
    /// nodes must let through for BFD-style checks.
    pub const PORT: u16 = 3785;
    pub const MAGIC: [u8; 4] = *b"PRBE";
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    /// Payload bytes; the UDP length is exactly 8 more.
    pub const LEN: usize = 16;
    const KIND: usize = 4;
    const TOKEN: usize = 8;

    /// A request carrying `token`.
    pub fn request(token: u64) -> [u8; LEN] {
        let mut payload = [0u8; LEN];
        payload[..KIND].copy_from_slice(&MAGIC);
        payload[KIND] = REQUEST;
        payload[TOKEN..].copy_from_slice(&token.to_be_bytes());
        payload
    }

    /// The token of a well-formed reply; None for anything else.
    pub fn reply_token(payload: &[u8]) -> Option<u64> {
        let payload: &[u8; LEN] = payload.try_into().ok()?;
        let well_formed = payload[..KIND] == MAGIC
            && payload[KIND] == REPLY
            && payload[KIND + 1..TOKEN] == [0, 0, 0];
        let token: [u8; 8] = payload[TOKEN..].try_into().ok()?;
        well_formed.then_some(u64::from_be_bytes(token))
    }
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A service: `(vip, port, proto)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// What the data plane needs to pick a backend for a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service counters; also names the service's tables.
    pub id: u32,
    /// First slot of the active Maglev table in [`map_names::MAGLEV`].
    /// Userspace writes the spare table, then flips this (one map update).
    pub table_base: u32,
    /// M, the size of this service's table (prime).
    pub table_size: u32,
    /// Number of backends; 0 means the service exists but has none here.
    pub backend_count: u32,
}

/// An address that carries at least one service (for echo replies and
/// dropping unknown ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// An endpoint (pod) of one service. All zeros (family 0) is a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: [u32; 4],
    /// Target port, network byte order.
    pub port: u16,
    pub family: u8,
    /// [`BACKEND_SHARED`], [`BACKEND_REMOTE`], [`BACKEND_DRAINING`], or 0.
    pub flags: u8,
    /// The service this backend id belongs to; a conntrack entry whose
    /// backend id was reused by another service is treated as stale.
    pub service_id: u32,
    /// With [`BACKEND_REMOTE`]: the address of the node the pod runs on
    /// (its `InternalIP`), where packets for it are forwarded. Zero otherwise.
    pub node: [u32; 4],
    /// Names the installation of the service (its address, from install to
    /// removal) this backend id belongs to; never reused on a node. A
    /// conntrack entry records it, and is followed only while its backend
    /// still carries it: then the flow's service is still installed at the
    /// address the entry's key names, so a packet of an established flow
    /// needs no service lookup.
    pub epoch: u32,
}

/// This `addr:port/proto` serves more than one service, so its replies
/// cannot be mapped back by address alone: the XDP program records each
/// flow's service in the per-flow reverse NAT map.
pub const BACKEND_SHARED: u8 = 1;

/// The backend runs on another node (`externalTrafficPolicy: Cluster`): its
/// packets are forwarded, unchanged, to [`BackendValue::node`], which DNATs
/// them to the pod and sends the replies itself.
pub const BACKEND_REMOTE: u8 = 2;

/// The pod is terminating but still serving (KEP-1669): it keeps the flows
/// conntrack pins to it and has no Maglev slot while another backend of
/// the service is ready. A bare SYN whose tuple conntrack still pins to it
/// (the client reused the port of a closed connection) is a new flow, and
/// is picked from the table again.
pub const BACKEND_DRAINING: u8 = 4;

/// The IPv4 header's reserved flag bit (of the flags/fragment-offset word,
/// network order), which RFC 791 requires to be zero: set on a packet one
/// node forwards to another, so the receiving node serves it locally and
/// never forwards it again.
pub const IPV4_FORWARDED_MARK: u16 = 0x8000;

/// A backend as its replies show it: `addr:port/proto`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// An IPv4 5-tuple as seen in one direction: 16 bytes, so IPv4 flows (most
/// of them) hash and compare 16 bytes per lookup, not 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An IPv6 5-tuple as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack entry of a flow toward a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub backend_id: u32,
    pub service_id: u32,
    /// The backend's [`BackendValue::epoch`] when the flow was recorded.
    pub epoch: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns` when the flow's per-flow reverse NAT was
    /// last written: only for flows to a [`BACKEND_SHARED`] backend, 0 for
    /// the others (they have none to keep).
    pub refreshed_ns: u64,
}

/// How to rewrite a reply from a backend: its source becomes `vip:port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatValue {
    pub vip: [u32; 4],
    /// Network byte order.
    pub port: u16,
    /// [`BACKEND_SHARED`] (then look for a per-flow entry first) or 0.
    pub flags: u8,
    pub _pad: u8,
    pub service_id: u32,
}

/// A Layer 2 EIP on one interface (the one its ARP/NDP requests arrive on).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L2Key {
    pub addr: [u32; 4],
    /// Host byte order, as `xdp_md.ingress_ifindex`.
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// How to answer for an [`L2Key`]: the link-layer address to claim, and
/// until when. The deadline fences a leader whose agent died: its node
/// stops answering when its lease runs out, as the next leader takes over.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Value {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) after which the entry is ignored.
    pub expires_ns: u64,
}

/// Per-service, per-CPU traffic counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets this node forwarded to a backend on another node.
    pub forwarded_out: u64,
    /// Packets another node forwarded here, served by a local backend.
    pub forwarded_in: u64,
}

impl ServiceCounters {
    /// The sum of two CPUs' counters.
    pub fn plus(self, other: &Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
            new_flows: self.new_flows + other.new_flows,
            forwarded_out: self.forwarded_out + other.forwarded_out,
            forwarded_in: self.forwarded_in + other.forwarded_in,
        }
    }
}

macro_rules! stats {
    ($($variant:ident = $index:literal => $name:literal, $doc:literal;)+) => {
        /// Global per-CPU counters: what the programs did with packets, and why.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat {
            $(#[doc = $doc] $variant = $index,)+
        }

        impl Stat {
            pub const ALL: &[Stat] = &[$(Stat::$variant,)+];
            /// Number of slots in the [`map_names::STATS`] array.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            pub const fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)+
                }
            }
        }
    };
}

stats! {
    PacketsSeen = 0 => "packets_seen", "Every packet the XDP program saw.";
    PassNotIp = 1 => "pass_not_ip", "Passed: not IPv4/IPv6 (ARP, LLDP, ...), or an IP EtherType over a header of another version.";
    PassTruncated = 2 => "pass_truncated", "Passed: headers shorter than they claim.";
    PassFragment = 3 => "pass_fragment", "Passed: an IP fragment.";
    PassUnknownHeader = 4 => "pass_unknown_header", "Passed: an IPv6 extension header we do not walk, or too many.";
    PassNotService = 5 => "pass_not_service", "Passed: not addressed to a service address.";
    PassIcmp = 6 => "pass_icmp", "Passed: ICMP to a service address other than echo (errors included).";
    Forwarded = 7 => "forwarded", "Translated to a backend and passed on.";
    DropUnknownPort = 8 => "drop_unknown_port", "Dropped: to a service address on a port or protocol no service uses.";
    DropNoBackend = 9 => "drop_no_backend", "Dropped: the service has no local backend.";
    EchoReplied = 10 => "echo_replied", "ICMP echo to a service address answered in XDP.";
    RevNatApplied = 11 => "revnat_applied", "Replies rewritten back to the service address by tc.";
    RevNatFailed = 12 => "revnat_failed", "Replies whose rewrite failed in tc (dropped).";
    DropRewriteFailed = 13 => "drop_rewrite_failed", "Dropped: a rewrite failed half-way (parsing rules this out; never forwarded half-rewritten).";
    Redirected = 14 => "redirected", "Translated and redirected to the backend's interface (redirect mode).";
    ArpAnswered = 15 => "arp_answered", "ARP requests for a led Layer 2 EIP answered in XDP.";
    NdpAnswered = 16 => "ndp_answered", "IPv6 neighbour solicitations for a led Layer 2 EIP answered in XDP.";
    ForwardedRemote = 17 => "forwarded_remote", "Sent on to the node of a backend on another node: unchanged but marked on its segment, in IPIP behind a router.";
    DropForwardLoop = 18 => "drop_forward_loop", "Dropped: forwarded here by another node, but this node's table picks a backend on yet another node (never forwarded twice).";
    DropForwardNoNeighbour = 19 => "drop_forward_no_neighbour", "Dropped: the link-layer address of a remote backend's node is not resolved yet.";
    DropForwardNoRoute = 20 => "drop_forward_no_route", "Dropped: a remote backend's node has no route, this node does not forward IP (net.ipv4.ip_forward=0), or the packet does not fit the link once encapsulated (or came in VLAN-tagged).";
    ProbeAnswered = 21 => "probe_answered", "The controller's node liveness probes (central mode) answered in XDP.";
}

impl Stat {
    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and have explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for L2Key {}
    unsafe impl aya::Pod for L2Value {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<BackendValue>(), 44);
        assert_eq!(size_of::<BackendKey>(), 20);
        assert_eq!(size_of::<FlowKey4>(), 16);
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(size_of::<RevNatValue>(), 24);
        assert_eq!(size_of::<L2Key>(), 24);
        assert_eq!(size_of::<L2Value>(), 16);
    }

    #[test]
    fn stat_indices_are_dense() {
        for (position, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.index() as usize, position);
        }
    }

    #[test]
    fn a_probe_reply_yields_its_token_and_nothing_else_does() {
        let mut reply = probe::request(0x0102_0304_0506_0708);
        assert_eq!(probe::reply_token(&reply), None, "a request is no reply");
        reply[4] = probe::REPLY;
        assert_eq!(probe::reply_token(&reply), Some(0x0102_0304_0506_0708));
        assert_eq!(probe::reply_token(&reply[..15]), None, "short");
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(&reply);
        assert_eq!(probe::reply_token(&long), None, "long");
        for byte in [0, 3, 5, 7] {
            let mut bad = reply;
            bad[byte] ^= 0x40;
            assert_eq!(probe::reply_token(&bad), None, "byte {byte} altered");
        }
    }
}

//! Numbers fixed by the wire formats and the kernel ABI that both the eBPF
//! programs and the agent write or parse: EtherTypes, IP protocol numbers,
//! ICMPv6 neighbour-discovery types, the address families of
//! `bpf_fib_lookup`, and the header field offsets the data plane reads and
//! rewrites in place. One definition each, so the two sides cannot drift.

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Offsets in an Ethernet header: destination MAC (0), source MAC, and
/// the EtherType when untagged.
pub const ETH_SRC_OFF: usize = 6;
pub const ETH_TYPE_OFF: usize = 12;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 in IP (RFC 2473).
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers the parser walks (RFC 8200 section 4).
pub mod ipv6_ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// ICMPv6 neighbour discovery (RFC 4861).
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// `bpf_fib_lookup`'s `family` (the kernel's AF_INET and AF_INET6).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Field offsets in an IPv4 header (RFC 791).
pub mod ipv4 {
    /// The fixed header, without options.
    pub const LEN: usize = 20;
    /// The first byte of a header without options: version 4, IHL 5.
    pub const VERSION_IHL_NO_OPTIONS: u8 = 0x45;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    /// Flags and fragment offset.
    pub const FRAG: usize = 6;
    /// In the FRAG field: More Fragments and the fragment offset, nonzero
    /// for every fragment of a packet.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Field offsets in an IPv6 header (RFC 8200).
pub mod ipv6 {
    pub const LEN: usize = 40;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Field offsets in a TCP header (RFC 9293).
pub mod tcp {
    /// The fixed header, without options.
    pub const LEN: usize = 20;
    /// Data offset (high nibble), in 32-bit words.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
    /// Where the options start.
    pub const OPTIONS: usize = 20;
}

/// Field offsets in a UDP header (RFC 768).
pub mod udp {
    pub const LEN: usize = 8;
    /// The length field: header and payload.
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// The destination port's offset, in TCP and UDP headers alike (the
/// source port is at 0).
pub const L4_DST_PORT: usize = 2;

/// ICMP and ICMPv6 (RFC 792, RFC 4443): type, code, checksum, and 4 bytes
/// that depend on the type.
pub mod icmp {
    pub const LEN: usize = 8;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_REQUEST: u8 = 8;
    pub const ECHO_REPLY: u8 = 0;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

//! Test packets (built with etherparse) and an independent checksum checker,
//! for the data plane's BPF_PROG_TEST_RUN tests and benchmarks.
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use aya::programs::Xdp;
use porter_agent::{Dataplane, DataplaneConfig, PinLayout};
use porter_common::program_names;

use crate::lab::Lab;
use etherparse::{
    Icmpv4Type, IpNumber, Ipv4Header, NetSlice, PacketBuilder, PacketBuilderStep, SlicedPacket,
    TransportSlice, VlanId, icmpv4::DestUnreachableHeader,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The L4 part of a test packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, syn: bool },
    Udp { sport: u16, dport: u16 },
    EchoRequest,
}

/// Link-layer framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vlan {
    None,
    Single,
    Double,
}

const PAYLOAD: &[u8] = b"porter test payload";

/// Builds Ethernet [+ VLAN] + IP + L4 from `src` to `dst` (same family).
pub fn build(src: IpAddr, dst: IpAddr, l4: L4, vlan: Vlan) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let vid = |id| VlanId::try_new(id).context("vlan id");
    let v4 = src.is_ipv4();
    match vlan {
        Vlan::None => with_ip(eth_ip(eth, src, dst)?, l4, v4),
        Vlan::Single => with_ip(vlan_ip(eth.single_vlan(vid(10)?), src, dst)?, l4, v4),
        Vlan::Double => with_ip(
            vlan_ip(eth.double_vlan(vid(20)?, vid(10)?), src, dst)?,
            l4,
            v4,
        ),
    }
}

fn eth_ip(
    eth: PacketBuilderStep<etherparse::Ethernet2Header>,
    src: IpAddr,
    dst: IpAddr,
) -> Result<PacketBuilderStep<etherparse::IpHeaders>> {
    Ok(match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("mixed families"),
    })
}

fn vlan_ip(
    step: PacketBuilderStep<etherparse::VlanHeader>,
    src: IpAddr,
    dst: IpAddr,
) -> Result<PacketBuilderStep<etherparse::IpHeaders>> {
    Ok(match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => step.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => step.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("mixed families"),
    })
}

fn with_ip(ip: PacketBuilderStep<etherparse::IpHeaders>, l4: L4, v4: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match l4 {
        L4::Tcp { sport, dport, syn } => {
            let tcp = ip.tcp(sport, dport, 1000, 64_000);
            let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
            tcp.write(&mut out, PAYLOAD)?;
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, PAYLOAD)?,
        L4::EchoRequest if v4 => ip.icmpv4_echo_request(7, 1).write(&mut out, PAYLOAD)?,
        L4::EchoRequest => ip.icmpv6_echo_request(7, 1).write(&mut out, PAYLOAD)?,
    }
    Ok(out)
}

/// IPv4 TCP with 4 bytes of IP options (NOP NOP NOP EOL).
pub fn tcp_v4_with_options(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Result<Vec<u8>> {
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, src, dst)?;
    header.options = [1u8, 1, 1, 0].into();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(etherparse::IpHeaders::Ipv4(header, Default::default()))
        .tcp(sport, dport, 1, 64_000)
        .syn()
        .write(&mut out, PAYLOAD)?;
    Ok(out)
}

/// ICMP "fragmentation needed" from a router toward `dst`, quoting `quoted`'s IP packet.
pub fn icmp_frag_needed(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let inner = quoted.get(14..14 + 28).context("quoted packet too short")?;
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut out, inner)?;
    Ok(out)
}

/// Sets the IPv4 more-fragments flag (plain Ethernet) and fixes the header checksum.
pub fn make_v4_fragment(packet: &mut [u8]) {
    packet[14 + 6] |= 0x20;
    fix_ipv4_header_checksum(packet, 14);
}

/// Inserts an IPv6 extension header of type `kind` (8 bytes) after the fixed header.
pub fn insert_v6_extension(packet: &[u8], kind: u8) -> Vec<u8> {
    let l3 = 14;
    let next = packet[l3 + 6];
    let ext: [u8; 8] = match kind {
        // Fragment header: offset 0, more-fragments set.
        44 => [next, 0, 0, 1, 0, 0, 0, 42],
        // Options header with one PadN option filling it.
        _ => [next, 0, 1, 4, 0, 0, 0, 0],
    };
    let mut out = packet[..l3 + 40].to_vec();
    out[l3 + 6] = kind;
    let payload_len = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + 8;
    out[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&packet[l3 + 40..]);
    out
}

/// Turns an untagged IPv4 `packet` into what a node forwards to the node of
/// a `Cluster` backend: Ethernet from `from` to `to`, the IPv4 header's
/// reserved flag (the forwarded mark) set, the header checksum recomputed.
pub fn mark_forwarded(packet: &mut [u8], to: [u8; 6], from: [u8; 6]) {
    packet[..6].copy_from_slice(&to);
    packet[6..12].copy_from_slice(&from);
    packet[14 + 6] |= 0x80;
    fix_ipv4_header_checksum(packet, 14);
}

/// `packet` (Ethernet and IP, untagged) inside an outer header of its
/// family from `outer_src` to `outer_dst`, framed `from` → `to`: what a
/// node sends to a backend's node. IPv4 in IPv4 (protocol 4, the inner
/// TOS, don't fragment, TTL 64, ID 0) or IPv6 in IPv6 (next header 41, the
/// inner traffic class, no flow label, hop limit 64).
pub fn encapsulate(
    packet: &[u8],
    (to, from): ([u8; 6], [u8; 6]),
    (outer_src, outer_dst): (IpAddr, IpAddr),
) -> Vec<u8> {
    let inner = &packet[14..];
    let mut out = Vec::with_capacity(packet.len() + 40);
    out.extend_from_slice(&to);
    out.extend_from_slice(&from);
    match (outer_src, outer_dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = u16::try_from(inner.len() + 20).unwrap_or(u16::MAX);
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            out.extend_from_slice(&[0x45, inner[1]]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0x40, 0, 64, 4, 0, 0]);
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
            fix_ipv4_header_checksum(&mut out, 14);
        }
        (src, dst) => {
            let (src, dst) = (v6_octets(src), v6_octets(dst));
            let payload = u16::try_from(inner.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            out.extend_from_slice(&[inner[0], inner[1] & 0xf0, 0, 0]);
            out.extend_from_slice(&payload.to_be_bytes());
            out.extend_from_slice(&[41, 64]);
            out.extend_from_slice(&src);
            out.extend_from_slice(&dst);
        }
    }
    out.extend_from_slice(inner);
    out
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
    }
}

/// The inner packet of an [`encapsulate`]d one, framed as the outer was,
/// after checking an outer IPv4 header's checksum from scratch.
pub fn decapsulated(packet: &[u8]) -> Result<Vec<u8>> {
    let outer = match (packet.get(12..14), packet.get(23), packet.get(20)) {
        (Some([0x08, 0x00]), Some(4), _) => {
            if fold(sum(&packet[14..34])) != 0xffff {
                bail!("bad outer IPv4 header checksum");
            }
            20
        }
        (Some([0x86, 0xdd]), _, Some(41)) => 40,
        _ => bail!("not IP in IP"),
    };
    let mut out = packet[..14].to_vec();
    out.extend_from_slice(packet.get(14 + outer..).context("truncated")?);
    Ok(out)
}

/// A TCP SYN (or, with `syn_ack`, SYN-ACK) from `src` to `dst` whose only
/// option is MSS `mss`; [`tcp_mss`] reads it back.
pub fn tcp_with_mss(
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    syn_ack: bool,
    mss: u16,
) -> Result<Vec<u8>> {
    let tcp = eth_ip(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC), src, dst)?
        .tcp(sport, dport, 1000, 64_000)
        .syn();
    let tcp = if syn_ack { tcp.ack(1) } else { tcp };
    let mut out = Vec::new();
    tcp.options(&[etherparse::TcpOptionElement::MaximumSegmentSize(mss)])
        .map_err(|err| anyhow::anyhow!("{err:?}"))?
        .write(&mut out, &[])?;
    Ok(out)
}

/// The MSS option of an untagged TCP packet, if it carries one.
pub fn tcp_mss(packet: &[u8]) -> Option<u16> {
    let sliced = SlicedPacket::from_ethernet(packet).ok()?;
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        return None;
    };
    tcp.options_iterator().find_map(|option| match option {
        Ok(etherparse::TcpOptionElement::MaximumSegmentSize(mss)) => Some(mss),
        _ => None,
    })
}

pub fn fix_ipv4_header_checksum(packet: &mut [u8], l3: usize) {
    let ihl = usize::from(packet[l3] & 0x0f) * 4;
    packet[l3 + 10] = 0;
    packet[l3 + 11] = 0;
    let check = !fold(sum(&packet[l3..l3 + ihl]));
    packet[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// What a packet says about itself, read by etherparse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The raw L4 checksum field (TCP/UDP/ICMP), 0 when absent.
    pub l4_check: u16,
    pub icmp_type: Option<u8>,
}

/// Parses `packet` and verifies every checksum it carries from scratch: the
/// IPv4 header checksum and the TCP/UDP/ICMP checksum (with pseudo-header).
/// A v4 UDP checksum of 0 ("none") is accepted.
pub fn checked_summary(packet: &[u8]) -> Result<Summary> {
    let sliced = SlicedPacket::from_ethernet(packet).context("etherparse cannot parse it")?;
    let (src, dst, pseudo_sum, payload, proto) = match sliced.net.as_ref().context("no IP")? {
        NetSlice::Ipv4(ip) => {
            let header = ip.header();
            if fold(sum(header.slice())) != 0xffff {
                bail!("bad IPv4 header checksum");
            }
            let payload = ip.payload().payload;
            let proto = header.protocol().0;
            let pseudo = sum(&header.source())
                + sum(&header.destination())
                + u32::from(proto)
                + payload.len() as u32;
            (
                IpAddr::from(header.source()),
                IpAddr::from(header.destination()),
                pseudo,
                payload,
                proto,
            )
        }
        NetSlice::Ipv6(ip) => {
            let header = ip.header();
            let payload = ip.payload().payload;
            let proto = ip.payload().ip_number.0;
            let pseudo = sum(&header.source())
                + sum(&header.destination())
                + u32::from(proto)
                + payload.len() as u32;
            (
                IpAddr::from(header.source()),
                IpAddr::from(header.destination()),
                pseudo,
                payload,
                proto,
            )
        }
        other => bail!("not IP: {other:?}"),
    };
    let (sport, dport, l4_check, icmp_type) = match sliced.transport.as_ref() {
        Some(TransportSlice::Tcp(tcp)) => (
            tcp.source_port(),
            tcp.destination_port(),
            tcp.checksum(),
            None,
        ),
        Some(TransportSlice::Udp(udp)) => (
            udp.source_port(),
            udp.destination_port(),
            udp.checksum(),
            None,
        ),
        Some(TransportSlice::Icmpv4(icmp)) => (0, 0, icmp.checksum(), Some(icmp.type_u8())),
        Some(TransportSlice::Icmpv6(icmp)) => (0, 0, icmp.checksum(), Some(icmp.type_u8())),
        _ => bail!("no TCP, UDP or ICMP header"),
    };
    let v4_udp_without_checksum = src.is_ipv4() && proto == 17 && l4_check == 0;
    // ICMPv4 has no pseudo-header; everything else does.
    let covered = if src.is_ipv4() && proto == 1 {
        sum(payload)
    } else {
        pseudo_sum + sum(payload)
    };
    if !v4_udp_without_checksum && fold(covered) != 0xffff {
        bail!("bad L4 checksum {l4_check:#06x} (proto {proto})");
    }
    Ok(Summary {
        src,
        dst,
        sport,
        dport,
        proto,
        l4_check,
        icmp_type,
    })
}

/// A small deterministic PRNG (xorshift64*), so random tests replay exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.next_u64() as u8;
        }
    }
}

/// One BPF_PROG_TEST_RUN: the program's return code and the packet it left
/// (room for the program to grow the packet by up to 512 bytes).
pub fn test_run<P>(program: &P, packet: &[u8]) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<
            Opts<'a> = aya::programs::TestRunOptions<'a>,
            Result = aya::programs::TestRunResult,
        >,
{
    test_run_with_context(program, packet, None)
}

/// [`test_run`] with the program's context (`ctx_in`) given.
fn test_run_with_context<P>(
    program: &P,
    packet: &[u8],
    ctx: Option<&[u8]>,
) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<
            Opts<'a> = aya::programs::TestRunOptions<'a>,
            Result = aya::programs::TestRunResult,
        >,
{
    let mut out = vec![0u8; packet.len() + 512];
    let mut options = aya::programs::TestRunOptions::new();
    options.data_in = Some(packet);
    options.data_out = Some(&mut out);
    options.ctx_in = ctx;
    let result = program.test_run(options)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// [`test_run`] of the data plane's XDP program.
pub fn xdp_test_run(dataplane: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    xdp_test_run_on(dataplane, packet, None)
}

/// [`xdp_test_run`] as if `packet` arrived on interface `ingress` (an
/// ifindex of the calling thread's network namespace), so that FIB lookups
/// and `XDP_TX` decisions see that interface. None: the namespace's loopback.
pub fn xdp_test_run_on(
    dataplane: &mut Dataplane,
    packet: &[u8],
    ingress: Option<u32>,
) -> Result<(u32, Vec<u8>)> {
    let program: &mut Xdp = dataplane
        .ebpf_mut()
        .program_mut(program_names::XDP)
        .context("xdp program")?
        .try_into()?;
    let Some(ingress) = ingress else {
        return test_run(program, packet);
    };
    test_run_with_context(program, packet, Some(&xdp_context(packet.len(), ingress)))
}

/// The `struct xdp_md` BPF_PROG_TEST_RUN takes as context for a packet of
/// `len` bytes arriving on interface `ingress`: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex (the kernel wants
/// data_end to be the length, the rest zero).
pub fn xdp_context(len: usize, ingress: u32) -> Vec<u8> {
    [0, len as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect()
}

/// A small data plane (M = 251, 8 services) on `lab`'s private bpffs, for
/// BPF_PROG_TEST_RUN tests.
pub fn test_dataplane(lab: &mut Lab) -> Result<(PinLayout, Dataplane)> {
    test_dataplane_sized(lab, 251)
}

/// [`test_dataplane`] with Maglev tables of `maglev_size` slots (at least
/// 100 per backend).
pub fn test_dataplane_sized(lab: &mut Lab, maglev_size: u32) -> Result<(PinLayout, Dataplane)> {
    let pins = PinLayout::new(&lab.bpffs()?);
    let dataplane = Dataplane::open(&pins, test_config(maglev_size))?;
    Ok((pins, dataplane))
}

/// The configuration of [`test_dataplane_sized`], e.g. to open its pins
/// again as a restarted agent would.
pub fn test_config(maglev_size: u32) -> DataplaneConfig {
    DataplaneConfig {
        maglev_size,
        max_services: 8,
        ..DataplaneConfig::default()
    }
}

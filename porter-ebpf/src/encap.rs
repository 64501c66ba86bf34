//! IP-in-IP encapsulation for `externalTrafficPolicy: Cluster`: IPv4 in
//! IPv4 (IPIP) across subnets, and IPv6 in IPv6 always.
//!
//! When the backend's node is behind a router, a MAC rewrite cannot reach
//! it: the packet would be routed by its destination, the VIP. So the
//! forwarding node puts an outer IP header in front (from its own address
//! to the backend's node, protocol 4 or 41) and the backend's node takes
//! it off in XDP, before its kernel sees the packet, so no tunnel module or
//! device is needed on either side. IPv6 has no spare header bit to mark a
//! forwarded packet with, so an IPv6 packet is encapsulated even to a node
//! on the same segment: the outer header is its mark.
//!
//! IPIP rather than GUE: 20 bytes instead of 28, no UDP port to reserve on
//! every node, and nothing for the receiver to check but the protocol and
//! the inner VIP. GUE's advantages (a UDP source port for the fabric's ECMP
//! hash, and passing firewalls that drop protocol 4) matter little between
//! the nodes of one cluster, whose fabric must already carry pod traffic.
//!
//! - The outer header is the forwarded mark: the receiver decapsulates,
//!   sets an inner IPv4 header's mark, and tells the program the packet
//!   was forwarded, so it serves it as any forwarded packet (a local pod,
//!   or dropped: never forwarded again).
//! - MSS: the client sends its segments to the pod through the tunnel, so
//!   the pod's SYN-ACK is clamped (by tc, on the pod's node, for flows whose
//!   SYN arrived encapsulated) to the uplink's MTU less the headers and the
//!   outer header (`mss_overhead`). The SYN is left alone: the pod's
//!   segments go straight back to the client (DSR), never through the
//!   tunnel. The MSS option is looked for where every common stack puts
//!   it, first.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    btf_maps::LruHashMap,
    helpers::generated::{bpf_check_mtu, bpf_redirect, bpf_xdp_adjust_head},
    macros::btf_map,
    programs::{TcContext, XdpContext},
};
use porter_common::{
    BackendValue, FAMILY_V4, FAMILY_V6, FlowKey6, IPV4_FORWARDED_MARK, Stat,
    wire::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_SRC_OFF, ETH_TYPE_OFF, IPPROTO_IPIP, IPPROTO_IPV6,
        IPPROTO_TCP, ipv4, ipv6, tcp,
    },
};

use crate::{
    csum, fib,
    parse::{Headers, load, store},
};

/// The outer IPv4 header, without options.
const OUTER_LEN: usize = ipv4::LEN;
/// The outer IPv6 header, without extension headers.
const OUTER6_LEN: usize = ipv6::LEN;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const TCP_OPT_MSS: u8 = 2;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const OUTER_TTL: u8 = 64;
/// The MSS option's kind and length bytes, then its value.
const MSS_OPTION_VALUE: usize = 2;

/// Flows whose SYN arrived encapsulated (keyed by [`syn_key`]): the MSS to
/// clamp their SYN-ACKs to. Kept (an LRU) for retransmitted SYN-ACKs. Not
/// pinned: a SYN-ACK in flight while the agent replaces the program merely
/// goes unclamped.
#[btf_map(name = "PORTER_ENCAP")]
static ENCAP_SYNS: LruHashMap<FlowKey6, u32, 16384> = LruHashMap::new();

/// A TCP flow `src:sport -> dst:dport` of either family, as
/// [`ENCAP_SYNS`] keys it: IPv4 addresses in the first word, the family
/// in the first pad byte (so no IPv4 flow meets an IPv6 one).
#[inline(always)]
fn syn_key(family: u8, (src, sport): ([u32; 4], u16), (dst, dport): ([u32; 4], u16)) -> FlowKey6 {
    FlowKey6 {
        src,
        dst,
        sport,
        dport,
        proto: IPPROTO_TCP,
        _pad: [family, 0, 0],
    }
}

/// Sets the forwarded mark on the IPv4 header at `l3_off`, keeping its
/// checksum valid.
#[inline(always)]
pub fn set_mark(data: usize, data_end: usize, l3_off: usize) -> Option<()> {
    let flags: u16 = load(data, data_end, l3_off + ipv4::FRAG)?;
    let marked = flags | IPV4_FORWARDED_MARK.to_be();
    let ip_check: u16 = load(data, data_end, l3_off + ipv4::CHECKSUM)?;
    store(data, data_end, l3_off + ipv4::FRAG, marked)?;
    store(
        data,
        data_end,
        l3_off + ipv4::CHECKSUM,
        csum::apply(ip_check, csum::add_word(0, flags, marked)),
    )
}

/// What an MSS leaves out of the link MTU: the inner IP and TCP headers
/// (no options) and the outer header.
#[inline(always)]
fn mss_overhead(family: u8) -> u32 {
    if family == FAMILY_V4 {
        (ipv4::LEN + tcp::LEN + OUTER_LEN) as u32
    } else {
        (ipv6::LEN + tcp::LEN + OUTER6_LEN) as u32
    }
}

/// Sends the packet to the node of `backend` inside an outer header from
/// this node to that node: IPv4 to a node the FIB puts behind a router,
/// IPv6 to any node.
#[inline(always)]
pub fn forward(ctx: &XdpContext, h: &Headers, backend: &BackendValue) -> (u32, Stat) {
    // A VLAN-tagged uplink would need its tags kept in front: not built.
    if h.l3_off != ETH_HLEN {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoRoute);
    }
    if h.family == FAMILY_V4 {
        forward_v4(ctx, backend)
    } else {
        forward_v6(ctx, backend)
    }
}

#[inline(always)]
fn forward_v4(ctx: &XdpContext, backend: &BackendValue) -> (u32, Stat) {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // One load each, with its own early return: a tuple of Options lets
    // LLVM read a value on the path where its load failed, which the
    // verifier rejects.
    let Some(tot_len) = load::<u16>(data, data_end, ETH_HLEN + ipv4::TOTAL_LEN) else {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    };
    let Some(tos) = load::<u8>(data, data_end, ETH_HLEN + ipv4::TOS) else {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    };
    let Some(outer_len) = u16::from_be(tot_len).checked_add(OUTER_LEN as u16) else {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoRoute);
    };
    let fib = match route_outer(ctx, FAMILY_V4, &backend.node, IPPROTO_IPIP, outer_len) {
        Ok(fib) => fib,
        Err(stat) => return (xdp_action::XDP_DROP, stat),
    };
    // SAFETY: a plain u32 the helper wrote.
    let src = unsafe { fib.__bindgen_anon_3.ipv4_src };
    let outer = outer_header(tos, outer_len, src, backend.node[0]);
    // SAFETY: the helper only moves the packet's start; pointers are re-read.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let written = store(data, data_end, 0, fib.dmac)
        .and_then(|()| store(data, data_end, ETH_SRC_OFF, fib.smac))
        .and_then(|()| store(data, data_end, ETH_TYPE_OFF, ETH_P_IP.to_be()))
        .and_then(|()| store(data, data_end, ETH_HLEN, outer));
    if written.is_none() {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    to_next_hop(ctx, &fib)
}

#[inline(always)]
fn forward_v6(ctx: &XdpContext, backend: &BackendValue) -> (u32, Stat) {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(payload_len) = load::<u16>(data, data_end, ETH_HLEN + ipv6::PAYLOAD_LEN) else {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    };
    let Some(first_word) = load::<u32>(data, data_end, ETH_HLEN) else {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    };
    // The outer payload is the whole inner packet.
    let Some(inner_len) = u16::from_be(payload_len).checked_add(ipv6::LEN as u16) else {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoRoute);
    };
    let Some(outer_len) = inner_len.checked_add(OUTER6_LEN as u16) else {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoRoute);
    };
    let fib = match route_outer(ctx, FAMILY_V6, &backend.node, IPPROTO_IPV6, outer_len) {
        Ok(fib) => fib,
        Err(stat) => return (xdp_action::XDP_DROP, stat),
    };
    // SAFETY: plain words the helper wrote.
    let src = unsafe { fib.__bindgen_anon_3.ipv6_src };
    // Version and traffic class of the inner packet, no flow label.
    let version_class = u32::from_be(first_word) & 0xfff0_0000;
    // SAFETY: the helper only moves the packet's start; pointers are re-read.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER6_LEN as i32)) } != 0 {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let l3 = ETH_HLEN;
    let written = store(data, data_end, 0, fib.dmac)
        .and_then(|()| store(data, data_end, ETH_SRC_OFF, fib.smac))
        .and_then(|()| store(data, data_end, ETH_TYPE_OFF, ETH_P_IPV6.to_be()))
        .and_then(|()| store(data, data_end, l3, version_class.to_be()))
        .and_then(|()| store(data, data_end, l3 + ipv6::PAYLOAD_LEN, inner_len.to_be()))
        // Next header and hop limit, side by side.
        .and_then(|()| {
            store(
                data,
                data_end,
                l3 + ipv6::NEXT_HEADER,
                [IPPROTO_IPV6, OUTER_TTL],
            )
        })
        .and_then(|()| store(data, data_end, l3 + ipv6::SRC, src))
        .and_then(|()| store(data, data_end, l3 + ipv6::DST, backend.node));
    if written.is_none() {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    to_next_hop(ctx, &fib)
}

/// The route for an outer packet of `outer_len` bytes and protocol `proto`
/// to `node`, with this node's source address; or why it is dropped.
#[inline(always)]
fn route_outer(
    ctx: &XdpContext,
    family: u8,
    node: &[u32; 4],
    proto: u8,
    outer_len: u16,
) -> Result<FibParams, Stat> {
    // SRC: the kernel also picks this node's address toward the node.
    let (rc, fib) = fib::lookup(
        ctx,
        &fib::Query {
            family,
            src: None,
            dst: node,
            l4: (proto, 0, 0),
            tot_len: outer_len,
            flags: BPF_FIB_LOOKUP_SRC,
        },
    );
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Stat::DropForwardNoNeighbour);
    }
    // Anything else, too big for the link once encapsulated included
    // (TCP's segments fit: see the module docs on the MSS).
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Stat::DropForwardNoRoute);
    }
    Ok(fib)
}

/// Sends a frame addressed to the FIB's next hop out of the interface the
/// FIB chose: `XDP_TX` when that is the one it came in on.
#[inline(always)]
pub fn to_next_hop(ctx: &XdpContext, fib: &FibParams) -> (u32, Stat) {
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        return (xdp_action::XDP_TX, Stat::ForwardedRemote);
    }
    // SAFETY: no memory effects beyond the redirect decision.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
    (action, Stat::ForwardedRemote)
}

/// An outer IPv4 header (addresses as read from memory) with its checksum.
#[inline(always)]
fn outer_header(tos: u8, total_len: u16, src: u32, dst: u32) -> [u8; OUTER_LEN] {
    let mut header = [0u8; OUTER_LEN];
    header[0] = 0x45;
    header[1] = tos;
    header[2..4].copy_from_slice(&total_len.to_be_bytes());
    header[6..8].copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
    header[8] = OUTER_TTL;
    header[9] = IPPROTO_IPIP;
    header[12..16].copy_from_slice(&src.to_ne_bytes());
    header[16..20].copy_from_slice(&dst.to_ne_bytes());
    let mut sum = 0u32;
    for i in 0..OUTER_LEN / 2 {
        sum += u16::from_be_bytes([header[2 * i], header[2 * i + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    header[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    header
}

/// Takes the outer header off an IPIP or IPv6-in-IPv6 packet whose inner
/// packet (of the same family) goes to a VIP (`is_vip`), and marks an
/// inner IPv4 header forwarded; anything else is left alone. Runs before
/// the program parses the packet. Ok(true): it was taken off (the packet
/// was forwarded here). Err: the packet was changed half-way and must be
/// dropped.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, is_vip: impl Fn(u8, &[u32; 4]) -> bool) -> Result<bool, Stat> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // Two loads settle it for every other packet.
    let Some(ethertype) = load::<u16>(data, data_end, ETH_TYPE_OFF) else {
        return Ok(false);
    };
    if ethertype == ETH_P_IP.to_be() {
        if load::<u8>(data, data_end, ETH_HLEN + ipv4::PROTOCOL) != Some(IPPROTO_IPIP) {
            return Ok(false);
        }
        decapsulate_v4(ctx, is_vip)
    } else if ethertype == ETH_P_IPV6.to_be() {
        if load::<u8>(data, data_end, ETH_HLEN + ipv6::NEXT_HEADER) != Some(IPPROTO_IPV6) {
            return Ok(false);
        }
        decapsulate_v6(ctx, is_vip)
    } else {
        Ok(false)
    }
}

#[inline(always)]
fn decapsulate_v4(ctx: &XdpContext, is_vip: impl Fn(u8, &[u32; 4]) -> bool) -> Result<bool, Stat> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let inner = ETH_HLEN + OUTER_LEN;
    // An outer header with options, or a fragment of one, goes to the
    // kernel, as does an inner packet that is not IPv4 to a VIP, and a
    // packet shorter or longer than its headers say.
    if load::<u8>(data, data_end, ETH_HLEN) != Some(ipv4::VERSION_IHL_NO_OPTIONS)
        || load::<u16>(data, data_end, ETH_HLEN + ipv4::FRAG)
            .is_none_or(|f| u16::from_be(f) & ipv4::FRAGMENT_MASK != 0)
        || !lengths_agree(
            data,
            data_end,
            ETH_HLEN + ipv4::TOTAL_LEN,
            inner + ipv4::TOTAL_LEN,
            OUTER_LEN,
            0,
        )
    {
        return Ok(false);
    }
    let Some(inner_version_ihl) = load::<u8>(data, data_end, inner) else {
        return Ok(false);
    };
    let Some(inner_dst) = load::<u32>(data, data_end, inner + ipv4::DST) else {
        return Ok(false);
    };
    if inner_version_ihl >> 4 != 4 || !is_vip(FAMILY_V4, &[inner_dst, 0, 0, 0]) {
        return Ok(false);
    }
    // Constant offsets keep the verifier's bounds: an inner header with
    // options (rare) goes unrecorded.
    if inner_version_ihl == ipv4::VERSION_IHL_NO_OPTIONS {
        record_syn(
            ctx,
            FAMILY_V4,
            inner + ipv4::PROTOCOL,
            inner + ipv4::SRC,
            inner + ipv4::LEN,
        );
    }
    let Some(ethernet) = load::<[u8; ETH_HLEN]>(data, data_end, 0) else {
        return Ok(false);
    };
    set_mark(data, data_end, inner).ok_or(Stat::DropRewriteFailed)?;
    strip(ctx, ethernet, OUTER_LEN)
}

#[inline(always)]
fn decapsulate_v6(ctx: &XdpContext, is_vip: impl Fn(u8, &[u32; 4]) -> bool) -> Result<bool, Stat> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let inner = ETH_HLEN + OUTER6_LEN;
    // Payload lengths: the outer one covers the inner header, and the
    // frame holds exactly that much.
    if !lengths_agree(
        data,
        data_end,
        ETH_HLEN + ipv6::PAYLOAD_LEN,
        inner + ipv6::PAYLOAD_LEN,
        OUTER6_LEN,
        OUTER6_LEN,
    ) {
        return Ok(false);
    }
    let Some(inner_version) = load::<u8>(data, data_end, inner) else {
        return Ok(false);
    };
    let Some(inner_dst) = load::<[u32; 4]>(data, data_end, inner + ipv6::DST) else {
        return Ok(false);
    };
    if inner_version >> 4 != 6 || !is_vip(FAMILY_V6, &inner_dst) {
        return Ok(false);
    }
    // Only TCP right after the fixed header is recorded (constant offsets).
    record_syn(
        ctx,
        FAMILY_V6,
        inner + ipv6::NEXT_HEADER,
        inner + ipv6::SRC,
        inner + ipv6::LEN,
    );
    let Some(ethernet) = load::<[u8; ETH_HLEN]>(data, data_end, 0) else {
        return Ok(false);
    };
    strip(ctx, ethernet, OUTER6_LEN)
}

/// Whether the frame is as long as the outer length field at `outer_at`
/// says, and the inner length field at `inner_at` says the rest. IPv4
/// length fields count their own header: `outer_extra` 20 (the outer
/// header), `outer_header` 0. IPv6 payload lengths do not: 40 and 40.
#[inline(always)]
fn lengths_agree(
    data: usize,
    data_end: usize,
    outer_at: usize,
    inner_at: usize,
    outer_extra: usize,
    outer_header: usize,
) -> bool {
    let Some(outer) = load::<u16>(data, data_end, outer_at) else {
        return false;
    };
    let Some(inner) = load::<u16>(data, data_end, inner_at) else {
        return false;
    };
    let outer = u16::from_be(outer) as usize;
    // Opaque to LLVM: told the frame's length, it would drop the bounds
    // checks of later loads, which the verifier needs to see.
    let frame = core::hint::black_box(data_end - data);
    frame.checked_sub(ETH_HLEN + outer_header) == Some(outer)
        && u16::from_be(inner) as usize + outer_extra == outer
}

/// Takes `outer` bytes off after the Ethernet header `ethernet`.
#[inline(always)]
fn strip(ctx: &XdpContext, ethernet: [u8; ETH_HLEN], outer: usize) -> Result<bool, Stat> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    store(data, data_end, outer, ethernet).ok_or(Stat::DropRewriteFailed)?;
    // SAFETY: the helper only moves the packet's start; pointers are re-read.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer as i32) } != 0 {
        return Err(Stat::DropRewriteFailed);
    }
    Ok(true)
}

/// Remembers an encapsulated TCP SYN's flow (its inner next header, source
/// address and TCP header at the given offsets), with the MSS its SYN-ACK
/// must not exceed: the MTU of the interface it came in on, less the
/// headers.
#[inline(always)]
fn record_syn(ctx: &XdpContext, family: u8, proto_at: usize, src_at: usize, tcp_at: usize) {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if load::<u8>(data, data_end, proto_at) != Some(IPPROTO_TCP)
        || load::<u8>(data, data_end, tcp_at + tcp::FLAGS)
            .is_none_or(|flags| flags & (TCP_SYN | TCP_ACK) != TCP_SYN)
    {
        return;
    }
    let Some(ports) = load::<[u16; 2]>(data, data_end, tcp_at) else {
        return;
    };
    let addresses = if family == FAMILY_V4 {
        load::<[u32; 2]>(data, data_end, src_at).map(|[src, dst]| ([src, 0, 0, 0], [dst, 0, 0, 0]))
    } else {
        load::<[[u32; 4]; 2]>(data, data_end, src_at).map(|[src, dst]| (src, dst))
    };
    let Some((src, dst)) = addresses else {
        return;
    };
    let mut mtu: u32 = 0;
    // SAFETY: writes `mtu` only. Interface 0: the one the packet came in on.
    if unsafe { bpf_check_mtu(ctx.ctx.cast(), 0, &mut mtu, 0, 0) } < 0
        || mtu <= mss_overhead(family)
    {
        return;
    }
    let flow = syn_key(family, (src, ports[0]), (dst, ports[1]));
    // A full LRU evicts the oldest; that SYN-ACK then goes unclamped.
    let _ = ENCAP_SYNS.insert(&flow, &(mtu - mss_overhead(family)), 0);
}

/// Clamps the MSS of a SYN-ACK that tc has just reverse-NATed to
/// `vip:port` (`h` as before the rewrite), when its SYN arrived
/// encapsulated. Errors leave the packet as it was.
#[inline(always)]
pub fn clamp_syn_ack(ctx: &TcContext, h: &Headers, vip: [u32; 4], port: u16) {
    if h.proto != IPPROTO_TCP {
        return;
    }
    match ctx.load::<u8>(h.l4_off + tcp::FLAGS) {
        Ok(flags) if flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) => {}
        _ => return,
    }
    let flow = syn_key(h.family, (h.dst, h.dport), (vip, port));
    // SAFETY: copied out at once.
    let Some(limit) = ENCAP_SYNS.get_ptr(&flow).map(|limit| unsafe { *limit }) else {
        return;
    };
    let Ok(data_offset) = ctx.load::<u8>(h.l4_off + tcp::DATA_OFFSET) else {
        return;
    };
    let Ok(option) = ctx.load::<[u8; 4]>(h.l4_off + tcp::OPTIONS) else {
        return;
    };
    if data_offset >> 4 < 6 || option[0] != TCP_OPT_MSS || option[1] != 4 {
        return;
    }
    let mss = u16::from_be_bytes([option[2], option[3]]);
    if u32::from(mss) <= limit {
        return;
    }
    let (old, new) = (mss.to_be(), (limit as u16).to_be());
    let check_off = h.l4_off + tcp::CHECKSUM;
    if ctx
        .l4_csum_replace(check_off, old as u64, new as u64, 2)
        .is_ok()
    {
        let _ = ctx.store(h.l4_off + tcp::OPTIONS + MSS_OPTION_VALUE, &new, 0);
    }
}

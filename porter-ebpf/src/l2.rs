//! Layer 2 mode: answers ARP requests (IPv4) and neighbour solicitations
//! (IPv6) for the EIPs this node leads, in place, for `XDP_TX`.
//!
//! Only well-formed requests for a led EIP on the interface they arrived on
//! are answered; everything else is left to the kernel untouched, so the
//! node's own addresses keep being resolved by its own stack.
use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use porter_common::{
    FAMILY_V4, FAMILY_V6, L2Key, L2Value,
    wire::{ETH_P_ARP, ETH_SRC_OFF, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT, icmp, ipv6},
};

use crate::parse::{self, Headers, load, store};
/// htype Ethernet, ptype IPv4, hlen 6, plen 4, operation request.
const ARP_REQUEST_HEADER: [u8; 8] = [0, 1, 8, 0, 6, 4, 0, 1];
const ARP_REPLY: [u8; 2] = [0, 2];
/// Solicited and Override: the answer to a solicitation, and it replaces
/// whatever the requester cached (the previous leader's MAC).
const NA_FLAGS: [u8; 4] = [0x60, 0, 0, 0];
const OPT_TARGET_LL_ADDR: [u8; 2] = [2, 1];
/// ICMPv6 length of a solicitation/advertisement without options, and with
/// one link-layer address option.
const ND_LEN: usize = 24;
const ND_LEN_WITH_LL_OPTION: usize = 32;
const NDP_HOP_LIMIT: u8 = 255;
/// Offsets in a neighbour solicitation or advertisement (RFC 4861 4.3,
/// 4.4): the flags of an advertisement, the target address, and the first
/// option.
const ND_FLAGS: usize = 4;
const ND_TARGET: usize = 8;
const ND_OPTION: usize = 24;

/// Turns an ARP request for a led EIP into its reply. None: not ours, and
/// nothing was written.
#[inline(always)]
pub fn answer_arp(ctx: &XdpContext, lookup: impl Fn(&L2Key) -> Option<L2Value>) -> Option<u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let (ethertype, off) = parse::link_layer(data, data_end).ok()?;
    if ethertype != ETH_P_ARP {
        return None;
    }
    let header: [u8; 8] = load(data, data_end, off)?;
    if header != ARP_REQUEST_HEADER {
        return None;
    }
    let sender_mac: [u8; 6] = load(data, data_end, off + 8)?;
    let sender_ip: u32 = load(data, data_end, off + 14)?;
    let target_ip: u32 = load(data, data_end, off + 24)?;
    // Someone announcing the address itself (gratuitous ARP): nothing to answer.
    if sender_ip == target_ip {
        return None;
    }
    let lead = lookup(&L2Key {
        addr: [target_ip, 0, 0, 0],
        ifindex: ctx.ingress_ifindex() as u32,
        family: FAMILY_V4,
        _pad: [0; 3],
    })?;
    let requester: [u8; 6] = load(data, data_end, ETH_SRC_OFF)?;
    // The whole request was read above, so these writes are in bounds.
    let written = (|| {
        store(data, data_end, 0, requester)?;
        store(data, data_end, ETH_SRC_OFF, lead.mac)?;
        store(data, data_end, off + 6, ARP_REPLY)?;
        store(data, data_end, off + 8, lead.mac)?;
        store(data, data_end, off + 14, target_ip)?;
        store(data, data_end, off + 18, sender_mac)?;
        store(data, data_end, off + 24, sender_ip)
    })();
    Some(match written {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    })
}

/// Turns a neighbour solicitation for a led EIP into a solicited neighbour
/// advertisement (RFC 4861 7.2.4). None: not ours, and nothing was written.
#[inline(always)]
pub fn answer_ns(
    ctx: &XdpContext,
    h: &Headers,
    lookup: impl Fn(&L2Key) -> Option<L2Value>,
) -> Option<u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // RFC 4861 7.1.1: hop limit 255 (it cannot have crossed a router), code 0,
    // at least 24 bytes. NDP never carries extension headers in practice.
    if h.family != FAMILY_V6 || h.l4_off != h.l3_off + ipv6::LEN {
        return None;
    }
    let hop_limit: u8 = load(data, data_end, h.l3_off + ipv6::HOP_LIMIT)?;
    let code: u8 = load(data, data_end, h.l4_off + icmp::CODE)?;
    let icmp_len = u16::from_be(load(data, data_end, h.l3_off + ipv6::PAYLOAD_LEN)?) as usize;
    if hop_limit != NDP_HOP_LIMIT || code != 0 || icmp_len < ND_LEN {
        return None;
    }
    // Duplicate address detection (source ::) is left to the kernel: the
    // answer would go to all-nodes, and a led EIP is never a local address.
    if h.src == [0; 4] {
        return None;
    }
    let target: [u32; 4] = load(data, data_end, h.l4_off + ND_TARGET)?;
    let lead = lookup(&L2Key {
        addr: target,
        ifindex: ctx.ingress_ifindex() as u32,
        family: FAMILY_V6,
        _pad: [0; 3],
    })?;
    let requester: [u8; 6] = load(data, data_end, ETH_SRC_OFF)?;
    // A solicitation without options is unicast (neighbour unreachability
    // detection), where the target address option may be left out; the
    // answer keeps the request's size, so it never has to grow.
    let reply_len = if icmp_len >= ND_LEN_WITH_LL_OPTION {
        ND_LEN_WITH_LL_OPTION
    } else {
        ND_LEN
    };
    let frame_len = h.l4_off + reply_len;
    let excess = (data_end - data).saturating_sub(frame_len);
    if excess > 0 {
        // SAFETY: a plain helper call on our own context; shrinking only.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
            return Some(xdp_action::XDP_DROP);
        }
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let written = (|| {
        store(data, data_end, 0, requester)?;
        store(data, data_end, ETH_SRC_OFF, lead.mac)?;
        store(data, data_end, h.l3_off, u32::to_be(0x6000_0000))?;
        store(
            data,
            data_end,
            h.l3_off + ipv6::PAYLOAD_LEN,
            u16::to_be(reply_len as u16),
        )?;
        store(data, data_end, h.l3_off + ipv6::HOP_LIMIT, NDP_HOP_LIMIT)?;
        store(data, data_end, h.l3_off + ipv6::SRC, target)?;
        store(data, data_end, h.l3_off + ipv6::DST, h.src)?;
        store(data, data_end, h.l4_off, [ND_NEIGHBOR_ADVERT, 0])?;
        store(data, data_end, h.l4_off + ND_FLAGS, NA_FLAGS)?;
        if reply_len == ND_LEN_WITH_LL_OPTION {
            store(data, data_end, h.l4_off + ND_OPTION, OPT_TARGET_LL_ADDR)?;
            store(
                data,
                data_end,
                h.l4_off + ND_OPTION + OPT_TARGET_LL_ADDR.len(),
                lead.mac,
            )?;
        }
        let check = na_checksum(&target, &h.src, reply_len, &lead.mac);
        store(data, data_end, h.l4_off + icmp::CHECKSUM, check)
    })();
    Some(match written {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    })
}

/// The ICMPv6 checksum of the advertisement, computed from the values
/// written rather than read back. Words are taken as they lie in memory
/// (see `csum`), so the result is stored as it is.
#[inline(always)]
fn na_checksum(src: &[u32; 4], dst: &[u32; 4], len: usize, mac: &[u8; 6]) -> u16 {
    let word = |bytes: [u8; 2]| u16::from_ne_bytes(bytes) as u32;
    let halves = |w: u32| (w & 0xffff) + (w >> 16);
    let mut sum: u32 = 0;
    for i in 0..4 {
        // The target appears twice: as the source and in the message.
        sum += 2 * halves(src[i]) + halves(dst[i]);
    }
    sum += word([0, len as u8]) + word([0, IPPROTO_ICMPV6]);
    sum += word([ND_NEIGHBOR_ADVERT, 0]) + word([NA_FLAGS[0], NA_FLAGS[1]]);
    if len == ND_LEN_WITH_LL_OPTION {
        sum += word(OPT_TARGET_LL_ADDR)
            + word([mac[0], mac[1]])
            + word([mac[2], mac[3]])
            + word([mac[4], mac[5]]);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

//! Header parsing shared by the XDP and tc programs: Ethernet with up to two
//! VLAN tags, IPv4 (with options) or IPv6 (with a bounded extension header
//! walk), then the first bytes of TCP, UDP or ICMP.
//!
//! Everything works on `[data, data_end)` with a bounds check before every
//! read, so the verifier accepts it and a short packet is reported, not read
//! past.
use core::mem::size_of;

use porter_common::{
    FAMILY_V4, FAMILY_V6, IPV4_FORWARDED_MARK, Stat,
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TYPE_OFF, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L4_DST_PORT, icmp, ipv4, ipv6,
        ipv6_ext::{AUTHENTICATION, DESTINATION_OPTIONS, FRAGMENT, HOP_BY_HOP, ROUTING},
        tcp, udp,
    },
};

const VLAN_TAG_LEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;
const MAX_V6_EXT_HEADERS: usize = 4;
/// Offsets never exceed this, which keeps the verifier's ranges small.
const MAX_L4_OFFSET: usize = 512;

/// Reads a `T` at `off` if the packet is long enough.
///
/// Header fields are only 2-byte aligned in a frame (after 14 bytes of
/// Ethernet). `read_unaligned` would make LLVM split every word into byte
/// loads and shifts, which costs tens of nanoseconds per packet; the BPF
/// JITs of the architectures Porter runs on (x86-64, arm64) handle
/// misaligned word loads, so plain loads are used, as C programs do.
#[inline(always)]
pub fn load<T: Copy>(data: usize, data_end: usize, off: usize) -> Option<T> {
    if off > MAX_L4_OFFSET + 64 {
        return None;
    }
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked above; see above on alignment.
    Some(unsafe { core::ptr::read(start as *const T) })
}

/// Writes `value` at `off` if the packet is long enough (see [`load`]).
#[inline(always)]
pub fn store<T: Copy>(data: usize, data_end: usize, off: usize, value: T) -> Option<()> {
    if off > MAX_L4_OFFSET + 64 {
        return None;
    }
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked above.
    unsafe { core::ptr::write(start as *mut T, value) };
    Some(())
}

/// Swaps the MACs and the IP addresses of `h`'s packet in place, the first
/// step of every reply the program sends back out of the interface it came
/// in on (ICMP echo, the node liveness probe).
#[inline(always)]
pub fn swap_ends(data: usize, data_end: usize, h: &Headers) -> Option<()> {
    let macs: [u8; 12] = load(data, data_end, 0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(data, data_end, 0, swapped)?;
    if h.family == FAMILY_V4 {
        store(data, data_end, h.l3_off + ipv4::SRC, h.dst[0])?;
        store(data, data_end, h.l3_off + ipv4::DST, h.src[0])?;
    } else {
        store(data, data_end, h.l3_off + ipv6::SRC, h.dst)?;
        store(data, data_end, h.l3_off + ipv6::DST, h.src)?;
    }
    Some(())
}

/// The headers of one packet, as far as the data plane cares.
#[derive(Clone, Copy)]
pub struct Headers {
    pub family: u8,
    pub proto: u8,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP/ICMP header.
    pub l4_off: usize,
    /// Network byte order words, as in `porter_common` keys.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order; 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// ICMP type, for ICMP and ICMPv6.
    pub icmp_type: u8,
    /// IPv4 with [`porter_common::IPV4_FORWARDED_MARK`]: another node's
    /// XDP program sent this packet here for a backend on this node.
    pub forwarded: bool,
}

/// The EtherType after up to two VLAN tags, and the offset of what it names.
#[inline(always)]
pub fn link_layer(data: usize, data_end: usize) -> Result<(u16, usize), Stat> {
    let mut ethertype =
        u16::from_be(load::<u16>(data, data_end, ETH_TYPE_OFF).ok_or(Stat::PassTruncated)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is the TCI (2 bytes), then the EtherType it carries.
        ethertype = u16::from_be(load::<u16>(data, data_end, off + 2).ok_or(Stat::PassTruncated)?);
        off += VLAN_TAG_LEN;
    }
    Ok((ethertype, off))
}

/// Parses the packet, or says why it must pass untouched. The whole packet
/// must be in `data..data_end`, as it always is in XDP.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Headers, Stat> {
    parse_inner(data, data_end, true)
}

/// As [`parse`], for an skb whose payload may lie beyond `data_end` in page
/// fragments (tc): only the headers must be linear. A reply with a payload,
/// e.g. an HTTP response, is usually built that way.
#[inline(always)]
pub fn parse_skb_headers(data: usize, data_end: usize) -> Result<Headers, Stat> {
    parse_inner(data, data_end, false)
}

#[inline(always)]
fn parse_inner(data: usize, data_end: usize, whole: bool) -> Result<Headers, Stat> {
    let (ethertype, off) = link_layer(data, data_end)?;
    let mut headers = Headers {
        family: 0,
        proto: 0,
        l3_off: off,
        l4_off: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        icmp_type: 0,
        forwarded: false,
    };
    match ethertype {
        ETH_P_IP => parse_v4(data, data_end, &mut headers, whole)?,
        ETH_P_IPV6 => parse_v6(data, data_end, &mut headers, whole)?,
        _ => return Err(Stat::PassNotIp),
    }
    parse_l4(data, data_end, &mut headers)?;
    Ok(headers)
}

#[inline(always)]
fn parse_v4(data: usize, data_end: usize, h: &mut Headers, whole: bool) -> Result<(), Stat> {
    let off = h.l3_off;
    // One check for the fixed header; the field loads below fall inside it.
    if data + off + ipv4::LEN > data_end {
        return Err(Stat::PassTruncated);
    }
    let version_ihl: u8 = load(data, data_end, off).ok_or(Stat::PassTruncated)?;
    if version_ihl >> 4 != 4 {
        return Err(Stat::PassNotIp);
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let total_len =
        u16::from_be(load(data, data_end, off + ipv4::TOTAL_LEN).ok_or(Stat::PassTruncated)?)
            as usize;
    if ihl < ipv4::LEN || total_len < ihl || (whole && data + off + total_len > data_end) {
        return Err(Stat::PassTruncated);
    }
    // More-fragments flag or a fragment offset: only the first fragment has
    // ports, and the rest cannot be matched, so none of them are touched.
    let fragment = u16::from_be(load(data, data_end, off + ipv4::FRAG).ok_or(Stat::PassTruncated)?);
    if fragment & ipv4::FRAGMENT_MASK != 0 {
        return Err(Stat::PassFragment);
    }
    h.forwarded = fragment & IPV4_FORWARDED_MARK != 0;
    h.family = FAMILY_V4;
    h.proto = load(data, data_end, off + ipv4::PROTOCOL).ok_or(Stat::PassTruncated)?;
    h.src[0] = load(data, data_end, off + ipv4::SRC).ok_or(Stat::PassTruncated)?;
    h.dst[0] = load(data, data_end, off + ipv4::DST).ok_or(Stat::PassTruncated)?;
    h.l4_off = off + ihl;
    Ok(())
}

#[inline(always)]
fn parse_v6(data: usize, data_end: usize, h: &mut Headers, whole: bool) -> Result<(), Stat> {
    let off = h.l3_off;
    if data + off + ipv6::LEN > data_end {
        return Err(Stat::PassTruncated);
    }
    let version: u8 = load(data, data_end, off).ok_or(Stat::PassTruncated)?;
    if version >> 4 != 6 {
        return Err(Stat::PassNotIp);
    }
    h.src = load(data, data_end, off + ipv6::SRC).ok_or(Stat::PassTruncated)?;
    h.dst = load(data, data_end, off + ipv6::DST).ok_or(Stat::PassTruncated)?;
    h.family = FAMILY_V6;
    let mut next: u8 = load(data, data_end, off + ipv6::NEXT_HEADER).ok_or(Stat::PassTruncated)?;
    let mut l4_off = off + ipv6::LEN;
    for _ in 0..MAX_V6_EXT_HEADERS {
        let length = match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                let ext: [u8; 2] = load(data, data_end, l4_off).ok_or(Stat::PassTruncated)?;
                next = ext[0];
                (ext[1] as usize + 1) * 8
            }
            // Authentication header: (len + 2) * 4 bytes.
            AUTHENTICATION => {
                let ext: [u8; 2] = load(data, data_end, l4_off).ok_or(Stat::PassTruncated)?;
                next = ext[0];
                (ext[1] as usize + 2) * 4
            }
            FRAGMENT => return Err(Stat::PassFragment),
            _ => break,
        };
        l4_off += length;
        if l4_off > MAX_L4_OFFSET {
            return Err(Stat::PassUnknownHeader);
        }
    }
    if matches!(
        next,
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | AUTHENTICATION | FRAGMENT
    ) {
        return Err(Stat::PassUnknownHeader);
    }
    // A payload that is really there (jumbograms, length 0, pass). Checked
    // last: done first, it lets the compiler drop bounds checks the verifier
    // cannot prove on its own.
    let payload_len =
        u16::from_be(load(data, data_end, off + ipv6::PAYLOAD_LEN).ok_or(Stat::PassTruncated)?)
            as usize;
    if payload_len == 0 || (whole && data + off + ipv6::LEN + payload_len > data_end) {
        return Err(Stat::PassTruncated);
    }
    h.proto = next;
    h.l4_off = l4_off;
    Ok(())
}

#[inline(always)]
fn parse_l4(data: usize, data_end: usize, h: &mut Headers) -> Result<(), Stat> {
    if h.l4_off > MAX_L4_OFFSET {
        return Err(Stat::PassUnknownHeader);
    }
    match h.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            // TCP: ports through the checksum, the whole fixed header.
            let needed = if h.proto == IPPROTO_TCP {
                tcp::LEN
            } else {
                udp::LEN
            };
            if data + h.l4_off + needed > data_end {
                return Err(Stat::PassTruncated);
            }
            h.sport = load(data, data_end, h.l4_off).ok_or(Stat::PassTruncated)?;
            h.dport = load(data, data_end, h.l4_off + L4_DST_PORT).ok_or(Stat::PassTruncated)?;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if data + h.l4_off + icmp::LEN > data_end {
                return Err(Stat::PassTruncated);
            }
            h.icmp_type = load(data, data_end, h.l4_off).ok_or(Stat::PassTruncated)?;
        }
        _ => {}
    }
    Ok(())
}

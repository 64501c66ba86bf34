//! Answers the controller's node liveness probes (central mode, see
//! `porter_common::probe`) in place, for `XDP_TX`.
//!
//! The answer comes from this program, not from a process: it proves that
//! the node receives and sends on its uplink and that its XDP program runs,
//! which is what the announced paths depend on. An agent restart leaves the
//! pinned program attached, so probes keep being answered through it.
//!
//! Only an exact request is answered (UDP to the probe port, exact length,
//! magic and kind); anything else is left to the rest of the program
//! untouched.
use aya_ebpf::bindings::xdp_action;
use porter_common::{FAMILY_V4, Stat, probe};

use crate::csum;
use crate::parse::{Headers, IPPROTO_UDP, load, store};

const UDP_HEADER: usize = 8;
/// The UDP header and the payload, read and written as one block: one
/// bounds check that the verifier follows for every byte of it.
const DATAGRAM: usize = UDP_HEADER + probe::LEN;
const KIND: usize = UDP_HEADER + 4;

/// The verdict on a probe request; None when the packet is not one.
#[inline(always)]
pub fn answer(data: usize, data_end: usize, h: &Headers) -> Option<(u32, Stat)> {
    if h.dport != probe::PORT.to_be() || h.proto != IPPROTO_UDP {
        return None;
    }
    let datagram: [u8; DATAGRAM] = load(data, data_end, h.l4_off)?;
    let udp_len = u16::from_be_bytes([datagram[4], datagram[5]]) as usize;
    let magic = [
        datagram[UDP_HEADER],
        datagram[UDP_HEADER + 1],
        datagram[UDP_HEADER + 2],
        datagram[UDP_HEADER + 3],
    ];
    let kind = [datagram[KIND], datagram[KIND + 1]];
    let reserved = [datagram[KIND + 2], datagram[KIND + 3]];
    if udp_len != DATAGRAM || magic != probe::MAGIC || kind != [probe::REQUEST, 0] || reserved != [0, 0]
    {
        return None;
    }
    Some(match turn_around(data, data_end, h, datagram) {
        Some(()) => (xdp_action::XDP_TX, Stat::ProbeAnswered),
        // Cannot happen after the load above; never send half-rewritten.
        None => (xdp_action::XDP_DROP, Stat::DropRewriteFailed),
    })
}

/// Swaps MACs, addresses and ports, and turns the request into a reply.
/// Swapping leaves every sum unchanged; only the kind byte changes the UDP
/// checksum.
#[inline(always)]
fn turn_around(
    data: usize,
    data_end: usize,
    h: &Headers,
    mut datagram: [u8; DATAGRAM],
) -> Option<()> {
    let macs: [u8; 12] = load(data, data_end, 0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(data, data_end, 0, swapped)?;
    if h.family == FAMILY_V4 {
        store(data, data_end, h.l3_off + 12, h.dst[0])?;
        store(data, data_end, h.l3_off + 16, h.src[0])?;
    } else {
        store(data, data_end, h.l3_off + 8, h.dst)?;
        store(data, data_end, h.l3_off + 24, h.src)?;
    }
    let ports = [datagram[0], datagram[1], datagram[2], datagram[3]];
    datagram[..2].copy_from_slice(&ports[2..]);
    datagram[2..4].copy_from_slice(&ports[..2]);
    let old_kind = [datagram[KIND], datagram[KIND + 1]];
    let new_kind = [probe::REPLY, old_kind[1]];
    datagram[KIND] = probe::REPLY;
    let check = u16::from_ne_bytes([datagram[6], datagram[7]]);
    // An IPv4 UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xffff.
    if !(h.family == FAMILY_V4 && check == 0) {
        let acc = csum::add_word(
            0,
            u16::from_ne_bytes(old_kind),
            u16::from_ne_bytes(new_kind),
        );
        let mut new_check = csum::apply(check, acc);
        if new_check == 0 {
            new_check = 0xffff;
        }
        datagram[6..8].copy_from_slice(&new_check.to_ne_bytes());
    }
    store(data, data_end, h.l4_off, datagram)
}

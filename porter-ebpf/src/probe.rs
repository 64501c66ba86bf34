//! Answers the controller's node liveness probes (central mode, see
//! `porter_common::probe`) in place, for `XDP_TX`.
//!
//! The answer comes from this program, not from a process: it proves that
//! the node receives and sends on its uplink and that its XDP program runs,
//! which is what the announced paths depend on. An agent restart leaves the
//! pinned program attached, so probes keep being answered through it.
//!
//! Only an exact request (UDP to the probe port, exact length, magic and
//! kind) to an address of this node is answered; anything else is left to
//! the rest of the program untouched. The address check matters: a switch
//! floods a frame for a MAC it no longer knows (a dead node's) to every
//! port, and XDP sees frames before the stack drops those for another
//! host's MAC, so without it a live node would answer for a dead one.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NOT_FWDED, xdp_action},
    programs::XdpContext,
};
use porter_common::{
    FAMILY_V4, Stat, probe,
    wire::{IPPROTO_UDP, udp},
};

use crate::parse::{Headers, swap_ends};
use crate::{csum, fib};

/// The UDP header and the payload.
const DATAGRAM: usize = udp::LEN + probe::LEN;
const KIND: usize = udp::LEN + 4;

/// The datagram's bytes, all of them checked to be in the packet by one
/// bounds check on one pointer, which the verifier follows for every
/// constant offset from it (separate `load`s would each compute their own
/// pointer, and LLVM drops the checks it can prove redundant).
struct Datagram(*mut u8);

impl Datagram {
    #[inline(always)]
    fn at(data: usize, data_end: usize, off: usize) -> Option<Self> {
        if off > 512 {
            return None;
        }
        let start = data + off;
        if start + DATAGRAM > data_end {
            return None;
        }
        Some(Self(start as *mut u8))
    }

    #[inline(always)]
    fn byte(&self, at: usize) -> u8 {
        // SAFETY: `at` < DATAGRAM at every call; checked in `at`.
        unsafe { *self.0.add(at) }
    }

    #[inline(always)]
    fn set(&self, at: usize, value: u8) {
        // SAFETY: as in `byte`.
        unsafe { *self.0.add(at) = value };
    }

    /// The 16-bit word at `at`, as read from memory.
    #[inline(always)]
    fn word(&self, at: usize) -> u16 {
        u16::from_ne_bytes([self.byte(at), self.byte(at + 1)])
    }
}

/// The verdict on a probe request; None when the packet is not one.
#[inline(always)]
pub fn answer(ctx: &XdpContext, data: usize, data_end: usize, h: &Headers) -> Option<(u32, Stat)> {
    if h.dport != probe::PORT.to_be() || h.proto != IPPROTO_UDP {
        return None;
    }
    let datagram = Datagram::at(data, data_end, h.l4_off)?;
    let request = datagram.word(udp::LENGTH) == (DATAGRAM as u16).to_be()
        && datagram.byte(udp::LEN) == probe::MAGIC[0]
        && datagram.byte(udp::LEN + 1) == probe::MAGIC[1]
        && datagram.byte(udp::LEN + 2) == probe::MAGIC[2]
        && datagram.byte(udp::LEN + 3) == probe::MAGIC[3]
        && datagram.byte(KIND) == probe::REQUEST
        && datagram.byte(KIND + 1) == 0
        && datagram.byte(KIND + 2) == 0
        && datagram.byte(KIND + 3) == 0;
    if !request || !addressed_here(ctx, h) {
        return None;
    }
    Some(match turn_around(data, data_end, h, &datagram) {
        Some(()) => (xdp_action::XDP_TX, Stat::ProbeAnswered),
        // Cannot happen after the parse; never send half-rewritten.
        None => (xdp_action::XDP_DROP, Stat::DropRewriteFailed),
    })
}

/// Whether the destination is an address of this node: the FIB of the
/// interface's namespace does not forward to it (a local route). Broadcast
/// addresses are not forwarded either; an answer from one names no node
/// the controller probes, so it is ignored there.
#[inline(always)]
fn addressed_here(ctx: &XdpContext, h: &Headers) -> bool {
    let (rc, _) = fib::lookup(
        ctx,
        &fib::Query {
            family: h.family,
            src: Some(&h.src),
            dst: &h.dst,
            l4: (IPPROTO_UDP, h.sport, h.dport),
            tot_len: 0,
            flags: 0,
        },
    );
    rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64
}

/// Swaps MACs, addresses and ports, and turns the request into a reply
/// with its UDP checksum computed afresh: a request may arrive with only
/// the pseudo-header part of its checksum (a veth, or a NIC that leaves
/// checksums to the receiver's offload), which an incremental update would
/// carry into the reply.
#[inline(always)]
fn turn_around(data: usize, data_end: usize, h: &Headers, datagram: &Datagram) -> Option<()> {
    swap_ends(data, data_end, h)?;
    let (sport, dport) = (h.sport.to_ne_bytes(), h.dport.to_ne_bytes());
    for i in 0..2 {
        datagram.set(i, dport[i]);
        datagram.set(2 + i, sport[i]);
    }
    datagram.set(KIND, probe::REPLY);
    datagram.set(udp::CHECKSUM, 0);
    datagram.set(udp::CHECKSUM + 1, 0);
    let check = udp_checksum(h, datagram).to_ne_bytes();
    datagram.set(udp::CHECKSUM, check[0]);
    datagram.set(udp::CHECKSUM + 1, check[1]);
    Some(())
}

/// The UDP checksum of `datagram` (checksum field zero) between the
/// packet's two addresses, whichever way round: the sum is the same.
#[inline(always)]
fn udp_checksum(h: &Headers, datagram: &Datagram) -> u16 {
    let words = if h.family == FAMILY_V4 { 1 } else { 4 };
    let mut sum: u32 = 0;
    for i in 0..4 {
        if i < words {
            sum += (h.src[i] & 0xffff) + (h.src[i] >> 16);
            sum += (h.dst[i] & 0xffff) + (h.dst[i] >> 16);
        }
    }
    // Pseudo-header: zero, protocol, UDP length; words as read from memory.
    sum += u16::from_ne_bytes([0, IPPROTO_UDP]) as u32;
    sum += (DATAGRAM as u16).to_be() as u32;
    let mut i = 0;
    while i < DATAGRAM {
        sum += datagram.word(i) as u32;
        i += 2;
    }
    let check = csum::apply(0xffff, sum);
    // A computed 0 is sent as 0xffff (0 means "no checksum" in IPv4).
    if check == 0 { 0xffff } else { check }
}

//! Programs for the packet-rate benchmark (`cargo xtask bench dataplane`,
//! `lab_udp_pps`). Neither is ever attached by the agent; they are in this
//! object so the lab loads them with no other toolchain.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_get_prandom_u32, macros::xdp, programs::XdpContext,
};
use porter_common::{
    Stat,
    pktgen::{FLOW_BITS, HEADER_BYTES, TEMPLATE_OFFSET},
};

use crate::{
    count,
    parse::{load, store},
};

/// Offset of the low byte of the UDP source port (network order).
const SPORT_LOW_BYTE: usize = 35;

/// The generator: run through BPF_PROG_TEST_RUN with live frames, every
/// `XDP_TX` sends the frame out of the interface named in the context, at
/// the rate one CPU sustains (what xdp-trafficgen does). Frames come from a
/// page pool that recycles what the path under test rewrote, so the headers
/// are restored from the copy in the payload (`porter_common::pktgen`), and
/// the source port's low bits are randomised: many flows, no UDP checksum.
#[xdp]
pub fn porter_xdp_tx(ctx: XdpContext) -> u32 {
    match restore_headers(ctx.data(), ctx.data_end()) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn restore_headers(data: usize, data_end: usize) -> Option<()> {
    for word in 0..HEADER_BYTES / 8 {
        let value: u64 = load(data, data_end, TEMPLATE_OFFSET + word * 8)?;
        store(data, data_end, word * 8, value)?;
    }
    let tail = HEADER_BYTES / 8 * 8;
    let value: u16 = load(data, data_end, TEMPLATE_OFFSET + tail)?;
    store(data, data_end, tail, value)?;
    // SAFETY: no memory effects.
    let random = unsafe { bpf_get_prandom_u32() } as u8;
    let mask = ((1u32 << FLOW_BITS) - 1) as u8;
    let low: u8 = load(data, data_end, SPORT_LOW_BYTE)?;
    store(
        data,
        data_end,
        SPORT_LOW_BYTE,
        (low & !mask) | (random & mask),
    )
}

/// The receiving pod: counts each frame in `Stat::PacketsSeen` of its own
/// (unpinned) maps and drops it, so no userspace receiver limits the rate.
#[xdp]
pub fn porter_xdp_sink(_ctx: XdpContext) -> u32 {
    count(Stat::PacketsSeen);
    xdp_action::XDP_DROP
}

//! Porter's kernel programs. Built by `porter-agent/build.rs` (or
//! `cargo xtask build-ebpf`) for `bpfel-unknown-none` and embedded in the agent.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use porter_common::Stat;

#[map(name = "PORTER_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Stat::COUNT, 0);

#[inline(always)]
fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat.index()) {
        // Per-CPU slot: no other CPU writes it, so a plain add is race-free.
        unsafe { *slot += 1 };
    }
}

#[xdp]
pub fn porter_xdp(_ctx: XdpContext) -> u32 {
    count(Stat::PacketsSeen);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

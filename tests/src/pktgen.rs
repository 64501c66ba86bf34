//! A packet generator and a counting receiver for packet-rate benchmarks,
//! both in the kernel so that no userspace loop limits the rate.
//!
//! The generator is what xdp-trafficgen does: BPF_PROG_TEST_RUN with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` runs an XDP program returning `XDP_TX` on a
//! test packet, and the kernel really transmits each copy out of the
//! interface named in the context. On a veth, the frame arrives at the peer
//! (which must run XDP to take it), so the whole path from uplink to pod runs
//! on the generating CPU, and the rate it reaches is the rate that path
//! sustains on one CPU.
//!
//! The generating program restores each frame's headers from a copy in its
//! payload and randomises the source port's low bits (see
//! `porter_common::pktgen`), so build frames with [`udp_frame`].
//!
//! The receiver is an XDP program on the pod's interface that counts each
//! frame and drops it.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use porter_common::{
    Stat, map_names,
    pktgen::{FRAME_BYTES, HEADER_BYTES, TEMPLATE_OFFSET},
    program_names,
};

use crate::{
    netns::run_in,
    packets::xdp_context,
    scenarios::{attach_xdp_program, load_xdp_program},
};

/// Frames per BPF_PROG_TEST_RUN call: long enough that the syscall is noise.
const FRAMES_PER_CALL: u32 = 1 << 16;
/// Frames the kernel builds and sends per batch (xdp-trafficgen's default).
const BATCH: u32 = 64;

/// The generator's frame: UDP `src:sport -> dst:dport` from `src_mac` to
/// `dst_mac`, without a UDP checksum (the generator varies the port), its
/// headers copied into its payload.
pub fn udp_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
) -> Result<Vec<u8>> {
    let payload = [0u8; FRAME_BYTES - HEADER_BYTES];
    let mut frame = Vec::with_capacity(FRAME_BYTES);
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut frame, &payload)?;
    if frame.len() != FRAME_BYTES {
        bail!("generator frame of {} bytes", frame.len());
    }
    // No checksum: the generator changes the source port per frame.
    frame[HEADER_BYTES - 2..HEADER_BYTES].fill(0);
    frame.copy_within(..HEADER_BYTES, TEMPLATE_OFFSET);
    Ok(frame)
}

/// Sends copies of `frame` (from [`udp_frame`]) out of `interface` of
/// namespace `ns` for `duration`, from a thread pinned to `cpu`. Returns the
/// frames sent and the seconds it took.
pub fn generate(
    ns: &str,
    interface: &str,
    frame: Vec<u8>,
    cpu: usize,
    duration: Duration,
) -> Result<(u64, f64)> {
    let interface = interface.to_owned();
    run_in(ns, move || {
        pin_to_cpu(cpu)?;
        let ifindex = ifindex(&interface)?;
        let mut ebpf = load_xdp_program(program_names::XDP_TX)?;
        let program: &mut Xdp = ebpf
            .program_mut(program_names::XDP_TX)
            .context("loaded just now")?
            .try_into()?;
        let context = xdp_context(frame.len(), ifindex);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let mut options = TestRunOptions::new();
            options.data_in = Some(&frame);
            options.ctx_in = Some(&context);
            options.repeat = FRAMES_PER_CALL;
            options.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
            program
                .test_run(options)
                .context("BPF_PROG_TEST_RUN with live frames")?;
            sent += u64::from(FRAMES_PER_CALL);
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    })
}

/// The counting receiver on `ns`'s `interface`; detached when dropped.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    pub fn attach(ns: &str, interface: &str) -> Result<Self> {
        Ok(Self {
            ebpf: attach_xdp_program(ns, interface, program_names::XDP_SINK)?,
        })
    }

    /// Frames received so far, all CPUs together.
    pub fn received(&self) -> Result<u64> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::STATS)
                .context("no stats map in the sink")?,
        )?;
        Ok(stats.get(&Stat::PacketsSeen.index(), 0)?.iter().sum())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The index of `interface` in the calling thread's namespace.
fn ifindex(interface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated name; no other effect.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {interface}");
    }
    Ok(index)
}

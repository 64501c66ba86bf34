//! Types shared by the eBPF programs (`porter-ebpf`) and the agent.
//!
//! Everything here is `no_std` and `#[repr(C)]`, because the same bytes are
//! read by the kernel program and by userspace through the BPF maps.
#![no_std]

/// Names of the BPF maps, so that the loader and the programs agree on them.
pub mod map_names {
    /// Per-CPU array of global counters, indexed by [`crate::Stat`].
    pub const STATS: &str = "PORTER_STATS";
}

/// Global per-CPU counters kept by the XDP program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every packet the XDP program saw.
    PacketsSeen = 0,
}

impl Stat {
    /// Number of slots in the [`map_names::STATS`] array.
    pub const COUNT: u32 = 1;
    pub const ALL: [Stat; Self::COUNT as usize] = [Stat::PacketsSeen];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Stat::PacketsSeen => "packets_seen",
        }
    }
}

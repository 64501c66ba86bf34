//! The eBPF object, compiled by `build.rs` and embedded in the binary, so that
//! deploying the agent means shipping one file.

/// Bytes of `porter-ebpf`'s ELF object, aligned as aya requires.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/porter.bpf.o"));

/// Name of the XDP entry point in [`EBPF_OBJECT`].
pub const XDP_PROGRAM: &str = porter_common::program_names::XDP;

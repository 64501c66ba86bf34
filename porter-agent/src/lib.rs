//! The node agent: loads Porter's eBPF programs, attaches them to the node's
//! uplinks, pins them so they outlive the process, and reads their counters.
pub mod ebpf_object;
pub mod pins;
pub mod stats;
pub mod xdp_attach;

pub use pins::PinLayout;

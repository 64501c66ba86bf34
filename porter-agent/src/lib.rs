//! The node agent: loads Porter's eBPF programs, attaches them to the node's
//! uplinks, pins them so they outlive the process, keeps their maps in step
//! with the cluster state, and reads their counters.
pub mod bgp;
pub mod dataplane;
pub mod desired;
pub mod ebpf_object;
pub mod frozen;
pub mod inspect;
pub mod interfaces;
pub mod l2_interface;
pub mod layer2;
pub mod maglev;
pub mod metrics;
pub mod mmap_array;
pub mod neighbours;
pub mod node_condition;
pub mod pins;
pub mod plan;
pub mod service;
pub mod stats;
pub mod sync;
pub mod writer;
pub mod xdp_mode;

pub use pins::PinLayout;

pub use dataplane::{Dataplane, DataplaneConfig, DataplaneError, Forwarding};
pub use service::{Backend, LocalService, Protocol, ServiceAddr};

/// Default Maglev table size M (a prime).
pub const DEFAULT_MAGLEV_SIZE: u32 = porter_common::limits::DEFAULT_MAGLEV_SIZE;

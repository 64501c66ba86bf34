//! What the data plane is opened with.
use porter_common::limits::MAGLEV_SLOTS_PER_ENTRY;

/// Sizes fixed when the maps are first created (and pinned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// M, the Maglev table size: a prime at least 100x the most backends a service has.
    pub maglev_size: u32,
    /// Most services (VIP:port/proto) this node can serve.
    pub max_services: u32,
    /// How translated packets reach the pod (a runtime setting).
    pub forwarding: Forwarding,
}

/// How translated packets reach the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarding {
    /// Pass to the kernel, which routes them (through netfilter) to the pod.
    /// Correct with the node's own rules; see porter-ebpf's docs.
    #[default]
    Kernel,
    /// Redirect from XDP to the pod's interface, past the node's routing and
    /// netfilter. Correct only where the node does not masquerade pod
    /// traffic (replies would be, since netfilter never saw the request) and
    /// enforces no NetworkPolicy in netfilter (it sees no request), and only
    /// for pods whose interface takes redirected frames (veth: its pod side
    /// runs XDP). Falls back to the kernel while the pod's neighbour entry
    /// is unresolved.
    Redirect,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            maglev_size: porter_common::limits::DEFAULT_MAGLEV_SIZE,
            max_services: porter_common::limits::DEFAULT_MAX_SERVICES,
            forwarding: Forwarding::Kernel,
        }
    }
}

impl DataplaneConfig {
    /// Two tables of M slots per service, [`MAGLEV_SLOTS_PER_ENTRY`] slots
    /// per map element.
    pub(super) fn maglev_entries(&self) -> u32 {
        self.max_services
            .saturating_mul(2)
            .saturating_mul(self.maglev_size)
            .div_ceil(MAGLEV_SLOTS_PER_ENTRY)
    }

    pub(super) fn table_base(&self, service_id: u32, buffer: u32) -> u32 {
        (service_id * 2 + buffer) * self.maglev_size
    }
}

//! The controller: assigns EIPs from pools to Services that opt in, and
//! announces each EIP over BGP with one path per node that serves it.

pub mod announce;
pub mod bgp;
pub mod bgp_speaker;
mod compact;
pub mod explain;
/// Entry points for the fuzz targets in fuzz/; not a stable API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod identity;
pub mod ip_family;
pub mod ipam;
pub mod layer2_status;
pub mod leader_lease;
pub mod leadership;
pub mod metrics;
pub mod node_check;
pub mod node_check_runtime;
pub use porter_api::peer_auth;
pub mod reachability;
pub mod reconcile;
pub mod run;
pub mod service;
/// Fixtures for the unit tests and the controller benchmark; not a stable API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod uninstall;

//! Shared by the privileged integration tests and by `cargo xtask demo`: a lab of
//! network namespaces that tears itself down, and helpers to find Porter's binaries.
pub mod bfd_lab;
pub mod bins;
pub mod cases;
pub mod central_lab;
pub mod datacenter;
pub mod disruption;
pub mod from_images;
pub mod image_rootfs;
pub mod lab;
pub mod layer2_lab;
pub mod manifests;
pub mod monitoring;
pub mod netns;
pub mod netns_runtime;
pub mod packets;
pub mod pktgen;
pub mod privilege;
pub mod routers;
pub mod scenarios;
pub mod standby_lab;
pub mod workloads;

//! Porter's API: the CRD types (`Eip`, `BgpConf`, `BgpPeer`), the annotation
//! keys a Service opts in with, and the cluster-state sources (`kube`, `dir`)
//! that the controller and the agent both read through.

pub mod annotations;
pub mod crd;

pub use crd::{BgpConf, BgpConfSpec, BgpPeer, BgpPeerSpec, Eip, EipSpec, EipStatus};

//! Porter's API: the CRD types (`Eip`, `BgpConf`, `BgpPeer`), the annotation
//! keys a Service opts in with, and the cluster-state sources (`kube`, `dir`)
//! that the controller and the agent both read through.

/// Annotation with which a Service opts in to Porter (the seed's key).
pub const LB_ANNOTATION: &str = "lb.kubesphere.io/v1alpha1";

//! Porter's API: the CRD types (`Eip`, `BgpConf`, `BgpPeer`), the annotation
//! keys a Service opts in with, and the cluster-state sources (`kube`, `dir`)
//! that the controller and the agent both read through.

pub mod annotations;
pub mod bgp_bfd;
pub mod bgp_config;
pub mod bgp_policy;
pub mod cli;
pub mod crd;
pub mod health;
pub mod layer2;
pub mod lease;
pub mod metrics_http;
pub mod names;
pub mod node_dataplane;
pub mod node_reachability;
pub mod peer_auth;
pub mod service;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uninstall;

use std::sync::Arc;

pub use crd::{
    BgpConf, BgpConfSpec, BgpPeer, BgpPeerNodeStatus, BgpPeerSpec, BgpPeerStatus, Eip, EipSpec,
    EipStatus, Layer2Announcer, SpeakerMode,
};

/// A namespaced object's identity, displayed as `namespace/name` (the form
/// `Eip.status.used` and the logs use). The names are shared, so a clone
/// allocates nothing: the controller keeps one key per Service in several
/// tables, the plan and its Events (10,000 Services: about 100,000 keys).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a namespaced object; an object without a namespace (as a
    /// manifest may be) lands in `default`, as `kubectl apply` would put it.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

//! How both binaries read the cluster and write back to it, independent of
//! where the cluster lives. A source publishes [`Snapshot`]s on a watch
//! channel, newest wins; a [`StatusWriter`] takes what the core decided.
//! Implementations: [`kube`] (the API server) and [`dir`] (manifests in a
//! directory).

pub mod dir;
pub mod kube;
pub mod layer2;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, NodeCondition, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{BgpConf, BgpPeer, BgpPeerNodeStatus, Eip, EipStatus, ObjectKey};

/// `--source` of both binaries: `kube` (the API server) or `dir:PATH` (a
/// directory of manifests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceArg {
    Kube,
    Dir(PathBuf),
}

impl FromStr for SourceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kube" => Ok(SourceArg::Kube),
            _ => match s.strip_prefix("dir:") {
                Some(path) if !path.is_empty() => Ok(SourceArg::Dir(path.into())),
                _ => Err(format!("`{s}` is neither `kube` nor `dir:PATH`")),
            },
        }
    }
}

/// Everything the controller and the agent read, as of one moment. Objects
/// are shared, so publishing a snapshot copies pointers, not objects.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub eips: Vec<Arc<Eip>>,
    pub bgp_confs: Vec<Arc<BgpConf>>,
    pub bgp_peers: Vec<Arc<BgpPeer>>,
    /// Only the seed's `porter-system/bgp-cfg`.
    pub config_maps: Vec<Arc<ConfigMap>>,
    /// Layer 2 EIP → the node answering ARP/NDP for it, from the agents'
    /// leases; only filled for the controller ([`layer2::with_holders`]).
    pub layer2_holders: Arc<crate::layer2::Holders>,
    /// BgpPeer passwords live here. The kube source reads only the
    /// namespaces it is given (none for the agent); `stringData` is already
    /// merged into `data`.
    pub secrets: Vec<Arc<Secret>>,
}

/// The receiving end of a source: `borrow()` is the latest snapshot,
/// `changed()` waits for the next one.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Arc<Snapshot>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    Service(ObjectKey),
    Eip(String),
    BgpPeer(String),
    /// A Node, by name: what its agent says about its data plane, or what
    /// the controller's liveness check found.
    Node(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub regarding: Regarding,
    pub type_: EventType,
    /// CamelCase reason: `IPAllocated`, `AllocationFailed`, `Announced`,
    /// `AuthPasswordUnavailable`, `AuthPasswordInSpec`.
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        source: serde_yaml::Error,
    },
    #[error("the API server refused {what}: {source}")]
    Api {
        what: String,
        source: Box<::kube::Error>,
    },
}

/// Where the core's decisions go. Every call is idempotent: writing what is
/// already there changes nothing.
pub trait StatusWriter: Send + Sync {
    /// Sets `status.loadBalancer.ingress` to exactly `ingress`.
    fn service_ingress(
        &self,
        service: &ObjectKey,
        ingress: &[IpAddr],
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Adds or removes [`crate::annotations::SERVICE_FINALIZER`].
    fn service_finalizer(
        &self,
        service: &ObjectKey,
        present: bool,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    fn eip_status(
        &self,
        eip: &str,
        status: &EipStatus,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    fn event(&self, event: &Event) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Sets one condition of `node`'s status (the one of its type), leaving
    /// the others alone.
    fn node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Sets (`Some`) or removes (`None`) one speaker's entry in
    /// `BgpPeer.status.nodes`, keyed by `key` (a node name, or
    /// [`crate::crd::CONTROLLER_STATUS_KEY`]); the other speakers' entries
    /// are left alone. `status.node` must equal `key`.
    fn bgp_peer_status(
        &self,
        peer: &str,
        key: &str,
        status: Option<&BgpPeerNodeStatus>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_arg_parses_kube_and_dir() {
        assert_eq!("kube".parse(), Ok(SourceArg::Kube));
        assert_eq!("dir:/tmp/x".parse(), Ok(SourceArg::Dir("/tmp/x".into())));
        assert!("dir:".parse::<SourceArg>().is_err());
        assert!("etcd".parse::<SourceArg>().is_err());
    }
}

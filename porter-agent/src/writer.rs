//! Where the agent writes to the cluster: its node's entry in
//! `BgpPeer.status` (node mode), its node's data plane condition, and
//! Events. The same writers as the controller's, for whichever source the
//! agent reads.
use k8s_openapi::api::core::v1::NodeCondition;
use porter_api::{
    BgpPeerNodeStatus,
    source::{Event, StatusWriter, WriteError, dir::DirWriter, kube::KubeWriter},
};

#[derive(Clone)]
pub enum ClusterWriter {
    Dir(DirWriter),
    Kube(Box<KubeWriter>),
}

impl ClusterWriter {
    pub async fn write(
        &self,
        peer: &str,
        node: &str,
        status: Option<&BgpPeerNodeStatus>,
    ) -> Result<(), WriteError> {
        match self {
            ClusterWriter::Dir(writer) => writer.bgp_peer_status(peer, node, status).await,
            ClusterWriter::Kube(writer) => writer.bgp_peer_status(peer, node, status).await,
        }
    }

    /// An Event: BFD state changes on a BgpPeer (node mode), data plane
    /// state changes on the Node.
    pub async fn event(&self, event: &Event) -> Result<(), WriteError> {
        match self {
            ClusterWriter::Dir(writer) => writer.event(event).await,
            ClusterWriter::Kube(writer) => writer.event(event).await,
        }
    }

    /// Sets one condition of `node`'s status, leaving the others alone.
    pub async fn node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
    ) -> Result<(), WriteError> {
        match self {
            ClusterWriter::Dir(writer) => writer.node_condition(node, condition),
            ClusterWriter::Kube(writer) => writer.node_condition(node, condition).await,
        }
    }
}

//! Where the agent writes `BgpPeer.status`: the same writers as the
//! controller's, for whichever source the agent reads.
use porter_api::{
    BgpPeerNodeStatus,
    source::{Event, StatusWriter, WriteError, dir::DirWriter, kube::KubeWriter},
};

pub enum PeerStatusWriter {
    Dir(DirWriter),
    Kube(Box<KubeWriter>),
}

impl PeerStatusWriter {
    pub async fn write(
        &self,
        peer: &str,
        node: &str,
        status: Option<&BgpPeerNodeStatus>,
    ) -> Result<(), WriteError> {
        match self {
            PeerStatusWriter::Dir(writer) => writer.bgp_peer_status(peer, node, status).await,
            PeerStatusWriter::Kube(writer) => writer.bgp_peer_status(peer, node, status).await,
        }
    }

    /// An Event about a BgpPeer (BFD state changes in node mode).
    pub async fn event(&self, event: &Event) -> Result<(), WriteError> {
        match self {
            PeerStatusWriter::Dir(writer) => writer.event(event).await,
            PeerStatusWriter::Kube(writer) => writer.event(event).await,
        }
    }
}

//! Node-mode BGP metrics, per peer and node: `porter_bgp_session_up` and
//! `porter_bgp_paths_announced` (the controller's speaker reports the same
//! session metric per peer).
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct BgpMetrics {
    session_up: Family<Labels, Gauge>,
    paths_announced: Family<Labels, Gauge>,
}

impl BgpMetrics {
    /// Replaces what was recorded with this node's sessions:
    /// `(peer address, established, paths announced)`.
    pub fn sessions(&self, node: &str, sessions: &[porter_bgp::PeerStatus]) {
        self.session_up.clear();
        self.paths_announced.clear();
        for session in sessions {
            let labels = vec![
                ("peer".to_owned(), session.address.to_string()),
                ("node".to_owned(), node.to_owned()),
            ];
            let up = session.state == porter_bgp::SessionState::Established;
            self.session_up.get_or_create(&labels).set(i64::from(up));
            self.paths_announced
                .get_or_create(&labels)
                .set(i64::try_from(session.paths_announced).unwrap_or(i64::MAX));
        }
    }

    /// Registers under a `porter_bgp` registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "session_up",
            "1 when this node's BGP session to the peer is Established (speakerMode node)",
            self.session_up.clone(),
        );
        registry.register(
            "paths_announced",
            "Paths the peer holds from this node's speaker (speakerMode node)",
            self.paths_announced.clone(),
        );
    }
}

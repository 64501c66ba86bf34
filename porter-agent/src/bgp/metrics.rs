//! Node-mode BGP metrics, per peer and node: `porter_bgp_session_up`,
//! `porter_bgp_paths_announced` and `porter_bgp_notifications_total` (the
//! controller's speaker reports the same session metrics per peer).
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct BgpMetrics {
    session_up: Family<Labels, Gauge>,
    paths_announced: Family<Labels, Gauge>,
    notifications: Family<Labels, Counter>,
}

impl BgpMetrics {
    /// Replaces what was recorded with this node's sessions:
    /// `(peer address, established, paths announced)`.
    pub fn sessions(&self, node: &str, sessions: &[porter_bgp::PeerStatus]) {
        self.session_up.clear();
        self.paths_announced.clear();
        // The sessions keep the totals; the family is refilled from them.
        self.notifications.clear();
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
            for (direction, code, subcode, count) in session.notifications() {
                let mut labels = labels.clone();
                labels.extend([
                    ("direction".to_owned(), direction.to_owned()),
                    ("code".to_owned(), code.to_string()),
                    ("subcode".to_owned(), subcode.to_string()),
                ]);
                self.notifications.get_or_create(&labels).inc_by(count);
            }
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
        registry.register(
            "notifications",
            "BGP NOTIFICATIONs by direction (sent, received), code and subcode, this node's sessions (speakerMode node)",
            self.notifications.clone(),
        );
    }
}

//! Node-mode BGP metrics, per peer and node: `porter_bgp_session_up`,
//! `porter_bgp_paths_announced` and `porter_bgp_notifications_total` (the
//! controller's speaker reports the same session metrics per peer),
//! `porter_bgp_bfd_up` and `porter_bgp_bfd_packets_dropped_total` by reason.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use porter_bfd::{Counters, DropReason};
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
    bfd_up: Family<Labels, Gauge>,
    bfd_dropped: Family<Labels, Counter>,
    /// The BFD drop counts already added to `bfd_dropped`, by reason: the
    /// BFD task counts from its start, and is restarted with the speaker.
    bfd_dropped_seen: Arc<[AtomicU64; DropReason::ALL.len()]>,
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

    /// Replaces the BFD session states (`neighbour → state text`, Up or
    /// not) and adds the packets dropped since the last call.
    pub fn bfd(
        &self,
        node: &str,
        states: &BTreeMap<IpAddr, String>,
        counters: Option<Arc<Counters>>,
    ) {
        self.bfd_up.clear();
        for (address, state) in states {
            let labels = vec![
                ("peer".to_owned(), address.to_string()),
                ("node".to_owned(), node.to_owned()),
            ];
            self.bfd_up
                .get_or_create(&labels)
                .set(i64::from(state == "Up"));
        }
        let Some(counters) = counters else { return };
        for reason in DropReason::ALL {
            let now = counters.dropped(reason);
            let seen = &self.bfd_dropped_seen[reason.index()];
            // A new BFD task counts from zero again.
            let before = seen.swap(now, Ordering::Relaxed);
            let added = now.checked_sub(before).unwrap_or(now);
            if added > 0 {
                let labels = vec![
                    ("reason".to_owned(), reason.as_str().to_owned()),
                    ("node".to_owned(), node.to_owned()),
                ];
                self.bfd_dropped.get_or_create(&labels).inc_by(added);
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
        registry.register(
            "bfd_up",
            "1 when this node's BFD session with the peer is Up (speakerMode node, spec.bfd set)",
            self.bfd_up.clone(),
        );
        registry.register(
            "bfd_packets_dropped",
            "BFD packets this node dropped, by reason: malformed, wrong TTL for single hop, unknown discriminator, authenticated",
            self.bfd_dropped.clone(),
        );
    }
}

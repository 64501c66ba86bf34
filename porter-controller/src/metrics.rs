//! Prometheus metrics, served as text on `--metrics-addr` at `/metrics`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ipam::Ipam;
use crate::leadership::StepDown;
use crate::node_check::State as NodeState;
use crate::reconcile::{FAILURE_KINDS, Plan};
use porter_bgp::PathTable;
use porter_bgp::PeerStatus;

type Labels = Vec<(String, String)>;
/// (paths version, peers, prefixes per peer).
type ScopedCounts = (u64, Vec<IpAddr>, Vec<i64>);

pub struct Metrics {
    registry: Registry,
    pool_size: Family<Labels, Gauge<f64, AtomicU64>>,
    pool_usage: Family<Labels, Gauge>,
    allocations: Counter,
    failures: Family<Labels, Counter>,
    peer_up: Family<Labels, Gauge>,
    peer_prefixes: Family<Labels, Gauge>,
    peer_paths: Family<Labels, Gauge>,
    peer_notifications: Family<Labels, Counter>,
    bfd_up: Family<Labels, Gauge>,
    prefixes: Gauge,
    paths: Gauge,
    layer2_unanswered: Gauge,
    reconcile_seconds: Histogram,
    leader: Gauge,
    announcing: Gauge,
    step_downs: Family<Labels, Counter>,
    node_check_state: Family<Labels, Gauge>,
    node_withdrawals: Family<Labels, Counter>,
    /// Prefixes per peer for (paths version, peers), counted once per
    /// change rather than on every pass.
    scoped: Mutex<Option<ScopedCounts>>,
}

impl Default for Metrics {
    fn default() -> Self {
        // Metrics are handles onto shared values: the registry keeps clones
        // for encoding while `Metrics` keeps the ones it updates.
        let mut m = Metrics {
            pool_size: Family::default(),
            pool_usage: Family::default(),
            allocations: Counter::default(),
            failures: Family::default(),
            peer_up: Family::default(),
            peer_prefixes: Family::default(),
            peer_paths: Family::default(),
            peer_notifications: Family::default(),
            bfd_up: Family::default(),
            scoped: Mutex::default(),
            prefixes: Gauge::default(),
            layer2_unanswered: Gauge::default(),
            paths: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            leader: Gauge::default(),
            announcing: Gauge::default(),
            step_downs: Family::default(),
            node_check_state: Family::default(),
            node_withdrawals: Family::default(),
            registry: Registry::with_prefix("porter"),
        };
        // Every reason's counter starts at 0, so that increase() and the
        // alerts on them (PorterAllocationFailing, PorterLeadershipLost) see
        // the first event too.
        for reason in FAILURE_KINDS {
            let _created = m.failures.get_or_create(&label("reason", reason));
        }
        for reason in STEP_DOWN_REASONS {
            let _created = m.step_downs.get_or_create(&label("reason", reason));
        }
        let registry = &mut m.registry;
        registry.register(
            "pool_size",
            "Addresses in each Eip pool",
            m.pool_size.clone(),
        );
        registry.register(
            "pool_usage",
            "Addresses in use in each Eip pool",
            m.pool_usage.clone(),
        );
        registry.register(
            "allocations",
            "Addresses handed out to Services",
            m.allocations.clone(),
        );
        registry.register(
            "allocation_failures",
            "AllocationFailed events: a Service left without an address, by reason",
            m.failures.clone(),
        );
        registry.register(
            "bgp_session_up",
            "1 when the BGP session to the peer is Established",
            m.peer_up.clone(),
        );
        registry.register(
            "bgp_prefixes_announced",
            "EIP prefixes meant for the peer (the pools' peerSelector and the peer's nodeSelector applied)",
            m.peer_prefixes.clone(),
        );
        registry.register(
            "bgp_paths_announced",
            "Paths the peer holds from us, as the session counts them",
            m.peer_paths.clone(),
        );
        registry.register(
            "bgp_notifications",
            "BGP NOTIFICATIONs by peer, direction (sent, received), code and subcode (RFC 4271 section 4.5), since the peer was configured",
            m.peer_notifications.clone(),
        );
        registry.register(
            "bgp_bfd_up",
            "1 while the BFD session beside the BGP session to the peer (spec.bfd) is Up",
            m.bfd_up.clone(),
        );
        registry.register(
            "announced_prefixes",
            "EIP prefixes announced",
            m.prefixes.clone(),
        );
        registry.register(
            "announced_paths",
            "Paths (prefix, next hop) announced",
            m.paths.clone(),
        );
        registry.register(
            "layer2_unanswered_addresses",
            "Layer 2 addresses in use that no node answers ARP/NDP for (no node with a ready endpoint holds the lease)",
            m.layer2_unanswered.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass, writes included",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "controller_leader",
            "1 while this replica holds the leader lease (writes status and Events, and announces)",
            m.leader.clone(),
        );
        registry.register(
            "controller_announcing",
            "1 while this replica runs its BGP sessions: as the leader, or as a standby the lease store answered within the lease",
            m.announcing.clone(),
        );
        registry.register(
            "controller_leader_step_downs",
            "Times this replica gave leadership up, by reason (expired: no renewal in time; taken: another replica holds the lease)",
            m.step_downs.clone(),
        );
        registry.register(
            "node_check_state",
            "Central mode: 1 for each checked node, with the state of its data-plane liveness check (up, down, recovering: withdrawn; unchecked: never answered since it became a target, kept announced)",
            m.node_check_state.clone(),
        );
        registry.register(
            "node_withdrawals",
            "Central mode: times a node's paths were withdrawn because it stopped answering the liveness probe",
            m.node_withdrawals.clone(),
        );
        m
    }
}

/// The `reason` values of `porter_controller_leader_step_downs_total`:
/// no renewal in time, or another replica holds the lease.
const STEP_DOWN_REASONS: [&str; 2] = ["expired", "taken"];

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    /// Whether this replica leads now (see [`crate::leader_lease::elect`]).
    pub fn set_leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
    }

    /// Whether this replica runs its BGP sessions now.
    pub fn set_announcing(&self, announcing: bool) {
        self.announcing.set(i64::from(announcing));
    }

    pub fn stepped_down(&self, why: &StepDown) {
        let [expired, taken] = STEP_DOWN_REASONS;
        let reason = match why {
            StepDown::Expired { .. } => expired,
            StepDown::Taken(_) => taken,
        };
        self.step_downs
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// Every checked node's state; nodes no longer checked disappear.
    pub fn node_check<'a>(&self, states: impl IntoIterator<Item = (&'a str, NodeState)>) {
        self.node_check_state.clear();
        for (node, state) in states {
            let labels = vec![
                ("node".to_owned(), node.to_owned()),
                ("state".to_owned(), state.name().to_owned()),
            ];
            self.node_check_state.get_or_create(&labels).set(1);
        }
    }

    /// The BFD sessions' states (`BgpPeer.status` text) by neighbour.
    pub fn bfd(&self, states: &std::collections::BTreeMap<IpAddr, String>) {
        self.bfd_up.clear();
        for (address, state) in states {
            self.bfd_up
                .get_or_create(&label("peer", address))
                .set(i64::from(state == "Up"));
        }
    }

    pub fn node_withdrawn(&self, node: &str) {
        self.node_withdrawals
            .get_or_create(&label("node", node))
            .inc();
    }

    pub fn observe(&self, plan: &Plan, ipam: &Ipam, peers: &[PeerStatus], seconds: f64) {
        self.pool_size.clear();
        self.pool_usage.clear();
        for pool in ipam.pools() {
            let size = pool.range.map_or(0.0, |r| r.size() as f64);
            self.pool_size
                .get_or_create(&label("pool", &pool.name))
                .set(size);
            let used = ipam.usage(&pool.name);
            self.pool_usage
                .get_or_create(&label("pool", &pool.name))
                .set(i64::try_from(used).unwrap_or(i64::MAX));
        }
        self.allocations.inc_by(plan.allocated);
        for reason in &plan.failures {
            self.failures.get_or_create(&label("reason", reason)).inc();
        }
        self.peer_up.clear();
        self.peer_paths.clear();
        self.peer_prefixes.clear();
        let addresses: Vec<IpAddr> = peers.iter().map(|p| p.address).collect();
        let prefixes = self.prefixes_per_peer(&plan.paths, plan.paths_version, &addresses);
        for (p, prefixes) in peers.iter().zip(prefixes) {
            let peer = label("peer", p.address);
            let up = p.state == porter_bgp::SessionState::Established;
            self.peer_up.get_or_create(&peer).set(i64::from(up));
            self.peer_paths
                .get_or_create(&peer)
                .set(i64::try_from(p.paths_announced).unwrap_or(i64::MAX));
            self.peer_prefixes.get_or_create(&peer).set(prefixes);
        }
        // The sessions keep the totals; the family is refilled from them.
        self.peer_notifications.clear();
        for p in peers {
            for (direction, code, subcode, count) in p.notifications() {
                let labels = vec![
                    ("peer".to_owned(), p.address.to_string()),
                    ("direction".to_owned(), direction.to_owned()),
                    ("code".to_owned(), code.to_string()),
                    ("subcode".to_owned(), subcode.to_string()),
                ];
                self.peer_notifications.get_or_create(&labels).inc_by(count);
            }
        }
        self.prefixes.set(plan.paths.len() as i64);
        self.layer2_unanswered
            .set(i64::try_from(plan.layer2_unanswered).unwrap_or(i64::MAX));
        self.paths
            .set(plan.paths.values().map(|h| h.len() as i64).sum());
        self.reconcile_seconds.observe(seconds);
    }

    /// For each of `peers`, the prefixes with at least one path for it.
    fn prefixes_per_peer(&self, paths: &PathTable, version: u64, peers: &[IpAddr]) -> Vec<i64> {
        let Ok(mut cache) = self.scoped.lock() else {
            return vec![0; peers.len()];
        };
        if let Some((v, p, counts)) = cache.as_ref()
            && *v == version
            && p == peers
        {
            return counts.clone();
        }
        let mut counts = vec![0i64; peers.len()];
        for hops in paths.values() {
            for (count, peer) in counts.iter_mut().zip(peers) {
                if hops
                    .values()
                    .any(|a| a.only_peers.as_ref().is_none_or(|only| only.contains(peer)))
                {
                    *count += 1;
                }
            }
        }
        *cache = Some((version, peers.to_vec(), counts.clone()));
        counts
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NOTIFICATION count of a session reaches `/metrics`, by peer,
    /// direction, code and subcode.
    #[test]
    fn notifications_are_counted_by_code() {
        let metrics = Metrics::default();
        let mut session = crate::bgp::established("192.0.2.1".parse().expect("ip"));
        session.notifications_sent.insert((2, 2), 3);
        session.notifications_received.insert((6, 2), 1);
        metrics.observe(&Plan::default(), &Ipam::default(), &[session], 0.0);
        let text = metrics.render();
        for line in [
            "porter_bgp_notifications_total{peer=\"192.0.2.1\",direction=\"sent\",code=\"2\",subcode=\"2\"} 3",
            "porter_bgp_notifications_total{peer=\"192.0.2.1\",direction=\"received\",code=\"6\",subcode=\"2\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Observed again (every pass), the totals are not added twice.
        let mut session = crate::bgp::established("192.0.2.1".parse().expect("ip"));
        session.notifications_sent.insert((2, 2), 3);
        metrics.observe(&Plan::default(), &Ipam::default(), &[session], 0.0);
        assert!(
            metrics
                .render()
                .contains("direction=\"sent\",code=\"2\",subcode=\"2\"} 3\n")
        );
    }

    #[test]
    fn every_reason_an_alert_counts_is_exported_from_zero() {
        // increase() sees no change in a series that first appears at 1:
        // the alert on failures needs each series before the first failure.
        let text = Metrics::default().render();
        for reason in FAILURE_KINDS {
            assert!(
                text.contains(&format!(
                    "porter_allocation_failures_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason} missing from:\n{text}"
            );
        }
        for reason in STEP_DOWN_REASONS {
            assert!(
                text.contains(&format!(
                    "porter_controller_leader_step_downs_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason} missing from:\n{text}"
            );
        }
    }
}
#[cfg(test)]
mod node_check_tests {
    use super::*;

    #[test]
    fn node_check_states_and_withdrawals_are_exported() {
        let metrics = Metrics::default();
        metrics.node_check([("n1", NodeState::Down), ("n2", NodeState::Unchecked)]);
        metrics.node_withdrawn("n1");
        metrics.bfd(&[("192.168.1.1".parse().expect("ip"), "Up".to_owned())].into());
        let text = metrics.render();
        for line in [
            "porter_node_check_state{node=\"n1\",state=\"down\"} 1\n",
            "porter_node_check_state{node=\"n2\",state=\"unchecked\"} 1\n",
            "porter_node_withdrawals_total{node=\"n1\"} 1\n",
            "porter_bgp_bfd_up{peer=\"192.168.1.1\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A node no longer checked leaves the states.
        metrics.node_check([("n2", NodeState::Up)]);
        assert!(!metrics.render().contains("node=\"n1\",state"));
    }
}

//! Prometheus metrics, served as text on `--metrics-addr` at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::bgp::PeerStatus;
use crate::ipam::Ipam;
use crate::reconcile::Plan;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pool_size: Family<Labels, Gauge<f64, AtomicU64>>,
    pool_usage: Family<Labels, Gauge>,
    allocations: Counter,
    failures: Family<Labels, Counter>,
    peer_up: Family<Labels, Gauge>,
    prefixes: Gauge,
    paths: Gauge,
    reconcile_seconds: Histogram,
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
            prefixes: Gauge::default(),
            paths: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            registry: Registry::with_prefix("porter"),
        };
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
            "reconcile_duration_seconds",
            "Time of one reconcile pass, writes included",
            m.reconcile_seconds.clone(),
        );
        m
    }
}

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
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
        for p in peers {
            self.peer_up
                .get_or_create(&label("peer", p.address))
                .set(i64::from(p.established));
        }
        self.prefixes.set(plan.routes.len() as i64);
        self.paths
            .set(plan.routes.values().map(|h| h.len() as i64).sum());
        self.reconcile_seconds.observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

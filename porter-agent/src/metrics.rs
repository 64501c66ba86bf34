//! Prometheus metrics of the agent. What the sync loop counts lives here;
//! what the data plane counts is read from the pinned maps at each scrape
//! (the same reader as `inspect`), so the numbers are never stale.
use std::sync::atomic::AtomicU64;

use porter_common::ServiceCounters;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::debug;

use crate::{
    PinLayout,
    bgp::metrics::BgpMetrics,
    dataplane::attach::Attachment,
    frozen::{Reason, Verdict},
    inspect::{self, PinnedState},
    layer2::metrics::Layer2Metrics,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Where a sync step failed, as the `stage` label of `sync_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Loading the programs and maps (`Dataplane::open`).
    Open,
    /// Finding the interface that holds the node's InternalIP.
    Interface,
    /// Attaching XDP or tc to an interface.
    Attach,
    /// Writing services into the maps.
    Program,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Open, Stage::Interface, Stage::Attach, Stage::Program];

    fn label(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Interface => "interface",
            Stage::Attach => "attach",
            Stage::Program => "program",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    sync_errors: Family<Labels, Counter>,
    syncs: Counter,
    xdp_mode: Family<Labels, Gauge>,
    desired_services: Gauge,
    problems: Gauge,
    sync_seconds: Gauge<f64, AtomicU64>,
    dataplane_ready: Gauge,
    dataplane_frozen: Family<Labels, Gauge>,
    /// Layer 2 mode's own metrics (rounds record into a clone).
    pub layer2: Layer2Metrics,
    /// Node-mode BGP sessions, as `porter_bgp_*`.
    pub bgp: BgpMetrics,
}

impl Default for Metrics {
    /// Every stage's error counter starts at 0, so that `rate()` and alerts
    /// see the series before the first error.
    fn default() -> Self {
        let metrics = Self {
            sync_errors: Family::default(),
            syncs: Counter::default(),
            xdp_mode: Family::default(),
            desired_services: Gauge::default(),
            problems: Gauge::default(),
            sync_seconds: Gauge::default(),
            dataplane_ready: Gauge::default(),
            dataplane_frozen: Family::default(),
            layer2: Layer2Metrics::default(),
            bgp: BgpMetrics::default(),
        };
        for stage in Stage::ALL {
            let _created = metrics
                .sync_errors
                .get_or_create(&labels(&[("stage", stage.label())]));
        }
        for reason in Reason::ALL {
            let _created = metrics
                .dataplane_frozen
                .get_or_create(&labels(&[("reason", reason.as_str())]));
        }
        metrics
    }
}

impl Metrics {
    pub fn sync_error(&self, stage: Stage) {
        self.sync_errors
            .get_or_create(&labels(&[("stage", stage.label())]))
            .inc();
    }

    /// A completed sync: how many services are wanted, how many problems the
    /// cluster state had, and how long programming took.
    pub fn synced(&self, services: usize, problems: usize, seconds: f64) {
        self.syncs.inc();
        self.desired_services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
        self.sync_seconds.set(seconds);
    }

    /// The data plane's verdict: `dataplane_ready` 1 once programmed and
    /// attached, and `dataplane_frozen` 1 for the reason it cannot be.
    pub fn dataplane(&self, verdict: &Verdict) {
        self.dataplane_ready
            .set(i64::from(*verdict == Verdict::Ready));
        for reason in Reason::ALL {
            let frozen = matches!(verdict, Verdict::Frozen { reason: r, .. } if *r == reason);
            self.dataplane_frozen
                .get_or_create(&labels(&[("reason", reason.as_str())]))
                .set(i64::from(frozen));
        }
    }

    /// `mode` is `driver` or `generic` (or `unknown` when the kernel would not say).
    pub fn attached(&self, interface: &str, mode: &str) {
        self.xdp_mode
            .get_or_create(&labels(&[("interface", interface), ("mode", mode)]))
            .set(1);
    }

    /// Renders the agent's own metrics and what the pinned maps hold now.
    pub fn render(&self, pins: &PinLayout) -> String {
        let mut root = Registry::with_prefix("porter");
        self.bgp.register(root.sub_registry_with_prefix("bgp"));
        let registry = root.sub_registry_with_prefix("agent");
        registry.register(
            "sync_errors",
            "Failed sync steps, by stage (open, interface, attach, program); the agent retries with backoff",
            self.sync_errors.clone(),
        );
        registry.register(
            "syncs",
            "Completed syncs of the data plane to the cluster state",
            self.syncs.clone(),
        );
        registry.register(
            "xdp_attached",
            "1 for each interface the XDP program is attached to, with the mode in use (driver or generic)",
            self.xdp_mode.clone(),
        );
        registry.register(
            "dataplane_ready",
            "1 while this node's data plane is programmed and attached; 0 while starting or frozen",
            self.dataplane_ready.clone(),
        );
        registry.register(
            "dataplane_frozen",
            "1 for the reason this node's data plane cannot be programmed (its paths are then withdrawn), by reason",
            self.dataplane_frozen.clone(),
        );
        registry.register(
            "desired_services",
            "EIP:port/protocol services this node should serve (with local ready endpoints)",
            self.desired_services.clone(),
        );
        registry.register(
            "state_problems",
            "Problems in the cluster state that keep part of a Service from being served (see the log)",
            self.problems.clone(),
        );
        registry.register(
            "last_sync_seconds",
            "Time the last sync took to program the maps",
            self.sync_seconds.clone(),
        );
        self.layer2.register(registry);
        match inspect::read(pins) {
            Ok(state) => register_pinned(registry, &state),
            Err(err) => debug!(error = %err, "no pinned state to report"),
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &root);
        out
    }
}

/// The XDP mode of an attachment made by this agent; `None` when it took
/// over an earlier agent's link, whose mode that agent chose.
pub fn mode_of(attachment: Attachment) -> Option<&'static str> {
    match attachment {
        Attachment::Driver => Some("driver"),
        Attachment::Generic => Some("generic"),
        Attachment::ReplacedPinned => None,
    }
}

/// The per-service counters: name, help, and the field.
type ServiceCounter = (&'static str, &'static str, fn(&ServiceCounters) -> u64);

const SERVICE_COUNTERS: [ServiceCounter; 5] = [
    (
        "service_packets",
        "Packets forwarded to each service's backends, summed over CPUs",
        |c| c.packets,
    ),
    (
        "service_bytes",
        "Bytes forwarded to each service's backends, summed over CPUs",
        |c| c.bytes,
    ),
    (
        "service_new_flows",
        "New flows (conntrack entries created) per service, summed over CPUs",
        |c| c.new_flows,
    ),
    (
        "service_forwarded_out_packets",
        "Packets of each service sent on to a backend on another node (externalTrafficPolicy Cluster)",
        |c| c.forwarded_out,
    ),
    (
        "service_forwarded_in_packets",
        "Packets of each service another node forwarded here, served by a local pod",
        |c| c.forwarded_in,
    ),
];

fn register_pinned(registry: &mut Registry, state: &PinnedState) {
    for (name, help, value) in SERVICE_COUNTERS {
        let family = Family::<Labels, Counter>::default();
        for service in &state.services {
            family
                .get_or_create(&labels(&[("service", &service.addr.to_string())]))
                .inc_by(value(&service.counters));
        }
        registry.register(name, help, family);
    }
    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for map in &state.maps {
        let map_label = labels(&[("map", map.map)]);
        entries
            .get_or_create(&map_label)
            .set(i64::try_from(map.entries).unwrap_or(i64::MAX));
        capacity
            .get_or_create(&map_label)
            .set(i64::from(map.capacity));
    }
    registry.register(
        "map_entries",
        "Entries in use in each data plane map",
        entries,
    );
    registry.register("map_capacity", "Capacity of each data plane map", capacity);
    let global = Family::<Labels, Counter>::default();
    for (stat, value) in &state.global {
        global
            .get_or_create(&labels(&[("counter", stat.name())]))
            .inc_by(*value);
    }
    registry.register(
        "dataplane_packets",
        "What the XDP and tc programs did with packets, by counter (passes, drops and their reasons)",
        global,
    );
}

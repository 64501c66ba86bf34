//! The controller at scale: 10,000 Services over 1,000 nodes with 3 ready
//! endpoints each, one /16 pool.
//!
//! - `full_sync_seconds`: a fresh controller's first pass: every allocation
//!   and every announcement.
//! - `single_change_ms`: one EndpointSlice changes (an endpoint moves to
//!   another node); time from the new snapshot to the updated routes, median
//!   of several changes. Baseline in the same run: a pass with no change.
//! - `service_change_ms`: one Service changes (a label): the address plan
//!   runs again over every Service, rebuilding the IPAM's book from their
//!   published statuses; median, next to the same no-change baseline.
//! - `peak_rss_mib`: the process's high-water mark, next to the baseline
//!   before the cluster was built.
//! - `failover_seconds`: two replicas in the lab, the leader killed (see
//!   the controller_failover module), next to the lease duration.
//!
//! Objects carry a `resourceVersion`, and each write gives its object a new
//! one, as from the API server: the controller tells unchanged objects apart
//! by it (see porter-controller's identity module).
//!
//! Measured in a release build: in debug it re-runs itself with `--release`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use porter_api::source::Snapshot;
use porter_api::{Eip, EipSpec};
use porter_controller::reconcile::{Plan, Reconciler};
use porter_controller::testing::after_writes;

use super::emit;

const SUITE: &str = "controller";
const SERVICES: usize = 10_000;
const NODES: usize = 1_000;
const ENDPOINTS: usize = 3;
const CHANGES: usize = 21;

pub fn run() -> Result<()> {
    if cfg!(debug_assertions) {
        return super::in_release(SUITE);
    }
    let baseline_rss = peak_rss_mib()?;
    let mut snap = cluster();
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    let mut reconciler = Reconciler::default();
    reconciler.set_leading(true);
    let started = Instant::now();
    let plan = reconciler.plan(&snap, &now);
    let full_sync = started.elapsed().as_secs_f64();
    check_full(&plan)?;
    snap = after_writes(snap, &plan);
    drop(plan);
    reconciler.plan(&snap, &now);

    let mut idle = Vec::new();
    let mut changed = Vec::new();
    let mut relabelled = Vec::new();
    for n in 0..CHANGES {
        let started = Instant::now();
        let plan = reconciler.plan(&snap, &now);
        idle.push(started.elapsed().as_secs_f64() * 1e3);
        if !plan.ingress.is_empty() || plan.paths.len() != SERVICES {
            bail!("a pass without change changed something");
        }
        // The controller drops each plan once applied; one kept would make
        // the next route change copy the table.
        drop(plan);

        let index = n * 97 % SERVICES;
        let moved_to = format!("node-{}", (index * 7 + 500) % NODES);
        let started = Instant::now();
        let mut next = (*snap).clone();
        let mut slice = (*next.endpoint_slices[index]).clone();
        if let Some(ep) = slice.endpoints.as_mut().and_then(|e| e.first_mut()) {
            ep.node_name = Some(moved_to.clone());
        }
        slice.metadata.resource_version = next_version();
        next.endpoint_slices[index] = Arc::new(slice);
        let plan = reconciler.plan(&next, &now);
        changed.push(started.elapsed().as_secs_f64() * 1e3);
        let hops = plan.paths.values().map(|h| h.len()).sum::<usize>();
        if hops == 0 || !plan.events.iter().any(|e| e.reason == "Announced") {
            bail!("the moved endpoint did not change the announcement");
        }
        snap = Arc::new(next);
        drop(plan);

        // One Service changes (a label): the address plan runs again, and
        // rebuilds the book from every Service's published status.
        let started = Instant::now();
        let mut next = (*snap).clone();
        let mut svc = (*next.services[index]).clone();
        svc.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("bench".into(), n.to_string());
        svc.metadata.resource_version = next_version();
        next.services[index] = Arc::new(svc);
        let plan = reconciler.plan(&next, &now);
        relabelled.push(started.elapsed().as_secs_f64() * 1e3);
        if !plan.ingress.is_empty() || plan.allocated != 0 {
            bail!("a relabelled Service changed an address");
        }
        drop(plan);
        snap = Arc::new(next);
    }

    emit(SUITE, "10k_services", "full_sync_seconds", full_sync, "s");
    emit(
        SUITE,
        "10k_services",
        "single_change_ms",
        median(&mut changed),
        "ms",
    );
    emit(
        SUITE,
        "baseline_no_change",
        "single_change_ms",
        median(&mut idle),
        "ms",
    );
    emit(
        SUITE,
        "10k_services",
        "service_change_ms",
        median(&mut relabelled),
        "ms",
    );
    emit(
        SUITE,
        "10k_services",
        "peak_rss_mib",
        peak_rss_mib()?,
        "MiB",
    );
    emit(SUITE, "baseline_empty", "peak_rss_mib", baseline_rss, "MiB");
    super::controller_failover::run()
}

fn check_full(plan: &Plan) -> Result<()> {
    if plan.ingress.len() != SERVICES || plan.paths.len() != SERVICES {
        bail!(
            "full sync served {} Services and announced {} EIPs, expected {SERVICES}",
            plan.ingress.len(),
            plan.paths.len()
        );
    }
    Ok(())
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    Ok(kb / 1024.0)
}

/// The API server's revision counter: each write gives the object it
/// wrote the next `resourceVersion`, as a real cluster's objects carry.
static REVISION: AtomicU64 = AtomicU64::new(1);

fn next_version() -> Option<String> {
    Some(REVISION.fetch_add(1, Ordering::Relaxed).to_string())
}

fn meta(name: String, namespace: Option<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        resource_version: next_version(),
        ..Default::default()
    }
}

fn cluster() -> Arc<Snapshot> {
    let nodes = (0..NODES)
        .map(|n| {
            Arc::new(Node {
                metadata: meta(format!("node-{n}"), None),
                spec: None,
                status: Some(NodeStatus {
                    conditions: Some(vec![NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]),
                    addresses: Some(vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: format!("10.1.{}.{}", n / 250, n % 250 + 1),
                    }]),
                    ..Default::default()
                }),
            })
        })
        .collect();
    let services = (0..SERVICES)
        .map(|s| {
            Arc::new(Service {
                metadata: ObjectMeta {
                    annotations: Some(
                        [(
                            "lb.kubesphere.io/v1alpha1".to_string(),
                            "porter".to_string(),
                        )]
                        .into(),
                    ),
                    ..meta(format!("svc-{s}"), Some(format!("ns-{}", s % 100)))
                },
                spec: Some(ServiceSpec {
                    type_: Some("LoadBalancer".into()),
                    ports: Some(vec![ServicePort {
                        port: 80,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            })
        })
        .collect();
    let endpoint_slices = (0..SERVICES)
        .map(|s| {
            Arc::new(EndpointSlice {
                metadata: ObjectMeta {
                    labels: Some(
                        [("kubernetes.io/service-name".to_string(), format!("svc-{s}"))].into(),
                    ),
                    ..meta(format!("svc-{s}-x"), Some(format!("ns-{}", s % 100)))
                },
                address_type: "IPv4".into(),
                endpoints: Some(
                    (0..ENDPOINTS)
                        .map(|e| Endpoint {
                            addresses: vec![format!("10.244.{}.{}", s % 250, e + 1)],
                            node_name: Some(format!("node-{}", (s * 13 + e * 331) % NODES)),
                            conditions: Some(EndpointConditions {
                                ready: Some(true),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ports: None,
            })
        })
        .collect();
    let eip = Eip {
        metadata: meta("pool".into(), None),
        spec: EipSpec {
            address: "172.16.0.0/16".into(),
            ..Default::default()
        },
        status: None,
    };
    Arc::new(Snapshot {
        services,
        endpoint_slices,
        nodes,
        eips: vec![Arc::new(eip)],
        ..Default::default()
    })
}

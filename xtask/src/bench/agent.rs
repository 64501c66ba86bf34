//! The agent suite: how long the agent takes to bring the pinned maps to the
//! cluster state, through the same path `porter-agent run` takes (desired
//! state from a snapshot, diff against the maps, upserts with the Maglev
//! swap).
//!
//! - `full_program_seconds`: 1,000 services x 10 local backends, from empty
//!   maps.
//! - `single_change_ms`: one endpoint of one service replaced (median of
//!   several changes).
//! - baseline `noop_sync_ms`, same run: a pass where nothing changed (desired
//!   state and diff only, no map write), so the map writes stand out.
//!
//! Run from a release build (a debug `cargo xtask` re-runs itself so).
//! Two cases: 1,000 services with M = 1009 (the smallest prime Maglev allows
//! for 10 backends, which keeps 1,000 services' tables at 8 MB), and the
//! agent's defaults, 64 services with M = 65,537, whose tables are 65x
//! larger to build and write.
use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use porter_agent::{Dataplane, DataplaneConfig, PinLayout, desired, sync};
use porter_api::service::ingress_status;
use porter_api::{
    annotations::{LB, SERVICE_NAME_LABEL},
    source::Snapshot,
};
use porter_tests::{lab::Lab, privilege};

use super::emit;

const SUITE: &str = "agent";
const NODE: &str = "n1";
const BACKENDS: u32 = 10;
const CHANGES: usize = 21;

pub fn run() -> Result<()> {
    if cfg!(debug_assertions) {
        // The sync path is CPU-bound userspace code: a debug build would
        // measure unoptimised code generation, not the agent.
        return super::in_release(SUITE);
    }
    if !privilege::is_root() {
        bail!("the agent benchmark loads BPF maps on a private bpffs: run it as root");
    }
    measure("1000x10_m1009", 1000, 1009)?;
    measure(
        "64x10_m65537",
        porter_common::limits::DEFAULT_MAX_SERVICES,
        porter_agent::DEFAULT_MAGLEV_SIZE,
    )
}

fn measure(case: &str, services: u32, maglev_size: u32) -> Result<()> {
    let mut lab = Lab::new("bagent")?;
    let bpffs = lab.bpffs()?;
    let config = DataplaneConfig {
        maglev_size,
        max_services: services,
        ..DataplaneConfig::default()
    };
    let mut dataplane = Dataplane::open(&PinLayout::new(&bpffs), config)?;
    let mut snapshot = cluster(services);
    let mut cache = desired::Cache::new(NODE);

    let started = Instant::now();
    let (written, _) = sync_once(&mut dataplane, &mut cache, &snapshot)?;
    let full = started.elapsed();
    if written != services as usize {
        bail!("programmed {written} services, expected {services}");
    }
    emit(SUITE, case, "full_program_seconds", full.as_secs_f64(), "s");

    let mut noop = Vec::new();
    let mut change = Vec::new();
    for round in 0..CHANGES {
        let started = Instant::now();
        let (written, _) = sync_once(&mut dataplane, &mut cache, &snapshot)?;
        noop.push(started.elapsed());
        if written != 0 {
            bail!("a pass without changes rewrote {written} services");
        }
        // One endpoint of one service moves to a new pod IP.
        let service = round as u32 % services;
        replace_endpoint(&mut snapshot, service, round as u32);
        let started = Instant::now();
        let (written, _) = sync_once(&mut dataplane, &mut cache, &snapshot)?;
        change.push(started.elapsed());
        if written != 1 {
            bail!("one endpoint change rewrote {written} services");
        }
    }
    emit(
        SUITE,
        case,
        "single_change_ms",
        median_ms(&mut change),
        "ms",
    );
    emit(SUITE, case, "noop_sync_ms", median_ms(&mut noop), "ms");
    Ok(())
}

fn sync_once(
    dataplane: &mut Dataplane,
    cache: &mut desired::Cache,
    snapshot: &Snapshot,
) -> Result<(usize, usize)> {
    let wanted = cache.desired(snapshot);
    if !wanted.problems.is_empty() {
        bail!("benchmark cluster has problems: {:?}", wanted.problems);
    }
    Ok(sync::apply(dataplane, &wanted.services)?)
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `services` Porter Services, each on its own EIP (198.18.0.0/15) port 80,
/// with one EndpointSlice of 10 ready endpoints on this node.
fn cluster(services: u32) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for i in 0..services {
        let name = format!("svc-{i}");
        let eip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i);
        snapshot.services.push(Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                annotations: Some([(LB.key.to_string(), "porter".to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(ingress_status(&[eip.into()])),
        }));
        let endpoints = (0..BACKENDS).map(|j| pod_ip(i * BACKENDS + j)).collect();
        snapshot
            .endpoint_slices
            .push(Arc::new(slice(&name, endpoints)));
    }
    snapshot
}

fn pod_ip(n: u32) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + n).to_string()
}

fn slice(service: &str, addresses: Vec<String>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-x")),
            namespace: Some("bench".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
        endpoints: Some(
            addresses
                .into_iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip],
                    node_name: Some(NODE.into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// Replaces the first endpoint of service `index` by a pod IP no service uses.
fn replace_endpoint(snapshot: &mut Snapshot, index: u32, round: u32) {
    let Some(slot) = snapshot.endpoint_slices.get_mut(index as usize) else {
        return;
    };
    let mut slice = slot.as_ref().clone();
    if let Some(first) = slice
        .endpoints
        .as_mut()
        .and_then(|endpoints| endpoints.first_mut())
    {
        first.addresses = vec![Ipv4Addr::new(10, 200, (round >> 8) as u8, round as u8).to_string()];
    }
    *slot = Arc::new(slice);
}

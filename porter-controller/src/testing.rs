//! Fixtures and fakes shared by the unit tests: one typed builder per kind
//! (Services come from `porter_api::testing`), which a test adjusts, and
//! [`after_writes`], the API server's side of a plan (also used by the
//! controller benchmark, through the `testing` feature).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, Service};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use porter_api::annotations::SERVICE_FINALIZER;
use porter_api::crd::PeerConf;
use porter_api::service::ingress_status;
use porter_api::source::{Event, Snapshot, StatusWriter, WriteError};
use porter_api::{BgpConf, BgpConfSpec, BgpPeer, BgpPeerSpec, Eip, EipSpec, EipStatus, ObjectKey};

use crate::reconcile::Plan;

/// What the API server holds after `plan`'s writes: each Service with the
/// addresses and finalizer the plan writes (a deleting Service goes once
/// its last finalizer does), each Eip with its new status, every written
/// object with a new `resourceVersion`. Objects change in place where
/// nothing else holds them, as a reflector replaces them one by one (the
/// controller benchmark's clusters are large).
pub fn after_writes(snap: Arc<Snapshot>, plan: &Plan) -> Arc<Snapshot> {
    let mut snap = Arc::unwrap_or_clone(snap);
    let ingress: HashMap<&ObjectKey, &Vec<IpAddr>> =
        plan.ingress.iter().map(|(key, ips)| (key, ips)).collect();
    let finalizers: HashMap<&ObjectKey, bool> = plan
        .finalizers
        .iter()
        .map(|(key, add)| (key, *add))
        .collect();
    snap.services.retain_mut(|s| {
        let key = ObjectKey::of(&s.metadata);
        let (ips, add) = (ingress.get(&key), finalizers.get(&key));
        if ips.is_some() || add.is_some() {
            let s = Arc::make_mut(s);
            if let Some(ips) = ips {
                s.status = Some(ingress_status(ips));
            }
            if let Some(add) = add {
                let held = s.metadata.finalizers.get_or_insert_with(Vec::new);
                held.retain(|f| f != SERVICE_FINALIZER);
                if *add {
                    held.push(SERVICE_FINALIZER.into());
                }
            }
            bump(&mut s.metadata);
        }
        let finalized = s.metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
        !(crate::service::deleting(s) && finalized)
    });
    for (name, status) in &plan.eip_status {
        if let Some(eip) = snap
            .eips
            .iter_mut()
            .find(|e| e.metadata.name.as_ref() == Some(name))
        {
            let eip = Arc::make_mut(eip);
            eip.status = Some((**status).clone());
            bump(&mut eip.metadata);
        }
    }
    Arc::new(snap)
}

/// A new `resourceVersion`, as the API server gives every write: only its
/// difference from the old one matters to a reader.
fn bump(meta: &mut ObjectMeta) {
    let old: u64 = meta
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    meta.resource_version = Some((old + 1).to_string());
}

/// `svc` as a leader leaves it once it has published `address` for it:
/// with Porter's finalizer and the address in its status.
pub fn published(mut svc: Service, address: &str) -> Service {
    svc.metadata.finalizers = Some(vec![SERVICE_FINALIZER.into()]);
    svc.status = Some(ingress_status(&[address.parse().expect("an IP address")]));
    svc
}

/// A node with the `Ready` condition set to `ready`, these InternalIPs and an
/// ExternalIP that must never be used as a next hop.
pub fn node(name: &str, ready: &str, addrs: &[&str]) -> Node {
    let mut node = porter_api::testing::node_with_ips(name, addrs);
    let status = node.status.get_or_insert_with(NodeStatus::default);
    status.conditions = Some(vec![NodeCondition {
        type_: "Ready".into(),
        status: ready.into(),
        ..Default::default()
    }]);
    status
        .addresses
        .get_or_insert_with(Vec::new)
        .push(NodeAddress {
            type_: "ExternalIP".into(),
            address: "203.0.113.1".into(),
        });
    node
}

/// `eps`: (node, ready) per endpoint; `None` leaves `ready` unset.
pub fn slice(namespace: &str, service: &str, eps: &[(&str, Option<bool>)]) -> EndpointSlice {
    let endpoints = eps
        .iter()
        .map(|(node, ready)| {
            let conditions = EndpointConditions {
                ready: *ready,
                ..Default::default()
            };
            porter_api::testing::endpoint("10.244.0.5", node, conditions)
        })
        .collect();
    let mut slice = porter_api::testing::endpoint_slice(
        (namespace, &format!("{service}-abc")),
        service,
        "IPv4",
        Vec::new(),
        endpoints,
    );
    slice.ports = None;
    slice
}

/// Labels (or a selector's `matchLabels`) from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pool (Eip) `name` over `address`, no BGP policy, no status.
pub fn eip(name: &str, address: &str) -> Eip {
    Eip {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: EipSpec {
            address: address.into(),
            ..Default::default()
        },
        status: None,
    }
}

/// The BgpConf `name`: AS 65000, with this router id.
pub fn bgp_conf(name: &str, router_id: Option<&str>) -> BgpConf {
    BgpConf {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: BgpConfSpec {
            as_number: 65000,
            router_id: router_id.map(str::to_string),
            ..Default::default()
        },
    }
}

/// The BgpPeer `name`: AS 65001 at `address`, the rest of its spec as `f`
/// leaves it, no status.
pub fn bgp_peer(name: &str, address: &str, f: impl FnOnce(&mut BgpPeerSpec)) -> BgpPeer {
    let mut spec = BgpPeerSpec {
        conf: PeerConf {
            peer_as: 65001,
            neighbor_address: address.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    f(&mut spec);
    BgpPeer {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// A [`StatusWriter`] that records each call as a line of text, in order;
/// clones share the record (one can watch a loop that owns another).
#[derive(Clone, Default)]
pub struct RecordingWriter(Arc<Mutex<Vec<String>>>);

impl RecordingWriter {
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, line: String) {
        if let Ok(mut calls) = self.0.lock() {
            calls.push(line);
        }
    }
}

impl StatusWriter for RecordingWriter {
    async fn service_ingress(&self, s: &ObjectKey, i: &[IpAddr]) -> Result<(), WriteError> {
        self.record(format!("ingress {s} {i:?}"));
        Ok(())
    }

    async fn service_finalizer(&self, s: &ObjectKey, p: bool) -> Result<(), WriteError> {
        self.record(format!("finalizer {s} {p}"));
        Ok(())
    }

    async fn eip_status(&self, e: &str, _: &EipStatus) -> Result<(), WriteError> {
        self.record(format!("eip {e}"));
        Ok(())
    }

    async fn event(&self, e: &Event) -> Result<(), WriteError> {
        self.record(format!("event {}", e.reason));
        Ok(())
    }

    async fn node_condition(&self, node: &str, c: &NodeCondition) -> Result<(), WriteError> {
        let reason = c.reason.as_deref().unwrap_or("-");
        self.record(format!("node {node} {} {} {reason}", c.type_, c.status));
        Ok(())
    }

    async fn bgp_peer_status(
        &self,
        peer: &str,
        key: &str,
        status: Option<&porter_api::BgpPeerNodeStatus>,
    ) -> Result<(), WriteError> {
        let state = status.map_or("-", |s| s.state.as_str());
        self.record(format!("bgppeer {peer} {key} {state}"));
        Ok(())
    }
}

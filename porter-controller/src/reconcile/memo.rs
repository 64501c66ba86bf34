//! The reconciler's memory between passes: what the last pass read (by
//! identity) and the address plan it made, so that a pass whose inputs did
//! not change replays that plan instead of computing it again. The plan
//! itself is a pure function of the snapshot; this is only its cache (the
//! reconcile tests compare replayed and fresh plans).
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use porter_api::source::Snapshot;
use porter_api::{BgpConf, BgpPeer, Eip, EipStatus, ObjectKey};

use super::{Plan, allocated_event};
use crate::identity::{Seen, remember, same_objects};

/// The inputs of the last pass, by identity (see [`crate::identity`]).
#[derive(Debug, Default)]
pub(super) struct LastInputs {
    services: Vec<Seen<Service>>,
    eips: Vec<Seen<Eip>>,
    namespaces: Vec<Seen<Namespace>>,
    confs: Vec<Seen<BgpConf>>,
    peers: Vec<Seen<BgpPeer>>,
}

/// Which inputs changed since the last pass.
#[derive(Debug, Clone, Copy)]
pub(super) struct Changed {
    services: bool,
    eips: bool,
    namespaces: bool,
    confs: bool,
    peers: bool,
}

impl Changed {
    /// What the address plan reads.
    pub(super) fn addresses(self) -> bool {
        self.services || self.eips || self.namespaces
    }

    /// What the BGP policy reads.
    pub(super) fn policy(self) -> bool {
        self.services || self.eips || self.confs || self.peers
    }
}

impl LastInputs {
    /// Compares `snap` with the last pass's inputs and remembers it in
    /// their place. Each list is compared once per pass, for both the
    /// address plan and the policy: a comparison reads every object.
    pub(super) fn update(&mut self, snap: &Snapshot) -> Changed {
        fn track<T: kube::Resource>(last: &mut Vec<Seen<T>>, now: &[Arc<T>]) -> bool {
            let changed = !same_objects(last, now);
            if changed {
                *last = remember(now);
            }
            changed
        }
        Changed {
            services: track(&mut self.services, &snap.services),
            eips: track(&mut self.eips, &snap.eips),
            namespaces: track(&mut self.namespaces, &snap.namespaces),
            confs: track(&mut self.confs, &snap.bgp_confs),
            peers: track(&mut self.peers, &snap.bgp_peers),
        }
    }
}

/// The part of an address plan a rerun on the same inputs would produce
/// again: the writes, and the IPAllocated events that come with published
/// addresses. AllocationFailed is reported once per reason, so a rerun has
/// none, and nothing new was allocated.
#[derive(Debug)]
pub(super) struct Memo {
    ingress: Arc<[(ObjectKey, Vec<IpAddr>)]>,
    finalizers: Arc<[(ObjectKey, bool)]>,
    eip_status: Vec<(String, Arc<EipStatus>)>,
}

impl Memo {
    pub(super) fn of(plan: &Plan) -> Self {
        Self {
            ingress: Arc::clone(&plan.ingress),
            finalizers: Arc::clone(&plan.finalizers),
            eip_status: plan.eip_status.clone(),
        }
    }

    pub(super) fn replay(&self) -> Plan {
        Plan {
            ingress: Arc::clone(&self.ingress),
            finalizers: Arc::clone(&self.finalizers),
            eip_status: self.eip_status.clone(),
            events: self
                .ingress
                .iter()
                .filter_map(|(key, ips)| allocated_event(key, ips))
                .collect(),
            ..Plan::default()
        }
    }
}

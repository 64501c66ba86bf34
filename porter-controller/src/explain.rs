//! `porter-controller explain <namespace>/<service>`: why each address of a
//! Service is, or is not, announced through each node and sent to each
//! peer. Pure: it runs the controller's own pass ([`Reconciler::plan`], as a
//! follower, which writes and allocates nothing) over a snapshot, and reads
//! the verdicts the paths were decided with ([`Reconciler::verdicts`]), so
//! what it says cannot drift from what the controller does. What only the
//! leader knows comes from what it publishes: the liveness check's state
//! from the `PorterNodeReachable` Node condition, the BGP sessions from
//! `BgpPeer.status`, the Layer 2 leader from the agents' leases.
//! Rendering is in [`render`]; reading the cluster in [`cli`].

pub mod cli;
mod render;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::annotations::BGP_CONF_NAME;
use porter_api::bgp_policy::PeerSkip;
use porter_api::crd::CONTROLLER_STATUS_KEY;
use porter_api::node_reachability::{self, Reachability};
use porter_api::service::ingress_ips;
use porter_api::source::Snapshot;
use porter_api::{ObjectKey, SpeakerMode, node_dataplane};

use crate::announce::{Exclusion, Verdict};
use crate::ipam::PoolChoice;
use crate::reconcile::{Reconciler, join, namespace_labels};
use crate::service;

/// Everything `explain` says about one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub service: ObjectKey,
    pub standing: Standing,
    pub bgp: BgpMode,
}

/// Who speaks BGP for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BgpMode {
    /// No BgpConf, BgpPeer or seed ConfigMap: nothing is announced over BGP.
    Off,
    /// `speakerMode: controller`: the leader announces every node's paths.
    Controller,
    /// `speakerMode: node`: each agent announces its own node's paths.
    Node,
}

/// Where the Service stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    NotFound,
    /// Not `type: LoadBalancer`, not opted in, or another class.
    NotServed,
    /// Deleted; its finalizer holds it until its address is released.
    Deleting,
    /// No address: what an allocation would say now (the leader's
    /// `AllocationFailed` Event says the same), and what its status shows.
    NoAddress {
        why: String,
        published: Vec<IpAddr>,
    },
    /// `externalTrafficPolicy: Local`, and each address.
    Served {
        local: bool,
        addresses: Vec<Address>,
    },
}

/// One address of the Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub ip: IpAddr,
    /// The pool and why that pool.
    pub pool: Option<(String, PoolChoice)>,
    pub layer2: bool,
    /// The other Services using the address.
    pub shared_with: Vec<ObjectKey>,
    /// Every node, by name.
    pub nodes: Vec<NodeLine>,
    /// Layer 2: the node holding the address's lease.
    pub layer2_leader: Option<String>,
    pub peers: Vec<PeerLine>,
}

/// One node's part in an address's announcement.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLine {
    pub node: String,
    pub verdict: Verdict,
    /// What the leader's liveness check last published for the node.
    pub liveness: Option<Reachability>,
    /// The agent's reason and message when its data plane is frozen.
    pub dataplane: Option<String>,
}

/// One BgpPeer and the address's paths.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLine {
    pub name: String,
    pub address: IpAddr,
    /// Each speaker's session with the peer (`controller`, or a node in
    /// node mode), from `BgpPeer.status.nodes`.
    pub sessions: Vec<Session>,
    /// Each announced node, and whether its path went to the peer.
    pub paths: Vec<(String, Sent)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub speaker: String,
    pub state: String,
    pub paths_announced: u64,
    pub last_error: Option<String>,
}

impl Session {
    fn established(&self) -> bool {
        self.state == "Established"
    }
}

/// Whether one node's path of the address was sent to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The speaker's session is up: the peer has it.
    Yes,
    /// A selector keeps it from the peer.
    Skipped(PeerSkip),
    /// Meant for the peer, but the speaker's session is not Established
    /// (its state, or `None` when the speaker reports no session at all).
    SessionDown(Option<String>),
}

/// What `explain` says about `key` in `snap`.
pub fn explain(snap: &Snapshot, key: &ObjectKey, now: &Time) -> Explanation {
    let bgp = bgp_mode(snap);
    let standing = match snap
        .services
        .iter()
        .find(|s| ObjectKey::of(&s.metadata) == *key)
    {
        None => Standing::NotFound,
        Some(svc) if !service::opted_in(svc) => Standing::NotServed,
        Some(svc) if service::deleting(svc) => Standing::Deleting,
        Some(svc) => served(snap, svc, key, now, bgp),
    };
    Explanation {
        service: key.clone(),
        standing,
        bgp,
    }
}

fn bgp_mode(snap: &Snapshot) -> BgpMode {
    let conf = snap
        .bgp_confs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(BGP_CONF_NAME));
    match conf {
        Some(conf) if conf.spec.speaker_mode() == SpeakerMode::Node => BgpMode::Node,
        Some(_) => BgpMode::Controller,
        None if !snap.bgp_peers.is_empty() || !snap.config_maps.is_empty() => BgpMode::Controller,
        None => BgpMode::Off,
    }
}

fn served(snap: &Snapshot, svc: &Service, key: &ObjectKey, now: &Time, bgp: BgpMode) -> Standing {
    // The controller's own pass, as a follower: its book is what is
    // published, and the liveness check's withdrawals are the leader's.
    let mut reconciler = Reconciler::default();
    reconciler.set_withdrawn(
        snap.nodes
            .iter()
            .filter(|n| node_reachability::withdrawn(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
    );
    reconciler.plan(snap, now);
    let request = service::request(svc);
    let ipam = reconciler.ipam();
    let Some(ips) = ipam.addresses_of(key).filter(|ips| !ips.is_empty()) else {
        // What the leader's allocation would say, on a copy of its book.
        let why = match ipam.clone().allocate(&request, &namespace_labels(snap)) {
            Err(e) => e.to_string(),
            Ok(ips) => format!(
                "{} is free for it: the leader has not handed it out yet (is a controller leading?)",
                join(&ips)
            ),
        };
        return Standing::NoAddress {
            why,
            published: ingress_ips(svc),
        };
    };
    let addresses = ips
        .iter()
        .map(|ip| {
            let pool = ipam.pool_choice(&request, *ip);
            let layer2 = pool.as_ref().is_some_and(|(p, _)| p.layer2);
            let verdicts = reconciler.verdicts(*ip);
            let nodes: Vec<NodeLine> = verdicts
                .into_iter()
                .map(|(node, verdict)| node_line(snap, node, verdict))
                .collect();
            Address {
                ip: *ip,
                pool: pool.map(|(p, choice)| (p.name.clone(), choice)),
                layer2,
                shared_with: ipam
                    .used_in(ipam.pool_of(*ip).unwrap_or_default())
                    .get(ip)
                    .into_iter()
                    .flatten()
                    .filter(|k| **k != key)
                    .map(|k| (*k).clone())
                    .collect(),
                layer2_leader: layer2
                    .then(|| snap.layer2_holders.get(ip).cloned())
                    .flatten(),
                peers: peer_lines(snap, &nodes, bgp),
                nodes,
            }
        })
        .collect();
    Standing::Served {
        local: request.sharing_terms.local,
        addresses,
    }
}

fn node_line(snap: &Snapshot, node: String, verdict: Verdict) -> NodeLine {
    let object = snap
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&node));
    let dataplane = match verdict {
        Verdict::Excluded(Exclusion::DataplaneFrozen) => {
            object.and_then(|n| node_dataplane::published(n)).map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
            })
        }
        _ => None,
    };
    NodeLine {
        liveness: object.and_then(|n| node_reachability::published(n)),
        node,
        verdict,
        dataplane,
    }
}

/// Each BgpPeer, its sessions, and whether each announced node's path went
/// to it.
fn peer_lines(snap: &Snapshot, nodes: &[NodeLine], bgp: BgpMode) -> Vec<PeerLine> {
    if bgp == BgpMode::Off {
        return Vec::new();
    }
    snap.bgp_peers
        .iter()
        .filter_map(|peer| {
            let address: IpAddr = peer.spec.conf.neighbor_address.trim().parse().ok()?;
            let sessions: Vec<Session> = peer
                .status
                .iter()
                .flat_map(|s| &s.nodes)
                .map(|entry| Session {
                    speaker: entry.node.clone(),
                    state: entry.state.clone(),
                    paths_announced: entry.paths_announced,
                    last_error: entry.last_error.clone(),
                })
                .collect();
            let paths = nodes
                .iter()
                .filter_map(|line| {
                    let Verdict::Announced { peers, .. } = &line.verdict else {
                        return None;
                    };
                    let takes = peers.iter().find(|(a, _)| *a == address)?.1;
                    let speaker = match bgp {
                        BgpMode::Node => line.node.as_str(),
                        _ => CONTROLLER_STATUS_KEY,
                    };
                    let session = sessions.iter().find(|s| s.speaker == speaker);
                    let sent = match (takes, session) {
                        (Err(skip), _) => Sent::Skipped(skip),
                        (Ok(()), Some(s)) if s.established() => Sent::Yes,
                        (Ok(()), session) => Sent::SessionDown(session.map(|s| s.state.clone())),
                    };
                    Some((line.node.clone(), sent))
                })
                .collect();
            Some(PeerLine {
                name: peer.metadata.name.clone().unwrap_or_default(),
                address,
                sessions,
                paths,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;

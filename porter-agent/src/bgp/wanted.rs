//! What this node's speaker should do in node mode, from the cluster state.
//! Pure: a [`Snapshot`], the node's name and the services its data plane
//! serves in; the speaker, its peers, its paths and its status entries out.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use porter_api::{
    BgpConf, BgpPeerNodeStatus, ObjectKey, SpeakerMode,
    annotations::BGP_CONF_NAME,
    bgp_config::{
        Note, SpeakerConfig, bfd_session, families_not_carried, peer_from_crd, selects_node,
        set_password, speaker_from_conf,
    },
    bgp_policy::{ClusterPolicy, PeerScope, PoolPolicy, ServicePolicy, merge, only_peers},
    peer_auth::SecretScope,
    service::{ingress_ips, opted_in},
    source::Snapshot,
};
use porter_bgp::{Family, NEXT_HOP_SELF_V4, NEXT_HOP_SELF_V6, PathTable};

use crate::{LocalService, interfaces::node_internal_ips};

/// One BgpPeer that selects this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedPeer {
    /// The BgpPeer's name, which its status is written under.
    pub name: String,
    /// The session, with the peer's `spec.policy`.
    pub config: porter_bgp::PeerConfig,
    /// What decides which of this node's paths the peer is sent.
    pub scope: PeerScope,
    /// The BFD session with the neighbour (`spec.bfd`), if any.
    pub bfd: Option<porter_bfd::PeerConfig>,
}

/// The node-mode BGP settings of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// `None`: the cluster is not in node mode (or BGP is not configured,
    /// or this node cannot speak), so this node runs no speaker.
    pub speaker: Option<SpeakerConfig>,
    /// The BgpPeers whose `nodeSelector` matches this node, by address.
    pub peers: BTreeMap<IpAddr, SelectedPeer>,
    /// The Node object's labels (pools' `nodeSelector` match them).
    pub labels: BTreeMap<String, String>,
    /// Peers whose password cannot be read now: a running session keeps
    /// the key it has, and none is started without one.
    pub held: BTreeSet<IpAddr>,
    pub notes: Vec<Note>,
}

/// The speaker and peers of `node`: the `default` BgpConf (router ID
/// defaulting to the node's IPv4 InternalIP) when its `speakerMode` is
/// `node`, and every valid BgpPeer whose `nodeSelector` matches the labels
/// of the node's Node object.
pub fn node_bgp(snapshot: &Snapshot, node: &str, secrets: &SecretScope) -> NodeBgp {
    let mut out = NodeBgp::default();
    let Some(conf) = default_conf(snapshot) else {
        return out;
    };
    if conf.spec.speaker_mode() != SpeakerMode::Node {
        return out;
    }
    let Some(node_object) = snapshot
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
    else {
        out.notes.push(Note::warning(format!(
            "speakerMode is node, but there is no Node object named {node}, so its BgpPeers \
             cannot be selected; check --node-name"
        )));
        return out;
    };
    let addresses = node_internal_ips(snapshot, node);
    let router_id = addresses.iter().find_map(|ip| match *ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    match speaker_from_conf(&conf.spec, router_id) {
        Ok((speaker, notes)) => {
            out.speaker = Some(speaker);
            out.notes.extend(notes);
        }
        Err(note) => {
            out.notes.push(Note {
                message: format!(
                    "{} (in node mode an unset routerId defaults to the node's IPv4 InternalIP, \
                     and node {node} has none)",
                    note.message
                ),
                ..note
            });
            return out;
        }
    }
    out.labels = node_object.metadata.labels.clone().unwrap_or_default();
    for peer in &snapshot.bgp_peers {
        if !selects_node(peer, &out.labels) {
            continue;
        }
        let name = peer.metadata.name.clone().unwrap_or_default();
        match peer_from_crd(peer) {
            Ok((mut config, notes)) => {
                out.notes.extend(notes.into_iter().map(|n| Note {
                    message: format!("BgpPeer `{name}`: {}", n.message),
                    ..n
                }));
                if !set_password(
                    &mut config,
                    peer,
                    &snapshot.secrets,
                    secrets,
                    &mut out.notes,
                ) {
                    out.held.insert(config.address);
                    continue;
                }
                config.next_hop_self = addresses.clone();
                out.notes
                    .extend(other_family_unannounced(node, &name, &config, &addresses));
                if let Some(first) = out.peers.get(&config.address) {
                    out.notes.push(Note::warning(format!(
                        "BgpPeer `{name}`: neighbour {} is also BgpPeer `{}`; this one is ignored",
                        config.address, first.name
                    )));
                    continue;
                }
                let Some(scope) = PeerScope::of(peer) else {
                    continue;
                };
                let bfd = bfd_session(&name, peer.spec.bfd.as_ref(), &config, &mut out.notes);
                out.peers.insert(
                    config.address,
                    SelectedPeer {
                        name,
                        config,
                        scope,
                        bfd,
                    },
                );
            }
            Err(why) => out
                .notes
                .push(Note::warning(format!("BgpPeer `{name}` is ignored: {why}"))),
        }
    }
    out
}

/// A warning for each family the peer's session carries besides its own
/// (`afiSafis` IPv6 unicast on an IPv4 neighbour, or the reverse) that the
/// node has no InternalIP of: EIPs of that family need the node's own
/// address of that family as next hop, so they are not announced to it.
fn other_family_unannounced(
    node: &str,
    peer: &str,
    config: &porter_bgp::PeerConfig,
    addresses: &[IpAddr],
) -> Vec<Note> {
    config
        .families
        .iter()
        .filter_map(|family| {
            let (ipv4, name, session) = match family {
                Family::Ipv4Unicast => (true, "IPv4", "IPv6"),
                Family::Ipv6Unicast => (false, "IPv6", "IPv4"),
            };
            let needed =
                config.address.is_ipv4() != ipv4 && !addresses.iter().any(|a| a.is_ipv4() == ipv4);
            needed.then(|| {
                Note::warning(format!(
                    "BgpPeer `{peer}`: {name} EIPs are not announced from node {node} to {}: \
                     over an {session} session their next hop is the node's own {name} \
                     address, and Node {node} has no {name} InternalIP; give the node one \
                     (kubelet --node-ip=<IPv4>,<IPv6>), or peer over {name}",
                    config.address
                ))
            })
        })
        .collect()
}

fn default_conf(snapshot: &Snapshot) -> Option<&BgpConf> {
    snapshot
        .bgp_confs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(BGP_CONF_NAME))
        .map(AsRef::as_ref)
}

/// This node's paths: one per EIP its data plane serves (`served`), with
/// this node as the next hop (each session's own address, or for an EIP of
/// the other family than the session the node's InternalIP of the EIP's
/// family, [`porter_bgp::PeerConfig::next_hop_self`]), and the
/// attributes of the shared policy function: the pool's and the Services'
/// communities and LOCAL_PREF, link bandwidth for the node's number of
/// ready local endpoints of the EIP, and only the peers the pool's
/// `peerSelector` picks. A pool whose `nodeSelector` leaves this node out
/// is not announced from it. Policy values that cannot be read are left
/// out here; the controller reports them (Eip condition, Service Events).
pub fn node_paths(snapshot: &Snapshot, node: &NodeBgp, served: &[LocalService]) -> PathTable {
    // Distinct endpoints per EIP, over every port and every Service that
    // shares it: a pod serving two ports is one endpoint.
    let mut endpoints: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    for spec in served {
        endpoints
            .entry(spec.addr.vip)
            .or_default()
            .extend(spec.backends.iter().map(|b| b.addr));
    }
    let cluster = ClusterPolicy::from_conf(default_conf(snapshot).map(|c| &c.spec));
    let scopes: Vec<PeerScope> = node.peers.values().map(|p| p.scope.clone()).collect();
    let mut paths = PathTable::new();
    for (vip, pods) in endpoints {
        let Ok(count) = u32::try_from(pods.len()) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        let (pool, _) =
            PoolPolicy::from_spec(pool_of(snapshot, vip).and_then(|e| e.spec.bgp.as_ref()));
        if !pool.node_selector.matches(&node.labels) {
            continue;
        }
        let services: Vec<(ObjectKey, ServicePolicy)> = snapshot
            .services
            .iter()
            .filter(|svc| opted_in(svc) && ingress_ips(svc).contains(&vip))
            .map(|svc| {
                let (policy, _) =
                    ServicePolicy::from_annotations(svc.metadata.annotations.as_ref());
                (ObjectKey::of(&svc.metadata), policy)
            })
            .collect();
        let (policy, _) = merge(&pool, services.iter().map(|(k, p)| (k, p)), &cluster);
        let mut attributes = policy.attributes(count);
        attributes.only_peers = only_peers(&pool, &scopes, &node.labels);
        let next_hop = if vip.is_ipv4() {
            NEXT_HOP_SELF_V4
        } else {
            NEXT_HOP_SELF_V6
        };
        paths.insert(
            IpNet::from(vip),
            [(next_hop, Arc::new(attributes))].into_iter().collect(),
        );
    }
    paths
}

/// The warnings of [`families_not_carried`] for this node's peers.
pub fn unnegotiated_families(node: &str, bgp: &NodeBgp, paths: &PathTable) -> Vec<Note> {
    let from = format!("node {node}");
    let each_path = || {
        paths
            .iter()
            .flat_map(|(prefix, hops)| hops.values().map(move |attributes| (prefix, &**attributes)))
    };
    bgp.peers
        .values()
        .flat_map(|peer| families_not_carried(&peer.name, &peer.config, &from, each_path()))
        .collect()
}

/// The pool an EIP was allocated from, as the controller records it in
/// `Eip.status.used` (the agent runs no IPAM).
fn pool_of(snapshot: &Snapshot, vip: IpAddr) -> Option<&porter_api::Eip> {
    let key = vip.to_string();
    snapshot
        .eips
        .iter()
        .find(|eip| {
            eip.status
                .as_ref()
                .is_some_and(|s| s.used.contains_key(&key))
        })
        .map(AsRef::as_ref)
}

/// This node's `BgpPeer.status.nodes` entry for a session, with the BFD
/// state text when BFD runs with the peer.
pub fn status_entry(
    node: &str,
    status: &porter_bgp::PeerStatus,
    bfd: Option<String>,
) -> BgpPeerNodeStatus {
    BgpPeerNodeStatus {
        node: node.to_owned(),
        state: format!("{:?}", status.state),
        paths_announced: status.paths_announced,
        last_error: status.last_error.clone(),
        bfd,
    }
}

//! What this node's speaker should do in node mode, from the cluster state.
//! Pure: a [`Snapshot`], the node's name and the services its data plane
//! serves in; the speaker, its peers, its paths and its status entries out.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use porter_api::{
    BgpPeerNodeStatus, SpeakerMode,
    annotations::BGP_CONF_NAME,
    bgp_config::{
        Note, PeerConfig, SpeakerConfig, peer_from_crd, selects_node, speaker_from_conf, warn,
    },
    source::Snapshot,
};
use porter_bgp::{LinkBandwidth, NEXT_HOP_SELF_V4, NEXT_HOP_SELF_V6, PathAttributes, PathTable};

use crate::{ServiceSpec, interfaces::node_internal_ips};

/// One BgpPeer that selects this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedPeer {
    /// The BgpPeer's name, which its status is written under.
    pub name: String,
    pub config: PeerConfig,
}

/// The node-mode BGP settings of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// `None`: the cluster is not in node mode (or BGP is not configured,
    /// or this node cannot speak), so this node runs no speaker.
    pub speaker: Option<SpeakerConfig>,
    /// The BgpPeers whose `nodeSelector` matches this node, by address.
    pub peers: BTreeMap<IpAddr, SelectedPeer>,
    pub notes: Vec<Note>,
}

/// The speaker and peers of `node`: the `default` BgpConf (router ID
/// defaulting to the node's IPv4 InternalIP) when its `speakerMode` is
/// `node`, and every valid BgpPeer whose `nodeSelector` matches the labels
/// of the node's Node object.
pub fn node_bgp(snapshot: &Snapshot, node: &str) -> NodeBgp {
    let mut out = NodeBgp::default();
    let Some(conf) = snapshot
        .bgp_confs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(BGP_CONF_NAME))
    else {
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
        out.notes.push(warn(format!(
            "speakerMode is node, but there is no Node object named {node}, so its BgpPeers \
             cannot be selected; check --node-name"
        )));
        return out;
    };
    let router_id = node_internal_ips(snapshot, node)
        .into_iter()
        .find_map(|ip| match ip {
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
    let labels = node_object.metadata.labels.clone().unwrap_or_default();
    for peer in &snapshot.bgp_peers {
        if !selects_node(peer, &labels) {
            continue;
        }
        let name = peer.metadata.name.clone().unwrap_or_default();
        match peer_from_crd(peer) {
            Ok((config, notes)) => {
                out.notes.extend(notes.into_iter().map(|n| Note {
                    message: format!("BgpPeer `{name}`: {}", n.message),
                    ..n
                }));
                if let Some(first) = out.peers.get(&config.address) {
                    out.notes.push(warn(format!(
                        "BgpPeer `{name}`: neighbour {} is also BgpPeer `{}`; this one is ignored",
                        config.address, first.name
                    )));
                    continue;
                }
                out.peers
                    .insert(config.address, SelectedPeer { name, config });
            }
            Err(why) => out
                .notes
                .push(warn(format!("BgpPeer `{name}` is ignored: {why}"))),
        }
    }
    out
}

/// This node's paths: one per EIP its data plane serves, with this node
/// as the next hop (each session's own address) and the node's number of
/// ready local endpoints of that EIP as its weight.
pub fn node_paths(served: &[ServiceSpec]) -> PathTable {
    // Distinct endpoints per EIP, over every port and every Service that
    // shares it: a pod serving two ports is one endpoint.
    let mut endpoints: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    for spec in served {
        endpoints
            .entry(spec.addr.vip)
            .or_default()
            .extend(spec.backends.iter().map(|b| b.addr));
    }
    endpoints
        .into_iter()
        .filter(|(_, pods)| !pods.is_empty())
        .map(|(vip, pods)| {
            let next_hop = if vip.is_ipv4() {
                NEXT_HOP_SELF_V4
            } else {
                NEXT_HOP_SELF_V6
            };
            let count = u32::try_from(pods.len()).unwrap_or(u32::MAX);
            (
                IpNet::from(vip),
                BTreeMap::from([(next_hop, path_attributes(count))]),
            )
        })
        .collect()
}

/// The attributes of one of this node's paths with `endpoints` ready local
/// endpoints: link bandwidth in proportion (transitive, so that spines can
/// weight racks too; a peer's policy may change the form or strip it).
fn path_attributes(endpoints: u32) -> PathAttributes {
    PathAttributes {
        link_bandwidth: Some(LinkBandwidth::for_endpoints(endpoints, true)),
        ..Default::default()
    }
}

/// This node's `BgpPeer.status.nodes` entry for a session.
pub fn status_entry(node: &str, status: &porter_bgp::PeerStatus) -> BgpPeerNodeStatus {
    BgpPeerNodeStatus {
        node: node.to_owned(),
        state: format!("{:?}", status.state),
        paths_announced: status.paths_announced,
        last_error: status.last_error.clone(),
    }
}

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use porter_api::{
    BgpPeerNodeStatus,
    bgp_config::{REASON_AUTH_UNAVAILABLE, status_changes},
    peer_auth::SecretScope,
    source::{Snapshot, dir::load_text},
};
use porter_bgp::{LinkBandwidth, NEXT_HOP_SELF_V4, NEXT_HOP_SELF_V6, PathAttributes, SessionState};

use super::{
    metrics::BgpMetrics,
    wanted::{node_bgp, node_paths, status_entry, unnegotiated_families},
};
use crate::{Backend, LocalService, Protocol, ServiceAddr, writer::ClusterWriter};

fn snapshot(yaml: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let problems = load_text(
        Path::new("/nonexistent"),
        Path::new("test.yaml"),
        yaml,
        &mut snap,
    );
    assert!(problems.is_empty(), "{problems:?}");
    snap
}

const NODES: &str = "
kind: Node
metadata: {name: n1, labels: {rack: '1', zone: a}}
status: {addresses: [{type: InternalIP, address: 172.30.1.11}, {type: InternalIP, address: 'fd00::11'}]}
---
kind: Node
metadata: {name: n2, labels: {rack: '2', zone: a}}
status: {addresses: [{type: InternalIP, address: 'fd00::12'}]}
";

const PEERS: &str = "
kind: BgpPeer
metadata: {name: leaf1}
spec: {conf: {peerAs: 65011, neighborAddress: 172.30.1.1}, nodeSelector: {rack: '1'}}
---
kind: BgpPeer
metadata: {name: leaf2}
spec: {conf: {peerAs: 65012, neighborAddress: 172.30.2.1}, nodeSelector: {rack: '2'}}
---
kind: BgpPeer
metadata: {name: zone-a}
spec: {conf: {peerAs: 65100, neighborAddress: 10.0.0.1}, nodeSelector: {zone: a, rack: '1'}}
---
kind: BgpPeer
metadata: {name: everyone}
spec: {conf: {peerAs: 65200, neighborAddress: 10.0.0.2}}
---
kind: BgpPeer
metadata: {name: broken}
spec: {conf: {peerAs: 65300, neighborAddress: not-an-ip}}
";

fn conf(mode: &str, router_id: Option<&str>) -> String {
    let router_id = router_id.map_or(String::new(), |id| format!(", routerId: {id}"));
    format!(
        "kind: BgpConf\nmetadata: {{name: default}}\nspec: {{as: 65000, speakerMode: {mode}{router_id}}}\n"
    )
}

fn names(snapshot: &Snapshot, node: &str) -> Vec<String> {
    node_bgp(snapshot, node, &SecretScope::default())
        .peers
        .values()
        .map(|p| p.name.clone())
        .collect()
}

#[test]
fn node_mode_selects_the_peers_whose_node_selector_matches_the_node() {
    let snap = snapshot(&format!("{NODES}---\n{PEERS}---\n{}", conf("node", None)));
    assert_eq!(names(&snap, "n1"), ["zone-a", "everyone", "leaf1"]);
    let with_id = snapshot(&format!(
        "{NODES}---\n{PEERS}---\n{}",
        conf("node", Some("10.9.9.9"))
    ));
    assert_eq!(names(&with_id, "n2"), ["everyone", "leaf2"]);
    let n1 = node_bgp(&snap, "n1", &SecretScope::default());
    let speaker = n1.speaker.expect("a speaker in node mode");
    assert_eq!(speaker.local_as, 65000);
    // The router ID defaults to the node's IPv4 InternalIP.
    assert_eq!(speaker.router_id.to_string(), "172.30.1.11");
    assert!(
        n1.notes
            .iter()
            .any(|n| n.warning && n.message.contains("BgpPeer `broken` is ignored")),
        "{:?}",
        n1.notes
    );
    let leaf1 = &n1.peers[&"172.30.1.1".parse::<IpAddr>().expect("ip")];
    assert_eq!(
        (leaf1.config.remote_as, leaf1.config.remote_port),
        (65011, 179)
    );
}

#[test]
fn bfd_follows_the_peer_spec_single_hop_or_multihop_and_bad_values_are_warned() {
    let peers = "kind: BgpPeer
metadata: {name: plain}
spec: {conf: {peerAs: 65011, neighborAddress: 172.30.1.1}}
---
kind: BgpPeer
metadata: {name: fast}
spec: {conf: {peerAs: 65012, neighborAddress: 172.30.1.2}, bfd: {receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}}
---
kind: BgpPeer
metadata: {name: far}
spec: {conf: {peerAs: 65013, neighborAddress: 10.9.0.1}, ebgpMultihop: {enabled: true}, bfd: {}}
---
kind: BgpPeer
metadata: {name: typo}
spec: {conf: {peerAs: 65014, neighborAddress: 172.30.1.4}, bfd: {detectMultiplier: 1}}
";
    let snap = snapshot(&format!("{NODES}---\n{peers}---\n{}", conf("node", None)));
    let n1 = node_bgp(&snap, "n1", &SecretScope::default());
    let bfd = |address: &str| n1.peers[&address.parse::<IpAddr>().expect("ip")].bfd;
    assert_eq!(bfd("172.30.1.1"), None);
    let fast = bfd("172.30.1.2").expect("BFD for fast");
    assert!(!fast.key.multihop);
    assert_eq!(
        fast.timers.desired_min_tx,
        std::time::Duration::from_millis(100)
    );
    let far = bfd("10.9.0.1").expect("BFD for far");
    assert!(far.key.multihop, "eBGP multihop peers get multihop BFD");
    assert_eq!(far.timers, porter_bfd::Timers::default());
    // A bad value keeps the BGP session and says why BFD does not run.
    assert_eq!(bfd("172.30.1.4"), None);
    assert!(
        n1.notes.iter().any(|n| n.warning
            && n.message
                .contains("BgpPeer `typo`: bfd.detectMultiplier 1 is out of range")),
        "{:?}",
        n1.notes
    );
}

#[test]
fn a_node_without_ipv4_needs_a_router_id_and_an_unknown_node_gets_nothing() {
    let snap = snapshot(&format!("{NODES}---\n{PEERS}---\n{}", conf("node", None)));
    let n2 = node_bgp(&snap, "n2", &SecretScope::default());
    assert_eq!(n2.speaker, None);
    assert!(n2.peers.is_empty());
    assert!(
        n2.notes
            .iter()
            .any(|n| n.message.contains("IPv4 InternalIP")),
        "{:?}",
        n2.notes
    );
    let with_id = snapshot(&format!(
        "{NODES}---\n{PEERS}---\n{}",
        conf("node", Some("10.9.9.9"))
    ));
    let n2 = node_bgp(&with_id, "n2", &SecretScope::default());
    assert_eq!(
        n2.speaker.expect("speaker").router_id.to_string(),
        "10.9.9.9"
    );
    let unknown = node_bgp(&with_id, "n9", &SecretScope::default());
    assert_eq!((unknown.speaker, unknown.peers.len()), (None, 0));
    assert!(unknown.notes[0].message.contains("no Node object named n9"));
}

/// BgpPeers over IPv4 and over IPv6 that carry both families (MP-BGP).
const DUAL_STACK_PEERS: &str = "
kind: BgpPeer
metadata: {name: over-v4}
spec:
  conf: {peerAs: 65011, neighborAddress: 172.30.1.1}
  afiSafis:
  - config: {family: {afi: AFI_IP, safi: SAFI_UNICAST}}
  - config: {family: {afi: AFI_IP6, safi: SAFI_UNICAST}}
---
kind: BgpPeer
metadata: {name: over-v6}
spec:
  conf: {peerAs: 65011, neighborAddress: 'fd00::1'}
  afiSafis:
  - config: {family: {afi: AFI_IP, safi: SAFI_UNICAST}}
  - config: {family: {afi: AFI_IP6, safi: SAFI_UNICAST}}
";

/// An EIP of the other family than its session is sent with the node's
/// InternalIP of the EIP's family as next hop; a node without one gets a
/// warning that says what to do, per peer and family.
#[test]
fn other_family_eips_take_the_node_s_internal_ip_of_their_family_as_next_hop() {
    let text = format!(
        "{NODES}---\nkind: Node\nmetadata: {{name: n3}}\n\
         status: {{addresses: [{{type: InternalIP, address: 172.30.3.13}}]}}\n\
         ---\n{DUAL_STACK_PEERS}---\n{}",
        conf("node", Some("10.9.9.9"))
    );
    let snap = snapshot(&text);
    let ip = |text: &str| text.parse::<IpAddr>().expect("ip");

    let n1 = node_bgp(&snap, "n1", &SecretScope::default());
    for peer in n1.peers.values() {
        assert_eq!(
            peer.config.next_hop_self,
            [ip("172.30.1.11"), ip("fd00::11")],
            "{}",
            peer.name
        );
    }
    assert!(n1.notes.iter().all(|n| !n.warning), "{:?}", n1.notes);

    // n2 has only IPv6: its IPv4 EIPs cannot go over the IPv6 session.
    // n3 has only IPv4: its IPv6 EIPs cannot go over the IPv4 session.
    for (node, says, and_says) in [
        (
            "n2",
            "BgpPeer `over-v6`: IPv4 EIPs are not announced from node n2",
            "Node n2 has no IPv4 InternalIP; give the node one",
        ),
        (
            "n3",
            "BgpPeer `over-v4`: IPv6 EIPs are not announced from node n3",
            "over an IPv4 session",
        ),
    ] {
        let bgp = node_bgp(&snap, node, &SecretScope::default());
        let warnings: Vec<&str> = bgp
            .notes
            .iter()
            .filter(|n| n.warning)
            .map(|n| n.message.as_str())
            .collect();
        assert_eq!(warnings.len(), 1, "{node}: {warnings:?}");
        assert!(
            warnings[0].contains(says) && warnings[0].contains(and_says),
            "{node}: {warnings:?}"
        );
    }
    // n3 has no IPv6 address to offer: its next hop self is its IPv4 one.
    let n3 = node_bgp(&snap, "n3", &SecretScope::default());
    assert_eq!(
        n3.peers[&ip("172.30.1.1")].config.next_hop_self,
        [ip("172.30.3.13")]
    );
}

/// A peer whose session does not carry an EIP's family (no `afiSafis`:
/// its own family only) is named with the fix; one whose `afiSafis` carry
/// it, or that the path is not scoped to, is not.
#[test]
fn eips_of_a_family_a_session_does_not_carry_are_warned_about() {
    let text = format!(
        "{NODES}---\n{DUAL_STACK_PEERS}---\nkind: BgpPeer\nmetadata: {{name: plain}}\n\
         spec: {{conf: {{peerAs: 65011, neighborAddress: 10.0.0.5}}}}\n---\n{}",
        conf("node", None)
    );
    let snap = snapshot(&text);
    let n1 = node_bgp(&snap, "n1", &SecretScope::default());
    let net = |text: &str| text.parse::<ipnet::IpNet>().expect("prefix");
    let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
    let paths = |attributes: PathAttributes| {
        let attributes = Arc::new(attributes);
        porter_bgp::PathTable::from([
            (
                net("192.0.2.1/32"),
                [(NEXT_HOP_SELF_V4, Arc::clone(&attributes))]
                    .into_iter()
                    .collect(),
            ),
            (
                net("2001:db8::1/128"),
                [(NEXT_HOP_SELF_V6, attributes)].into_iter().collect(),
            ),
        ])
    };
    let notes = unnegotiated_families("n1", &n1, &paths(PathAttributes::default()));
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].warning);
    assert!(
        notes[0].message.contains(
            "BgpPeer `plain`: IPv6 EIPs are not announced from node n1 to 10.0.0.5: its \
             session does not carry IPv6 unicast; list {config: {family: {afi: AFI_IP6, \
             safi: SAFI_UNICAST}}} in its spec.afiSafis"
        ),
        "{notes:?}"
    );
    // Scoped to the dual-stack peers only (a pool's peerSelector): no warning.
    let scoped = PathAttributes {
        only_peers: Some([ip("172.30.1.1"), ip("fd00::1")].into()),
        ..PathAttributes::default()
    };
    assert_eq!(unnegotiated_families("n1", &n1, &paths(scoped)), []);
}

#[test]
fn controller_mode_or_no_bgpconf_runs_no_node_speaker() {
    for text in [
        format!(
            "{NODES}---\n{PEERS}---\n{}",
            conf("controller", Some("10.0.0.9"))
        ),
        format!("{NODES}---\n{PEERS}"),
        format!(
            "{NODES}---\n{PEERS}---\nkind: BgpConf\nmetadata: {{name: default}}\nspec: {{as: 65000}}\n"
        ),
    ] {
        let n1 = node_bgp(&snapshot(&text), "n1", &SecretScope::default());
        assert_eq!((n1.speaker, n1.peers.len()), (None, 0), "{text}");
    }
}

fn spec(vip: &str, port: u16, pods: &[&str]) -> LocalService {
    LocalService {
        addr: ServiceAddr {
            vip: vip.parse().expect("vip"),
            port,
            proto: Protocol::Tcp,
        },
        backends: pods
            .iter()
            .map(|pod| Backend {
                addr: pod.parse().expect("pod"),
                port: 80,
                node: None,
                draining: false,
            })
            .collect(),
    }
}

/// Pools and Services for [`node_paths`]: 192.0.2.1 from pool `blue`
/// (a community, peers labelled `fabric: blue` only), 192.0.2.2 from pool
/// `rack2` (only nodes of rack 2 may announce it), 2001:db8::1 from pool
/// `v6` whose Service switches link bandwidth off.
const POLICY: &str = "
kind: Eip
metadata: {name: blue}
spec: {address: 192.0.2.1, bgp: {communities: ['65000:100'], peerSelector: {matchLabels: {fabric: blue}}}}
status: {used: {192.0.2.1: shop/web}}
---
kind: Eip
metadata: {name: rack2}
spec: {address: 192.0.2.2, bgp: {nodeSelector: {matchLabels: {rack: '2'}}}}
status: {used: {192.0.2.2: shop/api}}
---
kind: Eip
metadata: {name: v6}
spec: {address: '2001:db8::1'}
status: {used: {'2001:db8::1': shop/six}}
---
kind: Service
metadata: {name: six, namespace: shop, annotations: {lb.kubesphere.io/v1alpha1: porter, bgp.porter.kubesphere.io/link-bandwidth: 'off'}}
spec: {type: LoadBalancer}
status: {loadBalancer: {ingress: [{ip: '2001:db8::1'}]}}
---
kind: BgpPeer
metadata: {name: blue-leaf, labels: {fabric: blue}}
spec: {conf: {peerAs: 65011, neighborAddress: 172.30.1.1}}
---
kind: BgpPeer
metadata: {name: red-leaf, labels: {fabric: red}}
spec: {conf: {peerAs: 65012, neighborAddress: 172.30.1.2}, policy: {linkBandwidth: NonTransitive}}
";

#[test]
fn node_paths_are_next_hop_self_weighted_by_local_endpoints_with_the_pool_policy() {
    let snap = snapshot(&format!("{NODES}---\n{POLICY}---\n{}", conf("node", None)));
    let n1 = node_bgp(&snap, "n1", &SecretScope::default());
    assert_eq!(
        n1.peers[&"172.30.1.2".parse::<IpAddr>().expect("ip")]
            .config
            .policy
            .link_bandwidth,
        porter_bgp::LinkBandwidthPolicy::NonTransitive,
        "BgpPeer.spec.policy reaches the session"
    );
    let paths = node_paths(
        &snap,
        &n1,
        &[
            // Two ports of one Service on the same two pods, and another
            // Service sharing the EIP with a third pod: 3 endpoints.
            spec("192.0.2.1", 80, &["10.244.1.2", "10.244.1.3"]),
            spec("192.0.2.1", 443, &["10.244.1.2", "10.244.1.3"]),
            spec("192.0.2.1", 8080, &["10.244.1.4"]),
            spec("192.0.2.2", 80, &["10.244.1.5"]),
            spec("2001:db8::1", 80, &["fd00:244:1::2"]),
        ],
    );
    let rendered: Vec<(String, IpAddr, PathAttributes)> = paths
        .iter()
        .flat_map(|(prefix, hops)| {
            hops.iter().map(move |(hop, attributes)| {
                (prefix.to_string(), *hop, PathAttributes::clone(attributes))
            })
        })
        .collect();
    assert_eq!(
        rendered,
        [
            (
                "192.0.2.1/32".to_owned(),
                NEXT_HOP_SELF_V4,
                PathAttributes {
                    communities: vec![(65000 << 16) | 100],
                    link_bandwidth: Some(LinkBandwidth::for_endpoints(3, true)),
                    only_peers: Some(["172.30.1.1".parse().expect("ip")].into()),
                    ..Default::default()
                }
            ),
            // 192.0.2.2: rack 2 only, so not from n1.
            (
                "2001:db8::1/128".to_owned(),
                NEXT_HOP_SELF_V6,
                PathAttributes::default()
            ),
        ]
    );
    assert!(node_paths(&snap, &n1, &[]).is_empty());
}

fn session(state: SessionState, paths: u64) -> porter_bgp::PeerStatus {
    porter_bgp::PeerStatus {
        address: "172.30.1.1".parse().expect("ip"),
        remote_as: 65011,
        state,
        uptime: None,
        established_count: 1,
        messages_sent: 0,
        messages_received: 0,
        updates_sent: 0,
        paths_announced: paths,
        families: Vec::new(),
        add_path: Vec::new(),
        last_error: None,
        notifications_sent: Default::default(),
        notifications_received: Default::default(),
    }
}

#[test]
fn status_is_written_only_where_this_node_s_entry_differs() {
    let snap = snapshot(
        "
kind: BgpPeer
metadata: {name: leaf1}
spec: {conf: {peerAs: 65011, neighborAddress: 172.30.1.1}}
status: {nodes: [{node: n1, state: Established, pathsAnnounced: 2}, {node: n2, state: Active}]}
---
kind: BgpPeer
metadata: {name: leaf2}
spec: {conf: {peerAs: 65012, neighborAddress: 172.30.2.1}}
status: {nodes: [{node: n1, state: Active}]}
---
kind: BgpPeer
metadata: {name: leaf3}
spec: {conf: {peerAs: 65013, neighborAddress: 172.30.3.1}}
",
    );
    let established = status_entry("n1", &session(SessionState::Established, 2), None);
    assert_eq!(
        established,
        BgpPeerNodeStatus {
            node: "n1".into(),
            state: "Established".into(),
            paths_announced: 2,
            last_error: None,
            bfd: None,
        }
    );
    let with_bfd = status_entry(
        "n1",
        &session(SessionState::Established, 2),
        Some("Up".into()),
    );
    assert_eq!(with_bfd.bfd.as_deref(), Some("Up"));
    let connecting = status_entry("n1", &session(SessionState::Connect, 0), None);
    let entries = BTreeMap::from([
        ("leaf1".to_owned(), established),
        ("leaf3".to_owned(), connecting.clone()),
    ]);
    // leaf1 is already right; leaf2 has a stale entry of n1 (no session
    // any more); leaf3 has none yet. n2's entry is never touched.
    assert_eq!(
        status_changes(&snap, "n1", &entries),
        [
            ("leaf2".to_owned(), None),
            ("leaf3".to_owned(), Some(connecting))
        ]
    );
}

#[test]
fn session_metrics_are_per_peer_and_node() {
    let metrics = BgpMetrics::default();
    metrics.sessions("n1", &[session(SessionState::Established, 3)]);
    let mut registry = prometheus_client::registry::Registry::with_prefix("porter_bgp");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("porter_bgp_session_up{peer=\"172.30.1.1\",node=\"n1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("porter_bgp_paths_announced{peer=\"172.30.1.1\",node=\"n1\"} 3"),
        "{text}"
    );
}

/// What the agent sends the API server for its entry: a server-side apply
/// of the status subresource under its own per-node field manager, with a
/// one-entry list that the list-map merges by `node`; removing applies an
/// empty list under the same manager.
#[tokio::test]
async fn the_agent_applies_its_own_bgppeer_status_entry_under_a_per_node_manager() {
    let (client, log) = porter_api::testing::mock_client(|_| {
        serde_json::json!({
            "apiVersion": "network.kubesphere.io/v1alpha2",
            "kind": "BgpPeer",
            "metadata": {"name": "leaf1"},
            "spec": {"conf": {"peerAs": 65011, "neighborAddress": "172.30.1.1"}},
        })
    });
    let writer = ClusterWriter::Kube(Box::new(porter_api::source::kube::KubeWriter::new(
        client, None, None,
    )));
    let entry = status_entry("n1", &session(SessionState::Established, 2), None);
    writer
        .write("leaf1", "n1", Some(&entry))
        .await
        .expect("patch");
    writer.write("leaf1", "n1", None).await.expect("patch");
    let seen = porter_api::testing::seen(&log);
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.method, http::Method::PATCH);
        assert!(
            request
                .uri
                .starts_with("/apis/network.kubesphere.io/v1alpha2/bgppeers/leaf1/status?"),
            "{}",
            request.uri
        );
        assert!(
            request.uri.contains("fieldManager=porter-agent-n1")
                && request.uri.contains("force=true"),
            "{}",
            request.uri
        );
        assert_eq!(request.content_type, "application/apply-patch+yaml");
        assert_eq!(request.body["kind"], "BgpPeer");
    }
    assert_eq!(
        seen[0].body["status"]["nodes"],
        serde_json::json!([{"node": "n1", "state": "Established", "pathsAnnounced": 2}])
    );
    assert_eq!(seen[1].body["status"]["nodes"], serde_json::json!([]));
}

/// A porter-bgp listener on `address` standing in for a router, waiting
/// for the node speaker at 127.0.0.2 (AS 65000).
async fn loopback_router(address: &str) -> (porter_bgp::Speaker, u16) {
    let router = porter_bgp::Speaker::start(porter_bgp::SpeakerConfig {
        local_as: 65001,
        router_id: "127.0.0.1".parse().expect("ip"),
        listen: Some(format!("{address}:0").parse().expect("addr")),
        graceful_restart: None,
    })
    .await
    .expect("router listens on loopback");
    let port = router.listen_address().expect("bound").port();
    let mut passive = porter_bgp::PeerConfig::new("127.0.0.2".parse().expect("ip"), 65000);
    passive.passive = true;
    router.upsert_peer(passive).await;
    (router, port)
}

async fn established(router: &porter_bgp::Speaker) -> bool {
    router
        .peer_status()
        .await
        .iter()
        .any(|s| s.state == SessionState::Established)
}

/// The speaker end to end on loopback, with porter-bgp listeners standing
/// in for two routers (`rack` selects the node by label, `all` selects every
/// node) and the `dir:` source for the cluster: both sessions come up and
/// the node's entries appear in their status; relabelling the node out of
/// the rack closes that session and removes its entry, the other stays;
/// stopping the agent marks its remaining entry Idle.
#[tokio::test]
async fn sessions_follow_the_node_labels_and_report_their_status() {
    let (rack, rack_port) = loopback_router("127.0.0.1").await;
    let (all, all_port) = loopback_router("127.0.0.3").await;
    let dir = std::env::temp_dir().join(format!("porter-agent-bgp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let write_cluster = |label: &str| {
        let peer = |name: &str, address: &str, port: u16, selector: &str| {
            format!(
                "kind: BgpPeer
metadata: {{name: {name}}}
spec:
  conf: {{peerAs: 65001, neighborAddress: {address}}}
  transport: {{remotePort: {port}, localAddress: 127.0.0.2}}
  timers: {{config: {{connectRetry: 1, holdTime: 9}}}}
  nodeSelector: {{{selector}}}
"
            )
        };
        let text = format!(
            "kind: Node
metadata: {{name: n1, labels: {{rack: '{label}'}}}}
status: {{addresses: [{{type: InternalIP, address: 127.0.0.2}}]}}
---
kind: BgpConf
metadata: {{name: default}}
spec: {{as: 65000, speakerMode: node, listenPort: -1}}
---
{}---
{}",
            peer("rack", "127.0.0.1", rack_port, "rack: '1'"),
            peer("all", "127.0.0.3", all_port, ""),
        );
        std::fs::write(dir.join("cluster.yaml"), text).expect("write manifests");
    };
    let entries = |dir: &Path| -> BTreeMap<String, String> {
        let (snap, _) = porter_api::source::dir::load(dir).expect("load");
        snap.bgp_peers
            .iter()
            .flat_map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                p.status
                    .clone()
                    .unwrap_or_default()
                    .nodes
                    .into_iter()
                    .map(move |e| (format!("{name}/{}", e.node), e.state))
            })
            .collect()
    };
    let mut speaker = super::NodeSpeaker::new(
        "n1".into(),
        ClusterWriter::Dir(porter_api::source::dir::DirWriter::new(dir.clone())),
        BgpMetrics::default(),
    );
    let served = [spec("192.0.2.1", 80, &["10.244.1.2", "10.244.1.3"])];
    let established_everywhere = BTreeMap::from([
        ("all/n1".to_owned(), "Established".to_owned()),
        ("rack/n1".to_owned(), "Established".to_owned()),
    ]);
    let only_all = BTreeMap::from([("all/n1".to_owned(), "Established".to_owned())]);

    for (label, want_rack, want) in [
        ("1", true, &established_everywhere),
        ("2", false, &only_all),
    ] {
        write_cluster(label);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (snap, _) = porter_api::source::dir::load(&dir).expect("load");
            speaker.step(&snap, &served).await;
            let reported = entries(&dir);
            if established(&rack).await == want_rack && established(&all).await && &reported == want
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rack label {label}: status {reported:?}, want {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    speaker.shutdown().await;
    let (snap, _) = porter_api::source::dir::load(&dir).expect("load");
    let stopped: Vec<BgpPeerNodeStatus> = snap
        .bgp_peers
        .iter()
        .flat_map(|p| p.status.clone().unwrap_or_default().nodes)
        .collect();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0].state, "Idle");
    assert!(
        stopped[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("porter-agent stopped")),
        "{stopped:?}"
    );
    rack.shutdown().await;
    all.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// In node mode the agent keys its own sessions: the password comes from the
/// Secret the BgpPeer names; while it cannot be read the peer is held (not
/// started, and a running session would keep its key), with a Warning Event.
#[test]
fn node_mode_keys_sessions_from_the_secret_and_holds_a_peer_without_one() {
    let peer = "
kind: BgpPeer
metadata: {name: leaf1}
spec:
  conf:
    peerAs: 65011
    neighborAddress: 172.30.1.1
    authPasswordSecretRef: {name: bgp, key: leaf1}
";
    let leaf1: IpAddr = "172.30.1.1".parse().expect("ip");
    let base = format!("{NODES}---\n{peer}---\n{}", conf("node", None));

    let missing = node_bgp(&snapshot(&base), "n1", &SecretScope::default());
    assert!(missing.peers.is_empty(), "no session without its key");
    assert!(missing.held.contains(&leaf1));
    let note = missing
        .notes
        .iter()
        .find(|n| {
            n.event
                .as_ref()
                .is_some_and(|e| e.reason == REASON_AUTH_UNAVAILABLE)
        })
        .expect("an AuthPasswordUnavailable note");
    assert!(note.message.contains("porter-system/bgp"), "{note:?}");

    let secret = "
kind: Secret
metadata: {name: bgp, namespace: porter-system}
stringData: {leaf1: s3cret}
";
    let keyed = node_bgp(
        &snapshot(&format!("{base}---\n{secret}")),
        "n1",
        &SecretScope::default(),
    );
    assert!(keyed.held.is_empty());
    assert_eq!(
        keyed.peers[&leaf1].config.md5_password.as_deref(),
        Some("s3cret")
    );
    assert!(
        keyed.notes.iter().all(|n| !n.message.contains("s3cret")),
        "the password is never in a message"
    );
}

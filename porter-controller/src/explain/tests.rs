use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use porter_api::crd::EipBgp;
use porter_api::node_dataplane;
use porter_api::testing::{load_balancer, load_balancer_on_80, service_in};
use porter_api::{BgpPeer, BgpPeerNodeStatus, BgpPeerStatus, Eip, SpeakerMode};

use super::*;
use crate::testing::{bgp_conf, bgp_peer, eip, labels, node, published, slice};

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
}

const OPTED_IN: (&str, &str) = ("lb.kubesphere.io/v1alpha1", "porter");

/// `shop/web`, opted in, with `address` published (as a leader left it).
fn web(address: &str, external_traffic_policy: Option<&str>) -> Arc<Service> {
    let mut spec = load_balancer_on_80();
    spec.external_traffic_policy = external_traffic_policy.map(str::to_string);
    Arc::new(published(
        service_in("shop", "web", &[OPTED_IN], spec),
        address,
    ))
}

/// The pool `pool`, 10.0.0.0-10.0.0.9, with this BGP policy.
fn pool(bgp: Option<EipBgp>) -> Arc<Eip> {
    let mut pool = eip("pool", "10.0.0.0-10.0.0.9");
    pool.spec.bgp = bgp;
    Arc::new(pool)
}

/// A selector matching these labels.
fn selecting(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels(pairs)),
        ..Default::default()
    })
}

/// BgpPeer `name` at `addr` with these labels and `nodeSelector`, and these
/// sessions in its status.
fn peer(
    name: &str,
    addr: &str,
    peer_labels: &[(&str, &str)],
    node_selector: &[(&str, &str)],
    sessions: Vec<BgpPeerNodeStatus>,
) -> Arc<BgpPeer> {
    let mut peer = bgp_peer(name, addr, |spec| {
        spec.node_selector = labels(node_selector)
    });
    peer.metadata.labels = Some(labels(peer_labels));
    peer.status = Some(BgpPeerStatus { nodes: sessions });
    Arc::new(peer)
}

/// A session of `node`'s speaker in this state.
fn session(node: &str, state: &str) -> BgpPeerNodeStatus {
    BgpPeerNodeStatus {
        node: node.into(),
        state: state.into(),
        ..Default::default()
    }
}

fn with_condition(mut n: Node, condition: k8s_openapi::api::core::v1::NodeCondition) -> Node {
    if let Some(status) = n.status.as_mut() {
        node_dataplane::merge(status.conditions.get_or_insert_with(Vec::new), condition);
    }
    n
}

fn labelled(mut n: Node, pairs: &[(&str, &str)]) -> Node {
    n.metadata.labels = Some(labels(pairs));
    n
}

/// One node for every reason a node can give, and one that is announced.
fn cluster() -> Snapshot {
    let endpoints = [
        ("announced", Some(true)),
        ("ghost", Some(true)),
        ("not-ready", Some(true)),
        ("frozen", Some(true)),
        ("no-internal-ip", Some(true)),
        ("liveness-down", Some(true)),
        ("other-zone", Some(true)),
        ("idle", Some(false)),
    ];
    let zone = |n: Node| labelled(n, &[("zone", "a")]);
    Snapshot {
        services: vec![web("10.0.0.1", Some("Local"))],
        endpoint_slices: vec![Arc::new(slice("shop", "web", &endpoints))],
        nodes: [
            zone(node("announced", "True", &["192.168.1.1"])),
            zone(node("not-ready", "False", &["192.168.1.2"])),
            zone(with_condition(
                node("frozen", "True", &["192.168.1.3"]),
                node_dataplane::condition(false, "NewerPinLayout", "roll the agent forward"),
            )),
            zone(node("no-internal-ip", "True", &[])),
            zone(with_condition(
                node("liveness-down", "True", &["192.168.1.5"]),
                Reachability::Down.condition(),
            )),
            labelled(
                node("other-zone", "True", &["192.168.1.6"]),
                &[("zone", "b")],
            ),
            zone(node("idle", "True", &["192.168.1.7"])),
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
        eips: vec![pool(Some(EipBgp {
            node_selector: selecting(&[("zone", "a")]),
            ..Default::default()
        }))],
        ..Default::default()
    }
}

fn key() -> ObjectKey {
    ObjectKey::new("shop", "web")
}

fn addresses(e: &Explanation) -> &[Address] {
    match &e.standing {
        Standing::Served { addresses, .. } => addresses,
        other => panic!("not served: {other:?}"),
    }
}

fn verdict_of<'a>(a: &'a Address, node: &str) -> &'a Verdict {
    &a.nodes
        .iter()
        .find(|l| l.node == node)
        .unwrap_or_else(|| panic!("{node} not listed"))
        .verdict
}

/// Every reason a node can be left out for, each from its own predicate:
/// break one and its node is announced (or gives another reason).
#[test]
fn every_node_gets_the_reason_its_predicate_gives() {
    let e = explain(&cluster(), &key(), &now());
    let a = &addresses(&e)[0];
    let want = [
        ("ghost", Exclusion::UnknownNode),
        ("not-ready", Exclusion::NotReady),
        ("frozen", Exclusion::DataplaneFrozen),
        ("no-internal-ip", Exclusion::NoInternalIp),
        ("liveness-down", Exclusion::LivenessWithdrawn),
        ("other-zone", Exclusion::PoolNodeSelector),
        ("idle", Exclusion::NoReadyEndpoint),
    ];
    for (node, why) in want {
        assert_eq!(verdict_of(a, node), &Verdict::Excluded(why), "{node}");
    }
    assert!(
        matches!(verdict_of(a, "announced"), Verdict::Announced { hop, endpoints: 1, .. } if hop.to_string() == "192.168.1.1")
    );
    assert_eq!(a.nodes.len(), want.len() + 1, "every node, and the ghost");
    let text = e.to_string();
    for (node, why) in want {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no line for {node} in\n{text}"));
        assert!(line.contains(why.word()), "{line}");
    }
    assert!(
        text.contains("NewerPinLayout: roll the agent forward"),
        "{text}"
    );
    assert!(text.contains("PorterNodeReachable=False): Down"), "{text}");
    assert!(text.contains("externalTrafficPolicy Local"), "{text}");
}

/// What explain says is what the controller announces: its announced
/// nodes are exactly the paths' next hops.
#[test]
fn the_announced_nodes_are_the_next_hops_of_the_controllers_paths() {
    let snap = cluster();
    let mut leader = Reconciler::default();
    leader.set_withdrawn(["liveness-down".to_string()].into());
    let plan = leader.plan(&snap, &now());
    let hops: Vec<IpAddr> = plan
        .paths
        .values()
        .flat_map(|h| h.keys().copied())
        .collect();
    let e = explain(&snap, &key(), &now());
    let announced: Vec<IpAddr> = addresses(&e)[0]
        .nodes
        .iter()
        .filter_map(|l| match l.verdict {
            Verdict::Announced { hop, .. } => Some(hop),
            Verdict::Excluded(_) => None,
        })
        .collect();
    assert_eq!(announced, hops);
}

#[test]
fn each_peer_says_whether_each_path_was_sent_and_why_not() {
    let mut snap = cluster();
    snap.eips = vec![pool(Some(EipBgp {
        peer_selector: selecting(&[("fabric", "blue")]),
        ..Default::default()
    }))];
    let up = vec![BgpPeerNodeStatus {
        paths_announced: 1,
        ..session("controller", "Established")
    }];
    let active = vec![BgpPeerNodeStatus {
        last_error: Some("connection refused".into()),
        ..session("controller", "Active")
    }];
    let blue = [("fabric", "blue")];
    snap.bgp_peers = vec![
        peer("tor-a", "10.9.0.1", &blue, &[("zone", "a")], up.clone()),
        peer("tor-b", "10.9.0.2", &blue, &[("zone", "b")], up.clone()),
        peer("red", "10.9.0.3", &[("fabric", "red")], &[], up),
        peer("down", "10.9.0.4", &blue, &[], active),
        peer("silent", "10.9.0.5", &blue, &[], vec![]),
    ];
    let e = explain(&snap, &key(), &now());
    assert_eq!(e.bgp, BgpMode::Controller);
    let a = &addresses(&e)[0];
    let sent = |peer: &str, node: &str| {
        a.peers
            .iter()
            .find(|p| p.name == peer)
            .and_then(|p| p.paths.iter().find(|(n, _)| n == node))
            .map(|(_, s)| s.clone())
    };
    assert_eq!(sent("tor-a", "announced"), Some(Sent::Yes));
    assert_eq!(
        sent("tor-b", "other-zone"),
        Some(Sent::Yes),
        "no pool nodeSelector now: other-zone is announced, to its zone's peer"
    );
    assert_eq!(
        sent("tor-b", "announced"),
        Some(Sent::Skipped(PeerSkip::PeerNodeSelector))
    );
    assert_eq!(
        sent("red", "announced"),
        Some(Sent::Skipped(PeerSkip::PoolPeerSelector))
    );
    assert_eq!(
        sent("down", "announced"),
        Some(Sent::SessionDown(Some("Active".into())))
    );
    assert_eq!(sent("silent", "announced"), Some(Sent::SessionDown(None)));
    assert_eq!(
        sent("tor-a", "not-ready"),
        None,
        "only announced nodes have paths"
    );
    let text = e.to_string();
    assert!(text.contains("last error: connection refused"), "{text}");
    assert!(text.contains("not sent: PeerNodeSelector"), "{text}");
}

#[test]
fn in_node_mode_each_path_goes_over_its_own_nodes_session() {
    let mut snap = cluster();
    let mut conf = bgp_conf("default", None);
    conf.spec.speaker_mode = Some(SpeakerMode::Node);
    snap.bgp_confs = vec![Arc::new(conf)];
    snap.bgp_peers = vec![peer(
        "tor",
        "10.9.0.1",
        &[],
        &[],
        vec![
            session("announced", "Established"),
            session("controller", "Idle"),
        ],
    )];
    let e = explain(&snap, &key(), &now());
    assert_eq!(e.bgp, BgpMode::Node);
    let paths = &addresses(&e)[0].peers[0].paths;
    assert_eq!(paths, &[("announced".to_string(), Sent::Yes)]);
}

#[test]
fn a_layer2_address_names_its_leader_among_the_announced_nodes() {
    let mut snap = cluster();
    let mut lan: Eip = (*pool(None)).clone();
    lan.spec.protocol = Some("layer2".into());
    snap.eips = vec![Arc::new(lan)];
    snap.endpoint_slices = vec![Arc::new(slice(
        "shop",
        "web",
        &[("announced", Some(true)), ("idle", Some(true))],
    ))];
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    for (holder, leader_line) in [(Some("idle"), "idle"), (None, "")] {
        snap.layer2_holders = Arc::new(holder.map(|h| (ip, h.to_string())).into_iter().collect());
        let e = explain(&snap, &key(), &now());
        let a = &addresses(&e)[0];
        assert!(a.layer2);
        assert_eq!(a.layer2_leader.as_deref(), holder);
        let text = e.to_string();
        let line = |node: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{node} ")))
                .unwrap_or_default()
                .to_string()
        };
        if holder.is_some() {
            assert!(line(leader_line).contains("Layer 2 leader"), "{text}");
            assert!(line("announced").contains("not the leader"), "{text}");
        } else {
            assert!(text.contains("no node answers ARP/NDP"), "{text}");
        }
    }
}

#[test]
fn a_service_without_an_address_says_what_an_allocation_would() {
    let mut snap = cluster();
    // No status: the pool is full of someone else.
    let other = service_in(
        "shop",
        "other",
        &[OPTED_IN, ("eip.porter.kubesphere.io/v1alpha1", "10.0.0.1")],
        load_balancer_on_80(),
    );
    snap.services = vec![web("10.0.0.1", None), Arc::new(other)];
    let e = explain(&snap, &ObjectKey::new("shop", "other"), &now());
    match &e.standing {
        Standing::NoAddress { why, published } => {
            assert!(why.contains("10.0.0.1 is held by shop/web"), "{why}");
            assert!(published.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_service_porter_does_not_serve_says_so() {
    let mut snap = cluster();
    let plain = service_in("shop", "plain", &[], load_balancer(None));
    let mut gone = (*web("10.0.0.1", None)).clone();
    gone.metadata.name = Some("gone".into());
    gone.metadata.deletion_timestamp = Some(now());
    snap.services.extend([Arc::new(plain), Arc::new(gone)]);
    let standing = |name: &str| explain(&snap, &ObjectKey::new("shop", name), &now()).standing;
    assert_eq!(standing("plain"), Standing::NotServed);
    assert_eq!(standing("gone"), Standing::Deleting);
    assert_eq!(standing("nope"), Standing::NotFound);
    let shared_pool = addresses(&explain(&snap, &key(), &now()))[0].pool.clone();
    assert_eq!(
        shared_pool,
        Some(("pool".to_string(), PoolChoice::Open { priority: 0 }))
    );
}

#[test]
fn no_bgp_configuration_lists_no_peers() {
    let e = explain(&cluster(), &key(), &now());
    assert_eq!(e.bgp, BgpMode::Off);
    assert!(addresses(&e)[0].peers.is_empty());
    assert!(!e.to_string().contains("peers:"));
}

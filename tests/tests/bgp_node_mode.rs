//! `speakerMode: node` in a routed fabric (docs/bgp-policy.md §5): two
//! racks on two subnets, each node alone behind its own FRR leaf, the
//! leaves under an FRR spine the client sits behind. The agents (dir
//! source) run their own speakers, each peering only with the leaf its
//! BgpPeer's `nodeSelector` gives it, announce the EIP with themselves as
//! next hop, report their sessions in `BgpPeer.status`, and traffic from
//! the client reaches the pods in both racks (over IPv4, and over IPv6
//! for an IPv6 Service carried by the same IPv4 sessions); when a node's
//! endpoints go, its leaf's route goes; an agent restart keeps its routes
//! (graceful restart) and its traffic.
//!
//! A `Cluster` Service in the same fabric: a node forwards a flow whose pod
//! runs in the other rack in IPIP (the racks are different subnets), and
//! full-size transfers complete both ways on such flows.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use porter_tests::{
    datacenter::{Datacenter, per_node},
    lab::wait_for,
    manifests::{self, ServiceManifest},
    netns::{NamedClient, NamedServer, run_in},
};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";
const PORT: u16 = 8088;

/// BgpConf in node mode, and one BgpPeer per leaf selecting its rack,
/// carrying IPv4 and IPv6 over the IPv4 session.
fn bgp_manifests(dc: &Datacenter) -> String {
    let mut docs = vec![
        "apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpConf\nmetadata:\n  name: default\n\
         spec:\n  as: 65000\n  speakerMode: node\n"
            .to_owned(),
    ];
    for (index, leaf) in dc.leaves.iter().enumerate() {
        let rack = index + 1;
        docs.push(format!(
            "apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpPeer\nmetadata:\n  name: leaf{rack}\n\
             spec:\n  conf:\n    peerAs: {}\n    neighborAddress: {}\n  timers:\n    config:\n      connectRetry: 1\n\
             \x20 afiSafis:\n  - config:\n      family: {{afi: AFI_IP, safi: SAFI_UNICAST}}\n\
             \x20 - config:\n      family: {{afi: AFI_IP6, safi: SAFI_UNICAST}}\n\
             \x20 nodeSelector:\n    rack: \"{rack}\"\n",
            leaf.config.local_as, leaf.config.local_address
        ));
    }
    docs.join("---\n")
}

/// The state of node `node`'s session in BgpPeer `peer`'s status, as the
/// agents wrote it (`None`: no entry).
fn peer_status(dc: &Datacenter, peer: &str) -> Result<BTreeMap<String, String>> {
    let (snapshot, _) = porter_api::source::dir::load(&dc.manifests)?;
    Ok(snapshot
        .bgp_peers
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(peer))
        .and_then(|p| p.status.as_ref())
        .map(|s| {
            s.nodes
                .iter()
                .map(|e| (e.node.clone(), e.state.clone()))
                .collect()
        })
        .unwrap_or_default())
}

fn wait_routes(
    dc: &Datacenter,
    router: &porter_tests::routers::Router,
    eip: IpAddr,
    want: &[IpAddr],
) -> Result<()> {
    let prefix = format!("{eip}/{}", if eip.is_ipv6() { 128 } else { 32 });
    let mut want = want.to_vec();
    want.sort();
    wait_for(
        &format!("{}'s route to {eip} via {want:?}", router.ns),
        WAIT,
        || {
            let hops: Vec<IpAddr> = router.next_hops(&dc.lab, &prefix)?.into_iter().collect();
            Ok((hops == want).then_some(()))
        },
    )
    .with_context(|| router.describe(&dc.lab))
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn node_mode_agents_peer_with_their_own_leaf_across_two_subnets() -> Result<()> {
    // Rack 1: n1 with 1 pod; rack 2: n2 with 3 pods.
    let mut dc = Datacenter::fabric("nodemode", &[1, 3])?;
    dc.apply("bgp.yaml", &bgp_manifests(&dc))?;
    dc.apply("pool.yaml", &manifests::eip("pool", "192.168.2.0/28"))?;
    let web = ServiceManifest {
        namespace: NS,
        name: "web",
        port: PORT,
        target_port: 80,
        annotations: &[],
        ipv6: false,
        cluster: false,
    };
    dc.add_service(&web, &[0, 1])?;
    // An IPv6 Service too: its EIP goes over the same IPv4 sessions, with
    // each node's IPv6 InternalIP as next hop.
    dc.apply("pool6.yaml", &manifests::eip("pool6", "fd00:40::/124"))?;
    let web6 = ServiceManifest {
        name: "web6",
        annotations: &[("eip.porter.kubesphere.io/v1alpha2", "pool6")],
        ipv6: true,
        cluster: false,
        ..web
    };
    dc.add_service(&web6, &[0, 1])?;
    dc.start_controller()?;
    for index in 0..dc.nodes.len() {
        dc.start_agent(index)?;
    }
    let eip = dc.wait_service_ip(NS, "web", WAIT)?;
    let (n1, n2) = (dc.nodes[0].ip, dc.nodes[1].ip);

    // Each leaf learns the EIP from its own rack's node only, with the node
    // itself as next hop (it is on the leaf's subnet; the other node is not).
    wait_routes(&dc, &dc.leaves[0], eip, &[n1])?;
    wait_routes(&dc, &dc.leaves[1], eip, &[n2])?;
    let leaf_uplinks: Vec<IpAddr> = ["172.29.1.2", "172.29.2.2"]
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    wait_routes(&dc, &dc.router, eip, &leaf_uplinks)?;
    // The spine weights the racks by endpoints (transitive link bandwidth
    // summed by each leaf): 1 pod against 3.
    let weights = wait_for("the spine's weighted route", WAIT, || {
        let weights = dc.router.route_weights(&dc.lab, &format!("{eip}/32"))?;
        let values: Vec<u32> = weights.values().copied().collect();
        Ok((values.len() == 2 && values[0] * 3 == values[1]).then_some(weights))
    })
    .with_context(|| dc.describe())?;
    println!("spine weights {weights:?}");

    // Each BgpPeer's status has exactly its rack's node, Established.
    for (peer, node) in [("leaf1", "n1"), ("leaf2", "n2")] {
        let want = BTreeMap::from([(node.to_owned(), "Established".to_owned())]);
        wait_for(&format!("{peer}'s status to show {node}"), WAIT, || {
            Ok((peer_status(&dc, peer)? == want).then_some(()))
        })
        .with_context(|| format!("{peer} status {:?}", peer_status(&dc, peer)))?;
    }

    // Traffic from the client reaches the pods of both racks.
    let addr = SocketAddr::new(eip, PORT);
    let served = wait_for("pods of both racks to answer", WAIT, || {
        let per_pod = dc.spread(addr, 40)?;
        let nodes = per_node(&per_pod);
        Ok((nodes.len() == 2).then_some(per_pod))
    })
    .with_context(|| dc.describe())?;
    println!("per pod {served:?}");

    // IPv6: each leaf routes the EIP to its own node's IPv6 address, the
    // spine installs ECMP over both leaves, and the client reaches the
    // pods of both racks over IPv6.
    let eip6 = dc.wait_service_ip(NS, "web6", WAIT)?;
    ensure!(eip6.is_ipv6(), "web6 got {eip6} from the IPv6 pool");
    wait_routes(&dc, &dc.leaves[0], eip6, &[dc.nodes[0].ip6])?;
    wait_routes(&dc, &dc.leaves[1], eip6, &[dc.nodes[1].ip6])?;
    // The spine installs it via the leaves' link-local addresses (FRR's
    // choice for a directly connected eBGP neighbour), one per leaf link,
    // weighted by rack as for IPv4.
    let spine6 = wait_for("the spine's IPv6 route via both leaves", WAIT, || {
        let hops = dc
            .router
            .kernel_next_hops(&dc.lab, &format!("{eip6}/128"))?;
        let mut by_link: Vec<(String, u32)> =
            hops.into_iter().map(|hop| (hop.dev, hop.weight)).collect();
        by_link.sort();
        Ok((by_link == [("v-l1".to_owned(), 25), ("v-l2".to_owned(), 75)]).then_some(by_link))
    })
    .with_context(|| dc.describe())?;
    println!("spine IPv6 next hops {spine6:?}");
    let addr6 = SocketAddr::new(eip6, PORT);
    let served6 = wait_for("pods of both racks to answer over IPv6", WAIT, || {
        let per_pod = dc.spread(addr6, 40)?;
        Ok((per_node(&per_pod).len() == 2).then_some(per_pod))
    })
    .with_context(|| dc.describe())?;
    println!("IPv6 per pod {served6:?}");

    // An agent restart (an upgrade) drops nothing: with graceful restart
    // the stopped agent closes its session without a NOTIFICATION, leaf 1
    // keeps n1's route while the pinned data plane serves on, and the new
    // agent takes the route over.
    dc.stop_agent(0)?;
    wait_for("leaf 1 to see n1's session go", WAIT, || {
        Ok((!dc.leaves[0].established(&dc.lab, n1)?).then_some(()))
    })?;
    wait_routes(&dc, &dc.leaves[0], eip, &[n1])?;
    let idle = BTreeMap::from([("n1".to_owned(), "Idle".to_owned())]);
    ensure!(
        peer_status(&dc, "leaf1")? == idle,
        "leaf1's status while n1's agent is down: {:?}",
        peer_status(&dc, "leaf1")
    );
    let during = dc.spread(addr, 20)?;
    println!("while n1's agent is down: per pod {during:?}");
    ensure!(
        per_node(&during).contains_key("n1"),
        "n1 served nothing while its agent restarted: {during:?}"
    );
    dc.start_agent(0)?;
    wait_for("leaf 1 to see n1's session again", WAIT, || {
        Ok(dc.leaves[0].established(&dc.lab, n1)?.then_some(()))
    })?;
    wait_routes(&dc, &dc.leaves[0], eip, &[n1])?;
    let established = BTreeMap::from([("n1".to_owned(), "Established".to_owned())]);
    wait_for("leaf1's status to show n1 Established again", WAIT, || {
        Ok((peer_status(&dc, "leaf1")? == established).then_some(()))
    })?;

    // n2's endpoints go: n2 withdraws its path, so leaf 2 now routes the
    // EIP up to the spine (which learnt it from rack 1), the spine keeps
    // only rack 1, and every request is served by n1.
    dc.set_endpoints(NS, "web", &dc.endpoints_on(&[0]))?;
    wait_routes(&dc, &dc.leaves[1], eip, &["172.29.2.1".parse()?])?;
    wait_routes(&dc, &dc.router, eip, &leaf_uplinks[..1])?;
    wait_routes(&dc, &dc.leaves[0], eip, &[n1])?;
    let per_pod = dc.spread(addr, 20)?;
    ensure!(
        per_node(&per_pod).keys().collect::<Vec<_>>() == ["n1"],
        "after n2's endpoints left, requests were served by {per_pod:?}"
    );

    // Back to controller mode at runtime: the agents close their sessions
    // (the leaves drop the routes) and remove their status entries.
    dc.apply(
        "bgp.yaml",
        &bgp_manifests(&dc).replace("speakerMode: node", "speakerMode: controller"),
    )?;
    wait_routes(&dc, &dc.leaves[0], eip, &[])?;
    wait_for("the agents to remove their status entries", WAIT, || {
        let nodes: Vec<String> = ["leaf1", "leaf2"]
            .into_iter()
            .map(|peer| peer_status(&dc, peer))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flat_map(|entries| entries.into_keys())
            .filter(|key| key.starts_with('n'))
            .collect();
        Ok(nodes.is_empty().then_some(()))
    })?;
    Ok(())
}

/// The port the `Cluster` Service's pods serve a [`NamedServer`] on.
const ECHO_PORT: u16 = 7100;
/// What each cross-rack connection sends and gets echoed back.
const TRANSFER_BYTES: usize = 1 << 20;

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn cluster_flows_cross_racks_in_ipip_and_full_size_transfers_complete() -> Result<()> {
    // Rack 1: n1 with 1 pod; rack 2: n2 with 3 pods.
    let mut dc = Datacenter::fabric("ipip", &[1, 3])?;
    dc.apply("bgp.yaml", &bgp_manifests(&dc))?;
    dc.apply("pool.yaml", &manifests::eip("pool", "192.168.2.0/28"))?;
    let _servers = dc
        .nodes
        .iter()
        .flat_map(|node| &node.pods)
        .map(|pod| NamedServer::start(&pod.ns, ECHO_PORT, &pod.name))
        .collect::<Result<Vec<_>>>()?;
    dc.apply(
        "endpoints-default-echo.yaml",
        &manifests::endpoint_slice(NS, "echo", false, ECHO_PORT, &dc.endpoints_on(&[0, 1])),
    )?;
    let echo = ServiceManifest {
        namespace: NS,
        name: "echo",
        port: ECHO_PORT,
        target_port: ECHO_PORT,
        annotations: &[],
        ipv6: false,
        cluster: true,
    };
    dc.apply("svc-echo.yaml", &manifests::service(&echo))?;
    dc.start_controller()?;
    for index in 0..dc.nodes.len() {
        dc.start_agent(index)?;
    }
    let eip = dc.wait_service_ip(NS, "echo", WAIT)?;
    let leaf_uplinks: Vec<IpAddr> = ["172.29.1.2", "172.29.2.2"]
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    wait_routes(&dc, &dc.router, eip, &leaf_uplinks)?;

    // New connections until each rack's node has forwarded one to the
    // other rack: its forwarded counter moves while the connection opens.
    let addr = SocketAddr::new(eip, ECHO_PORT);
    let client = dc.client.clone();
    let mut crossed: BTreeMap<String, NamedClient> = BTreeMap::new();
    let mut opened = 0;
    wait_for("a flow forwarded across racks by each node", WAIT, || {
        let before = dc.forwarded_out(addr)?;
        let connection = run_in(&client, move || NamedClient::connect(addr))?;
        opened += 1;
        let after = dc.forwarded_out(addr)?;
        let forwarder = after
            .into_iter()
            .find(|(node, count)| before.get(node).is_some_and(|was| was < count));
        if let Some((node, _)) = forwarder {
            crossed.entry(node).or_insert(connection);
        }
        Ok((crossed.len() == dc.nodes.len()).then_some(()))
    })
    .with_context(|| dc.describe())?;
    println!("{opened} connections opened to find one crossing from each rack");

    // 1 MiB each way on each: the client's segments go through the tunnel
    // (their size set by the pod's clamped SYN-ACK), the pod's go straight
    // back to the client.
    let payload: String = (0..TRANSFER_BYTES)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for (forwarder, connection) in &mut crossed {
        let started = std::time::Instant::now();
        let echoed = connection
            .echo(&payload)
            .with_context(|| format!("1 MiB through {forwarder} to {}", connection.server))?;
        ensure!(
            echoed == format!("{}:{payload}", connection.server),
            "the echo through {forwarder} to {} came back altered ({} bytes)",
            connection.server,
            echoed.len()
        );
        println!(
            "1 MiB each way, forwarded by {forwarder} to {}: {:?}",
            connection.server,
            started.elapsed()
        );
    }
    let drops: BTreeMap<String, u64> = dc
        .dataplane_drops()?
        .into_iter()
        .filter(|(stat, count)| stat.contains("forward") && *count > 0)
        .collect();
    ensure!(drops.is_empty(), "forwarding drops: {drops:?}");
    Ok(())
}

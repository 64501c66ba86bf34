//! BGP policy against real daemons: FRR and BIRD receive the communities,
//! large communities and LOCAL_PREF Porter's speaker attaches (iBGP, where
//! LOCAL_PREF applies), and see changes to them; FRR turns the link bandwidth
//! extended community into weighted ECMP in the kernel, in the transitive and
//! the non-transitive form, over eBGP, with its stock configuration (what
//! `bgp bestpath bandwidth` changes is checked too), and what an FRR leaf
//! passes on to its spine. docs/bgp-policy.md
//! summarises what these tests found.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use porter_bgp::{
    Family, LinkBandwidth, LinkBandwidthPolicy, NEXT_HOP_SELF_V4, PathAttributes, PathTable,
    PeerConfig, PeerPolicy, SpeakerConfig,
};
use porter_tests::{
    datacenter::{CONTROLLER_V4, Datacenter, POD_PORT, PORTER_AS, ROUTER_LAN_V4},
    lab::{Lab, wait_for},
    manifests::{self, ServiceManifest},
    routers::{BgpLab, Daemon, LabSpeaker, Neighbor, ROUTER_V4, Router, RouterConfig, SPEAKER_V4},
};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);
/// A prefix announced through two nodes, `a` and `b`.
struct Prefix {
    net: &'static str,
    a: &'static str,
    b: &'static str,
}

const V4: Prefix = Prefix {
    net: "192.0.2.10/32",
    a: "172.30.0.11",
    b: "172.30.0.12",
};
const V6: Prefix = Prefix {
    net: "2001:db8:10::/64",
    a: "fd00:30::11",
    b: "fd00:30::12",
};
const SPEAKER_AS: u32 = 65000;
const ROUTER_AS: u32 = 65001;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// `asn:value` as an RFC 1997 community.
fn community(asn: u16, value: u16) -> u32 {
    (u32::from(asn) << 16) | u32::from(value)
}

/// `prefix` through its two nodes, each with its own attributes.
fn two_paths(prefix: &Prefix, a: PathAttributes, b: PathAttributes) -> Result<PathTable> {
    Ok(BTreeMap::from([(
        prefix.net.parse()?,
        [(ip(prefix.a), Arc::new(a)), (ip(prefix.b), Arc::new(b))]
            .into_iter()
            .collect(),
    )]))
}

fn speaker(lab: &BgpLab, remote_as: u32) -> Result<LabSpeaker> {
    let speaker = LabSpeaker::start(
        &lab.speaker_ns,
        SpeakerConfig {
            local_as: SPEAKER_AS,
            router_id: SPEAKER_V4.parse()?,
            listen: None,
            graceful_restart: None,
        },
    )?;
    let mut peer = PeerConfig::new(ROUTER_V4.parse()?, remote_as);
    peer.connect_retry = Duration::from_millis(500);
    peer.hold_time = 9;
    peer.families = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
    speaker.upsert_peer(peer)?;
    Ok(speaker)
}

/// A router in the lab's router namespace peering with the speaker in
/// `router_as` (the speaker's AS makes it iBGP).
fn router(lab: &mut BgpLab, daemon: Daemon, router_as: u32) -> Result<Router> {
    let ns = lab.router_ns.clone();
    Router::start(
        &mut lab.lab,
        &ns,
        RouterConfig {
            daemon,
            router_id: ROUTER_V4.into(),
            local_address: ROUTER_V4.parse()?,
            local_as: router_as,
            neighbors: vec![Neighbor::new(SPEAKER_V4.parse()?, SPEAKER_AS)],
            graceful_restart: false,
            passive: false,
        },
    )
}

/// What a router shows of one path's policy attributes, normalised across daemons.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    next_hop: String,
    local_pref: Option<u64>,
    /// `asn:value`, in the router's order.
    communities: Vec<String>,
    /// `global:local1:local2`.
    large_communities: Vec<String>,
}

fn frr_seen(router: &Router, lab: &Lab, prefix: &str) -> Result<Vec<Seen>> {
    let json = router.frr_route_json(lab, prefix)?;
    let words = |value: &Value, key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(|list| list.get("string"))
            .and_then(Value::as_str)
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut seen: Vec<Seen> = json
        .get("paths")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|path| Seen {
            next_hop: path
                .pointer("/nexthops/0/ip")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            local_pref: path.get("locPrf").and_then(Value::as_u64),
            communities: words(path, "community"),
            large_communities: words(path, "largeCommunity"),
        })
        .collect();
    seen.sort();
    Ok(seen)
}

/// Parses BIRD's `show route ... all`: each path starts with a line holding
/// `via <next hop>`, followed by its `BGP.*` attribute lines.
fn bird_seen(router: &Router, lab: &Lab, prefix: &str) -> Result<Vec<Seen>> {
    let text = router.bird_route_all(lab, prefix)?;
    let mut seen = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|word| *word == "via") {
            seen.push(Seen {
                next_hop: words.get(at + 1).copied().unwrap_or_default().to_owned(),
                ..Seen::default()
            });
            continue;
        }
        let Some(current) = seen.last_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        // (65000,100) (65000,200)  and  (65000, 1, 2)
        let tuples = |value: &str| -> Vec<String> {
            value
                .split(')')
                .map(|part| part.trim().trim_start_matches('(').replace([' '], ""))
                .filter(|part| !part.is_empty())
                .map(|part| part.replace(',', ":"))
                .collect()
        };
        match key.trim() {
            "BGP.local_pref" => current.local_pref = value.trim().parse().ok(),
            "BGP.community" => current.communities = tuples(value),
            "BGP.large_community" => current.large_communities = tuples(value),
            _ => {}
        }
    }
    seen.sort();
    Ok(seen)
}

fn seen(router: &Router, lab: &Lab, prefix: &str) -> Result<Vec<Seen>> {
    match router.config.daemon {
        Daemon::Frr => frr_seen(router, lab, prefix),
        Daemon::Bird => bird_seen(router, lab, prefix),
        Daemon::Gobgp => anyhow::bail!("not checked with GoBGP"),
    }
}

fn expect(
    next_hop: &str,
    local_pref: u64,
    communities: &[&str],
    large_communities: &[&str],
) -> Seen {
    Seen {
        next_hop: next_hop.into(),
        local_pref: Some(local_pref),
        communities: communities.iter().map(|c| (*c).to_owned()).collect(),
        large_communities: large_communities.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn wait_seen(router: &Router, lab: &Lab, prefix: &str, expected: &[Seen]) -> Result<()> {
    let mut last = Vec::new();
    wait_for("the router to hold the expected paths", SETTLE, || {
        last = seen(router, lab, prefix)?;
        Ok((last == expected).then_some(()))
    })
    .with_context(|| {
        format!(
            "expected {expected:#?}\nthe router holds {last:#?}\n{}",
            router.describe(lab)
        )
    })
}

/// Communities, large communities and LOCAL_PREF reach the router over
/// iBGP, per path; changing them replaces the paths there.
fn policy_attributes_reach(daemon: Daemon) -> Result<()> {
    let mut lab = BgpLab::new(&format!("pol{:?}", daemon).to_lowercase())?;
    let router = router(&mut lab, daemon, SPEAKER_AS)?;
    let speaker = speaker(&lab, SPEAKER_AS)?;
    speaker.wait_established(&lab.lab, &router, SETTLE)?;

    let pool = PathAttributes {
        communities: vec![community(65000, 200), community(65000, 100)],
        large_communities: vec![(65000, 1, 2)],
        local_pref: Some(250),
        ..PathAttributes::default()
    };
    let plain = PathAttributes::default();
    speaker.set_paths(two_paths(&V4, pool.clone(), plain)?)?;
    wait_seen(
        &router,
        &lab.lab,
        V4.net,
        &[
            expect(V4.a, 250, &["65000:100", "65000:200"], &["65000:1:2"]),
            expect(V4.b, 100, &[], &[]),
        ],
    )?;

    // A Service annotation adds a community, the pool changes its preference.
    let changed = PathAttributes {
        communities: vec![community(65000, 300)],
        large_communities: vec![(4_200_000_000, 7, 8)],
        local_pref: Some(150),
        ..PathAttributes::default()
    };
    speaker.set_paths(two_paths(&V4, changed.clone(), changed)?)?;
    wait_seen(
        &router,
        &lab.lab,
        V4.net,
        &[
            expect(V4.a, 150, &["65000:300"], &["4200000000:7:8"]),
            expect(V4.b, 150, &["65000:300"], &["4200000000:7:8"]),
        ],
    )
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_receives_communities_and_local_pref() -> Result<()> {
    policy_attributes_reach(Daemon::Frr)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bird_receives_communities_and_local_pref() -> Result<()> {
    policy_attributes_reach(Daemon::Bird)
}

/// The kernel weights of `prefix`'s next hops on the router, node `a` first.
fn weights(router: &Router, lab: &BgpLab, prefix: &Prefix) -> Result<(u32, u32)> {
    let weights = router.route_weights(&lab.lab, prefix.net)?;
    match (
        weights.get(&ip(prefix.a)),
        weights.get(&ip(prefix.b)),
        weights.len(),
    ) {
        (Some(a), Some(b), 2) => Ok((*a, *b)),
        _ => anyhow::bail!("not an ECMP route over both nodes: {weights:?}"),
    }
}

/// Waits until the kernel weights satisfy `ok`.
fn wait_weights(
    router: &Router,
    lab: &BgpLab,
    prefix: &Prefix,
    what: &str,
    ok: impl Fn(u32, u32) -> bool,
) -> Result<()> {
    wait_for(what, SETTLE, || {
        let (a, b) = weights(router, lab, prefix)?;
        Ok(ok(a, b).then_some(()))
    })
    .with_context(|| {
        format!(
            "kernel: {:?}\nFRR: {:#}\n{}",
            router.route_weights(&lab.lab, prefix.net),
            router
                .frr_route_json(&lab.lab, prefix.net)
                .unwrap_or_default(),
            router.describe(&lab.lab)
        )
    })
}

/// The link bandwidth FRR shows on each path, e.g. `LB:65000:125000000 (1.000 Gbps)`.
fn frr_link_bandwidths(router: &Router, lab: &BgpLab, prefix: &Prefix) -> Result<Vec<String>> {
    Ok(extended_communities(
        &router.frr_route_json(&lab.lab, prefix.net)?,
    ))
}

/// Each path's extended communities in `show bgp ... json`, as FRR prints them.
fn extended_communities(json: &Value) -> Vec<String> {
    json.get("paths")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|path| path.pointer("/extendedCommunity/string"))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Two next hops with link bandwidth 1:3 over eBGP: FRR installs a weighted
/// ECMP route whose kernel weights are in the same proportion; a change of
/// endpoint counts moves the weights; a path without link bandwidth makes
/// FRR fall back to plain ECMP unless `bgp bestpath bandwidth` says
/// otherwise; switching link bandwidth off for the peer (without a session
/// reset) gives plain ECMP.
fn weighted_ecmp(transitive: bool) -> Result<()> {
    let tag = if transitive { "lbt" } else { "lbn" };
    let mut lab = BgpLab::new(tag)?;
    let router = router(&mut lab, Daemon::Frr, ROUTER_AS)?;
    let speaker = speaker(&lab, ROUTER_AS)?;
    speaker.wait_established(&lab.lab, &router, SETTLE)?;
    let with_endpoints = |endpoints| PathAttributes {
        link_bandwidth: Some(LinkBandwidth::for_endpoints(endpoints, transitive)),
        ..PathAttributes::default()
    };

    speaker.set_paths(two_paths(&V4, with_endpoints(1), with_endpoints(3))?)?;
    wait_weights(&router, &lab, &V4, "weights 1:3", |a, b| a * 3 == b)?;
    let mut shown = frr_link_bandwidths(&router, &lab, &V4)?;
    shown.sort();
    ensure!(
        shown
            == [
                "LB:65000:125000000 (1.000 Gbps)",
                "LB:65000:375000000 (3.000 Gbps)"
            ],
        "FRR shows the link bandwidths {shown:?}"
    );

    speaker.set_paths(two_paths(&V4, with_endpoints(3), with_endpoints(1))?)?;
    wait_weights(&router, &lab, &V4, "weights 3:1", |a, b| a == b * 3)?;

    // A node without link bandwidth (e.g. switched off there during a
    // rollout): FRR's default is plain ECMP over all paths.
    let plain = PathAttributes::default();
    speaker.set_paths(two_paths(&V4, with_endpoints(3), plain.clone())?)?;
    wait_weights(&router, &lab, &V4, "equal weights", |a, b| a == b)?;
    // `bgp bestpath bandwidth skip-missing`: only paths with link bandwidth.
    router.frr_configure(&lab.lab, &["bgp bestpath bandwidth skip-missing"])?;
    wait_for("a route through node a only", SETTLE, || {
        let weights = router.route_weights(&lab.lab, V4.net)?;
        Ok((weights.keys().copied().collect::<Vec<_>>() == [ip(V4.a)]).then_some(()))
    })?;
    // `default-weight-for-missing`: paths without it get the least weight.
    router.frr_configure(
        &lab.lab,
        &["bgp bestpath bandwidth default-weight-for-missing"],
    )?;
    wait_weights(
        &router,
        &lab,
        &V4,
        "weight 1 for the path without",
        |a, b| b == 1 && a > b,
    )?;
    router.frr_configure(&lab.lab, &["no bgp bestpath bandwidth"])?;
    speaker.set_paths(two_paths(&V4, with_endpoints(3), with_endpoints(1))?)?;
    wait_weights(&router, &lab, &V4, "weights 3:1", |a, b| a == b * 3)?;

    let mut peer = PeerConfig::new(ROUTER_V4.parse()?, ROUTER_AS);
    peer.connect_retry = Duration::from_millis(500);
    peer.hold_time = 9;
    peer.families = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
    peer.policy = PeerPolicy {
        link_bandwidth: LinkBandwidthPolicy::Off,
        ..PeerPolicy::default()
    };
    speaker.upsert_peer(peer)?;
    wait_weights(&router, &lab, &V4, "equal weights", |a, b| a == b)?;
    ensure!(
        frr_link_bandwidths(&router, &lab, &V4)?.is_empty(),
        "no link bandwidth left at the router"
    );
    let established = speaker.status()?.first().map(|s| s.established_count);
    ensure!(
        established == Some(1),
        "a policy change re-sends paths without resetting the session: {established:?}"
    );
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_weighted_ecmp_from_transitive_link_bandwidth() -> Result<()> {
    weighted_ecmp(true)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_weighted_ecmp_from_non_transitive_link_bandwidth() -> Result<()> {
    weighted_ecmp(false)
}

/// What a spine learns from the leaf: FRR passes a link bandwidth received
/// over eBGP on to another eBGP peer or not, depending on the form.
fn spine_sees(transitive: bool) -> Result<Vec<String>> {
    let mut lab = BgpLab::new(if transitive { "spt" } else { "spn" })?;
    let spine_ns = lab.lab.netns("s")?;
    lab.lab
        .veth((&lab.router_ns, "eth1"), (&spine_ns, "eth0"))?;
    lab.lab.addr(&lab.router_ns, "eth1", "172.30.1.1/24")?;
    lab.lab.addr(&spine_ns, "eth0", "172.30.1.2/24")?;
    let ns = lab.router_ns.clone();
    let leaf = Router::start_named(
        &mut lab.lab,
        &ns,
        "leaf",
        RouterConfig {
            daemon: Daemon::Frr,
            router_id: ROUTER_V4.into(),
            local_address: ROUTER_V4.parse()?,
            local_as: ROUTER_AS,
            neighbors: vec![
                Neighbor::new(SPEAKER_V4.parse()?, SPEAKER_AS),
                Neighbor::new("172.30.1.2".parse()?, 65002),
            ],
            graceful_restart: false,
            passive: false,
        },
    )?;
    let spine = Router::start_named(
        &mut lab.lab,
        &spine_ns,
        "spine",
        RouterConfig {
            daemon: Daemon::Frr,
            router_id: "172.30.1.2".into(),
            local_address: "172.30.1.2".parse()?,
            local_as: 65002,
            neighbors: vec![Neighbor::new("172.30.1.1".parse()?, ROUTER_AS)],
            graceful_restart: false,
            passive: false,
        },
    )?;
    let speaker = speaker(&lab, ROUTER_AS)?;
    speaker.wait_established(&lab.lab, &leaf, SETTLE)?;
    let with_endpoints = |endpoints| PathAttributes {
        link_bandwidth: Some(LinkBandwidth::for_endpoints(endpoints, transitive)),
        ..PathAttributes::default()
    };
    speaker.set_paths(two_paths(&V4, with_endpoints(1), with_endpoints(3))?)?;
    wait_weights(&leaf, &lab, &V4, "weights 1:3 at the leaf", |a, b| {
        a * 3 == b
    })?;
    wait_for("the spine to learn the prefix", SETTLE, || {
        let hops = spine.next_hops(&lab.lab, V4.net)?;
        Ok((!hops.is_empty()).then_some(()))
    })
    .with_context(|| spine.describe(&lab.lab))?;
    frr_link_bandwidths(&spine, &lab, &V4)
}

/// In a leaf-spine fabric the transitive form carries the weighting one tier
/// up: the FRR leaf re-advertises the prefix to its eBGP spine with the sum
/// of its paths' bandwidth (4 endpoints here) under its own AS, so spines
/// can weight leaves by endpoints too. The non-transitive form stops at the
/// leaf (RFC 4360), and spines split evenly across leaves.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_leaf_passes_transitive_link_bandwidth_to_its_spine_as_the_sum() -> Result<()> {
    let transitive = spine_sees(true)?;
    ensure!(
        transitive == ["LB:65001:500000000 (4.000 Gbps)"],
        "the spine sees {transitive:?}"
    );
    let non_transitive = spine_sees(false)?;
    ensure!(
        non_transitive.is_empty(),
        "the spine sees {non_transitive:?}"
    );
    Ok(())
}

/// IPv6 paths (MP_REACH) carry the same extended community: FRR weights
/// them 1:3 as well.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_weighted_ecmp_for_ipv6() -> Result<()> {
    let mut lab = BgpLab::new("lb6")?;
    let router = router(&mut lab, Daemon::Frr, ROUTER_AS)?;
    let speaker = speaker(&lab, ROUTER_AS)?;
    speaker.wait_established(&lab.lab, &router, SETTLE)?;
    let with_endpoints = |endpoints| PathAttributes {
        link_bandwidth: Some(LinkBandwidth::for_endpoints(endpoints, true)),
        ..PathAttributes::default()
    };
    speaker.set_paths(two_paths(&V6, with_endpoints(1), with_endpoints(3))?)?;
    wait_weights(&router, &lab, &V6, "IPv6 weights 1:3", |a, b| a * 3 == b)
}

/// Node mode: an agent announces its EIPs with next hop self, and the
/// router installs them through the agent's own address on that link.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_routes_next_hop_self_through_the_node_speaker() -> Result<()> {
    let mut lab = BgpLab::new("nhself")?;
    let router = router(&mut lab, Daemon::Frr, ROUTER_AS)?;
    let speaker = speaker(&lab, ROUTER_AS)?;
    speaker.wait_established(&lab.lab, &router, SETTLE)?;
    speaker.set_paths(BTreeMap::from([(
        V4.net.parse()?,
        [(
            NEXT_HOP_SELF_V4,
            Arc::new(PathAttributes {
                link_bandwidth: Some(LinkBandwidth::for_endpoints(2, true)),
                ..PathAttributes::default()
            }),
        )]
        .into_iter()
        .collect(),
    )]))?;
    let expected = BTreeSet::from([ip(SPEAKER_V4)]);
    wait_for("the route via the node speaker", SETTLE, || {
        Ok((router.next_hops(&lab.lab, V4.net)? == expected).then_some(()))
    })
    .with_context(|| router.describe(&lab.lab))?;
    let shown = frr_link_bandwidths(&router, &lab, &V4)?;
    ensure!(
        shown == ["LB:65000:250000000 (2.000 Gbps)"],
        "FRR shows {shown:?}"
    );
    Ok(())
}

// ---- The controller end to end ----------------------------------------
//
// Above, the speaker is driven by hand. Below, porter-controller computes
// the paths from the cluster (pools, Services, EndpointSlices) in the
// data-centre lab (tests/src/datacenter.rs) and announces them itself.

const POOL: &str = "policy";
const NS: &str = "default";
const SERVICE_PORT: u16 = 8088;

/// BgpConf and the BgpPeer of the lab's router in `router_as`.
fn bgp_objects(router_as: u32) -> String {
    format!(
        "apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpConf\nmetadata:\n  name: default\n\
         spec:\n  as: {PORTER_AS}\n  routerId: {CONTROLLER_V4}\n  listenPort: -1\n---\n\
         apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpPeer\nmetadata:\n  name: router\n\
         spec:\n  conf:\n    peerAs: {router_as}\n    neighborAddress: {ROUTER_LAN_V4}\n  \
         timers:\n    config:\n      connectRetry: 1\n"
    )
}

/// The pool, with `bgp` (YAML lines under `spec.bgp`, indented by four) if any.
fn pool_object(bgp: &[&str]) -> String {
    let mut text = manifests::eip(POOL, "192.168.2.0/28");
    if !bgp.is_empty() {
        text.push_str("  bgp:\n");
        for line in bgp {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text
}

/// Service `web` in the pool with these extra annotations.
fn web_service(dc: &Datacenter, annotations: &[(&str, &str)]) -> Result<()> {
    let mut all = vec![("eip.porter.kubesphere.io/v1alpha2", POOL)];
    all.extend_from_slice(annotations);
    dc.apply(
        "svc-web.yaml",
        &manifests::service(&ServiceManifest {
            namespace: NS,
            name: "web",
            port: SERVICE_PORT,
            target_port: POD_PORT,
            annotations: &all,
            ipv6: false,
            cluster: false,
        }),
    )
}

/// Waits for `ip`'s kernel route on the router to have these weights per node.
fn wait_dc_weights(dc: &Datacenter, ip: IpAddr, want: &[(usize, u32)]) -> Result<()> {
    let prefix = format!("{ip}/32");
    let want: BTreeMap<IpAddr, u32> = want.iter().map(|(i, w)| (dc.nodes[*i].ip, *w)).collect();
    wait_for(
        &format!("kernel weights {want:?} for {prefix}"),
        SETTLE,
        || Ok((dc.router.route_weights(&dc.lab, &prefix)? == want).then_some(())),
    )
    .with_context(|| {
        format!(
            "kernel: {:?}\nFRR: {:#}\n{}",
            dc.router.route_weights(&dc.lab, &prefix),
            dc.router
                .frr_route_json(&dc.lab, &prefix)
                .unwrap_or_default(),
            dc.describe()
        )
    })
}

/// Requests for the per-pod split. Each of the 4 pods should answer
/// N/4 of them: with every connection hashed independently (the router by
/// L4 ports over the weighted next hops, then the node's agent by Maglev
/// over its pods), a pod's count is Binomial(N, 1/4), σ = √(N·3/16) ≈ 33.5
/// for N = 6000. ±10 % of even is ±150 requests ≈ 4.5σ, so a correct split
/// fails the check with probability ≈ 3·10⁻⁵ over the 4 pods; plain
/// per-node ECMP (n1's only pod would get 1/2, 3000) fails it by 45σ.
const SPLIT_REQUESTS: usize = 6000;

/// With pods split 1:3 over two nodes, the controller's own announcements
/// make FRR install weights 25/75, and requests through FRR reach every pod
/// equally (within ±10 %). The Service's `link-bandwidth: off` annotation
/// then brings back plain per-node ECMP.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn controller_weighted_ecmp_through_frr_splits_requests_per_pod() -> Result<()> {
    let mut dc = Datacenter::with_router("polsplit", &[1, 3], Daemon::Frr, ROUTER_AS)?;
    dc.apply("bgp.yaml", &bgp_objects(ROUTER_AS))?;
    dc.apply("pools.yaml", &pool_object(&[]))?;
    dc.set_endpoints(NS, "web", &dc.endpoints_on(&[0, 1]))?;
    web_service(&dc, &[])?;
    for index in 0..dc.nodes.len() {
        dc.start_agent(index)?;
    }
    dc.start_controller()?;
    let ip = dc.wait_service_ip(NS, "web", SETTLE)?;
    wait_dc_weights(&dc, ip, &[(0, 25), (1, 75)])?;
    let lbs = frr_dc_link_bandwidths(&dc, ip)?;
    ensure!(
        lbs.iter().any(|l| l.contains("LB:65000:125000000"))
            && lbs.iter().any(|l| l.contains("LB:65000:375000000")),
        "FRR shows link bandwidths {lbs:?}, expected 1 and 3 endpoints' worth"
    );

    let addr = SocketAddr::new(ip, SERVICE_PORT);
    let per_pod = dc.spread(addr, SPLIT_REQUESTS)?;
    let pods: Vec<&str> = dc
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.name.as_str()))
        .collect();
    let even = SPLIT_REQUESTS as f64 / pods.len() as f64;
    println!("{SPLIT_REQUESTS} requests per pod: {per_pod:?} (even: {even})");
    for pod in &pods {
        let got = per_pod.get(*pod).copied().unwrap_or(0) as f64;
        ensure!(
            (got - even).abs() <= 0.1 * even,
            "pod {pod} answered {got} of {SPLIT_REQUESTS} requests, more than 10 % off the even {even}: {per_pod:?}"
        );
    }

    // Plain ECMP for this Service: equal weights, no link bandwidth.
    web_service(&dc, &[("bgp.porter.kubesphere.io/link-bandwidth", "off")])?;
    wait_dc_weights(&dc, ip, &[(0, 1), (1, 1)])?;
    ensure!(
        frr_dc_link_bandwidths(&dc, ip)?.is_empty(),
        "link bandwidth still sent after the Service switched it off"
    );
    Ok(())
}

fn frr_dc_link_bandwidths(dc: &Datacenter, ip: IpAddr) -> Result<Vec<String>> {
    Ok(extended_communities(
        &dc.router.frr_route_json(&dc.lab, &format!("{ip}/32"))?,
    ))
}

/// The pool's communities and large communities, a Service annotation's
/// community, and LOCAL_PREF (the pool's, then the Service's override)
/// reach the router over iBGP from the controller, on every node's path.
/// A community the pool does not allow its Services never does.
fn controller_policy_reaches(daemon: Daemon) -> Result<()> {
    let tag = format!("polctl{daemon:?}").to_lowercase();
    let mut dc = Datacenter::with_router(&tag, &[1, 1], daemon, PORTER_AS)?;
    dc.apply("bgp.yaml", &bgp_objects(PORTER_AS))?;
    dc.apply(
        "pools.yaml",
        &pool_object(&[
            "communities: [\"65000:100\"]",
            "largeCommunities: [\"65000:1:2\"]",
            "localPref: 200",
            "serviceAttributes: {communities: [\"65000:300\"], localPref: true}",
        ]),
    )?;
    dc.set_endpoints(NS, "web", &dc.endpoints_on(&[0, 1]))?;
    web_service(
        &dc,
        &[(
            "bgp.porter.kubesphere.io/communities",
            "65000:300,65000:666",
        )],
    )?;
    dc.start_controller()?;
    let ip = dc.wait_service_ip(NS, "web", SETTLE)?;
    let prefix = format!("{ip}/32");
    let paths = |local_pref| -> Vec<Seen> {
        let mut all: Vec<Seen> = dc
            .nodes
            .iter()
            .map(|n| {
                expect(
                    &n.ip.to_string(),
                    local_pref,
                    &["65000:100", "65000:300"],
                    &["65000:1:2"],
                )
            })
            .collect();
        all.sort();
        all
    };
    wait_seen(&dc.router, &dc.lab, &prefix, &paths(200))?;
    web_service(
        &dc,
        &[
            (
                "bgp.porter.kubesphere.io/communities",
                "65000:300,65000:666",
            ),
            ("bgp.porter.kubesphere.io/local-pref", "300"),
        ],
    )?;
    wait_seen(&dc.router, &dc.lab, &prefix, &paths(300))
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn controller_policy_reaches_frr() -> Result<()> {
    controller_policy_reaches(Daemon::Frr)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn controller_policy_reaches_bird() -> Result<()> {
    controller_policy_reaches(Daemon::Bird)
}

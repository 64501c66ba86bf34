//! Layer 2 mode in XDP, packet by packet through BPF_PROG_TEST_RUN: ARP
//! requests and neighbour solicitations for led EIPs are answered in place
//! (compared byte for byte with replies built independently by
//! etherparse); everything else passes unmodified. Then the lab: a client
//! and three nodes on one segment, the client's ARP and NDP resolving to
//! the elected node, and failover when that node crashes.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context, Result};
use etherparse::{Icmpv6Type, PacketBuilder, icmpv6::NeighborAdvertisementHeader};
use porter_agent::{
    Dataplane,
    l2_interface::L2Interface,
    layer2::announce::{TAKEOVER_COPIES, TAKEOVER_INTERVAL},
};
use porter_common::Stat;
use porter_tests::{
    lab::{Lab, wait_for},
    layer2_lab::{self, L2Lab, POOL, POOL6, pod_of},
    packets::{self, checked_summary},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const EIP4: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 100);
const OTHER4: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 101);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 2);
const EIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0x100);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0x101);

/// Leaderships in these tests outlive them.
const HOUR: Duration = Duration::from_secs(3600);

/// BPF_PROG_TEST_RUN packets arrive on loopback.
const LOOPBACK: L2Interface = L2Interface {
    ifindex: 1,
    mac: NODE_MAC,
};

struct Bench {
    _lab: Lab,
    dataplane: Dataplane,
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let (_, mut dataplane) = packets::test_dataplane(&mut lab)?;
        dataplane.set_l2_leaderships_on(
            &[LOOPBACK],
            &BTreeSet::from([IpAddr::V4(EIP4), IpAddr::V6(EIP6)]),
            HOUR,
        )?;
        Ok(Self {
            _lab: lab,
            dataplane,
        })
    }

    fn run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        packets::xdp_test_run(&mut self.dataplane, packet)
    }

    fn stat(&self, wanted: Stat) -> Result<u64> {
        Ok(self
            .dataplane
            .global_counters()?
            .into_iter()
            .find_map(|(stat, value)| (stat == wanted).then_some(value))
            .unwrap_or(0))
    }
}

/// An ARP packet in an Ethernet frame padded to the 60-byte minimum, as on a wire.
fn arp(
    eth: ([u8; 6], [u8; 6]),
    vlan: Option<u16>,
    op: u16,
    sender: ([u8; 6], Ipv4Addr),
    target: ([u8; 6], Ipv4Addr),
) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&eth.0);
    frame.extend_from_slice(&eth.1);
    if let Some(id) = vlan {
        frame.extend_from_slice(&[0x81, 0x00]);
        frame.extend_from_slice(&id.to_be_bytes());
    }
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    frame.extend_from_slice(&op.to_be_bytes());
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&sender.1.octets());
    frame.extend_from_slice(&target.0);
    frame.extend_from_slice(&target.1.octets());
    frame.resize(frame.len().max(60), 0);
    frame
}

const BROADCAST: [u8; 6] = [0xff; 6];

fn arp_request(target: Ipv4Addr, vlan: Option<u16>) -> Vec<u8> {
    arp(
        (BROADCAST, CLIENT_MAC),
        vlan,
        1,
        (CLIENT_MAC, CLIENT4),
        ([0; 6], target),
    )
}

fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let t = target.octets();
    let group = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    (group, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// A neighbour solicitation for `target` from `src`, multicast to the
/// target's solicited-node group with the given options after the target.
fn solicitation(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8, options: &[u8]) -> Result<Vec<u8>> {
    let (group, group_mac) = solicited_node(target);
    let mut payload = target.octets().to_vec();
    payload.extend_from_slice(options);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, group_mac)
        .ipv6(src.octets(), group.octets(), hop_limit)
        .icmpv6(Icmpv6Type::NeighborSolicitation)
        .write(&mut out, &payload)?;
    Ok(out)
}

fn source_ll_option() -> Vec<u8> {
    let mut option = vec![1, 1];
    option.extend_from_slice(&CLIENT_MAC);
    option
}

/// The advertisement a correct responder sends: solicited + override, from
/// the EIP to the requester, with the target link-layer option if asked.
fn advertisement(with_option: bool) -> Result<Vec<u8>> {
    let mut payload = EIP6.octets().to_vec();
    if with_option {
        payload.extend_from_slice(&[2, 1]);
        payload.extend_from_slice(&NODE_MAC);
    }
    let mut out = Vec::new();
    PacketBuilder::ethernet2(NODE_MAC, CLIENT_MAC)
        .ipv6(EIP6.octets(), CLIENT6.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            NeighborAdvertisementHeader {
                router: false,
                solicited: true,
                r#override: true,
            },
        ))
        .write(&mut out, &payload)?;
    Ok(out)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn arp_requests_for_led_eips_are_answered_and_others_pass() -> Result<()> {
    let mut bench = Bench::new("l2arp")?;

    let expected_reply = |vlan| {
        arp(
            (CLIENT_MAC, NODE_MAC),
            vlan,
            2,
            (NODE_MAC, EIP4),
            (CLIENT_MAC, CLIENT4),
        )
    };
    for vlan in [None, Some(10)] {
        let (action, out) = bench.run(&arp_request(EIP4, vlan))?;
        assert_eq!(action, XDP_TX, "led EIP, vlan {vlan:?}");
        assert_eq!(out, expected_reply(vlan), "ARP reply bytes, vlan {vlan:?}");
    }
    assert_eq!(bench.stat(Stat::ArpAnswered)?, 2);

    let mut truncated = arp_request(EIP4, None);
    truncated.truncate(14 + 27);
    let mut wrong_hlen = arp_request(EIP4, None);
    wrong_hlen[14 + 4] = 8;
    let mut not_ipv4 = arp_request(EIP4, None);
    not_ipv4[14 + 2..14 + 4].copy_from_slice(&[0x86, 0xdd]);
    let must_pass: Vec<(&str, Vec<u8>)> = vec![
        ("an EIP this node does not lead", arp_request(OTHER4, None)),
        (
            "a reply, not a request",
            arp(
                (NODE_MAC, CLIENT_MAC),
                None,
                2,
                (CLIENT_MAC, CLIENT4),
                (NODE_MAC, EIP4),
            ),
        ),
        (
            "a gratuitous ARP for the EIP from someone else",
            arp(
                (BROADCAST, CLIENT_MAC),
                None,
                1,
                (CLIENT_MAC, EIP4),
                ([0; 6], EIP4),
            ),
        ),
        ("truncated", truncated),
        ("hardware address length 8", wrong_hlen),
        ("protocol type not IPv4", not_ipv4),
    ];
    for (case, packet) in &must_pass {
        let (action, out) = bench.run(packet)?;
        assert_eq!(action, XDP_PASS, "{case}");
        assert_eq!(&out, packet, "{case}: unmodified");
    }
    assert_eq!(bench.stat(Stat::ArpAnswered)?, 2, "nothing else answered");

    // Leadership moves away: the node stops answering at once.
    bench.dataplane.set_l2_leaderships_on(
        &[LOOPBACK],
        &BTreeSet::from([IpAddr::V4(OTHER4)]),
        HOUR,
    )?;
    let request = arp_request(EIP4, None);
    assert_eq!(bench.run(&request)?, (XDP_PASS, request.clone()));
    assert_eq!(bench.run(&arp_request(OTHER4, None))?.0, XDP_TX);

    // Led on another interface only: not answered on this one.
    let elsewhere = L2Interface {
        ifindex: 999,
        mac: NODE_MAC,
    };
    bench.dataplane.set_l2_leaderships_on(
        &[elsewhere],
        &BTreeSet::from([IpAddr::V4(EIP4)]),
        HOUR,
    )?;
    assert_eq!(bench.run(&request)?, (XDP_PASS, request.clone()));

    // A lease that ran out (the agent stopped renewing): no answer, even
    // though the entry is still in the map.
    bench.dataplane.set_l2_leaderships_on(
        &[LOOPBACK],
        &BTreeSet::from([IpAddr::V4(EIP4)]),
        Duration::ZERO,
    )?;
    assert_eq!(bench.run(&request)?, (XDP_PASS, request));
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn neighbour_solicitations_for_led_eips_are_answered_and_others_pass() -> Result<()> {
    let mut bench = Bench::new("l2ndp")?;

    // Multicast, with the source link-layer option: answered with the
    // target link-layer option, same size.
    let request = solicitation(CLIENT6, EIP6, 255, &source_ll_option())?;
    let (action, out) = bench.run(&request)?;
    assert_eq!(action, XDP_TX);
    checked_summary(&out).context("the advertisement's checksum")?;
    assert_eq!(out, advertisement(true)?, "NA bytes");

    // Unicast reachability probe without options: answered without one.
    let mut unicast = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv6(CLIENT6.octets(), EIP6.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation)
        .write(&mut unicast, &EIP6.octets())?;
    let (action, out) = bench.run(&unicast)?;
    assert_eq!(action, XDP_TX);
    assert_eq!(out, advertisement(false)?, "NA bytes without option");

    // A further option (a DAD nonce, 8 bytes) is dropped from the answer.
    let mut options = source_ll_option();
    options.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let (action, out) = bench.run(&solicitation(CLIENT6, EIP6, 255, &options)?)?;
    assert_eq!(action, XDP_TX);
    assert_eq!(out, advertisement(true)?, "NA bytes after a longer NS");
    assert_eq!(bench.stat(Stat::NdpAnswered)?, 3);

    let mut wrong_code = solicitation(CLIENT6, EIP6, 255, &source_ll_option())?;
    wrong_code[14 + 40 + 1] = 1;
    let mut short = solicitation(CLIENT6, EIP6, 255, &[])?;
    // ICMPv6 length 20: shorter than any solicitation.
    short.truncate(14 + 40 + 20);
    short[14 + 5] = 20;
    let must_pass: Vec<(&str, Vec<u8>)> = vec![
        (
            "an EIP this node does not lead",
            solicitation(CLIENT6, OTHER6, 255, &source_ll_option())?,
        ),
        (
            "hop limit 64 (it crossed a router)",
            solicitation(CLIENT6, EIP6, 64, &source_ll_option())?,
        ),
        (
            "duplicate address detection (source ::)",
            solicitation(Ipv6Addr::UNSPECIFIED, EIP6, 255, &[])?,
        ),
        ("code 1", wrong_code),
        ("shorter than a solicitation", short),
    ];
    for (case, packet) in &must_pass {
        let (action, out) = bench.run(packet)?;
        assert_eq!(action, XDP_PASS, "{case}");
        assert_eq!(&out, packet, "{case}: unmodified");
    }
    assert_eq!(bench.stat(Stat::NdpAnswered)?, 3, "nothing else answered");

    bench
        .dataplane
        .set_l2_leaderships_on(&[LOOPBACK], &BTreeSet::new(), HOUR)?;
    assert_eq!(bench.run(&request)?, (XDP_PASS, request));
    Ok(())
}

/// Waits until the client's neighbour entry for `ip` is `mac`.
fn neighbour_becomes(lab: &L2Lab, ip: &str, mac: &str) -> Result<()> {
    wait_for(
        &format!("the client's neighbour entry for {ip} to be {mac}"),
        Duration::from_secs(5),
        || Ok((lab.client_neighbour(ip)?.as_deref() == Some(mac)).then_some(())),
    )
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn the_elected_node_answers_arp_and_ndp_and_a_crash_fails_over() -> Result<()> {
    let (eip4, eip6) = (layer2_lab::EIP, layer2_lab::EIP6);
    let mut lab = L2Lab::new("l2lab", 3)?;
    let names = lab.start_porter()?;
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader4 = L2Lab::expected_leader(layer2_lab::EIP, &all)?;
    let leader6 = L2Lab::expected_leader(layer2_lab::EIP6, &all)?;
    // The Eip status names the announcing node of each address.
    lab.announcer_becomes(POOL, eip4, leader4)?;
    lab.announcer_becomes(POOL6, eip6, leader6)?;

    // The client resolves each layer2_lab::EIP to its elected node, and reaches its pod.
    lab.flush_client_neighbours()?;
    lab.until_answered_by(layer2_lab::EIP, &pod_of(leader4), Duration::from_secs(10))?;
    assert_eq!(
        lab.client_neighbour(layer2_lab::EIP)?,
        Some(lab.node_mac(leader4)?),
        "ARP resolved to the leader"
    );
    lab.until_answered_by(layer2_lab::EIP6, &pod_of(leader6), Duration::from_secs(10))?;
    assert_eq!(
        lab.client_neighbour(layer2_lab::EIP6)?,
        Some(lab.node_mac(leader6)?),
        "NDP resolved to the leader"
    );
    // Resolve a few more times: only the leaders ever answer.
    for _ in 0..3 {
        lab.flush_client_neighbours()?;
        assert_eq!(
            lab.request(layer2_lab::EIP, Duration::from_secs(2))?,
            pod_of(leader4)
        );
        assert_eq!(
            lab.request(layer2_lab::EIP6, Duration::from_secs(2))?,
            pod_of(leader6)
        );
    }
    for name in &all {
        let (arp, ndp) = lab.answered(name)?;
        if *name == leader4 {
            assert!(arp > 0, "{name} leads {eip4} but answered no ARP");
        } else {
            assert_eq!(arp, 0, "{name} does not lead {eip4} but answered ARP");
        }
        if *name == leader6 {
            assert!(ndp > 0, "{name} leads {eip6} but answered no NS");
        } else {
            assert_eq!(ndp, 0, "{name} does not lead {eip6} but answered NS");
        }
    }

    // `porter-agent inspect` on each node shows what it leads.
    for name in &all {
        let table = lab.inspect(name)?;
        for (eip, leader) in [(eip4, leader4), (eip6, leader6)] {
            let line = table.lines().find(|l| l.starts_with(&format!("{eip} ")));
            if *name == leader {
                assert!(
                    line.is_some_and(|l| l.contains("eth0") && l.ends_with("answering")),
                    "{name} leads {eip} but inspect says:\n{table}"
                );
            } else {
                assert!(
                    line.is_none(),
                    "{name} does not lead {eip} but inspect says:\n{table}"
                );
            }
        }
    }

    // The IPv4 leader crashes.
    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != leader4).collect();
    let successor4 = L2Lab::expected_leader(eip4, &survivors)?;
    let successor6 = L2Lab::expected_leader(eip6, &survivors)?;
    let crashed = std::time::Instant::now();
    lab.crash(leader4)?;
    let failover = lab.until_answered_by(eip4, &pod_of(successor4), Duration::from_secs(10))?;
    println!(
        "layer 2 failover: {leader4} crashed, {successor4} answered {eip4} after {:.3} s",
        failover.as_secs_f64()
    );
    neighbour_becomes(&lab, eip4, &lab.node_mac(successor4)?)?;
    // The status follows, and the Service is told.
    lab.announcer_becomes(POOL, eip4, successor4)?;
    let told = format!("node {successor4} now answers ARP for {eip4}");
    let events = lab.events()?;
    assert!(
        events.iter().any(|e| e.contains("Layer2Announcing")
            && e.contains("Service shop/web")
            && e.contains(&told)),
        "no Event \"{told}\" in {events:#?}"
    );
    lab.announcer_becomes(POOL6, eip6, successor6)?;
    if successor6 != leader6 {
        // The IPv6 leader crashed too: NDP failed over as well.
        lab.until_answered_by(eip6, &pod_of(successor6), Duration::from_secs(10))?;
        neighbour_becomes(&lab, eip6, &lab.node_mac(successor6)?)?;
        println!(
            "layer 2: {eip6} on {successor6} {:.3} s after the crash",
            crashed.elapsed().as_secs_f64()
        );
    }

    // The node comes back at once and takes its EIP back, possibly while
    // the successor's takeover announcements are still going: they must stop
    // when it hands over, or they would pull the client back to it (whether
    // they overlap depends on timing; `cargo xtask bench layer2` hands back
    // ten times).
    lab.revive(leader4)?;
    lab.until_answered_by(eip4, &pod_of(leader4), Duration::from_secs(10))?;
    let leader_mac = lab.node_mac(leader4)?;
    neighbour_becomes(&lab, eip4, &leader_mac)?;
    lab.announcer_becomes(POOL, eip4, leader4)?;
    let series = TAKEOVER_INTERVAL * TAKEOVER_COPIES + TAKEOVER_INTERVAL;
    let watched = std::time::Instant::now();
    while watched.elapsed() < series {
        assert_eq!(
            lab.client_neighbour(eip4)?.as_deref(),
            Some(leader_mac.as_str()),
            "after the handback, the client's entry for {eip4} moved away from {leader4}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.request(eip4, Duration::from_secs(2))?, pod_of(leader4));
    lab.until_answered_by(eip6, &pod_of(leader6), Duration::from_secs(10))
        .with_context(|| {
            format!(
                "{eip6} back on {leader6}: entry {:?}",
                lab.client_neighbour(eip6)
            )
        })?;
    neighbour_becomes(&lab, eip6, &lab.node_mac(leader6)?)?;
    Ok(())
}

/// A leader whose agent restarts unable to program its data plane (maps
/// pinned with another Maglev size) says so on its Node (a DataplaneFrozen
/// Event; its condition takes it out of the candidates, which the
/// `candidates` unit tests check) and renews no lease, so the other node
/// takes the address over within about a lease. Restarted as before, it
/// takes it back.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn a_leader_whose_data_plane_is_frozen_hands_its_address_over() -> Result<()> {
    let eip = layer2_lab::EIP;
    let mut lab = L2Lab::new("l2frozen", 2)?;
    let names = lab.start_porter()?;
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader = L2Lab::expected_leader(eip, &all)?;
    let other = *all.iter().find(|n| **n != leader).context("two nodes")?;
    lab.announcer_becomes(POOL, eip, leader)?;
    lab.until_answered_by(eip, &pod_of(leader), Duration::from_secs(10))?;

    lab.lab
        .stop(&format!("agent-{leader}"), Duration::from_secs(2))?;
    let frozen = std::time::Instant::now();
    // 1013: prime, and not the size the maps were pinned with.
    lab.spawn_agent(leader, 1013)?;
    lab.until_answered_by(eip, &pod_of(other), Duration::from_secs(10))?;
    println!(
        "layer 2: {eip} on {other} {:.3} s after {leader}'s data plane froze",
        frozen.elapsed().as_secs_f64()
    );
    neighbour_becomes(&lab, eip, &lab.node_mac(other)?)?;
    lab.announcer_becomes(POOL, eip, other)?;
    // The agent writes its Event beside its lease round, not before it.
    let mut events = Vec::new();
    wait_for(
        "a DataplaneFrozen Event on the frozen leader's Node",
        Duration::from_secs(10),
        || {
            events = lab.events()?;
            Ok(events
                .iter()
                .any(|e| e.contains("DataplaneFrozen") && e.contains(&format!("Node {leader}")))
                .then_some(()))
        },
    )
    .with_context(|| format!("events: {events:#?}"))?;

    lab.lab
        .stop(&format!("agent-{leader}"), Duration::from_secs(2))?;
    lab.start(leader)?;
    lab.until_answered_by(eip, &pod_of(leader), Duration::from_secs(10))?;
    lab.announcer_becomes(POOL, eip, leader)?;
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn the_leader_spreads_cluster_traffic_over_every_nodes_pod() -> Result<()> {
    let eip = layer2_lab::EIP;
    let mut lab = L2Lab::new("l2cl", 3)?;
    lab.set_policy("Cluster")?;
    let names = lab.start_porter()?;
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader = L2Lab::expected_leader(eip, &all)?;
    lab.announcer_becomes(POOL, eip, leader)?;
    lab.flush_client_neighbours()?;
    // All traffic arrives at the leader, whose table spreads it over the
    // pods of all three nodes (one each).
    let mut answered: std::collections::BTreeMap<String, usize> = Default::default();
    wait_for(
        "every pod to answer through the leader",
        Duration::from_secs(20),
        || {
            let pod = lab.request(eip, Duration::from_secs(1))?;
            *answered.entry(pod).or_default() += 1;
            Ok((answered.len() == all.len()).then_some(()))
        },
    )?;
    for _ in 0..30 {
        let pod = lab.request(eip, Duration::from_secs(2))?;
        *answered.entry(pod).or_default() += 1;
    }
    println!("through leader {leader}: {answered:?}");
    for name in &all {
        assert!(
            answered.get(&pod_of(name)).is_some_and(|&n| n > 0),
            "{answered:?}"
        );
    }
    assert_eq!(
        lab.client_neighbour(eip)?,
        Some(lab.node_mac(leader)?),
        "ARP still resolves to the leader alone"
    );
    for name in &all {
        let (arp, _) = lab.answered(name)?;
        assert_eq!(
            arp > 0,
            *name == leader,
            "{name} answered {arp} ARP requests"
        );
    }
    Ok(())
}

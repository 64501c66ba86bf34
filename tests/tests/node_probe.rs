//! The node liveness probe (central mode), answered by the XDP program
//! itself, through BPF_PROG_TEST_RUN: exact reply bytes (addresses, ports
//! and MACs swapped, the kind turned to reply, the checksum computed
//! afresh), and every
//! near miss passed untouched.
use std::net::IpAddr;

use anyhow::{Context, Result};
use etherparse::PacketBuilder;
use porter_agent::{Dataplane, PinLayout, stats};
use porter_common::{Stat, probe};
use porter_tests::{
    lab::Lab,
    packets::{self, CLIENT_MAC, NODE_MAC, checked_summary},
    scenarios,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const CONTROLLER_PORT: u16 = 41_234;
const TOKEN: u64 = 0x1122_3344_5566_7788;
/// This node's addresses (see [`node`]).
const NODE4: &str = "172.30.0.11";
const NODE6: &str = "fd00:30::11";
/// Another node on its segment.
const PEER4: &str = "172.30.0.12";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// An Ethernet + IP + UDP frame from `src` to `dst` with `payload`.
fn udp_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    payload: &[u8],
) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let mut frame = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .udp(sport, dport)
            .write(&mut frame, payload)?,
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .udp(sport, dport)
            .write(&mut frame, payload)?,
        _ => anyhow::bail!("mixed families"),
    }
    Ok(frame)
}

/// The controller's request to `node`, as the node receives it.
fn request(controller: IpAddr, node: IpAddr) -> Result<Vec<u8>> {
    udp_frame(
        (CLIENT_MAC, NODE_MAC),
        (controller, CONTROLLER_PORT),
        (node, probe::PORT),
        &probe::request(TOKEN),
    )
}

/// The reply the node must send back: built from scratch, checksums by etherparse.
fn expected_reply(controller: IpAddr, node: IpAddr) -> Result<Vec<u8>> {
    let mut payload = probe::request(TOKEN);
    payload[4] = probe::REPLY;
    udp_frame(
        (NODE_MAC, CLIENT_MAC),
        (node, probe::PORT),
        (controller, CONTROLLER_PORT),
        &payload,
    )
}

/// A data plane run as on node [`NODE4`] / [`NODE6`] of
/// `scenarios::enter_cluster_node` (this thread enters its namespace, with
/// IP forwarding on, as on every Kubernetes node), and its uplink.
fn node(lab: &mut Lab) -> Result<(PinLayout, Dataplane, u32)> {
    let (pins, dataplane) = packets::test_dataplane(lab)?;
    let uplink = scenarios::enter_cluster_node(lab)?;
    Ok((pins, dataplane, uplink))
}

fn run(dataplane: &mut Dataplane, uplink: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    packets::xdp_test_run_on(dataplane, frame, Some(uplink))
}

/// Offset of the UDP checksum in an untagged frame.
fn udp_check_offset(frame: &[u8]) -> usize {
    let l3 = if frame[12..14] == [0x08, 0x00] {
        20
    } else {
        40
    };
    14 + l3 + 6
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn probes_are_answered_in_xdp_with_exact_bytes() -> Result<()> {
    let mut lab = Lab::new("probe")?;
    let (pins, mut dataplane, uplink) = node(&mut lab)?;
    let cases = [
        ("v4", ip("172.30.0.10"), ip(NODE4)),
        ("v6", ip("fd00:30::10"), ip(NODE6)),
    ];
    for (case, controller, node) in cases {
        let (action, out) = run(&mut dataplane, uplink, &request(controller, node)?)?;
        assert_eq!(action, XDP_TX, "{case}: a probe is answered in XDP");
        assert_eq!(
            out,
            expected_reply(controller, node)?,
            "{case}: reply bytes"
        );
        let reply = checked_summary(&out).with_context(|| format!("{case}: checksums"))?;
        assert_ne!(reply.l4_check, 0, "{case}: the checksum is kept");
        let token = probe::reply_token(&out[out.len() - probe::LEN..]);
        assert_eq!(token, Some(TOKEN), "{case}: the controller reads its reply");
    }

    // A request with any checksum (none, or only the pseudo-header part,
    // as a veth or an offloading NIC delivers it) gets a full one back.
    let (controller, node) = (ip("172.30.0.10"), ip(NODE4));
    let wanted = expected_reply(controller, node)?;
    for check in [[0, 0], [0x12, 0x34]] {
        let mut partial = request(controller, node)?;
        let at = udp_check_offset(&partial);
        partial[at..at + 2].copy_from_slice(&check);
        let (action, out) = run(&mut dataplane, uplink, &partial)?;
        assert_eq!(
            (action, &out),
            (XDP_TX, &wanted),
            "request checksum {check:?}"
        );
    }

    assert_eq!(stats::read_stat(&pins, Stat::ProbeAnswered)?, 4);
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn near_miss_probes_pass_untouched() -> Result<()> {
    let mut lab = Lab::new("probemiss")?;
    let (pins, mut dataplane, uplink) = node(&mut lab)?;
    let (controller, node) = (ip("172.30.0.10"), ip(NODE4));
    let macs = (CLIENT_MAC, NODE_MAC);
    let good = probe::request(TOKEN);
    let mut reply = good;
    reply[4] = probe::REPLY;
    let mut bad_magic = good;
    bad_magic[0] ^= 1;
    let mut bad_reserved = good;
    bad_reserved[5] = 1;
    let mut long = good.to_vec();
    long.push(0);
    let to = |port: u16, payload: &[u8]| {
        udp_frame(macs, (controller, CONTROLLER_PORT), (node, port), payload)
    };
    let whole = request(controller, node)?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("BFD control port", to(3784, &good)?),
        ("another port", to(probe::PORT + 1, &good)?),
        // A reply is never answered: two nodes' programs cannot ping-pong.
        ("a reply", to(probe::PORT, &reply)?),
        ("wrong magic", to(probe::PORT, &bad_magic)?),
        ("reserved bytes set", to(probe::PORT, &bad_reserved)?),
        ("payload short", to(probe::PORT, &good[..probe::LEN - 1])?),
        ("payload long", to(probe::PORT, &long)?),
        ("empty payload", to(probe::PORT, &[])?),
        (
            "frame cut in the payload",
            whole[..whole.len() - 4].to_vec(),
        ),
        // Another node's address (a frame a switch flooded): never answered
        // for it, or a live node would stand in for a dead one.
        (
            "another node's address",
            udp_frame(
                macs,
                (controller, CONTROLLER_PORT),
                (ip(PEER4), probe::PORT),
                &good,
            )?,
        ),
    ];
    for (case, frame) in cases {
        let (action, out) = run(&mut dataplane, uplink, &frame)?;
        assert_eq!(action, XDP_PASS, "{case}: passed");
        assert_eq!(out, frame, "{case}: untouched");
    }
    assert_eq!(stats::read_stat(&pins, Stat::ProbeAnswered)?, 0);
    Ok(())
}

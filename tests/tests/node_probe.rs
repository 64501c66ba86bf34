//! The node liveness probe (central mode), answered by the XDP program
//! itself, through BPF_PROG_TEST_RUN: exact reply bytes (addresses, ports
//! and MACs swapped, the kind turned to reply, checksums valid), and every
//! near miss passed untouched.
use std::net::IpAddr;

use anyhow::{Context, Result};
use etherparse::PacketBuilder;
use porter_agent::stats;
use porter_common::{Stat, probe};
use porter_tests::{
    lab::Lab,
    packets::{self, CLIENT_MAC, NODE_MAC, checked_summary},
    privilege,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const CONTROLLER_PORT: u16 = 41_234;
const TOKEN: u64 = 0x1122_3344_5566_7788;

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
fn probes_are_answered_in_xdp_with_exact_bytes() -> Result<()> {
    if !privilege::can_run("probes_are_answered_in_xdp_with_exact_bytes") {
        return Ok(());
    }
    let mut lab = Lab::new("probe")?;
    let (pins, mut dataplane) = packets::test_dataplane(&mut lab)?;
    let cases = [
        ("v4", ip("172.30.0.10"), ip("172.30.0.11")),
        ("v6", ip("fd00:30::10"), ip("fd00:30::11")),
    ];
    for (case, controller, node) in cases {
        let (action, out) = packets::xdp_test_run(&mut dataplane, &request(controller, node)?)?;
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

    // An IPv4 probe without a UDP checksum gets a reply without one.
    let (controller, node) = (ip("172.30.0.10"), ip("172.30.0.11"));
    let mut unchecked = request(controller, node)?;
    let at = udp_check_offset(&unchecked);
    unchecked[at..at + 2].copy_from_slice(&[0, 0]);
    let mut wanted = expected_reply(controller, node)?;
    wanted[at..at + 2].copy_from_slice(&[0, 0]);
    let (action, out) = packets::xdp_test_run(&mut dataplane, &unchecked)?;
    assert_eq!((action, out), (XDP_TX, wanted), "checksum 0 stays 0");

    assert_eq!(stats::read_stat(&pins, Stat::ProbeAnswered)?, 3);
    Ok(())
}

#[test]
fn near_miss_probes_pass_untouched() -> Result<()> {
    if !privilege::can_run("near_miss_probes_pass_untouched") {
        return Ok(());
    }
    let mut lab = Lab::new("probemiss")?;
    let (pins, mut dataplane) = packets::test_dataplane(&mut lab)?;
    let (controller, node) = (ip("172.30.0.10"), ip("172.30.0.11"));
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
    ];
    for (case, frame) in cases {
        let (action, out) = packets::xdp_test_run(&mut dataplane, &frame)?;
        assert_eq!(action, XDP_PASS, "{case}: passed");
        assert_eq!(out, frame, "{case}: untouched");
    }
    assert_eq!(stats::read_stat(&pins, Stat::ProbeAnswered)?, 0);
    Ok(())
}

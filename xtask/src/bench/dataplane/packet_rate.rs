//! `lab_udp_pps`: packets per second one CPU forwards from the node's uplink
//! to a pod, where the node, not the endpoints, is the bottleneck.
//!
//! A generator in the kernel (BPF_PROG_TEST_RUN with live frames, see
//! `porter_tests::pktgen`) sends UDP packets to a service from the client's
//! side of the uplink veth, on one pinned CPU; the node's whole path (XDP,
//! the kernel's forwarding or Porter's redirect, the pod veth) runs on that
//! CPU too, and an XDP program on each pod's interface counts and drops
//! what arrives. Three labs, measured in alternation with the same packets:
//! iptables DNAT shaped like kube-proxy's (conntrack included), Porter
//! passing translated packets to the kernel, and Porter redirecting them to
//! the pod's interface. Each lab's node uplink runs an XDP program (the
//! empty one for iptables), as a veth needs to take generated frames.
use std::time::Duration;

use anyhow::{Context, Result};
use porter_agent::{DataplaneConfig, Forwarding, Protocol};
use porter_tests::{
    pktgen::{self, Sink},
    scenarios::{PodLab, attach_pass_xdp},
};

use super::{CPU, ROUNDS, SUITE, install_kube_proxy_like_dnat};
use crate::bench::{emit, median};

const PORT: u16 = 5353;
/// The client's address in [`PodLab`].
const CLIENT: &str = "172.31.0.2";

/// One lab and what makes it measurable; fields drop in declaration order,
/// so the programs go before the lab's namespaces.
struct Variant {
    name: &'static str,
    sinks: Vec<Sink>,
    /// Whatever runs on the node's uplink (Porter's data plane or the empty program).
    _node_xdp: Box<dyn std::any::Any>,
    lab: PodLab,
    /// Per round: packets per second delivered to the pods, and sent.
    rates: Vec<f64>,
    offered: Vec<f64>,
}

pub fn run(duration: Duration) -> Result<()> {
    let mut variants = vec![
        iptables_variant()?,
        porter_variant("porter", "bpk", Forwarding::Kernel)?,
        porter_variant("porter_redirect", "bpr", Forwarding::Redirect)?,
    ];
    for _ in 0..ROUNDS {
        for variant in &mut variants {
            let (delivered, offered) = rates_per_second(variant, duration)?;
            variant.rates.push(delivered);
            variant.offered.push(offered);
        }
    }
    let mut rates = Vec::new();
    for variant in &mut variants {
        let case = format!("lab_udp_pps_{}", variant.name);
        let rate = median(&mut variant.rates);
        emit(SUITE, &case, "packets_per_s", rate, "1/s");
        // What the generator sent: the rest was dropped on the way.
        let offered = median(&mut variant.offered);
        emit(SUITE, &case, "offered_packets_per_s", offered, "1/s");
        rates.push(rate);
    }
    let iptables = rates[0];
    emit(
        SUITE,
        "lab_udp_pps",
        "ratio_vs_iptables",
        rates[1] / iptables,
        "ratio",
    );
    emit(
        SUITE,
        "lab_udp_pps_redirect",
        "ratio_vs_iptables",
        rates[2] / iptables,
        "ratio",
    );
    Ok(())
}

fn iptables_variant() -> Result<Variant> {
    let lab = PodLab::new("bpi")?;
    install_kube_proxy_like_dnat(&lab, "udp", PORT)?;
    let node_xdp = attach_pass_xdp(&lab.node)?;
    variant("iptables", lab, Box::new(node_xdp))
}

fn porter_variant(name: &'static str, tag: &str, forwarding: Forwarding) -> Result<Variant> {
    let lab = PodLab::new(tag)?;
    let mut dataplane = lab.start_dataplane(DataplaneConfig {
        forwarding,
        ..DataplaneConfig::default()
    })?;
    let mut service = PodLab::service(PodLab::EIP, PORT, &[0, 1])?;
    service.addr.proto = Protocol::Udp;
    dataplane.upsert_service(&service)?;
    variant(name, lab, Box::new(dataplane))
}

/// Sinks on the pods, and the pods' neighbour entries made permanent on the
/// node (the sinks drop ARP replies too).
fn variant(name: &'static str, lab: PodLab, node_xdp: Box<dyn std::any::Any>) -> Result<Variant> {
    let mut sinks = Vec::new();
    for (index, pod) in lab.pods.iter().enumerate() {
        let mac = mac_of(&lab, pod, "eth0")?;
        let host_side = format!("vp{}", index + 1);
        lab.lab.ip(
            &lab.node,
            &[
                "neigh",
                "replace",
                PodLab::POD_IPS[index],
                "lladdr",
                &mac,
                "dev",
                &host_side,
                "nud",
                "permanent",
            ],
        )?;
        sinks.push(Sink::attach(pod, "eth0")?);
    }
    Ok(Variant {
        name,
        sinks,
        _node_xdp: node_xdp,
        lab,
        rates: Vec::new(),
        offered: Vec::new(),
    })
}

/// Runs the generator for `duration`; returns what the pods received per
/// second, and what it sent.
fn rates_per_second(variant: &Variant, duration: Duration) -> Result<(f64, f64)> {
    let lab = &variant.lab;
    let client_mac = mac_bytes(&mac_of(lab, &lab.client, "eth0")?)?;
    let node_mac = mac_bytes(&mac_of(lab, &lab.node, "eth0")?)?;
    let frame = pktgen::udp_frame(
        (client_mac, node_mac),
        (CLIENT.parse()?, 20_000),
        (PodLab::EIP.parse()?, PORT),
    )?;
    let before = received(variant)?;
    let (sent, seconds) = pktgen::generate(&lab.client, "eth0", frame, CPU, duration)?;
    // What the generator's CPU queued last is processed before its call returns.
    let after = received(variant)?;
    Ok(((after - before) as f64 / seconds, sent as f64 / seconds))
}

fn received(variant: &Variant) -> Result<u64> {
    variant.sinks.iter().map(Sink::received).sum()
}

/// `interface`'s MAC address in `ns`, as `ip` prints it.
fn mac_of(lab: &PodLab, ns: &str, interface: &str) -> Result<String> {
    let link = lab.lab.ip(ns, &["link", "show", interface])?;
    link.split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {interface} in {ns}: {link}"))
}

fn mac_bytes(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().context("short MAC")?, 16)?;
    }
    Ok(mac)
}

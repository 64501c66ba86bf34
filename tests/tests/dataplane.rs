//! The XDP data plane, packet by packet, through BPF_PROG_TEST_RUN: service
//! matching, DNAT with checksums, conntrack, Maglev table swaps, echo
//! replies, drops, and everything that must pass untouched.
use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::programs::SchedClassifier;
use porter_agent::{
    Backend, Dataplane, DataplaneConfig, Forwarding, LocalService, PinLayout, Protocol,
    ServiceAddr, stats,
};
use porter_common::{Stat, program_names};
use porter_tests::{
    lab::Lab,
    packets::{self, L4, Rng, Vlan, checked_summary},
    pktgen,
    scenarios::{self, PodLab},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";
const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:1::7";
const PODS4: [&str; 2] = ["10.244.1.2", "10.244.1.3"];
const PODS6: [&str; 2] = ["fd00::2", "fd00::3"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn spec(vip: &str, port: u16, proto: Protocol, pods: &[&str], target: u16) -> LocalService {
    LocalService {
        addr: ServiceAddr {
            vip: ip(vip),
            port,
            proto,
        },
        backends: pods
            .iter()
            .map(|pod| Backend {
                addr: ip(pod),
                port: target,
                node: None,
                draining: false,
            })
            .collect(),
    }
}

/// A data plane on a private bpffs with four services: TCP/80 → 8080 and
/// UDP/53 → 5353, on a v4 and a v6 VIP, two pods each.
struct Bench {
    _lab: Lab,
    pins: PinLayout,
    dataplane: Dataplane,
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let (pins, mut dataplane) = packets::test_dataplane(&mut lab)?;
        dataplane.reconcile(&[
            spec(VIP4, 80, Protocol::Tcp, &PODS4, 8080),
            spec(VIP4, 53, Protocol::Udp, &PODS4, 5353),
            spec(VIP6, 80, Protocol::Tcp, &PODS6, 8080),
            spec(VIP6, 53, Protocol::Udp, &PODS6, 5353),
        ])?;
        Ok(Self {
            _lab: lab,
            pins,
            dataplane,
        })
    }

    /// Runs the XDP program on `packet` (as received on the uplink).
    fn run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        packets::xdp_test_run(&mut self.dataplane, packet)
    }

    /// Sends a request of a new flow through XDP and returns the reply the
    /// chosen pod would send.
    fn reply_of_new_flow(
        &mut self,
        (client, client_port): (IpAddr, u16),
        (vip, port, proto): (IpAddr, u16, Protocol),
        target: u16,
        vlan: Vlan,
    ) -> Result<Vec<u8>> {
        let (request, reply) = match proto {
            Protocol::Tcp => (tcp(client_port, port), tcp(target, client_port)),
            Protocol::Udp => (udp(client_port, port), udp(target, client_port)),
        };
        let (_, forwarded) = self.run(&packets::build(client, vip, request, vlan)?)?;
        let pod = checked_summary(&forwarded)?.dst;
        packets::build(pod, client, reply, vlan)
    }

    /// Runs the tc reverse-NAT program on `packet` (as leaving the uplink).
    fn run_tc(&mut self, packet: &[u8]) -> Result<Vec<u8>> {
        let program: &mut SchedClassifier = self
            .dataplane
            .ebpf_mut()
            .program_mut(program_names::TC_REVNAT)
            .context("tc program")?
            .try_into()?;
        let (action, out) = packets::test_run(program, packet)?;
        assert_eq!(action, 0, "tc always lets replies go (TC_ACT_OK)");
        Ok(out)
    }

    fn stat(&self, wanted: Stat) -> Result<u64> {
        Ok(stats::read_stat(&self.pins, wanted)?)
    }
}

fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        syn: true,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// Asserts that `out` is `input` translated to one of `pods`:`target`, with
/// every other header field kept and every checksum valid. Returns the pod.
fn assert_dnat(input: &[u8], out: &[u8], pods: &[&str], target: u16, case: &str) -> IpAddr {
    let before = checked_summary(input).expect("test input is valid");
    let after = checked_summary(out).unwrap_or_else(|err| panic!("{case}: {err:#}"));
    assert!(
        pods.iter().any(|pod| ip(pod) == after.dst),
        "{case}: rewritten to a backend, got {}",
        after.dst
    );
    assert_eq!(after.dport, target, "{case}: target port");
    assert_eq!(
        (after.src, after.sport, after.proto),
        (before.src, before.sport, before.proto),
        "{case}: source and protocol kept"
    );
    assert_eq!(input.len(), out.len(), "{case}: length kept");
    after.dst
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn service_packets_are_translated_with_valid_checksums() -> Result<()> {
    let mut bench = Bench::new("dpnat")?;
    let cases: Vec<(&str, Vec<u8>, &[&str], u16)> = vec![
        (
            "v4 tcp syn",
            packets::build(ip(CLIENT4), ip(VIP4), tcp(40000, 80), Vlan::None)?,
            &PODS4,
            8080,
        ),
        (
            "v4 udp",
            packets::build(ip(CLIENT4), ip(VIP4), udp(40001, 53), Vlan::None)?,
            &PODS4,
            5353,
        ),
        (
            "v6 tcp syn",
            packets::build(ip(CLIENT6), ip(VIP6), tcp(40002, 80), Vlan::None)?,
            &PODS6,
            8080,
        ),
        (
            "v6 udp",
            packets::build(ip(CLIENT6), ip(VIP6), udp(40003, 53), Vlan::None)?,
            &PODS6,
            5353,
        ),
        (
            "v4 tcp, one vlan tag",
            packets::build(ip(CLIENT4), ip(VIP4), tcp(40004, 80), Vlan::Single)?,
            &PODS4,
            8080,
        ),
        (
            "v4 udp, two vlan tags",
            packets::build(ip(CLIENT4), ip(VIP4), udp(40005, 53), Vlan::Double)?,
            &PODS4,
            5353,
        ),
        (
            "v6 tcp, two vlan tags",
            packets::build(ip(CLIENT6), ip(VIP6), tcp(40006, 80), Vlan::Double)?,
            &PODS6,
            8080,
        ),
        (
            "v4 tcp with ip options",
            packets::tcp_v4_with_options([198, 51, 100, 7], [192, 0, 2, 10], 40007, 80)?,
            &PODS4,
            8080,
        ),
        (
            "v6 tcp after hop-by-hop options",
            packets::insert_v6_extension(
                &packets::build(ip(CLIENT6), ip(VIP6), tcp(40008, 80), Vlan::None)?,
                0,
            ),
            &PODS6,
            8080,
        ),
        (
            "v6 udp after destination options",
            packets::insert_v6_extension(
                &packets::build(ip(CLIENT6), ip(VIP6), udp(40009, 53), Vlan::None)?,
                60,
            ),
            &PODS6,
            5353,
        ),
    ];
    for (case, input, pods, target) in &cases {
        let before = bench.stat(Stat::Forwarded)?;
        let (action, out) = bench.run(input)?;
        assert_eq!(
            action, XDP_PASS,
            "{case}: translated packets go to the kernel"
        );
        assert_dnat(input, &out, pods, *target, case);
        assert_eq!(bench.stat(Stat::Forwarded)?, before + 1, "{case}: counted");
    }

    // A v4 UDP checksum of 0 means "no checksum" and must stay 0.
    let mut no_checksum = packets::build(ip(CLIENT4), ip(VIP4), udp(40010, 53), Vlan::None)?;
    no_checksum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (action, out) = bench.run(&no_checksum)?;
    assert_eq!(action, XDP_PASS);
    assert_dnat(&no_checksum, &out, &PODS4, 5353, "v4 udp without checksum");
    assert_eq!(checked_summary(&out)?.l4_check, 0, "UDP checksum 0 stays 0");
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn conntrack_keeps_flows_and_maglev_swaps_move_only_removed_backends_flows() -> Result<()> {
    let mut bench = Bench::new("dpct")?;
    let service = ServiceAddr {
        vip: ip(VIP4),
        port: 80,
        proto: Protocol::Tcp,
    };
    let mut first_backend = Vec::new();
    for sport in 20000..20200u16 {
        let packet = packets::build(ip(CLIENT4), ip(VIP4), tcp(sport, 80), Vlan::None)?;
        let (_, out) = bench.run(&packet)?;
        let pod = assert_dnat(&packet, &out, &PODS4, 8080, "new flow");
        // The second packet of the flow (not a SYN) hits conntrack.
        let ack = packets::build(
            ip(CLIENT4),
            ip(VIP4),
            L4::Tcp {
                sport,
                dport: 80,
                syn: false,
            },
            Vlan::None,
        )?;
        let (_, out) = bench.run(&ack)?;
        assert_eq!(assert_dnat(&ack, &out, &PODS4, 8080, "established"), pod);
        first_backend.push((sport, pod));
    }
    let on_first = first_backend
        .iter()
        .filter(|(_, pod)| *pod == ip(PODS4[0]))
        .count();
    assert!(
        (70..=130).contains(&on_first),
        "200 flows split between two backends, {on_first} on the first"
    );
    let counters = bench
        .dataplane
        .service_counters(&service)?
        .context("installed")?;
    assert_eq!(counters.new_flows, 200, "one new flow per connection");
    assert_eq!(counters.packets, 400);

    // Remove the first pod: its flows move to the survivor, the survivor's stay.
    bench
        .dataplane
        .upsert_service(&spec(VIP4, 80, Protocol::Tcp, &PODS4[1..], 8080))?;
    for (sport, _) in &first_backend {
        let ack = packets::build(
            ip(CLIENT4),
            ip(VIP4),
            L4::Tcp {
                sport: *sport,
                dport: 80,
                syn: false,
            },
            Vlan::None,
        )?;
        let (_, out) = bench.run(&ack)?;
        assert_eq!(
            assert_dnat(&ack, &out, &PODS4, 8080, "after removal"),
            ip(PODS4[1]),
            "every flow now goes to the surviving pod"
        );
    }
    // The pinned state reads back as installed (what a restarted agent sees).
    let pins = bench.dataplane.services();
    assert_eq!(pins.len(), 4);
    assert!(
        pins.iter()
            .any(|s| s.addr == service && s.backends.len() == 1)
    );
    Ok(())
}

/// A terminating pod (KEP-1669) keeps the flows it has, takes no new one
/// while another pod is ready, and takes new ones again once every pod of
/// the service is terminating.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn a_draining_pod_keeps_its_flows_and_takes_new_ones_only_when_alone() -> Result<()> {
    let mut bench = Bench::new("dpdrain")?;
    let packet = |sport: u16, syn: bool| {
        packets::build(
            ip(CLIENT4),
            ip(VIP4),
            L4::Tcp {
                sport,
                dport: 80,
                syn,
            },
            Vlan::None,
        )
    };
    let pod_of = |bench: &mut Bench, sport: u16, syn: bool, case: &str| -> Result<IpAddr> {
        let packet = packet(sport, syn)?;
        let (action, out) = bench.run(&packet)?;
        assert_eq!(action, XDP_PASS, "{case}");
        Ok(assert_dnat(&packet, &out, &PODS4, 8080, case))
    };
    let mut held = Vec::new();
    for sport in 21000..21100u16 {
        held.push((sport, pod_of(&mut bench, sport, true, "new flow")?));
    }
    let draining = |which: &[bool]| {
        let mut spec = spec(VIP4, 80, Protocol::Tcp, &PODS4, 8080);
        for (backend, &draining) in spec.backends.iter_mut().zip(which) {
            backend.draining = draining;
        }
        spec
    };
    // The first pod terminates.
    bench.dataplane.upsert_service(&draining(&[true, false]))?;
    let on_draining = held.iter().filter(|(_, pod)| *pod == ip(PODS4[0])).count();
    assert!(
        on_draining > 20,
        "{on_draining} of 100 flows on the first pod"
    );
    for &(sport, pod) in &held {
        assert_eq!(
            pod_of(&mut bench, sport, false, "established")?,
            pod,
            "an established flow kept its pod"
        );
    }
    for sport in 22000..22100u16 {
        assert_eq!(
            pod_of(&mut bench, sport, true, "new flow while draining")?,
            ip(PODS4[1]),
            "a new flow went to the ready pod"
        );
    }
    // A new connection that reuses the client port of a closed one to the
    // draining pod (its conntrack entry lingers) is a new flow too.
    let (reused, _) = *held
        .iter()
        .find(|(_, pod)| *pod == ip(PODS4[0]))
        .context("a flow on the draining pod")?;
    assert_eq!(
        pod_of(&mut bench, reused, true, "SYN on a reused port")?,
        ip(PODS4[1]),
        "a SYN on a reused port went to the ready pod"
    );
    held.retain(|(sport, _)| *sport != reused);
    // The survivor terminates too: new flows go to both again.
    bench.dataplane.upsert_service(&draining(&[true, true]))?;
    let mut new_pods = std::collections::BTreeSet::new();
    for sport in 23000..23100u16 {
        new_pods.insert(pod_of(&mut bench, sport, true, "new flow, all draining")?);
    }
    assert_eq!(new_pods.len(), 2, "both draining pods take new flows");
    for &(sport, pod) in &held {
        assert_eq!(pod_of(&mut bench, sport, false, "established")?, pod);
    }
    Ok(())
}

/// Conntrack keeps per-CPU LRU lists, but one hash table: a flow whose
/// packets arrive on another CPU (another RX queue, or RPS) finds the entry
/// its first packet made, so it keeps its backend even once the Maglev
/// table would pick another for it.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn a_flow_keeps_its_backend_when_its_packets_arrive_on_another_cpu() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        println!("SKIP a_flow_keeps_its_backend_when_its_packets_arrive_on_another_cpu: one CPU");
        return Ok(());
    }
    // A table large enough for a third backend (at least 100x the backends).
    let mut lab = Lab::new("dpcpu")?;
    let (pins, dataplane) = packets::test_dataplane_sized(&mut lab, 1009)?;
    let mut bench = Bench {
        _lab: lab,
        pins,
        dataplane,
    };
    bench
        .dataplane
        .reconcile(&[spec(VIP4, 80, Protocol::Tcp, &PODS4, 8080)])?;
    let service = ServiceAddr {
        vip: ip(VIP4),
        port: 80,
        proto: Protocol::Tcp,
    };
    let flows: Vec<u16> = (30000..30090).collect();
    let on_cpu = |bench: &mut Bench, cpu: usize, syn: bool| -> Result<Vec<IpAddr>> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    pktgen::pin_to_cpu(cpu)?;
                    flows
                        .iter()
                        .map(|&sport| {
                            let l4 = L4::Tcp {
                                sport,
                                dport: 80,
                                syn,
                            };
                            let packet = packets::build(ip(CLIENT4), ip(VIP4), l4, Vlan::None)?;
                            let (_, out) = bench.run(&packet)?;
                            Ok(assert_dnat(&packet, &out, &PODS4, 8080, "cross-CPU"))
                        })
                        .collect()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("CPU {cpu} thread panicked"))?
        })
    };
    let first = on_cpu(&mut bench, 0, true)?;
    // A third pod takes a third of the table: the flows on its slots
    // would move to it if their conntrack entries were not found.
    let pods = [PODS4[0], PODS4[1], "10.244.1.4"];
    bench
        .dataplane
        .upsert_service(&spec(VIP4, 80, Protocol::Tcp, &pods, 8080))?;
    let later = on_cpu(&mut bench, 1, false)?;
    assert_eq!(later, first, "every flow kept its backend on the other CPU");
    let counters = bench
        .dataplane
        .service_counters(&service)?
        .context("installed")?;
    assert_eq!(
        counters.new_flows,
        flows.len() as u64,
        "the second packets were no new flows"
    );
    Ok(())
}

/// IPv4 and IPv6 flows live in separate conntrack maps (IPv4 with a 16-byte
/// key): flows whose addresses have the same leading words and whose ports
/// are equal keep apart.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn v4_and_v6_flows_sharing_ports_do_not_collide() -> Result<()> {
    // The IPv6 addresses begin with the IPv4 ones' bytes, the rest zero: in
    // one map keyed by address words, the two flows would share a key.
    let (vip6, client6) = ("c000:20a::", "c633:6407::");
    let mut lab = Lab::new("dpfam")?;
    let (_pins, mut dataplane) = packets::test_dataplane(&mut lab)?;
    dataplane.reconcile(&[
        spec(VIP4, 80, Protocol::Tcp, &PODS4, 8080),
        spec(vip6, 80, Protocol::Tcp, &PODS6, 8080),
    ])?;
    let mut backends = Vec::new();
    for syn in [true, false] {
        for (client, vip, pods) in [(CLIENT4, VIP4, &PODS4), (client6, vip6, &PODS6)] {
            let l4 = L4::Tcp {
                sport: 40000,
                dport: 80,
                syn,
            };
            let packet = packets::build(ip(client), ip(vip), l4, Vlan::None)?;
            let (_, out) = packets::xdp_test_run(&mut dataplane, &packet)?;
            backends.push(assert_dnat(&packet, &out, pods, 8080, vip));
        }
    }
    assert_eq!(
        backends[..2],
        backends[2..],
        "each flow kept its own backend"
    );
    for vip in [VIP4, vip6] {
        let addr = ServiceAddr {
            vip: ip(vip),
            port: 80,
            proto: Protocol::Tcp,
        };
        let counters = dataplane.service_counters(&addr)?.context("installed")?;
        assert_eq!(
            (counters.new_flows, counters.packets),
            (1, 2),
            "{vip}: one flow of two packets"
        );
    }
    Ok(())
}

/// An established flow skips the service lookup: its conntrack entry is
/// followed while its backend carries the epoch it recorded. A removed
/// service whose ids a later service takes (here after an agent restart,
/// which must not hand the epoch out again) leaves its flows nowhere: their
/// packets are dropped as to an unused port, never sent to the other
/// service's pods.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn a_removed_services_flows_never_reach_the_service_that_takes_its_ids() -> Result<()> {
    let mut lab = Lab::new("dpepo")?;
    let (pins, mut dataplane) = packets::test_dataplane(&mut lab)?;
    // A second port keeps the VIP a VIP, so its packets reach conntrack.
    // Installed first, so the removed service has the last epoch, the one
    // a restarted agent that forgot it would hand out again.
    let kept = spec(VIP4, 443, Protocol::Tcp, &["10.244.9.9"], 8443);
    dataplane.reconcile(&[kept.clone(), spec(VIP4, 80, Protocol::Tcp, &PODS4, 8080)])?;
    let packet = |syn| {
        let l4 = L4::Tcp {
            sport: 40000,
            dport: 80,
            syn,
        };
        packets::build(ip(CLIENT4), ip(VIP4), l4, Vlan::None)
    };
    let (_, out) = packets::xdp_test_run(&mut dataplane, &packet(true)?)?;
    assert_dnat(
        &packet(true)?,
        &out,
        &PODS4,
        8080,
        "the flow's first packet",
    );
    let (_, out) = packets::xdp_test_run(&mut dataplane, &packet(false)?)?;
    assert_dnat(&packet(false)?, &out, &PODS4, 8080, "established");

    dataplane.reconcile(std::slice::from_ref(&kept))?;
    drop(dataplane);
    let mut dataplane = Dataplane::open(&pins, packets::test_config(251))?;
    let other_pods = ["10.244.7.2", "10.244.7.3"];
    dataplane.reconcile(&[
        kept,
        spec("192.0.2.77", 80, Protocol::Tcp, &other_pods, 8080),
    ])?;
    let drops = stats::read_stat(&pins, Stat::DropUnknownPort)?;
    let (action, out) = packets::xdp_test_run(&mut dataplane, &packet(false)?)?;
    assert_eq!(
        (action, out),
        (XDP_DROP, packet(false)?),
        "a packet of the removed service's flow is dropped untouched"
    );
    assert_eq!(
        stats::read_stat(&pins, Stat::DropUnknownPort)?,
        drops + 1,
        "as to a port no service uses"
    );
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn eip_traffic_is_answered_dropped_or_passed_untouched() -> Result<()> {
    let mut bench = Bench::new("dpeip")?;

    for (case, src, vip) in [("v4", CLIENT4, VIP4), ("v6", CLIENT6, VIP6)] {
        let echo = packets::build(ip(src), ip(vip), L4::EchoRequest, Vlan::None)?;
        let (action, out) = bench.run(&echo)?;
        assert_eq!(action, XDP_TX, "{case}: echo to the EIP is answered in XDP");
        let reply = checked_summary(&out)?;
        assert_eq!(
            (reply.src, reply.dst),
            (ip(vip), ip(src)),
            "{case}: reply addresses"
        );
        assert_eq!(reply.icmp_type, Some(if case == "v4" { 0 } else { 129 }));
        assert_eq!(
            &out[..6],
            &packets::CLIENT_MAC,
            "{case}: back to the sender's MAC"
        );
    }

    let drops = bench.stat(Stat::DropUnknownPort)?;
    for (case, packet) in [
        (
            "v4 tcp/81",
            packets::build(ip(CLIENT4), ip(VIP4), tcp(1, 81), Vlan::None)?,
        ),
        (
            "v4 udp/80",
            packets::build(ip(CLIENT4), ip(VIP4), udp(1, 80), Vlan::None)?,
        ),
        (
            "v6 tcp/443",
            packets::build(ip(CLIENT6), ip(VIP6), tcp(1, 443), Vlan::None)?,
        ),
    ] {
        assert_eq!(
            bench.run(&packet)?.0,
            XDP_DROP,
            "{case}: unknown port on an EIP is dropped"
        );
    }
    assert_eq!(
        bench.stat(Stat::DropUnknownPort)?,
        drops + 3,
        "drops are counted"
    );

    let service_syn = packets::build(ip(CLIENT4), ip(VIP4), tcp(40000, 80), Vlan::None)?;
    let mut v4_fragment = service_syn.clone();
    packets::make_v4_fragment(&mut v4_fragment);
    let v6_service = packets::build(ip(CLIENT6), ip(VIP6), tcp(40000, 80), Vlan::None)?;
    let untouched: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-service v4",
            packets::build(ip(CLIENT4), ip("192.0.2.99"), tcp(1, 80), Vlan::None)?,
        ),
        (
            "non-service v6",
            packets::build(ip(CLIENT6), ip("2001:db8::99"), udp(1, 53), Vlan::None)?,
        ),
        ("v4 fragment of a service flow", v4_fragment),
        (
            "v6 fragment of a service flow",
            packets::insert_v6_extension(&v6_service, 44),
        ),
        ("truncated tcp header", service_syn[..14 + 20 + 10].to_vec()),
        ("truncated ip header", service_syn[..14 + 12].to_vec()),
        ("ethernet only", service_syn[..14].to_vec()),
        (
            "icmp frag-needed toward the EIP",
            packets::icmp_frag_needed([203, 0, 113, 1], [192, 0, 2, 10], &service_syn)?,
        ),
    ];
    for (case, packet) in &untouched {
        let (action, out) = bench.run(packet)?;
        assert_eq!(action, XDP_PASS, "{case}: passes");
        assert_eq!(&out, packet, "{case}: unmodified");
    }
    // An IPv4 EtherType over a header of version 6 passes too, counted as
    // not IP (it is not short).
    let mut wrong_version = service_syn.clone();
    wrong_version[14] = 0x65;
    let not_ip = bench.stat(Stat::PassNotIp)?;
    let truncated = bench.stat(Stat::PassTruncated)?;
    let (action, out) = bench.run(&wrong_version)?;
    assert_eq!(action, XDP_PASS, "wrong IP version: passes");
    assert_eq!(out, wrong_version, "wrong IP version: unmodified");
    assert_eq!(
        (
            bench.stat(Stat::PassNotIp)?,
            bench.stat(Stat::PassTruncated)?
        ),
        (not_ip + 1, truncated),
        "wrong IP version: counted as pass_not_ip"
    );
    Ok(())
}

/// Asserts `out` is the reply `input` with its source turned into `vip:port`.
fn assert_revnat(input: &[u8], out: &[u8], vip: &str, port: u16, case: &str) {
    let before = checked_summary(input).expect("test input is valid");
    let after = checked_summary(out).unwrap_or_else(|err| panic!("{case}: {err:#}"));
    assert_eq!((after.src, after.sport), (ip(vip), port), "{case}: source");
    assert_eq!(
        (after.dst, after.dport, after.proto),
        (before.dst, before.dport, before.proto),
        "{case}: destination kept"
    );
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn replies_are_reverse_translated_by_tc() -> Result<()> {
    let mut bench = Bench::new("dptc")?;
    let cases = [
        ("v4 tcp", CLIENT4, VIP4, Protocol::Tcp, 80, 8080),
        ("v4 udp", CLIENT4, VIP4, Protocol::Udp, 53, 5353),
        ("v6 tcp", CLIENT6, VIP6, Protocol::Tcp, 80, 8080),
        ("v6 udp", CLIENT6, VIP6, Protocol::Udp, 53, 5353),
    ];
    let mut client_port = 42000;
    for (case, client, vip, proto, port, target) in cases {
        for vlan in [Vlan::None, Vlan::Single] {
            client_port += 1;
            let reply = bench.reply_of_new_flow(
                (ip(client), client_port),
                (ip(vip), port, proto),
                target,
                vlan,
            )?;
            let out = bench.run_tc(&reply)?;
            assert_revnat(&reply, &out, vip, port, case);
        }
    }
    let mut no_checksum = bench.reply_of_new_flow(
        (ip(CLIENT4), 1),
        (ip(VIP4), 53, Protocol::Udp),
        5353,
        Vlan::None,
    )?;
    no_checksum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let out = bench.run_tc(&no_checksum)?;
    assert_revnat(&no_checksum, &out, VIP4, 53, "v4 udp without checksum");
    assert_eq!(checked_summary(&out)?.l4_check, 0, "UDP checksum 0 stays 0");

    for (case, packet) in [
        (
            "pod to elsewhere, other port",
            packets::build(ip(PODS4[0]), ip(CLIENT4), tcp(9000, 1), Vlan::None)?,
        ),
        (
            "not from a pod",
            packets::build(ip(CLIENT4), ip(PODS4[0]), tcp(8080, 1), Vlan::None)?,
        ),
        (
            "udp source port of a tcp backend",
            packets::build(ip(PODS4[0]), ip(CLIENT4), udp(8080, 1), Vlan::None)?,
        ),
        (
            "reply of a direct connection to the pod (no service flow)",
            packets::build(ip(PODS4[0]), ip(CLIENT4), tcp(8080, 43999), Vlan::None)?,
        ),
    ] {
        assert_eq!(bench.run_tc(&packet)?, packet, "{case}: untouched");
    }

    // Two service ports onto one target port: each reply goes back to the
    // port its flow came in on.
    bench
        .dataplane
        .upsert_service(&spec(VIP4, 8080, Protocol::Tcp, &PODS4, 8080))?;
    for (sport, port) in [(41000u16, 80u16), (41001, 8080), (41002, 80), (41003, 8080)] {
        let request = packets::build(ip(CLIENT4), ip(VIP4), tcp(sport, port), Vlan::None)?;
        let (_, forwarded) = bench.run(&request)?;
        let pod = checked_summary(&forwarded)?.dst;
        let reply = packets::build(pod, ip(CLIENT4), tcp(8080, sport), Vlan::None)?;
        let out = bench.run_tc(&reply)?;
        assert_revnat(&reply, &out, VIP4, port, "shared backend");
    }
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn a_backend_that_becomes_shared_keeps_replying_for_its_open_flows() -> Result<()> {
    let mut bench = Bench::new("dpsh")?;
    const POD: &str = "10.244.1.9";
    // A service takes an id and leaves it free below the next one's.
    let gone = spec(VIP4, 7001, Protocol::Tcp, &[POD], 9000);
    bench.dataplane.upsert_service(&gone)?;
    bench
        .dataplane
        .upsert_service(&spec(VIP4, 7002, Protocol::Tcp, &[POD], 9090))?;
    bench.dataplane.remove_service(&gone.addr)?;
    // A connection to 7002 opens while the pod serves it alone...
    let request = packets::build(ip(CLIENT4), ip(VIP4), tcp(40100, 7002), Vlan::None)?;
    bench.run(&request)?;
    // ...then a newcomer, with the lower free id, shares the pod's port.
    bench
        .dataplane
        .upsert_service(&spec(VIP4, 7003, Protocol::Tcp, &[POD], 9090))?;
    let reply = packets::build(ip(POD), ip(CLIENT4), tcp(9090, 40100), Vlan::None)?;
    let out = bench.run_tc(&reply)?;
    assert_revnat(&reply, &out, VIP4, 7002, "a reply of the flow from before");
    // New flows of either service get their own way back.
    for (sport, port) in [(40101u16, 7002u16), (40102, 7003)] {
        let request = packets::build(ip(CLIENT4), ip(VIP4), tcp(sport, port), Vlan::None)?;
        bench.run(&request)?;
        let reply = packets::build(ip(POD), ip(CLIENT4), tcp(9090, sport), Vlan::None)?;
        let out = bench.run_tc(&reply)?;
        assert_revnat(&reply, &out, VIP4, port, "a reply of a new flow");
    }
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bpftool_shows_map_field_names() -> Result<()> {
    let bench = Bench::new("dpbtf")?;
    for (map, field) in [
        (porter_common::map_names::SERVICES, "table_base"),
        (porter_common::map_names::BACKEND_REVNAT, "service_id"),
    ] {
        let path = bench.pins.map(map);
        let dump = porter_tests::lab::run(
            std::process::Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(&path),
        )?;
        assert!(dump.contains(field), "{map} dump names its fields:\n{dump}");
    }
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn random_and_malformed_packets_are_never_modified() -> Result<()> {
    let mut bench = Bench::new("dprand")?;
    let mut rng = Rng::new(0x5eed);
    let templates = [
        packets::build(ip(CLIENT4), ip(VIP4), tcp(40000, 80), Vlan::None)?,
        packets::build(ip(CLIENT4), ip(VIP4), udp(40000, 53), Vlan::Single)?,
        packets::build(ip(CLIENT6), ip(VIP6), tcp(40000, 80), Vlan::Double)?,
        packets::insert_v6_extension(
            &packets::build(ip(CLIENT6), ip(VIP6), udp(40000, 53), Vlan::None)?,
            0,
        ),
        packets::tcp_v4_with_options([198, 51, 100, 7], [192, 0, 2, 10], 40000, 80)?,
    ];
    let vips = [ip(VIP4), ip(VIP6)];
    let mut checked = 0;
    for round in 0..100_000u32 {
        let template = &templates[rng.below(templates.len())];
        let packet = match round % 3 {
            // Pure noise of any length a link can deliver (the kernel
            // refuses test frames shorter than an Ethernet header).
            0 => {
                let mut noise = vec![0u8; 14 + rng.below(146)];
                rng.fill(&mut noise);
                // Bias the ethertype toward IPv4/IPv6/VLAN so parsing goes deep.
                let types: [[u8; 2]; 4] = [[8, 0], [0x86, 0xdd], [0x81, 0], [0x88, 0xa8]];
                noise[12..14].copy_from_slice(&types[rng.below(4)]);
                noise
            }
            // A service packet cut short inside its headers.
            1 => template[..14 + rng.below(template.len().min(14 + 40 + 8 + 20) - 14)].to_vec(),
            // A service packet with its destination randomised.
            _ => {
                let mut changed = template.clone();
                let dst = checked_summary(template)?.dst;
                let dst_bytes: Vec<u8> = match dst {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                let at = changed
                    .windows(dst_bytes.len())
                    .position(|w| w == dst_bytes)
                    .context("destination in template")?;
                rng.fill(&mut changed[at..at + dst_bytes.len()]);
                changed
            }
        };
        // Whatever etherparse reads as addressed to a VIP is out of scope:
        // such noise may legitimately be translated, answered or dropped.
        if let Ok(summary) = checked_summary(&packet)
            && vips.contains(&summary.dst)
        {
            continue;
        }
        let (action, out) = bench.run(&packet)?;
        assert_eq!(
            out, packet,
            "round {round}: packet modified (action {action})"
        );
        assert_eq!(
            action, XDP_PASS,
            "round {round}: non-service packet must pass"
        );
        checked += 1;
    }
    assert!(checked >= 90_000, "checked {checked} packets");
    // Encapsulated service packets cut short anywhere, or padded: never
    // taken apart, passed untouched.
    for (inner, outer) in [
        (
            packets::build(ip(CLIENT4), ip(VIP4), tcp(40000, 80), Vlan::None)?,
            ("172.30.0.12", "172.30.0.11"),
        ),
        (
            packets::build(ip(CLIENT6), ip(VIP6), tcp(40000, 80), Vlan::None)?,
            ("fd00:30::12", "fd00:30::11"),
        ),
    ] {
        let whole = packets::encapsulate(
            &inner,
            (packets::NODE_MAC, packets::CLIENT_MAC),
            (ip(outer.0), ip(outer.1)),
        );
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0; 4]);
        for packet in (14..whole.len())
            .map(|len| whole[..len].to_vec())
            .chain([padded])
        {
            let (action, out) = bench.run(&packet)?;
            assert_eq!(
                (action, &out),
                (XDP_PASS, &packet),
                "{} of {} bytes",
                packet.len(),
                whole.len()
            );
        }
    }
    Ok(())
}

/// Client → node (XDP + tc) → two pods, without and with the MASQUERADE rule
/// for the pod subnet that Calico and flannel install on nodes.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn end_to_end_through_the_node_to_local_pods() -> Result<()> {
    // Redirect is not run with MASQUERADE (docs/design.md): bypassing
    // netfilter on the way in is exactly what makes replies get masqueraded.
    for (masquerade, forwarding) in [
        (false, Forwarding::Kernel),
        (true, Forwarding::Kernel),
        (false, Forwarding::Redirect),
    ] {
        end_to_end(masquerade, forwarding)
            .with_context(|| format!("masquerade={masquerade} forwarding={forwarding:?}"))?;
    }
    Ok(())
}

fn end_to_end(masquerade: bool, forwarding: Forwarding) -> Result<()> {
    let mut lab = PodLab::new(if masquerade { "e2em" } else { "e2e" })?;
    if masquerade {
        lab.add_pod_masquerade()?;
    }
    if forwarding == Forwarding::Redirect {
        lab.enable_pod_xdp()?;
    }
    let config = DataplaneConfig {
        maglev_size: 251,
        max_services: 4,
        forwarding,
    };
    let pins = PinLayout::new(&lab.bpffs);
    let mut dataplane = lab.start_dataplane(config)?;
    dataplane.upsert_service(&PodLab::service(PodLab::EIP, 80, &[0, 1])?)?;

    let answers = lab.spread(PodLab::EIP, 80, 200)?;
    let pod1 = answers.get("pod1").copied().unwrap_or(0);
    assert_eq!(
        answers.values().sum::<usize>(),
        200,
        "every connection answered: {answers:?}"
    );
    assert!(
        (70..=130).contains(&pod1),
        "200 connections split 35-65% between the pods: {answers:?}"
    );

    // Hold a connection to pod2, then take pod1 away.
    let mut held = (0..50)
        .map(|_| lab.connect(PodLab::EIP, 80))
        .find(|client| client.as_ref().is_ok_and(|c| c.server == "pod2"))
        .context("no connection reached pod2 in 50 tries")??;
    assert_eq!(held.echo("before")?, "pod2:before");
    dataplane.upsert_service(&PodLab::service(PodLab::EIP, 80, &[1])?)?;
    let answers = lab.spread(PodLab::EIP, 80, 20)?;
    assert_eq!(
        answers.get("pod2"),
        Some(&20),
        "new connections go to the survivor: {answers:?}"
    );
    assert_eq!(
        held.echo("after")?,
        "pod2:after",
        "the open connection keeps working"
    );

    // An agent restart: the new one reads the pinned services back and
    // adopts the pinned links; conntrack (and the open connection) carry over.
    drop(dataplane);
    let mut dataplane = lab.start_dataplane(config)?;
    assert_eq!(
        dataplane.services(),
        vec![PodLab::service(PodLab::EIP, 80, &[1])?]
    );
    assert_eq!(held.echo("restarted")?, "pod2:restarted");
    dataplane.reconcile(&[PodLab::service(PodLab::EIP, 80, &[0, 1])?])?;
    let answers = lab.spread(PodLab::EIP, 80, 40)?;
    assert!(
        answers.get("pod1").is_some_and(|&n| n > 0),
        "pod1 is back: {answers:?}"
    );

    // The same over IPv6: an IPv6 EIP onto the pods' IPv6 addresses.
    dataplane.upsert_service(&PodLab::service(PodLab::EIP6, 80, &[0, 1])?)?;
    let answers = lab.spread(PodLab::EIP6, 80, 100)?;
    let pod1 = answers.get("pod1").copied().unwrap_or(0);
    assert!(
        (35..=65).contains(&pod1) && answers.values().sum::<usize>() == 100,
        "100 IPv6 connections split 35-65% between the pods: {answers:?}"
    );

    // Ping to either EIP is answered by XDP.
    for eip in [PodLab::EIP, PodLab::EIP6] {
        let echoes = stats::read_stat(&pins, Stat::EchoReplied)?;
        lab.lab.exec(
            &lab.client,
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", eip],
        )?;
        assert!(
            stats::read_stat(&pins, Stat::EchoReplied)? >= echoes + 3,
            "echo to {eip} answered in XDP"
        );
    }

    // An unknown port on the EIP: dropped and counted, so no answer at all.
    let drops = stats::read_stat(&pins, Stat::DropUnknownPort)?;
    let unknown = lab.connect(PodLab::EIP, 81);
    assert!(unknown.is_err(), "nothing answers on an unknown port");
    assert!(
        stats::read_stat(&pins, Stat::DropUnknownPort)? > drops,
        "the SYN was dropped and counted"
    );
    let (forwarded, redirected) = (
        stats::read_stat(&pins, Stat::Forwarded)?,
        stats::read_stat(&pins, Stat::Redirected)?,
    );
    match forwarding {
        Forwarding::Kernel => assert_eq!(redirected, 0, "nothing redirected"),
        // The first packets to a pod wait for its neighbour entry in the kernel.
        Forwarding::Redirect => assert!(
            redirected > forwarded,
            "{redirected} redirected, {forwarded} passed"
        ),
    }
    assert!(
        stats::read_stat(&pins, Stat::RevNatApplied)? > 0,
        "replies were reverse-NATed by tc"
    );
    Ok(())
}

/// Redirect mode keeps each pod's next hop (interface, MACs) per CPU for a
/// second rather than asking the FIB for every packet: when a pod's MAC
/// changes and the node's neighbour entry follows, connections reach the
/// pod again once that second is over, through the redirect (not the
/// kernel's path).
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn redirect_follows_a_pod_whose_mac_changes() -> Result<()> {
    let mut lab = PodLab::new("rdmac")?;
    lab.enable_pod_xdp()?;
    let config = DataplaneConfig {
        maglev_size: 251,
        max_services: 4,
        forwarding: Forwarding::Redirect,
    };
    let pins = PinLayout::new(&lab.bpffs);
    let mut dataplane = lab.start_dataplane(config)?;
    dataplane.upsert_service(&PodLab::service(PodLab::EIP, 80, &[0])?)?;
    let answers = lab.spread(PodLab::EIP, 80, 20)?;
    assert_eq!(answers.get("pod1"), Some(&20), "{answers:?}");

    // The pod's interface gets a new MAC (down and up: its routes go with
    // it), and the node learns it.
    let pod = lab.pods[0].clone();
    let new_mac = "02:00:00:00:99:01";
    for args in [
        &["link", "set", "eth0", "down"][..],
        &["link", "set", "eth0", "address", new_mac],
        &["link", "set", "eth0", "up"],
        &["route", "add", "default", "via", "10.244.1.1"],
    ] {
        lab.lab.ip(&pod, args)?;
    }
    lab.lab.ip(
        &lab.node,
        &[
            "neigh",
            "replace",
            PodLab::POD_IPS[0],
            "lladdr",
            new_mac,
            "dev",
            "vp1",
            "nud",
            "reachable",
        ],
    )?;
    let changed = std::time::Instant::now();
    let redirected = stats::read_stat(&pins, Stat::Redirected)?;
    // Connections fail while the old MAC is still used, then succeed.
    let mut reached = None;
    while changed.elapsed() < std::time::Duration::from_secs(10) {
        if lab
            .connect(PodLab::EIP, 80)
            .is_ok_and(|c| c.server == "pod1")
        {
            reached = Some(changed.elapsed());
            break;
        }
    }
    let reached = reached.context("the pod was never reached at its new MAC")?;
    let answers = lab.spread(PodLab::EIP, 80, 20)?;
    assert_eq!(answers.get("pod1"), Some(&20), "{answers:?}");
    assert!(
        stats::read_stat(&pins, Stat::Redirected)? > redirected,
        "the packets to the new MAC were redirected"
    );
    println!("pod reached at its new MAC {reached:?} after the change");
    Ok(())
}

/// `Cluster` forwarding, from one node's point of view: this test's thread
/// is node 172.30.0.11 of [`scenarios::enter_cluster_node`].
struct ClusterNode {
    bench: Bench,
    ifindex: u32,
}

const CLUSTER_VIP: &str = "192.0.2.20";
const LOCAL_POD: &str = "10.244.1.2";
const REMOTE_POD: &str = "10.244.2.2";
const IP_FLAGS: usize = 14 + 6;

impl ClusterNode {
    fn new(tag: &str) -> Result<Self> {
        let mut bench = Bench::new(tag)?;
        let ifindex = scenarios::enter_cluster_node(&mut bench._lab)?;
        Ok(Self { bench, ifindex })
    }

    fn run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        packets::xdp_test_run_on(&mut self.bench.dataplane, packet, Some(self.ifindex))
    }

    fn counters(&self, port: u16) -> Result<porter_common::ServiceCounters> {
        self.counters_of(CLUSTER_VIP, port)
    }

    fn counters6(&self, port: u16) -> Result<porter_common::ServiceCounters> {
        self.counters_of(CLUSTER_VIP6, port)
    }

    fn counters_of(&self, vip: &str, port: u16) -> Result<porter_common::ServiceCounters> {
        let addr = ServiceAddr {
            vip: ip(vip),
            port,
            proto: Protocol::Tcp,
        };
        self.bench
            .dataplane
            .service_counters(&addr)?
            .context("service installed")
    }
}

/// A TCP service on [`CLUSTER_VIP`]:`port` → `:8080` of `pods`, each
/// `(pod, None)` on this node or `(pod, Some(node))` on another.
fn cluster_spec(port: u16, pods: &[(&str, Option<&str>)]) -> LocalService {
    LocalService {
        addr: ServiceAddr {
            vip: ip(CLUSTER_VIP),
            port,
            proto: Protocol::Tcp,
        },
        backends: pods
            .iter()
            .map(|(pod, node)| Backend {
                addr: ip(pod),
                port: 8080,
                node: node.map(ip),
                draining: false,
            })
            .collect(),
    }
}

/// `packet` as a node forwards it: MACs of the hop to the backend's node,
/// the IPv4 reserved flag set, the header checksum recomputed from scratch.
fn forwarded(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    packets::mark_forwarded(&mut out, scenarios::PEER_NODE_MAC, scenarios::NODE_MAC);
    out
}

fn cluster_tcp(sport: u16, port: u16, syn: bool) -> Result<Vec<u8>> {
    packets::build(
        ip(CLIENT4),
        ip(CLUSTER_VIP),
        L4::Tcp {
            sport,
            dport: port,
            syn,
        },
        Vlan::None,
    )
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn cluster_packets_are_forwarded_to_the_backends_node_with_only_the_macs_and_mark_changed()
-> Result<()> {
    let mut node = ClusterNode::new("dpfwd")?;
    node.bench.dataplane.reconcile(&[
        cluster_spec(80, &[(REMOTE_POD, Some("172.30.0.12"))]),
        cluster_spec(81, &[(REMOTE_POD, Some("172.30.0.13"))]),
        cluster_spec(83, &[(REMOTE_POD, Some("10.99.0.5"))]),
    ])?;
    // The SYN and the next packet (conntrack) go out of the interface they
    // came in on, byte for byte as sent but for the MACs and the mark.
    for (case, syn) in [("new flow", true), ("established", false)] {
        let packet = cluster_tcp(41000, 80, syn)?;
        let before = node.bench.stat(Stat::ForwardedRemote)?;
        let (action, out) = node.run(&packet)?;
        assert_eq!(action, XDP_TX, "{case}: sent back out of up0");
        assert_eq!(out, forwarded(&packet), "{case}: exact bytes");
        let summary = checked_summary(&out)?;
        assert_eq!(
            (summary.dst, summary.dport),
            (ip(CLUSTER_VIP), 80),
            "{case}: still addressed to the VIP"
        );
        assert_eq!(
            node.bench.stat(Stat::ForwardedRemote)?,
            before + 1,
            "{case}"
        );
    }
    let counters = node.counters(80)?;
    assert_eq!(
        (
            counters.packets,
            counters.new_flows,
            counters.forwarded_out,
            counters.forwarded_in
        ),
        (2, 1, 2, 0)
    );
    // A node whose MAC is not resolved, and one without a route: dropped,
    // counted.
    for (port, stat) in [
        (81, Stat::DropForwardNoNeighbour),
        (83, Stat::DropForwardNoRoute),
    ] {
        let packet = cluster_tcp(41001, port, true)?;
        let before = node.bench.stat(stat)?;
        let (action, out) = node.run(&packet)?;
        assert_eq!(action, XDP_DROP, "port {port}");
        assert_eq!(out, packet, "port {port}: not modified");
        assert_eq!(node.bench.stat(stat)?, before + 1, "port {port}: {stat:?}");
    }
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn forwarded_packets_are_served_locally_and_never_forwarded_again() -> Result<()> {
    let mut node = ClusterNode::new("dprcv")?;
    node.bench.dataplane.reconcile(&[
        // This node's pod, as the node another node forwards to sees it.
        cluster_spec(80, &[(LOCAL_POD, None), (REMOTE_POD, Some("172.30.0.12"))]),
        // Only a remote pod: a forwarded packet must not go on to it.
        cluster_spec(81, &[(REMOTE_POD, Some("172.30.0.12"))]),
    ])?;

    // Receive: a marked packet to a local pod is DNATed exactly as an
    // unmarked one of the same flow is, the mark cleared.
    let mut served = 0;
    for sport in 42000..42040u16 {
        let plain = cluster_tcp(sport, 80, true)?;
        let marked = forwarded(&plain);
        let (action, out) = node.run(&marked)?;
        if action == XDP_DROP {
            // The table picks the remote pod for this flow: refused.
            continue;
        }
        assert_eq!(
            action, XDP_PASS,
            "to the kernel, which routes it to the pod"
        );
        assert_dnat(&marked, &out, &[LOCAL_POD], 8080, "forwarded in");
        assert_eq!(out[IP_FLAGS] & 0x80, 0, "mark cleared");
        // The same flow unmarked (conntrack: the same pod) gives the same
        // IP packet, byte for byte.
        let (_, plain_out) = node.run(&plain)?;
        assert_eq!(out[12..], plain_out[12..], "as the plain packet");
        // The pod's reply goes straight to the client from the VIP (DSR).
        let reply = packets::build(
            ip(LOCAL_POD),
            ip(CLIENT4),
            L4::Tcp {
                sport: 8080,
                dport: sport,
                syn: false,
            },
            Vlan::None,
        )?;
        let replied = checked_summary(&node.bench.run_tc(&reply)?)?;
        assert_eq!(
            (replied.src, replied.sport, replied.dst),
            (ip(CLUSTER_VIP), 80, ip(CLIENT4)),
            "reply reverse-NATed on the backend's node"
        );
        served += 1;
    }
    assert!(
        (8..=32).contains(&served),
        "40 forwarded flows split between a local and a remote pod; {served} local"
    );
    let counters = node.counters(80)?;
    assert_eq!(counters.forwarded_in, served);
    assert_eq!(counters.forwarded_out, 0, "nothing forwarded twice");

    // Loop refusal: the only backend is remote.
    let packet = forwarded(&cluster_tcp(43000, 81, true)?);
    let before = node.bench.stat(Stat::DropForwardLoop)?;
    let (action, out) = node.run(&packet)?;
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, packet, "not modified");
    assert_eq!(node.bench.stat(Stat::DropForwardLoop)?, before + 1);
    // The refusal was not recorded: once this node has a pod for it (the
    // nodes agree again), the flow's retransmission is served here.
    node.bench
        .dataplane
        .upsert_service(&cluster_spec(81, &[(LOCAL_POD, None)]))?;
    let (action, out) = node.run(&packet)?;
    assert_eq!(action, XDP_PASS);
    assert_dnat(&packet, &out, &[LOCAL_POD], 8080, "after the tables agree");

    // A flow this node forwarded itself (its conntrack names the remote
    // pod) and that another node now forwards here: conntrack is not
    // followed to the remote pod; the packet is served locally or refused.
    node.bench
        .dataplane
        .upsert_service(&cluster_spec(81, &[(REMOTE_POD, Some("172.30.0.12"))]))?;
    let mut local = 0;
    for sport in 44000..44020u16 {
        let (action, _) = node.run(&cluster_tcp(sport, 81, true)?)?;
        assert_eq!(action, XDP_TX, "first forwarded out by this node");
    }
    node.bench.dataplane.upsert_service(&cluster_spec(
        81,
        &[(LOCAL_POD, None), (REMOTE_POD, Some("172.30.0.12"))],
    ))?;
    for sport in 44000..44020u16 {
        let packet = forwarded(&cluster_tcp(sport, 81, false)?);
        let (action, out) = node.run(&packet)?;
        assert_ne!(action, XDP_TX, "sport {sport}: never forwarded twice");
        if action == XDP_PASS {
            assert_dnat(&packet, &out, &[LOCAL_POD], 8080, "served locally");
            local += 1;
        } else {
            assert_eq!(action, XDP_DROP);
        }
    }
    assert!(local > 0, "some of 20 flows hash to the local pod");
    Ok(())
}

/// Router 172.30.0.1 of [`scenarios::enter_cluster_node`], resolved.
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
const NODE_V4: &str = "172.30.0.11";
const FAR_NODE_V4: &str = "172.30.9.5";

/// Across subnets: a packet for a pod on a node behind a router leaves in
/// an IPIP header from this node to that node; the receiving node takes it
/// off and serves it as any forwarded packet (never forwarding it again),
/// and its pod's SYN-ACK is clamped so that the client's full-size
/// segments still fit the link once encapsulated.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn cluster_packets_cross_subnets_in_ipip_and_syn_acks_are_clamped() -> Result<()> {
    let mut node = ClusterNode::new("dpipip")?;
    node.bench.dataplane.reconcile(&[
        cluster_spec(80, &[(LOCAL_POD, None)]),
        cluster_spec(81, &[(REMOTE_POD, Some("172.30.0.12"))]),
        cluster_spec(82, &[(REMOTE_POD, Some("172.30.9.5"))]),
    ])?;
    // Forward: the packet as sent, behind an outer header, to the router.
    for (case, syn) in [("new flow", true), ("established", false)] {
        let packet = cluster_tcp(45000, 82, syn)?;
        let before = node.bench.stat(Stat::ForwardedRemote)?;
        let (action, out) = node.run(&packet)?;
        assert_eq!(action, XDP_TX, "{case}: sent back out of up0");
        let want = packets::encapsulate(
            &packet,
            (ROUTER_MAC, scenarios::NODE_MAC),
            (ip(NODE_V4), ip(FAR_NODE_V4)),
        );
        assert_eq!(out, want, "{case}: exact bytes");
        let inner = packets::decapsulated(&out)?;
        assert_eq!(inner[14..], packet[14..], "{case}: inner packet untouched");
        checked_summary(&inner)?;
        assert_eq!(
            node.bench.stat(Stat::ForwardedRemote)?,
            before + 1,
            "{case}"
        );
    }
    assert_eq!(node.counters(82)?.forwarded_out, 2);

    // Receive: decapsulated, then DNATed to the local pod exactly as the
    // marked packet of the same flow from a node on the segment is.
    let tunnel = |packet: &[u8]| {
        packets::encapsulate(
            packet,
            (scenarios::PEER_NODE_MAC, scenarios::NODE_MAC),
            (ip(FAR_NODE_V4), ip(NODE_V4)),
        )
    };
    for sport in 46000..46010u16 {
        let plain = cluster_tcp(sport, 80, true)?;
        let (action, out) = node.run(&tunnel(&plain))?;
        assert_eq!(
            action, XDP_PASS,
            "to the kernel, which routes it to the pod"
        );
        assert_dnat(&plain, &out, &[LOCAL_POD], 8080, "decapsulated");
        assert_eq!(out[IP_FLAGS] & 0x80, 0, "mark cleared");
        let (_, marked_out) = node.run(&forwarded(&plain))?;
        assert_eq!(out, marked_out, "as the marked packet of the flow");
    }
    assert_eq!(node.counters(80)?.forwarded_in, 20);

    // Loop refusal: an encapsulated packet whose only backend is remote.
    let before = node.bench.stat(Stat::DropForwardLoop)?;
    let (action, _) = node.run(&tunnel(&cluster_tcp(46100, 81, true)?))?;
    assert_eq!(action, XDP_DROP, "never forwarded again");
    assert_eq!(node.bench.stat(Stat::DropForwardLoop)?, before + 1);
    assert_eq!(node.counters(81)?.forwarded_out, 0);

    // IPIP that is not for a VIP is not ours: untouched.
    let other = tunnel(&packets::build(
        ip(CLIENT4),
        ip("198.51.100.99"),
        tcp(46200, 80),
        Vlan::None,
    )?);
    assert_eq!(node.run(&other)?, (XDP_PASS, other.clone()));

    // MSS: the SYN-ACK of a flow whose SYN came encapsulated is clamped to
    // up0's MTU (1500) less 60; one whose SYN came marked on the segment is not.
    let client = (ip(CLIENT4), 47000);
    let vip = (ip(CLUSTER_VIP), 80);
    let pod = (ip(LOCAL_POD), 8080);
    for (case, encapsulated, want) in [
        ("encapsulated", true, 1440),
        ("on the segment", false, 1460),
    ] {
        let client = (client.0, client.1 + u16::from(encapsulated));
        let syn = packets::tcp_with_mss(client, vip, false, 1460)?;
        let arriving = if encapsulated {
            tunnel(&syn)
        } else {
            forwarded(&syn)
        };
        let (action, out) = node.run(&arriving)?;
        assert_eq!(action, XDP_PASS, "{case}");
        assert_eq!(
            packets::tcp_mss(&out),
            Some(1460),
            "{case}: the SYN is left alone"
        );
        let syn_ack = packets::tcp_with_mss(pod, client, true, 1460)?;
        // Twice: a retransmitted SYN-ACK is clamped too.
        for _ in 0..2 {
            let replied = node.bench.run_tc(&syn_ack)?;
            let summary = checked_summary(&replied)?;
            assert_eq!(
                (summary.src, summary.sport),
                (ip(CLUSTER_VIP), 80),
                "{case}"
            );
            assert_eq!(
                packets::tcp_mss(&replied),
                Some(want),
                "{case}: SYN-ACK MSS"
            );
        }
    }
    Ok(())
}

const CLUSTER_VIP6: &str = "2001:db8::20";
const LOCAL_POD6: &str = "fd00:244:1::2";
const REMOTE_POD6: &str = "fd00:244:2::2";

/// A TCP service on [`CLUSTER_VIP6`]:`port` → `:8080`, as [`cluster_spec`].
fn cluster_spec6(port: u16, pods: &[(&str, Option<&str>)]) -> LocalService {
    let mut spec = cluster_spec(port, pods);
    spec.addr.vip = ip(CLUSTER_VIP6);
    spec
}

/// IPv6 has no spare header bit for the mark, so every forwarded IPv6
/// packet travels in IPv6: to a node on the segment and behind a router
/// alike; the receiving node serves it as a forwarded packet (never
/// forwarding it again), and clamps the SYN-ACK by the 40-byte header.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn ipv6_cluster_packets_travel_in_ipv6_and_are_served_as_forwarded() -> Result<()> {
    let mut node = ClusterNode::new("dpip6")?;
    node.bench.dataplane.reconcile(&[
        cluster_spec6(80, &[(REMOTE_POD6, Some("fd00:30::12"))]),
        cluster_spec6(81, &[(REMOTE_POD6, Some("fd00:30:9::5"))]),
        cluster_spec6(82, &[(LOCAL_POD6, None)]),
        cluster_spec6(83, &[(REMOTE_POD6, Some("fd00:30::12"))]),
    ])?;
    let tcp6 = |sport: u16, port: u16, syn: bool| {
        packets::build(
            ip(CLIENT6),
            ip(CLUSTER_VIP6),
            L4::Tcp {
                sport,
                dport: port,
                syn,
            },
            Vlan::None,
        )
    };
    // Forward: on the segment to the peer's MAC, behind the router to its.
    for (port, node_ip, mac) in [
        (80, "fd00:30::12", scenarios::PEER_NODE_MAC),
        (81, "fd00:30:9::5", ROUTER_MAC),
    ] {
        for syn in [true, false] {
            let packet = tcp6(48000, port, syn)?;
            let (action, out) = node.run(&packet)?;
            assert_eq!(action, XDP_TX, "port {port}");
            let want = packets::encapsulate(
                &packet,
                (mac, scenarios::NODE_MAC),
                (ip("fd00:30::11"), ip(node_ip)),
            );
            assert_eq!(out, want, "port {port}, syn {syn}: exact bytes");
            checked_summary(&packets::decapsulated(&out)?)?;
        }
        assert_eq!(node.counters6(port)?.forwarded_out, 2);
    }

    // Receive: the same bytes as the plain packet of the flow gives.
    let tunnel = |packet: &[u8]| {
        packets::encapsulate(
            packet,
            (packets::NODE_MAC, packets::CLIENT_MAC),
            (ip("fd00:30::12"), ip("fd00:30::11")),
        )
    };
    for sport in 48100..48110u16 {
        let plain = tcp6(sport, 82, true)?;
        let (action, out) = node.run(&tunnel(&plain))?;
        assert_eq!(action, XDP_PASS);
        assert_dnat(&plain, &out, &[LOCAL_POD6], 8080, "decapsulated");
        let (_, plain_out) = node.run(&plain)?;
        assert_eq!(out, plain_out, "as the plain packet of the flow");
    }
    assert_eq!(node.counters6(82)?.forwarded_in, 10);

    // Loop refusal: its only pod is remote.
    let before = node.bench.stat(Stat::DropForwardLoop)?;
    let (action, _) = node.run(&tunnel(&tcp6(48200, 83, true)?))?;
    assert_eq!(action, XDP_DROP, "never forwarded again");
    assert_eq!(node.bench.stat(Stat::DropForwardLoop)?, before + 1);

    // MSS: 1500 less 100 (IPv6, TCP and the outer IPv6 header).
    let client = (ip(CLIENT6), 48300);
    let syn = packets::tcp_with_mss(client, (ip(CLUSTER_VIP6), 82), false, 1440)?;
    assert_eq!(node.run(&tunnel(&syn))?.0, XDP_PASS);
    let syn_ack = packets::tcp_with_mss((ip(LOCAL_POD6), 8080), client, true, 1440)?;
    let replied = node.bench.run_tc(&syn_ack)?;
    checked_summary(&replied)?;
    assert_eq!(packets::tcp_mss(&replied), Some(1400));
    Ok(())
}

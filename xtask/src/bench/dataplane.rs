//! The data plane suite.
//!
//! Per-packet cost: each case runs the XDP program through BPF_PROG_TEST_RUN
//! with `repeat = 1`, call after call, on one pinned CPU; the kernel's own
//! timing of each run is collected and the median reported, minus the median
//! of the empty XDP program measured the same way in the same run (`net_ns`),
//! and the mean minus the empty program's mean (`mean_net_ns`): the median
//! hides the tail (an LRU insert that evicts costs far more than one that
//! does not), and the mean is what a CPU pays per packet.
//! One call per run matters: with `repeat > 1` the kernel feeds the rewritten
//! packet back in, which would measure something else.
//!
//! Lab packet rate (`lab_udp_pps`): see `packet_rate`.
//!
//! Lab throughput: TCP connections per second (connect, read the server's
//! greeting, close) from a client namespace to a service with two pods on a
//! node, through Porter (XDP + tc) and through iptables DNAT rules shaped
//! like kube-proxy's, alternating in the same run; medians of the rounds.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

mod packet_rate;

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use porter_agent::{Dataplane, DataplaneConfig, Forwarding, PinLayout};
use porter_common::{Stat, program_names};
use porter_tests::{
    lab::Lab,
    netns::{NamedClient, run_in},
    packets::{self, L4, Vlan},
    pktgen, privilege,
    scenarios::{self, PodLab},
};

use super::{BenchArgs, emit, median};

const SUITE: &str = "dataplane";
const CALLS: usize = 20_000;
const CPU: usize = 1;
const XDP_TX: u32 = 3;

pub fn run(args: &BenchArgs) -> Result<()> {
    if !privilege::is_root() {
        bail!("the dataplane benchmark loads BPF and builds network namespaces: run it as root");
    }
    per_packet()?;
    if args.per_packet_only {
        return Ok(());
    }
    packet_rate::run(Duration::from_secs(args.seconds))?;
    throughput(Duration::from_secs(args.seconds))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("benchmark address")
}

fn per_packet() -> Result<()> {
    pktgen::pin_to_cpu(CPU)?;
    let mut lab = Lab::new("bench")?;
    let bpffs = lab.bpffs()?;
    let mut dataplane = Dataplane::open(&PinLayout::new(&bpffs), DataplaneConfig::default())?;
    dataplane.reconcile(&[PodLab::service(PodLab::EIP, 80, &[0, 1])?, udp_service()?])?;
    // Load the empty program too; the data plane only loads what it runs.
    let empty: &mut Xdp = dataplane
        .ebpf_mut()
        .program_mut(program_names::XDP_EMPTY)
        .context("no empty XDP program")?
        .try_into()?;
    empty.load()?;

    let client = ip("198.51.100.7");
    let eip = ip(PodLab::EIP);
    let syn = |sport| L4::Tcp {
        sport,
        dport: 80,
        syn: true,
    };
    let non_service = packets::build(client, ip("198.51.100.99"), syn(40000), Vlan::None)?;
    let established = packets::build(
        client,
        eip,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            syn: false,
        },
        Vlan::None,
    )?;
    let udp = packets::build(
        client,
        eip,
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
        Vlan::None,
    )?;
    // Every SYN a flow never seen before: distinct source ports and addresses.
    let new_flows: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            let source = ip(&format!(
                "198.51.{}.{}",
                100 + i / 60_000,
                1 + (i / 250) % 250
            ));
            packets::build(source, eip, syn(1024 + (i % 60_000) as u16), Vlan::None)
        })
        .collect::<Result<_>>()?;

    let baseline = timings(
        &mut dataplane,
        program_names::XDP_EMPTY,
        std::slice::from_ref(&non_service),
    )?;
    emit(SUITE, "empty_program", "median_ns", baseline.median, "ns");
    emit(SUITE, "empty_program", "mean_ns", baseline.mean, "ns");
    let cases: [(&str, &[Vec<u8>]); 4] = [
        ("non_service", std::slice::from_ref(&non_service)),
        ("new_flow_tcp_syn", &new_flows),
        ("established_tcp", std::slice::from_ref(&established)),
        ("udp", std::slice::from_ref(&udp)),
    ];
    for (case, packets) in cases {
        timings(&mut dataplane, program_names::XDP, packets)?.emit_net(case, &baseline);
    }
    drop(dataplane);
    drop(lab);
    // On a thread of its own: it becomes a node in a lab namespace.
    std::thread::spawn(move || cluster_per_packet(baseline))
        .join()
        .map_err(|_| anyhow::anyhow!("the Cluster cases panicked"))?
}

/// `externalTrafficPolicy: Cluster` per packet, against the same baseline:
/// `forward_remote` (new flows on the node that forwards them to a pod on
/// another node: FIB lookup, MAC rewrite, mark, `XDP_TX`) and
/// `receive_forwarded` (new flows another node forwarded, DNATed to a local
/// pod on the pod's node), each comparable with `new_flow_tcp_syn`; and
/// the same across subnets: `forward_remote_encap` (the node is behind a
/// router: a second FIB lookup, IPIP header pushed) and
/// `receive_encapsulated` (IPIP header taken off, then as `receive_forwarded`).
fn cluster_per_packet(baseline: Timings) -> Result<()> {
    pktgen::pin_to_cpu(CPU)?;
    let mut lab = Lab::new("bcl")?;
    let bpffs = lab.bpffs()?;
    let mut dataplane = Dataplane::open(&PinLayout::new(&bpffs), DataplaneConfig::default())?;
    let ingress = scenarios::enter_cluster_node(&mut lab)?;
    let eip = ip(PodLab::EIP);
    let backend = |pod: &str, node: Option<&str>| porter_agent::Backend {
        addr: ip(pod),
        port: PodLab::TARGET_PORT,
        node: node.map(ip),
        draining: false,
    };
    let service = |port: u16, backends: Vec<porter_agent::Backend>| porter_agent::LocalService {
        addr: porter_agent::ServiceAddr {
            vip: eip,
            port,
            proto: porter_agent::Protocol::Tcp,
        },
        backends,
    };
    dataplane.reconcile(&[
        service(80, vec![backend("10.244.2.2", Some("172.30.0.12"))]),
        service(81, vec![backend("10.244.1.2", None)]),
        service(82, vec![backend("10.244.2.2", Some("172.30.9.5"))]),
    ])?;
    let new_flows = |port: u16, forwarded: bool| -> Result<Vec<Vec<u8>>> {
        (0..CALLS)
            .map(|i| {
                let source = ip(&format!("198.51.100.{}", 1 + (i / 250) % 250));
                let syn = L4::Tcp {
                    sport: 1024 + (i % 60_000) as u16,
                    dport: port,
                    syn: true,
                };
                let mut packet = packets::build(source, eip, syn, Vlan::None)?;
                if forwarded {
                    packets::mark_forwarded(
                        &mut packet,
                        scenarios::NODE_MAC,
                        scenarios::PEER_NODE_MAC,
                    );
                }
                Ok(packet)
            })
            .collect()
    };
    let tunnelled: Vec<Vec<u8>> = new_flows(81, false)?
        .iter()
        .map(|packet| {
            packets::encapsulate(
                packet,
                (scenarios::NODE_MAC, scenarios::PEER_NODE_MAC),
                (ip("172.30.9.5"), ip("172.30.0.11")),
            )
        })
        .collect();
    for (case, packets) in [
        ("forward_remote", new_flows(80, false)?),
        ("receive_forwarded", new_flows(81, true)?),
        ("forward_remote_encap", new_flows(82, false)?),
        ("receive_encapsulated", tunnelled),
    ] {
        timings_on(&mut dataplane, program_names::XDP, &packets, Some(ingress))?
            .emit_net(case, &baseline);
    }
    for (case, port) in [("forward_remote", 80), ("forward_remote_encap", 82)] {
        let forwarded = porter_tests::packets::xdp_test_run_on(
            &mut dataplane,
            &new_flows(port, false)?[0],
            Some(ingress),
        )?;
        if forwarded.0 != XDP_TX {
            bail!(
                "{case} measured a program that did not forward (action {})",
                forwarded.0
            );
        }
    }
    Ok(())
}

fn udp_service() -> Result<porter_agent::LocalService> {
    let mut service = PodLab::service(PodLab::EIP, 53, &[0, 1])?;
    service.addr.proto = porter_agent::Protocol::Udp;
    Ok(service)
}

/// Kernel-measured times of single runs of one program.
#[derive(Clone, Copy)]
struct Timings {
    median: f64,
    mean: f64,
}

impl Timings {
    fn of(mut samples: Vec<f64>) -> Self {
        let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        Self {
            median: median(&mut samples),
            mean,
        }
    }

    /// Prints the raw median and both net costs (minus `baseline`).
    fn emit_net(&self, case: &str, baseline: &Timings) {
        emit(SUITE, case, "median_ns", self.median, "ns");
        emit(SUITE, case, "net_ns", self.median - baseline.median, "ns");
        emit(SUITE, case, "mean_net_ns", self.mean - baseline.mean, "ns");
    }
}

/// Kernel-measured times of `CALLS` single runs of `program`, cycling
/// through `packets`.
fn timings(dataplane: &mut Dataplane, program: &str, packets: &[Vec<u8>]) -> Result<Timings> {
    timings_on(dataplane, program, packets, None)
}

/// [`timings`] with the packets arriving on interface `ingress` of the
/// calling thread's namespace (so XDP's FIB lookups and `XDP_TX` see it).
fn timings_on(
    dataplane: &mut Dataplane,
    program: &str,
    packets: &[Vec<u8>],
    ingress: Option<u32>,
) -> Result<Timings> {
    let program: &mut Xdp = dataplane
        .ebpf_mut()
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?
        .try_into()?;
    let contexts: Vec<Option<Vec<u8>>> = packets
        .iter()
        .map(|packet| ingress.map(|ifindex| packets::xdp_context(packet.len(), ifindex)))
        .collect();
    let mut out = vec![0u8; 2048];
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let mut options = TestRunOptions::new();
        options.data_in = Some(&packets[i % packets.len()]);
        options.ctx_in = contexts[i % packets.len()].as_deref();
        options.data_out = Some(&mut out);
        let result = program.test_run(options)?;
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(Timings::of(samples))
}

/// Rounds of alternating measurements; the median of each side is
/// reported, so load from elsewhere on the machine hits both alike.
const ROUNDS: usize = 5;

fn throughput(duration: Duration) -> Result<()> {
    let mut iptables_lab = PodLab::new("bipt")?;
    install_kube_proxy_like_dnat(&iptables_lab, "tcp", 80)?;
    let mut kernel_lab = PodLab::new("bxdp")?;
    let mut redirect_lab = PodLab::new("bred")?;
    // Equal footing: redirect needs XDP on the pods' veths, so all get it.
    for lab in [&mut iptables_lab, &mut kernel_lab, &mut redirect_lab] {
        lab.enable_pod_xdp()?;
    }
    let mut dataplanes = Vec::new();
    for (lab, forwarding) in [
        (&kernel_lab, Forwarding::Kernel),
        (&redirect_lab, Forwarding::Redirect),
    ] {
        let mut dataplane = lab.start_dataplane(DataplaneConfig {
            forwarding,
            ..DataplaneConfig::default()
        })?;
        dataplane.upsert_service(&PodLab::service(PodLab::EIP, 80, &[0, 1])?)?;
        dataplanes.push(dataplane);
    }
    let (mut iptables, mut kernel, mut redirect) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        iptables.push(connections_per_second(&iptables_lab, duration)?);
        kernel.push(connections_per_second(&kernel_lab, duration)?);
        redirect.push(connections_per_second(&redirect_lab, duration)?);
    }
    let (iptables, kernel, redirect) = (
        median(&mut iptables),
        median(&mut kernel),
        median(&mut redirect),
    );
    emit(
        SUITE,
        "lab_tcp_connect_iptables",
        "connections_per_s",
        iptables,
        "1/s",
    );
    emit(
        SUITE,
        "lab_tcp_connect_porter",
        "connections_per_s",
        kernel,
        "1/s",
    );
    emit(
        SUITE,
        "lab_tcp_connect",
        "ratio_vs_iptables",
        kernel / iptables,
        "ratio",
    );
    // The forwarding Porter does not use by default, measured for the choice.
    emit(
        SUITE,
        "lab_tcp_connect_porter_redirect",
        "connections_per_s",
        redirect,
        "1/s",
    );
    emit(
        SUITE,
        "lab_tcp_connect_redirect",
        "ratio_vs_iptables",
        redirect / iptables,
        "ratio",
    );
    let redirected = dataplanes
        .last()
        .map(|dataplane| dataplane.global_counters())
        .transpose()?
        .and_then(|counters| {
            counters
                .into_iter()
                .find_map(|(stat, value)| (stat == Stat::Redirected).then_some(value))
        })
        .unwrap_or(0);
    emit(
        SUITE,
        "lab_tcp_connect_porter_redirect",
        "packets_redirected",
        redirected as f64,
        "packets",
    );
    Ok(())
}

/// kube-proxy's shape: a service chain picking an endpoint chain at random,
/// each endpoint chain a DNAT (and the node's conntrack behind it), for
/// `EIP:port/proto` to the pods' target port.
fn install_kube_proxy_like_dnat(lab: &PodLab, proto: &str, port: u16) -> Result<()> {
    let ipt = |args: &[&str]| -> Result<()> {
        let mut full = vec!["iptables", "-t", "nat"];
        full.extend_from_slice(args);
        lab.lab.exec(&lab.node, &full)?;
        Ok(())
    };
    for chain in ["KUBE-SVC-BENCH", "KUBE-SEP-1", "KUBE-SEP-2"] {
        ipt(&["-N", chain])?;
    }
    let eip = format!("{}/32", PodLab::EIP);
    let port = port.to_string();
    ipt(&[
        "-A",
        "PREROUTING",
        "-d",
        &eip,
        "-p",
        proto,
        "--dport",
        &port,
        "-j",
        "KUBE-SVC-BENCH",
    ])?;
    ipt(&[
        "-A",
        "KUBE-SVC-BENCH",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.5",
        "-j",
        "KUBE-SEP-1",
    ])?;
    ipt(&["-A", "KUBE-SVC-BENCH", "-j", "KUBE-SEP-2"])?;
    for (index, pod) in PodLab::POD_IPS.iter().enumerate() {
        let target = format!("{pod}:{}", PodLab::TARGET_PORT);
        let chain = format!("KUBE-SEP-{}", index + 1);
        ipt(&[
            "-A",
            &chain,
            "-p",
            proto,
            "-j",
            "DNAT",
            "--to-destination",
            &target,
        ])?;
    }
    Ok(())
}

fn connections_per_second(lab: &PodLab, duration: Duration) -> Result<f64> {
    let addr = std::net::SocketAddr::new(ip(PodLab::EIP), 80);
    lab.lab
        .exec(&lab.client, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    run_in(&lab.client, move || {
        // Warm up ARP and caches.
        for _ in 0..50 {
            NamedClient::connect(addr)?;
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < duration {
            NamedClient::connect(addr)?;
            done += 1;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    })
}

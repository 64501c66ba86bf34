//! `cargo xtask demo`: Porter at work in the data-centre lab of
//! docs/lab.md (router with BIRD, the controller, three nodes with one to
//! three pods each, a client), driven by the samples in `deploy/samples/`.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Result, bail};
use porter_tests::{
    bins,
    datacenter::{Datacenter, per_node, samples_dir},
    lab, privilege,
};

use crate::{args::DemoArgs, cmd, ebpf, setup};

const PODS_PER_NODE: [usize; 3] = [1, 2, 3];
const REQUESTS: usize = 100;

pub fn run(args: &DemoArgs) -> Result<()> {
    if !privilege::is_root() {
        bail!("the demo builds network namespaces and loads BPF: run it as root");
    }
    step("installing what the lab needs (Debian packages, bpffs, eBPF toolchain)");
    setup::ensure_all()?;
    step("building the eBPF object and the binaries");
    let object = ebpf::build(&ebpf::BuildArgs {
        release: false,
        locked: false,
    })?;
    println!("    eBPF object: {}", object.display());
    cmd::run(cmd::cargo().args(["build", "--quiet", "--workspace", "--bins"]))?;

    step("creating the lab: router (BIRD) + controller + 3 nodes with 1, 2 and 3 pods + client");
    let mut dc = Datacenter::new("demo", &PODS_PER_NODE)?;
    let shown = show(&mut dc);
    if shown.is_err() {
        println!("the lab when the demo failed:\n{}", dc.describe());
    }
    if args.keep {
        // Kept even when a step failed: that is when exploring helps most.
        print_explore(&dc, shown.as_ref().ok().copied())?;
        dc.keep();
    } else {
        step("tearing the lab down");
    }
    shown.map(drop)
}

/// Everything the demo shows, in a lab that exists; returns the Service's IP.
fn show(dc: &mut Datacenter) -> Result<IpAddr> {
    println!(
        "    client {}  ->  router 172.31.0.1 | 172.30.0.1 (bridge lan)",
        porter_tests::datacenter::CLIENT_V4
    );
    println!("    controller {}", porter_tests::datacenter::CONTROLLER_V4);
    for node in &dc.nodes {
        let pods: Vec<String> = node
            .pods
            .iter()
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect();
        println!(
            "    node {} {}  pods: {}",
            node.name,
            node.ip,
            pods.join(", ")
        );
    }
    println!(
        "    cluster manifests (the dir: source): {}",
        dc.manifests.display()
    );

    step("starting porter-agent on every node (XDP on eth0, maps pinned in the node's bpffs)");
    for index in 0..dc.nodes.len() {
        dc.start_agent(index)?;
    }

    step(
        "applying deploy/samples: eip.yaml (192.168.2.2), bgp.yaml (peer 172.30.0.1, add-paths send-max 8), service.yaml (mylbapp 8088 -> 80)",
    );
    for sample in ["eip.yaml", "bgp.yaml", "service.yaml"] {
        dc.apply_file(&samples_dir().join(sample))?;
    }
    let all_nodes: Vec<usize> = (0..dc.nodes.len()).collect();
    dc.set_endpoints("default", "mylbapp", &dc.endpoints_on(&all_nodes))?;
    println!(
        "    (and the EndpointSlices a cluster's endpoint controller would publish for its 6 pods)"
    );

    step("starting porter-controller (BGP AS 65000 -> BIRD AS 65001)");
    dc.start_controller()?;
    let ip = dc.wait_service_ip("default", "mylbapp", Duration::from_secs(30))?;
    println!("    Service default/mylbapp  EXTERNAL-IP {ip}  PORT 8088");

    step("BIRD's route to the external IP: one ECMP next hop per node");
    let hops = dc.hops_of(ip, &all_nodes);
    let took = dc.wait_next_hops(ip, &hops, Duration::from_secs(30))?;
    println!("    converged in {took:?}");
    for line in dc
        .lab
        .ip(&dc.router_ns, &["route", "show", &format!("{ip}/32")])?
        .lines()
    {
        println!("    ip route | {line}");
    }
    let bird = dc
        .router
        .birdc(&dc.lab, &["show", "route", "for", &ip.to_string(), "all"])?;
    for line in bird
        .lines()
        .filter(|l| l.contains("via") || l.contains("unicast"))
    {
        println!("    birdc    | {}", line.trim());
    }

    traffic(dc, ip)?;
    Ok(ip)
}

fn traffic(dc: &Datacenter, ip: IpAddr) -> Result<()> {
    step(&format!(
        "{REQUESTS} HTTP requests from the client to {ip}:8088"
    ));
    let addr = SocketAddr::new(ip, 8088);
    // The route may be up before every agent has programmed the service.
    let service = format!("{addr}/tcp");
    lab::wait_for(
        "every node's agent to program the service",
        Duration::from_secs(20),
        || {
            for node in &dc.nodes {
                if !inspect(&node.bpffs)?.contains(&service) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    let per_pod = dc.spread(addr, REQUESTS)?;
    println!("    per pod:  {}", counts(&per_pod));
    println!("    per node: {}", counts(&per_node(&per_pod)));

    step("per-service counters from each node's XDP maps");
    for node in &dc.nodes {
        let out = inspect(&node.bpffs)?;
        // The services table of `inspect`: per-service packets, bytes and new flows.
        for line in out.lines().take_while(|line| !line.trim().is_empty()) {
            println!("    {} | {line}", node.name);
        }
    }
    Ok(())
}

fn print_explore(dc: &Datacenter, ip: Option<IpAddr>) -> Result<()> {
    let ip = ip.map_or_else(|| "192.168.2.2".to_owned(), |ip| ip.to_string());
    let agent = bins::binary("porter-agent")?;
    let n1 = &dc.nodes[0];
    println!(
        "\nThe lab stays up. Explore it with:\n  \
         birdc -s {run}/bird/bird.ctl show route all\n  \
         ip -n {r} route show {ip}\n  \
         ip netns exec {cl} curl -s http://{ip}:8088/\n  \
         {agent} inspect --bpffs {bpffs}\n  \
         bpftool map dump pinned {bpffs}/porter/v{layout}/maps/PORTER_SVC_STATS\n  \
         ip netns exec {n1ns} bpftool net show dev eth0\n  \
         cat {m}/status/events.jsonl; ls {m}\n\
         Edit or add manifests in {m} and both binaries follow within a second.\n\
         Logs: {run}/*.log\n\
         Remove it with:\n  \
         for ns in $(ip netns list | grep -o '^{id}-[^ ]*'); do ip netns pids $ns | xargs -r kill; ip netns del $ns; done; \
         umount {run}/bpffs*; rm -rf {run}",
        run = dc.lab.run_dir().display(),
        r = dc.router_ns,
        cl = dc.client,
        bpffs = n1.bpffs.display(),
        n1ns = n1.ns,
        m = dc.manifests.display(),
        id = dc.lab.id(),
        agent = agent.display(),
        layout = porter_agent::pins::PIN_LAYOUT_VERSION,
    );
    Ok(())
}

/// `porter-agent inspect` of a node's pinned data plane.
fn inspect(bpffs: &std::path::Path) -> Result<String> {
    lab::run(
        Command::new(bins::binary("porter-agent")?)
            .args(["inspect", "--bpffs"])
            .arg(bpffs),
    )
}

fn counts(map: &std::collections::BTreeMap<String, usize>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn step(text: &str) {
    println!("==> {text}");
}

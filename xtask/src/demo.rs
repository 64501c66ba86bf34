//! `cargo xtask demo`: Porter at work in a network-namespace lab.
//!
//! Today the data plane is the pass-through XDP program: the demo builds it,
//! attaches it with the agent to a lab node, sends traffic from a lab client,
//! and reads the per-CPU counters back from the pinned map.
use anyhow::{Result, bail};
use porter_tests::{privilege, scenarios::SingleNodeLab};

use crate::{cmd, ebpf, setup};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the lab running afterwards and print commands to explore it.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !privilege::is_root() {
        bail!("the demo builds network namespaces and loads BPF: run it as root");
    }
    step("installing what the lab needs (Debian packages, bpffs, eBPF toolchain)");
    setup::ensure_all()?;
    step("building the eBPF object and the binaries");
    let object = ebpf::build(&ebpf::BuildArgs { release: false })?;
    println!("    eBPF object: {}", object.display());
    cmd::run(cmd::cargo().args(["build", "--quiet", "--workspace", "--bins"]))?;

    step("creating the lab: client 172.31.0.2 <-> node 172.31.0.1");
    let mut lab = SingleNodeLab::new("demo")?;

    step("starting porter-agent on the node (XDP on eth0, pinned under bpffs)");
    let log = lab.start_agent()?;
    for line in std::fs::read_to_string(&log)?.lines() {
        println!("    agent | {line}");
    }

    let before = lab.packets_seen()?;
    step("sending 100 pings from the client to the node");
    lab.ping_node(100)?;
    let after = lab.packets_seen()?;
    println!(
        "    XDP counter packets_seen: {before} -> {after} (+{})",
        after - before
    );

    if args.keep {
        let agent = porter_tests::bins::binary("porter-agent")?;
        println!(
            "\nThe lab stays up. Explore it with:\n  \
             ip netns exec {client} ping -c 3 {node_ip}\n  \
             {agent} inspect --bpffs {bpffs}\n  \
             bpftool map dump pinned {bpffs}/porter/v{layout}/maps/PORTER_STATS\n  \
             ip -n {node} link show eth0\n\
             Remove it with:\n  \
             {agent} cleanup --bpffs {bpffs}; umount {bpffs}; ip netns del {client}; ip netns del {node}",
            client = lab.client,
            node = lab.node,
            node_ip = lab.node_ip,
            bpffs = lab.bpffs.display(),
            agent = agent.display(),
            layout = porter_agent::pins::PIN_LAYOUT_VERSION,
        );
        lab.lab.keep();
    } else {
        step("tearing the lab down");
    }
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

//! BFD in `speakerMode: node` (docs/bfd.md): one rack, node n1 behind an FRR
//! leaf running bfdd with `neighbor <n1> bfd`, the BgpPeer with `bfd: {}`
//! (300 ms × 3). The agent's BFD session comes up and shows in the
//! BgpPeer status; an agent restart keeps the route (AdminDown, graceful
//! restart); then n1 goes silent on its link (every packet dropped
//! both ways; no link goes down, no Kubernetes object changes) and the leaf
//! removes n1's next hop, timed from the leaf's side; when the link heals,
//! the route comes back.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use porter_tests::{
    datacenter::Datacenter,
    lab::wait_for,
    manifests::{self, ServiceSpec},
    privilege,
};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";
/// The leaf must drop the route within this much of the cut: the detection
/// time (900 ms at the defaults) after the last packet, plus FRR and the
/// kernel, plus slack for a loaded 2-core CI machine. The measured value is
/// printed; `cargo xtask bench failover` is where it is measured properly.
const DEADLINE: Duration = Duration::from_secs(2);

fn bgp_manifests(dc: &Datacenter) -> String {
    let leaf = &dc.leaves[0];
    format!(
        "apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpConf\nmetadata:\n  name: default\n\
         spec:\n  as: 65000\n  speakerMode: node\n---\n\
         apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpPeer\nmetadata:\n  name: leaf1\n\
         spec:\n  conf:\n    peerAs: {}\n    neighborAddress: {}\n  timers:\n    config:\n      connectRetry: 1\n\
         \x20 nodeSelector:\n    rack: \"1\"\n  bfd: {{}}\n",
        leaf.config.local_as, leaf.config.local_address
    )
}

/// n1's BFD state in BgpPeer leaf1's status, as its agent wrote it.
fn bfd_status(dc: &Datacenter) -> Result<Option<String>> {
    let (snapshot, _) = porter_api::source::dir::load(&dc.manifests)?;
    Ok(snapshot
        .bgp_peers
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("leaf1"))
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.nodes.iter().find(|e| e.node == "n1"))
        .and_then(|e| e.bfd.clone()))
}

fn leaf_hops(dc: &Datacenter, eip: IpAddr) -> Result<Vec<IpAddr>> {
    Ok(dc.leaves[0]
        .next_hops(&dc.lab, &format!("{eip}/32"))?
        .into_iter()
        .collect())
}

/// Drops every packet n1 sends or receives on its link, without taking a
/// link down (the leaf's interface and routes do not change): what a dead
/// node looks like to the leaf. (The lab kernel has no netem; iptables in
/// the node's namespace does the same here.)
fn cut(dc: &Datacenter, on: bool) -> Result<()> {
    let action = if on { "-I" } else { "-D" };
    for program in ["iptables", "ip6tables"] {
        for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            dc.lab.exec(
                &dc.nodes[0].ns,
                &[program, action, chain, direction, "eth0", "-j", "DROP"],
            )?;
        }
    }
    Ok(())
}

#[test]
fn bfd_takes_a_silently_cut_node_out_of_the_leaf_s_route() -> Result<()> {
    if !privilege::can_run("bfd_takes_a_silently_cut_node_out_of_the_leaf_s_route") {
        return Ok(());
    }
    let mut dc = Datacenter::fabric("bfdnode", &[1])?;
    dc.leaves[0].spawn_frr_daemon(&mut dc.lab, "bfdd")?;
    dc.apply("bgp.yaml", &bgp_manifests(&dc))?;
    dc.apply("pool.yaml", &manifests::eip("pool", "192.168.2.0/28"))?;
    let web = ServiceSpec {
        namespace: NS,
        name: "web",
        port: 8088,
        target_port: 80,
        annotations: &[],
        ipv6: false,
    };
    dc.add_service(&web, &[0])?;
    dc.start_controller()?;
    dc.start_agent(0)?;
    let eip = dc.wait_service_ip(NS, "web", WAIT)?;
    let n1 = dc.nodes[0].ip;
    // The leaf runs BFD for its BGP neighbour n1 (bgpd registers it with bfdd).
    dc.leaves[0].frr_configure(&dc.lab, &[&format!("neighbor {n1} bfd")])?;

    wait_for("the leaf's route via n1", WAIT, || {
        Ok((leaf_hops(&dc, eip)? == [n1]).then_some(()))
    })
    .with_context(|| dc.describe())?;
    wait_for("n1's BFD session Up on both sides", WAIT, || {
        let leaf = dc.leaves[0].vtysh(&dc.lab, &format!("show bfd peer {n1}"))?;
        let ours = bfd_status(&dc)?;
        Ok((leaf.contains("Status: up") && ours.as_deref() == Some("Up")).then_some(()))
    })
    .with_context(|| {
        format!(
            "leaf: {}\nstatus: {:?}",
            dc.leaves[0]
                .vtysh(&dc.lab, "show bfd peers")
                .unwrap_or_default(),
            bfd_status(&dc)
        )
    })?;

    // An agent restart is not a failure: the stopping agent sends BFD
    // AdminDown (RFC 5882 section 3.2) and closes BGP for graceful
    // restart, so the leaf keeps n1's route throughout.
    dc.stop_agent(0)?;
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(3) {
        ensure!(
            leaf_hops(&dc, eip)? == [n1],
            "the leaf dropped n1 {:?} into an agent restart: {}",
            stopped.elapsed(),
            dc.leaves[0].describe(&dc.lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dc.start_agent(0)?;
    wait_for("n1's BFD session Up again after the restart", WAIT, || {
        let leaf = dc.leaves[0].vtysh(&dc.lab, &format!("show bfd peer {n1}"))?;
        Ok(
            (leaf.contains("Status: up") && bfd_status(&dc)?.as_deref() == Some("Up"))
                .then_some(()),
        )
    })?;
    ensure!(leaf_hops(&dc, eip)? == [n1], "route lost over the restart");

    // The silent cut, timed from the leaf's side: poll its FIB until n1 is gone.
    cut(&dc, true)?;
    let started = Instant::now();
    let gone = loop {
        let hops = leaf_hops(&dc, eip)?;
        if !hops.contains(&n1) {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < WAIT,
            "the leaf kept n1 for {WAIT:?}: {}",
            dc.leaves[0].describe(&dc.lab)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("silent cut: the leaf removed n1's next hop after {gone:?}");
    ensure!(
        gone <= DEADLINE,
        "the leaf removed n1 after {gone:?} (deadline {DEADLINE:?})"
    );

    // The link heals: BFD and BGP come back and so does the route.
    cut(&dc, false)?;
    let healed = Instant::now();
    wait_for("the leaf's route via n1 again", WAIT, || {
        Ok((leaf_hops(&dc, eip)? == [n1]).then_some(()))
    })
    .with_context(|| dc.describe())?;
    println!("link healed: route back after {:?}", healed.elapsed());
    Ok(())
}

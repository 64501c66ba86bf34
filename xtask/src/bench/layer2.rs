//! The Layer 2 suite: failover time in the Layer 2 lab (a client and three
//! nodes on one bridge, `porter-agent run --source dir:` on each).
//!
//! Each round crashes the node leading the IPv4 EIP (agent killed, link
//! down) and times, from the crash, until a request from the client is
//! answered by the successor's pod: the client's ARP entry must have moved
//! (gratuitous ARP) and the successor must be answering. The crashed node
//! then comes back, and the time until the EIP is handed back to it (a
//! planned move: the successor releases its lease at once) is reported too.
//! Baseline from the same run: the lease duration, the floor of a crash
//! failover (a lease must expire before anyone else may answer).
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use porter_agent::layer2::lease_rounds::Timing;
use porter_tests::{
    layer2_lab::{EIP, L2Lab, pod_of},
    privilege,
};

use super::{emit, max, median};
use crate::cmd;

const SUITE: &str = "layer2";
const ROUNDS: usize = 10;
const PATIENCE: Duration = Duration::from_secs(15);

pub fn run() -> Result<()> {
    if !privilege::is_root() {
        bail!("the layer2 benchmark builds network namespaces and loads BPF: run it as root");
    }
    cmd::run(cmd::cargo().args(["build", "-p", "porter-agent", "--bins"]))?;
    let mut lab = L2Lab::new("l2bench", 3)?;
    let names: Vec<String> = lab.node_names().iter().map(|n| n.to_string()).collect();
    for name in &names {
        lab.start(name)?;
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader = L2Lab::expected_leader(EIP, &all)?;
    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != leader).collect();
    let successor = L2Lab::expected_leader(EIP, &survivors)?;
    lab.until_answered_by(EIP, &pod_of(leader), PATIENCE)?;

    let (mut failovers, mut handbacks) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let crashed = Instant::now();
        lab.crash(leader)?;
        lab.until_answered_by(EIP, &pod_of(successor), PATIENCE)?;
        let failover = crashed.elapsed().as_secs_f64();
        let revived = Instant::now();
        lab.revive(leader)?;
        lab.until_answered_by(EIP, &pod_of(leader), PATIENCE)?;
        let handback = revived.elapsed().as_secs_f64();
        eprintln!("round {round}: failover {failover:.3} s, handback {handback:.3} s");
        failovers.push(failover);
        handbacks.push(handback);
    }
    let lease = Timing::default().lease.as_secs_f64();
    let failover = median(&mut failovers);
    emit(SUITE, "crash", "failover_seconds", failover, "s");
    emit(SUITE, "crash", "failover_max_seconds", max(&failovers), "s");
    emit(SUITE, "crash", "lease_seconds", lease, "s");
    emit(SUITE, "crash", "ratio_vs_lease", failover / lease, "ratio");
    emit(
        SUITE,
        "handback",
        "handback_seconds",
        median(&mut handbacks),
        "s",
    );
    Ok(())
}

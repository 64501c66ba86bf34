//! `failover_seconds` of the controller suite: two controller replicas in
//! the data-centre lab (`dir:` source, file lease), BIRD as the router; no
//! agents (the announcements come from the Nodes and EndpointSlices alone).
//!
//! Each round kills the leader (SIGKILL) and, at once, creates a Service:
//! the failover ends when the successor has published the Service's
//! address (its first write) and announces it over an Established session
//! (the router has a route to it). Median of ten rounds, with the lease
//! duration beside it: a crash failover cannot be shorter than the lease,
//! which must expire before another replica may lead.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use porter_tests::{
    datacenter::{Datacenter, POD_PORT, samples_dir},
    lab::wait_for,
    manifests::{self, ServiceManifest},
    privilege,
};

use super::{controller::median, emit};
use crate::cmd;

const SUITE: &str = "controller";
const ROUNDS: usize = 10;
/// The replicas' lease, seconds.
const LEASE: u64 = 4;
const PATIENCE: Duration = Duration::from_secs(30);

pub fn run() -> Result<()> {
    if !privilege::is_root() {
        eprintln!("failover_seconds skipped: the lab needs root (network namespaces)");
        return Ok(());
    }
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "porter-controller", "--bins"]))?;
    let mut dc = Datacenter::with_standby("fobench", &[1, 1, 1])?;
    dc.apply_file(&samples_dir().join("bgp.yaml"))?;
    dc.apply("pools.yaml", &manifests::eip("bench", "192.168.2.0/24"))?;
    dc.start_replica(0, LEASE)?;
    wait_for("replica 0 to lead", PATIENCE, || {
        Ok((dc.lease_holder()? == Some(0)).then_some(()))
    })?;
    dc.start_replica(1, LEASE)?;
    let nodes = [0, 1, 2];
    let mut failovers = Vec::new();
    for round in 0..ROUNDS {
        let leader = wait_for("a leader announcing", PATIENCE, || {
            Ok(dc.lease_holder()?.filter(|&r| announcing(&dc, r)))
        })?;
        let successor = 1 - leader;
        let name = format!("round{round}");
        let killed = Instant::now();
        dc.kill_replica(leader)?;
        dc.add_service(
            &ServiceManifest {
                namespace: "default",
                name: &name,
                port: 8080,
                target_port: POD_PORT,
                annotations: &[("eip.porter.kubesphere.io/v1alpha2", "bench")],
                ipv6: false,
                cluster: false,
            },
            &nodes,
        )?;
        let ip = dc.wait_service_ip("default", &name, PATIENCE)?;
        let hops = dc.hops_of(ip, &nodes);
        dc.wait_next_hops(ip, &hops, PATIENCE)?;
        if !announcing(&dc, successor) {
            bail!("round {round}: the route came, but not over replica {successor}'s session");
        }
        let failover = killed.elapsed().as_secs_f64();
        eprintln!("round {round}: failover {failover:.3} s (replica {leader} killed)");
        failovers.push(failover);
        dc.start_replica(leader, LEASE)?;
    }
    let lease = Duration::from_secs(LEASE).as_secs_f64();
    let failover = median(&mut failovers);
    emit(SUITE, "leader_killed", "failover_seconds", failover, "s");
    emit(SUITE, "leader_killed", "lease_seconds", lease, "s");
    emit(
        SUITE,
        "leader_killed",
        "ratio_vs_lease",
        failover / lease,
        "ratio",
    );
    Ok(())
}

fn announcing(dc: &Datacenter, replica: usize) -> bool {
    dc.replica_ip(replica)
        .is_some_and(|ip| dc.router.established(&dc.lab, ip).unwrap_or(false))
}

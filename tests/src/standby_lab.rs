//! The data-centre lab with two controller replicas (tests/src/datacenter.rs,
//! `Datacenter::with_standby_on_node`): replica 0 on node n1, replica 1 its
//! standby, both announcing one `Local` Service `web` (a pod on each node)
//! to the router, with BFD on their sessions. Used by `--test failover` and
//! `cargo xtask bench failover` (case `leader_node`).
//!
//! The lease is [`LEASE`] s, the BgpPeer's hold time 9 s with a KEEPALIVE
//! every second (which bounds BIRD 2.0's delay in acting on an expired
//! restart time, docs/bfd.md) and its BFD 300 ms × 3 (BIRD: `bfd graceful`;
//! FRR: `neighbor X bfd`).
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{
    datacenter::{Datacenter, POD_PORT, samples_dir},
    lab::wait_for,
    manifests::{self, ServiceManifest},
    routers::Daemon,
};

pub const NS: &str = "default";
const POOL: &str = "lab-v4";
const POOL_ANNOTATION: &str = "eip.porter.kubesphere.io/v1alpha2";
/// The replicas' leader lease, seconds.
pub const LEASE: u64 = 4;
pub const WAIT: Duration = Duration::from_secs(30);
pub const WEB_PORT: u16 = 8088;

pub struct StandbyLab {
    pub dc: Datacenter,
    /// The address of the Service `web`.
    pub web: IpAddr,
}

impl StandbyLab {
    /// The lab with `daemon` on the router, replica 0 leading, both
    /// replicas announcing, and every pod of `web` answering.
    pub fn start(tag: &str, daemon: Daemon) -> Result<Self> {
        let mut dc = Datacenter::with_standby_on_node(tag, &[1, 1, 1], daemon)?;
        let bgp = std::fs::read_to_string(samples_dir().join("bgp.yaml"))?;
        let with_bfd = bgp
            .replace("holdTime: 90", "holdTime: 9\n      keepaliveInterval: 1")
            .replace(
                "    neighborAddress: 172.30.0.1\n",
                "    neighborAddress: 172.30.0.1\n  bfd: {}\n",
            );
        ensure!(
            with_bfd.contains("holdTime: 9\n") && with_bfd.contains("bfd: {}"),
            "the sample BgpPeer no longer sets holdTime: 90 and neighborAddress: 172.30.0.1"
        );
        dc.apply("bgp.yaml", &with_bfd)?;
        dc.apply("pools.yaml", &manifests::eip(POOL, "192.168.2.0/25"))?;
        for index in 0..dc.nodes.len() {
            dc.start_agent(index)?;
        }
        // Replica 0 first, so that it leads; then its standby.
        dc.start_replica(0, LEASE)?;
        wait_for("replica 0 to lead", WAIT, || {
            Ok((dc.lease_holder()? == Some(0) && established(&dc, 0)?).then_some(()))
        })?;
        rejoin(&mut dc, 1)?;
        // BgpConf sets no routerId: each replica shows its own address.
        for replica in [0, 1] {
            let ip = dc.replica_ip(replica).context("no such replica")?;
            let id = dc.router.neighbor_router_id(&dc.lab, ip)?;
            ensure!(
                id.map(IpAddr::V4) == Some(ip),
                "replica {replica} at {ip} opened its session with BGP identifier {id:?}"
            );
        }
        let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
        dc.add_service(&service("web", WEB_PORT), &nodes)?;
        let web = dc.wait_service_ip(NS, "web", WAIT)?;
        dc.wait_next_hops(web, &dc.hops_of(web, &nodes), WAIT)?;
        answered_by_every_pod(&dc, SocketAddr::new(web, WEB_PORT))?;
        Ok(Self { dc, web })
    }
}

/// Waits until every pod (one per node) has answered a request to `addr`
/// once, so that a case counts the requests its failover loses, not those of
/// a Service's first moments (its data plane being programmed, the lab's
/// first neighbour resolutions).
pub fn answered_by_every_pod(dc: &Datacenter, addr: SocketAddr) -> Result<()> {
    let mut answered = BTreeSet::new();
    wait_for(
        &format!("an answer from every pod behind {addr}"),
        WAIT,
        || {
            answered.insert(dc.request(addr)?);
            Ok((answered.len() == dc.nodes.len()).then_some(()))
        },
    )
}

/// A `Local` Service of the lab's pool on every pod's HTTP port.
pub fn service(name: &str, port: u16) -> ServiceManifest<'_> {
    ServiceManifest {
        namespace: NS,
        name,
        port,
        target_port: POD_PORT,
        annotations: &[(POOL_ANNOTATION, POOL)],
        ipv6: false,
        cluster: false,
    }
}

/// Whether the router has replica `replica`'s session Established.
pub fn established(dc: &Datacenter, replica: usize) -> Result<bool> {
    let ip = dc.replica_ip(replica).context("no such replica")?;
    dc.router.established(&dc.lab, ip)
}

/// The replicas the router has an Established session with.
pub fn announcing(dc: &Datacenter) -> Result<Vec<usize>> {
    let mut up = Vec::new();
    for replica in 0..2 {
        if established(dc, replica)? {
            up.push(replica);
        }
    }
    Ok(up)
}

/// The replica that holds the lease and whose session is up.
pub fn leader(dc: &Datacenter) -> Result<usize> {
    wait_for("a leader announcing", WAIT, || {
        Ok(dc
            .lease_holder()?
            .filter(|&r| established(dc, r).unwrap_or(false)))
    })
}

/// Starts `replica` (again) and waits until it announces as a standby.
pub fn rejoin(dc: &mut Datacenter, replica: usize) -> Result<()> {
    dc.start_replica(replica, LEASE)?;
    wait_for(
        "the restarted replica to announce as a standby",
        WAIT,
        || Ok(established(dc, replica)?.then_some(())),
    )
}

/// The BgpPeer's BFD (`bfd: {}`: 300 ms × 3): the time the router takes
/// to declare a silent replica down.
const BFD_DETECTION: Duration = Duration::from_millis(900);

/// Waits until the router's BFD session with `replica` is Up at the
/// BgpPeer's timers: a case that cuts or freezes the replica before that
/// measures the hold timer, or BFD's slow start (3 s).
pub fn bfd_watches(dc: &Datacenter, replica: usize) -> Result<()> {
    let ip = dc.replica_ip(replica).context("no such replica")?;
    wait_for(
        &format!("the router's BFD session with replica {replica} to be Up at 300 ms x 3"),
        WAIT,
        || {
            let detection = dc.router.bfd_detection_time(&dc.lab, ip)?;
            Ok(detection.filter(|&time| time <= BFD_DETECTION).map(|_| ()))
        },
    )
}

/// Replica `replica`'s log so far.
pub fn log_of(dc: &Datacenter, replica: usize) -> String {
    let name = ["controller.log", "controller-b.log"][replica];
    std::fs::read_to_string(dc.lab.run_dir().join(name)).unwrap_or_default()
}

/// Makes replica 0 (on node n1) the leader, with replica 1 its standby,
/// announcing and checking n1: a SIGTERM of replica 1 hands the lease over
/// at once.
pub fn lead_from_n1(dc: &mut Datacenter) -> Result<()> {
    if leader(dc)? == 1 {
        dc.stop_replica(1)?;
        wait_for("replica 0 to lead", WAIT, || {
            Ok((dc.lease_holder()? == Some(0) && established(dc, 0)?).then_some(()))
        })?;
        rejoin(dc, 1)?;
    }
    // The standby must know n1 answers: only a node it has heard from can
    // be found dead (one it never heard stays announced, unchecked).
    wait_for(
        "replica 1 to hear n1 answer its liveness probe",
        WAIT,
        || {
            Ok(log_of(dc, 1)
                .lines()
                .any(|line| line.contains("checked from now on") && line.contains("n1"))
                .then_some(()))
        },
    )
}

/// Node n1 dies silently with leader replica 0 on it: its port stops
/// forwarding and the replica freezes, with no Kubernetes change.
pub fn kill_leader_node(dc: &Datacenter) -> Result<()> {
    dc.silence(0, true)?;
    dc.signal_replica(0, libc::SIGSTOP)
}

/// Undoes [`kill_leader_node`]: n1 forwards again and replica 0 runs (it
/// steps down on waking, and comes back as a standby).
pub fn revive_leader_node(dc: &Datacenter) -> Result<()> {
    dc.signal_replica(0, libc::SIGCONT)?;
    dc.silence(0, false)
}

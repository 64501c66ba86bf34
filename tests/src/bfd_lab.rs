//! The node-mode BFD lab, shared by `tests/tests/bfd_node_mode.rs` and
//! `cargo xtask bench failover`: one rack, node n1 behind an FRR leaf that
//! runs bfdd for its BGP neighbour n1, the BgpPeer with `spec.bfd` at the
//! given interval × 3 on both sides, one Service served by n1.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    datacenter::Datacenter,
    lab::wait_for,
    manifests::{self, ServiceManifest},
};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";

pub struct NodeBfdLab {
    pub dc: Datacenter,
    pub eip: IpAddr,
    pub n1: IpAddr,
}

impl NodeBfdLab {
    /// Starts the lab with BFD at `interval` × 3 on the agent and the leaf,
    /// and waits until the leaf routes the EIP via n1 and both ends of the
    /// BFD session are Up.
    pub fn start(tag: &str, interval: Duration) -> Result<Self> {
        let mut dc = Datacenter::fabric(tag, &[1])?;
        dc.leaves[0].spawn_frr_daemon(&mut dc.lab, "bfdd")?;
        let ms = interval.as_millis();
        let leaf = &dc.leaves[0];
        dc.apply(
            "bgp.yaml",
            &format!(
                "apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpConf\nmetadata:\n  name: default\n\
                 spec:\n  as: 65000\n  speakerMode: node\n---\n\
                 apiVersion: network.kubesphere.io/v1alpha2\nkind: BgpPeer\nmetadata:\n  name: leaf1\n\
                 spec:\n  conf:\n    peerAs: {}\n    neighborAddress: {}\n  timers:\n    config:\n      connectRetry: 1\n\
                 \x20 nodeSelector:\n    rack: \"1\"\n  bfd:\n    transmitInterval: {ms}\n    receiveInterval: {ms}\n",
                leaf.config.local_as, leaf.config.local_address
            ),
        )?;
        dc.apply("pool.yaml", &manifests::eip("pool", "192.168.2.0/28"))?;
        let web = ServiceManifest {
            namespace: NS,
            name: "web",
            port: 8088,
            target_port: 80,
            annotations: &[],
            ipv6: false,
            cluster: false,
        };
        dc.add_service(&web, &[0])?;
        dc.start_controller()?;
        dc.start_agent(0)?;
        let eip = dc.wait_service_ip(NS, "web", WAIT)?;
        let n1 = dc.nodes[0].ip;
        // The leaf runs BFD for its BGP neighbour n1 (bgpd registers it with
        // bfdd) with a profile of the same timers.
        let (ms, neighbor) = (ms.to_string(), n1.to_string());
        dc.leaves[0].frr_configure(
            &dc.lab,
            &[
                "exit",
                "bfd",
                "profile porter",
                &format!("receive-interval {ms}"),
                &format!("transmit-interval {ms}"),
                "exit",
                "exit",
                &format!("router bgp {}", dc.leaves[0].config.local_as),
                &format!("neighbor {neighbor} bfd"),
                &format!("neighbor {neighbor} bfd profile porter"),
            ],
        )?;
        let lab = Self { dc, eip, n1 };
        lab.wait_route()?;
        lab.wait_bfd_up()?;
        Ok(lab)
    }

    /// The leaf's next hops for the EIP, from its FIB.
    pub fn leaf_hops(&self) -> Result<Vec<IpAddr>> {
        Ok(self.dc.leaves[0]
            .next_hops(&self.dc.lab, &format!("{}/32", self.eip))?
            .into_iter()
            .collect())
    }

    pub fn wait_route(&self) -> Result<()> {
        wait_for("the leaf's route via n1", WAIT, || {
            Ok((self.leaf_hops()? == [self.n1]).then_some(()))
        })
        .with_context(|| self.dc.describe())
    }

    /// n1's BFD state in BgpPeer leaf1's status, as its agent wrote it.
    pub fn bfd_status(&self) -> Result<Option<String>> {
        let (snapshot, _) = porter_api::source::dir::load(&self.dc.manifests)?;
        Ok(snapshot
            .bgp_peers
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("leaf1"))
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.nodes.iter().find(|e| e.node == "n1"))
            .and_then(|e| e.bfd.clone()))
    }

    /// The leaf's `show bfd peer <n1>`.
    pub fn leaf_bfd(&self) -> Result<String> {
        self.dc.leaves[0].vtysh(&self.dc.lab, &format!("show bfd peer {}", self.n1))
    }

    /// How often the leaf's BFD session with n1 has gone down so far
    /// (`Session down events` of `show bfd peer <n1> counters`).
    pub fn leaf_bfd_downs(&self) -> Result<u64> {
        let text = self.dc.leaves[0]
            .vtysh(&self.dc.lab, &format!("show bfd peer {} counters", self.n1))?;
        text.lines()
            .find_map(|line| line.trim().strip_prefix("Session down events:"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no down events in {text}"))
    }

    pub fn wait_bfd_up(&self) -> Result<()> {
        wait_for("n1's BFD session Up on both sides", WAIT, || {
            let leaf_up = self.leaf_bfd()?.contains("Status: up");
            Ok((leaf_up && self.bfd_status()?.as_deref() == Some("Up")).then_some(()))
        })
        .with_context(|| {
            format!(
                "leaf: {}\nstatus: {:?}",
                self.leaf_bfd().unwrap_or_default(),
                self.bfd_status()
            )
        })
    }

    /// Drops every packet n1 sends or receives on its link, without taking
    /// a link down (the leaf's interfaces and routes do not change): what a
    /// dead node looks like to the leaf. (The lab kernel has no netem;
    /// iptables in the node's namespace does the same here.)
    pub fn silence(&self, on: bool) -> Result<()> {
        let action = if on { "-I" } else { "-D" };
        for program in ["iptables", "ip6tables"] {
            for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                self.dc.lab.exec(
                    &self.dc.nodes[0].ns,
                    &[program, action, chain, direction, "eth0", "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }

    /// Silences n1 and times, from the leaf's side (its FIB polled every
    /// 10 ms), until n1 is no longer a next hop of the EIP.
    pub fn time_silent_cut(&self) -> Result<Duration> {
        self.silence(true)?;
        let started = Instant::now();
        loop {
            if !self.leaf_hops()?.contains(&self.n1) {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < WAIT,
                "the leaf kept n1 for {WAIT:?}: {}",
                self.dc.leaves[0].describe(&self.dc.lab)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends the silence and waits until the route and BFD are back; returns
    /// how long the route took.
    pub fn heal(&self) -> Result<Duration> {
        self.silence(false)?;
        let healed = Instant::now();
        self.wait_route()?;
        let took = healed.elapsed();
        self.wait_bfd_up()?;
        Ok(took)
    }
}

//! Central (ADD-PATH) mode's node liveness check in the data-centre lab
//! (`crate::datacenter`): three nodes with one pod each, the controller
//! announcing one EIP through all three to BIRD, at the check's default
//! timers (300 ms × 3, 5 s hold). Shared by `tests/central_health.rs` and
//! `cargo xtask bench failover` (case `central`).
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use crate::{
    datacenter::{CONTROLLER_V4, Datacenter, POD_PORT, samples_dir},
    lab::wait_for,
    manifests::{self, ServiceManifest},
};

pub const NS: &str = "default";
const POOL: &str = "lab-v4";
const POOL_ANNOTATION: &str = "eip.porter.kubesphere.io/v1alpha2";
pub const WEB_PORT: u16 = 8088;
/// The controller's default `--metrics-addr` port.
const CONTROLLER_METRICS_PORT: u16 = 9190;
const WAIT: Duration = Duration::from_secs(30);
/// How long a cut may take to show at the router before a test gives up.
const CUT_WAIT: Duration = Duration::from_secs(10);

pub struct CentralLab {
    pub dc: Datacenter,
    pub web: IpAddr,
}

impl CentralLab {
    /// Builds the lab and starts Porter, the controller with `controller_args`
    /// added (e.g. other check timers). `before_controller` runs once the
    /// agents are up and before the controller starts (e.g. to put a
    /// filter in the probes' way).
    pub fn start(
        tag: &str,
        controller_args: &[&str],
        before_controller: impl FnOnce(&Datacenter) -> Result<()>,
    ) -> Result<Self> {
        let mut dc = Datacenter::new(tag, &[1, 1, 1])?;
        let bgp = std::fs::read_to_string(samples_dir().join("bgp.yaml"))?;
        dc.apply("bgp.yaml", &bgp)?;
        dc.apply("pools.yaml", &manifests::eip(POOL, "192.168.2.0/25"))?;
        for index in 0..dc.nodes.len() {
            dc.start_agent(index)?;
        }
        before_controller(&dc)?;
        dc.start_controller_with(controller_args)?;
        dc.wait_controller_session(WAIT)?;
        let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
        dc.add_service(
            &ServiceManifest {
                namespace: NS,
                name: "web",
                port: WEB_PORT,
                target_port: POD_PORT,
                annotations: &[(POOL_ANNOTATION, POOL)],
                ipv6: false,
                cluster: false,
            },
            &nodes,
        )?;
        let web = dc.wait_service_ip(NS, "web", WAIT)?;
        dc.wait_next_hops(web, &dc.hops_of(web, &nodes), WAIT)?;
        wait_for("a first answer from web", WAIT, || {
            dc.request(SocketAddr::new(web, WEB_PORT)).map(Some)
        })?;
        Ok(Self { dc, web })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.web, WEB_PORT)
    }

    /// The router's next hops for the EIP, sorted.
    pub fn hops(&self) -> Result<Vec<IpAddr>> {
        let mut hops = self.dc.next_hops(self.web)?;
        hops.sort();
        Ok(hops)
    }

    /// The next hops of nodes `indices`, sorted.
    pub fn hops_of(&self, indices: &[usize]) -> Vec<IpAddr> {
        let mut hops = self.dc.hops_of(self.web, indices);
        hops.sort();
        hops
    }

    /// Cuts node `index` off the LAN, or reconnects it
    /// ([`Datacenter::silence`]).
    pub fn silence(&self, index: usize, on: bool) -> Result<()> {
        self.dc.silence(index, on)
    }

    /// Cuts node `index` and times, from the router's side (its kernel
    /// FIB, which BIRD programs, polled every 10 ms), until the node is no
    /// longer a next hop of the EIP; the other nodes must stay.
    pub fn time_silent_cut(&self, index: usize) -> Result<Duration> {
        let others: Vec<usize> = (0..self.dc.nodes.len()).filter(|&i| i != index).collect();
        let want = self.hops_of(&others);
        self.silence(index, true)?;
        let started = Instant::now();
        loop {
            let hops = self.hops()?;
            if hops == want {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < CUT_WAIT,
                "the router still has {hops:?} {CUT_WAIT:?} after the cut of n{}",
                index + 1
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reconnects node `index` and waits until every node is a next hop
    /// again; returns how long that took.
    pub fn heal(&self, index: usize) -> Result<Duration> {
        self.silence(index, false)?;
        let healed = Instant::now();
        let all: Vec<usize> = (0..self.dc.nodes.len()).collect();
        self.dc
            .wait_next_hops(self.web, &self.hops_of(&all), WAIT)?;
        Ok(healed.elapsed())
    }

    /// The controller's Events with `reason`, as (regarding, message).
    pub fn events(&self, reason: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .dc
            .events()?
            .into_iter()
            .filter(|(r, _, _)| r == reason)
            .map(|(_, regarding, message)| (regarding, message))
            .collect())
    }

    /// Waits until the controller's check has seen node `index` answer
    /// (state `up`): only such a node is withdrawn when it goes silent.
    pub fn wait_checked(&self, index: usize) -> Result<()> {
        let node = &self.dc.nodes[index].name;
        let up = node_state_metric(node, "up");
        wait_for(&format!("{node} checked (up)"), WAIT, || {
            Ok((self.controller_metric(&up)? == Some(1.0)).then_some(()))
        })
    }

    /// The controller's `/metrics` text.
    pub fn controller_metrics(&self) -> Result<String> {
        let url = format!("http://{CONTROLLER_V4}:{CONTROLLER_METRICS_PORT}/metrics");
        self.dc.lab.exec(&self.dc.ctl, &["curl", "-sSf", &url])
    }

    /// A sample of the controller's `/metrics` whose line starts with `prefix`.
    pub fn controller_metric(&self, prefix: &str) -> Result<Option<f64>> {
        let text = self.controller_metrics()?;
        Ok(text
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok()))
    }
}

/// The `porter_node_check_state` series of `node` in `state`.
pub fn node_state_metric(node: &str, state: &str) -> String {
    format!("porter_node_check_state{{node=\"{node}\",state=\"{state}\"}}")
}

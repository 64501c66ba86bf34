//! The disruption run of `--test e2e` and `cargo xtask bench disruption`:
//! idle long-lived TCP connections held from the client to a
//! `externalTrafficPolicy: Cluster` and a `Local` Service (a [`NamedServer`]
//! on every pod, one pod port per Service) through the router's ECMP, while
//! a node is drained (NotReady, its pods running) and rejoins, every agent
//! restarts and the controller restarts. After each event every connection
//! exchanges a line and must still reach the pod that greeted it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    datacenter::{CONTROLLER_V4, Datacenter},
    lab::wait_for,
    manifests::{self, ServiceSpec},
    netns::{NamedClient, NamedServer, run_in},
};

/// What one event did to the connections of one policy.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub event: &'static str,
    /// `cluster` or `local`.
    pub policy: &'static str,
    /// Connections held when the event began.
    pub held: usize,
    pub resets: usize,
    pub timeouts: usize,
    /// Answered by another pod, or failed otherwise.
    pub other: usize,
}

impl Outcome {
    pub fn broken(&self) -> usize {
        self.resets + self.timeouts + self.other
    }

    /// `{"suite":"disruption","case":EVENT_POLICY,"metric":"broken_connections",...}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "suite": "disruption",
            "case": format!("{}_{}", self.event, self.policy),
            "metric": "broken_connections",
            "value": self.broken(),
            "held": self.held,
            "resets": self.resets,
            "timeouts": self.timeouts,
        })
    }
}

/// Idle long-lived connections held to one Service.
struct Held {
    policy: &'static str,
    addr: SocketAddr,
    connections: Vec<NamedClient>,
}

impl Held {
    /// Opens connections from the client until `count` are held.
    fn refill(&mut self, client: &str, count: usize) -> Result<()> {
        let (addr, missing) = (self.addr, count.saturating_sub(self.connections.len()));
        let fresh = run_in(client, move || {
            (0..missing)
                .map(|_| NamedClient::connect(addr))
                .collect::<Result<Vec<_>>>()
        })?;
        self.connections.extend(fresh);
        Ok(())
    }

    /// One exchange on every connection: each must still reach the pod it
    /// greeted from. Keeps the ones that did; returns (resets, timeouts, other).
    fn exchange(&mut self, round: &str) -> (usize, usize, usize) {
        let (mut resets, mut timeouts, mut other) = (0, 0, 0);
        self.connections.retain_mut(|connection| {
            let want = format!("{}:{round}", connection.server);
            match connection.echo(round) {
                Ok(echo) if echo == want => true,
                Ok(_) => {
                    other += 1;
                    false
                }
                Err(error) => {
                    let kind = error
                        .downcast_ref::<std::io::Error>()
                        .map(std::io::Error::kind);
                    match kind {
                        Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            timeouts += 1
                        }
                        Some(_) => resets += 1,
                        None => other += 1,
                    }
                    false
                }
            }
        });
        (resets, timeouts, other)
    }
}

/// The two Services held: name, policy, `Cluster`?, pod port. One port per
/// Service: two connections from one client port to two EIPs must not
/// meet as one 4-tuple at a pod (no SNAT tells them apart).
const SERVICES: [(&str, &str, bool, u16); 2] = [
    ("hold-c", "cluster", true, 7000),
    ("hold-l", "local", false, 7001),
];

/// Holds `count` connections per policy through the events of the module
/// docs on `dc` (3 nodes, the controller and agents running; Services in
/// `namespace`, EIPs from the pool `pool` names), then removes its
/// Services. Returns each event's outcome per policy, and the slowest event.
pub fn run(
    dc: &mut Datacenter,
    namespace: &str,
    pool: (&str, &str),
    count: usize,
    wait: Duration,
) -> Result<(Vec<Outcome>, Duration)> {
    let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
    let pods: usize = dc.nodes.iter().map(|node| node.pods.len()).sum();
    let mut servers = Vec::new();
    for pod in dc.nodes.iter().flat_map(|node| &node.pods) {
        for (_, _, _, port) in SERVICES {
            servers.push(NamedServer::start(&pod.ns, port, &pod.name)?);
        }
    }
    let mut held = Vec::new();
    for (name, policy, cluster, port) in SERVICES {
        let endpoints = dc.endpoints_on(&nodes);
        dc.apply(
            &format!("endpoints-{namespace}-{name}.yaml"),
            &manifests::endpoint_slice(namespace, name, false, port, &endpoints),
        )?;
        let spec = ServiceSpec {
            namespace,
            name,
            port,
            target_port: port,
            annotations: &[pool],
            ipv6: false,
            cluster,
        };
        dc.apply(&format!("svc-{name}.yaml"), &manifests::service(&spec))?;
        let ip = dc.wait_service_ip(namespace, name, wait)?;
        dc.wait_next_hops(ip, &dc.hops_of(ip, &nodes), wait)?;
        let addr = SocketAddr::new(ip, port);
        // Every agent has programmed it once a spread of connections
        // reaches every pod.
        let client = dc.client.clone();
        wait_for(&format!("every pod behind {name}"), wait, || {
            let greeted = run_in(&client, move || {
                (0..40)
                    .map(|_| NamedClient::connect(addr).map(|c| c.server))
                    .collect::<Result<BTreeSet<_>>>()
            });
            Ok(greeted.ok().filter(|greeted| greeted.len() == pods))
        })?;
        held.push(Held {
            policy,
            addr,
            connections: Vec::new(),
        });
    }
    let eips: Vec<IpAddr> = held.iter().map(|service| service.addr.ip()).collect();
    let hops = |dc: &Datacenter, nodes: &[usize]| -> Result<()> {
        for &ip in &eips {
            dc.wait_next_hops(ip, &dc.hops_of(ip, nodes), wait)?;
        }
        Ok(())
    };
    let mut outcomes = Vec::new();
    let mut slowest = Duration::ZERO;
    for event in EVENTS {
        for service in &mut held {
            service.refill(&dc.client, count)?;
            let (resets, timeouts, other) = service.exchange("before");
            if resets + timeouts + other > 0 {
                bail!(
                    "{} connections to {} broke before {event}: {resets} resets, {timeouts} \
                     timeouts, {other} wrong answers",
                    service.policy,
                    service.addr
                );
            }
        }
        let started = Instant::now();
        match event {
            "node_leaves" => {
                // Drained: NotReady, its pods keep running and serving.
                dc.set_node_ready(2, false)?;
                hops(dc, &[0, 1])?;
            }
            "node_joins" => {
                dc.set_node_ready(2, true)?;
                hops(dc, &[0, 1, 2])?;
            }
            "agent_restart" => {
                for index in 0..dc.nodes.len() {
                    dc.stop_agent(index)?;
                    dc.start_agent(index)?;
                }
            }
            _ => {
                dc.stop_controller()?;
                dc.start_controller()?;
                let controller: IpAddr = CONTROLLER_V4.parse()?;
                wait_for("BIRD's session with the restarted controller", wait, || {
                    Ok(dc.router.established(&dc.lab, controller)?.then_some(()))
                })?;
                thread::sleep(Duration::from_secs(2));
            }
        }
        slowest = slowest.max(started.elapsed());
        for service in &mut held {
            let before = service.connections.len();
            let (resets, timeouts, other) = service.exchange(event);
            outcomes.push(Outcome {
                event,
                policy: service.policy,
                held: before,
                resets,
                timeouts,
                other,
            });
        }
    }
    drop(held);
    drop(servers);
    for (name, ..) in SERVICES {
        dc.delete(&format!("svc-{name}.yaml"))?;
        dc.delete(&format!("endpoints-{namespace}-{name}.yaml"))
            .with_context(|| format!("removing {name}"))?;
    }
    Ok((outcomes, slowest))
}

/// The events, in order: node 3 drained and back, every agent, the controller.
const EVENTS: [&str; 4] = [
    "node_leaves",
    "node_joins",
    "agent_restart",
    "controller_restart",
];

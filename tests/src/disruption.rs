//! The disruption run of `--test e2e` and `cargo xtask bench disruption`:
//! idle long-lived TCP connections held from the client to a
//! `externalTrafficPolicy: Cluster` and a `Local` Service (a [`NamedServer`]
//! on every pod, one pod port per Service) through the router's ECMP, while
//! a node is drained (NotReady, its pods running) and rejoins, the pods on
//! one node roll, every agent restarts and the controller restarts. After
//! each event every connection whose pod still exists exchanges a line and
//! must still reach the pod that greeted it.
//!
//! The roll is a rollout's step on one node: new pods start and turn ready
//! while the old ones terminate but still serve (KEP-1669), which is
//! checked on its own (`pods_terminating`: the old pods keep their
//! connections, and no new connection reaches them); then the old pods are
//! gone (`pods_roll`: their connections are counted `gone`, not broken).
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
    manifests::{self, ServiceManifest},
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
    /// Held to a pod that the event took away: not counted as broken.
    pub gone: usize,
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
            "gone": self.gone,
        })
    }
}

/// Idle long-lived connections held to one Service.
struct Held {
    policy: &'static str,
    addr: SocketAddr,
    connections: Vec<NamedClient>,
    /// Connections dropped during the current event because their pod went.
    gone: usize,
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

    /// Forgets the connections to pods `pods` (which are gone).
    fn forget(&mut self, pods: &[String]) {
        let before = self.connections.len();
        self.connections
            .retain(|connection| !pods.contains(&connection.server));
        self.gone += before - self.connections.len();
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

/// The pods whose `count` new connections to `addr` greeted from the
/// client (one per connection, with repeats); the connections are closed.
fn greetings(client: &str, addr: SocketAddr, count: usize) -> Result<Vec<String>> {
    run_in(client, move || {
        (0..count)
            .map(|_| NamedClient::connect(addr).map(|c| c.server))
            .collect::<Result<Vec<_>>>()
    })
}

/// Writes both Services' EndpointSlices: every pod of the lab, those at
/// `terminating` addresses as terminating and still serving.
fn publish(dc: &Datacenter, namespace: &str, terminating: &BTreeSet<IpAddr>) -> Result<()> {
    let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
    let mut endpoints = dc.endpoints_on(&nodes);
    for endpoint in &mut endpoints {
        endpoint.terminating = terminating.contains(&endpoint.address);
    }
    for (name, _, _, port) in SERVICES {
        dc.apply(
            &format!("endpoints-{namespace}-{name}.yaml"),
            &manifests::endpoint_slice(namespace, name, false, port, &endpoints),
        )?;
    }
    Ok(())
}

/// The node whose pods roll: n3, with three pods.
const ROLLED: usize = 2;

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
    // Each pod's servers, by pod name.
    let mut servers: Vec<(String, NamedServer)> = Vec::new();
    for pod in dc.nodes.iter().flat_map(|node| &node.pods) {
        for (_, _, _, port) in SERVICES {
            servers.push((
                pod.name.clone(),
                NamedServer::start(&pod.ns, port, &pod.name)?,
            ));
        }
    }
    publish(dc, namespace, &BTreeSet::new())?;
    let mut held = Vec::new();
    for (name, policy, cluster, port) in SERVICES {
        let spec = ServiceManifest {
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
            let greeted = greetings(&client, addr, 40);
            Ok(greeted
                .ok()
                .map(BTreeSet::from_iter)
                .filter(|greeted: &BTreeSet<String>| greeted.len() == pods))
        })?;
        held.push(Held {
            policy,
            addr,
            connections: Vec::new(),
            gone: 0,
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
            "pods_roll" => {
                let old = start_roll(dc, namespace, &mut servers, &held, wait)?;
                for service in &mut held {
                    let before = service.connections.len();
                    let (resets, timeouts, other) = service.exchange("pods_terminating");
                    outcomes.push(Outcome {
                        event: "pods_terminating",
                        policy: service.policy,
                        held: before,
                        resets,
                        timeouts,
                        other,
                        gone: 0,
                    });
                }
                finish_roll(dc, namespace, &mut servers, &old, &held, wait)?;
                for service in &mut held {
                    service.forget(&old);
                }
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
                gone: std::mem::take(&mut service.gone),
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

/// The events, in order: node 3 drained and back, node 3's pods roll,
/// every agent, the controller.
const EVENTS: [&str; 5] = [
    "node_leaves",
    "node_joins",
    "pods_roll",
    "agent_restart",
    "controller_restart",
];

/// The first half of a roll on node [`ROLLED`]: as many new pods as it has
/// start and are published ready, its old ones terminating (still
/// serving). Returns once new connections reach every ready pod, and
/// fails if any new connection reaches a terminating one. Returns the old
/// pods' names.
fn start_roll(
    dc: &mut Datacenter,
    namespace: &str,
    servers: &mut Vec<(String, NamedServer)>,
    held: &[Held],
    wait: Duration,
) -> Result<Vec<String>> {
    let node = dc.nodes.get(ROLLED).context("no node to roll")?;
    let old: Vec<String> = node.pods.iter().map(|pod| pod.name.clone()).collect();
    let old_ips: BTreeSet<IpAddr> = node.pods.iter().map(|pod| pod.ip).collect();
    let fresh = dc.add_pods(ROLLED, old.len())?;
    for pod in dc.nodes[ROLLED]
        .pods
        .iter()
        .filter(|pod| fresh.contains(&pod.name))
    {
        for (_, _, _, port) in SERVICES {
            servers.push((
                pod.name.clone(),
                NamedServer::start(&pod.ns, port, &pod.name)?,
            ));
        }
    }
    publish(dc, namespace, &old_ips)?;
    let ready: BTreeSet<String> = dc
        .nodes
        .iter()
        .flat_map(|node| &node.pods)
        .map(|pod| pod.name.clone())
        .filter(|name| !old.contains(name))
        .collect();
    let client = dc.client.clone();
    for addr in held.iter().map(|service| service.addr) {
        wait_for(
            &format!("new connections to {addr} on the ready pods"),
            wait,
            || {
                let greeted = greetings(&client, addr, 40).ok();
                Ok(greeted
                    .map(BTreeSet::from_iter)
                    .filter(|greeted: &BTreeSet<String>| *greeted == ready))
            },
        )?;
        let strays: Vec<String> = greetings(&client, addr, 100)?
            .into_iter()
            .filter(|pod| old.contains(pod))
            .collect();
        if !strays.is_empty() {
            bail!(
                "{} of 100 new connections to {addr} reached terminating pods: {strays:?}",
                strays.len()
            );
        }
    }
    Ok(old)
}

/// The second half of a roll: the old pods are gone (their servers stop,
/// their addresses leave the EndpointSlices). Returns once no node's data
/// plane holds them as backends any more.
fn finish_roll(
    dc: &mut Datacenter,
    namespace: &str,
    servers: &mut Vec<(String, NamedServer)>,
    old: &[String],
    held: &[Held],
    wait: Duration,
) -> Result<()> {
    let old_ips: BTreeSet<IpAddr> = dc.nodes[ROLLED]
        .pods
        .iter()
        .filter(|pod| old.contains(&pod.name))
        .map(|pod| pod.ip)
        .collect();
    servers.retain(|(pod, _)| !old.contains(pod));
    dc.remove_pods(ROLLED, old)?;
    publish(dc, namespace, &BTreeSet::new())?;
    for service in held {
        wait_for(
            &format!("the old pods out of every data plane's {}", service.addr),
            wait,
            || {
                let installed = dc.installed_backends(service.addr)?;
                Ok(installed.is_disjoint(&old_ips).then_some(()))
            },
        )?;
    }
    Ok(())
}

//! What this node's data plane should serve, from the cluster state. Pure:
//! a [`Snapshot`] and the node's name in, [`LocalService`]s out.
//!
//! A Porter Service with an allocated EIP (in `status.loadBalancer.ingress`)
//! becomes one data plane service per (EIP, port). Its backends are the
//! endpoints of its EndpointSlices that are ready, or terminating and still
//! serving (those are marked draining: they keep their flows and take new
//! ones only when no other backend is left, see `maglev::backend_table`), at
//! the target port the slice names for that Service port (which is how named
//! `targetPort`s resolve: kube fills the slice's ports per pod):
//! - `externalTrafficPolicy: Local`: those that run on this node. A service
//!   without local backends is left out: the controller does not announce
//!   this node for it.
//! - `Cluster` (the default): all of them in the cluster, each remote one
//!   with the address of its node, so that every node builds the same
//!   Maglev table (see docs/design.md, "External traffic policy `Cluster`").
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use porter_api::{
    ObjectKey,
    service::{EndpointState, endpoint_state, ingress_ips, opted_in, slice_service},
    source::Snapshot,
};

use crate::service::{Backend, LocalService, Protocol, ServiceAddr};

/// Something in the cluster state that keeps (part of) a Service from being
/// served here, said so that an operator can fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub service: ObjectKey,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.service, self.message)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Sorted by address; backends sorted and deduplicated.
    pub services: Vec<LocalService>,
    pub problems: Vec<Problem>,
}

/// The services `node` should serve, given `snapshot`.
pub fn desired(snapshot: &Snapshot, node: &str) -> Desired {
    Cache::new(node).desired(snapshot)
}

/// [`desired`] for one node, from one snapshot after another: a Service
/// whose object and EndpointSlices are the very same (`Arc`s) as at the
/// last call is not read again. The kube source hands on the same `Arc` for
/// an object that did not change, so a sync costs about the Services that
/// changed, not the whole cluster. (Holding the `Arc`s keeps their
/// addresses from being reused by other objects.)
pub struct Cache {
    node: String,
    services: BTreeMap<ObjectKey, Entry>,
    /// The Nodes' addresses at the last call: `Cluster` backends depend on
    /// them, so entries are read again when they change.
    node_addresses: NodeAddresses,
}

/// Each Node's `InternalIP`s, by name.
type NodeAddresses = BTreeMap<String, Vec<IpAddr>>;

/// Which endpoints a Service's traffic goes to from this node.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// `externalTrafficPolicy: Local`: the ones on this node.
    Local { node: &'a str },
    /// `Cluster`: every one in the cluster, remote ones by their node's address.
    Cluster {
        node: &'a str,
        addresses: &'a NodeAddresses,
    },
}

/// What one Service asks of this node, and the objects it follows from.
struct Entry {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    /// In the order found, so that problems read the same at every pass.
    items: Vec<Item>,
}

enum Item {
    Claim(ServiceAddr, BTreeSet<Backend>),
    Problem(String),
}

impl Cache {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            services: BTreeMap::new(),
            node_addresses: NodeAddresses::new(),
        }
    }

    pub fn desired(&mut self, snapshot: &Snapshot) -> Desired {
        let mut slices: BTreeMap<ObjectKey, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in &snapshot.endpoint_slices {
            if let Some(key) = slice_service(slice) {
                slices.entry(key).or_default().push(slice);
            }
        }
        // Sorted by key: deterministic winners when two Services claim the
        // same EIP:port.
        let mut previous = std::mem::take(&mut self.services);
        let addresses = node_addresses(snapshot);
        if addresses != self.node_addresses {
            previous.clear();
            self.node_addresses = addresses;
        }
        for svc in snapshot.services.iter().filter(|svc| opted_in(svc)) {
            let key = ObjectKey::of(&svc.metadata);
            let own_slices = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
            let entry = match previous.remove(&key) {
                Some(entry) if entry.follows_from(svc, own_slices) => entry,
                _ => Entry {
                    service: Arc::clone(svc),
                    slices: own_slices.iter().map(|slice| Arc::clone(slice)).collect(),
                    items: service_items(
                        svc,
                        own_slices,
                        &self.node,
                        Scope::Cluster {
                            node: &self.node,
                            addresses: &self.node_addresses,
                        },
                    ),
                },
            };
            self.services.insert(key, entry);
        }
        self.resolve()
    }

    /// Every Service's claims in key order: the first claim of an
    /// `EIP:port/protocol` wins.
    fn resolve(&self) -> Desired {
        let mut out = Desired::default();
        let mut claimed: BTreeMap<ServiceAddr, (&ObjectKey, &BTreeSet<Backend>)> = BTreeMap::new();
        for (key, entry) in &self.services {
            for item in &entry.items {
                let message = match item {
                    Item::Problem(message) => message.clone(),
                    Item::Claim(addr, backends) => match claimed.get(addr) {
                        Some((owner, _)) => format!(
                            "{addr} is also claimed by {owner}, which is served there; \
                             give one of them another port or address"
                        ),
                        None => {
                            claimed.insert(*addr, (key, backends));
                            continue;
                        }
                    },
                };
                out.problems.push(Problem {
                    service: key.clone(),
                    message,
                });
            }
        }
        out.services = claimed
            .into_iter()
            .map(|(addr, (_, backends))| LocalService {
                addr,
                backends: backends.iter().copied().collect(),
            })
            .collect();
        out
    }
}

impl Entry {
    fn follows_from(&self, service: &Arc<Service>, slices: &[&Arc<EndpointSlice>]) -> bool {
        Arc::ptr_eq(&self.service, service)
            && self.slices.len() == slices.len()
            && self
                .slices
                .iter()
                .zip(slices)
                .all(|(mine, theirs)| Arc::ptr_eq(mine, theirs))
    }
}

/// Each Node's `InternalIP`s.
fn node_addresses(snapshot: &Snapshot) -> NodeAddresses {
    snapshot
        .nodes
        .iter()
        .filter_map(|node| Some((node.metadata.name.clone()?, node)))
        .map(|(name, node)| {
            let ips = node
                .status
                .as_ref()
                .and_then(|status| status.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.trim().parse().ok())
                .collect();
            (name, ips)
        })
        .collect()
}

/// Whether the Service asks for `externalTrafficPolicy: Local`. Unset is
/// `Cluster`, the Kubernetes default (the API server fills it in).
fn is_local_policy(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|spec| spec.external_traffic_policy.as_deref())
        == Some("Local")
}

/// What Service `svc` asks of `node`: a claim per (EIP, port) with
/// backends, and the problems found on the way.
fn service_items(
    svc: &Service,
    slices: &[&Arc<EndpointSlice>],
    node: &str,
    cluster: Scope<'_>,
) -> Vec<Item> {
    let mut items = Vec::new();
    let eips = ingress_ips(svc);
    if eips.is_empty() {
        return items;
    }
    let local = is_local_policy(svc);
    let slices: Vec<&EndpointSlice> = slices.iter().map(|slice| slice.as_ref()).collect();
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    for port in ports.into_iter().flatten() {
        let mut problem = |message: String| items.push(Item::Problem(message));
        let Some((proto, number)) = service_port(port, &mut problem) else {
            continue;
        };
        for &vip in &eips {
            let mut problem = |message: String| items.push(Item::Problem(message));
            let scope = if local {
                Scope::Local { node }
            } else {
                cluster
            };
            let backends = serving_backends(&slices, port, proto, vip, &scope, &mut problem);
            if backends.is_empty() {
                continue;
            }
            let addr = ServiceAddr {
                vip,
                port: number,
                proto,
            };
            items.push(Item::Claim(addr, backends));
        }
    }
    items
}

/// The protocol and port number of a Service port the data plane can serve.
fn service_port(port: &ServicePort, problem: &mut impl FnMut(String)) -> Option<(Protocol, u16)> {
    let proto = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => {
            problem(format!(
                "port {}: protocol {other} is not supported by the data plane (TCP and UDP are)",
                port.port
            ));
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(number) if number != 0 => Some((proto, number)),
        _ => {
            problem(format!("port {} is not a valid port number", port.port));
            None
        }
    }
}

/// The serving endpoints of `port` in `scope` on the family of `vip`, at
/// their target port.
fn serving_backends(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    proto: Protocol,
    vip: IpAddr,
    scope: &Scope<'_>,
    problem: &mut impl FnMut(String),
) -> BTreeSet<Backend> {
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    // By address and port: a pod listed on two nodes (a stale slice) is
    // placed on the first node by name, the same choice on every node.
    let mut chosen: BTreeMap<(IpAddr, u16), Placed<'_>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
        let mut found: Vec<(IpAddr, Placed<'_>)> = Vec::new();
        for ep in slice.endpoints.iter().flatten() {
            let draining = match endpoint_state(ep) {
                EndpointState::Ready => false,
                EndpointState::Draining => true,
                EndpointState::Out => continue,
            };
            let Some((node, via)) = placement(ep.node_name.as_deref(), scope, vip, problem) else {
                continue;
            };
            for text in &ep.addresses {
                match text.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == vip.is_ipv4() => found.push((
                        ip,
                        Placed {
                            node,
                            via,
                            draining,
                        },
                    )),
                    _ => problem(format!(
                        "EndpointSlice {slice_name}: endpoint address {text:?} is not an {family} address"
                    )),
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        let Some(target) = target_port(slice, port, proto) else {
            problem(format!(
                "port {}: EndpointSlice {slice_name} lists no port {:?} and targetPort {} is not a \
                 usable port number; the endpoints controller lists it once a pod names that port",
                port.port,
                port.name.as_deref().unwrap_or_default(),
                describe(port.target_port.as_ref()),
            ));
            continue;
        };
        for (addr, placed) in found {
            let entry = chosen.entry((addr, target)).or_insert(placed);
            if entry.node != placed.node {
                let first = entry.node.min(placed.node);
                problem(format!(
                    "endpoint {addr} is listed on nodes {} and {}; it is served on {first}",
                    entry.node, placed.node
                ));
                if placed.node < entry.node {
                    *entry = placed;
                }
            }
        }
    }
    chosen
        .into_iter()
        .map(|((addr, port), placed)| Backend {
            addr,
            port,
            node: placed.via,
            draining: placed.draining,
        })
        .collect()
}

/// Where a found endpoint runs, and whether it drains.
#[derive(Clone, Copy)]
struct Placed<'a> {
    node: &'a str,
    /// None: this node; Some: the node's address to forward to.
    via: Option<IpAddr>,
    draining: bool,
}

/// Where an endpoint on node `node_name` is served from this node: its node's
/// name, and None (here) or the address to forward to. None if `scope` leaves
/// it out, or it cannot be reached (reported).
fn placement<'a>(
    node_name: Option<&'a str>,
    scope: &Scope<'a>,
    vip: IpAddr,
    problem: &mut impl FnMut(String),
) -> Option<(&'a str, Option<IpAddr>)> {
    match *scope {
        Scope::Local { node } => (node_name == Some(node)).then_some((node, None)),
        Scope::Cluster { node, addresses } => {
            let Some(name) = node_name else {
                problem(
                    "an endpoint names no node, so it cannot be forwarded to; it is left out"
                        .into(),
                );
                return None;
            };
            if name == node {
                return Some((name, None));
            }
            let address = addresses
                .get(name)
                .into_iter()
                .flatten()
                .find(|ip| ip.is_ipv4() == vip.is_ipv4());
            // On this node's segment or behind a router alike: XDP rewrites
            // the MACs or encapsulates, as the FIB says.
            match address {
                Some(&address) => Some((name, Some(address))),
                None => {
                    problem(format!(
                        "node {name} has no InternalIP of the family of {vip}, so its endpoints \
                         cannot be forwarded to; they are left out"
                    ));
                    None
                }
            }
        }
    }
}

/// The port the slice's endpoints listen on for Service port `port`: the
/// slice port of the same name and protocol; without one (a hand-written
/// slice), a numeric `targetPort`, else the Service port itself.
fn target_port(slice: &EndpointSlice, port: &ServicePort, proto: Protocol) -> Option<u16> {
    let name = port.name.as_deref().unwrap_or_default();
    let listed = slice.ports.iter().flatten().find(|p| {
        p.name.as_deref().unwrap_or_default() == name
            && p.protocol.as_deref().unwrap_or("TCP") == protocol_name(proto)
    });
    let number = match (listed.and_then(|p| p.port), port.target_port.as_ref()) {
        (Some(listed), _) => listed,
        (None, Some(IntOrString::Int(target))) => *target,
        (None, None) => port.port,
        (None, Some(IntOrString::String(_))) => return None,
    };
    u16::try_from(number).ok().filter(|&n| n != 0)
}

fn protocol_name(proto: Protocol) -> &'static str {
    match proto {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn describe(target: Option<&IntOrString>) -> String {
    match target {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => format!("{s:?}"),
        None => "(unset)".into(),
    }
}

/// What to change to get from the `installed` services to the `desired`
/// ones: only services that are new or whose backends changed are rewritten.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceChanges<'a> {
    pub upserts: Vec<&'a LocalService>,
    pub removals: Vec<ServiceAddr>,
}

impl ServiceChanges<'_> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Both sides' backends must be sorted and deduplicated, as
/// [`desired`] and `Dataplane::services` give them.
pub fn changes<'a>(installed: &[LocalService], desired: &'a [LocalService]) -> ServiceChanges<'a> {
    let now: BTreeMap<ServiceAddr, &[Backend]> = installed
        .iter()
        .map(|spec| (spec.addr, spec.backends.as_slice()))
        .collect();
    let wanted: BTreeSet<ServiceAddr> = desired.iter().map(|spec| spec.addr).collect();
    ServiceChanges {
        upserts: desired
            .iter()
            .filter(|spec| now.get(&spec.addr) != Some(&spec.backends.as_slice()))
            .collect(),
        removals: now
            .keys()
            .filter(|addr| !wanted.contains(addr))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests;

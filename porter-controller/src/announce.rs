//! Which paths each EIP is announced with: one through the `InternalIP` of
//! every Ready node that has at least one ready endpoint of a Service using
//! it, with the attributes the BGP policy gives it (docs/bgp-policy.md):
//! communities and LOCAL_PREF from the pool and the Services, link bandwidth
//! from the node's ready endpoint count, and the peers it goes to.
//! Pure; the BGP layer turns the difference between two results into UPDATEs.
//!
//! [`compute`] is that function, written plainly. [`incremental::RouteTable`]
//! is the same function kept up to date from one update to the next, which
//! is what the controller runs; every cache is there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use porter_api::ObjectKey;
use porter_api::annotations::SERVICE_NAME_LABEL;
use porter_api::bgp_policy::{
    self, ClusterPolicy, PathAttributes, PeerScope, PeerSkip, PoolPolicy, ServicePolicy,
};
use porter_api::service::serving_endpoints_by_node;
use porter_bgp::PathTable;

use crate::ip_family::IpFamily;

pub mod incremental;

/// What the paths' attributes depend on besides endpoints and nodes, read
/// from the cluster when those objects change (see `Reconciler`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Every pool's policy, by Eip name.
    pub pools: HashMap<String, PoolPolicy>,
    /// The Services that set a policy by annotation; the others set none.
    pub services: HashMap<ObjectKey, ServicePolicy>,
    pub cluster: ClusterPolicy,
    pub peers: Vec<PeerScope>,
}

/// Nodes with serving endpoints of one Service, with how many, sorted by
/// node (a boxed slice: 10,000 of these are kept).
type ServingNodes = Box<[(Arc<str>, u32)]>;

/// Each node with a serving endpoint in these slices of one Service, with
/// how many, each name shared with `known` where it has that node.
fn ready_nodes<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    known: &HashMap<Arc<str>, Standing>,
) -> ServingNodes {
    // The same predicate and count the agent programs its node with.
    serving_endpoints_by_node(slices)
        .into_iter()
        .map(|(node, k)| {
            let name = known
                .get_key_value(node)
                .map_or_else(|| Arc::from(node), |(name, _)| Arc::clone(name));
            (name, k)
        })
        .collect()
}

/// The Service an EndpointSlice belongs to, borrowed.
fn owner(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        service.as_str(),
    ))
}

/// Why a node offers no path for an EIP. Each is one of the predicates
/// [`RouteTable`] decides the paths with, and `porter-controller explain`
/// and the `Announced` Events report the same value: there is no second
/// copy of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exclusion {
    /// No serving endpoint of a Service using the EIP on the node.
    NoReadyEndpoint,
    /// An endpoint names a node that has no Node object.
    UnknownNode,
    /// The kubelet's `Ready` condition is not `True`.
    NotReady,
    /// Its agent publishes `PorterDataplaneReady=False`.
    DataplaneFrozen,
    /// No `InternalIP` to be a next hop.
    NoInternalIp,
    /// The leader's liveness check withdrew it (central mode).
    LivenessWithdrawn,
    /// The pool's `spec.bgp.nodeSelector` does not admit it.
    PoolNodeSelector,
}

impl Exclusion {
    /// The short word Events and `explain` use.
    pub fn word(self) -> &'static str {
        match self {
            Exclusion::NoReadyEndpoint => "NoReadyEndpoint",
            Exclusion::UnknownNode => "UnknownNode",
            Exclusion::NotReady => "NotReady",
            Exclusion::DataplaneFrozen => "DataplaneFrozen",
            Exclusion::NoInternalIp => "NoInternalIP",
            Exclusion::LivenessWithdrawn => "LivenessWithdrawn",
            Exclusion::PoolNodeSelector => "PoolNodeSelector",
        }
    }

    /// What it means, in a sentence.
    pub fn explain(self) -> &'static str {
        match self {
            Exclusion::NoReadyEndpoint => {
                "no ready (or, where no pod is ready, serving) endpoint of a Service using the address runs on it"
            }
            Exclusion::UnknownNode => "an endpoint names this node, but there is no such Node",
            Exclusion::NotReady => "its Ready condition is not True",
            Exclusion::DataplaneFrozen => {
                "its agent cannot program the data plane (condition PorterDataplaneReady=False)"
            }
            Exclusion::NoInternalIp => "it has no InternalIP to be a next hop",
            Exclusion::LivenessWithdrawn => {
                "the leader's liveness check withdrew it (condition PorterNodeReachable=False)"
            }
            Exclusion::PoolNodeSelector => "the pool's spec.bgp.nodeSelector does not admit it",
        }
    }
}

/// What a Ready node offers as a next hop: its `InternalIP`s, and its labels
/// for the node selectors.
#[derive(Debug, Clone, PartialEq)]
struct NodeInfo {
    addrs: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
}

/// A node that can be a next hop, or why it cannot be one for any EIP.
type Standing = Result<NodeInfo, Exclusion>;

/// Every named node's standing, by name.
fn node_infos<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> HashMap<Arc<str>, Standing> {
    nodes
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?.into(), standing(n))))
        .collect()
}

/// Ready to the kubelet, not withdrawn by its agent (a data plane it cannot
/// program serves stale state; see `porter_api::node_dataplane`), and with
/// an `InternalIP`.
fn standing(node: &Node) -> Standing {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Err(Exclusion::NotReady);
    }
    if porter_api::node_dataplane::withdrawn(node) {
        return Err(Exclusion::DataplaneFrozen);
    }
    let addrs: Vec<IpAddr> = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    if addrs.is_empty() {
        return Err(Exclusion::NoInternalIp);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    Ok(NodeInfo { addrs, labels })
}

/// The next hop `node` offers for `eip` of `pool`, or why it offers none:
/// the one chain of predicates the paths and their explanation share.
fn hop_through<'a>(
    nodes: &'a HashMap<Arc<str>, Standing>,
    withdrawn: &BTreeSet<String>,
    node: &str,
    eip: IpAddr,
    pool: &PoolPolicy,
) -> Result<(&'a NodeInfo, IpAddr), Exclusion> {
    let info = match nodes.get(node) {
        Some(standing) => standing.as_ref().map_err(|why| *why)?,
        None => return Err(Exclusion::UnknownNode),
    };
    if withdrawn.contains(node) {
        return Err(Exclusion::LivenessWithdrawn);
    }
    if !pool.node_selector.matches(&info.labels) {
        return Err(Exclusion::PoolNodeSelector);
    }
    let hop = next_hop(&info.addrs, eip).ok_or(Exclusion::NoInternalIp)?;
    Ok((info, hop))
}

/// A node with serving endpoints that offers no path, and why.
pub type Excluded = (Arc<str>, Exclusion);

/// One node's part in an EIP's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Announced {
        hop: IpAddr,
        /// Serving endpoints on the node, summed over the EIP's Services.
        endpoints: u32,
        /// Each BgpPeer's address, and whether the path goes to it.
        peers: Vec<(IpAddr, Result<(), PeerSkip>)>,
    },
    Excluded(Exclusion),
}

/// Serving endpoints per node, summed over the Services using an EIP
/// (each given as its [`ready_nodes`]).
fn endpoints_of<'a>(
    services: impl IntoIterator<Item = &'a [(Arc<str>, u32)]>,
) -> BTreeMap<&'a str, u32> {
    let mut endpoints: BTreeMap<&str, u32> = BTreeMap::new();
    for (node, k) in services.into_iter().flatten() {
        *endpoints.entry(node).or_default() += k;
    }
    endpoints
}

/// The next hop a node offers for an EIP: its address of the same family,
/// else its first (an IPv6 prefix over an IPv4 next hop, RFC 8950).
fn next_hop(addrs: &[IpAddr], eip: IpAddr) -> Option<IpAddr> {
    addrs
        .iter()
        .find(|a| IpFamily::of(**a) == IpFamily::of(eip))
        .or(addrs.first())
        .copied()
}

/// The inputs of one update.
pub struct Inputs<'a, P: Fn(IpAddr) -> Option<&'a str>> {
    pub allocations: &'a BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Identifies the allocations: equal generations mean equal allocations
    /// (see [`crate::ipam::Ipam::generation`]).
    pub generation: u64,
    /// The pool each allocated EIP is from.
    pub pool_of: P,
    pub slices: &'a [Arc<EndpointSlice>],
    pub nodes: &'a [Arc<Node>],
    pub policy: &'a Policy,
    /// Changes whenever `policy` does.
    pub policy_generation: u64,
    /// Nodes whose data plane failed the liveness check (central mode,
    /// see `crate::node_check`): they offer no next hop until it holds again.
    pub withdrawn: &'a BTreeSet<String>,
}
/// One EIP's paths as decided from its Services and the nodes, with what
/// else the deciding found.
struct EipPaths {
    /// One per node that offers a next hop.
    hops: Vec<(IpAddr, PathAttributes)>,
    /// The nodes with serving endpoints that offer none, and why.
    excluded: Vec<Excluded>,
    /// What the Services sharing the EIP disagree on.
    conflicts: Vec<String>,
}

/// One EIP's paths: one per Ready node with serving endpoints of its
/// Services (`users`, with `endpoints` summed over them) that the pool's
/// node selector admits, weighted by those endpoints.
fn eip_paths(
    eip: IpAddr,
    pool: &PoolPolicy,
    policy: &Policy,
    users: &[ObjectKey],
    endpoints: BTreeMap<&str, u32>,
    nodes: &HashMap<Arc<str>, Standing>,
    withdrawn: &BTreeSet<String>,
) -> EipPaths {
    let no_policy = ServicePolicy::default();
    let (merged, conflicts) = bgp_policy::merge(
        pool,
        users
            .iter()
            .map(|k| (k, policy.services.get(k).unwrap_or(&no_policy))),
        &policy.cluster,
    );
    let mut hops = Vec::new();
    let mut excluded = Vec::new();
    for (node, k) in endpoints {
        let (info, hop) = match hop_through(nodes, withdrawn, node, eip, pool) {
            Ok(through) => through,
            Err(why) => {
                excluded.push((Arc::from(node), why));
                continue;
            }
        };
        let mut attributes = merged.attributes(k);
        attributes.only_peers = bgp_policy::only_peers(pool, &policy.peers, &info.labels);
        hops.push((hop, attributes));
    }
    EipPaths {
        hops,
        excluded,
        conflicts,
    }
}

/// The paths of (allocations, EndpointSlices, Nodes, policy, withdrawn
/// nodes), computed from scratch: the reference that
/// [`incremental::RouteTable`] keeps up to date without recomputing
/// everything (the generations in `inputs` are not read).
pub fn compute<'a, P: Fn(IpAddr) -> Option<&'a str>>(inputs: &Inputs<'a, P>) -> PathTable {
    let nodes = node_infos(inputs.nodes.iter().map(|n| n.as_ref()));
    let mut slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in inputs.slices {
        if let Some((ns, name)) = owner(slice) {
            slices
                .entry(ObjectKey::new(ns, name))
                .or_default()
                .push(slice);
        }
    }
    let mut served: HashMap<&ObjectKey, ServingNodes> = HashMap::new();
    let mut users: BTreeMap<IpAddr, Vec<ObjectKey>> = BTreeMap::new();
    for (key, eips) in inputs.allocations {
        let of_service = slices.get(key).into_iter().flatten().copied();
        served.insert(key, ready_nodes(of_service, &nodes));
        for eip in eips {
            let users = users.entry(*eip).or_default();
            if !users.contains(key) {
                users.push(key.clone());
            }
        }
    }
    let default_pool = PoolPolicy::default();
    let mut paths = PathTable::new();
    for (eip, users) in &users {
        let pool = (inputs.pool_of)(*eip)
            .and_then(|name| inputs.policy.pools.get(name))
            .unwrap_or(&default_pool);
        let endpoints = endpoints_of(users.iter().filter_map(|k| served.get(k)).map(|n| &**n));
        let decided = eip_paths(
            *eip,
            pool,
            inputs.policy,
            users,
            endpoints,
            &nodes,
            inputs.withdrawn,
        );
        if !decided.hops.is_empty() {
            let hops = decided
                .hops
                .into_iter()
                .map(|(hop, attributes)| (hop, Arc::new(attributes)))
                .collect();
            paths.insert(IpNet::from(*eip), hops);
        }
    }
    paths
}
#[cfg(test)]
mod tests {
    use super::incremental::RouteTable;
    use super::*;
    use crate::testing::{node, slice as slice_in};
    use porter_bgp::NextHops;

    fn slice(service: &str, eps: &[(&str, Option<bool>)]) -> EndpointSlice {
        slice_in("ns", service, eps)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    /// Every EIP is from pool `pool`.
    fn update(
        table: &mut RouteTable,
        allocations: &BTreeMap<ObjectKey, Vec<IpAddr>>,
        generation: u64,
        slices: &[Arc<EndpointSlice>],
        nodes: &[Arc<Node>],
        policy: &Policy,
        policy_generation: u64,
    ) -> BTreeSet<IpAddr> {
        table.update(Inputs {
            allocations,
            generation,
            pool_of: |_| Some("pool"),
            slices,
            nodes,
            policy,
            policy_generation,
            withdrawn: &BTreeSet::new(),
        })
    }

    /// One update of a fresh table: each EIP's next hops, as text.
    fn next_hops_by_eip(
        allocs: &[(&str, &[&str])],
        slices: &[EndpointSlice],
        nodes: &[Node],
    ) -> BTreeMap<String, Vec<String>> {
        let allocations = allocs
            .iter()
            .map(|(svc, eips)| {
                (
                    ObjectKey::new("ns", *svc),
                    eips.iter().map(|e| ip(e)).collect(),
                )
            })
            .collect();
        let slices: Vec<_> = slices.iter().cloned().map(Arc::new).collect();
        let nodes: Vec<_> = nodes.iter().cloned().map(Arc::new).collect();
        let mut table = RouteTable::default();
        update(
            &mut table,
            &allocations,
            0,
            &slices,
            &nodes,
            &Policy::default(),
            0,
        );
        table
            .paths()
            .iter()
            .map(|(net, hops)| {
                (
                    net.to_string(),
                    hops.keys().map(IpAddr::to_string).collect(),
                )
            })
            .collect()
    }

    fn want(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(p, hops)| (p.to_string(), hops.iter().map(|h| h.to_string()).collect()))
            .collect()
    }

    #[test]
    fn withdrawn_nodes_offer_no_hop_but_stay_checked() {
        let nodes: Vec<Arc<Node>> = [
            node("n1", "True", &["192.168.1.1"]),
            node("n2", "True", &["192.168.1.2", "fd00::2"]),
            node("n3", "True", &["192.168.1.3"]),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let slices = [Arc::new(slice(
            "web",
            &[("n1", Some(true)), ("n2", Some(true))],
        ))];
        let allocations = [(ObjectKey::new("ns", "web"), vec![ip("10.0.0.1")])].into();
        let policy = Policy::default();
        let mut table = RouteTable::default();
        let mut pass = |withdrawn: &BTreeSet<String>| {
            let changed = table.update(Inputs {
                allocations: &allocations,
                generation: 0,
                pool_of: |_| Some("pool"),
                slices: &slices,
                nodes: &nodes,
                policy: &policy,
                policy_generation: 0,
                withdrawn,
            });
            let hops: Vec<IpAddr> = table
                .paths()
                .values()
                .flat_map(|h| h.keys().copied())
                .collect();
            (changed.len(), hops, table.checked_nodes())
        };
        let checked: BTreeMap<String, IpAddr> = [
            ("n1".to_string(), ip("192.168.1.1")),
            ("n2".to_string(), ip("192.168.1.2")),
        ]
        .into();
        let none = BTreeSet::new();
        let n2 = ["n2".to_string()].into();
        assert_eq!(
            pass(&none),
            (
                1,
                vec![ip("192.168.1.1"), ip("192.168.1.2")],
                checked.clone()
            )
        );
        assert_eq!(
            pass(&n2),
            (1, vec![ip("192.168.1.1")], checked.clone()),
            "n2's path goes; n2 is still checked"
        );
        assert_eq!(pass(&n2), (0, vec![ip("192.168.1.1")], checked.clone()));
        assert_eq!(
            pass(&none),
            (1, vec![ip("192.168.1.1"), ip("192.168.1.2")], checked),
            "back"
        );
    }

    #[test]
    fn next_hops_are_ready_nodes_with_ready_local_endpoints() {
        let nodes = [
            node("n1", "True", &["192.168.1.1"]),
            node("n2", "True", &["192.168.1.2"]),
            node("n3", "False", &["192.168.1.3"]),
            node("n4", "True", &["192.168.1.4", "fd00::4"]),
            node("n5", "Unknown", &["192.168.1.5"]),
        ];
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a [&'a str])>,
            Vec<EndpointSlice>,
            Vec<(&'a str, &'a [&'a str])>,
        );
        let cases: Vec<Case> = vec![
            (
                "one endpoint per node",
                vec![("web", &["10.0.0.1"])],
                vec![slice("web", &[("n1", Some(true)), ("n2", Some(true))])],
                vec![("10.0.0.1/32", &["192.168.1.1", "192.168.1.2"])],
            ),
            (
                "unset ready counts as ready",
                vec![("web", &["10.0.0.1"])],
                vec![slice("web", &[("n1", None)])],
                vec![("10.0.0.1/32", &["192.168.1.1"])],
            ),
            (
                "not-ready endpoint and NotReady/Unknown nodes are left out",
                vec![("web", &["10.0.0.1"])],
                vec![slice(
                    "web",
                    &[
                        ("n1", Some(false)),
                        ("n2", Some(true)),
                        ("n3", Some(true)),
                        ("n5", Some(true)),
                    ],
                )],
                vec![("10.0.0.1/32", &["192.168.1.2"])],
            ),
            (
                "no ready endpoint: withdrawn",
                vec![("web", &["10.0.0.1"])],
                vec![slice("web", &[("n1", Some(false))])],
                vec![],
            ),
            (
                "unknown node: no hop",
                vec![("web", &["10.0.0.1"])],
                vec![slice("web", &[("gone", Some(true))])],
                vec![],
            ),
            (
                "endpoints spread over slices",
                vec![("web", &["10.0.0.1"])],
                vec![
                    slice("web", &[("n1", Some(true))]),
                    slice("web", &[("n2", Some(true))]),
                ],
                vec![("10.0.0.1/32", &["192.168.1.1", "192.168.1.2"])],
            ),
            (
                "shared EIP: union of both Services' nodes",
                vec![("web", &["10.0.0.1"]), ("dns", &["10.0.0.1"])],
                vec![
                    slice("web", &[("n1", Some(true))]),
                    slice("dns", &[("n2", Some(true))]),
                ],
                vec![("10.0.0.1/32", &["192.168.1.1", "192.168.1.2"])],
            ),
            (
                "dual stack: each EIP gets its family's next hop",
                vec![("web", &["10.0.0.1", "2001:db8::1"])],
                vec![slice("web", &[("n4", Some(true))])],
                vec![
                    ("10.0.0.1/32", &["192.168.1.4"]),
                    ("2001:db8::1/128", &["fd00::4"]),
                ],
            ),
            (
                "v6 EIP on a v4-only node: v4 next hop",
                vec![("web", &["2001:db8::1"])],
                vec![slice("web", &[("n1", Some(true))])],
                vec![("2001:db8::1/128", &["192.168.1.1"])],
            ),
            (
                "endpoints of an unallocated Service announce nothing",
                vec![],
                vec![slice("web", &[("n1", Some(true))])],
                vec![],
            ),
        ];
        for (name, allocs, slices, expected) in cases {
            assert_eq!(
                next_hops_by_eip(&allocs, &slices, &nodes),
                want(&expected),
                "{name}"
            );
        }
    }

    /// A node whose agent publishes PorterDataplaneReady=False offers no
    /// path; True, or no condition at all (an agent that predates it), do.
    #[test]
    fn a_node_whose_agent_says_its_data_plane_is_frozen_is_withdrawn() {
        let with = |name: &str, ip: &str, dataplane: Option<bool>| {
            let mut n = node(name, "True", &[ip]);
            if let (Some(ready), Some(status)) = (dataplane, n.status.as_mut()) {
                status.conditions.get_or_insert_with(Vec::new).push(
                    porter_api::node_dataplane::condition(ready, "Why", "what to do"),
                );
            }
            n
        };
        let nodes = [
            with("n1", "192.168.1.1", Some(false)),
            with("n2", "192.168.1.2", Some(true)),
            with("n3", "192.168.1.3", None),
        ];
        let slices = [slice(
            "web",
            &[("n1", Some(true)), ("n2", Some(true)), ("n3", Some(true))],
        )];
        assert_eq!(
            next_hops_by_eip(&[("web", &["10.0.0.1"])], &slices, &nodes),
            want(&[("10.0.0.1/32", &["192.168.1.2", "192.168.1.3"])])
        );
    }

    /// An incremental update must land exactly where a fresh computation does.
    #[test]
    fn incremental_updates_match_a_fresh_computation() {
        let allocations = |list: &[(&str, &str)]| -> BTreeMap<ObjectKey, Vec<IpAddr>> {
            list.iter()
                .map(|(s, e)| (ObjectKey::new("ns", *s), vec![ip(e)]))
                .collect()
        };
        let arcs = |v: Vec<EndpointSlice>| v.into_iter().map(Arc::new).collect::<Vec<_>>();
        let web = Arc::new(slice("web", &[("n1", Some(true))]));
        let dns = Arc::new(slice("dns", &[("n2", Some(true))]));
        let n1 = Arc::new(node("n1", "True", &["192.168.1.1"]));
        let n2 = Arc::new(node("n2", "True", &["192.168.1.2"]));
        let n2_down = Arc::new(node("n2", "False", &["192.168.1.2"]));
        let plain = Policy::default();
        let tagged = Policy {
            pools: [(
                "pool".to_string(),
                PoolPolicy {
                    communities: vec![65000 << 16 | 7],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let web_twice = Arc::new(slice("web", &[("n1", Some(true)), ("n1", Some(true))]));
        type Step = (
            BTreeMap<ObjectKey, Vec<IpAddr>>,
            Vec<Arc<EndpointSlice>>,
            Vec<Arc<Node>>,
            Policy,
        );
        let steps: Vec<Step> = vec![
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.2")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
                plain.clone(),
            ),
            // dns moves to n1 (a new slice object), web unchanged
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.2")]),
                vec![web.clone()]
                    .into_iter()
                    .chain(arcs(vec![slice("dns", &[("n1", Some(true))])]))
                    .collect(),
                vec![n1.clone(), n2.clone()],
                plain.clone(),
            ),
            // dns shares web's address
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
                plain.clone(),
            ),
            // web gets a second endpoint on n1: only the weight changes
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web_twice.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
                plain.clone(),
            ),
            // the pool gets a community
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web_twice.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
                tagged.clone(),
            ),
            // node n2 goes NotReady
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2_down.clone()],
                tagged.clone(),
            ),
            // web released
            (
                allocations(&[("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
                plain.clone(),
            ),
            // everything gone
            (allocations(&[]), vec![], vec![n1.clone()], plain.clone()),
        ];
        let mut live = RouteTable::default();
        let mut last: PathTable = PathTable::new();
        let (mut generation, mut pg) = (0, 0);
        for (n, (allocs, slices, nodes, policy)) in steps.iter().enumerate() {
            // A new generation whenever the allocations or the policy differ
            // from the step before.
            if n > 0 && steps[n - 1].0 != *allocs {
                generation += 1;
            }
            if n > 0 && steps[n - 1].3 != *policy {
                pg += 1;
            }
            let changed = update(&mut live, allocs, generation, slices, nodes, policy, pg);
            let fresh = compute(&Inputs {
                allocations: allocs,
                generation: 0,
                pool_of: |_| Some("pool"),
                slices,
                nodes,
                policy,
                policy_generation: 0,
                withdrawn: &BTreeSet::new(),
            });
            assert_eq!(**live.paths(), fresh, "step {n}");
            let really: BTreeSet<IpAddr> = fresh
                .keys()
                .chain(last.keys())
                .filter(|p| fresh.get(*p) != last.get(*p))
                .map(|p| p.addr())
                .collect();
            assert_eq!(changed, really, "step {n}: reported changes");
            last = (**live.paths()).clone();
        }
    }

    fn labelled(name: &str, ip: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = node(name, "True", &[ip]);
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    /// One update of a fresh table; the paths by next hop.
    fn paths_for(
        allocs: &[(&str, &str)],
        slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
        policy: &Policy,
    ) -> (RouteTable, NextHops) {
        let allocations: BTreeMap<ObjectKey, Vec<IpAddr>> = allocs
            .iter()
            .map(|(s, e)| (ObjectKey::new("ns", *s), vec![ip(e)]))
            .collect();
        let slices: Vec<_> = slices.into_iter().map(Arc::new).collect();
        let nodes: Vec<_> = nodes.into_iter().map(Arc::new).collect();
        let mut table = RouteTable::default();
        update(&mut table, &allocations, 0, &slices, &nodes, policy, 0);
        let eip = IpNet::from(ip(allocs[0].1));
        let paths = table.paths().get(&eip).cloned().unwrap_or_default();
        (table, paths)
    }

    fn bandwidth(a: &PathAttributes) -> Option<f32> {
        a.link_bandwidth.map(|l| l.bytes_per_second)
    }

    const GBIT: f32 = 125_000_000.0;

    #[test]
    fn link_bandwidth_counts_ready_local_endpoints_summed_over_shared_services() {
        let nodes = vec![
            node("n1", "True", &["192.168.1.1"]),
            node("n2", "True", &["192.168.1.2"]),
        ];
        // web: 1 pod on n1, 3 on n2 (one more not ready); dns shares the
        // address with 1 pod on n1.
        let web = slice(
            "web",
            &[
                ("n1", Some(true)),
                ("n2", Some(true)),
                ("n2", None),
                ("n2", Some(true)),
                ("n2", Some(false)),
            ],
        );
        let dns = slice("dns", &[("n1", Some(true))]);
        let policy = Policy::default();
        let (_, paths) = paths_for(
            &[("web", "10.0.0.1")],
            vec![web.clone()],
            nodes.clone(),
            &policy,
        );
        let weights: Vec<Option<f32>> = paths.values().map(|a| bandwidth(a)).collect();
        assert_eq!(weights, [Some(GBIT), Some(3.0 * GBIT)], "1:3");
        assert!(
            paths
                .values()
                .all(|a| a.link_bandwidth.is_some_and(|l| l.transitive))
        );
        let (_, paths) = paths_for(
            &[("web", "10.0.0.1"), ("dns", "10.0.0.1")],
            vec![web, dns],
            nodes,
            &policy,
        );
        let weights: Vec<Option<f32>> = paths.values().map(|a| bandwidth(a)).collect();
        assert_eq!(weights, [Some(2.0 * GBIT), Some(3.0 * GBIT)], "2:3");
    }

    #[test]
    fn policy_shapes_paths_per_pool_service_node_and_peer() {
        use porter_api::bgp_policy::{Selector, ServiceAllowance};
        let zone = |z: &str| Selector::from_labels(&[("zone".to_string(), z.to_string())].into());
        let nodes = vec![
            labelled("n1", "192.168.1.1", &[("zone", "a")]),
            labelled("n2", "192.168.1.2", &[("zone", "b")]),
        ];
        let web = slice("web", &[("n1", Some(true)), ("n2", Some(true))]);
        let peer = |addr: &str, fabric: &str, nodes: Selector| PeerScope {
            address: ip(addr),
            labels: [("fabric".to_string(), fabric.to_string())].into(),
            node_selector: nodes,
        };
        let base = Policy {
            pools: [(
                "pool".to_string(),
                PoolPolicy {
                    communities: vec![65000 << 16 | 100],
                    local_pref: Some(200),
                    service_may_set: ServiceAllowance::everything(),
                    ..Default::default()
                },
            )]
            .into(),
            services: [(
                ObjectKey::new("ns", "web"),
                ServicePolicy {
                    communities: vec![65000 << 16 | 300],
                    local_pref: Some(300),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let (_, paths) = paths_for(
            &[("web", "10.0.0.1")],
            vec![web.clone()],
            nodes.clone(),
            &base,
        );
        for a in paths.values() {
            assert_eq!(a.communities, [65000 << 16 | 100, 65000 << 16 | 300]);
            assert_eq!(a.local_pref, Some(300), "the Service's wins");
            assert_eq!(a.only_peers, None, "no peers configured: unscoped");
        }

        // The pool admits zone a only; two ToRs, each for its zone, and a
        // red peer the pool does not select.
        let mut scoped = base.clone();
        if let Some(pool) = scoped.pools.get_mut("pool") {
            pool.node_selector = zone("a");
            pool.peer_selector =
                Selector::from_labels(&[("fabric".to_string(), "blue".to_string())].into());
        }
        scoped.peers = vec![
            peer("10.9.0.1", "blue", zone("a")),
            peer("10.9.0.2", "blue", zone("b")),
            peer("10.9.0.3", "red", Selector::default()),
        ];
        let (_, paths) = paths_for(
            &[("web", "10.0.0.1")],
            vec![web.clone()],
            nodes.clone(),
            &scoped,
        );
        assert_eq!(
            paths.keys().copied().collect::<Vec<_>>(),
            [ip("192.168.1.1")]
        );
        assert_eq!(
            paths[&ip("192.168.1.1")].only_peers,
            Some([ip("10.9.0.1")].into()),
            "only the blue ToR of zone a"
        );

        // No admitted node: withdrawn.
        if let Some(pool) = scoped.pools.get_mut("pool") {
            pool.node_selector = zone("c");
        }
        let (table, paths) = paths_for(&[("web", "10.0.0.1")], vec![web], nodes, &scoped);
        assert!(paths.is_empty() && table.paths().is_empty());
    }

    #[test]
    fn shared_addresses_report_disagreements_once_and_share_attribute_sets() {
        let nodes: Vec<Node> = (1..=3)
            .map(|n| node(&format!("n{n}"), "True", &[&format!("192.168.1.{n}")]))
            .collect();
        let policy = Policy {
            services: [(
                ObjectKey::new("ns", "web"),
                ServicePolicy {
                    link_bandwidth: Some(false),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let slices: Vec<Arc<EndpointSlice>> = vec![
            Arc::new(slice("web", &[("n1", Some(true)), ("n2", Some(true))])),
            Arc::new(slice("dns", &[("n3", Some(true))])),
            Arc::new(slice("other", &[("n1", Some(true)), ("n2", Some(true))])),
        ];
        let nodes: Vec<_> = nodes.into_iter().map(Arc::new).collect();
        let allocations: BTreeMap<ObjectKey, Vec<IpAddr>> = [
            (ObjectKey::new("ns", "web"), vec![ip("10.0.0.1")]),
            (ObjectKey::new("ns", "dns"), vec![ip("10.0.0.1")]),
            (ObjectKey::new("ns", "other"), vec![ip("10.0.0.2")]),
        ]
        .into();
        let mut table = RouteTable::default();
        update(&mut table, &allocations, 0, &slices, &nodes, &policy, 0);
        let conflicts = table.new_conflicts().to_vec();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].0, ip("10.0.0.1"));
        assert!(conflicts[0].1.contains("link bandwidth is off for ns/web"));
        let shared = &table.paths()[&IpNet::from(ip("10.0.0.1"))];
        assert!(
            shared.values().all(|a| a.link_bandwidth.is_none()),
            "off wins on the shared address"
        );
        // Same attributes on two EIPs: one allocation.
        let other = &table.paths()[&IpNet::from(ip("10.0.0.2"))];
        let a = &other[&ip("192.168.1.1")];
        let b = &other[&ip("192.168.1.2")];
        assert!(Arc::ptr_eq(a, b), "equal attribute sets are shared");

        // Nothing changed: not reported again.
        update(&mut table, &allocations, 0, &slices, &nodes, &policy, 1);
        assert!(table.new_conflicts().is_empty());
    }
}

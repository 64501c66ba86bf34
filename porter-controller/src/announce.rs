//! Which paths each EIP is announced with: one through the `InternalIP` of
//! every Ready node that has at least one ready endpoint of a Service using
//! it, with the attributes the BGP policy gives it (docs/bgp-policy.md):
//! communities and LOCAL_PREF from the pool and the Services, link bandwidth
//! from the node's ready endpoint count, and the peers it goes to.
//! Pure; the BGP layer turns the difference between two results into UPDATEs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use porter_api::ObjectKey;
use porter_api::annotations::SERVICE_NAME_LABEL;
use porter_api::bgp_policy::{
    self, ClusterPolicy, PathAttributes, PeerScope, PeerSkip, PoolPolicy, ServicePolicy,
};
use porter_api::service::serving_endpoints_by_node;
use porter_bgp::{NextHops, PathTable};

use crate::compact::push_exact;
use crate::identity::{Seen, is, remember, same_objects};
use crate::ip_family::IpFamily;

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

/// Each node with a serving endpoint in these slices of one Service, with
/// how many. Sorted by node (a boxed slice: 10,000 of these are kept), each
/// name shared with `known` where it has that node.
fn ready_nodes<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    known: &HashMap<Arc<str>, Standing>,
) -> Box<[(Arc<str>, u32)]> {
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

/// Serving endpoints per node, summed over the Services using an EIP.
fn endpoints_of<'a>(
    users: &[ObjectKey],
    services: &'a HashMap<ObjectKey, Served>,
) -> BTreeMap<&'a str, u32> {
    let mut endpoints: BTreeMap<&str, u32> = BTreeMap::new();
    for served in users.iter().filter_map(|k| services.get(k)) {
        for (node, k) in &served.nodes {
            *endpoints.entry(node).or_default() += k;
        }
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

/// One allocated Service's part in the paths, as of the last update.
#[derive(Debug, Default)]
struct Served {
    eips: Box<[IpAddr]>,
    /// Nodes with their serving endpoint counts.
    nodes: Box<[(Arc<str>, u32)]>,
}

/// Equal attribute sets, shared: most paths differ only in their endpoint
/// count, so a cluster has a handful of distinct sets, not one per path.
#[derive(Debug, Default)]
struct Interner {
    sets: BTreeSet<Arc<PathAttributes>>,
    /// Size after the last sweep; the next sweep is due at twice that.
    swept: usize,
}

impl Interner {
    fn get(&mut self, attributes: PathAttributes) -> Arc<PathAttributes> {
        if let Some(shared) = self.sets.get(&attributes) {
            return Arc::clone(shared);
        }
        if self.sets.len() >= 2 * self.swept.max(64) {
            // Sets only the interner still holds are no path's any more.
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.swept = self.sets.len();
        }
        let shared = Arc::new(attributes);
        self.sets.insert(Arc::clone(&shared));
        shared
    }
}

/// The paths, kept up to date incrementally. An update finds the
/// EndpointSlices that changed by identity (sources share unchanged objects),
/// recomputes only their Services and only the EIPs those use; a change of
/// the nodes, of the allocations or of the policy walks every Service. A
/// fresh table's first update is the plain function of (allocations,
/// EndpointSlices, Nodes, policy).
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The last inputs, by identity (see [`crate::identity`]); the slices
    /// as `Weak`s, through which [`diff`] reads a removed one's owner.
    last_nodes: Vec<Seen<Node>>,
    last_slices: Vec<Weak<EndpointSlice>>,
    /// `None` before the first update.
    last_allocations: Option<u64>,
    last_policy: Option<u64>,
    /// Every named node, with why it can be no next hop where it cannot.
    nodes: HashMap<Arc<str>, Standing>,
    /// Every Service's slices, allocated or not; they stay alive here until
    /// removed, so a removed slice's identity is never reused meanwhile and
    /// its owner can still be read to unfile it.
    slices: HashMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
    services: HashMap<ObjectKey, Served>,
    /// Services using each EIP; usually one, more when shared.
    users: HashMap<IpAddr, Vec<ObjectKey>>,
    paths: Arc<PathTable>,
    interner: Interner,
    /// What the Services sharing each EIP disagree on, as last reported.
    conflicts: HashMap<IpAddr, Vec<String>>,
    /// Disagreements that appeared in the last update, for Events.
    new_conflicts: Vec<(IpAddr, String)>,
    /// The nodes the liveness check withdrew, as of the last update.
    withdrawn: BTreeSet<String>,
    /// The nodes with serving endpoints that offer no path, and why, for
    /// each EIP that has any (most have none).
    excluded: HashMap<IpAddr, Box<[Excluded]>>,
    /// The nodes whose path went in the last update because their last
    /// endpoint did, for Events.
    departed: Vec<(IpAddr, Arc<str>)>,
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

/// Slices in `old` and not in `new` (as identities), and the reverse. Of
/// the removed ones, only those still alive: the table keeps every slice it
/// filed under a Service, so those are the ones it has to unfile.
fn diff<'a>(
    old: &[Weak<EndpointSlice>],
    new: &'a [Arc<EndpointSlice>],
) -> (Vec<Arc<EndpointSlice>>, Vec<&'a Arc<EndpointSlice>>) {
    if old.len() == new.len() {
        // Sources keep their order while nothing is added or removed, so a
        // positional comparison finds the handful of replaced objects.
        let changed: Vec<usize> = (0..old.len()).filter(|i| !is(&old[*i], &new[*i])).collect();
        return (
            changed.iter().filter_map(|i| old[*i].upgrade()).collect(),
            changed.iter().map(|i| &new[*i]).collect(),
        );
    }
    let old_ptrs: HashSet<*const EndpointSlice> = old.iter().map(Weak::as_ptr).collect();
    let new_ptrs: HashSet<*const EndpointSlice> = new.iter().map(Arc::as_ptr).collect();
    (
        old.iter()
            .filter(|w| !new_ptrs.contains(&w.as_ptr()))
            .filter_map(Weak::upgrade)
            .collect(),
        new.iter()
            .filter(|s| !old_ptrs.contains(&Arc::as_ptr(s)))
            .collect(),
    )
}

impl RouteTable {
    pub fn paths(&self) -> &Arc<PathTable> {
        &self.paths
    }

    /// Brings the paths up to date and returns the EIPs whose paths changed.
    pub fn update<'a, P: Fn(IpAddr) -> Option<&'a str>>(
        &mut self,
        inputs: Inputs<'a, P>,
    ) -> BTreeSet<IpAddr> {
        let Inputs {
            allocations,
            generation,
            pool_of,
            slices,
            nodes,
            policy,
            policy_generation,
            withdrawn,
        } = inputs;
        self.new_conflicts.clear();
        let mut dirty: BTreeSet<IpAddr> = BTreeSet::new();
        if *withdrawn != self.withdrawn {
            self.withdrawn = withdrawn.clone();
            dirty.extend(self.users.keys());
        }
        if !same_objects(&self.last_nodes, nodes) {
            self.last_nodes = remember(nodes);
            let infos = node_infos(nodes.iter().map(|n| n.as_ref()));
            if infos != self.nodes {
                // Served node names stay valid; their addresses and labels
                // feed every path.
                self.nodes = infos;
                dirty.extend(self.users.keys());
            }
        }
        if self.last_policy != Some(policy_generation) {
            self.last_policy = Some(policy_generation);
            dirty.extend(self.users.keys());
        }

        let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
        let (removed, added) = diff(&self.last_slices, slices);
        for gone in removed {
            // Filed under its owner when added; an object's labels cannot
            // change, so that is where it still is.
            let Some((ns, name)) = owner(&gone) else {
                continue;
            };
            let key = ObjectKey::new(ns, name);
            if let Some(list) = self.slices.get_mut(&key) {
                list.retain(|s| !Arc::ptr_eq(s, &gone));
                if list.is_empty() {
                    self.slices.remove(&key);
                }
            }
            touched.insert(key);
        }
        for slice in added {
            if let Some((ns, name)) = owner(slice) {
                let key = ObjectKey::new(ns, name);
                // The allocation's copy of the names, where there is one.
                let key = allocations
                    .get_key_value(&key)
                    .map_or(key, |(shared, _)| shared.clone());
                push_exact(self.slices.entry(key.clone()).or_default(), slice.clone());
                touched.insert(key);
            }
        }
        self.last_slices = slices.iter().map(Arc::downgrade).collect();

        if self.last_allocations != Some(generation) {
            self.last_allocations = Some(generation);
            let gone: Vec<ObjectKey> = self
                .services
                .keys()
                .filter(|k| !allocations.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(old) = self.services.remove(&key) {
                    self.forget_user(&key, &old.eips, &mut dirty);
                }
            }
            for (key, eips) in allocations {
                let same_eips = self.services.get(key).is_some_and(|s| *s.eips == eips[..]);
                if !same_eips || touched.remove(key) {
                    self.serve(key, eips, &mut dirty);
                }
            }
        }
        for key in touched {
            if let Some(eips) = allocations.get(&key) {
                self.serve(&key, eips, &mut dirty);
            }
        }

        let mut changed = BTreeSet::new();
        // Next hops that went, for `departed`.
        let mut gone: Vec<(IpAddr, IpAddr)> = Vec::new();
        for eip in dirty {
            let pool = pool_of(eip).and_then(|name| policy.pools.get(name));
            let paths = self.paths_of(eip, pool, policy);
            let prefix = IpNet::from(eip);
            let current = self.paths.get(&prefix);
            let unchanged = if paths.is_empty() {
                current.is_none()
            } else {
                current == Some(&paths)
            };
            if unchanged {
                continue;
            }
            if let Some(current) = current {
                gone.extend(
                    current
                        .keys()
                        .filter(|hop| paths.get(hop).is_none())
                        .map(|hop| (eip, *hop)),
                );
            }
            let all = Arc::make_mut(&mut self.paths);
            if paths.is_empty() {
                all.remove(&prefix);
            } else {
                all.insert(prefix, paths);
            }
            changed.insert(eip);
        }
        self.departed = self.departures(&gone);
        changed
    }

    /// The nodes whose path of an EIP went in this update because they
    /// have no serving endpoint left (those that have one are in
    /// [`Self::excluded`], with their reason). A node is found by its next
    /// hop among the nodes that can be one; a hop whose node cannot be one
    /// any more is left unnamed here (NotReady, gone: without endpoints it
    /// has no line in the Event; `explain` still names it).
    fn departures(&self, gone: &[(IpAddr, IpAddr)]) -> Vec<(IpAddr, Arc<str>)> {
        if gone.is_empty() {
            return Vec::new();
        }
        // The node behind each next hop, per EIP family: one pass over the
        // nodes, not one per hop (a NotReady node can take 10,000 paths).
        let families = [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])];
        let by_hop: HashMap<(IpFamily, IpAddr), &Arc<str>> = self
            .nodes
            .iter()
            .filter_map(|(node, standing)| Some((node, standing.as_ref().ok()?)))
            .flat_map(|(node, info)| {
                families.iter().filter_map(move |sample| {
                    Some((
                        (IpFamily::of(*sample), next_hop(&info.addrs, *sample)?),
                        node,
                    ))
                })
            })
            .collect();
        gone.iter()
            .filter_map(|(eip, hop)| {
                let node = by_hop.get(&(IpFamily::of(*eip), *hop))?;
                let explained = self.excluded(eip).iter().any(|(n, _)| n == *node);
                (!explained).then(|| (*eip, Arc::clone(node)))
            })
            .collect()
    }

    /// The nodes whose path of `eip` went in the last update because no
    /// serving endpoint is left on them (`NoReadyEndpoint`).
    pub fn departed(&self, eip: &IpAddr) -> impl Iterator<Item = &Arc<str>> {
        self.departed
            .iter()
            .filter(move |(e, _)| e == eip)
            .map(|(_, node)| node)
    }

    /// One EIP's paths: one per Ready node with serving endpoints of its
    /// Services that the pool's node selector admits, weighted by the
    /// endpoints there summed over those Services.
    fn paths_of(&mut self, eip: IpAddr, pool: Option<&PoolPolicy>, policy: &Policy) -> NextHops {
        let default_pool = PoolPolicy::default();
        let pool = pool.unwrap_or(&default_pool);
        let no_policy = ServicePolicy::default();
        let users = self.users.get(&eip).map(Vec::as_slice).unwrap_or_default();
        let endpoints = endpoints_of(users, &self.services);
        let (merged, conflicts) = bgp_policy::merge(
            pool,
            users
                .iter()
                .map(|k| (k, policy.services.get(k).unwrap_or(&no_policy))),
            &policy.cluster,
        );
        let mut paths = Vec::new();
        let mut excluded = Vec::new();
        for (node, k) in endpoints {
            let (info, hop) = match hop_through(&self.nodes, &self.withdrawn, node, eip, pool) {
                Ok(through) => through,
                Err(why) => {
                    excluded.push((Arc::from(node), why));
                    continue;
                }
            };
            let mut attributes = merged.attributes(k);
            attributes.only_peers = bgp_policy::only_peers(pool, &policy.peers, &info.labels);
            paths.push((hop, self.interner.get(attributes)));
        }
        let reported = self
            .conflicts
            .get(&eip)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for conflict in &conflicts {
            if !reported.contains(conflict) {
                self.new_conflicts.push((eip, conflict.clone()));
            }
        }
        if conflicts.is_empty() {
            self.conflicts.remove(&eip);
        } else {
            self.conflicts.insert(eip, conflicts);
        }
        if excluded.is_empty() {
            self.excluded.remove(&eip);
        } else {
            self.excluded.insert(eip, excluded.into());
        }
        paths.into_iter().collect()
    }

    /// The nodes with serving endpoints for `eip` that offer no path, and
    /// why, as of the last update.
    pub fn excluded(&self, eip: &IpAddr) -> &[Excluded] {
        self.excluded.get(eip).map_or(&[], |e| e)
    }

    /// What the Services sharing an EIP started to disagree on in the last
    /// update.
    pub fn new_conflicts(&self) -> &[(IpAddr, String)] {
        &self.new_conflicts
    }

    /// Recomputes one allocated Service's serving nodes and marks its EIPs.
    fn serve(&mut self, key: &ObjectKey, eips: &[IpAddr], dirty: &mut BTreeSet<IpAddr>) {
        let nodes = ready_nodes(
            self.slices
                .get(key)
                .into_iter()
                .flatten()
                .map(|s| s.as_ref()),
            &self.nodes,
        );
        let served = Served {
            eips: eips.into(),
            nodes,
        };
        if let Some(old) = self.services.insert(key.clone(), served) {
            self.forget_user(key, &old.eips, dirty);
        }
        for eip in eips {
            let users = self.users.entry(*eip).or_default();
            if !users.contains(key) {
                push_exact(users, key.clone());
            }
            dirty.insert(*eip);
        }
    }

    fn forget_user(&mut self, key: &ObjectKey, eips: &[IpAddr], dirty: &mut BTreeSet<IpAddr>) {
        for eip in eips {
            if let Some(users) = self.users.get_mut(eip) {
                users.retain(|k| k != key);
                if users.is_empty() {
                    self.users.remove(eip);
                }
                dirty.insert(*eip);
            }
        }
    }

    /// The nodes to check in central mode: every Ready node with serving
    /// endpoints of an allocated Service, withdrawn or not (a withdrawn
    /// node is checked so that it can come back), with its first
    /// `InternalIP`.
    pub fn checked_nodes(&self) -> BTreeMap<String, IpAddr> {
        self.services
            .values()
            .flat_map(|served| served.nodes.iter())
            .filter_map(|(node, _)| {
                let addr = self.nodes.get(node)?.as_ref().ok()?.addrs.first()?;
                Some((node.to_string(), *addr))
            })
            .collect()
    }

    /// The Services using `eip`.
    pub fn users(&self, eip: &IpAddr) -> impl Iterator<Item = &ObjectKey> {
        self.users.get(eip).into_iter().flatten()
    }

    /// Every node's part in `eip`'s paths as of the last update, by the
    /// predicates the paths were decided with: the node's next hop and the
    /// peers it goes to, or why it offers none. Every known Node, and every
    /// node an endpoint names.
    pub fn verdicts(
        &self,
        eip: IpAddr,
        pool: Option<&PoolPolicy>,
        policy: &Policy,
    ) -> BTreeMap<String, Verdict> {
        let default_pool = PoolPolicy::default();
        let pool = pool.unwrap_or(&default_pool);
        let users = self.users.get(&eip).map(Vec::as_slice).unwrap_or_default();
        let endpoints = endpoints_of(users, &self.services);
        let named = self
            .nodes
            .keys()
            .map(|n| &**n)
            .chain(endpoints.keys().copied());
        named
            .map(|node| {
                let verdict = match endpoints.get(node) {
                    None => Verdict::Excluded(Exclusion::NoReadyEndpoint),
                    Some(k) => match hop_through(&self.nodes, &self.withdrawn, node, eip, pool) {
                        Err(why) => Verdict::Excluded(why),
                        Ok((info, hop)) => Verdict::Announced {
                            hop,
                            endpoints: *k,
                            peers: policy
                                .peers
                                .iter()
                                .map(|p| (p.address, bgp_policy::peer_takes(pool, p, &info.labels)))
                                .collect(),
                        },
                    },
                };
                (node.to_string(), verdict)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, slice as slice_in};

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

    fn compute(
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
            assert_eq!(compute(&allocs, &slices, &nodes), want(&expected), "{name}");
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
            compute(&[("web", &["10.0.0.1"])], &slices, &nodes),
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
            let mut fresh = RouteTable::default();
            update(&mut fresh, allocs, 0, slices, nodes, policy, 0);
            assert_eq!(live.paths(), fresh.paths(), "step {n}");
            let really: BTreeSet<IpAddr> = fresh
                .paths()
                .keys()
                .chain(last.keys())
                .filter(|p| fresh.paths().get(*p) != last.get(*p))
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

//! [`super::compute`] kept up to date: what the controller's loop runs.
//! Every cache of the announcements lives here, behind [`RouteTable`]:
//! the inputs remembered by identity, slices filed by Service, equal
//! attribute sets interned, and what Events need from one update to the
//! next (new conflicts, departed nodes). The rules themselves are the
//! parent module's, shared with `compute`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use porter_api::ObjectKey;
use porter_api::bgp_policy::{self, PathAttributes, PoolPolicy};
use porter_bgp::{NextHops, PathTable};

use super::{
    EipPaths, Excluded, Exclusion, Inputs, Policy, ServingNodes, Standing, Verdict, eip_paths,
    endpoints_of, hop_through, next_hop, node_infos, owner, ready_nodes,
};
use crate::compact::push_exact;
use crate::identity::{Seen, is, remember, same_objects};
use crate::ip_family::IpFamily;

/// One allocated Service's part in the paths, as of the last update.
#[derive(Debug, Default)]
struct Served {
    eips: Box<[IpAddr]>,
    nodes: ServingNodes,
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
/// the nodes, of the allocations or of the policy walks every Service.
/// After every update the paths equal [`super::compute`] of its inputs
/// (the test `incremental_updates_match_a_fresh_computation` holds it to
/// that).
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

    /// One EIP's paths as [`eip_paths`] decides them, with equal attribute
    /// sets shared, and its conflicts and exclusions recorded.
    fn paths_of(&mut self, eip: IpAddr, pool: Option<&PoolPolicy>, policy: &Policy) -> NextHops {
        let default_pool = PoolPolicy::default();
        let pool = pool.unwrap_or(&default_pool);
        let users = self.users.get(&eip).map(Vec::as_slice).unwrap_or_default();
        let endpoints = endpoints_of(self.served_nodes(users));
        let EipPaths {
            hops,
            excluded,
            conflicts,
        } = eip_paths(
            eip,
            pool,
            policy,
            users,
            endpoints,
            &self.nodes,
            &self.withdrawn,
        );
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
        hops.into_iter()
            .map(|(hop, attributes)| (hop, self.interner.get(attributes)))
            .collect()
    }

    /// The serving nodes of each of `users`, as of the last update.
    fn served_nodes<'a>(
        &'a self,
        users: &'a [ObjectKey],
    ) -> impl Iterator<Item = &'a [(Arc<str>, u32)]> {
        users
            .iter()
            .filter_map(|k| self.services.get(k))
            .map(|served| &*served.nodes)
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
        let endpoints = endpoints_of(self.served_nodes(users));
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

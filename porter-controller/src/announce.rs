//! Which next hops each EIP is announced with: the `InternalIP` of every
//! Ready node that has at least one ready endpoint of a Service using it.
//! Pure; the BGP layer turns the difference between two results into UPDATEs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use porter_api::ObjectKey;
use porter_api::annotations::SERVICE_NAME_LABEL;
use porter_api::service::endpoint_serving;

use crate::identity::{is, remember, same_objects};
use crate::ipam::Family;

/// EIP (as a host prefix) → next hops. An EIP with no next hop is absent,
/// which is what withdraws it.
pub type Routes = BTreeMap<IpNet, BTreeSet<IpAddr>>;

/// The nodes with a ready endpoint in these slices of one Service.
/// Sorted, without duplicates (a Vec: 10,000 of these are kept).
fn ready_nodes<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<String> {
    let mut nodes = Vec::new();
    for slice in slices {
        // The same predicate the agent programs its node with.
        for ep in slice.endpoints.iter().flatten() {
            if let (true, Some(node)) = (endpoint_serving(ep), ep.node_name.as_deref()) {
                nodes.push(node.to_string());
            }
        }
    }
    nodes.sort();
    nodes.dedup();
    nodes
}

/// The Service an EndpointSlice belongs to, borrowed.
fn owner(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        service.as_str(),
    ))
}

/// Each Ready node's `InternalIP`s, by name.
fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> HashMap<String, Vec<IpAddr>> {
    nodes
        .into_iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let addrs: Vec<IpAddr> = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
            (!addrs.is_empty()).then_some((name, addrs))
        })
        .collect()
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The next hop a node offers for an EIP: its address of the same family,
/// else its first (an IPv6 prefix over an IPv4 next hop, RFC 8950).
fn next_hop(addrs: &[IpAddr], eip: IpAddr) -> Option<IpAddr> {
    addrs
        .iter()
        .find(|a| Family::of(**a) == Family::of(eip))
        .or(addrs.first())
        .copied()
}

/// One allocated Service's part in the routes, as of the last update.
#[derive(Debug, Default)]
struct Served {
    eips: Vec<IpAddr>,
    nodes: Vec<String>,
}

/// The routes, kept up to date incrementally. An update finds the
/// EndpointSlices that changed by identity (sources share unchanged objects),
/// recomputes only their Services and only the EIPs those use; a change of
/// the nodes or of the allocations walks every Service. A fresh table's first
/// update is the plain function of (allocations, EndpointSlices, Nodes).
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The last inputs, by identity (see [`crate::identity`]).
    last_nodes: Vec<Weak<Node>>,
    last_slices: Vec<Weak<EndpointSlice>>,
    /// `None` before the first update.
    last_allocations: Option<u64>,
    nodes: HashMap<String, Vec<IpAddr>>,
    /// Every Service's slices, allocated or not; they stay alive here until
    /// removed, so a removed slice's identity is never reused meanwhile.
    slices: HashMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
    /// Which Service each known slice (by identity) belongs to.
    slice_owner: HashMap<usize, ObjectKey>,
    services: HashMap<ObjectKey, Served>,
    /// Services using each EIP; usually one, more when shared.
    users: HashMap<IpAddr, Vec<ObjectKey>>,
    routes: Arc<Routes>,
}

/// Slices in `old` and not in `new` (as identities), and the reverse.
fn diff<'a>(
    old: &[Weak<EndpointSlice>],
    new: &'a [Arc<EndpointSlice>],
) -> (Vec<usize>, Vec<&'a Arc<EndpointSlice>>) {
    if old.len() == new.len() {
        // Sources keep their order while nothing is added or removed, so a
        // positional comparison finds the handful of replaced objects.
        let changed: Vec<usize> = (0..old.len()).filter(|i| !is(&old[*i], &new[*i])).collect();
        return (
            changed.iter().map(|i| old[*i].as_ptr() as usize).collect(),
            changed.iter().map(|i| &new[*i]).collect(),
        );
    }
    let old_ptrs: HashSet<usize> = old.iter().map(|w| w.as_ptr() as usize).collect();
    let new_ptrs: HashSet<usize> = new.iter().map(|a| Arc::as_ptr(a) as usize).collect();
    (
        old_ptrs.difference(&new_ptrs).copied().collect(),
        new.iter()
            .filter(|s| !old_ptrs.contains(&(Arc::as_ptr(s) as usize)))
            .collect(),
    )
}

impl RouteTable {
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Brings the routes up to date and returns the EIPs whose next hops
    /// changed. `generation` identifies the allocations: equal generations
    /// mean equal allocations (see [`crate::ipam::Ipam::generation`]).
    pub fn update(
        &mut self,
        allocations: &BTreeMap<ObjectKey, Vec<IpAddr>>,
        generation: u64,
        slices: &[Arc<EndpointSlice>],
        nodes: &[Arc<Node>],
    ) -> BTreeSet<IpAddr> {
        let mut dirty: BTreeSet<IpAddr> = BTreeSet::new();
        if !same_objects(&self.last_nodes, nodes) {
            self.last_nodes = remember(nodes);
            let addresses = node_addresses(nodes.iter().map(|n| n.as_ref()));
            if addresses != self.nodes {
                // Served node names stay valid; their addresses feed every route.
                self.nodes = addresses;
                dirty.extend(self.users.keys());
            }
        }

        let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
        let (removed, added) = diff(&self.last_slices, slices);
        for ptr in removed {
            if let Some(key) = self.slice_owner.remove(&ptr) {
                if let Some(list) = self.slices.get_mut(&key) {
                    list.retain(|s| Arc::as_ptr(s) as usize != ptr);
                    if list.is_empty() {
                        self.slices.remove(&key);
                    }
                }
                touched.insert(key);
            }
        }
        for slice in added {
            if let Some((ns, name)) = owner(slice) {
                let key = ObjectKey::new(ns, name);
                self.slice_owner
                    .insert(Arc::as_ptr(slice) as usize, key.clone());
                self.slices
                    .entry(key.clone())
                    .or_default()
                    .push(slice.clone());
                touched.insert(key);
            }
        }
        self.last_slices = remember(slices);

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
                let same_eips = self.services.get(key).is_some_and(|s| s.eips == *eips);
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
        for eip in dirty {
            let hops: BTreeSet<IpAddr> = self
                .users
                .get(&eip)
                .into_iter()
                .flatten()
                .filter_map(|k| self.services.get(k))
                .flat_map(|s| s.nodes.iter())
                .filter_map(|n| self.nodes.get(n))
                .filter_map(|addrs| next_hop(addrs, eip))
                .collect();
            let prefix = IpNet::from(eip);
            let current = self.routes.get(&prefix);
            let unchanged = if hops.is_empty() {
                current.is_none()
            } else {
                current == Some(&hops)
            };
            if unchanged {
                continue;
            }
            let routes = Arc::make_mut(&mut self.routes);
            if hops.is_empty() {
                routes.remove(&prefix);
            } else {
                routes.insert(prefix, hops);
            }
            changed.insert(eip);
        }
        changed
    }

    /// Recomputes one allocated Service's serving nodes and marks its EIPs.
    fn serve(&mut self, key: &ObjectKey, eips: &[IpAddr], dirty: &mut BTreeSet<IpAddr>) {
        let nodes = ready_nodes(
            self.slices
                .get(key)
                .into_iter()
                .flatten()
                .map(|s| s.as_ref()),
        );
        let served = Served {
            eips: eips.to_vec(),
            nodes,
        };
        if let Some(old) = self.services.insert(key.clone(), served) {
            self.forget_user(key, &old.eips, dirty);
        }
        for eip in eips {
            let users = self.users.entry(*eip).or_default();
            if !users.contains(key) {
                users.push(key.clone());
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

    /// The Services using `eip`.
    pub fn users(&self, eip: &IpAddr) -> impl Iterator<Item = &ObjectKey> {
        self.users.get(eip).into_iter().flatten()
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
        table.update(&allocations, 0, &slices, &nodes);
        table
            .routes()
            .iter()
            .map(|(net, hops)| {
                (
                    net.to_string(),
                    hops.iter().map(IpAddr::to_string).collect(),
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
        type Step = (
            BTreeMap<ObjectKey, Vec<IpAddr>>,
            Vec<Arc<EndpointSlice>>,
            Vec<Arc<Node>>,
        );
        let steps: Vec<Step> = vec![
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.2")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
            ),
            // dns moves to n1 (a new slice object), web unchanged
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.2")]),
                vec![web.clone()]
                    .into_iter()
                    .chain(arcs(vec![slice("dns", &[("n1", Some(true))])]))
                    .collect(),
                vec![n1.clone(), n2.clone()],
            ),
            // dns shares web's address
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
            ),
            // node n2 goes NotReady
            (
                allocations(&[("web", "10.0.0.1"), ("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2_down.clone()],
            ),
            // web released
            (
                allocations(&[("dns", "10.0.0.1")]),
                vec![web.clone(), dns.clone()],
                vec![n1.clone(), n2.clone()],
            ),
            // everything gone
            (allocations(&[]), vec![], vec![n1.clone()]),
        ];
        let mut live = RouteTable::default();
        let mut last: Routes = Routes::new();
        for (n, (allocs, slices, nodes)) in steps.iter().enumerate() {
            // Each step's allocations are a new generation, except where they repeat.
            let generation = if n > 0 && steps[n - 1].0 == *allocs {
                n as u64 - 1
            } else {
                n as u64
            };
            let changed = live.update(allocs, generation, slices, nodes);
            let mut fresh = RouteTable::default();
            fresh.update(allocs, 0, slices, nodes);
            assert_eq!(live.routes(), fresh.routes(), "step {n}");
            let really: BTreeSet<IpAddr> = fresh
                .routes()
                .keys()
                .chain(last.keys())
                .filter(|p| fresh.routes().get(*p) != last.get(*p))
                .map(|p| p.addr())
                .collect();
            assert_eq!(changed, really, "step {n}: reported changes");
            last = (**live.routes()).clone();
        }
    }
}

//! Which next hops each EIP is announced with: the `InternalIP` of every
//! Ready node that has at least one ready endpoint of a Service using it.
//! Pure; the BGP layer turns the difference between two results into UPDATEs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use porter_api::ObjectKey;
use porter_api::service::{endpoint_serving, slice_service};

use crate::ipam::Family;

/// EIP (as a host prefix) → next hops. An EIP with no next hop is absent,
/// which is what withdraws it.
pub type Routes = BTreeMap<IpNet, BTreeSet<IpAddr>>;

/// The nodes that run a ready endpoint of each Service.
pub fn serving_nodes<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<ObjectKey, BTreeSet<&'a str>> {
    let mut out: HashMap<ObjectKey, BTreeSet<&str>> = HashMap::new();
    for slice in slices {
        let Some(key) = slice_service(slice) else {
            continue;
        };
        let nodes = out.entry(key).or_default();
        // The same predicate the agent programs its node with.
        for ep in slice.endpoints.iter().flatten() {
            if let (true, Some(node)) = (endpoint_serving(ep), ep.node_name.as_deref()) {
                nodes.insert(node);
            }
        }
    }
    out
}

/// Each Ready node's `InternalIP`s, by name.
pub fn node_addresses<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
) -> HashMap<&'a str, Vec<IpAddr>> {
    nodes
        .into_iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
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

/// The routes for every allocated EIP.
pub fn routes(
    allocations: &BTreeMap<ObjectKey, Vec<IpAddr>>,
    serving: &HashMap<ObjectKey, BTreeSet<&str>>,
    nodes: &HashMap<&str, Vec<IpAddr>>,
) -> Routes {
    let mut out = Routes::new();
    for (service, eips) in allocations {
        let Some(on) = serving.get(service) else {
            continue;
        };
        for eip in eips {
            let hops: BTreeSet<IpAddr> = on
                .iter()
                .filter_map(|n| nodes.get(n))
                .filter_map(|addrs| next_hop(addrs, *eip))
                .collect();
            if !hops.is_empty() {
                out.entry(IpNet::from(*eip)).or_default().extend(hops);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use porter_api::annotations::SERVICE_NAME_LABEL;

    fn node(name: &str, ready: &str, addrs: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                addresses: Some(
                    addrs
                        .iter()
                        .map(|a| NodeAddress {
                            type_: "InternalIP".into(),
                            address: a.to_string(),
                        })
                        .chain([NodeAddress {
                            type_: "ExternalIP".into(),
                            address: "203.0.113.1".into(),
                        }])
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    /// `eps`: (node, ready) per endpoint; `None` leaves `ready` unset.
    fn slice(service: &str, eps: &[(&str, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-abc")),
                namespace: Some("ns".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|(n, ready)| Endpoint {
                        node_name: Some(n.to_string()),
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        addresses: vec!["10.244.0.5".into()],
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        }
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
        routes(&allocations, &serving_nodes(slices), &node_addresses(nodes))
            .into_iter()
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
}

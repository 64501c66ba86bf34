//! Which EIPs are Layer 2 EIPs, and which nodes may lead each: pure, from a
//! cluster snapshot.
//!
//! An EIP is a Layer 2 EIP when the pool that handed it out has `protocol:
//! layer2`; the pool's `status.used` (written by the controller) says which
//! Services use each address. Its candidates are the Ready nodes with a
//! ready endpoint of one of those Services — the same nodes BGP mode would
//! announce as next hops, so the leader always has local pods to serve.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Node, discovery::v1::EndpointSlice};
use porter_api::{ObjectKey, annotations::SERVICE_NAME_LABEL, source::Snapshot};

pub use porter_api::layer2::PROTOCOL_LAYER2;

/// Layer 2 EIP → the nodes that may lead it (possibly none).
pub fn candidates(snapshot: &Snapshot) -> BTreeMap<IpAddr, BTreeSet<String>> {
    let ready_nodes: BTreeSet<&str> = snapshot
        .nodes
        .iter()
        .filter(|node| node_ready(node))
        .filter_map(|node| node.metadata.name.as_deref())
        .collect();
    let mut serving: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
    for slice in &snapshot.endpoint_slices {
        if let Some(service) = slice_service(slice) {
            let nodes = serving.entry(service).or_default();
            nodes.extend(
                ready_endpoint_nodes(slice)
                    .filter(|node| ready_nodes.contains(node))
                    .map(str::to_owned),
            );
        }
    }
    let mut result = BTreeMap::new();
    for eip in &snapshot.eips {
        if eip.spec.protocol.as_deref() != Some(PROTOCOL_LAYER2) {
            continue;
        }
        let Some(status) = &eip.status else { continue };
        for (address, users) in &status.used {
            let Ok(address) = address.parse::<IpAddr>() else {
                continue;
            };
            let nodes: &mut BTreeSet<String> = result.entry(address).or_default();
            for user in users.split(';').filter(|u| !u.is_empty()) {
                let Some((namespace, name)) = user.split_once('/') else {
                    continue;
                };
                if let Some(serving) = serving.get(&ObjectKey::new(namespace, name)) {
                    nodes.extend(serving.iter().cloned());
                }
            }
        }
    }
    result
}

/// Layer 2 EIP → `spec.interface` of its pool (a NIC name or
/// `can_reach:<ip>`), for the pools that set one.
pub fn interface_choices(snapshot: &Snapshot) -> BTreeMap<IpAddr, String> {
    let mut choices = BTreeMap::new();
    for eip in &snapshot.eips {
        let spec = &eip.spec;
        let Some(choice) = spec.interface.as_deref().filter(|c| !c.trim().is_empty()) else {
            continue;
        };
        if spec.protocol.as_deref() != Some(PROTOCOL_LAYER2) {
            continue;
        }
        for address in eip.status.iter().flat_map(|status| status.used.keys()) {
            if let Ok(address) = address.parse() {
                choices.insert(address, choice.trim().to_owned());
            }
        }
    }
    choices
}

/// Every address of every Node (InternalIP, ExternalIP, ...): no Layer 2
/// EIP may be one, or its leader would take that node's traffic.
pub fn node_addresses(snapshot: &Snapshot) -> BTreeSet<IpAddr> {
    snapshot
        .nodes
        .iter()
        .filter_map(|node| node.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter_map(|address| address.address.trim().parse().ok())
        .collect()
}

/// Takes the EIPs that are a host's address (`hosts`: the nodes', this
/// node's own) out of `candidates`, so that no node ever answers ARP/NDP
/// for them, and returns them. The controller refuses such pools; this
/// holds even when it did not know the address (an interface's address
/// that no Node lists, an older controller).
pub fn without_host_addresses(
    candidates: &mut BTreeMap<IpAddr, BTreeSet<String>>,
    hosts: &BTreeSet<IpAddr>,
) -> BTreeSet<IpAddr> {
    let refused: BTreeSet<IpAddr> = candidates
        .keys()
        .filter(|eip| hosts.contains(eip))
        .copied()
        .collect();
    for eip in &refused {
        candidates.remove(eip);
    }
    refused
}

/// Ready to the kubelet, and not withdrawn by its agent: a node whose data
/// plane cannot be programmed must not answer for an EIP.
fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && !porter_api::node_dataplane::withdrawn(node)
}

fn slice_service(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some(ObjectKey::new(namespace, name.as_str()))
}

fn ready_endpoint_nodes(slice: &EndpointSlice) -> impl Iterator<Item = &str> {
    slice.endpoints.iter().flatten().filter_map(|endpoint| {
        // The API defines an unset `ready` as ready.
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        ready.then_some(endpoint.node_name.as_deref()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Arc<T> {
        Arc::new(serde_yaml::from_str(text).expect("test manifest"))
    }

    fn node(name: &str, ready: bool) -> Arc<Node> {
        yaml(&format!(
            "metadata: {{name: {name}}}\nstatus: {{conditions: [{{type: Ready, status: \"{}\"}}]}}",
            if ready { "True" } else { "False" }
        ))
    }

    fn slice(service: &str, endpoints: &[(&str, bool)]) -> Arc<EndpointSlice> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|(node, ready)| {
                format!(
                    "{{addresses: [10.0.0.1], nodeName: {node}, conditions: {{ready: {ready}}}}}"
                )
            })
            .collect();
        yaml(&format!(
            "metadata: {{name: {service}-x, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nendpoints: [{}]",
            endpoints.join(", ")
        ))
    }

    fn pool(name: &str, protocol: &str, used: &[(&str, &str)]) -> Arc<porter_api::Eip> {
        pool_on(name, protocol, "", used)
    }

    fn pool_on(
        name: &str,
        protocol: &str,
        interface: &str,
        used: &[(&str, &str)],
    ) -> Arc<porter_api::Eip> {
        let used: Vec<String> = used
            .iter()
            .map(|(ip, users)| format!("\"{ip}\": \"{users}\""))
            .collect();
        yaml(&format!(
            "apiVersion: network.kubesphere.io/v1alpha2\nkind: Eip\nmetadata: {{name: {name}}}\n\
             spec: {{address: 172.30.0.100-172.30.0.110, protocol: {protocol}, interface: \"{interface}\"}}\n\
             status: {{used: {{{}}}}}",
            used.join(", ")
        ))
    }

    #[test]
    fn layer2_eips_get_the_ready_nodes_with_ready_endpoints_of_their_services() {
        let snapshot = Snapshot {
            nodes: vec![node("n1", true), node("n2", true), node("n3", false)],
            endpoint_slices: vec![
                slice("web", &[("n1", true), ("n2", false), ("n3", true)]),
                slice("api", &[("n2", true)]),
            ],
            eips: vec![
                pool(
                    "l2",
                    "layer2",
                    &[
                        ("172.30.0.100", "shop/web"),
                        ("172.30.0.101", "shop/web;shop/api"),
                        ("172.30.0.102", "shop/gone"),
                    ],
                ),
                pool("bgp", "bgp", &[("192.0.2.1", "shop/web")]),
            ],
            ..Snapshot::default()
        };
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        let set = |nodes: &[&str]| nodes.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let got = candidates(&snapshot);
        assert_eq!(
            got,
            BTreeMap::from([
                // n2's endpoint is not ready; n3 is not Ready.
                (ip("172.30.0.100"), set(&["n1"])),
                (ip("172.30.0.101"), set(&["n1", "n2"])),
                // Known but unserved: nobody answers.
                (ip("172.30.0.102"), set(&[])),
            ])
        );
        assert!(interface_choices(&snapshot).is_empty());
    }

    #[test]
    fn a_node_whose_data_plane_is_frozen_leads_nothing() {
        let frozen = yaml(&format!(
            "metadata: {{name: n2}}\nstatus: {{conditions: [{{type: Ready, status: \"True\"}}, \
             {{type: {}, status: \"False\"}}]}}",
            porter_api::node_dataplane::CONDITION
        ));
        let snapshot = Snapshot {
            nodes: vec![node("n1", true), frozen],
            endpoint_slices: vec![slice("web", &[("n1", true), ("n2", true)])],
            eips: vec![pool("l2", "layer2", &[("172.30.0.100", "shop/web")])],
            ..Snapshot::default()
        };
        let leaders: Vec<String> = candidates(&snapshot).into_values().flatten().collect();
        assert_eq!(leaders, ["n1"]);
    }

    #[test]
    fn an_eip_that_is_a_host_address_is_never_a_candidate() {
        let mut n1 = (*node("n1", true)).clone();
        n1.status
            .get_or_insert_default()
            .addresses
            .get_or_insert_default()
            .push(k8s_openapi::api::core::v1::NodeAddress {
                type_: "InternalIP".into(),
                address: "172.30.0.101".into(),
            });
        let snapshot = Snapshot {
            nodes: vec![Arc::new(n1)],
            endpoint_slices: vec![slice("web", &[("n1", true)])],
            eips: vec![pool(
                "l2",
                "layer2",
                &[
                    ("172.30.0.100", "shop/web"),
                    ("172.30.0.101", "shop/web"),
                    ("172.30.0.102", "shop/web"),
                ],
            )],
            ..Snapshot::default()
        };
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        let mut hosts = node_addresses(&snapshot);
        assert_eq!(hosts, BTreeSet::from([ip("172.30.0.101")]));
        // This node's own interface address, which no Node lists.
        hosts.insert(ip("172.30.0.102"));
        let mut got = candidates(&snapshot);
        let refused = without_host_addresses(&mut got, &hosts);
        assert_eq!(
            refused,
            BTreeSet::from([ip("172.30.0.101"), ip("172.30.0.102")])
        );
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [ip("172.30.0.100")]
        );
    }

    #[test]
    fn pools_that_name_an_interface_pass_it_on_for_their_addresses() {
        let snapshot = Snapshot {
            eips: vec![
                pool_on(
                    "a",
                    "layer2",
                    "can_reach:172.30.0.1",
                    &[("172.30.0.100", "shop/web")],
                ),
                pool_on("b", "bgp", "eth1", &[("192.0.2.1", "shop/web")]),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            interface_choices(&snapshot),
            BTreeMap::from([(
                "172.30.0.100".parse::<IpAddr>().expect("address"),
                "can_reach:172.30.0.1".to_owned()
            )])
        );
    }
}

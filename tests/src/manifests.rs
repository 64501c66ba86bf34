//! The Kubernetes objects a lab writes into the `dir:` source: what the
//! kubelet (Nodes) and the endpoint controller (EndpointSlices) would
//! publish in a cluster, and Services the tests create. YAML text, so that
//! someone exploring a kept lab reads what a cluster would hold.
use std::{fmt::Write as _, net::IpAddr};

/// A Node with its `InternalIP`s and its Ready condition.
pub fn node(name: &str, addresses: &[IpAddr], ready: bool) -> String {
    labelled_node(name, addresses, ready, &[])
}

/// A Node with labels (what a BgpPeer's `nodeSelector` matches).
pub fn labelled_node(
    name: &str,
    addresses: &[IpAddr],
    ready: bool,
    labels: &[(String, String)],
) -> String {
    let mut out = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    if !labels.is_empty() {
        out.push_str("  labels:\n");
        for (key, value) in labels {
            let _ = writeln!(out, "    {key}: \"{value}\"");
        }
    }
    out.push_str("status:\n  addresses:\n");
    for address in addresses {
        let _ = writeln!(out, "    - type: InternalIP\n      address: \"{address}\"");
    }
    let status = if ready { "True" } else { "False" };
    let _ = writeln!(
        out,
        "  conditions:\n    - type: Ready\n      status: \"{status}\""
    );
    out
}

/// One endpoint of a Service: a pod on a node.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: IpAddr,
    pub node: String,
    /// Passes its readiness probe (`serving`; also `ready` unless terminating).
    pub ready: bool,
    /// Being deleted (KEP-1669): `ready` is then false, `serving` says
    /// whether it still answers.
    pub terminating: bool,
}

/// The EndpointSlice of Service `namespace/service` for one address family
/// (the API keeps families in separate slices), pods serving on `port`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    v6: bool,
    port: u16,
    endpoints: &[Endpoint],
) -> String {
    let (family, suffix) = if v6 { ("IPv6", "v6") } else { ("IPv4", "v4") };
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{suffix}\n  \
         namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: {family}\nports:\n  - name: http\n    protocol: TCP\n    port: {port}\nendpoints:\n"
    );
    let mine: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.address.is_ipv6() == v6)
        .collect();
    if mine.is_empty() {
        out.truncate(out.len() - "endpoints:\n".len());
        out.push_str("endpoints: []\n");
    }
    for e in mine {
        let _ = writeln!(
            out,
            "  - addresses: [\"{}\"]\n    nodeName: {}\n    conditions:\n      ready: {}\n      \
             serving: {}\n      terminating: {}",
            e.address,
            e.node,
            e.ready && !e.terminating,
            e.ready,
            e.terminating
        );
    }
    out
}

/// A Service of type LoadBalancer that opts in to Porter, one TCP port.
pub struct ServiceManifest<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub port: u16,
    pub target_port: u16,
    /// Extra annotations (pool, shared IP key, requested address).
    pub annotations: &'a [(&'a str, &'a str)],
    /// `ipFamilies: [IPv6]` (what the API server fills in for an IPv6 Service).
    pub ipv6: bool,
    /// `externalTrafficPolicy: Cluster` instead of `Local`.
    pub cluster: bool,
}

pub fn service(spec: &ServiceManifest) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n  annotations:\n    \
         lb.kubesphere.io/v1alpha1: porter\n",
        spec.name, spec.namespace
    );
    for (key, value) in spec.annotations {
        let _ = writeln!(out, "    {key}: \"{value}\"");
    }
    let policy = if spec.cluster { "Cluster" } else { "Local" };
    let _ = write!(
        out,
        "spec:\n  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n  selector:\n    app: {}\n  \
         ports:\n    - name: http\n      protocol: TCP\n      port: {}\n      targetPort: {}\n",
        spec.name, spec.port, spec.target_port
    );
    if spec.ipv6 {
        out.push_str("  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n");
    }
    out
}

/// An Eip pool (`v1alpha2`).
pub fn eip(name: &str, address: &str) -> String {
    pool(name, address, "bgp")
}

/// A Layer 2 pool: its addresses are answered for by ARP/NDP on the LAN.
pub fn layer2_eip(name: &str, address: &str) -> String {
    pool(name, address, "layer2")
}

fn pool(name: &str, address: &str, protocol: &str) -> String {
    format!(
        "apiVersion: network.kubesphere.io/v1alpha2\nkind: Eip\nmetadata:\n  name: {name}\n\
         spec:\n  address: {address}\n  protocol: {protocol}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).expect("valid YAML")
    }

    #[test]
    fn objects_parse_as_their_kinds() {
        let n: k8s_openapi::api::core::v1::Node = serde_yaml::from_value(yaml(&node(
            "n1",
            &[
                "172.30.0.11".parse().unwrap(),
                "fd00:30::11".parse().unwrap(),
            ],
            true,
        )))
        .expect("a Node");
        let status = n.status.expect("status");
        assert_eq!(status.addresses.expect("addresses").len(), 2);
        let endpoints = [
            Endpoint {
                address: "10.244.1.2".parse().unwrap(),
                node: "n1".into(),
                ready: true,
                terminating: false,
            },
            Endpoint {
                address: "fd00:244:1::2".parse().unwrap(),
                node: "n1".into(),
                ready: false,
                terminating: false,
            },
        ];
        let v4: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_yaml::from_value(yaml(&endpoint_slice("default", "a", false, 80, &endpoints)))
                .expect("an EndpointSlice");
        assert_eq!(v4.endpoints.unwrap_or_default().len(), 1);
        assert_eq!(v4.address_type, "IPv4");
        let empty: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_yaml::from_value(yaml(&endpoint_slice("default", "a", false, 80, &[])))
                .expect("an empty EndpointSlice");
        assert!(empty.endpoints.unwrap_or_default().is_empty());
        let s: k8s_openapi::api::core::v1::Service =
            serde_yaml::from_value(yaml(&service(&ServiceManifest {
                namespace: "default",
                name: "web",
                port: 8088,
                target_port: 80,
                annotations: &[("porter.kubesphere.io/allow-shared-ip", "k")],
                ipv6: true,
                cluster: false,
            })))
            .expect("a Service");
        assert_eq!(
            s.spec.and_then(|spec| spec.ip_families),
            Some(vec!["IPv6".to_string()])
        );
        assert_eq!(
            s.metadata.annotations.expect("annotations").len(),
            2,
            "opt-in plus the extra one"
        );
        let e: porter_api::Eip =
            serde_yaml::from_value(yaml(&eip("pool", "192.168.2.0/30"))).expect("an Eip");
        assert_eq!(e.spec.address, "192.168.2.0/30");
    }
}

//! Predicates on Services and EndpointSlices that the controller and the
//! agent must agree on: a node is announced for an EIP exactly when its agent
//! has something to forward the EIP's traffic to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::ObjectKey;
use crate::annotations::{LB, LB_ANNOTATION_VALUES, LOAD_BALANCER_CLASS, SERVICE_NAME_LABEL};

/// Whether Porter serves this Service: `type: LoadBalancer`, opted in by
/// annotation or class, and not claimed by another load-balancer class.
pub fn opted_in(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == LOAD_BALANCER_CLASS,
        None => LB
            .get(svc.metadata.annotations.as_ref())
            .is_some_and(|v| LB_ANNOTATION_VALUES.contains(&v)),
    }
}

/// The addresses in `status.loadBalancer.ingress` (what the controller
/// allocated); entries that are not IPs (hostnames) are skipped.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.trim().parse().ok())
        .collect()
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`
/// label, in the slice's namespace).
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        name.as_str(),
    ))
}

/// Whether an endpoint should receive new traffic: ready and not
/// terminating. The API defines an unset `ready` as ready and an unset
/// `terminating` as not terminating.
pub fn endpoint_serving(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}

/// Serving endpoints per node in the slices of one Service: the `k` that
/// weights a node's path (docs/bgp-policy.md). A dual-stack Service lists
/// each pod once per address family, so a node's count is the largest of
/// its families' counts, not their sum.
pub fn serving_endpoints_by_node<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<&'a str, u32> {
    let mut per_family: BTreeMap<(&'a str, &'a str), u32> = BTreeMap::new();
    for slice in slices {
        for ep in slice.endpoints.iter().flatten() {
            if let (true, Some(node)) = (endpoint_serving(ep), ep.node_name.as_deref()) {
                *per_family
                    .entry((node, slice.address_type.as_str()))
                    .or_default() += 1;
            }
        }
    }
    let mut out: BTreeMap<&str, u32> = BTreeMap::new();
    for ((node, _), count) in per_family {
        let k = out.entry(node).or_default();
        *k = (*k).max(count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{load_balancer as lb, service as svc};
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    #[test]
    fn opt_in_by_annotation_or_class_only() {
        let ann = [("lb.kubesphere.io/v1alpha1", "porter")];
        let openelb = [("lb.kubesphere.io/v1alpha1", "openelb")];
        let cases: Vec<(&str, Service, bool)> = vec![
            ("seed annotation", svc(&ann, lb(None)), true),
            ("openelb value", svc(&openelb, lb(None)), true),
            ("our class", svc(&[], lb(Some(LOAD_BALANCER_CLASS))), true),
            ("no opt-in", svc(&[], lb(None)), false),
            (
                "other value",
                svc(&[("lb.kubesphere.io/v1alpha1", "metallb")], lb(None)),
                false,
            ),
            (
                "another class wins over annotation",
                svc(&ann, lb(Some("metallb.io/x"))),
                false,
            ),
            (
                "not a LoadBalancer",
                svc(
                    &ann,
                    ServiceSpec {
                        type_: Some("NodePort".into()),
                        ..Default::default()
                    },
                ),
                false,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(opted_in(&s), want, "{name}");
        }
    }

    #[test]
    fn ingress_keeps_ips_only() {
        let mut s = svc(&[], lb(None));
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("192.0.2.10".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("2001:db8::10".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        let ips: Vec<String> = ingress_ips(&s).iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["192.0.2.10", "2001:db8::10"]);
        assert!(ingress_ips(&svc(&[], lb(None))).is_empty());
    }

    #[test]
    fn serving_means_ready_and_not_terminating() {
        let ep = |ready, terminating| Endpoint {
            conditions: Some(EndpointConditions {
                ready,
                terminating,
                serving: None,
            }),
            ..Default::default()
        };
        let cases = [
            (None, None, true),
            (Some(true), None, true),
            (Some(true), Some(false), true),
            (Some(false), None, false),
            (Some(true), Some(true), false),
            (None, Some(true), false),
        ];
        for (ready, terminating, want) in cases {
            assert_eq!(
                endpoint_serving(&ep(ready, terminating)),
                want,
                "ready={ready:?} terminating={terminating:?}"
            );
        }
        assert!(endpoint_serving(&Endpoint::default()));
    }

    #[test]
    fn endpoints_are_counted_per_node_once_per_pod() {
        let ep = |node: &str, ready: Option<bool>| Endpoint {
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = |family: &str, eps: Vec<Endpoint>| EndpointSlice {
            address_type: family.into(),
            endpoints: Some(eps),
            ..Default::default()
        };
        let v4 = slice(
            "IPv4",
            vec![
                ep("n1", Some(true)),
                ep("n2", None),
                ep("n2", Some(true)),
                ep("n2", Some(false)),
            ],
        );
        let more_v4 = slice("IPv4", vec![ep("n2", Some(true))]);
        // The same pods again, by their IPv6 addresses: not more endpoints.
        let v6 = slice("IPv6", vec![ep("n1", Some(true)), ep("n2", Some(true))]);
        let counts = serving_endpoints_by_node([&v4, &more_v4, &v6]);
        assert_eq!(counts, BTreeMap::from([("n1", 1), ("n2", 3)]));
        assert!(serving_endpoints_by_node([]).is_empty());
    }
}

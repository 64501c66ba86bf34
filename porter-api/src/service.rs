//! Predicates on Services and EndpointSlices that the controller and the
//! agent must agree on: a node is announced for an EIP exactly when its agent
//! has something to forward the EIP's traffic to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
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

/// The status that publishes `ips` as a Service's addresses (the
/// controller's write; [`ingress_ips`] reads it back).
pub fn ingress_status(ips: &[IpAddr]) -> ServiceStatus {
    ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        conditions: None,
    }
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

/// What an endpoint may be sent (KEP-1669 conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Ready and not terminating: takes new flows.
    Ready,
    /// Terminating but still serving: keeps the flows it has, and takes new
    /// ones only where no ready endpoint is left (as kube-proxy does).
    Draining,
    /// Neither: gets nothing.
    Out,
}

/// The state of an endpoint. The API defines an unset `ready` as ready, an
/// unset `terminating` as not terminating, and an unset `serving` as the
/// value of `ready`.
pub fn endpoint_state(endpoint: &Endpoint) -> EndpointState {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let serving = conditions.and_then(|c| c.serving).or(ready).unwrap_or(true);
    match (terminating, ready.unwrap_or(true), serving) {
        (false, true, _) => EndpointState::Ready,
        (true, _, true) => EndpointState::Draining,
        _ => EndpointState::Out,
    }
}

/// The endpoints per node in the slices of one Service that take new flows:
/// the `k` that weights a node's path (docs/bgp-policy.md), and the nodes
/// the controller announces. Those are the ready endpoints; in an address
/// family without any, the serving terminating ones, which then take new
/// flows (the agent's tables fall back the same way), so that a Service
/// whose every pod is terminating stays reachable until its pods stop
/// serving. A dual-stack Service lists each pod once per address family,
/// so a node's count is the largest of its families' counts, not their sum.
pub fn serving_endpoints_by_node<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<&'a str, u32> {
    // Per (family, node): (ready, draining).
    let mut per_family: BTreeMap<(&'a str, &'a str), (u32, u32)> = BTreeMap::new();
    for slice in slices {
        for ep in slice.endpoints.iter().flatten() {
            let Some(node) = ep.node_name.as_deref() else {
                continue;
            };
            let counts = per_family
                .entry((slice.address_type.as_str(), node))
                .or_default();
            match endpoint_state(ep) {
                EndpointState::Ready => counts.0 += 1,
                EndpointState::Draining => counts.1 += 1,
                EndpointState::Out => {}
            }
        }
    }
    let families_with_ready: BTreeSet<&str> = per_family
        .iter()
        .filter(|(_, (ready, _))| *ready > 0)
        .map(|((family, _), _)| *family)
        .collect();
    let mut out: BTreeMap<&str, u32> = BTreeMap::new();
    for ((family, node), (ready, draining)) in per_family {
        let count = if families_with_ready.contains(family) {
            ready
        } else {
            draining
        };
        if count > 0 {
            let k = out.entry(node).or_default();
            *k = (*k).max(count);
        }
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
    fn ready_draining_or_out_from_the_three_conditions() {
        use EndpointState::{Draining, Out, Ready};
        let ep = |ready, serving, terminating| Endpoint {
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Default::default()
        };
        // (ready, serving, terminating) -> state
        let cases = [
            ((None, None, None), Ready),
            ((Some(true), None, None), Ready),
            ((Some(true), Some(true), Some(false)), Ready),
            ((Some(false), None, None), Out),
            ((Some(false), Some(false), Some(false)), Out),
            // What the endpoints controller writes for a terminating pod
            // that still passes its readiness probe, and one that fails it.
            ((Some(false), Some(true), Some(true)), Draining),
            ((Some(false), Some(false), Some(true)), Out),
            // Without `serving` (older writers), `ready` stands for it.
            ((Some(true), None, Some(true)), Draining),
            ((None, None, Some(true)), Draining),
            ((Some(false), None, Some(true)), Out),
        ];
        for ((ready, serving, terminating), want) in cases {
            assert_eq!(
                endpoint_state(&ep(ready, serving, terminating)),
                want,
                "ready={ready:?} serving={serving:?} terminating={terminating:?}"
            );
        }
        assert_eq!(endpoint_state(&Endpoint::default()), Ready);
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

    fn endpoint(node: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready: Some(ready && !terminating),
                serving: Some(ready),
                terminating: Some(terminating),
            }),
            ..Default::default()
        }
    }

    fn slice_of(family: &str, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: family.into(),
            endpoints: Some(eps),
            ..Default::default()
        }
    }

    #[test]
    fn terminating_endpoints_count_only_where_no_ready_one_is_left() {
        // n1 rolls: its old pod terminates while n2 still has a ready one.
        // n1 is announced no more (new flows go to n2's pod).
        let rolling = slice_of(
            "IPv4",
            vec![
                endpoint("n1", true, true),
                endpoint("n2", true, false),
                endpoint("n3", false, true),
            ],
        );
        assert_eq!(
            serving_endpoints_by_node([&rolling]),
            BTreeMap::from([("n2", 1)])
        );
        // Every pod terminates: the serving ones keep the Service reachable;
        // the one that stopped serving (n3) does not count.
        let all_terminating = slice_of(
            "IPv4",
            vec![
                endpoint("n1", true, true),
                endpoint("n1", true, true),
                endpoint("n2", true, true),
                endpoint("n3", false, true),
            ],
        );
        assert_eq!(
            serving_endpoints_by_node([&all_terminating]),
            BTreeMap::from([("n1", 2), ("n2", 1)])
        );
        // The fallback is per family: IPv6 has a ready pod, IPv4 none.
        let v6 = slice_of("IPv6", vec![endpoint("n3", true, false)]);
        assert_eq!(
            serving_endpoints_by_node([&all_terminating, &v6]),
            BTreeMap::from([("n1", 2), ("n2", 1), ("n3", 1)])
        );
    }
}

//! What a Service asks of Porter, read from its spec and annotations. Pure:
//! the IPAM works on [`ServiceRequest`]s, never on API objects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use porter_api::ObjectKey;
use porter_api::annotations::{ALLOW_SHARED_IP, EIP_POOL, EIP_REQUEST};
use porter_api::service::ingress_ips;

use crate::ip_family::IpFamily;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// A port as the sharing rule sees it: two Services may share an IP only if
/// no (protocol, port) pair is in both.
pub type Port = (String, i32);

/// What the Services sharing one address must agree on, besides their key,
/// so that every node announced for the address serves all of its ports
/// (see [`SharingTerms::compatible`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharingTerms {
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `spec.selector`; empty for a Service without one.
    pub selector: BTreeMap<String, String>,
}

impl SharingTerms {
    /// Why Services with `self` and `other` cannot share `ip`, if they
    /// cannot.
    ///
    /// An address is announced through every node with ready endpoints of
    /// any of its Services, and a node serves only what it can: a `Local`
    /// port only with pods of that Service on the node. So `Local` Services
    /// share only when they select the same pods (the same non-empty
    /// selector, as MetalLB asks), and never with a `Cluster` one. `Cluster`
    /// Services share freely: every node forwards each `Cluster` port to
    /// its pods wherever they run (IPv4 and IPv6 alike).
    pub fn incompatible(&self, other: &Self) -> Option<String> {
        if self.local != other.local {
            return Some(
                "their externalTrafficPolicy differs (Local and Cluster Services do not share an address)"
                    .into(),
            );
        }
        if !self.local {
            return None;
        }
        let policy = "externalTrafficPolicy: Local";
        if self.selector.is_empty() || other.selector.is_empty() {
            return Some(format!(
                "{policy} Services share an address only with the same spec.selector, and one has none"
            ));
        }
        (self.selector != other.selector).then(|| {
            format!(
                "{policy} Services share an address only with the same spec.selector (their pods must run on the same nodes)"
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    pub key: ObjectKey,
    /// Pool named by annotation.
    pub pool: Option<String>,
    /// Addresses asked for by annotation or `spec.loadBalancerIP`.
    pub requested: Vec<IpAddr>,
    /// A requested address that does not parse: the Service cannot be served
    /// until it is fixed.
    pub invalid_request: Option<String>,
    pub sharing_key: Option<String>,
    /// What an address shared under `sharing_key` must agree with.
    pub sharing_terms: SharingTerms,
    /// Sorted, without duplicates.
    pub ports: Vec<Port>,
    /// Families in preference order.
    pub families: Vec<IpFamily>,
    pub policy: IpFamilyPolicy,
    /// Addresses in `status.loadBalancer.ingress`: what a previous run gave it.
    pub current: Vec<IpAddr>,
}

pub use porter_api::service::opted_in;

/// Whether the Service is going away (its finalizer is what keeps it here).
pub fn deleting(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_some()
}

pub fn request(svc: &Service) -> ServiceRequest {
    let annotations = svc.metadata.annotations.as_ref();
    let default_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let mut requested = Vec::new();
    let mut invalid = Vec::new();
    let asked = EIP_REQUEST.get(annotations).or(spec
        .load_balancer_ip
        .as_deref()
        .filter(|s| !s.trim().is_empty()));
    for part in asked.into_iter().flat_map(|s| s.split(',')) {
        let part = part.trim();
        match part.parse::<IpAddr>() {
            Ok(ip) => requested.push(ip),
            Err(_) => invalid.push(part.to_string()),
        }
    }
    let policy = match spec.ip_family_policy.as_deref() {
        Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
        _ => IpFamilyPolicy::SingleStack,
    };
    let mut families: Vec<IpFamily> = Vec::new();
    for f in spec.ip_families.iter().flatten() {
        let f = if f == "IPv6" {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        if !families.contains(&f) {
            families.push(f);
        }
    }
    // The API server fills ipFamilies; an object from a manifest may lack it.
    if families.is_empty() {
        families.push(
            requested
                .first()
                .map_or(IpFamily::V4, |ip| IpFamily::of(*ip)),
        );
    }
    if policy != IpFamilyPolicy::SingleStack && families.len() == 1 {
        let other = if families[0] == IpFamily::V4 {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        families.push(other);
    }
    if policy == IpFamilyPolicy::SingleStack {
        families.truncate(1);
    }
    let mut ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect();
    ports.sort();
    ports.dedup();
    ServiceRequest {
        key: ObjectKey::of(&svc.metadata),
        pool: EIP_POOL.get(annotations).map(str::to_string),
        requested,
        invalid_request: (!invalid.is_empty()).then(|| invalid.join(",")),
        sharing_key: ALLOW_SHARED_IP.get(annotations).map(str::to_string),
        sharing_terms: SharingTerms {
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.clone().unwrap_or_default(),
        },
        ports,
        families,
        policy,
        current: ingress_ips(svc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use porter_api::testing::{load_balancer as lb, service as svc};

    #[test]
    fn reads_requests_families_and_ports() {
        let mut spec = lb(None);
        spec.ip_family_policy = Some("RequireDualStack".into());
        spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        spec.ports = Some(vec![
            ServicePort {
                port: 80,
                ..Default::default()
            },
            ServicePort {
                port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ]);
        let r = request(&svc(
            &[
                (
                    "eip.openelb.kubesphere.io/v1alpha1",
                    "2001:db8::5, 10.0.0.5",
                ),
                ("eip.porter.kubesphere.io/v1alpha2", "pool-a"),
                ("porter.kubesphere.io/allow-shared-ip", "k"),
            ],
            spec,
        ));
        assert_eq!(r.key.to_string(), "shop/web");
        assert_eq!(r.families, [IpFamily::V6, IpFamily::V4]);
        assert_eq!(r.policy, IpFamilyPolicy::RequireDualStack);
        assert_eq!(r.requested.len(), 2);
        assert_eq!(r.invalid_request, None);
        assert_eq!(r.pool.as_deref(), Some("pool-a"));
        assert_eq!(r.sharing_key.as_deref(), Some("k"));
        assert!(r.ports.contains(&("TCP".into(), 80)) && r.ports.contains(&("UDP".into(), 53)));
    }

    #[test]
    fn reads_what_sharing_depends_on() {
        let mut spec = lb(None);
        spec.external_traffic_policy = Some("Local".into());
        spec.selector = Some([("app".to_string(), "web".to_string())].into());
        let local = request(&svc(&[], spec)).sharing_terms;
        assert!(local.local);
        assert_eq!(local.selector.get("app").map(String::as_str), Some("web"));
        let cluster = request(&svc(&[], lb(None))).sharing_terms;
        assert_eq!(cluster, SharingTerms::default());
        assert!(
            local
                .incompatible(&cluster)
                .is_some_and(|why| why.contains("externalTrafficPolicy differs"))
        );
        assert_eq!(cluster.incompatible(&cluster), None);
    }

    #[test]
    fn bad_requested_ip_is_reported_not_dropped() {
        let mut spec = lb(None);
        spec.load_balancer_ip = Some("10.0.0.300".into());
        let r = request(&svc(&[], spec));
        assert!(r.requested.is_empty());
        assert_eq!(r.invalid_request.as_deref(), Some("10.0.0.300"));
        assert_eq!(r.families, [IpFamily::V4]);
    }
}

//! BGP advertisement policy: from `Eip.spec.bgp`, the Services' `bgp.*`
//! annotations, `BgpConf.spec.linkBandwidth` and `BgpPeer.spec.policy` to the
//! attributes of each path porter-bgp announces (see docs/bgp-policy.md).
//!
//! Pure, and shared: the controller computes every node's paths with it, an
//! agent in node mode its own node's. The steps are separate so that each
//! is done once where it can be: parse a pool ([`PoolPolicy::from_spec`])
//! and a Service ([`ServicePolicy::from_annotations`]) when they change,
//! [`merge`] them per EIP, then [`EipPolicy::attributes`] per node with its
//! ready local endpoint count.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use porter_bgp::{
    LinkBandwidth, LinkBandwidthPolicy, PathAttributes, PeerPolicy, parse_community,
    parse_large_community,
};

use crate::annotations::{
    AnnotationKey, BGP_COMMUNITIES, BGP_LARGE_COMMUNITIES, BGP_LINK_BANDWIDTH, BGP_LOCAL_PREF,
};
use crate::crd::{BgpConfSpec, EipBgp, LinkBandwidthMode, PeerPolicySpec, ServiceAttributes};
use crate::{BgpPeer, ObjectKey};

/// The reason of the Eip condition and of the Service Events that report a
/// policy value that cannot be read.
pub const REASON_INVALID: &str = "BgpPolicyInvalid";
/// The reason of the Events on the Services of an EIP whose BGP
/// annotations are not applied as written: Services that share the EIP
/// disagree, or one sets what the pool's `serviceAttributes` do not allow.
pub const REASON_CONFLICT: &str = "BgpPolicyConflict";

/// A policy value that cannot be read, and where it is. It is left out; the
/// rest of the policy applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// `spec.bgp.communities[1]`, or the annotation key.
    pub field: String,
    pub message: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// A Kubernetes label selector, checked once. One that cannot be read
/// matches nothing: announcing a pool to peers or through nodes the
/// operator meant to exclude is worse than withdrawing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    invalid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Every label in `labels` must be present with that value (the form
    /// of `BgpPeer.spec.nodeSelector`). Empty matches everything.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
            invalid: false,
        }
    }

    /// `matchLabels` and `matchExpressions` (`In`, `NotIn`, `Exists`,
    /// `DoesNotExist`), all of which must hold.
    pub fn from_label_selector(selector: &LabelSelector, field: &str) -> (Self, Vec<PolicyError>) {
        let mut out = Self::from_labels(&selector.match_labels.clone().unwrap_or_default());
        let mut errors = Vec::new();
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                op @ ("In" | "NotIn" | "Exists" | "DoesNotExist") => {
                    errors.push(PolicyError::new(
                        format!("{field}.matchExpressions[{i}]"),
                        format!(
                            "operator {op} with {} value(s): In and NotIn need values, Exists and DoesNotExist none; the selector matches nothing until fixed",
                            values.len()
                        ),
                    ));
                    out.invalid = true;
                    continue;
                }
                op => {
                    errors.push(PolicyError::new(
                        format!("{field}.matchExpressions[{i}]"),
                        format!(
                            "unknown operator {op:?}: use In, NotIn, Exists or DoesNotExist; the selector matches nothing until fixed"
                        ),
                    ));
                    out.invalid = true;
                    continue;
                }
            };
            out.requirements.push(requirement);
        }
        (out, errors)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.invalid
            && self.requirements.iter().all(|r| match r {
                Requirement::Equals(k, v) => labels.get(k) == Some(v),
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    /// Matches everything (what an unset selector means).
    pub fn is_everything(&self) -> bool {
        !self.invalid && self.requirements.is_empty()
    }
}

/// A pool's policy (`Eip.spec.bgp`) with the values that could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolPolicy {
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub local_pref: Option<u32>,
    /// Which BgpPeers get the pool; everything when unset.
    pub peer_selector: Selector,
    /// Which nodes may be next hops; everything when unset.
    pub node_selector: Selector,
    /// What the pool's Services may add; nothing when unset.
    pub service_may_set: ServiceAllowance,
}

/// What a pool's Services may add to its paths (`spec.bgp.serviceAttributes`).
/// The default allows nothing: attaching `blackhole` or `no-export`, or
/// steering with LOCAL_PREF, is the network operator's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAllowance {
    pub communities: Allowed<u32>,
    pub large_communities: Allowed<(u32, u32, u32)>,
    pub local_pref: bool,
}

/// The values of one attribute a Service may set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed<T> {
    /// Any value (`"*"`).
    Any,
    /// Only these (none by default).
    Only(BTreeSet<T>),
}

impl<T> Default for Allowed<T> {
    fn default() -> Self {
        Self::Only(BTreeSet::new())
    }
}

impl<T: Ord> Allowed<T> {
    pub fn admits(&self, value: &T) -> bool {
        match self {
            Self::Any => true,
            Self::Only(values) => values.contains(value),
        }
    }

    /// The values it admits; each other one is named in `refused`.
    fn keep(&self, values: &[T], refused: &mut Vec<String>, name: impl Fn(&T) -> String) -> Vec<T>
    where
        T: Copy,
    {
        let (kept, left_out): (Vec<T>, Vec<T>) = values.iter().partition(|v| self.admits(v));
        refused.extend(left_out.iter().map(name));
        kept
    }

    fn read<'a>(
        values: impl IntoIterator<Item = &'a str>,
        parse: impl Fn(&str) -> Result<T, porter_bgp::CommunityError>,
        field: &str,
        errors: &mut Vec<PolicyError>,
    ) -> Self {
        let values: Vec<&str> = values.into_iter().collect();
        if values.iter().any(|v| v.trim() == "*") {
            return Self::Any;
        }
        Self::Only(
            parse_each(values, parse, |i| format!("{field}[{i}]"), errors)
                .into_iter()
                .collect(),
        )
    }
}

impl ServiceAllowance {
    /// Everything a Service may set.
    pub fn everything() -> Self {
        Self {
            communities: Allowed::Any,
            large_communities: Allowed::Any,
            local_pref: true,
        }
    }

    fn from_spec(spec: Option<&ServiceAttributes>, errors: &mut Vec<PolicyError>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        let field = "spec.bgp.serviceAttributes";
        Self {
            communities: Allowed::read(
                spec.communities.iter().map(String::as_str),
                parse_community,
                &format!("{field}.communities"),
                errors,
            ),
            large_communities: Allowed::read(
                spec.large_communities.iter().map(String::as_str),
                parse_large_community,
                &format!("{field}.largeCommunities"),
                errors,
            ),
            local_pref: spec.local_pref.unwrap_or(false),
        }
    }

    /// What of `service` the pool lets through, and a sentence for each
    /// value it refuses.
    fn admit(&self, service: &ServicePolicy) -> (ServicePolicy, Vec<String>) {
        let mut refused = Vec::new();
        let communities = self
            .communities
            .keep(&service.communities, &mut refused, |c| {
                format!("community {}:{}", c >> 16, c & 0xFFFF)
            });
        let large_communities =
            self.large_communities
                .keep(&service.large_communities, &mut refused, |l| {
                    format!("large community {}:{}:{}", l.0, l.1, l.2)
                });
        let local_pref = service.local_pref.filter(|pref| {
            if !self.local_pref {
                refused.push(format!("local-pref {pref}"));
            }
            self.local_pref
        });
        let admitted = ServicePolicy {
            communities,
            large_communities,
            local_pref,
            link_bandwidth: service.link_bandwidth,
        };
        (admitted, refused)
    }
}

impl PoolPolicy {
    /// Reads `Eip.spec.bgp`; what cannot be read is reported and left out.
    pub fn from_spec(spec: Option<&EipBgp>) -> (Self, Vec<PolicyError>) {
        let mut errors = Vec::new();
        let Some(spec) = spec else {
            return (Self::default(), errors);
        };
        let communities = parse_each(
            spec.communities.iter().map(String::as_str),
            parse_community,
            |i| format!("spec.bgp.communities[{i}]"),
            &mut errors,
        );
        let large_communities = parse_each(
            spec.large_communities.iter().map(String::as_str),
            parse_large_community,
            |i| format!("spec.bgp.largeCommunities[{i}]"),
            &mut errors,
        );
        let mut selector = |s: Option<&LabelSelector>, field: &str| match s {
            None => Selector::default(),
            Some(s) => {
                let (selector, e) = Selector::from_label_selector(s, field);
                errors.extend(e);
                selector
            }
        };
        let peer_selector = selector(spec.peer_selector.as_ref(), "spec.bgp.peerSelector");
        let node_selector = selector(spec.node_selector.as_ref(), "spec.bgp.nodeSelector");
        let service_may_set =
            ServiceAllowance::from_spec(spec.service_attributes.as_ref(), &mut errors);
        (
            Self {
                communities,
                large_communities,
                local_pref: spec.local_pref,
                peer_selector,
                node_selector,
                service_may_set,
            },
            errors,
        )
    }
}

fn parse_each<'a, T, E: std::fmt::Display>(
    values: impl IntoIterator<Item = &'a str>,
    parse: impl Fn(&str) -> Result<T, E>,
    field: impl Fn(usize) -> String,
    errors: &mut Vec<PolicyError>,
) -> Vec<T> {
    values
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            parse(v)
                .map_err(|e| errors.push(PolicyError::new(field(i), e)))
                .ok()
        })
        .collect()
}

/// One Service's policy, from its `bgp.porter.kubesphere.io/*` annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Added to the pool's.
    pub communities: Vec<u32>,
    /// Added to the pool's.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Overrides the pool's.
    pub local_pref: Option<u32>,
    /// `Some(false)`: no link bandwidth on this Service's EIP.
    pub link_bandwidth: Option<bool>,
}

impl ServicePolicy {
    /// Reads the annotations; a value that cannot be read is reported and
    /// the pool's policy applies for it.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> (Self, Vec<PolicyError>) {
        let mut errors = Vec::new();
        let list = |key: &AnnotationKey| -> Vec<&str> {
            key.get(annotations)
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        };
        let communities = parse_each(
            list(&BGP_COMMUNITIES),
            parse_community,
            |_| BGP_COMMUNITIES.key.to_string(),
            &mut errors,
        );
        let large_communities = parse_each(
            list(&BGP_LARGE_COMMUNITIES),
            parse_large_community,
            |_| BGP_LARGE_COMMUNITIES.key.to_string(),
            &mut errors,
        );
        let local_pref = BGP_LOCAL_PREF.get(annotations).and_then(|v| {
            v.parse::<u32>()
                .map_err(|_| {
                    errors.push(PolicyError::new(
                        BGP_LOCAL_PREF.key,
                        format!("{v:?} is not a LOCAL_PREF: write a whole number 0..=4294967295"),
                    ))
                })
                .ok()
        });
        let link_bandwidth = BGP_LINK_BANDWIDTH.get(annotations).and_then(|v| {
            match v.to_ascii_lowercase().as_str() {
                "off" | "false" | "disabled" => Some(false),
                "on" | "true" | "enabled" => Some(true),
                _ => {
                    errors.push(PolicyError::new(
                        BGP_LINK_BANDWIDTH.key,
                        format!("{v:?} is not a setting: write `off` for plain ECMP, or `on`"),
                    ));
                    None
                }
            }
        });
        (
            Self {
                communities,
                large_communities,
                local_pref,
                link_bandwidth,
            },
            errors,
        )
    }

    /// Whether the Service sets nothing (the usual case).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Cluster-wide policy, from `BgpConf.spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// Paths carry link bandwidth (unless a Service switches it off).
    pub link_bandwidth: bool,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        Self {
            link_bandwidth: true,
        }
    }
}

impl ClusterPolicy {
    pub fn from_conf(spec: Option<&BgpConfSpec>) -> Self {
        Self {
            link_bandwidth: spec
                .and_then(|s| s.link_bandwidth.as_ref())
                .is_none_or(|l| l.enabled),
        }
    }
}

/// One EIP's policy: its pool's and its Services' merged. The same for
/// every node; only the link bandwidth and the peers differ per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EipPolicy {
    communities: Vec<u32>,
    large_communities: Vec<(u32, u32, u32)>,
    local_pref: Option<u32>,
    link_bandwidth: bool,
}

impl EipPolicy {
    /// The attributes of the path through a node with `endpoints` ready
    /// local endpoints (summed over the Services sharing the EIP), sent to
    /// every peer. The controller builds the transitive form; each peer's
    /// `PeerPolicy` decides what goes on the wire.
    pub fn attributes(&self, endpoints: u32) -> PathAttributes {
        PathAttributes {
            communities: self.communities.clone(),
            large_communities: self.large_communities.clone(),
            local_pref: self.local_pref,
            link_bandwidth: self
                .link_bandwidth
                .then(|| LinkBandwidth::for_endpoints(endpoints, true)),
            only_peers: None,
        }
    }
}

/// Merges the pool's policy with those of the Services that share one EIP
/// (one path per node carries all of them):
/// - a Service's values that the pool's `serviceAttributes` do not allow
///   are left out;
/// - communities and large communities: the union;
/// - LOCAL_PREF: the highest a Service sets, else the pool's;
/// - link bandwidth: off if the cluster or any Service switches it off.
///
/// Returns what the pool refuses and what the Services disagree on, for an
/// Event on each of them.
pub fn merge<'a>(
    pool: &PoolPolicy,
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a ServicePolicy)>,
    cluster: &ClusterPolicy,
) -> (EipPolicy, Vec<String>) {
    let mut communities = pool.communities.clone();
    let mut large_communities = pool.large_communities.clone();
    let mut prefs: BTreeMap<u32, Vec<&ObjectKey>> = BTreeMap::new();
    let mut bandwidth: BTreeMap<bool, Vec<&ObjectKey>> = BTreeMap::new();
    let mut count = 0usize;
    let mut conflicts = Vec::new();
    for (key, service) in services {
        count += 1;
        let (service, refused) = pool.service_may_set.admit(service);
        if !refused.is_empty() {
            conflicts.push(format!(
                "{key} sets {} by annotation, which the pool does not allow its Services \
                 (spec.bgp.serviceAttributes): not sent",
                refused.join(", ")
            ));
        }
        let service = &service;
        communities.extend_from_slice(&service.communities);
        large_communities.extend_from_slice(&service.large_communities);
        if let Some(pref) = service.local_pref {
            prefs.entry(pref).or_default().push(key);
        }
        if let Some(on) = service.link_bandwidth {
            bandwidth.entry(on).or_default().push(key);
        }
    }
    communities.sort_unstable();
    communities.dedup();
    large_communities.sort_unstable();
    large_communities.dedup();
    let listed = |m: &BTreeMap<u32, Vec<&ObjectKey>>| {
        m.iter()
            .map(|(v, keys)| format!("{v} by {}", join(keys)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let local_pref = prefs.keys().next_back().copied().or(pool.local_pref);
    // A Service that sets none follows the pool: a disagreement too when
    // other Services on the EIP override it.
    if prefs.len() > 1 || (!prefs.is_empty() && prefs.values().map(Vec::len).sum::<usize>() < count)
    {
        conflicts.push(format!(
            "the Services sharing this address set different local-pref ({}); the highest, {}, applies to all of them",
            listed(&prefs),
            local_pref.unwrap_or(porter_bgp::DEFAULT_LOCAL_PREF)
        ));
    }
    let off = bandwidth.get(&false);
    if let Some(off) = off
        && off.len() < count
    {
        conflicts.push(format!(
            "link bandwidth is off for {}, so the address they share carries none (plain ECMP) for every Service on it",
            join(off)
        ));
    }
    (
        EipPolicy {
            communities,
            large_communities,
            local_pref,
            link_bandwidth: cluster.link_bandwidth && off.is_none(),
        },
        conflicts,
    )
}

fn join(keys: &[&ObjectKey]) -> String {
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attributes of one path, in one call: [`merge`] then
/// [`EipPolicy::attributes`]. Returns the Services' disagreements too.
pub fn path_attributes<'a>(
    pool: &PoolPolicy,
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a ServicePolicy)>,
    endpoints: u32,
    cluster: &ClusterPolicy,
) -> (PathAttributes, Vec<String>) {
    let (policy, conflicts) = merge(pool, services, cluster);
    (policy.attributes(endpoints), conflicts)
}

/// What decides which paths a BgpPeer is sent: its address, its labels (for
/// pools' `peerSelector`) and its `nodeSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerScope {
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub node_selector: Selector,
}

impl PeerScope {
    /// `None` when the neighbour address is not an IP (the BGP translation
    /// reports that; such a peer gets nothing anyway).
    pub fn of(peer: &BgpPeer) -> Option<Self> {
        Some(Self {
            address: peer.spec.conf.neighbor_address.trim().parse().ok()?,
            labels: peer.metadata.labels.clone().unwrap_or_default(),
            node_selector: Selector::from_labels(&peer.spec.node_selector),
        })
    }
}

/// Why a peer is not sent a path of a pool through some node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSkip {
    /// The pool's `spec.bgp.peerSelector` does not select the peer.
    PoolPeerSelector,
    /// The BgpPeer's `nodeSelector` does not match the node.
    PeerNodeSelector,
}

impl PeerSkip {
    /// The short word `porter-controller explain` and the Events use.
    pub fn word(self) -> &'static str {
        match self {
            PeerSkip::PoolPeerSelector => "PoolPeerSelector",
            PeerSkip::PeerNodeSelector => "PeerNodeSelector",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            PeerSkip::PoolPeerSelector => {
                "the pool's spec.bgp.peerSelector does not select this BgpPeer"
            }
            PeerSkip::PeerNodeSelector => "the BgpPeer's spec.nodeSelector does not match the node",
        }
    }
}

/// Whether `peer` is sent a path of `pool` through a node with
/// `node_labels`, or why not: the one predicate of [`only_peers`].
pub fn peer_takes(
    pool: &PoolPolicy,
    peer: &PeerScope,
    node_labels: &BTreeMap<String, String>,
) -> Result<(), PeerSkip> {
    if !pool.peer_selector.matches(&peer.labels) {
        return Err(PeerSkip::PoolPeerSelector);
    }
    if !peer.node_selector.matches(node_labels) {
        return Err(PeerSkip::PeerNodeSelector);
    }
    Ok(())
}

/// The peers a path of `pool` through a node with `node_labels` goes to:
/// those the pool's `peerSelector` selects and whose `nodeSelector` matches
/// the node. `None` when that is every peer, which lets the speaker share
/// one unscoped path for all of them.
pub fn only_peers(
    pool: &PoolPolicy,
    peers: &[PeerScope],
    node_labels: &BTreeMap<String, String>,
) -> Option<BTreeSet<IpAddr>> {
    let chosen: BTreeSet<IpAddr> = peers
        .iter()
        .filter(|p| peer_takes(pool, p, node_labels).is_ok())
        .map(|p| p.address)
        .collect();
    let all = peers.iter().all(|p| chosen.contains(&p.address));
    (!all).then_some(chosen)
}

/// The speaker's policy for a peer from `BgpPeer.spec.policy`. The
/// controller builds transitive link bandwidth, so `Transitive` (the
/// default) and `AsGiven` send the same.
pub fn peer_policy(spec: Option<&PeerPolicySpec>) -> PeerPolicy {
    let spec = spec.cloned().unwrap_or_default();
    PeerPolicy {
        communities: spec.send_communities.unwrap_or(true),
        link_bandwidth: match spec.link_bandwidth.unwrap_or_default() {
            LinkBandwidthMode::Transitive => LinkBandwidthPolicy::Transitive,
            LinkBandwidthMode::NonTransitive => LinkBandwidthPolicy::NonTransitive,
            LinkBandwidthMode::Off => LinkBandwidthPolicy::Off,
        },
    }
}

#[cfg(test)]
mod tests;

//! One `Eip` as the IPAM sees it, and the rules that decide which range each
//! pool holds: overlapping pools are refused, and an edit of `spec.address`
//! that would take an address in use out of its pool is held back.

use std::cell::LazyCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::annotations::DEFAULT_EIP;
use porter_api::layer2::PROTOCOL_LAYER2;
use porter_api::{Eip, ObjectKey};

use super::range::IpRange;
use super::{NamespaceLabels, NodeAddresses};
use crate::ip_family::IpFamily;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    Accepted,
    /// Invalid address or overlap: nothing is allocated from it; the reason
    /// goes into its status condition.
    Refused(String),
}

/// Addresses in use, each with the Services that hold it.
pub type Claims = BTreeMap<IpAddr, Vec<ObjectKey>>;

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// The range in force: the addresses that belong to the pool. That of
    /// `spec.address`, except while an edit of it is held back
    /// ([`Pool::held`]): then the last accepted one.
    pub range: Option<IpRange>,
    pub state: PoolState,
    pub disabled: bool,
    pub priority: i32,
    pub namespaces: Vec<String>,
    pub namespace_selector: BTreeMap<String, String>,
    /// `spec.sharing.crossNamespace`: Services of different namespaces may
    /// share an address.
    pub cross_namespace: bool,
    /// `protocol: layer2`: a node's address must not be in its range.
    pub layer2: bool,
    pub is_default: bool,
    /// Creation time: on overlap the older pool is kept.
    pub created: Option<Time>,
    /// `spec.address` as written.
    pub address: String,
    /// The edge addresses of a CIDR `spec.address` that the pool leaves out
    /// (see [`IpRange::parse_pool`]).
    pub edges: Vec<IpAddr>,
    /// The range in force as the pool's status last showed it (`firstIP`
    /// to `lastIP` of a Ready pool). A controller that has not decided the
    /// pool itself yet (after a restart or a failover) compares an edit
    /// with this.
    pub published: Option<IpRange>,
    /// An edit of `spec.address` that is not applied yet.
    pub held: Option<HeldEdit>,
    /// Every offset of the offered range below this one is in use. Only a
    /// shortcut: the address handed out is always the lowest free one, but
    /// filling a pool stays linear instead of quadratic.
    pub(super) full_below: u128,
}

/// Why `spec.address` is not in force yet, and what it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldEdit {
    /// Why the new address cannot be used at all (unreadable, overlap);
    /// `None` when it is fine but addresses in use fall outside it.
    pub invalid: Option<String>,
    /// Addresses in use that the edit would take out of the pool, with the
    /// Services holding them. The edit applies once this is empty.
    pub in_the_way: Vec<(IpAddr, Vec<ObjectKey>)>,
    /// The range `spec.address` asks for, if it reads.
    pub(super) wanted: Option<IpRange>,
    /// Where new addresses come from meanwhile: only those both the range
    /// in force and the new address hold, so that the wait never grows.
    pub(super) offer: Option<IpRange>,
}

impl Pool {
    pub fn from_eip(eip: &Eip) -> Self {
        let (range, edges, state) =
            match IpRange::parse_pool(&eip.spec.address, eip.spec.include_network_and_broadcast) {
                Ok((r, edges)) => (Some(r), edges, PoolState::Accepted),
                Err(e) => (None, Vec::new(), PoolState::Refused(e.to_string())),
            };
        Self {
            name: eip.metadata.name.clone().unwrap_or_default(),
            range,
            state,
            disabled: eip.spec.disable,
            priority: eip.spec.priority,
            namespaces: eip.spec.namespaces.clone(),
            namespace_selector: eip.spec.namespace_selector.clone(),
            cross_namespace: eip.spec.sharing.as_ref().is_some_and(|s| s.cross_namespace),
            layer2: eip.spec.protocol.as_deref() == Some(PROTOCOL_LAYER2),
            is_default: DEFAULT_EIP
                .get(eip.metadata.annotations.as_ref())
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            created: eip.metadata.creation_timestamp.clone(),
            address: eip.spec.address.clone(),
            edges,
            published: published_range(eip),
            held: None,
            full_below: 0,
        }
    }

    pub fn family(&self) -> Option<IpFamily> {
        self.range.map(|r| r.family)
    }

    /// The addresses new allocations come from.
    pub fn offered(&self) -> Option<IpRange> {
        match &self.held {
            Some(held) => held.offer,
            None => self.range,
        }
    }

    /// Reserved for some namespaces.
    pub fn restricted(&self) -> bool {
        !self.namespaces.is_empty() || !self.namespace_selector.is_empty()
    }

    /// Whether Services of `namespace` may be given addresses from it.
    pub fn open_to(&self, namespace: &str, labels: &NamespaceLabels) -> bool {
        if !self.restricted() {
            return true;
        }
        if self.namespaces.iter().any(|n| n == namespace) {
            return true;
        }
        !self.namespace_selector.is_empty()
            && labels.get(namespace).is_some_and(|l| {
                self.namespace_selector
                    .iter()
                    .all(|(k, v)| l.get(k) == Some(v))
            })
    }

    /// The range `spec.address` asks for, if it reads.
    fn wanted(&self) -> Option<IpRange> {
        match self.state {
            PoolState::Accepted => self.range,
            PoolState::Refused(_) => None,
        }
    }
}

/// `firstIP`–`lastIP` of a Ready pool's status.
fn published_range(eip: &Eip) -> Option<IpRange> {
    let status = eip.status.as_ref().filter(|s| s.ready)?;
    let first = status.first_ip.as_deref()?.parse().ok()?;
    let last = status.last_ip.as_deref()?.parse().ok()?;
    IpRange::between(first, last)
}

/// Decides the range of every pool.
///
/// - A pool whose `spec.address` is unchanged keeps its range, unless it
///   overlaps an older pool.
/// - An edit is applied when no address in use falls outside the new range;
///   otherwise the range in force (`previous`, else the published one) stays
///   and the edit is held back ([`Pool::held`]).
/// - Pools whose range stays go first, so that neither a new pool nor an
///   edit of another can take addresses from under them. Among themselves
///   the older pool wins (ties by name).
///
/// - A Layer 2 pool that contains a node's address is refused as an overlap
///   is: its leader would answer ARP/NDP for that node and take its traffic.
///
/// `claims` is asked for only when some pool is edited.
pub(super) fn accept(
    pools: Vec<Pool>,
    previous: &BTreeMap<String, Pool>,
    nodes: &NodeAddresses,
    claims: impl FnOnce() -> Claims,
) -> BTreeMap<String, Pool> {
    let claims = LazyCell::new(claims);
    let mut staying = Vec::new();
    let mut others = Vec::new();
    for mut pool in pools {
        let prior = previous
            .get(&pool.name)
            .filter(|p| p.state == PoolState::Accepted)
            .and_then(|p| p.range)
            .or(pool.published);
        match prior {
            Some(prior) if pool.wanted() == Some(prior) => staying.push((pool, Some(prior))),
            Some(prior) => {
                let in_the_way = outside(&claims, prior, pool.wanted());
                if in_the_way.is_empty() {
                    others.push((pool, Some(prior)));
                } else {
                    pool.held = Some(HeldEdit {
                        invalid: match &pool.state {
                            PoolState::Refused(why) => Some(why.clone()),
                            PoolState::Accepted => None,
                        },
                        in_the_way,
                        wanted: pool.wanted(),
                        offer: pool
                            .wanted()
                            .map_or(Some(prior), |w| prior.intersection(&w)),
                    });
                    pool.range = Some(prior);
                    pool.state = PoolState::Accepted;
                    staying.push((pool, Some(prior)));
                }
            }
            None => others.push((pool, None)),
        }
    }
    let by_age = |a: &(Pool, _), b: &(Pool, _)| {
        let at = a.0.created.as_ref().map(|t| t.0);
        let bt = b.0.created.as_ref().map(|t| t.0);
        // Objects without a timestamp (manifests) come after those with one.
        (at.is_none(), at, &a.0.name).cmp(&(bt.is_none(), bt, &b.0.name))
    };
    staying.sort_by(by_age);
    others.sort_by(by_age);
    let mut accepted: Vec<(String, IpRange)> = Vec::new();
    let mut out = BTreeMap::new();
    for (mut pool, prior) in staying.into_iter().chain(others) {
        if let (PoolState::Accepted, Some(range)) = (&pool.state, pool.range)
            && let Some(why) = accepted
                .iter()
                .find(|(_, r)| r.overlaps(&range))
                .map(|(other, _)| overlap(other))
                .or_else(|| node_inside(&pool, range, nodes))
        {
            pool.held = None;
            pool.state = PoolState::Refused(why.clone());
            // Refusing the pool would take away every address it holds:
            // keep its range in force instead, if that one is free.
            if let Some(prior) = prior.filter(|p| !accepted.iter().any(|(_, r)| r.overlaps(p))) {
                let in_the_way = outside(&claims, prior, None);
                if !in_the_way.is_empty() {
                    pool.held = Some(HeldEdit {
                        invalid: Some(why),
                        in_the_way,
                        wanted: pool.wanted(),
                        offer: pool
                            .wanted()
                            .and_then(|w| prior.intersection(&w))
                            .filter(|offer| node_inside(&pool, *offer, nodes).is_none()),
                    });
                    pool.range = Some(prior);
                    pool.state = PoolState::Accepted;
                }
            }
        }
        if let (PoolState::Accepted, Some(range)) = (&pool.state, pool.range) {
            accepted.push((pool.name.clone(), range));
        }
        out.insert(pool.name.clone(), pool);
    }
    // A held edit that will also overlap another pool says so now, not
    // only once the addresses in its way are gone.
    for pool in out.values_mut() {
        if let Some(held) = &mut pool.held
            && held.invalid.is_none()
            && let Some(wanted) = held.wanted
            && let Some((other, _)) = accepted
                .iter()
                .find(|(n, r)| *n != pool.name && r.overlaps(&wanted))
        {
            held.invalid = Some(overlap(other));
        }
    }
    out
}

/// Why a Layer 2 pool may not hold `range`: the first node address in it.
fn node_inside(pool: &Pool, range: IpRange, nodes: &NodeAddresses) -> Option<String> {
    if !pool.layer2 {
        return None;
    }
    let (ip, node) = nodes.range(range.first()..=range.last()).next()?;
    Some(format!(
        "the Layer 2 pool contains {ip}, an address of node `{node}`, which its leader would answer ARP/NDP for; take it out of spec.address"
    ))
}

fn overlap(other: &str) -> String {
    format!("address overlaps pool `{other}`; change one of them")
}

/// The claimed addresses of `prior` that `wanted` leaves out.
fn outside(
    claims: &Claims,
    prior: IpRange,
    wanted: Option<IpRange>,
) -> Vec<(IpAddr, Vec<ObjectKey>)> {
    claims
        .range(prior.first()..=prior.last())
        .filter(|(ip, _)| !wanted.is_some_and(|w| w.contains(**ip)))
        .map(|(ip, keys)| (*ip, keys.clone()))
        .collect()
}

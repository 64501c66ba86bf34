//! Address management over `Eip` pools: which Service holds which address.
//!
//! Pure and deterministic. The reconciler feeds it the pools and the Services
//! and writes out what it decides. Each pass rebuilds the book from what is
//! published (the Services' status, then the pools' `status.used`) before
//! anything new is handed out, so that no Service's address changes because
//! of a restart or a failover. A new address is the lowest free one of the
//! first pool in a fixed order: what is handed out follows from the
//! published state alone, never from a process's history.

mod pool;
mod range;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use porter_api::ObjectKey;

pub use pool::{Claims, HeldEdit, Pool, PoolState};
pub use range::{IpRange, RangeError};

use crate::ip_family::IpFamily;

use crate::compact::push_exact;
use crate::service::{IpFamilyPolicy, Port, ServiceRequest, SharingTerms};

/// Labels of each namespace, for `Eip.spec.namespaceSelector`.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Node name by address: what a Layer 2 pool must never hand out.
pub type NodeAddresses = BTreeMap<IpAddr, String>;

/// Who holds one address.
#[derive(Debug, Clone, Default, PartialEq)]
struct Holding {
    pool: String,
    /// Boxed: most addresses are not shared, and 10,000 holdings stay small.
    sharing: Option<Box<Sharing>>,
    /// Usually one; a Vec keeps 10,000 holdings small.
    users: Vec<(ObjectKey, Vec<Port>)>,
}

/// The key an address is shared under, and the terms of its first holder,
/// which every other holder agrees with.
#[derive(Debug, Clone, PartialEq)]
struct Sharing {
    key: String,
    terms: SharingTerms,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "requested address `{0}` is not an IP address; fix the annotation or spec.loadBalancerIP"
    )]
    InvalidRequest(String),
    #[error("pool `{0}` named by annotation does not exist")]
    PoolNotFound(String),
    #[error("pool `{pool}` cannot be used: {why}")]
    PoolUnusable { pool: String, why: String },
    #[error(
        "pool `{pool}` is not open to namespace `{namespace}` (see its namespaces/namespaceSelector)"
    )]
    PoolNotAllowed { pool: String, namespace: String },
    #[error("no {0} pool is open to this Service; create an Eip or mark one default")]
    NoPool(IpFamily),
    #[error("no free {family} address in pool(s) {pools}; it is retried when one frees up")]
    Exhausted { family: IpFamily, pools: String },
    #[error("requested address {0} is in no usable pool")]
    NotInPool(IpAddr),
    #[error(
        "requested address {ip} is being taken out of pool `{pool}` by an edit of its spec.address; request an address inside the new one"
    )]
    Leaving { ip: IpAddr, pool: String },
    #[error(
        "requested address {ip} is held by {holders} and cannot be shared (sharing needs the same allow-shared-ip key and no common port)"
    )]
    InUse { ip: IpAddr, holders: String },
    #[error(
        "address {ip} is shared under this allow-shared-ip key by {holders}, but cannot be shared with this Service: {why}; use another key, or make the Services compatible"
    )]
    SharingRefused {
        ip: IpAddr,
        holders: String,
        why: String,
    },
    #[error("{0} addresses were requested but the Service's ipFamilies do not include {0}")]
    FamilyNotWanted(IpFamily),
}

/// Why an address a Service holds comes from its pool, in the terms of the
/// rules that hand addresses out (see [`Ipam::allocate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChoice {
    /// The Service requested the address (annotation or
    /// `spec.loadBalancerIP`).
    Requested,
    /// Shared under the Service's `allow-shared-ip` key with these Services.
    Shared { key: String, with: Vec<ObjectKey> },
    /// The Service names the pool by annotation.
    Named,
    /// The pool is reserved for the Service's namespace (`namespaces` or
    /// `namespaceSelector`), which comes first, by priority.
    Reserved { priority: i32 },
    /// The default pool (`eip.porter.kubesphere.io/is-default-eip`), which
    /// comes after the pools reserved for the namespace.
    Default,
    /// A pool open to every namespace, last, by priority.
    Open { priority: i32 },
}

#[derive(Debug, Default, Clone)]
pub struct Ipam {
    pools: BTreeMap<String, Pool>,
    holdings: BTreeMap<IpAddr, Holding>,
    services: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// The nodes' addresses, which no Layer 2 pool may contain.
    nodes: NodeAddresses,
    generation: u64,
}

impl Ipam {
    /// Changes whenever the allocations may have changed; equal values mean
    /// equal allocations, which lets the route table skip unchanged work.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The nodes' addresses, for the next [`Ipam::set_pools`]: a Layer 2
    /// pool that contains one is refused, since its leader would answer
    /// ARP/NDP for a node.
    pub fn set_node_addresses(&mut self, nodes: NodeAddresses) {
        self.nodes = nodes;
    }

    /// Replaces the pool set. An edit of a pool's address is held back while
    /// an address in use (`published` or in the book) would fall outside it
    /// (see [`pool::accept`]). Addresses outside every accepted pool (the
    /// pool was deleted, or refused) are released; holdings in a disabled
    /// pool stay.
    pub fn set_pools(&mut self, pools: Vec<Pool>, published: &[(&ObjectKey, &[IpAddr])]) {
        self.generation += 1;
        let claims = || {
            let mut claims = Claims::new();
            let held = self.services.iter().map(|(k, ips)| (k, ips.as_slice()));
            for (key, ips) in published.iter().copied().chain(held) {
                for ip in ips {
                    let keys = claims.entry(*ip).or_default();
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            claims
        };
        self.pools = pool::accept(pools, &self.pools, &self.nodes, claims);
        let orphaned: Vec<ObjectKey> = self
            .services
            .iter()
            .filter(|(_, ips)| ips.iter().any(|ip| self.accepting_pool_of(*ip).is_none()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphaned {
            self.release(&key);
        }
        // A kept address may now be in another pool (a pool's address or
        // name changed): count it there, in status and for sharing.
        for (ip, holding) in &mut self.holdings {
            if let Some(pool) = accepting_pool(&self.pools, *ip) {
                holding.pool.clone_from(&pool.name);
            }
        }
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    pub fn addresses_of(&self, key: &ObjectKey) -> Option<&[IpAddr]> {
        self.services.get(key).map(Vec::as_slice)
    }

    /// The pool an allocated address is from.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.holdings.get(&ip).map(|h| h.pool.as_str())
    }

    pub fn allocations(&self) -> &BTreeMap<ObjectKey, Vec<IpAddr>> {
        &self.services
    }

    /// Why `req`'s address `ip` is from its pool, and which pool: the
    /// request's own words first (the address, a sharing key, the pool's
    /// name), else the pool order of an automatic allocation.
    pub fn pool_choice(&self, req: &ServiceRequest, ip: IpAddr) -> Option<(&Pool, PoolChoice)> {
        let holding = self.holdings.get(&ip)?;
        let pool = self.pools.get(&holding.pool)?;
        let shared_with: Vec<ObjectKey> = holding
            .users
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| *k != req.key)
            .collect();
        let choice = match (&req.sharing_key, &holding.sharing) {
            _ if req.requested.contains(&ip) => PoolChoice::Requested,
            (Some(key), Some(sharing)) if sharing.key == *key && !shared_with.is_empty() => {
                PoolChoice::Shared {
                    key: key.clone(),
                    with: shared_with,
                }
            }
            _ if req.pool.is_some() => PoolChoice::Named,
            _ => match tier(pool) {
                0 => PoolChoice::Reserved {
                    priority: pool.priority,
                },
                1 => PoolChoice::Default,
                _ => PoolChoice::Open {
                    priority: pool.priority,
                },
            },
        };
        Some((pool, choice))
    }

    /// Addresses of `pool` in use.
    pub fn usage(&self, pool: &str) -> usize {
        self.holdings.values().filter(|h| h.pool == pool).count()
    }

    /// Services using each address of `pool`, for `Eip.status.used`.
    pub fn used_in(&self, pool: &str) -> BTreeMap<IpAddr, Vec<&ObjectKey>> {
        self.holdings
            .iter()
            .filter(|(_, h)| h.pool == pool)
            .map(|(ip, h)| (*ip, h.users.iter().map(|(k, _)| k).collect()))
            .collect()
    }

    /// Gives up `key`'s addresses.
    pub fn release(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        self.generation += 1;
        let ips = self.services.remove(key).unwrap_or_default();
        for ip in &ips {
            if let Some(h) = self.holdings.get_mut(ip) {
                h.users.retain(|(k, _)| k != key);
                if h.users.is_empty() {
                    self.holdings.remove(ip);
                    self.freed(*ip);
                }
            }
        }
        ips
    }

    /// Empties the book (the pools stay), so that a pass can fill it again
    /// from what is published. Returns what it held.
    pub fn clear_book(&mut self) -> BTreeMap<ObjectKey, Vec<IpAddr>> {
        self.generation += 1;
        self.holdings.clear();
        for pool in self.pools.values_mut() {
            pool.full_below = 0;
        }
        std::mem::take(&mut self.services)
    }

    /// Forgets the pools and the book: what is decided next comes from the
    /// published state alone, as after a restart.
    pub fn forget(&mut self) {
        self.clear_book();
        self.pools.clear();
    }

    /// Gives `req` the addresses `ips` (its published ones, say) in place of
    /// what it holds, if they fit the request and nobody else holds them in
    /// a way that forbids sharing. Returns whether it took them.
    pub fn keep(&mut self, req: &ServiceRequest, ips: &[IpAddr], labels: &NamespaceLabels) -> bool {
        if self.services.contains_key(&req.key) {
            self.release(&req.key);
        }
        if ips.is_empty() || !self.fits(req, ips, labels) || !self.can_take_all(req, ips) {
            return false;
        }
        self.take(req, ips);
        true
    }

    /// Hands out addresses to a Service that holds none.
    pub fn allocate(
        &mut self,
        req: &ServiceRequest,
        labels: &NamespaceLabels,
    ) -> Result<Vec<IpAddr>, AllocError> {
        if let Some(bad) = &req.invalid_request {
            return Err(AllocError::InvalidRequest(bad.clone()));
        }
        for ip in &req.requested {
            if !req.families.contains(&IpFamily::of(*ip)) {
                return Err(AllocError::FamilyNotWanted(IpFamily::of(*ip)));
            }
        }
        let mut got = Vec::new();
        let mut first_error = None;
        for family in &req.families {
            let wanted = req
                .requested
                .iter()
                .find(|ip| IpFamily::of(**ip) == *family);
            let result = match wanted {
                Some(ip) => self.check_requested(req, *ip, labels).map(|()| *ip),
                None if !req.requested.is_empty() && req.policy == IpFamilyPolicy::SingleStack => {
                    continue;
                }
                None => self.pick(req, *family, labels),
            };
            match result {
                Ok(ip) => {
                    self.take(req, &[ip]);
                    got.push(ip);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let complete = match req.policy {
            IpFamilyPolicy::RequireDualStack => first_error.is_none(),
            _ => !got.is_empty(),
        };
        if complete {
            return Ok(got);
        }
        self.release(&req.key);
        Err(first_error.unwrap_or(AllocError::NoPool(req.families[0])))
    }

    fn accepting_pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        accepting_pool(&self.pools, ip)
    }

    /// Whether `ips` satisfy the request: each in an accepted pool (disabled
    /// is fine, it keeps what it gave) open to the Service's namespace, in
    /// the named pool if any, the requested ones if any, and the families
    /// the policy allows.
    fn fits(&self, req: &ServiceRequest, ips: &[IpAddr], labels: &NamespaceLabels) -> bool {
        if req.invalid_request.is_some() {
            return false;
        }
        let families: BTreeSet<IpFamily> = ips.iter().map(|ip| IpFamily::of(*ip)).collect();
        if families.len() != ips.len() || !families.iter().all(|f| req.families.contains(f)) {
            return false;
        }
        if req.policy == IpFamilyPolicy::RequireDualStack && families.len() < req.families.len() {
            return false;
        }
        if !req.requested.is_empty() && !req.requested.iter().all(|r| ips.contains(r)) {
            return false;
        }
        ips.iter().all(|ip| match self.accepting_pool_of(*ip) {
            None => false,
            // Naming the pool or the address does not open a pool
            // reserved for other namespaces, neither to a new allocation
            // nor to keeping one.
            Some(p) => {
                req.pool.as_ref().is_none_or(|name| *name == p.name)
                    && p.open_to(&req.key.namespace, labels)
            }
        })
    }

    fn can_take_all(&self, req: &ServiceRequest, ips: &[IpAddr]) -> bool {
        ips.iter().all(|ip| self.shareable(req, *ip).is_ok())
    }

    /// Whether `req` may use `ip` given its current holders: the same
    /// sharing key, no port in common, the same namespace (unless the pool
    /// allows more) and compatible terms.
    fn shareable(&self, req: &ServiceRequest, ip: IpAddr) -> Result<(), AllocError> {
        let Some(h) = self.holdings.get(&ip) else {
            return Ok(());
        };
        let others: Vec<_> = h.users.iter().filter(|(k, _)| *k != req.key).collect();
        if others.is_empty() {
            return Ok(());
        }
        let holders = || {
            others
                .iter()
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sharing = h
            .sharing
            .as_deref()
            .filter(|s| req.sharing_key.as_ref() == Some(&s.key));
        let port_clash = || {
            others
                .iter()
                .any(|(_, ports)| ports.iter().any(|p| req.ports.contains(p)))
        };
        let in_use = || AllocError::InUse {
            ip,
            holders: holders(),
        };
        let sharing = sharing.ok_or_else(in_use)?;
        // The namespace first: another tenant's address is refused as
        // such, whatever its ports.
        let cross_namespace = self.pools.get(&h.pool).is_some_and(|p| p.cross_namespace);
        let why = if !cross_namespace
            && others.iter().any(|(k, _)| k.namespace != req.key.namespace)
        {
            Some(format!(
                "they are in another namespace, and pool `{}` does not allow sharing across namespaces (spec.sharing.crossNamespace)",
                h.pool
            ))
        } else if port_clash() {
            return Err(in_use());
        } else {
            sharing.terms.incompatible(&req.sharing_terms)
        };
        match why {
            None => Ok(()),
            Some(why) => Err(AllocError::SharingRefused {
                ip,
                holders: holders(),
                why,
            }),
        }
    }

    fn take(&mut self, req: &ServiceRequest, ips: &[IpAddr]) {
        self.generation += 1;
        for ip in ips {
            let pool = self
                .accepting_pool_of(*ip)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let h = self.holdings.entry(*ip).or_insert_with(|| Holding {
                pool,
                sharing: req.sharing_key.as_ref().map(|key| {
                    Box::new(Sharing {
                        key: key.clone(),
                        terms: req.sharing_terms.clone(),
                    })
                }),
                users: Vec::new(),
            });
            h.users.retain(|(k, _)| *k != req.key);
            push_exact(&mut h.users, (req.key.clone(), req.ports.clone()));
            let held = self.services.entry(req.key.clone()).or_default();
            if !held.contains(ip) {
                push_exact(held, *ip);
            }
        }
    }

    fn check_requested(
        &self,
        req: &ServiceRequest,
        ip: IpAddr,
        labels: &NamespaceLabels,
    ) -> Result<(), AllocError> {
        let pool = self
            .accepting_pool_of(ip)
            .ok_or(AllocError::NotInPool(ip))?;
        if let Some(name) = &req.pool
            && *name != pool.name
        {
            return Err(AllocError::NotInPool(ip));
        }
        self.check_usable(pool, req, labels)?;
        if !pool.offered().is_some_and(|r| r.contains(ip)) {
            return Err(AllocError::Leaving {
                ip,
                pool: pool.name.clone(),
            });
        }
        self.shareable(req, ip)
    }

    fn check_usable(
        &self,
        pool: &Pool,
        req: &ServiceRequest,
        labels: &NamespaceLabels,
    ) -> Result<(), AllocError> {
        if pool.disabled {
            return Err(AllocError::PoolUnusable {
                pool: pool.name.clone(),
                why: "it is disabled".into(),
            });
        }
        if !pool.open_to(&req.key.namespace, labels) {
            return Err(AllocError::PoolNotAllowed {
                pool: pool.name.clone(),
                namespace: req.key.namespace.to_string(),
            });
        }
        Ok(())
    }

    /// Pool order for automatic allocation: pools reserved for the Service's
    /// namespace (by priority), then the default pool, then open pools (by
    /// priority). A named pool is the only candidate.
    fn candidates(
        &self,
        req: &ServiceRequest,
        family: IpFamily,
        labels: &NamespaceLabels,
    ) -> Result<Vec<&Pool>, AllocError> {
        if let Some(name) = &req.pool {
            let pool = self
                .pools
                .get(name)
                .ok_or_else(|| AllocError::PoolNotFound(name.clone()))?;
            if let PoolState::Refused(why) = &pool.state {
                return Err(AllocError::PoolUnusable {
                    pool: name.clone(),
                    why: why.clone(),
                });
            }
            self.check_usable(pool, req, labels)?;
            return Ok(vec![pool]
                .into_iter()
                .filter(|p| p.family() == Some(family))
                .collect());
        }
        let mut usable: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| p.state == PoolState::Accepted && !p.disabled && p.family() == Some(family))
            .filter(|p| p.open_to(&req.key.namespace, labels))
            .collect();
        usable.sort_by_key(|p| (tier(p), p.priority, p.name.clone()));
        Ok(usable)
    }

    fn pick(
        &mut self,
        req: &ServiceRequest,
        family: IpFamily,
        labels: &NamespaceLabels,
    ) -> Result<IpAddr, AllocError> {
        let candidates = self.candidates(req, family, labels)?;
        if candidates.is_empty() {
            return Err(AllocError::NoPool(family));
        }
        let names: Vec<String> = candidates.iter().map(|p| p.name.clone()).collect();
        // Sharing first: an address already given to the same key, in pool
        // order. One the key names but whose holders refuse this Service
        // (another namespace, incompatible terms) is an error, not a reason
        // to hand out a second address: the owner asked for one shared IP.
        if let Some(key) = &req.sharing_key {
            let mut refused = None;
            for name in &names {
                let same_key = self.holdings.iter().filter(|(ip, h)| {
                    h.pool == *name
                        && IpFamily::of(**ip) == family
                        && h.sharing.as_ref().is_some_and(|s| s.key == *key)
                });
                for (ip, _) in same_key {
                    match self.shareable(req, *ip) {
                        Ok(()) => return Ok(*ip),
                        Err(e @ AllocError::SharingRefused { .. }) => {
                            refused.get_or_insert(e);
                        }
                        Err(_) => {}
                    }
                }
            }
            if let Some(refused) = refused {
                return Err(refused);
            }
        }
        for name in &names {
            if let Some(ip) = self.next_free(name) {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted {
            family,
            pools: names.join(", "),
        })
    }

    /// The lowest free address the pool offers.
    fn next_free(&mut self, name: &str) -> Option<IpAddr> {
        let pool = self.pools.get(name)?;
        let range = pool.offered()?;
        let found = self.gap_in(&range, pool.full_below, range.size())?;
        if let Some(p) = self.pools.get_mut(name) {
            // Everything below is in use; `found` is about to be.
            p.full_below = found;
        }
        range.nth(found)
    }

    /// Keeps [`Pool::full_below`] true when `ip` is free again.
    fn freed(&mut self, ip: IpAddr) {
        for pool in self.pools.values_mut() {
            if let Some(offset) = pool.offered().and_then(|r| r.offset_of(ip)) {
                pool.full_below = pool.full_below.min(offset);
            }
        }
    }

    /// The first offset in `from..to` of `range` that nobody holds.
    fn gap_in(&self, range: &IpRange, from: u128, to: u128) -> Option<u128> {
        let mut next = from;
        let first = range.nth(from)?;
        for ip in self.holdings.range(first..=range.last()).map(|(ip, _)| *ip) {
            if next >= to || range.offset_of(ip) != Some(next) {
                break;
            }
            next += 1;
        }
        (next < to).then_some(next)
    }
}

/// The accepted pool `ip` belongs to (accepted pools never overlap).
fn accepting_pool(pools: &BTreeMap<String, Pool>, ip: IpAddr) -> Option<&Pool> {
    pools
        .values()
        .find(|p| p.state == PoolState::Accepted && p.range.is_some_and(|r| r.contains(ip)))
}

/// 0: reserved for the namespace; 1: default; 2: open to all.
fn tier(pool: &Pool) -> u8 {
    if pool.restricted() {
        0
    } else if pool.is_default {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests;

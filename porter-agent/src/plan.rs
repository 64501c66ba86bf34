//! What the backend and reverse-NAT maps should hold for a set of installed
//! services, and the difference to what they hold now. Pure: the data plane
//! applies the result.
use std::collections::{BTreeMap, BTreeSet};

use porter_common::{
    BACKEND_SHARED, BackendKey, BackendValue, RevNatValue, VipKey, vip_filter_slot,
};

use crate::service::{Backend, ServiceAddr, encode_ip};

/// One installed service, as the plan needs it.
#[derive(Clone, Copy)]
pub struct PlannedService<'a> {
    pub addr: ServiceAddr,
    pub id: u32,
    /// The installation's [`porter_common::BackendValue::epoch`].
    pub epoch: u32,
    /// Backends and their ids.
    pub backends: &'a BTreeMap<Backend, u32>,
}

/// The wanted contents of the maps that follow from the set of services
/// (all but the services and their Maglev tables, which are written first).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SharedMaps {
    pub backends: BTreeMap<u32, BackendValue>,
    pub revnat: BTreeMap<BackendKey, RevNatValue>,
    /// Services per VIP.
    pub vips: BTreeMap<VipKey, u32>,
    /// VIPs per filter slot (absent: zero).
    pub vip_filter: BTreeMap<u32, u32>,
}

/// The keys of the shared maps that a set of services has entries under.
#[derive(Debug, Default)]
pub struct Keys {
    pub backend_keys: BTreeSet<BackendKey>,
    pub backend_ids: BTreeSet<u32>,
    pub vips: BTreeSet<VipKey>,
    pub vip_filter: BTreeSet<u32>,
}

impl Keys {
    /// Adds the keys `service` has entries under.
    pub fn add(&mut self, service: PlannedService<'_>) {
        let vip = service.addr.vip_key();
        self.vip_filter.insert(vip_filter_slot(&vip.addr));
        self.vips.insert(vip);
        for (backend, &id) in service.backends {
            self.backend_keys.insert(backend_key(backend, service.addr));
            self.backend_ids.insert(id);
        }
    }
}

/// A service that uses a backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct User {
    addr: ServiceAddr,
    epoch: u32,
    backend: Backend,
    backend_id: u32,
}

/// Who uses each key of the shared maps, kept up to date service by
/// service, so that a change is planned from the keys it touches instead of
/// from everything installed.
///
/// A backend `addr:port/proto` that serves one service is mapped back by its
/// address. One that serves several is marked shared: new flows then get a
/// per-flow entry, and the address keeps mapping to the service it served
/// alone (for flows from before it became shared).
#[derive(Debug, Default)]
pub struct SharedMapPlan {
    /// Users of each backend address, by service id (a service lists an
    /// address once).
    users: BTreeMap<BackendKey, BTreeMap<u32, User>>,
    /// Services per VIP.
    vips: BTreeMap<VipKey, u32>,
    /// VIPs per filter slot.
    vip_filter: BTreeMap<u32, u32>,
}

impl SharedMapPlan {
    pub fn of<'a>(services: impl IntoIterator<Item = PlannedService<'a>>) -> Self {
        let mut plan = Self::default();
        services.into_iter().for_each(|service| plan.add(service));
        plan
    }

    pub fn add(&mut self, service: PlannedService<'_>) {
        for (backend, &backend_id) in service.backends {
            self.users
                .entry(backend_key(backend, service.addr))
                .or_default()
                .insert(
                    service.id,
                    User {
                        addr: service.addr,
                        epoch: service.epoch,
                        backend: *backend,
                        backend_id,
                    },
                );
        }
        let vip = service.addr.vip_key();
        let services = self.vips.entry(vip).or_default();
        *services += 1;
        if *services == 1 {
            *self
                .vip_filter
                .entry(vip_filter_slot(&vip.addr))
                .or_default() += 1;
        }
    }

    /// Takes back an [`Self::add`] of the same service.
    pub fn remove(&mut self, service: PlannedService<'_>) {
        for backend in service.backends.keys() {
            let key = backend_key(backend, service.addr);
            if let Some(users) = self.users.get_mut(&key) {
                users.remove(&service.id);
                if users.is_empty() {
                    self.users.remove(&key);
                }
            }
        }
        let vip = service.addr.vip_key();
        if decrement(&mut self.vips, vip) {
            decrement(&mut self.vip_filter, vip_filter_slot(&vip.addr));
        }
    }

    /// Every key something is planned under.
    pub fn keys(&self) -> Keys {
        Keys {
            backend_keys: self.users.keys().copied().collect(),
            backend_ids: self
                .users
                .values()
                .flat_map(|users| users.values().map(|user| user.backend_id))
                .collect(),
            vips: self.vips.keys().copied().collect(),
            vip_filter: self.vip_filter.keys().copied().collect(),
        }
    }

    /// What the maps should hold under `keys` (backend entries follow from
    /// backend addresses, so `keys.backend_ids` is not needed here), given
    /// the reverse-NAT entries written now.
    pub fn contents(&self, keys: &Keys, written: &BTreeMap<BackendKey, RevNatValue>) -> SharedMaps {
        let mut wanted = SharedMaps::default();
        for key in &keys.backend_keys {
            let Some(users) = self.users.get(key) else {
                continue;
            };
            let flags = if users.len() > 1 { BACKEND_SHARED } else { 0 };
            for (&service_id, user) in users {
                let mut value = user.backend.value(service_id, user.epoch);
                value.flags |= flags;
                wanted.backends.insert(user.backend_id, value);
            }
            // Replies of flows from before the backend became shared have
            // no per-flow entry and fall back to this one, so it keeps naming
            // the service it names now while that still uses the backend:
            // the one that had it alone. (Picking, say, the lowest id would
            // break that service's open connections whenever a newcomer took
            // a lower, reused id.) Otherwise the lowest id.
            let named = written
                .get(key)
                .and_then(|revnat| users.get_key_value(&revnat.service_id));
            // A backend on another node answers from there: no reverse NAT here.
            let remote = users.values().any(|user| user.backend.node.is_some());
            if remote {
                continue;
            }
            if let Some((&service_id, first)) = named.or_else(|| users.iter().next()) {
                let (_, vip) = encode_ip(first.addr.vip);
                wanted.revnat.insert(
                    *key,
                    RevNatValue {
                        vip,
                        port: first.addr.port.to_be(),
                        flags,
                        _pad: 0,
                        service_id,
                    },
                );
            }
        }
        for vip in &keys.vips {
            if let Some(&services) = self.vips.get(vip) {
                wanted.vips.insert(*vip, services);
            }
        }
        for slot in &keys.vip_filter {
            if let Some(&vips) = self.vip_filter.get(slot) {
                wanted.vip_filter.insert(*slot, vips);
            }
        }
        wanted
    }
}

/// Counts one fewer under `key`, dropping it at zero; true if it dropped.
fn decrement<K: Ord>(counts: &mut BTreeMap<K, u32>, key: K) -> bool {
    let Some(count) = counts.get_mut(&key) else {
        return false;
    };
    *count = count.saturating_sub(1);
    if *count == 0 {
        counts.remove(&key);
        return true;
    }
    false
}

fn backend_key(backend: &Backend, service: ServiceAddr) -> BackendKey {
    let (family, addr) = encode_ip(backend.addr);
    BackendKey {
        addr,
        port: backend.port.to_be(),
        proto: service.proto.number(),
        family,
    }
}

/// Entries to write and keys to delete to turn `current` into `wanted`.
#[derive(Debug, PartialEq, Eq)]
pub struct MapChanges<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
}

/// The changes that turn `current` into `wanted` within a part of the keys:
/// `wanted` holds the wanted entries of that part, and `part` its keys
/// (those of `current` not in `wanted` are removed).
pub fn diff<'k, K: Ord + Copy + 'k, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    part: impl IntoIterator<Item = &'k K>,
) -> MapChanges<K, V> {
    MapChanges {
        upserts: wanted
            .iter()
            .filter(|(key, value)| current.get(key) != Some(value))
            .map(|(key, value)| (*key, *value))
            .collect(),
        removals: part
            .into_iter()
            .filter(|key| current.contains_key(key) && !wanted.contains_key(key))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Protocol;

    fn addr(vip: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            vip: vip.parse().expect("ip"),
            port,
            proto: Protocol::Tcp,
        }
    }

    fn backends(list: &[(&str, u16, u32)]) -> BTreeMap<Backend, u32> {
        list.iter()
            .map(|(ip, port, id)| {
                (
                    Backend {
                        addr: ip.parse().expect("ip"),
                        port: *port,
                        node: None,
                        draining: false,
                    },
                    *id,
                )
            })
            .collect()
    }

    /// Everything the plan of `services` wants, planned from scratch.
    fn contents<'a>(services: impl IntoIterator<Item = PlannedService<'a>>) -> SharedMaps {
        let plan = SharedMapPlan::of(services);
        plan.contents(&plan.keys(), &BTreeMap::new())
    }

    #[test]
    fn a_backend_of_one_service_maps_back_by_address() {
        let pods = backends(&[("10.0.0.1", 8080, 0), ("10.0.0.2", 8080, 1)]);
        let plan = contents([PlannedService {
            addr: addr("192.0.2.1", 80),
            id: 3,
            epoch: 103,
            backends: &pods,
        }]);
        assert_eq!(plan.backends.len(), 2);
        assert!(
            plan.backends
                .values()
                .all(|b| b.flags == 0 && b.service_id == 3 && b.epoch == 103)
        );
        assert_eq!(plan.revnat.len(), 2);
        assert!(
            plan.revnat
                .values()
                .all(|r| r.flags == 0 && r.port == 80u16.to_be())
        );
    }

    #[test]
    fn a_backend_of_two_services_is_shared_and_defaults_to_the_lowest_id() {
        // Two service ports onto one target port: replies need per-flow state.
        let http = backends(&[("10.0.0.1", 8080, 0)]);
        let alt = backends(&[("10.0.0.1", 8080, 1), ("10.0.0.2", 8080, 2)]);
        let plan = contents([
            PlannedService {
                addr: addr("192.0.2.1", 8080),
                id: 5,
                epoch: 105,
                backends: &alt,
            },
            PlannedService {
                addr: addr("192.0.2.1", 80),
                id: 4,
                epoch: 104,
                backends: &http,
            },
        ]);
        assert_eq!(plan.backends[&0].flags, BACKEND_SHARED);
        assert_eq!(plan.backends[&1].flags, BACKEND_SHARED);
        assert_eq!(plan.backends[&2].flags, 0);
        let shared: Vec<&RevNatValue> = plan.revnat.values().filter(|r| r.flags != 0).collect();
        assert_eq!(shared.len(), 1);
        assert_eq!((shared[0].service_id, shared[0].port), (4, 80u16.to_be()));
        // One VIP with two services: one filter entry.
        assert_eq!(plan.vips.values().collect::<Vec<_>>(), [&2]);
        assert_eq!(plan.vip_filter.values().sum::<u32>(), 1);
    }

    #[test]
    fn a_shared_backend_keeps_mapping_back_to_the_service_it_served_alone() {
        // The newcomer takes a lower (reused) id than the service whose
        // open connections predate the sharing and have no per-flow entry.
        let first = PlannedService {
            addr: addr("192.0.2.1", 80),
            id: 5,
            epoch: 105,
            backends: &backends(&[("10.0.0.1", 8080, 0)]),
        };
        let newcomer = PlannedService {
            addr: addr("192.0.2.2", 80),
            id: 2,
            epoch: 102,
            backends: &backends(&[("10.0.0.1", 8080, 1)]),
        };
        let mut plan = SharedMapPlan::of([first]);
        let mut written = SharedMaps::default();
        let mut step = |plan: &SharedMapPlan, changed: PlannedService<'_>| {
            let mut keys = Keys::default();
            keys.add(changed);
            let wanted = plan.contents(&keys, &written.revnat);
            apply_all(&mut written, &wanted, &keys);
            let revnat = *written.revnat.values().next().expect("one backend address");
            (revnat.service_id, revnat.flags)
        };
        assert_eq!(step(&plan, first), (5, 0));
        plan.add(newcomer);
        assert_eq!(step(&plan, newcomer), (5, BACKEND_SHARED));
        plan.remove(first);
        assert_eq!(step(&plan, first), (2, 0));
    }

    #[test]
    fn diff_writes_changes_and_removes_leftovers_of_its_part() {
        let current = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c'), (5, 'e')]);
        let wanted = BTreeMap::from([(2, 'b'), (3, 'x'), (4, 'd')]);
        // 5 lies outside the part looked at: left alone.
        assert_eq!(
            diff(&current, &wanted, &[1, 2, 3, 4]),
            MapChanges {
                upserts: vec![(3, 'x'), (4, 'd')],
                removals: vec![1],
            }
        );
    }

    /// Applies to the mirror `map` the changes that bring its part `part` to `wanted`.
    fn apply<K: Ord + Copy, V: PartialEq + Copy>(
        map: &mut BTreeMap<K, V>,
        wanted: &BTreeMap<K, V>,
        part: &BTreeSet<K>,
    ) {
        let changes = diff(map, wanted, part);
        map.extend(changes.upserts);
        for key in changes.removals {
            map.remove(&key);
        }
    }

    fn apply_all(written: &mut SharedMaps, wanted: &SharedMaps, keys: &Keys) {
        apply(&mut written.backends, &wanted.backends, &keys.backend_ids);
        apply(&mut written.revnat, &wanted.revnat, &keys.backend_keys);
        apply(&mut written.vips, &wanted.vips, &keys.vips);
        apply(
            &mut written.vip_filter,
            &wanted.vip_filter,
            &keys.vip_filter,
        );
    }

    #[test]
    fn changes_planned_from_touched_keys_match_a_plan_from_scratch() {
        // Services come, change and go, sharing backends and VIPs; after
        // each step, the maps written from the touched keys alone must hold
        // what a plan of all services wants.
        let a = addr("192.0.2.1", 80);
        let b = addr("192.0.2.1", 8080);
        let c = addr("192.0.2.2", 80);
        let a1 = backends(&[("10.0.0.1", 8080, 0), ("10.0.0.2", 8080, 1)]);
        let b1 = backends(&[("10.0.0.1", 8080, 2)]);
        let c1 = backends(&[("10.0.0.3", 80, 3)]);
        let a2 = backends(&[("10.0.0.2", 8080, 1), ("10.0.0.4", 8080, 4)]);
        let empty = BTreeMap::new();
        let service = |addr, id, backends| PlannedService {
            addr,
            id,
            epoch: id + 100,
            backends,
        };
        // (before, after) per step; an empty backend map stands for "absent".
        let steps = [
            (service(a, 0, &empty), service(a, 0, &a1)),
            (service(b, 1, &empty), service(b, 1, &b1)),
            (service(c, 2, &empty), service(c, 2, &c1)),
            (service(a, 0, &a1), service(a, 0, &a2)),
            (service(b, 1, &b1), service(b, 1, &empty)),
            (service(c, 2, &c1), service(c, 2, &empty)),
            (service(a, 0, &a2), service(a, 0, &empty)),
        ];
        let mut plan = SharedMapPlan::default();
        let mut live: BTreeMap<ServiceAddr, PlannedService<'_>> = BTreeMap::new();
        let mut written = SharedMaps::default();
        for (before, after) in steps {
            let mut keys = Keys::default();
            if live.remove(&before.addr).is_some() {
                plan.remove(before);
                keys.add(before);
            }
            if !after.backends.is_empty() {
                plan.add(after);
                keys.add(after);
                live.insert(after.addr, after);
            }
            let wanted = plan.contents(&keys, &written.revnat);
            apply_all(&mut written, &wanted, &keys);
            assert_eq!(
                written,
                contents(live.values().copied()),
                "after {}",
                after.addr
            );
        }
        assert_eq!(written, SharedMaps::default());
    }
}

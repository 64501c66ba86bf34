//! What the backend and reverse-NAT maps should hold for a set of installed
//! services, and the difference to what they hold now. Pure: the data plane
//! applies the result.
use std::collections::BTreeMap;

use porter_common::{
    BACKEND_SHARED, BackendKey, BackendValue, RevNatValue, VipKey, vip_filter_slot,
};

use crate::service::{Backend, ServiceAddr, encode_ip};

/// One installed service, as the plan needs it.
pub struct PlannedService<'a> {
    pub addr: ServiceAddr,
    pub id: u32,
    /// Backends and their ids.
    pub backends: &'a BTreeMap<Backend, u32>,
}

/// The wanted contents of the maps that follow from the set of services
/// (all but the services and their Maglev tables, which are written first).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub backends: BTreeMap<u32, BackendValue>,
    pub revnat: BTreeMap<BackendKey, RevNatValue>,
    /// Services per VIP.
    pub vips: BTreeMap<VipKey, u32>,
    /// VIPs per filter slot (absent: zero).
    pub vip_filter: BTreeMap<u32, u32>,
}

/// A backend `addr:port/proto` that serves one service is mapped back by its
/// address. One that serves several is marked shared: new flows then get a
/// per-flow entry, and the address maps to the service with the lowest id
/// (for flows from before it became shared).
pub fn desired<'a>(services: impl IntoIterator<Item = PlannedService<'a>>) -> Desired {
    let mut users: BTreeMap<BackendKey, Vec<(u32, ServiceAddr)>> = BTreeMap::new();
    let mut ids: Vec<(u32, Backend, u32, BackendKey)> = Vec::new();
    let mut vips: BTreeMap<VipKey, u32> = BTreeMap::new();
    for service in services {
        *vips.entry(service.addr.vip_key()).or_default() += 1;
        for (backend, &backend_id) in service.backends {
            let key = backend_key(backend, service.addr);
            users
                .entry(key)
                .or_default()
                .push((service.id, service.addr));
            ids.push((backend_id, *backend, service.id, key));
        }
    }
    let shared = |key: &BackendKey| users.get(key).is_some_and(|list| list.len() > 1);
    let flags = |key: &BackendKey| if shared(key) { BACKEND_SHARED } else { 0 };
    let backends = ids
        .iter()
        .map(|(backend_id, backend, service_id, key)| {
            let mut value = backend.value(*service_id);
            value.flags = flags(key);
            (*backend_id, value)
        })
        .collect();
    let revnat = users
        .iter()
        .filter_map(|(key, list)| {
            let &(service_id, addr) = list.iter().min_by_key(|(id, _)| *id)?;
            let (_, vip) = encode_ip(addr.vip);
            Some((
                *key,
                RevNatValue {
                    vip,
                    port: addr.port.to_be(),
                    flags: flags(key),
                    _pad: 0,
                    service_id,
                },
            ))
        })
        .collect();
    let mut vip_filter: BTreeMap<u32, u32> = BTreeMap::new();
    for vip in vips.keys() {
        *vip_filter.entry(vip_filter_slot(&vip.addr)).or_default() += 1;
    }
    Desired {
        backends,
        revnat,
        vips,
        vip_filter,
    }
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
pub struct Changes<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
}

pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
) -> Changes<K, V> {
    Changes {
        upserts: wanted
            .iter()
            .filter(|(key, value)| current.get(key) != Some(value))
            .map(|(key, value)| (*key, *value))
            .collect(),
        removals: current
            .keys()
            .filter(|key| !wanted.contains_key(key))
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
                    },
                    *id,
                )
            })
            .collect()
    }

    #[test]
    fn a_backend_of_one_service_maps_back_by_address() {
        let pods = backends(&[("10.0.0.1", 8080, 0), ("10.0.0.2", 8080, 1)]);
        let plan = desired([PlannedService {
            addr: addr("192.0.2.1", 80),
            id: 3,
            backends: &pods,
        }]);
        assert_eq!(plan.backends.len(), 2);
        assert!(
            plan.backends
                .values()
                .all(|b| b.flags == 0 && b.service_id == 3)
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
        let plan = desired([
            PlannedService {
                addr: addr("192.0.2.1", 8080),
                id: 5,
                backends: &alt,
            },
            PlannedService {
                addr: addr("192.0.2.1", 80),
                id: 4,
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
    fn diff_writes_changes_and_removes_leftovers() {
        let current = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c')]);
        let wanted = BTreeMap::from([(2, 'b'), (3, 'x'), (4, 'd')]);
        assert_eq!(
            diff(&current, &wanted),
            Changes {
                upserts: vec![(3, 'x'), (4, 'd')],
                removals: vec![1],
            }
        );
    }
}

//! Reads the pinned data plane without loading a program or writing a map,
//! so `porter-agent inspect` and the metrics endpoint work while an agent
//! runs (or while none does), and [`render`]s it as a table.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use porter_common::{
    BackendKey, BackendValue, CtValue, FlowKey4, FlowKey6, L2Key, L2Value, RevNatValue,
    ServiceCounters, ServiceKey, ServiceValue, Stat, map_names,
};

use crate::{
    PinLayout,
    service::{Backend, ServiceAddr},
    stats,
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "no pinned data plane at {0}: no agent has run with this --bpffs, or `cleanup` removed it"
    )]
    NotPinned(PathBuf),
    #[error("cannot open pinned map {path}: {source}")]
    Open { path: PathBuf, source: MapError },
    #[error("cannot read map {map}: {source}")]
    Read { map: &'static str, source: MapError },
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
}

/// One installed service as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub addr: ServiceAddr,
    pub id: u32,
    /// M, the size of its Maglev table.
    pub table_size: u32,
    pub backends: Vec<Backend>,
    /// Summed over CPUs.
    pub counters: ServiceCounters,
}

/// How full a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedState {
    pub services: Vec<ServiceState>,
    pub maps: Vec<Occupancy>,
    pub global: Vec<(Stat, u64)>,
    /// Names of the pinned links (`xdp-eth0`, `tc-egress-eth0`).
    pub links: Vec<String>,
    /// Layer 2: the EIPs this node answers ARP/NDP for, by interface.
    pub l2_leads: Vec<L2Lead>,
}

/// An EIP this node leads in Layer 2 mode, as the pinned map holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct L2Lead {
    pub eip: IpAddr,
    /// The interface's name, or `ifindex N` when this namespace has none.
    pub interface: String,
    pub mac: [u8; 6],
    /// Before its deadline: XDP answers. After it (the agent stopped
    /// renewing), the entry is ignored until the agent removes it.
    pub answering: bool,
}

impl PinnedState {
    pub fn occupancy(&self, map: &str) -> Option<Occupancy> {
        self.maps.iter().find(|o| o.map == map).copied()
    }
}

/// Reads everything `inspect` shows from the pins under `pins`.
pub fn read(pins: &PinLayout) -> Result<PinnedState, InspectError> {
    if !pins.maps_dir().join(map_names::SERVICES).exists() {
        return Err(InspectError::NotPinned(pins.versioned()));
    }
    let (services, services_cap): (HashMap<MapData, ServiceKey, ServiceValue>, _) =
        open(pins, map_names::SERVICES, Map::HashMap)?;
    let (backends, backends_cap): (Array<MapData, BackendValue>, _) =
        open(pins, map_names::BACKENDS, Map::Array)?;
    let (counters, _): (PerCpuArray<MapData, ServiceCounters>, _) =
        open(pins, map_names::SERVICE_COUNTERS, Map::PerCpuArray)?;
    let (conntrack, conntrack_cap): (HashMap<MapData, FlowKey4, CtValue>, _) =
        open(pins, map_names::CONNTRACK, Map::LruHashMap)?;
    let (conntrack6, conntrack6_cap): (HashMap<MapData, FlowKey6, CtValue>, _) =
        open(pins, map_names::CONNTRACK6, Map::LruHashMap)?;
    let (revnat, revnat_cap): (HashMap<MapData, FlowKey4, RevNatValue>, _) =
        open(pins, map_names::REVNAT, Map::LruHashMap)?;
    let (revnat6, revnat6_cap): (HashMap<MapData, FlowKey6, RevNatValue>, _) =
        open(pins, map_names::REVNAT6, Map::LruHashMap)?;
    let (backend_revnat, backend_revnat_cap): (HashMap<MapData, BackendKey, RevNatValue>, _) =
        open(pins, map_names::BACKEND_REVNAT, Map::HashMap)?;

    let mut by_service: BTreeMap<u32, Vec<Backend>> = BTreeMap::new();
    let mut backends_used = 0u64;
    for entry in backends.iter() {
        let value = entry.map_err(read_err(map_names::BACKENDS))?;
        if let Some(backend) = Backend::from_value(&value) {
            backends_used += 1;
            by_service
                .entry(value.service_id)
                .or_default()
                .push(backend);
        }
    }
    let mut out = Vec::new();
    for entry in services.iter() {
        let (key, value) = entry.map_err(read_err(map_names::SERVICES))?;
        let Some(addr) = ServiceAddr::from_key(&key) else {
            continue;
        };
        let per_cpu = counters
            .get(&value.id, 0)
            .map_err(read_err(map_names::SERVICE_COUNTERS))?;
        let counters = per_cpu
            .iter()
            .fold(ServiceCounters::default(), ServiceCounters::plus);
        let mut backends = by_service.remove(&value.id).unwrap_or_default();
        backends.sort();
        out.push(ServiceState {
            addr,
            id: value.id,
            table_size: value.table_size,
            backends,
            counters,
        });
    }
    out.sort_by_key(|s| s.addr);

    let occupancy = |map, entries, capacity| Occupancy {
        map,
        entries,
        capacity,
    };
    let mut maps = vec![
        occupancy(map_names::SERVICES, out.len() as u64, services_cap),
        occupancy(map_names::BACKENDS, backends_used, backends_cap),
        occupancy(
            map_names::CONNTRACK,
            count(conntrack.keys(), map_names::CONNTRACK)?,
            conntrack_cap,
        ),
        occupancy(
            map_names::CONNTRACK6,
            count(conntrack6.keys(), map_names::CONNTRACK6)?,
            conntrack6_cap,
        ),
        occupancy(
            map_names::REVNAT,
            count(revnat.keys(), map_names::REVNAT)?,
            revnat_cap,
        ),
        occupancy(
            map_names::REVNAT6,
            count(revnat6.keys(), map_names::REVNAT6)?,
            revnat6_cap,
        ),
        occupancy(
            map_names::BACKEND_REVNAT,
            count(backend_revnat.keys(), map_names::BACKEND_REVNAT)?,
            backend_revnat_cap,
        ),
    ];
    let (l2_leads, l2_cap): (HashMap<MapData, L2Key, L2Value>, _) =
        open(pins, map_names::L2_LEADS, Map::HashMap)?;
    let l2_leads = read_l2_leads(&l2_leads)?;
    maps.push(occupancy(
        map_names::L2_LEADS,
        l2_leads.len() as u64,
        l2_cap,
    ));
    Ok(PinnedState {
        services: out,
        maps,
        global: stats::read_global_stats(pins)?,
        links: links(&pins.links_dir()),
        l2_leads,
    })
}

fn read_l2_leads(map: &HashMap<MapData, L2Key, L2Value>) -> Result<Vec<L2Lead>, InspectError> {
    // Unreadable clock: show every entry as expired rather than fail.
    let now = crate::dataplane::monotonic_ns().unwrap_or(u64::MAX);
    let mut leads = Vec::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(read_err(map_names::L2_LEADS))?;
        let Some(eip) = crate::service::decode_ip(key.family, key.addr) else {
            continue;
        };
        leads.push(L2Lead {
            eip,
            interface: crate::l2_interface::name_of(key.ifindex)
                .unwrap_or_else(|| format!("ifindex {}", key.ifindex)),
            mac: value.mac,
            answering: value.expires_ns > now,
        });
    }
    leads.sort();
    Ok(leads)
}

/// The pinned map `name` as `T`, and its capacity.
fn open<T: TryFrom<Map, Error = MapError>>(
    pins: &PinLayout,
    name: &'static str,
    kind: fn(MapData) -> Map,
) -> Result<(T, u32), InspectError> {
    let path = pins.map(name);
    let open_err = |source| InspectError::Open {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let capacity = data.info().map_err(open_err)?.max_entries();
    Ok((T::try_from(kind(data)).map_err(open_err)?, capacity))
}

fn read_err(map: &'static str) -> impl Fn(MapError) -> InspectError {
    move |source| InspectError::Read { map, source }
}

fn count<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<u64, InspectError> {
    let mut n = 0;
    for key in keys {
        key.map_err(read_err(map))?;
        n += 1;
    }
    Ok(n)
}

fn links(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The table `porter-agent inspect` prints.
pub fn render(state: &PinnedState) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = render_into(&mut out, state);
    out
}

fn render_into(out: &mut String, state: &PinnedState) -> std::fmt::Result {
    writeln!(
        out,
        "{:<28} {:>4} {:>7} {:>12} {:>14} {:>10} {:>10} {:>10}  BACKENDS (pod@node: on another node)",
        "SERVICE", "ID", "MAGLEV", "PACKETS", "BYTES", "NEW FLOWS", "FWD OUT", "FWD IN"
    )?;
    if state.services.is_empty() {
        writeln!(out, "(no services)")?;
    }
    for service in &state.services {
        let backends: Vec<String> = service.backends.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "{:<28} {:>4} {:>7} {:>12} {:>14} {:>10} {:>10} {:>10}  {}",
            service.addr.to_string(),
            service.id,
            service.table_size,
            service.counters.packets,
            service.counters.bytes,
            service.counters.new_flows,
            service.counters.forwarded_out,
            service.counters.forwarded_in,
            if backends.is_empty() {
                "(none)".to_string()
            } else {
                backends.join(" ")
            }
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:>10} {:>10} {:>7}",
        "MAP", "ENTRIES", "CAPACITY", "USED"
    )?;
    for map in &state.maps {
        let used = if map.capacity == 0 {
            0.0
        } else {
            map.entries as f64 * 100.0 / f64::from(map.capacity)
        };
        writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>6.1}%",
            map.map, map.entries, map.capacity, used
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{:<24} {:>12}", "COUNTER", "VALUE")?;
    for (stat, value) in &state.global {
        writeln!(out, "{:<24} {:>12}", stat.name(), value)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:<16} {:<18} LAYER 2",
        "LEADS (ARP/NDP)", "INTERFACE", "MAC"
    )?;
    if state.l2_leads.is_empty() {
        writeln!(out, "(none: this node answers for no EIP)")?;
    }
    for lead in &state.l2_leads {
        let m = lead.mac;
        writeln!(
            out,
            "{:<28} {:<16} {:<18} {}",
            lead.eip.to_string(),
            lead.interface,
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            if lead.answering {
                "answering"
            } else {
                "expired (the agent stopped renewing)"
            }
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "links: {}",
        if state.links.is_empty() {
            "(none: nothing attached)".to_string()
        } else {
            state.links.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Protocol;

    #[test]
    fn table_shows_services_backends_occupancy_and_counters() {
        let state = PinnedState {
            services: vec![ServiceState {
                addr: ServiceAddr {
                    vip: "192.0.2.10".parse().expect("ip"),
                    port: 80,
                    proto: Protocol::Tcp,
                },
                id: 3,
                table_size: 251,
                backends: vec![
                    Backend {
                        addr: "10.244.1.2".parse().expect("ip"),
                        port: 8080,
                        node: None,
                        draining: false,
                    },
                    Backend {
                        addr: "10.244.2.2".parse().expect("ip"),
                        port: 8080,
                        node: Some("172.30.0.12".parse().expect("ip")),
                        draining: false,
                    },
                ],
                counters: ServiceCounters {
                    packets: 12,
                    bytes: 3400,
                    new_flows: 2,
                    forwarded_out: 7,
                    forwarded_in: 5,
                },
            }],
            maps: vec![Occupancy {
                map: map_names::CONNTRACK,
                entries: 2,
                capacity: 8,
            }],
            global: vec![(Stat::PacketsSeen, 99)],
            links: vec!["xdp-eth0".into()],
            l2_leads: vec![
                L2Lead {
                    eip: "192.0.2.10".parse().expect("ip"),
                    interface: "eth0".into(),
                    mac: [2, 0, 0, 0, 0, 1],
                    answering: true,
                },
                L2Lead {
                    eip: "2001:db8::10".parse().expect("ip"),
                    interface: "eth0".into(),
                    mac: [2, 0, 0, 0, 0, 1],
                    answering: false,
                },
            ],
        };
        let table = render(&state);
        let service_line = table
            .lines()
            .find(|l| l.starts_with("192.0.2.10:80/tcp"))
            .expect("a line for the service");
        for field in [
            "251",
            "12",
            "3400",
            " 7 ",
            " 5 ",
            "10.244.1.2:8080 10.244.2.2:8080@172.30.0.12",
        ] {
            assert!(service_line.contains(field), "{field} in {service_line:?}");
        }
        assert!(table.contains("PORTER_CT"), "{table}");
        assert!(table.contains("25.0%"), "{table}");
        assert!(table.contains(Stat::PacketsSeen.name()), "{table}");
        assert!(table.contains("links: xdp-eth0"), "{table}");
        let lead = |eip: &str| {
            table
                .lines()
                .find(|l| l.starts_with(eip))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            lead("192.0.2.10 ").contains("eth0") && lead("192.0.2.10 ").ends_with("answering"),
            "{table}"
        );
        assert!(lead("2001:db8::10").contains("expired"), "{table}");
    }
}

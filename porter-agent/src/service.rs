//! What the data plane serves, in userspace terms, and its encoding into the
//! map keys and values of `porter-common`. Pure: no maps, no syscalls.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use porter_common::{
    BACKEND_DRAINING, BACKEND_REMOTE, BackendValue, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP,
    ServiceKey, VipKey,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a service listens: `vip:port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAddr {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.proto),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.proto),
        }
    }
}

/// An endpoint: `podIP:targetPort`, and where its pod runs.
///
/// Sorting goes by address, then port: the order every node builds a
/// service's Maglev table in (a pod's address and port are unique in a
/// service's set, so `node` never decides the order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// None: on this node. Some: the address of the node the pod runs on
    /// (`externalTrafficPolicy: Cluster`), where its packets are forwarded;
    /// shown as `ip:port@node`.
    pub node: Option<IpAddr>,
    /// A terminating pod that still serves (KEP-1669): it keeps its slot,
    /// so the flows conntrack pins to it go on, but it is left out of the
    /// Maglev table while the service has a backend that is not draining.
    /// Last in the order, so the two states of one pod sort side by side.
    pub draining: bool,
}

impl Backend {
    pub fn local(addr: IpAddr, port: u16) -> Self {
        Self {
            addr,
            port,
            node: None,
            draining: false,
        }
    }

    /// This pod in either state, as a range of the backend order: a pod that
    /// turns draining is the same endpoint and keeps its backend id.
    pub fn either_state(&self) -> std::ops::RangeInclusive<Backend> {
        let ready = Backend {
            draining: false,
            ..*self
        };
        ready..=Backend {
            draining: true,
            ..*self
        }
    }

    /// The backend's name in the Maglev table: `ip:port`, the same on every
    /// node, whichever node the pod runs on.
    pub fn table_name(&self) -> String {
        match self.addr {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table_name())?;
        if let Some(node) = self.node {
            write!(f, "@{node}")?;
        }
        if self.draining {
            f.write_str(" (draining)")?;
        }
        Ok(())
    }
}

/// A service and its backends on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    pub addr: ServiceAddr,
    pub backends: Vec<Backend>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("service {service}: backend {backend} is not the same IP family as the service")]
    FamilyMismatch {
        service: ServiceAddr,
        backend: Backend,
    },
    #[error("service {service}: port 0 is not a valid {what} port")]
    PortZero {
        service: ServiceAddr,
        what: &'static str,
    },
}

impl LocalService {
    /// The backends, deduplicated and sorted (the order Maglev is built in).
    pub fn backend_set(&self) -> Result<BTreeSet<Backend>, SpecError> {
        if self.addr.port == 0 {
            return Err(SpecError::PortZero {
                service: self.addr,
                what: "service",
            });
        }
        self.backends
            .iter()
            .map(|&backend| {
                if backend.addr.is_ipv4() != self.addr.vip.is_ipv4() {
                    Err(SpecError::FamilyMismatch {
                        service: self.addr,
                        backend,
                    })
                } else if backend.port == 0 {
                    Err(SpecError::PortZero {
                        service: self.addr,
                        what: "backend",
                    })
                } else {
                    Ok(backend)
                }
            })
            .collect()
    }
}

/// `(family, address words)` as the maps hold addresses: the address bytes
/// in network order, in memory order within each word.
pub fn encode_ip(ip: IpAddr) -> (u8, [u32; 4]) {
    let mut bytes = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            FAMILY_V4
        }
        IpAddr::V6(v6) => {
            bytes = v6.octets();
            FAMILY_V6
        }
    };
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    (family, words)
}

pub fn decode_ip(family: u8, words: [u32; 4]) -> Option<IpAddr> {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

impl ServiceAddr {
    pub fn key(&self) -> ServiceKey {
        let (family, addr) = encode_ip(self.vip);
        ServiceKey {
            addr,
            port: self.port.to_be(),
            proto: self.proto.number(),
            family,
        }
    }

    pub fn vip_key(&self) -> VipKey {
        let (family, addr) = encode_ip(self.vip);
        VipKey {
            addr,
            family,
            _pad: [0; 3],
        }
    }

    pub fn from_key(key: &ServiceKey) -> Option<Self> {
        Some(Self {
            vip: decode_ip(key.family, key.addr)?,
            port: u16::from_be(key.port),
            proto: Protocol::from_number(key.proto)?,
        })
    }
}

impl Backend {
    /// The backend's map value as a backend of service `service_id`'s
    /// installation `epoch`.
    pub fn value(&self, service_id: u32, epoch: u32) -> BackendValue {
        let (family, addr) = encode_ip(self.addr);
        let (mut flags, node) = match self.node {
            Some(node) => (BACKEND_REMOTE, encode_ip(node).1),
            None => (0, [0; 4]),
        };
        if self.draining {
            flags |= BACKEND_DRAINING;
        }
        BackendValue {
            addr,
            port: self.port.to_be(),
            family,
            flags,
            service_id,
            node,
            epoch,
        }
    }

    pub fn from_value(value: &BackendValue) -> Option<Self> {
        let node = if value.flags & BACKEND_REMOTE != 0 {
            Some(decode_ip(value.family, value.node)?)
        } else {
            None
        };
        Some(Self {
            addr: decode_ip(value.family, value.addr)?,
            port: u16::from_be(value.port),
            node,
            draining: value.flags & BACKEND_DRAINING != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(vip: &str, backends: &[(&str, u16)]) -> LocalService {
        LocalService {
            addr: ServiceAddr {
                vip: vip.parse().expect("test ip"),
                port: 80,
                proto: Protocol::Tcp,
            },
            backends: backends
                .iter()
                .map(|(ip, port)| Backend::local(ip.parse().expect("test ip"), *port))
                .collect(),
        }
    }

    #[test]
    fn keys_round_trip_in_network_order() {
        for vip in ["192.0.2.10", "2001:db8::10"] {
            let spec = service(vip, &[]);
            let key = spec.addr.key();
            assert_eq!(key.port, 80u16.to_be());
            assert_eq!(ServiceAddr::from_key(&key), Some(spec.addr));
        }
        let backend = Backend::local("10.244.1.5".parse().expect("ip"), 8080);
        let value = backend.value(3, 7);
        assert_eq!(value.addr[0].to_ne_bytes(), [10, 244, 1, 5]);
        assert_eq!(value.addr[1..], [0, 0, 0]);
        assert_eq!((value.flags, value.node), (0, [0; 4]));
        assert_eq!(Backend::from_value(&value), Some(backend));
        let remote = Backend {
            node: Some("172.30.0.12".parse().expect("ip")),
            ..backend
        };
        let value = remote.value(3, 7);
        assert_eq!(value.flags, BACKEND_REMOTE);
        assert_eq!(value.node[0].to_ne_bytes(), [172, 30, 0, 12]);
        assert_eq!(Backend::from_value(&value), Some(remote));
        // The table name leaves the node out: every node names it alike.
        assert_eq!(remote.table_name(), backend.table_name());
        assert_eq!(remote.to_string(), "10.244.1.5:8080@172.30.0.12");
        // Draining is recorded, so an adopting agent reads it back.
        let draining = Backend {
            draining: true,
            ..remote
        };
        let value = draining.value(3, 7);
        assert_eq!(value.flags, BACKEND_REMOTE | BACKEND_DRAINING);
        assert_eq!(Backend::from_value(&value), Some(draining));
    }

    #[test]
    fn backend_sets_are_sorted_deduplicated_and_same_family() {
        let spec = service(
            "192.0.2.10",
            &[("10.0.0.2", 80), ("10.0.0.1", 80), ("10.0.0.2", 80)],
        );
        let set: Vec<Backend> = spec.backend_set().expect("valid").into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(set[0] < set[1]);
        let mixed = service("192.0.2.10", &[("fd00::1", 80)]);
        assert!(matches!(
            mixed.backend_set(),
            Err(SpecError::FamilyMismatch { .. })
        ));
    }
}

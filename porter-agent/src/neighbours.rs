//! Keeps the link-layer addresses of the nodes that `Cluster` traffic is
//! forwarded to resolved. XDP takes a node's MAC from the kernel's
//! neighbour table (`bpf_fib_lookup`) and cannot resolve one itself: a
//! packet for a node without an entry is dropped
//! (`drop_forward_no_neighbour`). Nodes do not otherwise talk to each other,
//! so the agent sends each one an empty UDP datagram to the discard port
//! (9): the kernel resolves the address to send it, and keeps the entry
//! (a stale entry still serves the lookup). Repeated now and then, so that
//! an entry the kernel collected comes back.
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
};

use tracing::warn;

use crate::service::LocalService;

/// The discard service (RFC 863): nothing listens there, and nothing answers
/// but, at most, a rate-limited ICMP port unreachable.
const DISCARD_PORT: u16 = 9;
/// How often a node still forwarded to is probed again.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);

/// When each forwarded-to node was last probed.
#[derive(Debug, Default)]
pub struct Probes {
    last: BTreeMap<IpAddr, Instant>,
}

impl Probes {
    /// The nodes of `services`' remote backends that are due for a probe at
    /// `now`: new ones, and ones last probed [`PROBE_EVERY`] ago. Nodes no
    /// longer forwarded to are forgotten. Pure; the caller sends.
    pub fn due(&mut self, services: &[LocalService], now: Instant) -> Vec<IpAddr> {
        let mut next = BTreeMap::new();
        let mut due = Vec::new();
        let nodes = services
            .iter()
            .flat_map(|spec| &spec.backends)
            .filter_map(|backend| backend.node);
        for node in nodes {
            if next.contains_key(&node) {
                continue;
            }
            let last = match self.last.get(&node) {
                Some(&last) if now.saturating_duration_since(last) < PROBE_EVERY => last,
                _ => {
                    due.push(node);
                    now
                }
            };
            next.insert(node, last);
        }
        self.last = next;
        due
    }
}

/// Sends one probe to each of `nodes`; failures are logged (the next round
/// tries again), never fatal.
pub fn probe(nodes: &[IpAddr]) {
    for &node in nodes {
        if let Err(err) = send_probe(node) {
            warn!(%node, error = %err, "cannot probe a node that Cluster traffic is forwarded to; \
                  its packets are dropped until the kernel has resolved its link-layer address");
        }
    }
}

fn send_probe(node: IpAddr) -> io::Result<()> {
    let any: IpAddr = match node {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.send_to(&[], (node, DISCARD_PORT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Backend, Protocol, ServiceAddr};

    fn spec(port: u16, nodes: &[Option<&str>]) -> LocalService {
        LocalService {
            addr: ServiceAddr {
                vip: "192.0.2.10".parse().expect("ip"),
                port,
                proto: Protocol::Tcp,
            },
            backends: nodes
                .iter()
                .enumerate()
                .map(|(i, node)| Backend {
                    addr: IpAddr::from([10, 244, 0, i as u8 + 1]),
                    port: 8080,
                    node: node.map(|n| n.parse().expect("ip")),
                    draining: false,
                })
                .collect(),
        }
    }

    #[test]
    fn new_nodes_at_once_known_ones_every_interval_gone_ones_forgotten() {
        let mut probes = Probes::default();
        let start = Instant::now();
        let services = [
            spec(80, &[None, Some("172.30.0.12"), Some("172.30.0.13")]),
            spec(81, &[Some("172.30.0.12")]),
        ];
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        assert_eq!(
            probes.due(&services, start),
            [ip("172.30.0.12"), ip("172.30.0.13")],
            "each node once, local backends never"
        );
        assert!(
            probes
                .due(&services, start + Duration::from_secs(5))
                .is_empty()
        );
        let later = start + PROBE_EVERY;
        assert_eq!(probes.due(&services, later).len(), 2, "probed again");
        // n3's pod goes: forgotten, and probed at once when it comes back.
        let fewer = [spec(80, &[Some("172.30.0.12")])];
        assert!(
            probes
                .due(&fewer, later + Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(
            probes.due(&services, later + Duration::from_secs(2)),
            [ip("172.30.0.13")]
        );
    }
}

//! What the controller promises about untrusted input, as functions the
//! cargo-fuzz targets in fuzz/ (feature `fuzzing`) call with arbitrary bytes
//! and the unit tests below replay the checked-in seed corpora through.
//!
//! - `eip_address`: `Eip.spec.address` (IP, CIDR, range `a-b`) parses to a
//!   well-formed range or an error;
//! - `seed_toml`: the seed's bgp-cfg TOML translates without panicking;
//! - `manifests`: a manifest file of arbitrary YAML documents loads, and the
//!   objects in it go through the BGP translation, the Service request
//!   parser (annotations, sharing keys) and the IPAM;
//! - `ipam`: pools and requests decoded from the bytes, checked after every
//!   operation: no address given twice unless legitimately shared, every
//!   allocation inside an accepted pool, no panic on huge or overlapping pools;
//! - `probe_reply`: datagrams arriving on the node liveness check's socket
//!   count as a node's answer only when they are exactly a reply to our
//!   probe, and never make a node Up that did not answer.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use porter_api::annotations::DEFAULT_EIP;
use porter_api::crd::EipSharing;
use porter_api::layer2::PROTOCOL_LAYER2;
use porter_api::source::{Snapshot, dir};
use porter_api::{Eip, EipSpec, ObjectKey};

use crate::bgp;
use crate::ip_family::IpFamily;
use crate::ipam::{IpRange, Ipam, NamespaceLabels, Pool, PoolState};
use crate::node_check::{self, NodeCheck, State, Timing};
use crate::service::{self, IpFamilyPolicy, ServiceRequest, SharingTerms};

/// First byte: the source (0-2: the three checked nodes' probe port, else
/// a node's other port); the rest: the datagram.
pub fn probe_reply(data: &[u8]) {
    const TOKEN: u64 = 0x0123_4567_89ab_cdef;
    let Some((&source, payload)) = data.split_first() else {
        return;
    };
    let nodes: [IpAddr; 3] = [
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 2]),
        IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 3]),
    ];
    let addr = nodes[usize::from(source) % nodes.len()];
    let port = if source < 3 {
        porter_common::probe::PORT
    } else {
        u16::from(source)
    };
    let mut reply = porter_common::probe::request(TOKEN);
    reply[4] = porter_common::probe::REPLY;
    let answered = node_check::answer_from((addr, port).into(), payload, TOKEN);
    let exact = port == porter_common::probe::PORT && payload == reply;
    assert_eq!(answered.is_some(), exact, "{payload:?} from port {port}");
    let start = std::time::Instant::now();
    let mut check = NodeCheck::new(Timing::default());
    let targets = nodes
        .iter()
        .enumerate()
        .map(|(i, ip)| (format!("n{i}"), ip.to_canonical()))
        .collect();
    check.set_targets(&targets, start);
    if let Some(from) = answered {
        check.answer(from, start);
    }
    let up = check.states().filter(|(_, s)| *s == State::Up).count();
    assert_eq!(up, usize::from(exact), "{payload:?}");
    assert!(check.withdrawn().is_empty());
}

pub fn eip_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(range) = IpRange::parse(text) else {
        return;
    };
    assert!(range.start <= range.end, "{text:?} gave {range:?}");
    if range.family == IpFamily::V4 {
        assert!(range.end <= u128::from(u32::MAX), "{text:?} gave {range:?}");
    }
    assert!(range.size() >= 1);
    for ip in [range.first(), range.last()] {
        assert_eq!(IpFamily::of(ip), range.family);
        assert!(range.contains(ip), "{text:?}: {ip} outside {range:?}");
    }
    assert_eq!(range.nth(0), Some(range.first()));
    assert_eq!(range.offset_of(range.last()), Some(range.end - range.start));
    // A pool's addresses: inside the written range, never empty, and the
    // edges left out are exactly the written ones it does not hold.
    for include in [false, true] {
        let (pool, edges) = IpRange::parse_pool(text, include).expect("parsed above");
        assert!(pool.start <= pool.end, "{text:?} gave {pool:?}");
        assert!(range.contains(pool.first()) && range.contains(pool.last()));
        // Saturating: `::/0` counts 2^128 - 1 addresses either way.
        assert_eq!(
            pool.size().saturating_add(edges.len() as u128),
            range.size()
        );
        for edge in &edges {
            assert!(
                range.contains(*edge) && !pool.contains(*edge),
                "{text:?}: {edge}"
            );
        }
    }
}

pub fn seed_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let desired = bgp::from_seed_toml(text, None);
    for (address, peer) in &desired.peers {
        assert_eq!(*address, peer.address);
    }
}

pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No status directory exists there, so nothing is overlaid.
    let root = Path::new("/nonexistent/porter-fuzz");
    let mut snap = Snapshot::default();
    dir::load_text(root, &root.join("manifests.yaml"), text, &mut snap);
    bgp::desired(&snap, &bgp::LocalSettings::default());
    let mut labels = NamespaceLabels::new();
    for ns in &snap.namespaces {
        labels.insert(
            ns.metadata.name.clone().unwrap_or_default(),
            ns.metadata.labels.clone().unwrap_or_default(),
        );
    }
    let requests: BTreeMap<ObjectKey, ServiceRequest> = snap
        .services
        .iter()
        .filter(|svc| service::opted_in(svc))
        .map(|svc| service::request(svc))
        .map(|req| (req.key.clone(), req))
        .collect();
    let published: Vec<(&ObjectKey, &[IpAddr])> = requests
        .values()
        .map(|r| (&r.key, r.current.as_slice()))
        .collect();
    let mut ipam = Ipam::default();
    ipam.set_pools(
        snap.eips.iter().map(|e| Pool::from_eip(e)).collect(),
        &published,
    );
    // The reconciler's order: keep what is published, then allocate the rest.
    let holding: Vec<bool> = requests
        .values()
        .map(|req| ipam.keep(req, &req.current, &labels))
        .collect();
    for (req, held) in requests.values().zip(holding) {
        if !held {
            let _ = ipam.allocate(req, &labels);
        }
    }
    check_ipam(&ipam, &requests);
}

/// Reads a fuzzer's bytes as small choices; zeros once they run out.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn pick<'b, T>(&mut self, from: &'b [T]) -> &'b T {
        &from[self.below(from.len())]
    }

    fn ip(&mut self) -> IpAddr {
        if self.flag() {
            IpAddr::from([10, 0, self.byte() % 4, self.byte()])
        } else {
            let mut v6 = [0u16; 8];
            v6[0] = 0xfd00;
            v6[7] = u16::from(self.byte() % 8);
            v6[6] = u16::from(self.byte() % 2);
            IpAddr::from(v6)
        }
    }
}

const POOL_NAMES: &[&str] = &["a", "b", "c", "d"];
const NAMESPACES: &[&str] = &["red", "blue", "green"];
const SHARING_KEYS: &[Option<&str>] = &[None, Some("k1"), Some("k2")];
const SELECTORS: &[Option<&str>] = &[None, Some("web"), Some("api")];
/// Node addresses, inside the pools `Choices::ip` makes.
const NODE_ADDRESSES: &[&str] = &["10.0.1.7", "fd00::3"];
const PORTS: &[(&str, i32)] = &[("TCP", 80), ("TCP", 443), ("UDP", 53)];

fn pool(c: &mut Choices) -> Pool {
    let address = match c.below(6) {
        0 => format!("10.0.{}.{}/{}", c.byte() % 4, c.byte(), 24 + c.below(9)),
        1 => {
            let (a, b) = (c.ip(), c.ip());
            format!("{a}-{b}")
        }
        // From ::/0 down: huge v6 pools must be sized and walked without overflow.
        2 => format!("fd00::/{}", c.below(129)),
        3 => format!("::/{}", c.below(3)),
        4 => c.ip().to_string(),
        _ => String::from_utf8_lossy(&[c.byte(), c.byte(), c.byte()]).into_owned(),
    };
    let mut annotations = BTreeMap::new();
    if c.flag() {
        annotations.insert(DEFAULT_EIP.key.to_string(), "true".to_string());
    }
    Pool::from_eip(&Eip {
        metadata: ObjectMeta {
            name: Some(c.pick(POOL_NAMES).to_string()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: EipSpec {
            address,
            disable: c.below(4) == 0,
            priority: i32::from(c.byte() % 3),
            namespaces: if c.below(3) == 0 {
                vec![c.pick(NAMESPACES).to_string()]
            } else {
                Vec::new()
            },
            include_network_and_broadcast: c.flag(),
            protocol: c.flag().then(|| PROTOCOL_LAYER2.to_string()),
            sharing: Some(EipSharing {
                cross_namespace: c.flag(),
            }),
            ..EipSpec::default()
        },
        status: None,
    })
}

fn request(c: &mut Choices) -> ServiceRequest {
    let families = match c.below(3) {
        0 => vec![IpFamily::V4],
        1 => vec![IpFamily::V6],
        _ => vec![IpFamily::V4, IpFamily::V6],
    };
    let policy = match (families.len(), c.flag()) {
        (1, _) => IpFamilyPolicy::SingleStack,
        (_, true) => IpFamilyPolicy::RequireDualStack,
        (_, false) => IpFamilyPolicy::PreferDualStack,
    };
    let mut ports: Vec<(String, i32)> = PORTS
        .iter()
        .filter(|_| c.flag())
        .map(|(proto, port)| (proto.to_string(), *port))
        .collect();
    ports.sort();
    ServiceRequest {
        key: ObjectKey::new(*c.pick(NAMESPACES), format!("svc{}", c.below(6))),
        pool: (c.below(4) == 0).then(|| c.pick(POOL_NAMES).to_string()),
        requested: (0..c.below(3)).map(|_| c.ip()).collect(),
        invalid_request: None,
        sharing_key: c.pick(SHARING_KEYS).map(str::to_string),
        sharing_terms: SharingTerms {
            local: c.flag(),
            selector: c
                .pick(SELECTORS)
                .map(|app| [("app".to_string(), app.to_string())].into())
                .unwrap_or_default(),
        },
        ports,
        families,
        policy,
        current: (0..c.below(3)).map(|_| c.ip()).collect(),
    }
}

pub fn ipam(data: &[u8]) {
    let mut c = Choices(data);
    let mut ipam = Ipam::default();
    let mut labels = NamespaceLabels::new();
    labels.insert("green".into(), [("tier".into(), "web".into())].into());
    // The latest request of each Service: what its holdings must satisfy.
    let mut requests: BTreeMap<ObjectKey, ServiceRequest> = BTreeMap::new();
    while !c.0.is_empty() {
        match c.below(8) {
            0 => {
                let nodes = NODE_ADDRESSES
                    .iter()
                    .filter(|_| c.flag())
                    .filter_map(|ip| Some((ip.parse().ok()?, "node".to_string())))
                    .collect();
                ipam.set_node_addresses(nodes);
                ipam.set_pools((0..c.below(5)).map(|_| pool(&mut c)).collect(), &[]);
            }
            1 => {
                let key = ObjectKey::new(*c.pick(NAMESPACES), format!("svc{}", c.below(6)));
                ipam.release(&key);
                requests.remove(&key);
            }
            _ => {
                let req = request(&mut c);
                // As the reconciler does: keep what is published or held
                // if it fits, else allocate anew.
                let held = ipam.addresses_of(&req.key).map(<[IpAddr]>::to_vec);
                if !ipam.keep(&req, &req.current, &labels)
                    && !held.is_some_and(|ips| ipam.keep(&req, &ips, &labels))
                {
                    let _ = ipam.allocate(&req, &labels);
                }
                requests.insert(req.key.clone(), req);
            }
        }
        check_ipam(&ipam, &requests);
    }
}

/// The IPAM's invariants, given each Service's latest request.
fn check_ipam(ipam: &Ipam, requests: &BTreeMap<ObjectKey, ServiceRequest>) {
    let accepted: Vec<(&str, IpRange)> = ipam
        .pools()
        .filter(|p| p.state == PoolState::Accepted)
        .filter_map(|p| Some((p.name.as_str(), p.range?)))
        .collect();
    for (i, (a, ra)) in accepted.iter().enumerate() {
        for (b, rb) in &accepted[i + 1..] {
            assert!(!ra.overlaps(rb), "accepted pools {a} and {b} overlap");
        }
    }
    let mut holders: BTreeMap<IpAddr, Vec<&ObjectKey>> = BTreeMap::new();
    for (key, ips) in ipam.allocations() {
        let families: BTreeSet<IpFamily> = ips.iter().map(|ip| IpFamily::of(*ip)).collect();
        assert_eq!(families.len(), ips.len(), "{key} holds {ips:?}");
        for ip in ips {
            assert!(
                accepted.iter().any(|(_, r)| r.contains(*ip)),
                "{key} holds {ip}, which is in no accepted pool"
            );
            holders.entry(*ip).or_default().push(key);
        }
    }
    for (ip, keys) in holders {
        if keys.len() < 2 {
            continue;
        }
        let reqs: Vec<&ServiceRequest> = keys.iter().filter_map(|k| requests.get(*k)).collect();
        assert_eq!(reqs.len(), keys.len(), "{ip}: holders without a request");
        let key = reqs[0].sharing_key.as_ref();
        assert!(
            key.is_some() && reqs.iter().all(|r| r.sharing_key.as_ref() == key),
            "{ip} is given to {keys:?} without a common sharing key"
        );
        let pool = ipam
            .pools()
            .find(|p| p.range.is_some_and(|r| r.contains(ip)));
        let cross_namespace = pool.is_some_and(|p| p.cross_namespace);
        for (i, a) in reqs.iter().enumerate() {
            for b in &reqs[i + 1..] {
                assert!(
                    cross_namespace || a.key.namespace == b.key.namespace,
                    "{ip} is shared across namespaces by {} and {}",
                    a.key,
                    b.key
                );
                assert_eq!(
                    a.sharing_terms.incompatible(&b.sharing_terms),
                    None,
                    "{ip} is shared by incompatible {} and {}",
                    a.key,
                    b.key
                );
                assert!(
                    !a.ports.iter().any(|p| b.ports.contains(p)),
                    "{ip} is shared by {} and {} on a common port",
                    a.key,
                    b.key
                );
            }
        }
    }
    for (name, range) in &accepted {
        for ip in ipam.used_in(name).keys() {
            assert!(range.contains(*ip), "{ip} is counted in pool {name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every seed of a fuzz target, so that `cargo test` replays the
    /// checked-in corpora without a nightly fuzz build.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(target);
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed corpus is checked in") {
            run(&std::fs::read(entry.expect("readable directory").path()).expect("readable seed"));
            seeds += 1;
        }
        assert!(seeds >= 1, "no seeds in {}", dir.display());
    }

    #[test]
    fn eip_address_seeds() {
        replay("eip_address", eip_address);
    }

    #[test]
    fn seed_toml_seeds() {
        replay("seed_toml", seed_toml);
    }

    #[test]
    fn manifests_seeds() {
        replay("manifests", manifests);
    }

    /// The manifest seeds are valid, so the fuzzer starts from objects that
    /// reach the BGP translation and the IPAM rather than from parse errors.
    #[test]
    fn manifest_seeds_load_without_problems() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/manifests");
        let mut snap = Snapshot::default();
        for entry in std::fs::read_dir(&dir).expect("the seed corpus is checked in") {
            let path = entry.expect("readable directory").path();
            let text = std::fs::read_to_string(&path).expect("readable seed");
            let problems = dir::load_text(&dir, &path, &text, &mut snap);
            assert!(problems.is_empty(), "{problems:?}");
        }
        assert_eq!(
            (snap.eips.len(), snap.services.len(), snap.bgp_peers.len()),
            (2, 3, 1)
        );
        assert_eq!(snap.config_maps.len(), 1);
    }

    #[test]
    fn ipam_seeds() {
        replay("ipam", ipam);
    }

    #[test]
    fn probe_reply_seeds() {
        replay("probe_reply", probe_reply);
    }
}

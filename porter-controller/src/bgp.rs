//! What the controller needs from a BGP speaker ([`Announcer`]), and the pure
//! translation of BgpConf/BgpPeer (or the seed's `bgp-cfg` TOML) into speaker
//! and peer settings. The shapes mirror porter-bgp's API so that its adapter
//! is a field-by-field copy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use porter_api::annotations::BGP_CONF_NAME;
use porter_api::source::Snapshot;
use porter_api::{BgpConf, BgpPeer};

use crate::announce::Routes;
use crate::peer_auth::{self, SecretScope};

pub const DEFAULT_LISTEN_PORT: u16 = 17900;
const DEFAULT_REMOTE_PORT: u16 = 179;
const DEFAULT_HOLD_TIME: u16 = 90;
const DEFAULT_CONNECT_RETRY: u16 = 30;
/// OpenELB's default when a peer lists no afiSafis.
const DEFAULT_SEND_MAX: u8 = 10;
const DEFAULT_RESTART_TIME: u16 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    pub restart_time: u16,
    /// Set when this controller takes over from another instance whose
    /// routes the peers may still hold.
    pub restarting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub listen: Option<SocketAddr>,
    pub graceful_restart: Option<GracefulRestart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    pub remote_port: u16,
    pub passive: bool,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub md5_password: Option<String>,
    pub ebgp_multihop_ttl: Option<u8>,
    pub add_path_send_max: u8,
    pub families: Vec<Family>,
    pub local_address: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub established: bool,
}

/// The controller's view of a BGP speaker. porter-bgp's `Speaker` is adapted
/// to this where the binary is assembled; tests record the calls.
pub trait Announcer: Send {
    /// Starts the speaker, or restarts it when the global settings change
    /// (AS and router id cannot change under live sessions).
    fn start(&mut self, config: &SpeakerConfig);
    /// Adds a session or changes one; other sessions are untouched.
    fn upsert_peer(&mut self, peer: &PeerConfig);
    fn remove_peer(&mut self, address: IpAddr);
    /// The complete desired routes; the speaker sends only the difference.
    fn set_routes(&mut self, routes: &Routes);
    fn peer_status(&self) -> Vec<PeerStatus>;
}

/// A remark about the configuration: a key that does not apply, a value that
/// was refused. Logged, never dropped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub message: String,
    /// Also worth a Warning Event on this BgpPeer.
    pub event: Option<PeerEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEvent {
    pub peer: String,
    pub reason: &'static str,
}

/// Event reason: the password Secret cannot be used, so the session is not (re)keyed.
pub const REASON_AUTH_UNAVAILABLE: &str = "AuthPasswordUnavailable";
/// Event reason: the password is in the BgpPeer in plain text.
pub const REASON_AUTH_IN_SPEC: &str = "AuthPasswordInSpec";

fn info(message: impl Into<String>) -> Note {
    Note {
        warning: false,
        message: message.into(),
        event: None,
    }
}

fn warn(message: impl Into<String>) -> Note {
    Note {
        warning: true,
        message: message.into(),
        event: None,
    }
}

fn warn_peer(peer: &str, reason: &'static str, message: String) -> Note {
    Note {
        event: Some(PeerEvent {
            peer: peer.to_string(),
            reason,
        }),
        ..warn(format!("BgpPeer `{peer}`: {message}"))
    }
}

/// The BGP settings the cluster asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpDesired {
    /// `None`: no usable global settings, so no speaker runs.
    pub speaker: Option<SpeakerConfig>,
    pub peers: BTreeMap<IpAddr, PeerConfig>,
    /// Peers whose password cannot be read now: a running session keeps
    /// the key it has, and none is started without one.
    pub held: BTreeSet<IpAddr>,
    pub notes: Vec<Note>,
}

/// BgpConf/BgpPeer when there are any, else the seed's ConfigMap.
/// Passwords come from `snap.secrets` within `scope`.
pub fn desired(snap: &Snapshot, scope: &SecretScope) -> BgpDesired {
    let seed = snap.config_maps.first().map(|cm| {
        let data = cm.data.clone().unwrap_or_default();
        let text = data
            .get("config.toml")
            .or_else(|| data.values().next())
            .cloned()
            .unwrap_or_default();
        from_seed_toml(&text)
    });
    let have_crds = !snap.bgp_confs.is_empty() || !snap.bgp_peers.is_empty();
    if !have_crds {
        return seed.unwrap_or_default();
    }
    let conf = snap.bgp_confs.iter().map(|c| c.as_ref());
    let peers = snap.bgp_peers.iter().map(|p| p.as_ref());
    let mut out = from_crds(conf, peers, &snap.secrets, scope);
    if seed.is_some() {
        out.notes.push(warn(
            "both BgpConf/BgpPeer objects and the ConfigMap porter-system/bgp-cfg exist; \
             the CRDs win and bgp-cfg is ignored (delete it to silence this)",
        ));
    }
    out
}

pub fn from_crds<'a>(
    confs: impl IntoIterator<Item = &'a BgpConf>,
    peers: impl IntoIterator<Item = &'a BgpPeer>,
    secrets: &[Arc<Secret>],
    scope: &SecretScope,
) -> BgpDesired {
    let mut out = BgpDesired::default();
    for conf in confs {
        let name = conf.metadata.name.as_deref().unwrap_or_default();
        if name != BGP_CONF_NAME {
            out.notes.push(warn(format!(
                "BgpConf `{name}` is ignored: only `{BGP_CONF_NAME}` is read"
            )));
            continue;
        }
        let spec = &conf.spec;
        let router_id = match spec.router_id.as_deref().map(str::parse::<Ipv4Addr>) {
            Some(Ok(id)) => id,
            Some(Err(_)) | None => {
                out.notes.push(warn(format!(
                    "BgpConf default: routerId {:?} is not an IPv4 address; set one (the controller is not tied to a node, so it cannot borrow a node's address)",
                    spec.router_id.as_deref().unwrap_or("")
                )));
                continue;
            }
        };
        let listen = match spec.listen_port {
            None => Some(DEFAULT_LISTEN_PORT),
            Some(p) if p < 0 => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    out.notes.push(warn(format!(
                        "BgpConf default: listenPort {p} is out of range; not listening"
                    )));
                    None
                }
            },
        };
        let gr = spec
            .graceful_restart
            .clone()
            .unwrap_or(porter_api::crd::GracefulRestart {
                enabled: true,
                restart_time: None,
            });
        out.speaker = Some(SpeakerConfig {
            local_as: spec.as_number,
            router_id,
            listen: listen.map(|p| SocketAddr::new(IpAddr::from([0u16; 8]), p)),
            graceful_restart: gr.enabled.then(|| GracefulRestart {
                restart_time: gr.restart_time.unwrap_or(DEFAULT_RESTART_TIME),
                restarting: false,
            }),
        });
    }
    for peer in peers {
        let name = peer.metadata.name.as_deref().unwrap_or_default();
        match peer_from_crd(peer) {
            Ok((mut cfg, notes)) => {
                out.notes.extend(notes.into_iter().map(|n| Note {
                    message: format!("BgpPeer `{name}`: {}", n.message),
                    ..n
                }));
                match peer_auth::resolve(&peer.spec.conf, secrets, scope) {
                    Ok(auth) => {
                        cfg.md5_password = auth.password;
                        out.notes.extend(
                            auth.warning
                                .map(|w| warn_peer(name, REASON_AUTH_IN_SPEC, w)),
                        );
                    }
                    Err(e) => {
                        out.notes.push(warn_peer(
                            name,
                            REASON_AUTH_UNAVAILABLE,
                            format!(
                                "{e}; the session is not started or re-keyed until it is fixed"
                            ),
                        ));
                        out.held.insert(cfg.address);
                        continue;
                    }
                }
                match out.peers.entry(cfg.address) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        out.notes.push(warn(format!(
                            "BgpPeer `{name}`: neighbour {} is configured twice; this one is ignored",
                            cfg.address
                        )))
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(cfg);
                    }
                }
            }
            Err(why) => out
                .notes
                .push(warn(format!("BgpPeer `{name}` is ignored: {why}"))),
        }
    }
    out
}

fn parse_family(afi: &str) -> Option<Family> {
    match afi.to_ascii_lowercase().as_str() {
        "afi_ip" | "ipv4" | "ipv4-unicast" => Some(Family::Ipv4Unicast),
        "afi_ip6" | "ipv6" | "ipv6-unicast" => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

fn own_family(address: IpAddr) -> Family {
    if address.is_ipv4() {
        Family::Ipv4Unicast
    } else {
        Family::Ipv6Unicast
    }
}

fn peer_from_crd(peer: &BgpPeer) -> Result<(PeerConfig, Vec<Note>), String> {
    let spec = &peer.spec;
    let mut notes = Vec::new();
    let address: IpAddr = spec.conf.neighbor_address.trim().parse().map_err(|_| {
        format!(
            "neighborAddress {:?} is not an IP address",
            spec.conf.neighbor_address
        )
    })?;
    let transport = spec.transport.clone().unwrap_or_default();
    let local_address = match transport.local_address.as_deref().map(str::parse::<IpAddr>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return Err(format!(
                "transport.localAddress {:?} is not an IP address",
                transport.local_address
            ));
        }
    };
    let timers = spec
        .timers
        .clone()
        .and_then(|t| t.config)
        .unwrap_or_default();
    if timers.keepalive_interval.is_some() {
        notes.push(info("timers.config.keepaliveInterval does not apply: the speaker sends keepalives at a third of the hold time"));
    }
    let mut families = Vec::new();
    let mut send_max = None;
    for a in &spec.afi_safis {
        if let Some(c) = &a.config {
            let unicast =
                ["safi_unicast", "unicast"].contains(&c.family.safi.to_ascii_lowercase().as_str());
            match (parse_family(&c.family.afi), unicast) {
                _ if !c.enabled => {}
                (Some(f), true) => {
                    if !families.contains(&f) {
                        families.push(f);
                    }
                }
                _ => notes.push(warn(format!(
                    "afiSafis family {}/{} is not supported; only IPv4/IPv6 unicast",
                    c.family.afi, c.family.safi
                ))),
            }
        }
        if let Some(m) = a
            .add_paths
            .as_ref()
            .and_then(|p| p.config.as_ref())
            .map(|c| c.send_max)
        {
            send_max = Some(send_max.map_or(m, |s: u8| s.max(m)));
        }
    }
    if families.is_empty() {
        families.push(own_family(address));
    }
    if !spec.node_selector.is_empty() {
        notes.push(info(
            "nodeSelector does not apply: the controller is the only speaker and announces every serving node as a next hop",
        ));
    }
    let multihop = spec.ebgp_multihop.clone().unwrap_or_default();
    Ok((
        PeerConfig {
            address,
            remote_as: spec.conf.peer_as,
            remote_port: transport.remote_port.unwrap_or(DEFAULT_REMOTE_PORT),
            passive: transport.passive_mode,
            hold_time: timers.hold_time.unwrap_or(DEFAULT_HOLD_TIME),
            connect_retry: Duration::from_secs(
                timers.connect_retry.unwrap_or(DEFAULT_CONNECT_RETRY).into(),
            ),
            // Set by the caller from a Secret or authPassword (crate::peer_auth).
            md5_password: None,
            ebgp_multihop_ttl: multihop
                .enabled
                .then(|| multihop.multihop_ttl.unwrap_or(255)),
            add_path_send_max: if spec.afi_safis.is_empty() {
                DEFAULT_SEND_MAX
            } else {
                send_max.unwrap_or(0)
            },
            families,
            local_address,
        },
        notes,
    ))
}

/// The seed's GoBGP-style TOML. Every key is either used or explained.
pub fn from_seed_toml(text: &str) -> BgpDesired {
    let mut out = BgpDesired::default();
    let doc: toml::Table = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            out.notes.push(warn(format!("ConfigMap porter-system/bgp-cfg is not valid TOML, so no BGP is configured from it: {e}")));
            return out;
        }
    };
    for (key, value) in &doc {
        match key.as_str() {
            "global" => seed_global(value, &mut out),
            "porter-config" => {
                for (k, _) in value.as_table().into_iter().flatten() {
                    let why = if k == "using-port-forward" {
                        "Porter connects out to its peers (or listens itself), so no port forwarding is set up"
                    } else {
                        "it is not a setting Porter knows"
                    };
                    out.notes.push(info(format!(
                        "bgp-cfg: [porter-config] {k} does not apply: {why}"
                    )));
                }
            }
            "neighbors" => {
                for n in value.as_array().into_iter().flatten() {
                    seed_neighbor(n, &mut out);
                }
            }
            other => out.notes.push(info(format!(
                "bgp-cfg: [{other}] does not apply to Porter's announce-only speaker"
            ))),
        }
    }
    out
}

fn seed_global(value: &toml::Value, out: &mut BgpDesired) {
    let config = value
        .get("config")
        .and_then(|c| c.as_table())
        .cloned()
        .unwrap_or_default();
    let mut local_as = None;
    let mut router_id = None;
    let mut port = Some(DEFAULT_LISTEN_PORT);
    for (k, v) in &config {
        match k.as_str() {
            "as" => local_as = v.as_integer().and_then(|a| u32::try_from(a).ok()),
            "router-id" => router_id = v.as_str().and_then(|r| r.parse::<Ipv4Addr>().ok()),
            "port" => {
                port = v.as_integer().and_then(|p| match p {
                    p if p < 0 => None,
                    p => u16::try_from(p).ok(),
                })
            }
            other => out.notes.push(info(format!(
                "bgp-cfg: [global.config] {other} does not apply"
            ))),
        }
    }
    for k in value
        .as_table()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| *k != "config")
    {
        out.notes
            .push(info(format!("bgp-cfg: [global.{k}] does not apply")));
    }
    match (local_as, router_id) {
        (Some(local_as), Some(router_id)) => {
            out.speaker = Some(SpeakerConfig {
                local_as,
                router_id,
                listen: port.map(|p| SocketAddr::new(IpAddr::from([0u16; 8]), p)),
                graceful_restart: Some(GracefulRestart {
                    restart_time: DEFAULT_RESTART_TIME,
                    restarting: false,
                }),
            })
        }
        _ => out.notes.push(warn(
            "bgp-cfg: [global.config] needs a valid `as` and `router-id`; no BGP speaker runs",
        )),
    }
}

fn seed_neighbor(n: &toml::Value, out: &mut BgpDesired) {
    // GoBGP nests these under [neighbors.config]; the seed's docs also put them directly under [[neighbors]].
    let config = n.get("config").unwrap_or(n);
    let address = config
        .get("neighbor-address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse::<IpAddr>().ok());
    let remote_as = config
        .get("peer-as")
        .and_then(|a| a.as_integer())
        .and_then(|a| u32::try_from(a).ok());
    let (Some(address), Some(remote_as)) = (address, remote_as) else {
        out.notes.push(warn("bgp-cfg: a [[neighbors]] entry lacks a valid neighbor-address or peer-as; it is ignored"));
        return;
    };
    let send_max = n
        .get("add-paths")
        .and_then(|a| a.get("config"))
        .and_then(|c| c.get("send-max"))
        .and_then(|s| s.as_integer())
        .map_or(0, |s| s.clamp(0, u8::MAX.into()) as u8);
    for (k, _) in n.as_table().into_iter().flatten() {
        if !["config", "add-paths", "neighbor-address", "peer-as"].contains(&k.as_str()) {
            out.notes.push(info(format!(
                "bgp-cfg: neighbour {address}: {k} does not apply"
            )));
        }
    }
    out.peers.insert(
        address,
        PeerConfig {
            address,
            remote_as,
            remote_port: DEFAULT_REMOTE_PORT,
            passive: false,
            hold_time: DEFAULT_HOLD_TIME,
            connect_retry: Duration::from_secs(DEFAULT_CONNECT_RETRY.into()),
            md5_password: None,
            ebgp_multihop_ttl: None,
            add_path_send_max: send_max,
            families: vec![own_family(address)],
            local_address: None,
        },
    );
}

/// Applies desired BGP settings through an [`Announcer`], touching only what
/// changed: a new peer is added, a changed one updated, a gone one removed,
/// and the others keep their sessions.
#[derive(Debug, Default)]
pub struct BgpDriver {
    speaker: Option<SpeakerConfig>,
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Version of the routes last sent.
    routes: Option<u64>,
    notes: Vec<Note>,
}

impl BgpDriver {
    /// Forgets what was applied, so that the next calls re-send everything
    /// (after winning leadership).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Returns notes that are new since the last call, for logging once.
    pub fn configure(
        &mut self,
        mut desired: BgpDesired,
        announcer: &mut dyn Announcer,
    ) -> Vec<Note> {
        let fresh: Vec<Note> = desired
            .notes
            .iter()
            .filter(|n| !self.notes.contains(n))
            .cloned()
            .collect();
        self.notes = std::mem::take(&mut desired.notes);
        if desired.speaker != self.speaker {
            self.peers.clear();
            self.routes = None;
            if let Some(cfg) = &desired.speaker {
                announcer.start(cfg);
            }
            self.speaker = desired.speaker;
        }
        if self.speaker.is_none() {
            return fresh;
        }
        let gone: Vec<IpAddr> = self
            .peers
            .keys()
            .filter(|a| !desired.peers.contains_key(a) && !desired.held.contains(a))
            .copied()
            .collect();
        for address in gone {
            announcer.remove_peer(address);
            self.peers.remove(&address);
        }
        for (address, peer) in desired.peers {
            if self.peers.get(&address) != Some(&peer) {
                announcer.upsert_peer(&peer);
                self.peers.insert(address, peer);
            }
        }
        fresh
    }

    /// Sends `routes` unless this `version` of them was sent already;
    /// returns whether it did.
    pub fn routes(&mut self, routes: &Routes, version: u64, announcer: &mut dyn Announcer) -> bool {
        if self.speaker.is_none() || self.routes == Some(version) {
            return false;
        }
        announcer.set_routes(routes);
        self.routes = Some(version);
        true
    }
}

/// An [`Announcer`] that keeps the calls it gets, for tests.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub calls: Vec<Call>,
    /// Sessions reported as established.
    pub established: Vec<IpAddr>,
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(SpeakerConfig),
    Upsert(PeerConfig),
    Remove(IpAddr),
    Routes(Routes),
}

#[cfg(test)]
impl Announcer for Recorder {
    fn start(&mut self, config: &SpeakerConfig) {
        self.calls.push(Call::Start(config.clone()));
    }

    fn upsert_peer(&mut self, peer: &PeerConfig) {
        self.calls.push(Call::Upsert(peer.clone()));
    }

    fn remove_peer(&mut self, address: IpAddr) {
        self.calls.push(Call::Remove(address));
    }

    fn set_routes(&mut self, routes: &Routes) {
        self.calls.push(Call::Routes(routes.clone()));
    }

    fn peer_status(&self) -> Vec<PeerStatus> {
        self.established
            .iter()
            .map(|a| PeerStatus {
                address: *a,
                established: true,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

//! What the controller needs from a BGP speaker ([`Announcer`]), and the pure
//! translation of BgpConf/BgpPeer (or the seed's `bgp-cfg` TOML) into
//! porter-bgp's speaker and peer settings.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use porter_api::annotations::BGP_CONF_NAME;
use porter_api::bgp_policy::peer_policy;
use porter_api::crd::CONTROLLER_STATUS_KEY;
use porter_api::peer_auth::SecretScope;
use porter_api::source::{Event, Snapshot};
use porter_api::{BgpConf, BgpPeer, BgpPeerNodeStatus, SpeakerMode};
use tokio::sync::Notify;

use porter_bgp::PathTable;

use porter_api::bgp_config::{
    self, DEFAULT_CONNECT_RETRY, DEFAULT_HOLD_TIME, DEFAULT_LISTEN_PORT, DEFAULT_REMOTE_PORT,
    DEFAULT_RESTART_TIME, Note, PeerConfig, SpeakerConfig, bfd_session, families_not_carried,
    fresh_notes, graceful_restart, own_family, peer_from_crd, set_password, speaker_from_conf,
};
use porter_bgp::PeerStatus;

/// The controller's entries of `BgpPeer.status.nodes` (key
/// [`CONTROLLER_STATUS_KEY`]), by BgpPeer name: one for each BgpPeer the
/// speaker has a session with. None in node mode, where the speaker stops.
pub fn status_entries(
    snap: &Snapshot,
    sessions: &[PeerStatus],
    bfd: &BTreeMap<IpAddr, String>,
) -> BTreeMap<String, BgpPeerNodeStatus> {
    snap.bgp_peers
        .iter()
        .filter_map(|peer| {
            let name = peer.metadata.name.clone()?;
            let address: IpAddr = peer.spec.conf.neighbor_address.trim().parse().ok()?;
            let session = sessions.iter().find(|s| s.address == address)?;
            Some((
                name,
                BgpPeerNodeStatus {
                    node: CONTROLLER_STATUS_KEY.to_owned(),
                    state: format!("{:?}", session.state),
                    paths_announced: session.paths_announced,
                    last_error: session.last_error.clone(),
                    bfd: peer
                        .spec
                        .bfd
                        .as_ref()
                        .and_then(|_| bfd.get(&address).cloned()),
                },
            ))
        })
        .collect()
}

/// Whether `after` differs from `before` in what the BgpPeer status and the
/// per-peer metrics show (not in uptime or message counters, which move
/// all the time).
pub fn sessions_differ(before: &[PeerStatus], after: &[PeerStatus]) -> bool {
    let shown = |s: &PeerStatus| (s.address, s.state, s.paths_announced, s.last_error.clone());
    !before.iter().map(shown).eq(after.iter().map(shown))
}

/// How the controller's sessions ask the routers to keep its routes when
/// it goes silent: for `restart_seconds` as RFC 4724's restart time, then,
/// for the rest of the configured restart time, as RFC 9494's long-lived
/// stale time. During the restart time the routes are stale but as good as
/// fresh ones, so a session that comes straight back has its paths merged
/// with them, with no moment of a partial ECMP set. After it they are
/// `LLGR_STALE`, which a router prefers any fresh path to. Every replica
/// announces the same paths (the leader and its standbys, see
/// crate::leadership), so a dead replica's paths are soon replaced by the
/// others' instead of merged with them: a dead node among them (the dead
/// replica's own, whose withdrawal it cannot send) stops being a next hop
/// once the restart time is over. When every replica is silent (the lease
/// store, or the API server, out of reach), the routers keep all their
/// paths, long-lived stale. See docs/bfd.md, "When the leader's node dies".
/// The restart time the controller's sessions ask for by default, seconds
/// (`--restart-time`, see [`long_lived`]). Short, as a dead replica's
/// paths stay next hops for it; not zero, so that a session that comes
/// straight back (a speaker restarted for new settings) is merged rather
/// than replaced one path at a time.
pub const RESTART_SECONDS: u16 = 1;

pub fn long_lived(mut config: SpeakerConfig, restart_seconds: u16) -> SpeakerConfig {
    if let Some(gr) = &mut config.graceful_restart
        && gr.long_lived_stale_time.is_none()
    {
        let restart = restart_seconds.min(gr.restart_time);
        gr.long_lived_stale_time = Some(u32::from(gr.restart_time - restart));
        gr.restart_time = restart;
    }
    config
}

/// The controller's view of a BGP speaker. porter-bgp's `Speaker` is adapted
/// to this where the binary is assembled; tests record the calls.
pub trait Announcer: Send {
    /// Starts the speaker, or restarts it when the global settings change
    /// (AS and router id cannot change under live sessions).
    fn start(&mut self, config: &SpeakerConfig);
    /// Stops the speaker, withdrawing everything it announced (the cluster
    /// switched to `speakerMode: node`, or BGP is no longer configured).
    fn stop(&mut self);
    /// Stops the speaker the way a crash would, for a leader that gives its
    /// leadership up: the sessions close without a NOTIFICATION, so each
    /// router keeps our routes (as stale) for its graceful-restart time
    /// while the successor connects and announces the same paths. Without
    /// graceful restart the routers withdraw them at once.
    fn abandon(&mut self);
    /// Adds a session or changes one; other sessions are untouched.
    fn upsert_peer(&mut self, peer: &PeerConfig);
    fn remove_peer(&mut self, address: IpAddr);
    /// The complete desired paths; the speaker sends only the difference.
    fn set_paths(&mut self, paths: &PathTable);
    fn peer_status(&self) -> Vec<PeerStatus>;
    /// Notified when [`Self::peer_status`] changes in what is shown (see
    /// [`sessions_differ`]), so that the loop reports a session that went
    /// down at once instead of at its next resync. Never, by default.
    fn sessions_changed(&self) -> Arc<Notify> {
        Arc::new(Notify::new())
    }
    /// The BFD sessions to run beside the BGP sessions (BgpPeers with
    /// `spec.bfd`), by neighbour, with the BgpPeer's name. None by default.
    fn set_bfd(&mut self, _sessions: &BfdSessions) {}
    /// Each BFD session's `BgpPeer.status.nodes[].bfd` text, by neighbour.
    fn bfd_states(&self) -> BTreeMap<IpAddr, String> {
        BTreeMap::new()
    }
    /// The Events BFD changes caused since the last call (`BfdDown`,
    /// `BfdUp`), to write; [`Self::sessions_changed`] is notified with them.
    fn take_bfd_events(&self) -> Vec<Event> {
        Vec::new()
    }
}

/// BFD sessions by neighbour address, with their BgpPeer's name.
pub type BfdSessions = BTreeMap<IpAddr, (String, porter_bfd::PeerConfig)>;

/// The BGP settings the cluster asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpDesired {
    /// `None`: no usable global settings, so no speaker runs.
    pub speaker: Option<SpeakerConfig>,
    pub peers: BTreeMap<IpAddr, PeerConfig>,
    /// Peers whose password cannot be read now: a running session keeps
    /// the key it has, and none is started without one.
    pub held: BTreeSet<IpAddr>,
    /// BFD beside the sessions of BgpPeers with `spec.bfd`.
    pub bfd: BfdSessions,
    pub notes: Vec<Note>,
}

/// What a replica brings of its own to the cluster's BGP settings.
#[derive(Clone, Debug, Default)]
pub struct LocalSettings {
    /// Where BgpPeer password Secrets are read.
    pub secrets: SecretScope,
    /// The BGP identifier when BgpConf `default` sets no `routerId`
    /// (`--router-id`): the replica's own, so that no two replicas show
    /// the routers one identifier.
    pub router_id: Option<Ipv4Addr>,
}

/// BgpConf/BgpPeer when there are any, else the seed's ConfigMap.
/// Passwords come from `snap.secrets` within `local.secrets`.
pub fn desired(snap: &Snapshot, local: &LocalSettings) -> BgpDesired {
    let seed = snap.config_maps.first().map(|cm| {
        let data = cm.data.clone().unwrap_or_default();
        let text = data
            .get("config.toml")
            .or_else(|| data.values().next())
            .cloned()
            .unwrap_or_default();
        from_seed_toml(&text, local.router_id)
    });
    let have_crds = !snap.bgp_confs.is_empty() || !snap.bgp_peers.is_empty();
    if !have_crds {
        return seed.unwrap_or_default();
    }
    let conf = snap.bgp_confs.iter().map(|c| c.as_ref());
    let peers = snap.bgp_peers.iter().map(|p| p.as_ref());
    let mut out = from_crds(conf, peers, &snap.secrets, local);
    if seed.is_some() {
        out.notes.push(Note::warning(
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
    local: &LocalSettings,
) -> BgpDesired {
    let mut out = BgpDesired::default();
    for conf in confs {
        let name = conf.metadata.name.as_deref().unwrap_or_default();
        if name != BGP_CONF_NAME {
            out.notes.push(Note::warning(format!(
                "BgpConf `{name}` is ignored: only `{BGP_CONF_NAME}` is read"
            )));
            continue;
        }
        if conf.spec.speaker_mode() == SpeakerMode::Node {
            out.notes.push(Note::info(
                "BgpConf default: speakerMode is node, so the agents announce their own \
                 nodes' paths and the controller runs no BGP speaker (it keeps IPAM and status)",
            ));
            return out;
        }
        match speaker_from_conf(&conf.spec, local.router_id) {
            Ok((speaker, notes)) => {
                out.speaker = Some(speaker);
                out.notes.extend(notes);
            }
            Err(note) => out.notes.push(note),
        }
    }
    for peer in peers {
        let name = peer.metadata.name.as_deref().unwrap_or_default();
        match peer_from_crd(peer) {
            Ok((mut cfg, notes)) => {
                out.notes.extend(notes.into_iter().map(|n| Note {
                    message: format!("BgpPeer `{name}`: {}", n.message),
                    ..n
                }));
                if !set_password(&mut cfg, peer, secrets, &local.secrets, &mut out.notes) {
                    out.held.insert(cfg.address);
                    continue;
                }
                match out.peers.entry(cfg.address) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        out.notes.push(Note::warning(format!(
                            "BgpPeer `{name}`: neighbour {} is configured twice; this one is ignored",
                            cfg.address
                        )))
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        // The controller's own session: it tells the router
                        // at once that a leader died (see docs/bfd.md).
                        if let Some(bfd) =
                            bfd_session(name, peer.spec.bfd.as_ref(), &cfg, &mut out.notes)
                        {
                            out.bfd.insert(cfg.address, (name.to_owned(), bfd));
                        }
                        v.insert(cfg);
                    }
                }
            }
            Err(why) => out
                .notes
                .push(Note::warning(format!("BgpPeer `{name}` is ignored: {why}"))),
        }
    }
    out
}

/// The seed's GoBGP-style TOML. Every key is either used or explained.
/// `router_id` is the replica's own (`--router-id`), used when the TOML sets
/// no `router-id`, as with BgpConf.
pub fn from_seed_toml(text: &str, router_id: Option<Ipv4Addr>) -> BgpDesired {
    let mut out = BgpDesired::default();
    let doc: toml::Table = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            out.notes.push(Note::warning(format!("ConfigMap porter-system/bgp-cfg is not valid TOML, so no BGP is configured from it: {e}")));
            return out;
        }
    };
    for (key, value) in &doc {
        match key.as_str() {
            "global" => seed_global(value, router_id, &mut out),
            "porter-config" => {
                for (k, _) in value.as_table().into_iter().flatten() {
                    let why = if k == "using-port-forward" {
                        "Porter connects out to its peers (or listens itself), so no port forwarding is set up"
                    } else {
                        "it is not a setting Porter knows"
                    };
                    out.notes.push(Note::info(format!(
                        "bgp-cfg: [porter-config] {k} does not apply: {why}"
                    )));
                }
            }
            "neighbors" => {
                for n in value.as_array().into_iter().flatten() {
                    seed_neighbor(n, &mut out);
                }
            }
            other => out.notes.push(Note::info(format!(
                "bgp-cfg: [{other}] does not apply to Porter's announce-only speaker"
            ))),
        }
    }
    out
}

fn seed_global(value: &toml::Value, own_router_id: Option<Ipv4Addr>, out: &mut BgpDesired) {
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
            // A value that is not a string is as wrong as one that does not parse.
            "router-id" => router_id = Some(v.as_str().unwrap_or_default().to_owned()),
            "port" => {
                port = v.as_integer().and_then(|p| match p {
                    p if p < 0 => None,
                    p => u16::try_from(p).ok(),
                })
            }
            other => out.notes.push(Note::info(format!(
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
            .push(Note::info(format!("bgp-cfg: [global.{k}] does not apply")));
    }
    match (
        local_as,
        bgp_config::router_id(router_id.as_deref(), own_router_id),
    ) {
        (Some(local_as), Some(router_id)) => {
            out.speaker = Some(SpeakerConfig {
                local_as,
                router_id,
                listen: port.map(|p| SocketAddr::new(IpAddr::from([0u16; 8]), p)),
                graceful_restart: Some(graceful_restart(DEFAULT_RESTART_TIME)),
            })
        }
        _ => out.notes.push(Note::warning(
            "bgp-cfg: [global.config] needs a valid `as`, and a `router-id` that is an IPv4 address \
             (or none, where this replica has an identifier of its own: porter-controller \
             --router-id); no BGP speaker runs",
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
        out.notes.push(Note::warning("bgp-cfg: a [[neighbors]] entry lacks a valid neighbor-address or peer-as; it is ignored"));
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
            out.notes.push(Note::info(format!(
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
            keepalive: None,
            connect_retry: Duration::from_secs(DEFAULT_CONNECT_RETRY.into()),
            md5_password: None,
            ebgp_multihop_ttl: None,
            min_ttl: None,
            add_path_send_max: send_max,
            families: vec![own_family(address)],
            local_address: None,
            next_hop_self: Vec::new(),
            policy: peer_policy(None),
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
    /// Bumped whenever `peers` changes.
    peers_version: u64,
    /// Version of the paths last sent.
    paths: Option<u64>,
    notes: Vec<Note>,
    /// The [`families_not_carried`] notes last found...
    family_notes: Vec<Note>,
    /// ...and the (paths, peers) versions they were found for.
    family_checked: Option<(u64, u64)>,
    bfd: BfdSessions,
}

impl BgpDriver {
    /// Forgets what was applied, so that the next calls re-send everything
    /// (after the sessions were closed).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Forgets which notes were reported, so that the next calls report
    /// them all again (a new leader writes their Events afresh), and keeps
    /// the sessions.
    pub fn forget_notes(&mut self) {
        self.notes.clear();
        self.family_notes.clear();
        self.family_checked = None;
    }

    /// Returns notes that are new since the last call, for logging once.
    pub fn configure(
        &mut self,
        mut desired: BgpDesired,
        announcer: &mut dyn Announcer,
    ) -> Vec<Note> {
        let fresh = fresh_notes(&desired.notes, &self.notes);
        self.notes = std::mem::take(&mut desired.notes);
        if desired.speaker != self.speaker {
            self.peers.clear();
            self.bfd.clear();
            self.peers_version += 1;
            self.paths = None;
            match &desired.speaker {
                Some(cfg) => announcer.start(cfg),
                None => announcer.stop(),
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
            self.peers_version += 1;
        }
        for (address, peer) in desired.peers {
            if self.peers.get(&address) != Some(&peer) {
                announcer.upsert_peer(&peer);
                self.peers.insert(address, peer);
                self.peers_version += 1;
            }
        }
        if desired.bfd != self.bfd {
            announcer.set_bfd(&desired.bfd);
            self.bfd = desired.bfd;
        }
        fresh
    }

    /// Warnings, new since the last call, for the sessions that would be
    /// sent paths of a family they do not carry (see
    /// [`families_not_carried`]). `bgp_peers` names the sessions. Looked at
    /// again only when the paths or the sessions changed.
    pub fn family_notes(
        &mut self,
        bgp_peers: &Snapshot,
        paths: &PathTable,
        version: u64,
    ) -> Vec<Note> {
        let checked = Some((version, self.peers_version));
        if self.family_checked == checked {
            return Vec::new();
        }
        let each_path = || {
            paths.iter().flat_map(|(prefix, hops)| {
                hops.iter()
                    .map(move |(_, attributes)| (prefix, attributes.as_ref()))
            })
        };
        let notes: Vec<Note> = bgp_peers
            .bgp_peers
            .iter()
            .filter_map(|crd| {
                let name = crd.metadata.name.as_deref()?;
                let address: IpAddr = crd.spec.conf.neighbor_address.trim().parse().ok()?;
                Some((name, self.peers.get(&address)?))
            })
            .flat_map(|(name, peer)| {
                families_not_carried(name, peer, "the controller", each_path())
            })
            .collect();
        let fresh = fresh_notes(&notes, &self.family_notes);
        self.family_notes = notes;
        self.family_checked = checked;
        fresh
    }

    /// Sends `paths` unless this `version` of them was sent already;
    /// returns whether it did.
    pub fn paths(
        &mut self,
        paths: &PathTable,
        version: u64,
        announcer: &mut dyn Announcer,
    ) -> bool {
        if self.speaker.is_none() || self.paths == Some(version) {
            return false;
        }
        announcer.set_paths(paths);
        self.paths = Some(version);
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
    Stop,
    Abandon,
    Upsert(PeerConfig),
    Remove(IpAddr),
    Paths(PathTable),
}

#[cfg(test)]
impl Announcer for Recorder {
    fn start(&mut self, config: &SpeakerConfig) {
        self.calls.push(Call::Start(config.clone()));
    }

    fn stop(&mut self) {
        self.calls.push(Call::Stop);
    }

    fn abandon(&mut self) {
        self.calls.push(Call::Abandon);
    }

    fn upsert_peer(&mut self, peer: &PeerConfig) {
        self.calls.push(Call::Upsert(peer.clone()));
    }

    fn remove_peer(&mut self, address: IpAddr) {
        self.calls.push(Call::Remove(address));
    }

    fn set_paths(&mut self, paths: &PathTable) {
        self.calls.push(Call::Paths(paths.clone()));
    }

    fn peer_status(&self) -> Vec<PeerStatus> {
        self.established.iter().map(|a| established(*a)).collect()
    }
}

/// An IPv4 session with AS 65001 that is up and has announced nothing, for
/// tests.
#[cfg(test)]
pub fn established(address: IpAddr) -> PeerStatus {
    PeerStatus {
        address,
        remote_as: 65001,
        state: porter_bgp::SessionState::Established,
        uptime: None,
        established_count: 1,
        messages_sent: 0,
        messages_received: 0,
        updates_sent: 0,
        paths_announced: 0,
        families: vec![porter_bgp::Family::Ipv4Unicast],
        add_path: vec![porter_bgp::Family::Ipv4Unicast],
        last_error: None,
        notifications_sent: Default::default(),
        notifications_received: Default::default(),
    }
}

#[cfg(test)]
mod tests;

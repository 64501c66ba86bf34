//! The pure translation of BgpConf/BgpPeer into porter-bgp's speaker and
//! peer settings, shared by the controller (controller mode) and the agent
//! (node mode).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use porter_bgp::PathAttributes;

use crate::bgp_policy::peer_policy;
use crate::crd::{BfdSpec, BgpConfSpec};
use crate::peer_auth::{self, SecretScope};
use crate::source::Snapshot;
use crate::{BgpPeer, BgpPeerNodeStatus};

pub use porter_bgp::DEFAULT_LISTEN_PORT;
pub const DEFAULT_REMOTE_PORT: u16 = 179;
pub const DEFAULT_HOLD_TIME: u16 = 90;
pub const DEFAULT_CONNECT_RETRY: u16 = 30;
/// OpenELB's default when a peer lists no afiSafis.
pub const DEFAULT_SEND_MAX: u8 = 10;
pub const DEFAULT_RESTART_TIME: u16 = 120;

pub use porter_bgp::{Family, GracefulRestart, PeerConfig, SpeakerConfig};

/// Graceful restart as Porter's speakers always run it. The restart flag is
/// set because a speaker always follows an earlier instance whose routes the
/// peers may still hold: a previous process, a previous leader or agent, or
/// the speaker a configuration change replaced.
pub fn graceful_restart(restart_time: u16) -> GracefulRestart {
    GracefulRestart {
        restart_time,
        restarting: true,
        long_lived_stale_time: None,
    }
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
/// Event reason: EIPs meant for the peer are of a family its session does not carry.
pub const REASON_FAMILY_NOT_CARRIED: &str = "FamilyNotCarried";

/// The notes of `now` that `before` did not have: each is reported once
/// while it holds, and again only after it went away and came back.
pub fn fresh_notes(now: &[Note], before: &[Note]) -> Vec<Note> {
    now.iter()
        .filter(|n| !before.contains(n))
        .cloned()
        .collect()
}

impl Note {
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            warning: false,
            message: message.into(),
            event: None,
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Self {
            warning: true,
            message: message.into(),
            event: None,
        }
    }
}

fn warn_peer(peer: &str, reason: &'static str, message: String) -> Note {
    Note {
        event: Some(PeerEvent {
            peer: peer.to_string(),
            reason,
        }),
        ..Note::warning(format!("BgpPeer `{peer}`: {message}"))
    }
}

/// A warning for each family of the paths meant for `peer` (BgpPeer `name`)
/// that its session does not carry. Without `afiSafis` a session carries
/// only its neighbour address's family, so a dual-stack cluster's other EIPs
/// would go unannounced without a word. `from` names the speaker ("node n1",
/// "the controller"); `paths` gives each path's prefix and attributes.
pub fn families_not_carried<'a>(
    name: &str,
    peer: &PeerConfig,
    from: &str,
    paths: impl IntoIterator<Item = (&'a IpNet, &'a PathAttributes)>,
) -> Vec<Note> {
    let mut meant = BTreeSet::new();
    for (prefix, attributes) in paths {
        if porter_bgp::applies_to(attributes, peer.address) {
            meant.insert(own_family(prefix.addr()));
        }
    }
    meant
        .into_iter()
        .filter(|family| !peer.families.contains(family))
        .map(|family| {
            let (name_of, afi) = match family {
                Family::Ipv4Unicast => ("IPv4", "AFI_IP"),
                Family::Ipv6Unicast => ("IPv6", "AFI_IP6"),
            };
            warn_peer(
                name,
                REASON_FAMILY_NOT_CARRIED,
                format!(
                    "{name_of} EIPs are not announced from {from} to {}: its session does not \
                     carry {name_of} unicast; list {{config: {{family: {{afi: {afi}, safi: \
                     SAFI_UNICAST}}}}}} in its spec.afiSafis, next to the family it carries now",
                    peer.address
                ),
            )
        })
        .collect()
}

/// Sets `config`'s TCP MD5 password from `peer` (see [`peer_auth`]), for
/// both speakers. Returns false when the password cannot be read now: the
/// caller then holds the peer, so a running session keeps the key it has and
/// none is started without one.
pub fn set_password(
    config: &mut PeerConfig,
    peer: &BgpPeer,
    secrets: &[Arc<Secret>],
    scope: &SecretScope,
    notes: &mut Vec<Note>,
) -> bool {
    let name = peer.metadata.name.as_deref().unwrap_or_default();
    match peer_auth::resolve(&peer.spec.conf, secrets, scope) {
        Ok(auth) => {
            config.md5_password = auth.password;
            notes.extend(
                auth.warning
                    .map(|w| warn_peer(name, REASON_AUTH_IN_SPEC, w)),
            );
            true
        }
        Err(e) => {
            notes.push(warn_peer(
                name,
                REASON_AUTH_UNAVAILABLE,
                format!("{e}; the session is not started or re-keyed until it is fixed"),
            ));
            false
        }
    }
}

/// The BGP identifier of a configuration that names `configured` (or none),
/// on a speaker whose own is `default`: the configured one wins, so that a
/// configuration which sets one behaves the same everywhere; None when the
/// configured one is not an IPv4 address, or neither exists.
pub fn router_id(configured: Option<&str>, default: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    match configured.map(str::parse::<Ipv4Addr>) {
        Some(parsed) => parsed.ok(),
        None => default,
    }
}

/// The speaker settings of the `default` BgpConf. `default_router_id` is
/// used when the BgpConf sets none (an agent passes its node's IPv4
/// InternalIP; a controller replica its `--router-id`).
pub fn speaker_from_conf(
    spec: &BgpConfSpec,
    default_router_id: Option<Ipv4Addr>,
) -> Result<(SpeakerConfig, Vec<Note>), Note> {
    let mut notes = Vec::new();
    let Some(router_id) = router_id(spec.router_id.as_deref(), default_router_id) else {
        return Err(Note::warning(format!(
            "BgpConf default: routerId {:?} is not an IPv4 address, and this speaker has no IPv4 address of its own to use instead (porter-controller's --router-id, a node's InternalIP for an agent); set one",
            spec.router_id.as_deref().unwrap_or("")
        )));
    };
    let listen = match spec.listen_port {
        None => Some(DEFAULT_LISTEN_PORT),
        Some(p) if p < 0 => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                notes.push(Note::warning(format!(
                    "BgpConf default: listenPort {p} is out of range; not listening"
                )));
                None
            }
        },
    };
    let gr = spec
        .graceful_restart
        .clone()
        .unwrap_or(crate::crd::GracefulRestart {
            enabled: true,
            restart_time: None,
        });
    if !gr.enabled && gr.restart_time.is_some() {
        // OpenELB's meaning (off unless enabled), but a restart time says
        // the user wanted it on: say so rather than ignore it.
        notes.push(Note::warning(
            "BgpConf default: gracefulRestart.restartTime is set but enabled is not true, so \
             graceful restart is off and a controller restart withdraws every route; set \
             gracefulRestart.enabled: true",
        ));
    }
    Ok((
        SpeakerConfig {
            local_as: spec.as_number,
            router_id,
            listen: listen.map(|p| SocketAddr::new(IpAddr::from([0u16; 8]), p)),
            graceful_restart: gr
                .enabled
                .then(|| graceful_restart(gr.restart_time.unwrap_or(DEFAULT_RESTART_TIME))),
        },
        notes,
    ))
}

/// Whether a BgpPeer's `nodeSelector` selects a node with these labels:
/// every key must be present with the same value; an empty selector selects
/// every node.
pub fn selects_node(peer: &BgpPeer, labels: &BTreeMap<String, String>) -> bool {
    peer.spec
        .node_selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

fn parse_family(afi: &str) -> Option<Family> {
    match afi.to_ascii_lowercase().as_str() {
        "afi_ip" | "ipv4" | "ipv4-unicast" => Some(Family::Ipv4Unicast),
        "afi_ip6" | "ipv6" | "ipv6-unicast" => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

pub fn own_family(address: IpAddr) -> Family {
    if address.is_ipv4() {
        Family::Ipv4Unicast
    } else {
        Family::Ipv6Unicast
    }
}

/// `BgpPeer.spec.bfd` ranges, in milliseconds and packets (as FRR and
/// MetalLB accept them).
pub const BFD_INTERVAL_MS: std::ops::RangeInclusive<u32> = 10..=60_000;
pub const BFD_DETECT_MULTIPLIER: std::ops::RangeInclusive<u8> = 2..=255;

/// The BFD timers `spec.bfd` asks for: `Ok(None)` without a `bfd` block,
/// the defaults (300 ms × 3) for what it leaves unset, and an error naming
/// the field for a value out of range.
pub fn bfd_timers(bfd: Option<&BfdSpec>) -> Result<Option<porter_bfd::Timers>, String> {
    let Some(bfd) = bfd else {
        return Ok(None);
    };
    let defaults = porter_bfd::Timers::default();
    let interval = |field: &str, value: Option<u32>, default: Duration| match value {
        None => Ok(default),
        Some(ms) if BFD_INTERVAL_MS.contains(&ms) => Ok(Duration::from_millis(ms.into())),
        Some(ms) => Err(format!(
            "bfd.{field} {ms} ms is out of range ({}-{} ms)",
            BFD_INTERVAL_MS.start(),
            BFD_INTERVAL_MS.end()
        )),
    };
    let detect_mult = match bfd.detect_multiplier {
        None => defaults.detect_mult,
        Some(m) if BFD_DETECT_MULTIPLIER.contains(&m) => m,
        Some(m) => {
            return Err(format!(
                "bfd.detectMultiplier {m} is out of range ({}-{})",
                BFD_DETECT_MULTIPLIER.start(),
                BFD_DETECT_MULTIPLIER.end()
            ));
        }
    };
    Ok(Some(porter_bfd::Timers {
        desired_min_tx: interval(
            "transmitInterval",
            bfd.transmit_interval,
            defaults.desired_min_tx,
        )?,
        required_min_rx: interval(
            "receiveInterval",
            bfd.receive_interval,
            defaults.required_min_rx,
        )?,
        detect_mult,
    }))
}

/// A BFD session with the neighbour of `config`: multihop exactly when
/// the BGP session is eBGP multihop, from the session's local address.
pub fn bfd_peer(config: &PeerConfig, timers: porter_bfd::Timers) -> porter_bfd::PeerConfig {
    porter_bfd::PeerConfig {
        key: porter_bfd::PeerKey {
            remote: config.address,
            multihop: config.ebgp_multihop_ttl.is_some(),
        },
        local: config.local_address,
        timers,
    }
}

/// The BFD session BgpPeer `name`'s `spec.bfd` asks for with the neighbour
/// of `config`, if any. A value out of range is a warning in `notes`, and
/// the BGP session runs without BFD until it is fixed.
pub fn bfd_session(
    name: &str,
    bfd: Option<&BfdSpec>,
    config: &PeerConfig,
    notes: &mut Vec<Note>,
) -> Option<porter_bfd::PeerConfig> {
    match bfd_timers(bfd) {
        Ok(timers) => timers.map(|timers| bfd_peer(config, timers)),
        Err(why) => {
            notes.push(Note::warning(format!(
                "BgpPeer `{name}`: {why}; BFD does not run with {} until it is fixed",
                config.address
            )));
            None
        }
    }
}

/// What `BgpPeer.status.nodes[].bfd` shows for a BFD session.
pub fn bfd_state_text(state: porter_bfd::State, diag: porter_bfd::Diag) -> String {
    match (state, diag) {
        (porter_bfd::State::Up, _) | (_, porter_bfd::Diag::None) => state.to_string(),
        _ => format!("{state} ({diag})"),
    }
}

pub fn peer_from_crd(peer: &BgpPeer) -> Result<(PeerConfig, Vec<Note>), String> {
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
    let keepalive = match timers.keepalive_interval {
        Some(0) => {
            notes.push(Note::warning(
                "timers.config.keepaliveInterval 0 is ignored: keepalives go out at a third of \
                 the hold time (a hold time of 0 turns them off)",
            ));
            None
        }
        interval => interval,
    };
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
                _ => notes.push(Note::warning(format!(
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
    let multihop = spec.ebgp_multihop.clone().unwrap_or_default();
    Ok((
        PeerConfig {
            address,
            remote_as: spec.conf.peer_as,
            remote_port: transport.remote_port.unwrap_or(DEFAULT_REMOTE_PORT),
            passive: transport.passive_mode,
            hold_time: timers.hold_time.unwrap_or(DEFAULT_HOLD_TIME),
            keepalive,
            connect_retry: Duration::from_secs(
                timers.connect_retry.unwrap_or(DEFAULT_CONNECT_RETRY).into(),
            ),
            // Set by the caller with `set_password`: it needs the Secrets.
            md5_password: None,
            ebgp_multihop_ttl: multihop
                .enabled
                .then(|| multihop.multihop_ttl.unwrap_or(255)),
            min_ttl: spec
                .ttl_security
                .as_ref()
                .filter(|t| t.enabled)
                .map(|t| t.ttl_min.unwrap_or(255)),
            add_path_send_max: if spec.afi_safis.is_empty() {
                DEFAULT_SEND_MAX
            } else {
                send_max.unwrap_or(0)
            },
            families,
            local_address,
            // Node mode sets it from the Node's addresses.
            next_hop_self: Vec::new(),
            policy: peer_policy(spec.policy.as_ref()),
        },
        notes,
    ))
}

/// The status writes that bring every BgpPeer's entry under `key` (a node
/// name, or the controller's) to `entries` (peer name → the entry; absent:
/// no session, so no entry): `(peer, entry)` for each BgpPeer whose entry
/// in the snapshot differs. Level-triggered, so an entry lost to a race is
/// written again.
pub fn status_changes(
    snapshot: &Snapshot,
    key: &str,
    entries: &BTreeMap<String, BgpPeerNodeStatus>,
) -> Vec<(String, Option<BgpPeerNodeStatus>)> {
    snapshot
        .bgp_peers
        .iter()
        .filter_map(|peer| {
            let name = peer.metadata.name.clone()?;
            let current = peer
                .status
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|e| e.node == key));
            let wanted = entries.get(&name);
            (current != wanted).then(|| (name, wanted.cloned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_defaults_to_300_ms_times_3_and_refuses_values_out_of_range() {
        assert_eq!(bfd_timers(None), Ok(None));
        assert_eq!(
            bfd_timers(Some(&BfdSpec::default())),
            Ok(Some(porter_bfd::Timers::default()))
        );
        let custom = BfdSpec {
            receive_interval: Some(100),
            transmit_interval: Some(50),
            detect_multiplier: Some(5),
        };
        assert_eq!(
            bfd_timers(Some(&custom)),
            Ok(Some(porter_bfd::Timers {
                desired_min_tx: Duration::from_millis(50),
                required_min_rx: Duration::from_millis(100),
                detect_mult: 5,
            }))
        );
        let too_fast = BfdSpec {
            receive_interval: Some(5),
            ..BfdSpec::default()
        };
        assert_eq!(
            bfd_timers(Some(&too_fast)),
            Err("bfd.receiveInterval 5 ms is out of range (10-60000 ms)".into())
        );
        let too_slow = BfdSpec {
            transmit_interval: Some(60_001),
            ..BfdSpec::default()
        };
        assert!(bfd_timers(Some(&too_slow)).is_err_and(|e| e.contains("transmitInterval")));
        let one = BfdSpec {
            detect_multiplier: Some(1),
            ..BfdSpec::default()
        };
        assert_eq!(
            bfd_timers(Some(&one)),
            Err("bfd.detectMultiplier 1 is out of range (2-255)".into())
        );
    }

    #[test]
    fn bfd_status_text_names_the_diagnostic_when_not_up() {
        use porter_bfd::{Diag, State};
        assert_eq!(
            bfd_state_text(State::Up, Diag::ControlDetectionTimeExpired),
            "Up"
        );
        assert_eq!(bfd_state_text(State::Init, Diag::None), "Init");
        assert_eq!(
            bfd_state_text(State::Down, Diag::ControlDetectionTimeExpired),
            "Down (control detection time expired)"
        );
    }
}

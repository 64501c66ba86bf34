use super::*;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use porter_api::bgp_config::{
    PeerEvent, REASON_AUTH_IN_SPEC, REASON_AUTH_UNAVAILABLE, REASON_FAMILY_NOT_CARRIED,
};
use porter_api::crd::{AddPaths, AddPathsConfig, AfiSafi, AfiSafiConfig, EbgpMultihop, Transport};
use porter_bgp::Family;

use crate::testing::{bgp_conf, bgp_peer};
use k8s_openapi::api::core::v1::Secret;
use std::sync::Arc;

/// One path for `prefix` via `hop`, for every peer or only for `only`.
fn path(prefix: &str, hop: &str, only: Option<&str>) -> (IpNet, porter_bgp::NextHops) {
    let attributes = porter_api::bgp_policy::PathAttributes {
        only_peers: only.map(|p| [ip(p)].into()),
        ..Default::default()
    };
    let prefix: IpNet = prefix.parse().expect("prefix");
    (
        prefix,
        [(ip(hop), Arc::new(attributes))].into_iter().collect(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// Whether one of `notes` is a warning that says `text`.
fn warns(notes: &[Note], text: &str) -> bool {
    notes.iter().any(|n| n.warning && n.message.contains(text))
}

#[test]
fn crds_translate_with_openelb_defaults() {
    let confs = [bgp_conf("default", Some("10.0.0.1"))];
    let peers = [
        bgp_peer("plain", "192.168.1.1", |_| {}),
        bgp_peer("full", "2001:db8::1", |s| {
            s.conf.auth_password = Some("s3cret".into());
            s.transport = Some(Transport {
                passive_mode: true,
                remote_port: Some(1790),
                local_address: Some("2001:db8::2".into()),
            });
            s.ebgp_multihop = Some(EbgpMultihop {
                enabled: true,
                multihop_ttl: None,
            });
            s.ttl_security = Some(porter_api::crd::TtlSecurity {
                enabled: true,
                ttl_min: Some(254),
            });
            s.afi_safis = vec![
                AfiSafi {
                    config: Some(AfiSafiConfig {
                        family: porter_api::crd::AfiSafiFamily {
                            afi: "AFI_IP".into(),
                            safi: "SAFI_UNICAST".into(),
                        },
                        enabled: true,
                    }),
                    add_paths: Some(AddPaths {
                        config: Some(AddPathsConfig { send_max: 4 }),
                    }),
                },
                AfiSafi {
                    config: Some(AfiSafiConfig {
                        family: porter_api::crd::AfiSafiFamily {
                            afi: "AFI_IP6".into(),
                            safi: "SAFI_UNICAST".into(),
                        },
                        enabled: true,
                    }),
                    add_paths: None,
                },
            ];
        }),
    ];
    let d = from_crds(&confs, &peers, &[], &LocalSettings::default());
    let speaker = d.speaker.expect("speaker");
    assert_eq!(speaker.local_as, 65000);
    assert_eq!(speaker.listen.map(|l| l.port()), Some(DEFAULT_LISTEN_PORT));
    assert_eq!(
        speaker.graceful_restart.map(|g| g.restart_time),
        Some(120),
        "graceful restart on by default"
    );
    let plain = &d.peers[&ip("192.168.1.1")];
    assert_eq!(
        (plain.remote_port, plain.hold_time, plain.add_path_send_max),
        (179, 90, 10)
    );
    assert_eq!(plain.families, [Family::Ipv4Unicast]);
    let full = &d.peers[&ip("2001:db8::1")];
    assert!(full.passive);
    assert_eq!(full.remote_port, 1790);
    assert_eq!(full.md5_password.as_deref(), Some("s3cret"));
    assert_eq!(full.ebgp_multihop_ttl, Some(255));
    assert_eq!(full.min_ttl, Some(254), "GTSM from ttlSecurity");
    assert_eq!(plain.min_ttl, None, "no GTSM unless asked");
    assert_eq!(full.add_path_send_max, 4);
    assert_eq!(full.families, [Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert_eq!(full.local_address, Some(ip("2001:db8::2")));
    let [note] = d.notes.as_slice() else {
        panic!("one note expected: {:?}", d.notes)
    };
    assert_eq!(
        note.event,
        Some(PeerEvent {
            peer: "full".into(),
            reason: REASON_AUTH_IN_SPEC
        }),
        "a plain-text password works, with a warning: {note:?}"
    );
}

#[test]
fn a_restart_time_without_enabled_leaves_graceful_restart_off_and_says_so() {
    // OpenELB's meaning: off unless enabled. The restart time shows intent,
    // so the user is told instead of silently ignored.
    let mut conf = bgp_conf("default", Some("10.0.0.1"));
    conf.spec.graceful_restart = Some(porter_api::crd::GracefulRestart {
        enabled: false,
        restart_time: Some(300),
    });
    let d = from_crds(&[conf.clone()], &[], &[], &LocalSettings::default());
    assert_eq!(d.speaker.expect("speaker").graceful_restart, None);
    assert!(
        warns(&d.notes, "gracefulRestart.enabled: true"),
        "{:?}",
        d.notes
    );
    conf.spec.graceful_restart = Some(porter_api::crd::GracefulRestart {
        enabled: true,
        restart_time: Some(300),
    });
    let d = from_crds(&[conf], &[], &[], &LocalSettings::default());
    assert_eq!(
        d.speaker
            .and_then(|s| s.graceful_restart)
            .map(|g| g.restart_time),
        Some(300)
    );
    assert!(d.notes.is_empty(), "{:?}", d.notes);
}

#[test]
fn bad_crds_are_refused_with_a_note() {
    let confs = [
        bgp_conf("default", None),
        bgp_conf("other", Some("10.0.0.1")),
    ];
    let peers = [
        bgp_peer("bad", "not-an-ip", |_| {}),
        bgp_peer("a", "192.168.1.1", |s| {
            s.node_selector = [("rack".to_string(), "1".to_string())].into()
        }),
        bgp_peer("b", "192.168.1.1", |_| {}),
    ];
    let d = from_crds(&confs, &peers, &[], &LocalSettings::default());
    assert_eq!(d.speaker, None);
    let text: Vec<&str> = d.notes.iter().map(|n| n.message.as_str()).collect();
    let has = |s: &str| text.iter().any(|t| t.contains(s));
    assert!(has("routerId"), "{text:?}");
    assert!(has("BgpConf `other` is ignored"), "{text:?}");
    assert!(has("BgpPeer `bad` is ignored: neighborAddress"), "{text:?}");
    assert!(has("configured twice"), "{text:?}");
    assert_eq!(d.peers.len(), 1);
}

#[test]
fn keepalive_interval_is_honoured_and_zero_refused_with_a_warning() {
    let with_keepalive = |name: &str, address: &str, seconds: u16| {
        bgp_peer(name, address, move |s| {
            s.timers = Some(porter_api::crd::Timers {
                config: Some(porter_api::crd::TimersConfig {
                    hold_time: Some(9),
                    keepalive_interval: Some(seconds),
                    connect_retry: None,
                }),
            });
        })
    };
    let peers = [
        with_keepalive("fast", "192.168.1.1", 1),
        with_keepalive("zero", "192.168.1.2", 0),
        bgp_peer("unset", "192.168.1.3", |_| {}),
    ];
    let d = from_crds(
        &[bgp_conf("default", Some("10.0.0.1"))],
        &peers,
        &[],
        &LocalSettings::default(),
    );
    let keepalive = |address: &str| d.peers[&ip(address)].keepalive;
    assert_eq!(keepalive("192.168.1.1"), Some(1));
    assert_eq!(keepalive("192.168.1.2"), None, "0 means the default");
    assert_eq!(keepalive("192.168.1.3"), None);
    let warnings: Vec<&str> = d
        .notes
        .iter()
        .filter(|n| n.warning)
        .map(|n| n.message.as_str())
        .collect();
    assert!(
        matches!(warnings.as_slice(), [w] if w.contains("BgpPeer `zero`") && w.contains("keepaliveInterval 0")),
        "{warnings:?}"
    );
}

#[test]
fn a_replica_uses_its_own_router_id_unless_the_bgpconf_sets_one() {
    let own = LocalSettings {
        router_id: Some(Ipv4Addr::new(172, 30, 0, 10)),
        ..Default::default()
    };
    let router_id = |conf: BgpConf, local: &LocalSettings| {
        from_crds(&[conf], &[], &[], local)
            .speaker
            .map(|s| s.router_id)
    };
    assert_eq!(
        router_id(bgp_conf("default", None), &own),
        own.router_id,
        "unset in the BgpConf: the replica's own"
    );
    assert_eq!(
        router_id(bgp_conf("default", Some("10.0.0.1")), &own),
        Some(Ipv4Addr::new(10, 0, 0, 1)),
        "set in the BgpConf: shared by every replica, as configured"
    );
    let neither = from_crds(
        &[bgp_conf("default", None)],
        &[],
        &[],
        &LocalSettings::default(),
    );
    assert_eq!(neither.speaker, None);
    assert!(warns(&neither.notes, "--router-id"), "{:?}", neither.notes);
}

const SEED_TOML: &str = r#"
[global.config]
  as = 65000
  router-id = "10.0.255.254"
  port = 17900
[porter-config]
  using-port-forward = true
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.10.12.1"
    peer-as = 65001
  [neighbors.add-paths.config]
    send-max = 8
[[neighbors]]
  neighbor-address = "10.10.12.2"
  peer-as = 65002
  [neighbors.timers]
    hold-time = 30
"#;

#[test]
fn seed_toml_translates_and_explains_what_does_not_apply() {
    let d = from_seed_toml(SEED_TOML, None);
    let s = d.speaker.expect("speaker");
    assert_eq!(
        (s.local_as, s.router_id),
        (65000, "10.0.255.254".parse().expect("id"))
    );
    assert_eq!(s.listen.map(|l| l.port()), Some(17900));
    assert_eq!(d.peers[&ip("10.10.12.1")].add_path_send_max, 8);
    assert_eq!(d.peers[&ip("10.10.12.1")].remote_as, 65001);
    assert_eq!(d.peers[&ip("10.10.12.2")].remote_as, 65002);
    let text: Vec<&str> = d.notes.iter().map(|n| n.message.as_str()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("using-port-forward does not apply: Porter connects out")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("10.10.12.2: timers does not apply")),
        "{text:?}"
    );
    assert!(
        from_seed_toml("[global", None).notes[0]
            .message
            .contains("not valid TOML")
    );
}

#[test]
fn the_seed_takes_the_replicas_own_router_id_when_it_sets_none() {
    let own = Some(Ipv4Addr::new(172, 30, 0, 10));
    let without = SEED_TOML.replace("router-id = \"10.0.255.254\"", "");
    let router_id = |text: &str, own| from_seed_toml(text, own).speaker.map(|s| s.router_id);
    assert_eq!(
        router_id(&without, own),
        own,
        "unset in the seed: the replica's own"
    );
    assert_eq!(
        router_id(SEED_TOML, own),
        Some(Ipv4Addr::new(10, 0, 255, 254)),
        "set in the seed: as configured"
    );
    let bad = SEED_TOML.replace("\"10.0.255.254\"", "\"spine-1\"");
    for (text, own, case) in [
        (without.as_str(), None, "neither"),
        (
            bad.as_str(),
            own,
            "not an address, which the replica's own does not paper over",
        ),
    ] {
        let d = from_seed_toml(text, own);
        assert_eq!(d.speaker, None, "{case}");
        assert!(warns(&d.notes, "--router-id"), "{case}: {:?}", d.notes);
    }
}

#[test]
fn crds_win_over_the_seed_configmap_with_a_warning() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::Arc;
    let cm = ConfigMap {
        data: Some([("config.toml".to_string(), SEED_TOML.to_string())].into()),
        ..Default::default()
    };
    let mut snap = Snapshot {
        config_maps: vec![Arc::new(cm)],
        ..Default::default()
    };
    assert_eq!(
        desired(&snap, &LocalSettings::default()).peers.len(),
        2,
        "the seed alone configures BGP"
    );
    snap.bgp_confs = vec![Arc::new(bgp_conf("default", Some("10.0.0.1")))];
    snap.bgp_peers = vec![Arc::new(bgp_peer("p", "192.168.9.9", |_| {}))];
    let d = desired(&snap, &LocalSettings::default());
    assert_eq!(
        d.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.168.9.9")]
    );
    assert!(warns(&d.notes, "the CRDs win"), "{:?}", d.notes);
}

#[test]
fn driver_changes_only_what_changed() {
    let mut rec = Recorder::default();
    let mut driver = BgpDriver::default();
    let confs = [bgp_conf("default", Some("10.0.0.1"))];
    let a = bgp_peer("a", "192.168.1.1", |_| {});
    let b = bgp_peer("b", "192.168.1.2", |_| {});
    let b2 = bgp_peer("b", "192.168.1.2", |s| s.conf.peer_as = 65099);
    let c = bgp_peer("c", "192.168.1.3", |_| {});

    driver.configure(
        from_crds(&confs, [&a, &b], &[], &LocalSettings::default()),
        &mut rec,
    );
    assert!(matches!(rec.calls[0], Call::Start(_)));
    assert_eq!(rec.calls.len(), 3);
    rec.calls.clear();

    driver.configure(
        from_crds(&confs, [&a, &b2, &c], &[], &LocalSettings::default()),
        &mut rec,
    );
    let changed: Vec<_> = rec
        .calls
        .iter()
        .map(|c| match c {
            Call::Upsert(p) => p.address.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        changed,
        ["192.168.1.2", "192.168.1.3"],
        "peer a keeps its session"
    );
    rec.calls.clear();

    driver.configure(
        from_crds(&confs, [&a, &c], &[], &LocalSettings::default()),
        &mut rec,
    );
    assert_eq!(rec.calls, [Call::Remove(ip("192.168.1.2"))]);
    rec.calls.clear();

    let paths: PathTable = [path("10.9.0.1/32", "192.168.0.10", None)].into();
    assert!(driver.paths(&paths, 1, &mut rec));
    assert!(
        !driver.paths(&paths, 1, &mut rec),
        "unchanged routes are not re-sent"
    );

    // A new router id restarts the speaker and re-adds every peer and route.
    rec.calls.clear();
    driver.configure(
        from_crds(
            &[bgp_conf("default", Some("10.0.0.2"))],
            [&a, &c],
            &[],
            &LocalSettings::default(),
        ),
        &mut rec,
    );
    assert!(matches!(rec.calls[0], Call::Start(_)));
    assert_eq!(rec.calls.len(), 3);
    assert!(driver.paths(&paths, 1, &mut rec));
}

/// `speakerMode: node`: the controller runs no speaker (a running one is
/// stopped, and restarted when the mode goes back), and says why.
#[test]
fn node_mode_stops_the_controller_speaker_and_controller_mode_restarts_it() {
    let mut rec = Recorder::default();
    let mut driver = BgpDriver::default();
    let controller_mode = [bgp_conf("default", Some("10.0.0.1"))];
    let mut node_mode = bgp_conf("default", Some("10.0.0.1"));
    node_mode.spec.speaker_mode = Some(SpeakerMode::Node);
    let node_mode = [node_mode];
    let a = bgp_peer("a", "192.168.1.1", |s| {
        s.node_selector = [("rack".to_string(), "1".to_string())].into()
    });

    driver.configure(
        from_crds(&controller_mode, [&a], &[], &LocalSettings::default()),
        &mut rec,
    );
    assert!(matches!(rec.calls[..], [Call::Start(_), Call::Upsert(_)]));
    rec.calls.clear();

    let desired = from_crds(&node_mode, [&a], &[], &LocalSettings::default());
    assert_eq!((desired.speaker.clone(), desired.peers.len()), (None, 0));
    assert!(
        desired
            .notes
            .iter()
            .any(|n| n.message.contains("speakerMode is node")),
        "{:?}",
        desired.notes
    );
    driver.configure(desired, &mut rec);
    assert_eq!(rec.calls, [Call::Stop]);
    rec.calls.clear();
    let paths: PathTable = [path("10.9.0.1/32", "192.168.0.10", None)].into();
    assert!(
        !driver.paths(&paths, 7, &mut rec),
        "no announcements in node mode"
    );

    driver.configure(
        from_crds(&controller_mode, [&a], &[], &LocalSettings::default()),
        &mut rec,
    );
    assert!(matches!(rec.calls[..], [Call::Start(_), Call::Upsert(_)]));
}

#[test]
fn controller_status_entries_name_the_bgppeers_it_has_sessions_with() {
    let snap = Snapshot {
        bgp_peers: vec![
            std::sync::Arc::new(bgp_peer("up", "192.168.1.1", |_| {})),
            std::sync::Arc::new(bgp_peer("unknown", "192.168.1.2", |_| {})),
        ],
        ..Default::default()
    };
    let session = porter_bgp::PeerStatus {
        paths_announced: 4,
        ..established(ip("192.168.1.1"))
    };
    let sessions = [session];
    let entries = status_entries(&snap, &sessions, &BTreeMap::new());
    assert_eq!(
        entries.into_iter().collect::<Vec<_>>(),
        [(
            "up".to_owned(),
            BgpPeerNodeStatus {
                node: "controller".into(),
                state: "Established".into(),
                paths_announced: 4,
                last_error: None,
                bfd: None,
            }
        )]
    );
}

fn auth_secret(value: &str) -> Arc<Secret> {
    Arc::new(Secret {
        metadata: ObjectMeta {
            name: Some("bgp-auth".into()),
            namespace: Some("porter-system".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "password".to_string(),
                k8s_openapi::ByteString(value.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    })
}

#[test]
fn a_secret_password_keys_only_its_peer_and_a_missing_one_starts_nothing() {
    let confs = [bgp_conf("default", Some("10.0.0.1"))];
    let scope = LocalSettings::default();
    let a = bgp_peer("a", "192.168.1.1", |s| {
        s.conf.auth_password_secret_ref = Some(porter_api::crd::SecretKeyRef {
            name: "bgp-auth".into(),
            key: "password".into(),
            namespace: None,
        })
    });
    let b = bgp_peer("b", "192.168.1.2", |_| {});
    let upserts = |rec: &Recorder| -> Vec<(IpAddr, Option<String>)> {
        rec.calls
            .iter()
            .filter_map(|c| match c {
                Call::Upsert(p) => Some((p.address, p.md5_password.clone())),
                Call::Remove(a) => Some((*a, Some("removed".into()))),
                _ => None,
            })
            .collect()
    };
    let unavailable = |notes: &[Note]| {
        notes.iter().any(|n| {
            n.warning
                && n.event
                    == Some(PeerEvent {
                        peer: "a".into(),
                        reason: REASON_AUTH_UNAVAILABLE,
                    })
                && n.message.contains("Secret porter-system/bgp-auth")
        })
    };
    let mut rec = Recorder::default();
    let mut driver = BgpDriver::default();

    // No Secret yet: peer a is not started (never without its key), b is.
    let d = from_crds(&confs, [&a, &b], &[], &scope);
    assert_eq!(d.held, [ip("192.168.1.1")].into());
    let notes = driver.configure(d, &mut rec);
    assert!(unavailable(&notes), "{notes:?}");
    assert_eq!(upserts(&rec), [(ip("192.168.1.2"), None)]);
    rec.calls.clear();

    // The Secret appears: a starts with its password; b is untouched.
    let d = from_crds(&confs, [&a, &b], &[auth_secret("one")], &scope);
    driver.configure(d, &mut rec);
    assert_eq!(upserts(&rec), [(ip("192.168.1.1"), Some("one".into()))]);
    rec.calls.clear();

    // A new value re-keys a alone.
    let d = from_crds(&confs, [&a, &b], &[auth_secret("two")], &scope);
    driver.configure(d, &mut rec);
    assert_eq!(upserts(&rec), [(ip("192.168.1.1"), Some("two".into()))]);
    rec.calls.clear();

    // The Secret goes: a's running session keeps its key, and says why.
    let notes = driver.configure(from_crds(&confs, [&a, &b], &[], &scope), &mut rec);
    assert!(unavailable(&notes), "{notes:?}");
    assert!(upserts(&rec).is_empty(), "{:?}", rec.calls);

    // The BgpPeer goes too: its session is removed.
    driver.configure(from_crds(&confs, [&b], &[], &scope), &mut rec);
    assert_eq!(upserts(&rec), [(ip("192.168.1.1"), Some("removed".into()))]);
}

#[test]
fn eips_of_a_family_a_session_does_not_carry_are_warned_about_once() {
    // `plain` has no afiSafis: its IPv4 session carries IPv4 only.
    let peers = [bgp_peer("plain", "192.168.1.1", |_| {})];
    let desired = from_crds(
        &[bgp_conf("default", Some("10.0.0.1"))],
        &peers,
        &[],
        &LocalSettings::default(),
    );
    let mut driver = BgpDriver::default();
    driver.configure(desired, &mut Recorder::default());
    let snap = Snapshot {
        bgp_peers: peers.iter().cloned().map(Arc::new).collect(),
        ..Default::default()
    };
    let v4_only: PathTable = [path("192.0.2.1/32", "10.0.0.11", None)].into();
    assert_eq!(driver.family_notes(&snap, &v4_only, 1), []);
    let dual: PathTable = [
        path("192.0.2.1/32", "10.0.0.11", None),
        path("2001:db8::1/128", "fd00::11", None),
    ]
    .into();
    let notes = driver.family_notes(&snap, &dual, 2);
    let [note] = notes.as_slice() else {
        panic!("one note expected: {notes:?}")
    };
    assert!(
        note.warning
            && note.message.starts_with(
                "BgpPeer `plain`: IPv6 EIPs are not announced from the controller to 192.168.1.1"
            )
            && note.message.contains("afi: AFI_IP6"),
        "{note:?}"
    );
    assert_eq!(
        note.event,
        Some(PeerEvent {
            peer: "plain".into(),
            reason: REASON_FAMILY_NOT_CARRIED
        })
    );
    // Said once while it holds, even when the paths change again.
    let more: PathTable = [
        path("2001:db8::1/128", "fd00::11", None),
        path("2001:db8::2/128", "fd00::12", None),
    ]
    .into();
    assert_eq!(driver.family_notes(&snap, &more, 3), []);
    // IPv6 paths scoped to other peers are not meant for it.
    let scoped: PathTable = [path("2001:db8::1/128", "fd00::11", Some("fd00::1"))].into();
    assert_eq!(driver.family_notes(&snap, &scoped, 4), []);
}

#[test]
fn long_lived_keeps_the_routes_for_the_restart_time_then_as_long_lived_stale() {
    let speaker = SpeakerConfig {
        local_as: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        listen: None,
        graceful_restart: Some(graceful_restart(300)),
    };
    let gr = long_lived(speaker.clone(), RESTART_SECONDS)
        .graceful_restart
        .expect("still graceful");
    assert_eq!(
        (gr.restart_time, gr.long_lived_stale_time, gr.restarting),
        (1, Some(299), true),
        "kept as long as configured in all"
    );
    // A configured restart time below the asked one is all restart time; applied twice (a
    // restart of the same settings) it changes nothing more; without
    // graceful restart there is nothing to keep.
    let short = long_lived(speaker.clone(), 600)
        .graceful_restart
        .expect("graceful");
    assert_eq!(
        (short.restart_time, short.long_lived_stale_time),
        (300, Some(0))
    );
    assert_eq!(
        long_lived(long_lived(speaker.clone(), 1), 1),
        long_lived(speaker.clone(), 1)
    );
    let off = SpeakerConfig {
        graceful_restart: None,
        ..speaker
    };
    assert_eq!(long_lived(off.clone(), 1), off);
}

#[test]
fn spec_bfd_runs_bfd_beside_the_controllers_own_session() {
    let confs = [bgp_conf("default", Some("10.0.0.1"))];
    let peers = [
        bgp_peer("fast", "192.168.1.1", |s| {
            s.bfd = Some(porter_api::crd::BfdSpec {
                transmit_interval: Some(100),
                ..Default::default()
            })
        }),
        bgp_peer("plain", "192.168.1.2", |_| {}),
        bgp_peer("wrong", "192.168.1.3", |s| {
            s.bfd = Some(porter_api::crd::BfdSpec {
                detect_multiplier: Some(1),
                ..Default::default()
            })
        }),
    ];
    let d = from_crds(&confs, &peers, &[], &LocalSettings::default());
    let (name, fast) = &d.bfd[&ip("192.168.1.1")];
    assert_eq!(name, "fast");
    assert_eq!(
        (fast.key.remote, fast.key.multihop),
        (ip("192.168.1.1"), false)
    );
    assert_eq!(
        fast.timers.desired_min_tx,
        std::time::Duration::from_millis(100)
    );
    assert_eq!(d.bfd.len(), 1, "no bfd block, or a bad one: no BFD");
    assert!(
        d.peers.contains_key(&ip("192.168.1.3")),
        "a bad bfd block leaves the BGP session running"
    );
    assert!(d.notes.iter().any(|n| {
        n.warning
            && n.message
                .contains("BgpPeer `wrong`: bfd.detectMultiplier 1 is out of range")
    }));

    // The BFD state shows in the controller's status entry of that peer.
    let snap = Snapshot {
        bgp_peers: peers.iter().cloned().map(Arc::new).collect(),
        ..Default::default()
    };
    let sessions = [
        established(ip("192.168.1.1")),
        established(ip("192.168.1.2")),
    ];
    let states = BTreeMap::from([(ip("192.168.1.1"), "Up".to_owned())]);
    let entries = status_entries(&snap, &sessions, &states);
    assert_eq!(entries["fast"].bfd.as_deref(), Some("Up"));
    assert_eq!(entries["plain"].bfd, None);
}

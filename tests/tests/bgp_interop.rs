//! Porter's BGP speaker against the daemons real routers run: BIRD 2, FRR and
//! GoBGP, each in its own netns lab. For each: the session establishes with
//! TCP MD5; a prefix with two next hops becomes an ECMP route (kernel FIB for
//! BIRD and FRR, RIB for GoBGP, which installs nothing itself); an IPv6 prefix
//! with v6 next hops works; a withdraw removes the route; a router restart
//! re-establishes and re-announces; a graceful restart of our speaker keeps
//! the routes throughout; a wrong MD5 password does not establish. With
//! BIRD: KEEPALIVEs as often as `keepaliveInterval` asks.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use porter_bgp::{Family, GracefulRestart, PeerConfig, SessionState, Speaker, SpeakerConfig};
use porter_tests::{
    lab::{Lab, wait_for},
    netns_runtime::NetnsRuntime,
    routers::{BgpLab, Daemon, Neighbor, ROUTER_V4, Router, RouterConfig, SPEAKER_V4},
};

const PASSWORD: &str = "porter-md5-secret";
const V4_PREFIX: &str = "192.0.2.10/32";
const V6_PREFIX: &str = "2001:db8:10::/64";
const SETTLE: Duration = Duration::from_secs(30);

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().filter_map(|ip| ip.parse().ok()).collect()
}

fn announcement() -> BTreeMap<IpNet, BTreeSet<IpAddr>> {
    let mut routes = BTreeMap::new();
    routes.insert(
        V4_PREFIX.parse().expect("v4 prefix"),
        ips(&["172.30.0.11", "172.30.0.12"]),
    );
    routes.insert(
        V6_PREFIX.parse().expect("v6 prefix"),
        ips(&["fd00:30::11", "fd00:30::12"]),
    );
    routes
}

fn peer(password: &str) -> PeerConfig {
    let mut peer = PeerConfig::new(ROUTER_V4.parse().expect("router"), 65001);
    peer.connect_retry = Duration::from_millis(500);
    peer.hold_time = 9;
    peer.md5_password = Some(password.into());
    peer.families = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
    peer
}

struct PorterSpeaker {
    runtime: NetnsRuntime,
    speaker: Option<Speaker>,
}

impl PorterSpeaker {
    /// A speaker with graceful restart (restart time 120 s).
    fn start(ns: &str, restarting: bool) -> Result<Self> {
        Self::start_with(
            ns,
            SpeakerConfig {
                local_as: 65000,
                router_id: Ipv4Addr::new(172, 30, 0, 10),
                listen: None,
                graceful_restart: Some(GracefulRestart {
                    restart_time: 120,
                    restarting,
                    long_lived_stale_time: None,
                }),
            },
        )
    }

    fn start_with(ns: &str, config: SpeakerConfig) -> Result<Self> {
        let runtime = NetnsRuntime::new(ns)?;
        let speaker = runtime.run(async move { Speaker::start(config).await })??;
        Ok(Self {
            runtime,
            speaker: Some(speaker),
        })
    }

    fn speaker(&self) -> Result<Speaker> {
        self.speaker.clone().context("speaker stopped")
    }

    fn upsert(&self, peer: PeerConfig) -> Result<()> {
        let speaker = self.speaker()?;
        self.runtime
            .run(async move { speaker.upsert_peer(peer).await })
    }

    fn set_routes(&self, routes: BTreeMap<IpNet, BTreeSet<IpAddr>>) -> Result<()> {
        let speaker = self.speaker()?;
        self.runtime
            .run(async move { speaker.set_routes(routes).await })
    }

    fn status(&self) -> Result<Vec<porter_bgp::PeerStatus>> {
        let speaker = self.speaker()?;
        self.runtime.run(async move { speaker.peer_status().await })
    }

    fn state(&self) -> Result<SessionState> {
        let speaker = self.speaker()?;
        let status = self
            .runtime
            .run(async move { speaker.peer_status().await })?;
        status.first().map(|s| s.state).context("no peer")
    }

    /// Stops the speaker; with graceful restart configured, without a NOTIFICATION.
    fn stop(mut self) -> Result<()> {
        if let Some(speaker) = self.speaker.take() {
            self.runtime.run(async move { speaker.shutdown().await })?;
        }
        Ok(())
    }
}

fn wait_established(lab: &BgpLab, router: &Router, speaker: &PorterSpeaker) -> Result<()> {
    wait_for("the session to reach Established", SETTLE, || {
        Ok((speaker.state()? == SessionState::Established
            && router.established(&lab.lab, "172.30.0.10".parse()?)?)
        .then_some(()))
    })
    .with_context(|| {
        format!(
            "speaker: {:?}\nrouter: {}",
            speaker.status(),
            router.describe(&lab.lab)
        )
    })
}

fn wait_next_hops(
    lab: &BgpLab,
    router: &Router,
    prefix: &str,
    expected: &BTreeSet<IpAddr>,
) -> Result<()> {
    wait_for(
        &format!("{prefix} via {expected:?} on the router"),
        SETTLE,
        || {
            let hops = router.next_hops(&lab.lab, prefix)?;
            Ok((&hops == expected).then_some(()))
        },
    )
    .with_context(|| {
        format!(
            "router has {prefix} via {:?}",
            router.next_hops(&lab.lab, prefix).unwrap_or_default()
        )
    })
}

fn interop(daemon: Daemon) -> Result<()> {
    let mut lab = BgpLab::new(&format!("{daemon:?}").to_lowercase())?;
    let router = lab.start_router(daemon, Some(PASSWORD), true, true)?;
    let v4_hops = ips(&["172.30.0.11", "172.30.0.12"]);
    let v6_hops = ips(&["fd00:30::11", "fd00:30::12"]);

    // MD5 with the right password establishes; routes become ECMP.
    let speaker = PorterSpeaker::start(&lab.speaker_ns, false)?;
    speaker.upsert(peer(PASSWORD))?;
    speaker.set_routes(announcement())?;
    wait_established(&lab, &router, &speaker)?;
    wait_next_hops(&lab, &router, V4_PREFIX, &v4_hops)?;
    wait_next_hops(&lab, &router, V6_PREFIX, &v6_hops)?;

    // Withdraw removes the routes.
    speaker.set_routes(BTreeMap::new())?;
    wait_next_hops(&lab, &router, V4_PREFIX, &BTreeSet::new())?;
    wait_next_hops(&lab, &router, V6_PREFIX, &BTreeSet::new())?;

    // A router restart re-establishes and we re-announce.
    speaker.set_routes(announcement())?;
    wait_next_hops(&lab, &router, V4_PREFIX, &v4_hops)?;
    router.restart(&mut lab.lab)?;
    wait_established(&lab, &router, &speaker)?;
    wait_next_hops(&lab, &router, V4_PREFIX, &v4_hops)?;
    wait_next_hops(&lab, &router, V6_PREFIX, &v6_hops)?;

    // Graceful restart of our speaker: the router keeps the routes while we
    // are gone and after we are back.
    speaker.stop()?;
    let down_since = Instant::now();
    wait_for("the router to notice the speaker is gone", SETTLE, || {
        Ok((!router.established(&lab.lab, "172.30.0.10".parse()?)?).then_some(()))
    })?;
    while down_since.elapsed() < Duration::from_secs(3) {
        ensure!(
            router.next_hops(&lab.lab, V4_PREFIX)? == v4_hops,
            "the router dropped {V4_PREFIX} while the speaker restarted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let speaker = PorterSpeaker::start(&lab.speaker_ns, true)?;
    speaker.upsert(peer(PASSWORD))?;
    speaker.set_routes(announcement())?;
    let mut observed_gap = false;
    wait_for("the restarted speaker to re-establish", SETTLE, || {
        if router.next_hops(&lab.lab, V4_PREFIX)? != v4_hops {
            observed_gap = true;
        }
        Ok((speaker.state()? == SessionState::Established).then_some(()))
    })?;
    ensure!(!observed_gap, "{V4_PREFIX} disappeared during the restart");
    // After End-of-RIB the router keeps (now refreshed) routes.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(router.next_hops(&lab.lab, V4_PREFIX)? == v4_hops);
    ensure!(router.next_hops(&lab.lab, V6_PREFIX)? == v6_hops);

    // A wrong MD5 password never establishes.
    speaker.upsert(peer("wrong-password"))?;
    std::thread::sleep(Duration::from_secs(5));
    ensure!(
        speaker.state()? != SessionState::Established
            && !router.established(&lab.lab, "172.30.0.10".parse()?)?,
        "a session came up with the wrong MD5 password"
    );
    speaker.stop()?;
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bird_interop() -> Result<()> {
    interop(Daemon::Bird)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_interop() -> Result<()> {
    interop(Daemon::Frr)
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn gobgp_interop() -> Result<()> {
    interop(Daemon::Gobgp)
}

/// `keepalive`: the speaker sends BIRD a KEEPALIVE every second when asked
/// to, and every third of the hold time (3 s here) by default, counted as
/// the data segments its session's socket sends while no UPDATE is due.
/// BIRD 2.0 acts on some timers only when something wakes it, which a
/// KEEPALIVE every second bounds (docs/bfd.md).
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn keepalives_go_to_bird_as_often_as_configured() -> Result<()> {
    let mut lab = BgpLab::new("keepalive")?;
    let router = lab.start_router(Daemon::Bird, Some(PASSWORD), true, true)?;
    let speaker = PorterSpeaker::start(&lab.speaker_ns, false)?;
    // The data segments the speaker's session to the router has sent.
    let sent = || -> Result<u64> {
        let shown = lab
            .lab
            .exec(&lab.speaker_ns, &["ss", "-tin", "dst", ROUTER_V4])?;
        shown
            .split_whitespace()
            .find_map(|field| field.strip_prefix("data_segs_out:"))
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("no data_segs_out in {shown}"))
    };
    // KEEPALIVEs (nothing else is sent) over 6 s of a session with `keepalive`.
    let keepalives_in_6s = |keepalive: Option<u16>| -> Result<u64> {
        speaker.upsert(PeerConfig {
            keepalive,
            ..peer(PASSWORD)
        })?;
        wait_established(&lab, &router, &speaker)?;
        let before = sent()?;
        std::thread::sleep(Duration::from_secs(6));
        Ok(sent()? - before)
    };
    let every_second = keepalives_in_6s(Some(1))?;
    let default = keepalives_in_6s(None)?;
    eprintln!(
        "KEEPALIVEs in 6 s: {every_second} with keepaliveInterval 1, {default} by default (hold time 9 s)"
    );
    ensure!(
        (5..=7).contains(&every_second),
        "{every_second} KEEPALIVEs in 6 s with one a second"
    );
    ensure!(
        (1..=3).contains(&default),
        "{default} KEEPALIVEs in 6 s with one every 3 s"
    );
    speaker.stop()
}

/// Passive mode: the speaker listens on the seed's port 17900 with an MD5
/// key for its configured peer, and BIRD connects to it.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bird_connects_to_passive_speaker_with_md5() -> Result<()> {
    let mut lab = BgpLab::new("passive")?;
    let ns = lab.router_ns.clone();
    let router = Router::start(
        &mut lab.lab,
        &ns,
        RouterConfig {
            daemon: Daemon::Bird,
            router_id: ROUTER_V4.into(),
            local_address: ROUTER_V4.parse()?,
            local_as: 65001,
            neighbors: vec![Neighbor {
                md5_password: Some(PASSWORD.into()),
                port: Some(porter_bgp::DEFAULT_LISTEN_PORT),
                ..Neighbor::new(SPEAKER_V4.parse()?, 65000)
            }],
            graceful_restart: false,
            passive: false,
        },
    )?;
    let speaker = PorterSpeaker::start_with(
        &lab.speaker_ns,
        SpeakerConfig {
            local_as: 65000,
            router_id: Ipv4Addr::new(172, 30, 0, 10),
            listen: Some(format!("{SPEAKER_V4}:{}", porter_bgp::DEFAULT_LISTEN_PORT).parse()?),
            graceful_restart: None,
        },
    )?;
    let mut passive = peer(PASSWORD);
    passive.passive = true;
    speaker.upsert(passive)?;
    speaker.set_routes(announcement())?;
    wait_established(&lab, &router, &speaker)?;
    wait_next_hops(
        &lab,
        &router,
        V4_PREFIX,
        &ips(&["172.30.0.11", "172.30.0.12"]),
    )?;
    speaker.stop()
}

/// eBGP multihop: with the router two hops away, the default eBGP TTL of 1
/// never reaches it; a multihop TTL of 2 establishes.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn ebgp_multihop_ttl_reaches_a_router_two_hops_away() -> Result<()> {
    let mut lab = Lab::new("multihop")?;
    let router_ns = lab.netns("r")?;
    let middle = lab.netns("mid")?;
    let speaker_ns = lab.netns("ctl")?;
    lab.veth((&router_ns, "eth0"), (&middle, "eth0"))?;
    lab.veth((&middle, "eth1"), (&speaker_ns, "eth0"))?;
    lab.addr(&router_ns, "eth0", "172.30.0.1/24")?;
    lab.addr(&middle, "eth0", "172.30.0.2/24")?;
    lab.addr(&middle, "eth1", "172.29.0.1/24")?;
    lab.addr(&speaker_ns, "eth0", "172.29.0.10/24")?;
    lab.exec(&middle, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    lab.ip(
        &router_ns,
        &["route", "add", "172.29.0.0/24", "via", "172.30.0.2"],
    )?;
    lab.ip(
        &speaker_ns,
        &["route", "add", "default", "via", "172.29.0.1"],
    )?;
    let router = Router::start(
        &mut lab,
        &router_ns,
        RouterConfig {
            daemon: Daemon::Bird,
            router_id: ROUTER_V4.into(),
            local_address: ROUTER_V4.parse()?,
            local_as: 65001,
            neighbors: vec![Neighbor {
                multihop: Some(2),
                ..Neighbor::new("172.29.0.10".parse()?, 65000)
            }],
            graceful_restart: false,
            passive: true,
        },
    )?;
    let speaker = PorterSpeaker::start_with(
        &speaker_ns,
        SpeakerConfig {
            local_as: 65000,
            router_id: Ipv4Addr::new(172, 29, 0, 10),
            listen: None,
            graceful_restart: None,
        },
    )?;
    let mut single_hop = PeerConfig::new(ROUTER_V4.parse()?, 65001);
    single_hop.connect_retry = Duration::from_millis(500);
    speaker.upsert(single_hop.clone())?;
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        speaker.state()? != SessionState::Established,
        "an eBGP session with TTL 1 crossed a router"
    );

    let mut multihop = single_hop;
    multihop.ebgp_multihop_ttl = Some(2);
    speaker.upsert(multihop)?;
    speaker.set_routes(BTreeMap::from([(
        V4_PREFIX.parse()?,
        ips(&["172.30.0.11", "172.30.0.12"]),
    )]))?;
    wait_for("the multihop session", SETTLE, || {
        Ok((speaker.state()? == SessionState::Established
            && router.established(&lab, "172.29.0.10".parse()?)?)
        .then_some(()))
    })?;
    wait_for("the ECMP route over the multihop session", SETTLE, || {
        Ok(
            (router.next_hops(&lab, V4_PREFIX)? == ips(&["172.30.0.11", "172.30.0.12"]))
                .then_some(()),
        )
    })?;
    speaker.stop()
}

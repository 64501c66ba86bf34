//! Porter's BGP speaker against the daemons real routers run: BIRD 2, FRR and
//! GoBGP, each in its own netns lab. For each: the session establishes with
//! TCP MD5; a prefix with two next hops becomes an ECMP route (kernel FIB for
//! BIRD and FRR, RIB for GoBGP, which installs nothing itself); an IPv6 prefix
//! with v6 next hops works; a withdraw removes the route; a router restart
//! re-establishes and re-announces; a graceful restart of our speaker keeps
//! the routes throughout; a wrong MD5 password does not establish.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use porter_bgp::{Family, GracefulRestart, PeerConfig, SessionState, Speaker, SpeakerConfig};
use porter_tests::{
    lab::wait_for,
    netns_runtime::NetnsRuntime,
    privilege,
    routers::{BgpLab, Daemon, ROUTER_V4, Router},
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
    fn start(ns: &str, restarting: bool) -> Result<Self> {
        let runtime = NetnsRuntime::new(ns)?;
        let speaker = runtime.run(async move {
            Speaker::start(SpeakerConfig {
                local_as: 65000,
                router_id: Ipv4Addr::new(172, 30, 0, 10),
                listen: None,
                graceful_restart: Some(GracefulRestart {
                    restart_time: 120,
                    restarting,
                }),
            })
            .await
        })??;
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
fn bird_interop() -> Result<()> {
    if !privilege::can_run("bird_interop") {
        return Ok(());
    }
    interop(Daemon::Bird)
}

#[test]
fn frr_interop() -> Result<()> {
    if !privilege::can_run("frr_interop") {
        return Ok(());
    }
    interop(Daemon::Frr)
}

#[test]
fn gobgp_interop() -> Result<()> {
    if !privilege::can_run("gobgp_interop") {
        return Ok(());
    }
    interop(Daemon::Gobgp)
}

//! Porter's BFD against BIRD 2 (`protocol bfd`) and FRR's bfdd, each in its
//! own netns lab: a single-hop IPv4 session on the shared link, a single-hop
//! IPv6 session on it, and a multihop session across a router namespace.
//! Both sides run different timers, so that agreement is visible: each side
//! transmits at the larger of its Desired Min TX and the other's Required
//! Min RX, and detects with the other's multiplier. Then bad packets from the
//! router's namespace (TTL 64 on single hop, unknown discriminator, garbage)
//! are dropped and counted while the sessions stay Up; and cutting the link
//! takes the single-hop sessions Down within the detection time.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use porter_bfd::{Bfd, ControlPacket, DropReason, PeerConfig, PeerKey, PeerStatus, State, Timers};
use porter_tests::{
    lab::{Lab, wait_for},
    netns,
    netns_runtime::NetnsRuntime,
    routers::{BgpLab, ROUTER_V4, ROUTER_V6, SPEAKER_V4, SPEAKER_V6, spawn_bird, spawn_frr},
};

const MS: Duration = Duration::from_millis(1);
/// Porter's side: sends fast, accepts slowly, tolerates five misses.
const PORTER: Timers = Timers {
    desired_min_tx: Duration::from_millis(200),
    required_min_rx: Duration::from_millis(400),
    detect_mult: 5,
};
/// The router's side.
const ROUTER_TX_MS: u64 = 300;
const ROUTER_RX_MS: u64 = 250;
const ROUTER_MULT: u8 = 3;
const MULTIHOP_ROUTER: &str = "10.31.1.1";
const MULTIHOP_SPEAKER: &str = "10.31.2.10";
const SETTLE: Duration = Duration::from_secs(20);

/// The BgpLab link plus a second path r - mid - ctl for the multihop session.
struct BfdLab {
    lab: BgpLab,
    dir: std::path::PathBuf,
}

impl BfdLab {
    fn new(tag: &str) -> Result<Self> {
        let mut lab = BgpLab::new(tag)?;
        let mid = lab.lab.netns("mid")?;
        let (r, ctl) = (lab.router_ns.clone(), lab.speaker_ns.clone());
        let l = &lab.lab;
        l.veth((&r, "eth1"), (&mid, "r"))?;
        l.veth((&mid, "ctl"), (&ctl, "eth1"))?;
        l.addr(&r, "eth1", &format!("{MULTIHOP_ROUTER}/24"))?;
        l.addr(&mid, "r", "10.31.1.2/24")?;
        l.addr(&mid, "ctl", "10.31.2.2/24")?;
        l.addr(&ctl, "eth1", &format!("{MULTIHOP_SPEAKER}/24"))?;
        l.exec(&mid, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        l.ip(&r, &["route", "add", "10.31.2.0/24", "via", "10.31.1.2"])?;
        l.ip(&ctl, &["route", "add", "10.31.1.0/24", "via", "10.31.2.2"])?;
        let dir = lab.lab.run_dir().join("router");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { lab, dir })
    }

    fn lab(&self) -> &Lab {
        &self.lab.lab
    }
}

fn bird_conf() -> String {
    let timers = format!(
        "min rx interval {ROUTER_RX_MS} ms; min tx interval {ROUTER_TX_MS} ms; \
         idle tx interval 1000 ms; multiplier {ROUTER_MULT};"
    );
    format!(
        "router id {ROUTER_V4};\nprotocol device {{}}\nprotocol bfd {{\n\
         \x20 interface \"*\" {{ {timers} }};\n  multihop {{ {timers} }};\n\
         \x20 neighbor {SPEAKER_V4} local {ROUTER_V4};\n\
         \x20 neighbor {SPEAKER_V6} local {ROUTER_V6};\n\
         \x20 neighbor {MULTIHOP_SPEAKER} local {MULTIHOP_ROUTER} multihop on;\n}}\n"
    )
}

fn frr_conf() -> String {
    let timers = format!(
        "  receive-interval {ROUTER_RX_MS}\n  transmit-interval {ROUTER_TX_MS}\n  \
         detect-multiplier {ROUTER_MULT}\n"
    );
    format!(
        "frr defaults traditional\nbfd\n\
         \x20peer {SPEAKER_V4} local-address {ROUTER_V4}\n{timers} exit\n\
         \x20peer {SPEAKER_V6} local-address {ROUTER_V6}\n{timers} exit\n\
         \x20peer {MULTIHOP_SPEAKER} multihop local-address {MULTIHOP_ROUTER}\n{timers} exit\n\
         exit\n"
    )
}

fn peers() -> Result<Vec<PeerConfig>> {
    let peer = |remote: &str, local: &str, multihop: bool| -> Result<PeerConfig> {
        Ok(PeerConfig {
            key: PeerKey {
                remote: remote.parse()?,
                multihop,
            },
            local: Some(local.parse()?),
            timers: PORTER,
        })
    };
    Ok(vec![
        peer(ROUTER_V4, SPEAKER_V4, false)?,
        peer(ROUTER_V6, SPEAKER_V6, false)?,
        peer(MULTIHOP_ROUTER, MULTIHOP_SPEAKER, true)?,
    ])
}

/// Porter's BFD running in the speaker namespace.
struct PorterBfd {
    runtime: NetnsRuntime,
    bfd: Bfd,
}

impl PorterBfd {
    fn start(ns: &str) -> Result<Self> {
        let runtime = NetnsRuntime::new(ns)?;
        // The events are not needed here: the status snapshot says it all.
        let bfd = runtime.run(async { Bfd::start().0 })?;
        let porter = Self { runtime, bfd };
        for peer in peers()? {
            let bfd = porter.bfd.clone();
            porter
                .runtime
                .run(async move { bfd.upsert_peer(peer).await })??;
        }
        Ok(porter)
    }

    fn status(&self, remote: &str) -> Result<PeerStatus> {
        let remote: IpAddr = remote.parse()?;
        self.bfd
            .status()
            .into_iter()
            .find(|status| status.key.remote == remote)
            .with_context(|| format!("no session with {remote}"))
    }
}

/// The router's view of one session: state, transmit interval, detection time.
#[derive(Debug, PartialEq, Eq)]
struct RouterView {
    up: bool,
    tx_interval: Duration,
    detection_time: Duration,
}

fn bird_view(lab: &BfdLab, peer: &str) -> Result<Option<RouterView>> {
    let socket = lab.dir.join("bird.ctl");
    let out = lab.lab().exec(
        &lab.lab.router_ns,
        &[
            "birdc",
            "-s",
            socket.to_str().unwrap_or_default(),
            "show",
            "bfd",
            "sessions",
        ],
    )?;
    // IP address  Interface  State  Since  Interval  Timeout (seconds).
    let Some(line) = out
        .lines()
        .find(|line| line.split_whitespace().next() == Some(peer))
    else {
        return Ok(None);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let seconds = |word: Option<&&str>| -> Result<Duration> {
        let value: f64 = word.context("short line")?.parse()?;
        Ok(Duration::from_secs_f64(value))
    };
    Ok(Some(RouterView {
        up: words.contains(&"Up"),
        tx_interval: seconds(words.get(words.len().wrapping_sub(2)))?,
        detection_time: seconds(words.last())?,
    }))
}

fn frr_peer_json(lab: &BfdLab, peer: &str) -> Result<Option<serde_json::Value>> {
    let dir = lab.dir.to_str().unwrap_or_default();
    let out = lab.lab().exec(
        &lab.lab.router_ns,
        &["vtysh", "--vty_socket", dir, "-c", "show bfd peers json"],
    )?;
    let all: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("vtysh printed no JSON: {out}"))?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| entry["peer"].as_str() == Some(peer))
        .cloned())
}

/// FRR shows each side's configured intervals; the agreed ones follow from them.
fn frr_view(lab: &BfdLab, peer: &str) -> Result<Option<RouterView>> {
    let Some(json) = frr_peer_json(lab, peer)? else {
        return Ok(None);
    };
    let ms = |field: &str| -> Result<u64> {
        json[field]
            .as_u64()
            .with_context(|| format!("no {field} in {json}"))
    };
    let tx = ms("transmit-interval")?.max(ms("remote-receive-interval")?);
    let detection = ms("remote-detect-multiplier")?
        * ms("receive-interval")?.max(ms("remote-transmit-interval")?);
    Ok(Some(RouterView {
        up: json["status"].as_str() == Some("up"),
        tx_interval: Duration::from_millis(tx),
        detection_time: Duration::from_millis(detection),
    }))
}

/// What both sides must agree once slow start and the Poll Sequences are over.
fn expected_router_view() -> RouterView {
    RouterView {
        up: true,
        // max(router TX 300, Porter RX 400)
        tx_interval: 400 * MS,
        // Porter's 5 × max(router RX 250, Porter TX 200)
        detection_time: 1250 * MS,
    }
}

fn check_porter_side(status: &PeerStatus) -> Result<()> {
    let negotiated = status.negotiated;
    ensure!(status.state == State::Up, "{status:?}");
    // max(Porter TX 200, router RX 250) and 3 × max(Porter RX 400, router TX 300).
    ensure!(negotiated.tx_interval == Some(250 * MS), "{status:?}");
    ensure!(negotiated.detection_time == Some(1200 * MS), "{status:?}");
    ensure!(negotiated.remote_detect_mult == ROUTER_MULT, "{status:?}");
    Ok(())
}

fn interop(
    tag: &str,
    start_router: impl FnOnce(&mut BfdLab) -> Result<()>,
    view: impl Fn(&BfdLab, &str) -> Result<Option<RouterView>>,
) -> Result<()> {
    let mut lab = BfdLab::new(tag)?;
    start_router(&mut lab)?;
    let porter = PorterBfd::start(&lab.lab.speaker_ns)?;
    let started = Instant::now();
    for (remote, ours) in [
        (ROUTER_V4, SPEAKER_V4),
        (ROUTER_V6, SPEAKER_V6),
        (MULTIHOP_ROUTER, MULTIHOP_SPEAKER),
    ] {
        wait_for(
            &format!("{tag}: agreed timers with {remote}"),
            SETTLE,
            || {
                let ok = check_porter_side(&porter.status(remote)?).is_ok()
                    && view(&lab, ours)?.as_ref() == Some(&expected_router_view());
                Ok(ok.then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "porter: {:?}\nrouter: {:?}",
                porter.status(remote),
                view(&lab, ours)
            )
        })?;
        println!(
            "{tag}: {remote} Up with agreed timers after {:?}: Porter {:?}, router {:?}",
            started.elapsed(),
            porter.status(remote)?.negotiated,
            view(&lab, ours)?
        );
    }

    bad_packets_are_dropped_and_counted(&lab, &porter)?;

    // A silent cut: the single-hop sessions go Down within their detection time.
    let before = porter.status(ROUTER_V4)?;
    lab.lab()
        .ip(&lab.lab.router_ns, &["link", "set", "eth0", "down"])?;
    let cut = Instant::now();
    let detection = before.negotiated.detection_time.context("detection time")?;
    let down = wait_for("the single-hop session to go down", SETTLE, || {
        let status = porter.status(ROUTER_V4)?;
        Ok((status.state == State::Down).then_some(status))
    })?;
    let took = cut.elapsed();
    println!(
        "{tag}: link cut, Porter's session Down after {took:?} ({:?})",
        down.local_diag
    );
    ensure!(
        took <= detection + Duration::from_millis(500),
        "down after {took:?}, detection time {detection:?}"
    );
    ensure!(down.local_diag == porter_bfd::Diag::ControlDetectionTimeExpired);
    // The multihop path is separate and stays Up.
    ensure!(porter.status(MULTIHOP_ROUTER)?.state == State::Up);
    lab.lab()
        .ip(&lab.lab.router_ns, &["link", "set", "eth0", "up"])?;
    wait_for("the single-hop session to come back", SETTLE, || {
        Ok((porter.status(ROUTER_V4)?.state == State::Up).then_some(()))
    })?;
    Ok(())
}

/// Sends `payload` from the router's namespace to Porter's single-hop port
/// with `ttl`.
fn send_from_router(lab: &BfdLab, payload: Vec<u8>, ttl: u32) -> Result<()> {
    netns::run_in(&lab.lab.router_ns, move || {
        let socket = UdpSocket::bind((ROUTER_V4, 0))?;
        socket.set_ttl(ttl)?;
        let target: SocketAddr = format!("{SPEAKER_V4}:{}", porter_bfd::SINGLE_HOP_PORT).parse()?;
        socket.send_to(&payload, target)?;
        Ok(())
    })
}

fn bad_packets_are_dropped_and_counted(lab: &BfdLab, porter: &PorterBfd) -> Result<()> {
    let counters = porter.bfd.counters();
    let status = porter.status(ROUTER_V4)?;
    // A packet that would be valid for the session but for its TTL.
    let genuine = ControlPacket::new(
        State::Down,
        status.remote_discriminator,
        status.local_discriminator,
        Duration::from_secs(1),
    );
    let unknown = ControlPacket {
        your_discriminator: status.local_discriminator.wrapping_add(1),
        ..genuine.clone()
    };
    let cases = [
        (DropReason::WrongTtl, genuine.encode().to_vec(), 64),
        (DropReason::UnknownSession, unknown.encode().to_vec(), 255),
        (DropReason::Truncated, vec![0x20, 0xc0, 3], 255),
        (DropReason::BadVersion, vec![0xe0; 24], 255),
    ];
    for (reason, payload, ttl) in cases {
        let before = counters.dropped(reason);
        send_from_router(lab, payload, ttl)?;
        wait_for(&format!("a {reason} drop to be counted"), SETTLE, || {
            Ok((counters.dropped(reason) == before + 1).then_some(()))
        })?;
    }
    // The TTL-64 "Down" packet would have taken the session down had it been accepted.
    ensure!(
        porter.status(ROUTER_V4)?.state == State::Up,
        "bad packets disturbed the session: {:?}",
        porter.status(ROUTER_V4)
    );
    println!(
        "bad packets: dropped and counted ({}), session still Up",
        DropReason::ALL
            .iter()
            .map(|r| format!("{r}={}", counters.dropped(*r)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bird_single_hop_and_multihop() -> Result<()> {
    interop(
        "bfd-bird",
        |lab| {
            std::fs::write(lab.dir.join("bird.conf"), bird_conf())?;
            let (ns, dir) = (lab.lab.router_ns.clone(), lab.dir.clone());
            spawn_bird(&mut lab.lab.lab, &ns, "bird", &dir)
        },
        bird_view,
    )
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn frr_bfdd_single_hop_and_multihop() -> Result<()> {
    interop(
        "bfd-frr",
        |lab| {
            std::fs::write(lab.dir.join("frr.conf"), frr_conf())?;
            let (ns, dir) = (lab.lab.router_ns.clone(), lab.dir.clone());
            spawn_frr(&mut lab.lab.lab, &ns, "frr", &dir, &["zebra", "bfdd"])
        },
        frr_view,
    )
}

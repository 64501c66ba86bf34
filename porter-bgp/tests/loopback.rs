//! The whole speaker over real TCP on loopback, against a scripted peer:
//! passive accept of a configured peer only, OPEN negotiation, ADD-PATH
//! UPDATEs with one path id per next hop, End-of-RIB, withdraws, route
//! refresh, a NOTIFICATION for malformed input, and path attribute and
//! per-peer policy changes sent in place.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
        MultiProtocolExtensionsCapability,
    },
    iana::RouteRefreshSubcode,
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    path_attribute::PathAttributeValue,
    route_refresh::BgpRouteRefreshMessage,
};
use netgauze_iana::address_family::AddressType;
use porter_bgp::{
    PathAttributes, PathTable, PeerConfig, PeerPolicy, SessionState, Speaker, SpeakerConfig,
    codec::WireCodec, path_id,
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_util::codec::Framed;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn speaker() -> (Speaker, SocketAddr) {
    speaker_with(|_| {}).await
}

/// [`speaker`] with its peer's configuration changed by `tweak`.
async fn speaker_with(tweak: impl FnOnce(&mut PeerConfig)) -> (Speaker, SocketAddr) {
    let speaker = Speaker::start(SpeakerConfig {
        local_as: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        graceful_restart: None,
    })
    .await
    .expect("speaker starts");
    let mut peer = PeerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65001);
    peer.passive = true;
    peer.connect_retry = Duration::from_millis(100);
    // Loopback needs no TTL limit, and eBGP would otherwise set TTL 1: fine on lo.
    tweak(&mut peer);
    speaker.upsert_peer(peer).await;
    let address = speaker.listen_address().expect("listening");
    (speaker, address)
}

fn open(add_path: bool) -> BgpMessage {
    open_as(65001, add_path)
}

fn open_as(asn: u16, add_path: bool) -> BgpMessage {
    let mut caps = vec![
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
            AddressType::Ipv4Unicast,
        )),
        BgpCapability::FourOctetAs(FourOctetAsCapability::new(u32::from(asn))),
        BgpCapability::RouteRefresh,
    ];
    if add_path {
        caps.push(BgpCapability::AddPath(AddPathCapability::new(vec![
            AddPathAddressFamily::new(AddressType::Ipv4Unicast, false, true),
        ])));
    }
    BgpMessage::Open(BgpOpenMessage::new(
        asn,
        9,
        Ipv4Addr::new(10, 0, 0, 2),
        vec![BgpOpenMessageParameter::Capabilities(caps.into())],
    ))
}

type Peer = Framed<TcpStream, WireCodec>;

async fn recv(peer: &mut Peer) -> BgpMessage {
    tokio::time::timeout(TIMEOUT, peer.next())
        .await
        .expect("a message in time")
        .expect("connection open")
        .expect("well-formed")
}

/// Connects and completes the OPEN exchange; returns the speaker's OPEN.
async fn establish(address: SocketAddr, add_path: bool) -> (Peer, BgpOpenMessage) {
    let stream = TcpStream::connect(address).await.expect("connects");
    let codec = if add_path {
        WireCodec::expecting_path_ids()
    } else {
        WireCodec::new()
    };
    let mut peer = Framed::new(stream, codec);
    peer.send(open(add_path)).await.expect("send OPEN");
    let BgpMessage::Open(their_open) = recv(&mut peer).await else {
        panic!("OPEN first");
    };
    assert_eq!(recv(&mut peer).await, BgpMessage::KeepAlive);
    peer.send(BgpMessage::KeepAlive)
        .await
        .expect("send KEEPALIVE");
    (peer, their_open)
}

/// Reads UPDATEs until End-of-RIB; returns (prefix, path id) → next hop.
async fn paths_until_eor(peer: &mut Peer) -> BTreeMap<(IpNet, Option<u32>), IpAddr> {
    let mut paths = BTreeMap::new();
    loop {
        match recv(peer).await {
            BgpMessage::Update(update) if update.end_of_rib().is_some() => return paths,
            BgpMessage::Update(update) => {
                let next_hop = update
                    .path_attributes()
                    .iter()
                    .find_map(|attr| match attr.value() {
                        PathAttributeValue::NextHop(nh) => Some(IpAddr::V4(nh.next_hop())),
                        _ => None,
                    })
                    .expect("NEXT_HOP");
                for nlri in update.nlri() {
                    paths.insert(
                        (IpNet::V4(nlri.network().address()), nlri.path_id()),
                        next_hop,
                    );
                }
            }
            BgpMessage::KeepAlive => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn routes(entries: &[(&str, &[&str])]) -> BTreeMap<IpNet, BTreeSet<IpAddr>> {
    entries
        .iter()
        .map(|(prefix, hops)| {
            (
                prefix.parse().expect("prefix"),
                hops.iter().map(|hop| hop.parse().expect("hop")).collect(),
            )
        })
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

#[tokio::test]
async fn add_path_peer_gets_every_next_hop_then_withdraws_and_refresh() {
    let (speaker, address) = speaker().await;
    speaker
        .set_routes(routes(&[(
            "192.0.2.10/32",
            &["172.30.0.11", "172.30.0.12"],
        )]))
        .await;
    let (mut peer, their_open) = establish(address, true).await;
    assert_eq!(their_open.my_asn4(), 65000);

    let paths = paths_until_eor(&mut peer).await;
    let prefix: IpNet = "192.0.2.10/32".parse().expect("prefix");
    assert_eq!(
        paths,
        BTreeMap::from([
            (
                (prefix, Some(path_id(ip("172.30.0.11")))),
                ip("172.30.0.11")
            ),
            (
                (prefix, Some(path_id(ip("172.30.0.12")))),
                ip("172.30.0.12")
            ),
        ])
    );

    let status = speaker.peer_status().await;
    assert_eq!(status[0].state, SessionState::Established);
    assert_eq!(status[0].paths_announced, 2);
    assert_eq!(status[0].add_path, vec![porter_bgp::Family::Ipv4Unicast]);

    // Dropping one next hop withdraws exactly its path.
    speaker
        .set_routes(routes(&[("192.0.2.10/32", &["172.30.0.12"])]))
        .await;
    let BgpMessage::Update(update) = recv(&mut peer).await else {
        panic!("UPDATE");
    };
    let withdrawn: Vec<_> = update
        .withdraw_routes()
        .iter()
        .map(|w| w.path_id())
        .collect();
    assert_eq!(withdrawn, vec![Some(path_id(ip("172.30.0.11")))]);

    // Route refresh re-sends what the peer should hold.
    peer.send(BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
        AddressType::Ipv4Unicast,
        RouteRefreshSubcode::NormalRequest,
    )))
    .await
    .expect("send ROUTE-REFRESH");
    let BgpMessage::Update(update) = recv(&mut peer).await else {
        panic!("UPDATE");
    };
    assert_eq!(update.nlri().len(), 1);
    assert_eq!(update.nlri()[0].path_id(), Some(path_id(ip("172.30.0.12"))));

    speaker.shutdown().await;
    match recv(&mut peer).await {
        BgpMessage::Notification(n) => assert_eq!(porter_bgp::codec::notification_code(&n), (6, 2)),
        other => panic!("Cease expected, got {other:?}"),
    }
}

#[tokio::test]
async fn peer_without_add_path_gets_one_path_per_prefix() {
    let (speaker, address) = speaker().await;
    speaker
        .set_routes(routes(&[(
            "192.0.2.10/32",
            &["172.30.0.12", "172.30.0.11"],
        )]))
        .await;
    let (mut peer, _) = establish(address, false).await;
    let paths = paths_until_eor(&mut peer).await;
    assert_eq!(
        paths,
        BTreeMap::from([(
            ("192.0.2.10/32".parse().expect("prefix"), None),
            ip("172.30.0.11")
        )])
    );
    speaker.shutdown().await;
}

#[tokio::test]
async fn malformed_update_gets_a_notification_and_the_speaker_carries_on() {
    let (speaker, address) = speaker().await;
    let (peer, _) = establish(address, true).await;
    let mut stream = peer.into_inner();
    // An UPDATE whose withdrawn-routes length runs past the message.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&23u16.to_be_bytes());
    bad.push(2);
    bad.extend_from_slice(&[0x00, 0x40, 0x00, 0x00]);
    stream.write_all(&bad).await.expect("write");
    let mut peer = Framed::new(stream, WireCodec::new());
    loop {
        match recv(&mut peer).await {
            BgpMessage::KeepAlive | BgpMessage::Update(_) => continue,
            BgpMessage::Notification(n) => {
                assert_eq!(
                    porter_bgp::codec::notification_code(&n).0,
                    3,
                    "UPDATE Message Error"
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The session resets and, after its backoff, takes a new connection.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = speaker.peer_status().await;
        if status[0].state == SessionState::Active {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never left Idle: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_peer, _) = establish(address, true).await;
    speaker.shutdown().await;
}

#[tokio::test]
async fn unconfigured_addresses_are_refused() {
    let speaker = Speaker::start(SpeakerConfig {
        local_as: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        graceful_restart: None,
    })
    .await
    .expect("starts");
    let address = speaker.listen_address().expect("listening");
    let stream = TcpStream::connect(address).await.expect("TCP connects");
    let mut peer = Framed::new(stream, WireCodec::new());
    peer.send(open(true)).await.expect("send");
    let next = tokio::time::timeout(TIMEOUT, peer.next())
        .await
        .expect("closed in time");
    assert!(
        next.is_none() || matches!(next, Some(Err(_))),
        "no OPEN for strangers: {next:?}"
    );
    speaker.shutdown().await;
}

/// A peer that keeps sending garbage and reconnecting does not disturb a
/// healthy peer's session, which keeps receiving route changes.
#[tokio::test]
async fn a_flapping_peer_does_not_disturb_the_others() {
    let (speaker, address) = speaker().await;
    let mut healthy_peer = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 65001);
    healthy_peer.passive = true;
    speaker.upsert_peer(healthy_peer).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let stream = socket.connect(address).await.expect("connects");
    let mut healthy = Framed::new(stream, WireCodec::expecting_path_ids());
    healthy.send(open(true)).await.expect("OPEN");
    assert!(matches!(recv(&mut healthy).await, BgpMessage::Open(_)));
    assert_eq!(recv(&mut healthy).await, BgpMessage::KeepAlive);
    healthy
        .send(BgpMessage::KeepAlive)
        .await
        .expect("KEEPALIVE");
    assert!(paths_until_eor(&mut healthy).await.is_empty());

    for _ in 0..5 {
        if let Ok(mut flapper) = TcpStream::connect(address).await {
            let _ = flapper.write_all(&[0xff; 40]).await;
        }
        speaker
            .set_routes(routes(&[("192.0.2.10/32", &["172.30.0.11"])]))
            .await;
        let BgpMessage::Update(update) = recv(&mut healthy).await else {
            panic!("the healthy peer gets the UPDATE");
        };
        assert_eq!(update.nlri().len(), 1);
        speaker.set_routes(routes(&[])).await;
        let BgpMessage::Update(update) = recv(&mut healthy).await else {
            panic!("the healthy peer gets the withdraw");
        };
        assert_eq!(update.withdraw_routes().len(), 1);
    }
    let status = speaker.peer_status().await;
    let healthy_status = status
        .iter()
        .find(|s| s.address == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .expect("status");
    assert_eq!(healthy_status.state, SessionState::Established);
    assert_eq!(healthy_status.established_count, 1);
    speaker.shutdown().await;
}

/// The next UPDATE that is not a KEEPALIVE.
async fn next_update(peer: &mut Peer) -> netgauze_bgp_pkt::update::BgpUpdateMessage {
    loop {
        match recv(peer).await {
            BgpMessage::Update(update) => return update,
            BgpMessage::KeepAlive => {}
            other => panic!("UPDATE expected, got {other:?}"),
        }
    }
}

/// (path id, communities) of an UPDATE's NLRIs.
fn communities_of(
    update: &netgauze_bgp_pkt::update::BgpUpdateMessage,
) -> (Vec<Option<u32>>, Vec<u32>) {
    let ids = update.nlri().iter().map(|nlri| nlri.path_id()).collect();
    let communities = update
        .path_attributes()
        .iter()
        .find_map(|attr| match attr.value() {
            PathAttributeValue::Communities(list) => {
                Some(list.communities().iter().map(|c| c.value()).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    (ids, communities)
}

#[tokio::test]
async fn attribute_changes_are_sent_in_place_and_policy_changes_keep_the_session() {
    let (speaker, address) = speaker().await;
    let (mut peer, _) = establish(address, true).await;
    assert!(paths_until_eor(&mut peer).await.is_empty());
    let tagged = |community| PathAttributes {
        communities: vec![community],
        ..PathAttributes::default()
    };
    let table = |a: PathAttributes, b: PathAttributes| -> PathTable {
        BTreeMap::from([(
            "192.0.2.10/32".parse().expect("prefix"),
            [
                (ip("172.30.0.11"), Arc::new(a)),
                (ip("172.30.0.12"), Arc::new(b)),
            ]
            .into_iter()
            .collect(),
        )])
    };
    let (a, b) = (
        Some(path_id(ip("172.30.0.11"))),
        Some(path_id(ip("172.30.0.12"))),
    );

    speaker.set_paths(table(tagged(1), tagged(1))).await;
    let first = communities_of(&next_update(&mut peer).await);
    let second = communities_of(&next_update(&mut peer).await);
    assert_eq!(
        vec![first, second],
        vec![(vec![a], vec![1]), (vec![b], vec![1])]
    );

    // Only the path whose attributes changed is sent, under its id, with no withdraw.
    speaker.set_paths(table(tagged(2), tagged(1))).await;
    let update = next_update(&mut peer).await;
    assert!(update.withdraw_routes().is_empty());
    assert_eq!(communities_of(&update), (vec![a], vec![2]));

    // A policy-only change re-shapes both paths on the same connection; had
    // anything else been sent for path b above, it would arrive first here.
    let mut config = PeerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65001);
    config.passive = true;
    config.connect_retry = Duration::from_millis(100);
    config.policy = PeerPolicy {
        communities: false,
        ..PeerPolicy::default()
    };
    speaker.upsert_peer(config).await;
    let first = communities_of(&next_update(&mut peer).await);
    let second = communities_of(&next_update(&mut peer).await);
    assert_eq!(
        vec![first, second],
        vec![(vec![a], vec![]), (vec![b], vec![])]
    );
    let status = speaker.peer_status().await;
    assert_eq!(status[0].established_count, 1);
    assert_eq!(status[0].state, SessionState::Established);
    speaker.shutdown().await;
}

/// The log lines of the test's thread (the runtime is current-thread, so
/// the sessions' too).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

async fn wait_for_status(
    speaker: &Speaker,
    what: &str,
    done: impl Fn(&porter_bgp::PeerStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = speaker.peer_status().await;
        if done(&status[0]) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A peer that says it is the wrong AS gets OPEN Message Error / Bad Peer
/// AS (2/2): the log says so with the reason (the AS numbers), not only
/// `lastError`, which the next error overwrites; and a NOTIFICATION the peer
/// sends is logged too. Both are counted by code for the metrics.
#[tokio::test]
async fn notifications_are_logged_with_their_reason_and_counted() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (speaker, address) = speaker().await;

    let stream = TcpStream::connect(address).await.expect("connects");
    let mut peer = Framed::new(stream, WireCodec::new());
    peer.send(open_as(65009, true)).await.expect("send OPEN");
    loop {
        match recv(&mut peer).await {
            BgpMessage::Notification(n) => {
                assert_eq!(porter_bgp::codec::notification_code(&n), (2, 2));
                break;
            }
            BgpMessage::Open(_) | BgpMessage::KeepAlive => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    wait_for_status(&speaker, "the NOTIFICATION is counted", |s| {
        s.notifications_sent.get(&(2, 2)) == Some(&1)
    })
    .await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("sent NOTIFICATION to the peer"))
        .unwrap_or_else(|| panic!("no log line for the NOTIFICATION:\n{text}"));
    assert!(
        line.contains("peer says it is AS 65009, configured remote AS is 65001"),
        "{line}"
    );
    assert!(
        line.contains("code=2") && line.contains("subcode=2"),
        "{line}"
    );

    // After the backoff the peer connects properly, then shuts down.
    wait_for_status(&speaker, "the session takes connections again", |s| {
        s.state == SessionState::Active
    })
    .await;
    let (mut peer, _) = establish(address, true).await;
    let shutdown = netgauze_bgp_pkt::notification::BgpNotificationMessage::CeaseError(
        netgauze_bgp_pkt::notification::CeaseError::AdministrativeShutdown {
            value: Box::new([]),
        },
    );
    peer.send(BgpMessage::Notification(shutdown))
        .await
        .expect("send NOTIFICATION");
    wait_for_status(&speaker, "the received NOTIFICATION is counted", |s| {
        s.notifications_received.get(&(6, 2)) == Some(&1)
    })
    .await;
    assert!(
        logs.text().contains("received NOTIFICATION from the peer"),
        "{}",
        logs.text()
    );
    speaker.shutdown().await;
}

/// Connects from a socket whose packets leave with `ttl`.
async fn connect_with_ttl(address: SocketAddr, ttl: u32) -> Peer {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket2::SockRef::from(&socket)
        .set_ttl_v4(ttl)
        .expect("set TTL");
    let stream = socket.connect(address).await.expect("TCP connects");
    Framed::new(stream, WireCodec::new())
}

/// A speaker whose one peer (127.0.0.1) is directly connected with GTSM.
async fn gtsm_speaker() -> (Speaker, SocketAddr) {
    speaker_with(|peer| peer.min_ttl = Some(255)).await
}

/// GTSM (RFC 5082) for a directly connected peer: once the session has
/// the connection (its OPEN shows that), the kernel drops what arrives with
/// a TTL below 255. A peer one hop further away (TTL 254 here) never gets
/// past OPEN; one at TTL 255 gets the KEEPALIVE that confirms its OPEN.
#[tokio::test]
async fn ttl_security_drops_packets_from_further_away() {
    let (speaker, address) = gtsm_speaker().await;
    let mut far = connect_with_ttl(address, 254).await;
    assert!(matches!(recv(&mut far).await, BgpMessage::Open(_)));
    far.send(open(true)).await.expect("send OPEN");
    // The wait is a functional bound, generous for a loaded machine: the
    // speaker confirms an OPEN it receives at once.
    let answer = tokio::time::timeout(Duration::from_secs(3), far.next()).await;
    assert!(
        !matches!(answer, Ok(Some(Ok(BgpMessage::KeepAlive)))),
        "the OPEN of a peer at TTL 254 was accepted: {answer:?}"
    );
    assert_ne!(
        speaker.peer_status().await[0].state,
        SessionState::OpenConfirm,
        "the session never saw the far peer's OPEN"
    );
    // Even its FIN is dropped: that session waits out its OpenSent hold
    // time, so the near peer gets a speaker of its own.
    speaker.shutdown().await;

    let (speaker, address) = gtsm_speaker().await;
    let mut near = connect_with_ttl(address, 255).await;
    assert!(matches!(recv(&mut near).await, BgpMessage::Open(_)));
    near.send(open(true)).await.expect("send OPEN");
    assert_eq!(recv(&mut near).await, BgpMessage::KeepAlive);
    speaker.shutdown().await;
}

use super::*;

use k8s_openapi::api::core::v1::Service;

use crate::bgp::{Call, Recorder};
use crate::testing::{RecordingWriter, bgp_conf, bgp_peer, eip};
use porter_api::testing::{load_balancer, seen, service_in};

const LEAD: Role = Role::Leader { contact: 1 };
const STANDBY: Role = Role::Standby { contact: 1 };
const SILENT: Role = Role::Silent;

fn snapshot() -> Snapshot {
    let svc = service_in(
        "default",
        "web",
        &[("lb.kubesphere.io/v1alpha1", "porter")],
        load_balancer(None),
    );
    Snapshot {
        services: vec![Arc::new(svc)],
        eips: vec![Arc::new(eip("pool", "10.0.0.0-10.0.0.255"))],
        bgp_confs: vec![Arc::new(bgp_conf("default", Some("10.0.0.1")))],
        ..Default::default()
    }
}

#[tokio::test]
async fn only_the_leader_writes_and_a_silent_replica_runs_no_bgp() {
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let writer = RecordingWriter::default();
    let snap = snapshot();

    let follower = c.step(Arc::new(snap.clone()), SILENT, &writer).await;
    assert_eq!(follower, Step::default());
    assert!(writer.calls().is_empty(), "a follower writes nothing");
    assert!(
        c.announcer().calls.is_empty(),
        "a silent replica runs no BGP"
    );

    let standby = c.step(Arc::new(snap.clone()), STANDBY, &writer).await;
    assert_eq!(standby, Step::default());
    assert!(writer.calls().is_empty(), "a standby writes nothing");
    assert!(
        matches!(c.announcer().calls.first(), Some(Call::Start(_))),
        "a standby runs BGP: {:?}",
        c.announcer().calls
    );
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));

    let leader = c.step(Arc::new(snap.clone()), LEAD, &writer).await;
    assert_eq!(leader.failed_writes, 0);
    let calls = writer.calls();
    assert!(
        calls.contains(&"ingress default/web [10.0.0.0]".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"finalizer default/web true".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"event IPAllocated".to_string()),
        "{calls:?}"
    );
    assert!(matches!(c.announcer().calls.first(), Some(Call::Start(_))));

    // The follower that computed the same state hands over the same address.
    let mut standby = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let w2 = RecordingWriter::default();
    standby.step(Arc::new(snap.clone()), SILENT, &w2).await;
    standby.step(Arc::new(snap.clone()), LEAD, &w2).await;
    assert!(
        w2.calls()
            .contains(&"ingress default/web [10.0.0.0]".to_string())
    );
}

#[tokio::test]
async fn metrics_report_pools_and_allocations() {
    let metrics = Arc::new(Metrics::default());
    let mut c = Controller::new(Recorder::default(), metrics.clone());
    c.step(Arc::new(snapshot()), LEAD, &RecordingWriter::default())
        .await;
    let text = metrics.render();
    for line in [
        "porter_pool_size{pool=\"pool\"} 256.0",
        "porter_pool_usage{pool=\"pool\"} 1",
        "porter_allocations_total 1",
        "porter_announced_prefixes 0",
        "porter_reconcile_duration_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// What a real API server would answer, enough for the client to decode.
fn api_reply(request: &porter_api::testing::Seen) -> serde_json::Value {
    if request.uri.contains("/events") {
        serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-01-01T00:00:00.000000Z"})
    } else if request.uri.contains("/eips/") {
        serde_json::json!({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
            "metadata": {"name": "pool"}, "spec": {"address": "10.0.0.0/24"}})
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}})
    }
}

#[tokio::test]
async fn against_the_api_server_a_follower_sends_nothing_and_the_leader_applies() {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::{mock_client, seen};

    let (client, log) = mock_client(api_reply);
    let writer = KubeWriter::new(client, Some("porter-0".into()), None);
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let snap = snapshot();

    assert_eq!(
        c.step(Arc::new(snap.clone()), SILENT, &writer).await,
        Step::default()
    );
    assert!(
        seen(&log).is_empty(),
        "a follower made API calls: {:?}",
        seen(&log)
    );

    let step = c.step(Arc::new(snap.clone()), LEAD, &writer).await;
    assert_eq!(step.failed_writes, 0);
    let calls: Vec<(String, String)> = seen(&log)
        .iter()
        .map(|s| {
            (
                s.method.to_string(),
                s.uri.split('?').next().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expect = [
        ("PATCH", "/api/v1/namespaces/default/services/web"),
        ("PATCH", "/api/v1/namespaces/default/services/web/status"),
        (
            "PATCH",
            "/apis/network.kubesphere.io/v1alpha2/eips/pool/status",
        ),
        ("POST", "/apis/events.k8s.io/v1/namespaces/default/events"),
    ];
    for (method, path) in expect {
        assert!(
            calls.iter().any(|(m, p)| m == method && p == path),
            "no {method} {path} in {calls:?}"
        );
    }
    let finalizer = &seen(&log)[0];
    assert_eq!(
        finalizer.body["metadata"]["finalizers"][0],
        porter_api::annotations::SERVICE_FINALIZER,
        "the finalizer goes first"
    );
}

#[tokio::test]
async fn against_the_api_server_a_layer2_takeover_is_applied_to_the_eip_status_and_told_on_the_service()
 {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::{mock_client, seen};

    let (client, log) = mock_client(api_reply);
    let writer = KubeWriter::new(client, Some("porter-0".into()), None);
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let mut snap = snapshot();
    let mut pool = (*snap.eips[0]).clone();
    pool.spec.protocol = Some("layer2".into());
    snap.eips = vec![Arc::new(pool)];
    let ip: std::net::IpAddr = "10.0.0.0".parse().expect("ip");

    for node in ["n2", "n3"] {
        let before = seen(&log).len();
        snap.layer2_holders = Arc::new([(ip, node.to_owned())].into());
        assert_eq!(
            c.step(Arc::new(snap.clone()), LEAD, &writer)
                .await
                .failed_writes,
            0
        );
        let sent = &seen(&log)[before..];
        let status = sent
            .iter()
            .find(|s| {
                s.uri
                    .starts_with("/apis/network.kubesphere.io/v1alpha2/eips/pool/status?")
            })
            .expect("the Eip status is applied");
        assert_eq!(status.content_type, "application/apply-patch+yaml");
        let announcers = &status.body["status"]["layer2Announcers"];
        assert_eq!(announcers[0]["address"], "10.0.0.0", "{announcers}");
        assert_eq!(announcers[0]["node"], node, "{announcers}");
        assert!(announcers[0]["since"].is_string(), "{announcers}");
        assert_eq!(status.body["status"]["layer2Nodes"], node);
        let event = sent
            .iter()
            .find(|s| s.body["reason"] == "Layer2Announcing")
            .expect("a Layer2Announcing Event");
        assert!(
            event
                .uri
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events"),
            "{}",
            event.uri
        );
        assert_eq!(event.body["regarding"]["kind"], "Service");
        assert_eq!(event.body["regarding"]["name"], "web");
        assert_eq!(event.body["type"], "Normal");
        assert_eq!(
            event.body["note"],
            format!("node {node} now answers ARP for 10.0.0.0")
        );
    }
}

#[tokio::test]
async fn with_the_dir_source_the_announcer_is_written_beside_the_manifests() {
    use porter_api::source::dir::{DirWriter, load};

    let root = std::env::temp_dir().join(format!("porter-l2-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("dir");
    std::fs::write(
        root.join("pool.yaml"),
        "apiVersion: network.kubesphere.io/v1alpha2\nkind: Eip\nmetadata: {name: pool}\n\
         spec: {address: 10.0.0.0/24, protocol: layer2}\n",
    )
    .expect("manifest");
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let mut snap = snapshot();
    let (loaded, problems) = load(&root).expect("load");
    assert!(problems.is_empty(), "{problems:?}");
    snap.eips = loaded.eips;
    // The CIDR leaves out its network address: web has the next one.
    snap.layer2_holders = Arc::new([("10.0.0.1".parse().expect("ip"), "n2".to_owned())].into());
    let writer = DirWriter::new(root.clone());
    assert_eq!(
        c.step(Arc::new(snap.clone()), LEAD, &writer)
            .await
            .failed_writes,
        0
    );

    // Read back as the next snapshot (and `cat status/Eip__pool.yaml`) sees it.
    let (reloaded, _) = load(&root).expect("reload");
    let status = reloaded.eips[0].status.clone().expect("status written");
    assert_eq!(status.layer2_nodes, "n2");
    assert_eq!(
        status
            .layer2_announcers
            .iter()
            .map(|a| (a.address.as_str(), a.node.as_str()))
            .collect::<Vec<_>>(),
        [("10.0.0.1", "n2")]
    );
    let events = std::fs::read_to_string(root.join("status/events.jsonl")).expect("events");
    assert!(
        events.lines().any(|l| l.contains("Layer2Announcing")
            && l.contains("node n2 now answers ARP for 10.0.0.1")
            && l.contains("Service default/web")),
        "{events}"
    );
    let _ = std::fs::remove_dir_all(root);
}

/// The whole policy path with the recorded announcer: pool and Service
/// attributes, 1:3 endpoint weights, per-peer scoping and shaping, per-peer
/// metrics, and unreadable values reported once while the rest applies.
#[tokio::test]
async fn bgp_policy_reaches_the_announcer_and_bad_values_are_reported() {
    use porter_api::crd::{EipBgp, LinkBandwidthMode, PeerPolicySpec, ServiceAttributes};
    use porter_bgp::{LinkBandwidth, LinkBandwidthPolicy};

    let mut snap = snapshot();
    let mut svc = (*snap.services[0]).clone();
    let annotations = svc.metadata.annotations.get_or_insert_default();
    annotations.insert(
        "bgp.porter.kubesphere.io/communities".into(),
        "65000:300".into(),
    );
    annotations.insert("bgp.porter.kubesphere.io/local-pref".into(), "high".into());
    snap.services = vec![Arc::new(svc)];
    let mut eip = (*snap.eips[0]).clone();
    eip.spec.bgp = Some(EipBgp {
        communities: vec!["65000:100".into(), "bogus".into()],
        local_pref: Some(200),
        service_attributes: Some(ServiceAttributes {
            communities: vec!["65000:300".into()],
            local_pref: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    snap.eips = vec![Arc::new(eip)];
    snap.nodes = vec![
        Arc::new(crate::testing::node("n1", "True", &["192.168.1.1"])),
        Arc::new(crate::testing::node("n2", "True", &["192.168.1.2"])),
    ];
    let ready = Some(true);
    snap.endpoint_slices = vec![Arc::new(crate::testing::slice(
        "default",
        "web",
        &[("n1", ready), ("n2", ready), ("n2", ready), ("n2", ready)],
    ))];
    let peer = |name: &str, address: &str, rack: Option<&str>, mode| {
        bgp_peer(name, address, |spec| {
            spec.node_selector = rack
                .map(|n| [("kubernetes.io/hostname".to_string(), n.to_string())].into())
                .unwrap_or_default();
            spec.policy = Some(PeerPolicySpec {
                send_communities: None,
                link_bandwidth: Some(mode),
            });
        })
    };
    let mut n1 = (*snap.nodes[0]).clone();
    n1.metadata.labels = Some([("kubernetes.io/hostname".to_string(), "n1".to_string())].into());
    snap.nodes[0] = Arc::new(n1);
    snap.bgp_peers = vec![
        Arc::new(peer(
            "spine",
            "172.30.0.1",
            None,
            LinkBandwidthMode::NonTransitive,
        )),
        Arc::new(peer(
            "tor-n1",
            "172.30.0.2",
            Some("n1"),
            LinkBandwidthMode::Transitive,
        )),
    ];

    let metrics = Arc::new(Metrics::default());
    let recorder = Recorder {
        established: vec![
            "172.30.0.1".parse().expect("ip"),
            "172.30.0.2".parse().expect("ip"),
        ],
        ..Default::default()
    };
    let mut c = Controller::new(recorder, metrics.clone());
    let writer = RecordingWriter::default();
    c.step(Arc::new(snap.clone()), LEAD, &writer).await;
    c.step(Arc::new(snap.clone()), LEAD, &writer).await;

    let invalid = writer
        .calls()
        .iter()
        .filter(|c| *c == "event BgpPolicyInvalid")
        .count();
    assert_eq!(
        invalid,
        1,
        "the bad local-pref is reported once: {:?}",
        writer.calls()
    );

    let policies: Vec<LinkBandwidthPolicy> = c
        .announcer()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Upsert(p) => Some(p.policy.link_bandwidth),
            _ => None,
        })
        .collect();
    assert_eq!(
        policies,
        [
            LinkBandwidthPolicy::NonTransitive,
            LinkBandwidthPolicy::Transitive
        ]
    );
    let paths: Vec<&porter_bgp::PathTable> = c
        .announcer()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Paths(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(paths.len(), 1, "the second pass re-sends nothing");
    let hops = paths[0].values().next().expect("the EIP is announced");
    let n1 = &hops[&"192.168.1.1".parse().expect("ip")];
    let n2 = &hops[&"192.168.1.2".parse().expect("ip")];
    for a in [n1, n2] {
        assert_eq!(
            a.communities,
            [65000 << 16 | 100, 65000 << 16 | 300],
            "the pool's good community and the Service's"
        );
        assert_eq!(
            a.local_pref,
            Some(200),
            "the unreadable override is left out"
        );
    }
    assert_eq!(
        n1.link_bandwidth,
        Some(LinkBandwidth::for_endpoints(1, true))
    );
    assert_eq!(
        n2.link_bandwidth,
        Some(LinkBandwidth::for_endpoints(3, true))
    );
    let both = [
        "172.30.0.1".parse().expect("ip"),
        "172.30.0.2".parse().expect("ip"),
    ];
    assert_eq!(n1.only_peers, None, "n1 is every peer's");
    assert_eq!(
        n2.only_peers,
        Some([both[0]].into()),
        "n2 is not the n1 ToR's"
    );

    let text = metrics.render();
    for line in [
        "porter_bgp_prefixes_announced{peer=\"172.30.0.1\"} 1",
        "porter_bgp_prefixes_announced{peer=\"172.30.0.2\"} 1",
        "porter_bgp_session_up{peer=\"172.30.0.2\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// Sessions that a test changes under a running loop.
#[derive(Clone, Default)]
struct LiveSessions {
    sessions: Arc<std::sync::Mutex<Vec<porter_bgp::PeerStatus>>>,
    changed: Arc<tokio::sync::Notify>,
    /// Times the speaker was abandoned (a step-down).
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    /// Times the speaker was started.
    started: Arc<std::sync::atomic::AtomicUsize>,
}

impl LiveSessions {
    fn set(&self, address: &str, state: porter_bgp::SessionState) {
        let mut session = crate::bgp::established(address.parse().expect("address"));
        session.state = state;
        if let Ok(mut sessions) = self.sessions.lock() {
            *sessions = vec![session];
        }
        self.changed.notify_one();
    }
}

impl Announcer for LiveSessions {
    fn start(&mut self, _: &porter_bgp::SpeakerConfig) {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn stop(&mut self) {}
    fn abandon(&mut self) {
        self.abandoned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn upsert_peer(&mut self, _: &porter_bgp::PeerConfig) {}
    fn remove_peer(&mut self, _: std::net::IpAddr) {}
    fn set_paths(&mut self, _: &porter_bgp::PathTable) {}
    fn peer_status(&self) -> Vec<porter_bgp::PeerStatus> {
        self.sessions.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn sessions_changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }
}

/// The loop on its own task, with no resync or retry within a test: only
/// the snapshots, the leadership and the sessions wake it.
fn spawn_loop(
    controller: Controller<LiveSessions>,
    snapshots: SnapshotReceiver,
    writer: &RecordingWriter,
    leadership: watch::Receiver<Leadership>,
) -> tokio::task::JoinHandle<()> {
    let never = Duration::from_secs(3600);
    tokio::spawn(run(
        controller,
        snapshots,
        writer.clone(),
        leadership,
        Settings {
            resync: never,
            retry: never,
        },
    ))
}

/// Waits (a few seconds at most) until `writer` recorded `line`.
async fn recorded(writer: &RecordingWriter, line: &str) -> bool {
    for _ in 0..100 {
        if writer.calls().iter().any(|call| call == line) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_session_coming_up_or_going_down_reaches_the_bgp_peer_status_without_a_resync() {
    let mut snap = snapshot();
    snap.bgp_peers = vec![Arc::new(bgp_peer("tor", "10.0.0.254", |_| {}))];
    let sessions = LiveSessions::default();
    let writer = RecordingWriter::default();
    let (_snapshots, snapshot_rx) = watch::channel(Arc::new(snap));
    let (_leader, leader_rx) = watch::channel(Leadership::Until {
        until: Instant::now() + Duration::from_secs(3600),
        term: 1,
        contact: 1,
    });
    // Only the sessions can wake the loop.
    let controller = Controller::new(sessions.clone(), Arc::new(Metrics::default()));
    let task = spawn_loop(controller, snapshot_rx, &writer, leader_rx);
    assert!(
        recorded(&writer, "ingress default/web [10.0.0.0]").await,
        "the first pass ran: {:?}",
        writer.calls()
    );
    sessions.set("10.0.0.254", porter_bgp::SessionState::Established);
    assert!(
        recorded(&writer, "bgppeer tor controller Established").await,
        "the session coming up was reported: {:?}",
        writer.calls()
    );
    sessions.set("10.0.0.254", porter_bgp::SessionState::Active);
    assert!(
        recorded(&writer, "bgppeer tor controller Active").await,
        "the session going down was reported: {:?}",
        writer.calls()
    );
    task.abort();
}

/// The kube leader lease, the election and the loop together against a
/// mock API server: once renewals fail for `duration - margin`, the leader
/// closes its sessions and writes nothing more, though nobody told it the
/// lease was lost; it stays up and leads again when the API server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_api_server_a_failed_renewal_steps_the_leader_down() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::leader_lease::{KubeLeaderLease, elect};
    use crate::leadership::Timing;

    let down = Arc::new(AtomicBool::new(false));
    let server = crate::leader_lease::tests::lease_server();
    let api_down = down.clone();
    let (client, log) = porter_api::testing::mock_client_with_status(move |request| {
        if api_down.load(Ordering::SeqCst) {
            return (
                503,
                serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "code": 503, "message": "etcd is down"}),
            );
        }
        server(request)
    });
    let lease = KubeLeaderLease::new(client, "porter-system", "porter-controller", "ctl-a");
    // 1.2 s lease: renewal every 200 ms, step-down 800 ms after the last one.
    let timing = Timing::for_lease(Duration::from_millis(1200));
    let (publish, leadership) = watch::channel(Leadership::Follower);
    let metrics = Arc::new(Metrics::default());
    let election = tokio::spawn(elect(lease, timing, publish, metrics.clone()));

    let sessions = LiveSessions::default();
    let writer = RecordingWriter::default();
    let (snapshots, snapshot_rx) = watch::channel(Arc::new(snapshot()));
    let controller = Controller::new(sessions.clone(), metrics.clone());
    let task = spawn_loop(controller, snapshot_rx, &writer, leadership.clone());
    assert!(
        recorded(&writer, "ingress default/web [10.0.0.0]").await,
        "elected, the replica writes: {:?}",
        writer.calls()
    );
    assert!(metrics.render().contains("porter_controller_leader 1"));

    // Renewals go to the API server, compare-and-set.
    let renewed = || seen(&log).iter().any(|s| s.method.as_str() == "PUT");
    for _ in 0..100 {
        if renewed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(renewed(), "no renewal: {:?}", seen(&log));

    down.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let mut stepped_down = None;
    while cut.elapsed() < Duration::from_secs(5) {
        if sessions.abandoned.load(Ordering::SeqCst) > 0 {
            stepped_down = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stepped_down = stepped_down.expect("no step-down within 5 s of the API server failing");
    // It gave up before the lease could be another's (1.2 s after the
    // last renewal, which was at most 200 ms before the cut).
    assert!(
        stepped_down < timing.duration,
        "stepped down {stepped_down:?} after the cut, lease {:?}",
        timing.duration
    );
    assert!(!leadership.borrow().leads_at(Instant::now()));
    // The loop stepped down on the deadline; the election's next attempt
    // records it too.
    let counted = "porter_controller_leader_step_downs_total{reason=\"expired\"} 1";
    for _ in 0..100 {
        if metrics.render().contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = metrics.render();
    assert!(text.contains("porter_controller_leader 0"), "{text}");
    assert!(text.contains(counted), "{text}");

    // A change now is computed but not written: a follower writes nothing.
    let writes = writer.calls().len();
    let mut changed = snapshot();
    changed.services.clear();
    snapshots.send_replace(Arc::new(changed));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writer.calls().len(), writes, "{:?}", writer.calls());

    // The process stayed up: with the API server back it leads again.
    down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    while writer.calls().len() == writes && back.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        writer.calls().len() > writes,
        "leading again, the replica writes the change it held back"
    );
    task.abort();
    election.abort();
}

/// `snapshot()` with web published at `address` by some leader, and `more`
/// Services that have nothing yet.
fn published_at(address: &str, more: &[&str]) -> Snapshot {
    let mut snap = snapshot();
    let web = crate::testing::published((*snap.services[0]).clone(), address);
    let mut services = vec![Arc::new(web)];
    for name in more {
        let mut other = (*snap.services[0]).clone();
        other.metadata.name = Some((*name).into());
        services.push(Arc::new(other));
    }
    snap.services = services;
    snap
}

/// Paths (without query) and bodies of what was sent since `from`.
fn sent_since(log: &porter_api::testing::Log, from: usize) -> Vec<(String, serde_json::Value)> {
    porter_api::testing::seen(log)[from..]
        .iter()
        .map(|s| {
            (
                s.uri.split('?').next().unwrap_or_default().to_string(),
                s.body.clone(),
            )
        })
        .collect()
}

/// One pass of a fresh leader over `snap` against the mock API server:
/// what it sent, all of it accepted.
async fn lead_once(snap: Snapshot) -> Vec<(String, serde_json::Value)> {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::mock_client;

    let (client, log) = mock_client(api_reply);
    let writer = KubeWriter::new(client, Some("porter-0".into()), None);
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let step = c.step(Arc::new(snap), LEAD, &writer).await;
    assert_eq!(step.failed_writes, 0);
    sent_since(&log, 0)
}

/// The body of the `pool` Eip's status write in `sent`, which web's status
/// must not be in.
fn pool_status_without_web(sent: &[(String, serde_json::Value)]) -> &serde_json::Value {
    assert!(
        !sent
            .iter()
            .any(|(path, _)| path.ends_with("/services/web/status")),
        "web's address was written: {sent:?}"
    );
    let (_, eip) = sent
        .iter()
        .find(|(path, _)| path == "/apis/network.kubesphere.io/v1alpha2/eips/pool/status")
        .expect("the Eip status is applied");
    eip
}

#[tokio::test]
async fn against_the_api_server_a_new_leader_writes_the_published_address_not_its_own() {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::{mock_client, seen};

    let (client, log) = mock_client(api_reply);
    let writer = KubeWriter::new(client, Some("porter-1".into()), None);
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    // As a follower it saw web before any address was published (the
    // lowest free one, 10.0.0.0, is what it would have chosen).
    c.step(Arc::new(snapshot()), SILENT, &writer).await;
    // Then the leader of the time published 10.0.0.7 for web.
    let snap = published_at("10.0.0.7", &["api"]);
    c.step(Arc::new(snap.clone()), SILENT, &writer).await;
    assert!(seen(&log).is_empty(), "a follower made API calls");

    let step = c.step(Arc::new(snap), LEAD, &writer).await;
    assert_eq!(step.failed_writes, 0);
    let sent = sent_since(&log, 0);
    let statuses: Vec<&(String, serde_json::Value)> = sent
        .iter()
        .filter(|(path, _)| {
            path.starts_with("/api/v1/namespaces/default/services/") && path.ends_with("/status")
        })
        .collect();
    assert_eq!(statuses.len(), 1, "only api's status is written: {sent:?}");
    assert_eq!(
        statuses[0].0,
        "/api/v1/namespaces/default/services/api/status"
    );
    assert_eq!(
        statuses[0].1["status"]["loadBalancer"]["ingress"][0]["ip"],
        "10.0.0.0"
    );
    let (_, eip) = sent
        .iter()
        .find(|(path, _)| path == "/apis/network.kubesphere.io/v1alpha2/eips/pool/status")
        .expect("the Eip status is applied");
    assert_eq!(
        eip["status"]["used"],
        serde_json::json!({"10.0.0.0": "default/api", "10.0.0.7": "default/web"})
    );
}

/// The pool edit, as the API server sees it: no Service status is
/// written, the Eip status keeps the range in force with a condition, and
/// a Warning Event on the Eip names the Service in the way.
#[tokio::test]
async fn against_the_api_server_a_refused_pool_edit_is_a_condition_and_a_warning_on_the_eip() {
    let mut snap = published_at("10.0.0.100", &[]);
    let mut eip = (*snap.eips[0]).clone();
    eip.spec.address = "10.0.0.100-10.0.0.200".into();
    eip.status = Some(porter_api::EipStatus {
        ready: true,
        first_ip: Some("10.0.0.100".into()),
        last_ip: Some("10.0.0.200".into()),
        ..Default::default()
    });
    // Edited before this controller started: the published range is what
    // it compares the edit with.
    eip.spec.address = "10.0.0.150-10.0.0.199".into();
    snap.eips = vec![Arc::new(eip)];

    let sent = lead_once(snap).await;
    // web is not moved.
    let eip = pool_status_without_web(&sent);
    assert_eq!(eip["status"]["firstIP"], "10.0.0.100");
    assert_eq!(eip["status"]["lastIP"], "10.0.0.200");
    let conditions = eip["status"]["conditions"].as_array().expect("conditions");
    let pending = conditions
        .iter()
        .find(|c| c["type"] == "AddressChangePending")
        .expect("AddressChangePending condition");
    assert_eq!(pending["status"], "True");
    assert!(
        pending["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.0.0.100 (default/web)")),
        "{pending}"
    );
    let (_, event) = sent
        .iter()
        .find(|(_, body)| body["reason"] == "AddressChangeRefused")
        .expect("an AddressChangeRefused Event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Eip");
    assert_eq!(event["regarding"]["name"], "pool");
    assert_eq!(event["note"], pending["message"]);
}

/// `snapshot()`'s Service, renamed to `namespace/name`, sharing under `key`
/// on `port`.
fn sharing(namespace: &str, name: &str, key: &str, port: i32) -> Service {
    let mut svc = (*snapshot().services[0]).clone();
    svc.metadata.namespace = Some(namespace.into());
    svc.metadata.name = Some(name.into());
    if let Some(annotations) = &mut svc.metadata.annotations {
        annotations.insert(
            porter_api::annotations::ALLOW_SHARED_IP.key.to_string(),
            key.into(),
        );
    }
    if let Some(spec) = &mut svc.spec {
        spec.ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
            port,
            ..Default::default()
        }]);
    }
    svc
}

/// Issue 16: a Service of another namespace that knows a sharing key gets
/// no address, and its owner a Warning Event saying why; the pool's
/// `spec.sharing.crossNamespace` lets it share.
#[tokio::test]
async fn against_the_api_server_a_sharing_key_does_not_reach_across_namespaces() {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::mock_client;

    let web = crate::testing::published(sharing("default", "web", "front", 80), "10.0.0.7");
    let intruder = sharing("other", "steal", "front", 8080);
    let mut snap = snapshot();
    snap.services = vec![Arc::new(web), Arc::new(intruder)];

    let (client, log) = mock_client(api_reply);
    let writer = KubeWriter::new(client, Some("porter-0".into()), None);
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let step = c.step(Arc::new(snap.clone()), LEAD, &writer).await;
    assert_eq!(step.failed_writes, 0);
    let sent = sent_since(&log, 0);
    assert!(
        !sent
            .iter()
            .any(|(path, _)| path.ends_with("/services/steal/status")),
        "the other namespace's Service got an address: {sent:?}"
    );
    let (path, event) = sent
        .iter()
        .find(|(_, body)| body["reason"] == "AllocationFailed")
        .expect("an AllocationFailed Event");
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/other/events");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["name"], "steal");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("10.0.0.7")
            && note.contains("default/web")
            && note.contains("spec.sharing.crossNamespace"),
        "{note}"
    );

    // The pool's owner opens it: the Service shares the address.
    let mut eip = (*snap.eips[0]).clone();
    eip.spec.sharing = Some(porter_api::crd::EipSharing {
        cross_namespace: true,
    });
    snap.eips = vec![Arc::new(eip)];
    let from = porter_api::testing::seen(&log).len();
    c.step(Arc::new(snap), LEAD, &writer).await;
    let sent = sent_since(&log, from);
    let (_, status) = sent
        .iter()
        .find(|(path, _)| path == "/api/v1/namespaces/other/services/steal/status")
        .expect("the Service's status is written");
    assert_eq!(
        status["status"]["loadBalancer"]["ingress"][0]["ip"],
        "10.0.0.7"
    );
}

/// Issue 16: a Layer 2 pool whose range holds a node's address is refused
/// (its leader would answer ARP for the node), with a condition and a
/// Warning Event naming the node, and hands out nothing.
#[tokio::test]
async fn against_the_api_server_a_layer2_pool_over_a_node_address_is_refused() {
    let mut snap = snapshot();
    let mut eip = (*snap.eips[0]).clone();
    eip.spec.protocol = Some("layer2".into());
    snap.eips = vec![Arc::new(eip)];
    snap.nodes = vec![Arc::new(crate::testing::node("n1", "True", &["10.0.0.11"]))];

    let sent = lead_once(snap).await;
    // web gets no address from a refused pool.
    let eip = pool_status_without_web(&sent);
    assert_eq!(eip["status"]["ready"], false);
    let conditions = eip["status"]["conditions"].as_array().expect("conditions");
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Refused");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("10.0.0.11") && message.contains("`n1`"),
        "{message}"
    );
    let (_, event) = sent
        .iter()
        .find(|(_, body)| body["reason"] == "PoolRefused")
        .expect("a PoolRefused Event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Eip");
    assert_eq!(event["note"], ready["message"]);
}

/// A node still showing the liveness check's `Down` from an earlier leader
/// while nothing checks it any more: the leader corrects it until the Node
/// shows it, a follower never writes it.
#[tokio::test]
async fn the_leader_publishes_a_nodes_liveness_state_where_it_changed() {
    use porter_api::node_reachability::Reachability;
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let writer = RecordingWriter::default();
    let mut stale = crate::testing::node("n1", "True", &["192.168.1.1"]);
    if let Some(status) = stale.status.as_mut() {
        porter_api::node_dataplane::merge(
            status.conditions.get_or_insert_with(Vec::new),
            Reachability::Down.condition(),
        );
    }
    let never = crate::testing::node("n2", "True", &["192.168.1.2"]);
    let snap = Arc::new(Snapshot {
        nodes: vec![Arc::new(stale), Arc::new(never)],
        ..snapshot()
    });
    let conditions = |w: &RecordingWriter| -> Vec<String> {
        w.calls()
            .into_iter()
            .filter(|c| c.starts_with("node "))
            .collect()
    };
    c.step(snap.clone(), SILENT, &writer).await;
    assert!(conditions(&writer).is_empty(), "a follower writes nothing");
    c.step(snap.clone(), LEAD, &writer).await;
    assert_eq!(
        conditions(&writer),
        ["node n1 PorterNodeReachable Unknown NotChecked"],
        "nothing on n2, which never had the condition"
    );
    // Once the Node shows it, nothing more.
    let mut fixed = (*snap).clone();
    let mut n1 = (*fixed.nodes[0]).clone();
    if let Some(status) = n1.status.as_mut() {
        porter_api::node_dataplane::merge(
            status.conditions.get_or_insert_with(Vec::new),
            Reachability::NotChecked.condition(),
        );
    }
    fixed.nodes[0] = Arc::new(n1);
    c.step(Arc::new(fixed), LEAD, &writer).await;
    assert_eq!(conditions(&writer).len(), 1, "{:?}", conditions(&writer));
}

/// A snapshot whose Service `web` has `address` published and a ready
/// endpoint on each of `nodes`, with a BgpPeer: what a standby needs to
/// announce.
fn served(address: &str, nodes: &[&str]) -> Snapshot {
    let mut snap = published_at(address, &[]);
    snap.nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Arc::new(crate::testing::node(
                n,
                "True",
                &[&format!("192.168.1.{}", i + 1)],
            ))
        })
        .collect();
    let endpoints: Vec<(&str, Option<bool>)> = nodes.iter().map(|n| (*n, Some(true))).collect();
    snap.endpoint_slices = vec![Arc::new(crate::testing::slice(
        "default", "web", &endpoints,
    ))];
    snap.bgp_peers = vec![Arc::new(bgp_peer("tor", "172.30.0.1", |_| {}))];
    snap
}

fn paths_sent(c: &Controller<Recorder>) -> Vec<porter_bgp::PathTable> {
    c.announcer()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Paths(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// A standby announces what the leader published, never an address of its
/// own choosing; elected, it keeps its sessions and sends no path again;
/// silenced, it closes them, and starts afresh when heard again.
#[tokio::test]
async fn a_standby_announces_the_published_paths_and_keeps_its_sessions_when_elected() {
    let mut c = Controller::new(Recorder::default(), Arc::new(Metrics::default()));
    let writer = RecordingWriter::default();
    let unpublished = Snapshot {
        services: snapshot().services,
        ..served("10.0.0.7", &["n1", "n2"])
    };
    c.step(Arc::new(unpublished), STANDBY, &writer).await;
    let sent = paths_sent(&c);
    assert!(
        sent.iter().all(|p| p.is_empty()),
        "nothing published, nothing announced: {sent:?}"
    );

    let snap = served("10.0.0.7", &["n1", "n2"]);
    c.step(Arc::new(snap.clone()), STANDBY, &writer).await;
    let sent = paths_sent(&c);
    let last = sent.last().expect("paths sent");
    let prefix: ipnet::IpNet = "10.0.0.7/32".parse().expect("prefix");
    let hops: Vec<IpAddr> = last[&prefix].keys().copied().collect();
    assert_eq!(
        hops,
        [
            "192.168.1.1".parse::<IpAddr>().expect("ip"),
            "192.168.1.2".parse().expect("ip")
        ],
        "the published address, via both nodes"
    );
    assert!(writer.calls().is_empty(), "a standby writes nothing");

    let before = c.announcer().calls.len();
    c.step(Arc::new(snap.clone()), LEAD, &writer).await;
    let after: Vec<&Call> = c.announcer().calls[before..].iter().collect();
    assert!(
        after
            .iter()
            .all(|call| matches!(call, Call::Paths(p) if *p == *last)),
        "elected, the standby keeps its sessions and its paths: {after:?}"
    );

    // Silent (no answer from the lease store): the sessions close at once.
    c.step(Arc::new(snap.clone()), SILENT, &writer).await;
    assert_eq!(c.announcer().calls.last(), Some(&Call::Abandon));
    // Heard again, in a new contact: a fresh start.
    c.step(Arc::new(snap), Role::Standby { contact: 2 }, &writer)
        .await;
    assert!(
        c.announcer()
            .calls
            .iter()
            .filter(|call| matches!(call, Call::Start(_)))
            .count()
            == 2,
        "{:?}",
        c.announcer().calls
    );
}

/// Two replicas electing through one mock API server: the second announces
/// as a standby (its speaker runs, it writes nothing); when the leader
/// stops renewing (a crash), the standby takes the lease and writes,
/// without ever closing its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_api_server_a_standby_announces_and_takes_over_without_a_restart() {
    use std::sync::atomic::Ordering;

    use crate::leader_lease::{KubeLeaderLease, elect};
    use crate::leadership::Timing;

    let server = Arc::new(std::sync::Mutex::new(
        crate::leader_lease::tests::lease_server(),
    ));
    let replica = |identity: &str| {
        let server = Arc::clone(&server);
        let (client, _) = porter_api::testing::mock_client_with_status(move |request| {
            let server = server.lock().expect("the lease server");
            server(request)
        });
        KubeLeaderLease::new(client, "porter-system", "porter-controller", identity)
    };
    // 1.2 s lease: renewal every 200 ms.
    let timing = Timing::for_lease(Duration::from_millis(1200));
    let (_snapshots, snapshot_rx) = watch::channel(Arc::new(snapshot()));
    let start = |identity: &str| {
        let (publish, leadership) = watch::channel(Leadership::Follower);
        let metrics = Arc::new(Metrics::default());
        let election = tokio::spawn(elect(replica(identity), timing, publish, metrics.clone()));
        let sessions = LiveSessions::default();
        let writer = RecordingWriter::default();
        let controller = Controller::new(sessions.clone(), metrics.clone());
        let task = spawn_loop(controller, snapshot_rx.clone(), &writer, leadership);
        (election, task, sessions, writer, metrics)
    };
    let (a_election, a_task, _, a_writer, _) = start("ctl-a");
    assert!(
        recorded(&a_writer, "ingress default/web [10.0.0.0]").await,
        "ctl-a leads and writes: {:?}",
        a_writer.calls()
    );
    let (b_election, b_task, b_sessions, b_writer, b_metrics) = start("ctl-b");
    let announcing = || b_sessions.started.load(Ordering::SeqCst) > 0;
    for _ in 0..200 {
        if announcing() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(announcing(), "the standby never started its speaker");
    let text = b_metrics.render();
    assert!(text.contains("porter_controller_announcing 1"), "{text}");
    assert!(text.contains("porter_controller_leader 0"), "{text}");
    assert!(b_writer.calls().is_empty(), "a standby writes nothing");

    // ctl-a crashes: no renewal, no release.
    a_election.abort();
    a_task.abort();
    let crashed = Instant::now();
    let mut took_over = None;
    while crashed.elapsed() < Duration::from_secs(5) {
        if b_writer
            .calls()
            .iter()
            .any(|c| c.starts_with("bgppeer ") || c.starts_with("ingress "))
        {
            took_over = Some(crashed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took_over = took_over.expect("the standby never wrote after the leader crashed");
    assert!(
        took_over >= timing.duration / 2,
        "the standby led {took_over:?} after the crash, before the lease could expire"
    );
    assert!(b_metrics.render().contains("porter_controller_leader 1"));
    assert_eq!(
        (
            b_sessions.started.load(Ordering::SeqCst),
            b_sessions.abandoned.load(Ordering::SeqCst)
        ),
        (1, 0),
        "the standby's sessions carried on into its leadership"
    );
    b_task.abort();
    b_election.abort();
}

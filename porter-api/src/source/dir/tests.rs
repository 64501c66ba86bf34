use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "porter-dir-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write manifest");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SEED: &str = r#"
apiVersion: network.kubesphere.io/v1alpha1
kind: EIP
metadata:
  name: eip-sample-pool
spec:
  address: 192.168.0.100
  disable: false
---
apiVersion: v1
kind: Service
metadata:
  name: mylbapp-svc
  annotations:
    lb.kubesphere.io/v1alpha1: porter
spec:
  type: LoadBalancer
  selector:
    app: mylbapp
  ports:
  - name: http
    port: 8088
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: bgp-cfg
  namespace: porter-system
data:
  config.toml: |
    [global.config]
    as = 65000
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: unrelated
  namespace: porter-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored
"#;

#[test]
fn loads_the_seed_manifests_as_they_are() {
    let dir = Scratch::new();
    dir.write("seed.yaml", SEED);
    let (snap, problems) = load(&dir.0).expect("load");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(snap.eips.len(), 1);
    assert_eq!(snap.eips[0].spec.address, "192.168.0.100");
    assert!(!snap.eips[0].spec.disable);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(
        ObjectKey::of(&snap.services[0].metadata).to_string(),
        "default/mylbapp-svc"
    );
    assert_eq!(snap.config_maps.len(), 1, "only bgp-cfg is kept");
}

#[test]
fn a_broken_manifest_is_reported_and_the_rest_loaded() {
    let dir = Scratch::new();
    dir.write("good.yaml", SEED);
    dir.write(
        "bad.yaml",
        "kind: Eip\nmetadata: {name: x}\nspec: {address: [1, 2]}\n",
    );
    dir.write("worse.yml", "kind: [\n");
    dir.write("notes.txt", "kind: Service\n");
    let (snap, problems) = load(&dir.0).expect("load");
    assert_eq!(snap.eips.len(), 1);
    let files: Vec<_> = problems
        .iter()
        .map(|p| p.file.file_name().and_then(|f| f.to_str()).unwrap_or(""))
        .collect();
    assert_eq!(files, ["bad.yaml", "worse.yml"], "{problems:?}");
    assert!(problems[0].problem.contains("invalid Eip"), "{problems:?}");
}

#[tokio::test]
async fn written_status_reads_back_and_rewriting_it_changes_nothing() {
    let dir = Scratch::new();
    dir.write("seed.yaml", SEED);
    let w = DirWriter::new(dir.0.clone());
    let key = ObjectKey::new("default", "mylbapp-svc");
    let ip: IpAddr = "192.168.0.100".parse().expect("ip");
    w.service_ingress(&key, &[ip]).await.expect("status");
    w.service_finalizer(&key, true).await.expect("finalizer");
    let status = EipStatus {
        usage: 1,
        pool_size: 1,
        ready: true,
        v4: true,
        ..Default::default()
    };
    w.eip_status("eip-sample-pool", &status)
        .await
        .expect("eip status");
    w.event(&Event {
        regarding: Regarding::Service(key.clone()),
        type_: EventType::Normal,
        reason: "IPAllocated",
        message: "192.168.0.100".into(),
    })
    .await
    .expect("event");

    let (snap, _) = load(&dir.0).expect("load");
    let svc = &snap.services[0];
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    assert_eq!(
        ingress.and_then(|i| i[0].ip.as_deref()),
        Some("192.168.0.100")
    );
    assert_eq!(
        svc.metadata.finalizers.as_deref(),
        Some(&[SERVICE_FINALIZER.to_string()][..])
    );
    assert_eq!(snap.eips[0].status.as_ref(), Some(&status));
    let events = std::fs::read_to_string(dir.0.join("status/events.jsonl")).expect("events");
    assert!(
        events.contains(r#""reason":"IPAllocated""#)
            && events.contains("Service default/mylbapp-svc")
    );

    let before = fingerprint(&dir.0);
    w.service_ingress(&key, &[ip]).await.expect("same status");
    w.service_finalizer(&key, true)
        .await
        .expect("same finalizer");
    assert_eq!(
        fingerprint(&dir.0),
        before,
        "an idempotent write must not trigger a reload"
    );

    w.service_finalizer(&key, false)
        .await
        .expect("remove finalizer");
    let (snap, _) = load(&dir.0).expect("load");
    assert_eq!(snap.services[0].metadata.finalizers, None);
}

#[tokio::test]
async fn a_changed_manifest_publishes_a_new_snapshot() {
    let dir = Scratch::new();
    dir.write("seed.yaml", SEED);
    let (mut rx, _w) = start(dir.0.clone(), Duration::from_millis(20)).expect("start");
    assert_eq!(rx.borrow().eips.len(), 1);
    dir.write(
        "more.yaml",
        "kind: Eip\nmetadata: {name: second}\nspec: {address: 10.0.0.0/24}\n",
    );
    // The bound only keeps a broken poller from hanging the suite.
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("a new snapshot within 30 s")
        .expect("source alive");
    assert_eq!(rx.borrow().eips.len(), 2);
}

#[test]
fn a_missing_directory_fails_with_its_path() {
    let err = load(Path::new("/nonexistent/porter-dir")).expect_err("missing dir");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

/// Each speaker's entry in `BgpPeer.status.nodes` is set and removed on its
/// own, the others kept, and read back over the manifest.
#[tokio::test]
async fn bgp_peer_status_entries_are_kept_per_node() {
    let dir = Scratch::new();
    dir.write(
        "peer.yaml",
        "kind: BgpPeer\nmetadata: {name: leaf1}\nspec: {conf: {peerAs: 65011, neighborAddress: 172.30.1.1}}\n",
    );
    let w = DirWriter::new(dir.0.clone());
    let entry = |node: &str, state: &str| BgpPeerNodeStatus {
        node: node.into(),
        state: state.into(),
        ..Default::default()
    };
    w.bgp_peer_status("leaf1", "n2", Some(&entry("n2", "Active")))
        .await
        .expect("write");
    w.bgp_peer_status("leaf1", "n1", Some(&entry("n1", "Established")))
        .await
        .expect("write");
    w.bgp_peer_status("leaf1", "n2", Some(&entry("n2", "Established")))
        .await
        .expect("write");
    let nodes = |dir: &Scratch| {
        let (snap, _) = load(&dir.0).expect("load");
        snap.bgp_peers[0]
            .status
            .clone()
            .unwrap_or_default()
            .nodes
            .into_iter()
            .map(|e| format!("{}={}", e.node, e.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(&dir), ["n1=Established", "n2=Established"]);
    w.bgp_peer_status("leaf1", "n1", None).await.expect("write");
    assert_eq!(nodes(&dir), ["n2=Established"]);
}

#[test]
fn secrets_are_read_with_string_data_merged_and_bad_base64_named_not_shown() {
    let dir = Scratch::new();
    dir.write(
        "secrets.yaml",
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: encoded
  namespace: porter-system
type: Opaque
data:
  password: czNjcmV0
  other: b2xk
stringData:
  other: plain
---
apiVersion: v1
kind: Secret
metadata:
  name: bad
  namespace: porter-system
data:
  password: "hunter2!!"
"#,
    );
    let (snap, problems) = load(&dir.0).expect("load");
    let [secret] = snap.secrets.as_slice() else {
        panic!("one good Secret expected: {:?}", snap.secrets.len())
    };
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    assert_eq!(
        text("password").as_deref(),
        Some("s3cret"),
        "base64 decoded"
    );
    assert_eq!(text("other").as_deref(), Some("plain"), "stringData wins");
    assert_eq!(secret.string_data, None);
    let [problem] = problems.as_slice() else {
        panic!("one problem expected: {problems:?}")
    };
    assert!(
        problem
            .problem
            .contains("Secret porter-system/bad: data.password is not valid base64"),
        "{problem:?}"
    );
    assert!(!problem.problem.contains("hunter2"), "{problem:?}");
}

#[test]
fn openelb_v1alpha1_pools_are_read_in_either_kind_spelling() {
    let dir = Scratch::new();
    for (file, kind, name) in [("a.yaml", "Eip", "a"), ("b.yaml", "EIP", "b")] {
        dir.write(
            file,
            &format!(
                "apiVersion: network.kubesphere.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n\
                 spec:\n  address: 192.168.0.91-192.168.0.100\n  protocol: layer2\n  disable: true\n"
            ),
        );
    }
    let (snap, problems) = load(&dir.0).expect("load");
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<_> = snap
        .eips
        .iter()
        .map(|e| e.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["a", "b"]);
    for eip in &snap.eips {
        assert_eq!(eip.spec.address, "192.168.0.91-192.168.0.100");
        assert_eq!(eip.spec.protocol.as_deref(), Some("layer2"));
        assert!(eip.spec.disable);
    }
}

/// A name with `../` would put a status file outside `status/`: such an
/// object is refused as the API server refuses it, and the writer will not
/// build a path from it either.
#[tokio::test]
async fn names_the_api_server_refuses_are_refused_and_never_become_paths() {
    let dir = Scratch::new();
    dir.write(
        "evil.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ../../escaped, namespace: shop}\nspec: {type: LoadBalancer}\n\
         ---\nkind: Eip\nmetadata: {name: ../pool}\nspec: {address: 192.0.2.1}\n\
         ---\nkind: Service\nmetadata: {name: web, namespace: ../..}\nspec: {type: LoadBalancer}\n\
         ---\nkind: BgpPeer\nmetadata: {name: Tor/1}\nspec: {conf: {neighborAddress: 192.0.2.9, peerAs: 65001}}\n\
         ---\nkind: Service\nmetadata: {namespace: shop}\nspec: {type: LoadBalancer}\n\
         ---\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {type: LoadBalancer}\n",
    );
    let (snap, problems) = load(&dir.0).expect("load");
    assert_eq!(snap.services.len(), 1, "only shop/web is valid");
    assert!(snap.eips.is_empty() && snap.bgp_peers.is_empty());
    let problems: Vec<&str> = problems.iter().map(|p| p.problem.as_str()).collect();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(
        problems[0].contains("Service metadata.name \"../../escaped\" is not a DNS-1035 label"),
        "{problems:#?}"
    );
    assert!(
        problems[2].contains("metadata.namespace \"../..\" is not a DNS-1123 label"),
        "{problems:#?}"
    );
    assert!(
        problems[4].contains("without metadata.name"),
        "{problems:#?}"
    );

    let w = DirWriter::new(dir.0.clone());
    let escaped = ObjectKey::new("shop", "../../escaped");
    let err = w
        .service_finalizer(&escaped, true)
        .await
        .expect_err("no path from a bad name");
    assert!(err.to_string().contains("not a DNS-1035 label"), "{err}");
    let err = w
        .eip_status("../pool", &EipStatus::default())
        .await
        .expect_err("no path from a bad name");
    assert!(
        err.to_string().contains("not a DNS-1123 subdomain"),
        "{err}"
    );
    let outside: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        outside,
        ["evil.yaml"],
        "nothing written beside the manifests"
    );
    assert!(!dir.0.join("../escaped.yaml").exists());
}

/// A symlink back up the tree is followed once, not forever.
#[test]
fn a_symlinked_directory_loop_is_read_once() {
    let dir = Scratch::new();
    dir.write("seed.yaml", SEED);
    std::fs::create_dir_all(dir.0.join("sub")).expect("sub");
    std::fs::write(
        dir.0.join("sub/more.yaml"),
        "kind: Namespace\nmetadata: {name: shop}\n",
    )
    .expect("write");
    std::os::unix::fs::symlink(&dir.0, dir.0.join("sub/loop")).expect("symlink");
    std::os::unix::fs::symlink(dir.0.join("sub"), dir.0.join("again")).expect("symlink");
    let (snap, problems) = load(&dir.0).expect("load terminates");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(snap.namespaces.len(), 1, "sub/ is read once");
    assert_eq!(snap.eips.len(), 1, "the root is read once");
}

/// `events.jsonl` is rotated at the cap: the disk holds at most two
/// generations, and the newest Event is always in `events.jsonl`.
#[tokio::test]
async fn events_are_rotated_at_the_cap() {
    let dir = Scratch::new();
    let cap = 1000;
    let w = DirWriter::new(dir.0.clone()).with_events_cap(cap);
    for i in 0..100 {
        w.event(&Event {
            regarding: Regarding::Eip("pool".into()),
            type_: EventType::Normal,
            reason: "IPAllocated",
            message: format!("event {i}"),
        })
        .await
        .expect("event");
    }
    let current = std::fs::read_to_string(dir.0.join("status/events.jsonl")).expect("current");
    let older = std::fs::read_to_string(dir.0.join("status/events.jsonl.1")).expect("rotated");
    assert!(current.len() as u64 <= cap && older.len() as u64 <= cap);
    assert!(current.ends_with("\"message\":\"event 99\",\"reason\":\"IPAllocated\",\"regarding\":\"Eip pool\",\"type\":\"Normal\"}\n"), "{current}");
    let first_current = current.lines().next().expect("a line");
    let last_older = older.lines().last().expect("a line");
    let number = |line: &str| {
        line.split("event ")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse::<u32>().ok())
            .expect("numbered")
    };
    assert_eq!(
        number(last_older) + 1,
        number(first_current),
        "no Event lost at the rotation"
    );
}

#[test]
fn a_node_condition_is_merged_over_the_manifest_and_replaced_by_type() {
    let dir = Scratch::new();
    dir.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  addresses: [{type: InternalIP, address: 10.0.0.1}]\n  conditions: [{type: Ready, status: \"True\"}]\n",
    );
    let writer = DirWriter::new(dir.0.clone());
    let frozen = node_dataplane::condition(false, "NewerPinLayout", "roll forward");
    writer.node_condition("n1", &frozen).expect("write");
    let node = |root: &Path| {
        let (snap, problems) = load(root).expect("load");
        assert!(problems.is_empty(), "{problems:?}");
        Arc::clone(&snap.nodes[0])
    };
    let seen = node(&dir.0);
    assert!(node_dataplane::withdrawn(&seen), "{seen:?}");
    let status = seen.status.clone().unwrap_or_default();
    assert_eq!(
        status.addresses.unwrap_or_default().len(),
        1,
        "addresses kept"
    );
    let types: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    assert_eq!(types, ["Ready=True", "PorterDataplaneReady=False"]);
    writer
        .node_condition(
            "n1",
            &node_dataplane::condition(true, "DataplaneReady", "ok"),
        )
        .expect("write");
    let seen = node(&dir.0);
    assert!(
        !node_dataplane::withdrawn(&seen),
        "a True condition returns the node"
    );
    assert_eq!(
        seen.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(Vec::len),
        Some(2),
        "one condition per type"
    );
}

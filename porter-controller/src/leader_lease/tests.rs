//! The leader lease against a mock API server and against files.

use std::sync::{Arc, Mutex};

use porter_api::testing::{Seen, mock_client_with_status, seen};
use serde_json::{Value, json};

use super::*;

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "code": 404, "reason": "NotFound", "message": "not found"}),
    )
}

/// An API server that keeps one Lease: GET returns it, POST and PUT store
/// what they are sent (with a new resourceVersion).
pub(crate) fn lease_server() -> impl Fn(&Seen) -> (u16, Value) + Send + 'static {
    let stored: Arc<Mutex<Option<Value>>> = Arc::default();
    move |request| {
        let Ok(mut stored) = stored.lock() else {
            return not_found();
        };
        if request.method.as_str() == "GET" {
            return stored.clone().map_or_else(not_found, |lease| (200, lease));
        }
        let mut lease = request.body.clone();
        let version = stored
            .as_ref()
            .and_then(|l| l["metadata"]["resourceVersion"].as_str())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        lease["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        *stored = Some(lease.clone());
        (
            if request.method.as_str() == "POST" {
                201
            } else {
                200
            },
            lease,
        )
    }
}

#[tokio::test]
async fn the_kube_lease_is_created_then_renewed_by_compare_and_set() {
    let (client, log) = mock_client_with_status(lease_server());
    let lease = KubeLeaderLease::new(client, "porter-system", "porter-controller", "ctl-a");
    let duration = Duration::from_millis(2500);
    assert_eq!(
        lease.try_hold(Duration::from_secs(1000), duration).await,
        Attempt::Held
    );
    assert_eq!(
        lease.try_hold(Duration::from_secs(1001), duration).await,
        Attempt::Held
    );
    let seen = seen(&log);
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "POST", "GET", "PUT"]);
    assert!(
        seen[0].uri.starts_with(
            "/apis/coordination.k8s.io/v1/namespaces/porter-system/leases/porter-controller"
        ),
        "{}",
        seen[0].uri
    );
    let created = &seen[1].body;
    assert_eq!(created["spec"]["holderIdentity"], "ctl-a");
    // Whole seconds for kubectl, rounded up; the exact value beside it.
    assert_eq!(created["spec"]["leaseDurationSeconds"], 3);
    assert_eq!(
        created["metadata"]["annotations"][porter_api::layer2::DURATION_ANNOTATION],
        "2500"
    );
    // The renewal carries the version it read: a compare-and-set.
    assert_eq!(seen[3].body["metadata"]["resourceVersion"], "1");
    assert_eq!(seen[3].body["spec"]["leaseTransitions"], 1);
}

/// Replicas `ctl-a` and `ctl-b` contending for one Lease of [`lease_server`].
fn two_replicas() -> (KubeLeaderLease, KubeLeaderLease, porter_api::testing::Log) {
    let (client, log) = mock_client_with_status(lease_server());
    let replica = |identity| {
        KubeLeaderLease::new(
            client.clone(),
            "porter-system",
            "porter-controller",
            identity,
        )
    };
    (replica("ctl-a"), replica("ctl-b"), log)
}

#[tokio::test]
async fn another_replicas_lease_is_not_taken_until_it_expires() {
    let (a, b, _log) = two_replicas();
    let duration = Duration::from_secs(3);
    assert_eq!(
        a.try_hold(Duration::from_secs(1000), duration).await,
        Attempt::Held
    );
    assert_eq!(
        b.try_hold(Duration::from_secs(1002), duration).await,
        Attempt::HeldBy("ctl-a".into())
    );
    assert_eq!(
        b.try_hold(Duration::from_secs(1003), duration).await,
        Attempt::Held
    );
    assert_eq!(
        a.try_hold(Duration::from_secs(1004), duration).await,
        Attempt::HeldBy("ctl-b".into())
    );
}

#[tokio::test]
async fn an_api_server_in_trouble_is_a_failed_attempt() {
    let (client, _log) = mock_client_with_status(|_| {
        (
            503,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "code": 503, "reason": "ServiceUnavailable", "message": "etcd is down"}),
        )
    });
    let lease = KubeLeaderLease::new(client, "porter-system", "porter-controller", "ctl-a");
    let attempt = lease
        .try_hold(Duration::from_secs(1000), Duration::from_secs(3))
        .await;
    assert!(
        matches!(&attempt, Attempt::Failed(error) if error.contains("etcd is down")),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn two_processes_sharing_a_directory_elect_one_leader() {
    let dir = std::env::temp_dir().join(format!("porter-leader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = || FileLeaseDir::new(&dir).expect("temp dir");
    let a = FileLeaderLease::new(store(), "porter-controller", "ctl-a");
    let b = FileLeaderLease::new(store(), "porter-controller", "ctl-b");
    let duration = Duration::from_secs(3);
    let at = Duration::from_secs;
    assert_eq!(a.try_hold(at(1000), duration).await, Attempt::Held);
    assert_eq!(
        b.try_hold(at(1001), duration).await,
        Attempt::HeldBy("ctl-a".into())
    );
    assert_eq!(a.try_hold(at(1002), duration).await, Attempt::Held);
    assert_eq!(b.try_hold(at(1005), duration).await, Attempt::Held);
    // The file is the lease: `<holder> <renewed ms> <duration ms>`.
    let text = std::fs::read_to_string(dir.join("porter-controller")).expect("lease file");
    assert_eq!(text, "ctl-b 1005000 3000");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_and_only_its_holder_releases() {
    let (a, b, log) = two_replicas();
    let duration = Duration::from_secs(15);
    assert_eq!(
        a.try_hold(Duration::from_secs(1000), duration).await,
        Attempt::Held
    );
    // Not b's to give up: nothing is written.
    let before = seen(&log).len();
    b.release().await.expect("release by a non-holder");
    assert!(
        seen(&log)[before..]
            .iter()
            .all(|s| s.method.as_str() == "GET")
    );
    a.release().await.expect("release");
    let released = seen(&log).last().map(|s| s.body.clone()).expect("a write");
    assert_eq!(released["spec"]["holderIdentity"], Value::Null);
    assert_eq!(released["metadata"]["resourceVersion"], "1");
    // Well inside a's 15 s, b leads at once.
    assert_eq!(
        b.try_hold(Duration::from_secs(1001), duration).await,
        Attempt::Held
    );

    let dir = std::env::temp_dir().join(format!("porter-leader-rel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = || FileLeaseDir::new(&dir).expect("temp dir");
    let a = FileLeaderLease::new(store(), "porter-controller", "ctl-a");
    let b = FileLeaderLease::new(store(), "porter-controller", "ctl-b");
    assert_eq!(
        a.try_hold(Duration::from_secs(1000), duration).await,
        Attempt::Held
    );
    b.release().await.expect("release by a non-holder");
    a.release().await.expect("release");
    assert_eq!(
        b.try_hold(Duration::from_secs(1001), duration).await,
        Attempt::Held
    );
    let _ = std::fs::remove_dir_all(dir);
}

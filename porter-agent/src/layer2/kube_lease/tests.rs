//! What the Lease store sends, against a mock API server.
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

/// One request as the API server saw it.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: String,
    body: Value,
}

/// A client whose API server answers with `reply(method, uri)`, recording
/// the requests; serves until the client is dropped.
fn mock(
    reply: impl Fn(&Method, &str) -> (StatusCode, Value) + Send + 'static,
) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let uri = parts.uri.to_string();
            let (status, answer) = reply(&parts.method, &uri);
            seen.push(Seen {
                method: parts.method,
                uri,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                .expect("static response");
            send.send_response(response);
        }
        seen
    });
    (Client::new(service, "porter-system"), server)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

fn lease_json(name: &str, holder: &str, renewed: &str, version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "porter-system", "resourceVersion": version,
                     "labels": {KIND_LABEL: "eip"},
                     "annotations": {EIP_ANNOTATION: "192.0.2.10", DURATION_ANNOTATION: "1000"}},
        "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 1}
    })
}

fn eip() -> IpAddr {
    "192.0.2.10".parse().expect("address")
}

/// 2026-01-01T00:00:00Z as a duration since the epoch.
const T0: Duration = Duration::from_secs(1_767_225_600);

#[tokio::test]
async fn a_free_eip_lease_is_created_for_us() {
    let (client, server) = mock(|method, _| match *method {
        Method::GET => (StatusCode::NOT_FOUND, status(404, "NotFound")),
        _ => (
            StatusCode::CREATED,
            lease_json(
                "porter-l2-192.0.2.10",
                "n1",
                "2026-01-01T00:00:00.000000Z",
                "1",
            ),
        ),
    });
    let leases = KubeLeases::new(client, "porter-system");
    assert!(
        leases
            .acquire(eip(), "n1", T0, Duration::from_secs(1))
            .await
            .expect("acquire")
    );
    drop(leases);
    let seen = server.await.expect("server");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, Method::POST);
    assert!(
        seen[1]
            .uri
            .starts_with("/apis/coordination.k8s.io/v1/namespaces/porter-system/leases?"),
        "{}",
        seen[1].uri
    );
    let body = &seen[1].body;
    assert_eq!(body["metadata"]["name"], "porter-l2-192.0.2.10");
    assert_eq!(body["spec"]["holderIdentity"], "n1");
    assert_eq!(body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(
        body["metadata"]["annotations"][EIP_ANNOTATION],
        "192.0.2.10"
    );
    assert_eq!(body["metadata"]["annotations"][DURATION_ANNOTATION], "1000");
    assert_eq!(body["metadata"]["labels"][KIND_LABEL], "eip");
}

#[tokio::test]
async fn a_lease_another_node_holds_is_left_alone_until_it_expires() {
    let (client, server) = mock(|_, _| {
        (
            StatusCode::OK,
            lease_json(
                "porter-l2-192.0.2.10",
                "n2",
                "2026-01-01T00:00:00.000000Z",
                "7",
            ),
        )
    });
    let leases = KubeLeases::new(client, "porter-system");
    let half = T0 + Duration::from_millis(500);
    assert!(
        !leases
            .acquire(eip(), "n1", half, Duration::from_secs(1))
            .await
            .expect("read")
    );
    drop(leases);
    let seen = server.await.expect("server");
    assert_eq!(seen.len(), 1, "no write while n2's lease runs");
}

#[tokio::test]
async fn an_expired_lease_is_replaced_with_its_resource_version_and_a_lost_race_is_no_error() {
    let (client, server) = mock(|method, _| match *method {
        Method::GET => (
            StatusCode::OK,
            lease_json(
                "porter-l2-192.0.2.10",
                "n2",
                "2026-01-01T00:00:00.000000Z",
                "7",
            ),
        ),
        _ => (StatusCode::CONFLICT, status(409, "Conflict")),
    });
    let leases = KubeLeases::new(client, "porter-system");
    let later = T0 + Duration::from_secs(2);
    assert!(
        !leases
            .acquire(eip(), "n1", later, Duration::from_secs(1))
            .await
            .expect("race")
    );
    drop(leases);
    let seen = server.await.expect("server");
    assert_eq!(seen[1].method, Method::PUT);
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "7");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "n1");
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn read_sorts_heartbeats_and_eip_leases() {
    let (client, server) = mock(|_, _| {
        let mut heartbeat = lease_json("porter-node-n3", "n3", "2026-01-01T00:00:00.500000Z", "3");
        heartbeat["metadata"]["labels"][KIND_LABEL] = json!("heartbeat");
        (
            StatusCode::OK,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {},
                   "items": [heartbeat, lease_json("porter-l2-192.0.2.10", "n2", "2026-01-01T00:00:00.000000Z", "7")]}),
        )
    });
    let leases = KubeLeases::new(client, "porter-system");
    let view = leases.read().await.expect("read");
    drop(leases);
    let seen = server.await.expect("server");
    assert!(
        seen[0]
            .uri
            .contains("labelSelector=porter.kubesphere.io%2Flayer2"),
        "{}",
        seen[0].uri
    );
    assert_eq!(
        view.heartbeats.get("n3"),
        Some(&(T0 + Duration::from_millis(500)))
    );
    let lease = view.leases.get(&eip()).expect("eip lease");
    assert_eq!(
        (lease.holder.as_str(), lease.renewed, lease.duration),
        ("n2", T0, Duration::from_secs(1))
    );
}

#[test]
fn lease_names_are_valid_kubernetes_names() {
    assert_eq!(eip_lease_name(eip()), "porter-l2-192.0.2.10");
    assert_eq!(
        eip_lease_name("fd00:30::".parse().expect("v6")),
        "porter-l2-fd000030000000000000000000000000"
    );
    assert_eq!(heartbeat_name("node-1"), "porter-node-node-1");
}

//! What the kube writer sends, checked against a mock API server.

use super::*;
use http::{Method, Request, Response};
use kube::client::Body;

/// One request as the API server saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub content_type: String,
    pub body: serde_json::Value,
}

/// A client whose API server answers each request with `reply`, recording
/// what it was asked. At most `expect` requests are served.
pub fn mock_client(
    expect: usize,
    reply: serde_json::Value,
) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..expect {
            let Some((request, send)) = handle.next_request().await else {
                break;
            };
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            seen.push(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            });
            let response = Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                .expect("static response");
            send.send_response(response);
        }
        seen
    });
    (Client::new(service, "default"), server)
}

fn service_json() -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}})
}

#[tokio::test]
async fn service_status_is_server_side_applied_to_the_status_subresource() {
    let (client, server) = mock_client(1, service_json());
    let w = KubeWriter::new(client, None, None);
    let ip: IpAddr = "192.168.0.100".parse().expect("ip");
    w.service_ingress(&ObjectKey::new("shop", "web"), &[ip])
        .await
        .expect("patch");
    let seen = server.await.expect("server");
    assert_eq!(seen[0].method, Method::PATCH);
    assert!(
        seen[0]
            .uri
            .starts_with("/api/v1/namespaces/shop/services/web/status?"),
        "{}",
        seen[0].uri
    );
    assert!(
        seen[0].uri.contains("fieldManager=porter-controller")
            && seen[0].uri.contains("force=true")
    );
    assert_eq!(seen[0].content_type, "application/apply-patch+yaml");
    assert_eq!(
        seen[0].body["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.168.0.100"
    );
}

#[tokio::test]
async fn finalizer_is_added_and_removed_by_apply() {
    let (client, server) = mock_client(2, service_json());
    let w = KubeWriter::new(client, None, None);
    let key = ObjectKey::new("shop", "web");
    w.service_finalizer(&key, true).await.expect("add");
    w.service_finalizer(&key, false).await.expect("remove");
    let seen = server.await.expect("server");
    assert!(
        seen[0]
            .uri
            .starts_with("/api/v1/namespaces/shop/services/web?"),
        "{}",
        seen[0].uri
    );
    assert_eq!(
        seen[0].body["metadata"]["finalizers"],
        json!([SERVICE_FINALIZER])
    );
    assert_eq!(seen[1].body["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn eip_status_goes_to_the_cluster_scoped_status_subresource() {
    let reply = json!({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                       "metadata": {"name": "pool"}, "spec": {"address": "10.0.0.0/24"}});
    let (client, server) = mock_client(1, reply);
    let w = KubeWriter::new(client, None, None);
    let status = EipStatus {
        usage: 3,
        pool_size: 256,
        ready: true,
        ..Default::default()
    };
    w.eip_status("pool", &status).await.expect("patch");
    let seen = server.await.expect("server");
    assert!(
        seen[0]
            .uri
            .starts_with("/apis/network.kubesphere.io/v1alpha2/eips/pool/status?"),
        "{}",
        seen[0].uri
    );
    assert_eq!(seen[0].body["status"]["usage"], 3);
    assert_eq!(seen[0].body["status"]["poolSize"], 256);
}

#[tokio::test]
async fn events_name_the_service_and_the_reason() {
    let reply = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x", "namespace": "shop"},
                       "eventTime": "2026-01-01T00:00:00.000000Z"});
    let (client, server) = mock_client(1, reply);
    let w = KubeWriter::new(client, Some("porter-0".into()), None);
    w.event(&Event {
        regarding: Regarding::Service(ObjectKey::new("shop", "web")),
        type_: EventType::Warning,
        reason: "AllocationFailed",
        message: "no free IPv4 address in pool(s) tiny".into(),
    })
    .await
    .expect("event");
    let seen = server.await.expect("server");
    assert_eq!(seen[0].method, Method::POST);
    assert!(
        seen[0]
            .uri
            .starts_with("/apis/events.k8s.io/v1/namespaces/shop/events"),
        "{}",
        seen[0].uri
    );
    assert_eq!(seen[0].body["reason"], "AllocationFailed");
    assert_eq!(seen[0].body["type"], "Warning");
    assert_eq!(seen[0].body["regarding"]["name"], "web");
    assert_eq!(seen[0].body["note"], "no free IPv4 address in pool(s) tiny");
}

//! What the kube writer sends, checked against a mock API server.

use super::*;
use crate::testing::{mock_client, seen};
use http::Method;

fn service_json() -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}})
}

#[tokio::test]
async fn service_status_is_server_side_applied_to_the_status_subresource() {
    let (client, log) = mock_client(|_| service_json());
    let w = KubeWriter::new(client, None, None);
    let ip: IpAddr = "192.168.0.100".parse().expect("ip");
    w.service_ingress(&ObjectKey::new("shop", "web"), &[ip])
        .await
        .expect("patch");
    let seen = seen(&log);
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
        seen[0].body["status"]["loadBalancer"]["ingress"][0],
        serde_json::json!({"ip": "192.168.0.100"}),
        "only the address: ipMode unset means VIP, and API servers before 1.29 refuse the field"
    );
}

#[tokio::test]
async fn finalizer_is_added_and_removed_by_apply() {
    let (client, log) = mock_client(|_| service_json());
    let w = KubeWriter::new(client, None, None);
    let key = ObjectKey::new("shop", "web");
    w.service_finalizer(&key, true).await.expect("add");
    w.service_finalizer(&key, false).await.expect("remove");
    let seen = seen(&log);
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
    let (client, log) = mock_client(move |_| reply.clone());
    let w = KubeWriter::new(client, None, None);
    let status = EipStatus {
        usage: 3,
        pool_size: 256,
        ready: true,
        ..Default::default()
    };
    w.eip_status("pool", &status).await.expect("patch");
    let seen = seen(&log);
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
    let (client, log) = mock_client(move |_| reply.clone());
    let w = KubeWriter::new(client, Some("porter-0".into()), None);
    w.event(&Event {
        regarding: Regarding::Service(ObjectKey::new("shop", "web")),
        type_: EventType::Warning,
        reason: "AllocationFailed",
        message: "no free IPv4 address in pool(s) tiny".into(),
    })
    .await
    .expect("event");
    let seen = seen(&log);
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

/// The API server's answer to a list (one Service, everything else empty)
/// or, for a watch, an empty stream.
fn cluster_reply(request: &crate::testing::Seen) -> serde_json::Value {
    if request.uri.contains("watch=true") {
        return serde_json::Value::Null;
    }
    let items = if request.uri.starts_with("/api/v1/services") {
        vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
                    "spec": {"type": "LoadBalancer"}})]
    } else {
        vec![]
    };
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

#[tokio::test]
async fn the_first_snapshot_holds_every_kind_once_listed() {
    let (client, log) = mock_client(cluster_reply);
    let (rx, stores) = start_watching(client, &Watch::default()).await;
    let snap = rx.borrow().clone();
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.services[0].metadata.name.as_deref(), Some("web"));
    assert!(snap.eips.is_empty() && snap.nodes.is_empty());
    assert_eq!(stores.services.state().len(), 1);
    let paths: Vec<String> = seen(&log)
        .iter()
        .map(|s| s.uri.split('?').next().unwrap_or_default().to_string())
        .collect();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/apis/network.kubesphere.io/v1alpha2/eips",
        "/apis/network.kubesphere.io/v1alpha2/bgpconfs",
        "/apis/network.kubesphere.io/v1alpha2/bgppeers",
        "/api/v1/namespaces/porter-system/configmaps",
    ] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} never listed: {paths:?}"
        );
    }
    let cm = seen(&log).into_iter().find(|s| {
        s.uri
            .starts_with("/api/v1/namespaces/porter-system/configmaps")
    });
    assert!(
        cm.is_some_and(|s| s.uri.contains("fieldSelector=metadata.name%3Dbgp-cfg")),
        "only bgp-cfg is watched"
    );
}

#[tokio::test]
async fn a_changed_message_is_a_new_event_not_a_repeat_of_the_old_one() {
    let reply = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x", "namespace": "shop"},
                       "eventTime": "2026-01-01T00:00:00.000000Z"});
    let (client, log) = mock_client(move |_| reply.clone());
    let w = KubeWriter::new(client, Some("porter-0".into()), None);
    for node in ["n2", "n3"] {
        w.event(&Event {
            regarding: Regarding::Service(ObjectKey::new("shop", "web")),
            type_: EventType::Normal,
            reason: "Layer2Announcing",
            message: format!("node {node} now answers ARP for 192.168.1.240"),
        })
        .await
        .expect("event");
    }
    let seen = seen(&log);
    let notes: Vec<_> = seen
        .iter()
        .map(|s| (s.method.clone(), s.body["note"].clone()))
        .collect();
    assert_eq!(
        notes,
        [
            (
                Method::POST,
                json!("node n2 now answers ARP for 192.168.1.240")
            ),
            (
                Method::POST,
                json!("node n3 now answers ARP for 192.168.1.240")
            ),
        ]
    );
    assert_eq!(seen[1].body["reportingController"], "porter-controller");
    assert_eq!(seen[1].body["reportingInstance"], "porter-0");
}

#[test]
fn each_speaker_owns_its_bgppeer_status_entry_under_its_own_field_manager() {
    assert_eq!(peer_status_field_manager("n1"), "porter-agent-n1");
    assert_eq!(
        peer_status_field_manager(CONTROLLER_STATUS_KEY),
        FIELD_MANAGER
    );
    // Field managers are at most 128 characters; node names may be 253.
    let long = "n".repeat(253);
    assert_eq!(peer_status_field_manager(&long).len(), 128);
    assert_eq!(
        peer_status_patch(None)["status"]["nodes"],
        json!([]),
        "removing applies an empty list, dropping only this manager's entry"
    );
}

/// Every list answers empty; watches fail and back off, which is enough to
/// see what the reflectors ask for.
fn empty_lists() -> (Client, crate::testing::Log) {
    mock_client(
        |_| json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

fn secret_requests(log: &crate::testing::Log) -> Vec<String> {
    seen(log)
        .into_iter()
        .map(|s| s.uri)
        .filter(|u| u.contains("secrets"))
        .collect()
}

#[tokio::test]
async fn secrets_are_watched_only_in_the_namespaces_given() {
    let (client, log) = empty_lists();
    let watch = Watch {
        secret_namespaces: vec!["porter-system".into()],
        ..Watch::default()
    };
    let (snapshots, _stores) =
        tokio::time::timeout(Duration::from_secs(20), start_watching(client, &watch))
            .await
            .expect("every store is listed");
    assert!(snapshots.borrow().secrets.is_empty());
    let requests = secret_requests(&log);
    assert!(!requests.is_empty(), "Secrets are not read at all");
    for uri in &requests {
        assert!(
            uri.starts_with("/api/v1/namespaces/porter-system/secrets?"),
            "a Secret request outside porter-system (RBAC allows no more): {uri}"
        );
    }

    // Given no namespace, no Secret is read anywhere.
    let (client, log) = empty_lists();
    tokio::time::timeout(
        Duration::from_secs(20),
        start_watching(client, &Watch::default()),
    )
    .await
    .expect("every store is listed");
    assert_eq!(secret_requests(&log), Vec::<String>::new());
}

/// A Role trimmed of `list` on Services: the API server refuses with 403.
/// The first list can never complete, and `/readyz` (through [`Health`])
/// says which permission is missing instead of a bare "not ready".
#[tokio::test]
async fn a_refused_watch_fails_readiness_naming_the_missing_permission() {
    const REFUSAL: &str = "services is forbidden: User \"system:serviceaccount:porter-system:porter-agent\" cannot list resource \"services\" in API group \"\" at the cluster scope";
    let (client, _log) = crate::testing::mock_client_with_status(|request| {
        if request.uri.starts_with("/api/v1/services") {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                "message": REFUSAL, "reason": "Forbidden", "code": 403});
            return (403, status);
        }
        (200, cluster_reply(request))
    });
    let health = Health::starting();
    let watch = Watch {
        health: health.clone(),
        ..Watch::default()
    };
    let waiting = tokio::spawn(async move { start_watching(client, &watch).await });
    let reason = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(why) = health.readiness()
                && why != "starting"
            {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the refusal is reported");
    assert_eq!(reason, format!("cannot watch Services: {REFUSAL}"));
    assert!(!waiting.is_finished(), "the first snapshot lacks Services");
    waiting.abort();
}

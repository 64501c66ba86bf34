//! Uninstall against a mock API server.

use http::Method;
use serde_json::Value;

use super::*;
use crate::testing::{Seen, mock_client_with_status, seen};

/// `shop/web`: Porter's, with its finalizer beside someone else's and an
/// address. `shop/gone`: no longer opted in, still with Porter's finalizer.
/// `shop/db`: another load balancer's, untouched.
fn services() -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "10"}, "items": [
        {"metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                      "annotations": {"lb.kubesphere.io/v1alpha1": "porter"},
                      "finalizers": ["example.com/keep", SERVICE_FINALIZER]},
         "spec": {"type": "LoadBalancer"},
         "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}},
        {"metadata": {"name": "gone", "namespace": "shop", "resourceVersion": "8",
                      "finalizers": [SERVICE_FINALIZER]},
         "spec": {"type": "ClusterIP"}},
        {"metadata": {"name": "db", "namespace": "shop", "resourceVersion": "9",
                      "finalizers": ["example.com/keep"]},
         "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other"},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}
    ]})
}

fn patched() -> Value {
    // The status patch answers with the Service at its new resourceVersion.
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "11"}})
}

fn cluster(request: &Seen) -> (u16, Value) {
    match request.method {
        Method::GET if request.uri.starts_with("/api/v1/services") => (200, services()),
        Method::GET => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        ),
        _ => (200, patched()),
    }
}

#[tokio::test]
async fn porters_finalizer_and_addresses_come_off_and_nothing_else_changes() {
    let (client, log) = mock_client_with_status(cluster);
    check_no_leader(
        &client,
        "porter-system",
        "porter-controller",
        k8s_openapi::jiff::Timestamp::now(),
    )
    .await
    .expect("no Lease: no controller");
    let report = remove_finalizers(&client).await.expect("uninstall");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let done: Vec<String> = report.done.iter().map(|c| c.service.to_string()).collect();
    assert_eq!(done, ["shop/web", "shop/gone"]);

    let writes: Vec<Seen> = seen(&log)
        .into_iter()
        .filter(|s| s.method == Method::PATCH)
        .collect();
    let summary: Vec<(&str, &str)> = writes
        .iter()
        .map(|s| {
            (
                s.uri.split('?').next().unwrap_or_default(),
                s.content_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/api/v1/namespaces/shop/services/web/status",
                "application/merge-patch+json"
            ),
            (
                "/api/v1/namespaces/shop/services/web",
                "application/merge-patch+json"
            ),
            (
                "/api/v1/namespaces/shop/services/gone",
                "application/merge-patch+json"
            ),
        ],
        "shop/db is another load balancer's"
    );
    assert_eq!(
        writes[0].body,
        json!({"status": {"loadBalancer": {"ingress": null}}})
    );
    assert_eq!(
        writes[1].body,
        json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "11"}}),
        "only Porter's finalizer goes, and only if nobody changed the list since"
    );
    assert_eq!(
        writes[2].body,
        json!({"metadata": {"finalizers": [], "resourceVersion": "8"}})
    );
    assert!(
        writes
            .iter()
            .all(|w| w.uri.contains("fieldManager=porter-uninstall"))
    );
}

#[tokio::test]
async fn a_leading_controller_is_not_raced() {
    let now = k8s_openapi::jiff::Timestamp::now();
    let renewed = now.to_string();
    let (client, _log) = mock_client_with_status(move |_| {
        (
            200,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "porter-controller", "namespace": "porter-system"},
                     "spec": {"holderIdentity": "porter-controller-abc", "renewTime": renewed,
                              "leaseDurationSeconds": 15}}),
        )
    });
    let err = check_no_leader(&client, "porter-system", "porter-controller", now)
        .await
        .expect_err("a fresh holder leads");
    let message = err.to_string();
    assert!(
        message.contains("held by porter-controller-abc"),
        "{message}"
    );
    assert!(message.contains("--replicas=0"), "{message}");
    // The same Lease a minute later has lapsed: the controller is gone.
    let later = now + k8s_openapi::jiff::SignedDuration::from_secs(60);
    check_no_leader(&client, "porter-system", "porter-controller", later)
        .await
        .expect("a lapsed Lease leads nobody");
}

#[test]
fn the_finalizer_patch_carries_the_resource_version_it_read() {
    // The conflict itself is the API server's (resourceVersion in the
    // patch); here: the patch always carries it.
    let svc: Service = serde_json::from_value(services()["items"][1].clone()).expect("service");
    let cleanup = cleanup_of(&svc).expect("Porter's finalizer");
    assert_eq!(cleanup.resource_version.as_deref(), Some("8"));
    assert_eq!(cleanup.finalizers, Some(vec![]));
    assert!(!cleanup.clear_ingress, "not Porter's Service any more");
}

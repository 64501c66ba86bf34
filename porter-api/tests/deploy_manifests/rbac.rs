//! The RBAC of deploy/porter.yaml against the requests the binaries make,
//! both ways: every request is allowed (a trimmed Role would leave a binary
//! waiting for a list that never comes), and every granted verb is used by
//! some request (a verb nothing uses is attack surface). The requests of
//! porter-api's own code (the reflectors, the status writer, the Layer 2
//! Lease watch, `porter-controller uninstall`, which deploy/uninstall.yaml
//! runs with the controller's service account) are recorded from a mock API server; those of the
//! agent's Lease store and of the leader election are listed by hand.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use porter_api::health::Health;
use porter_api::source::kube::{KubeWriter, Watch, start_watching};
use porter_api::source::{Event, EventType, Regarding, StatusWriter, layer2};
use porter_api::testing::{Log, Seen, mock_client, seen};
use porter_api::{EipStatus, ObjectKey, uninstall};
use serde_json::{Value, json};

use super::bundle_of;

const CONTROLLER: &str = "porter-controller";
const AGENT: &str = "porter-agent";
const LAYER2_NAMESPACE: &str = porter_api::layer2::LEASE_NAMESPACE;

/// One request as the RBAC authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    verb: String,
    group: String,
    /// With its subresource: `services/status`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Call {
    fn new(verb: &str, group: &str, resource: &str, namespace: &str, name: Option<&str>) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: Some(namespace.into()),
            name: name.map(Into::into),
        }
    }

    /// `/api/v1/namespaces/shop/services/web/status?...` as PATCH: patch
    /// `services/status` named `web` in `shop`.
    fn of(request: &Seen) -> Self {
        let (path, query) = request.uri.split_once('?').unwrap_or((&request.uri, ""));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("not an API path: {}", request.uri),
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
            rest => (None, rest),
        };
        let resource = match rest {
            [resource, _name, sub] => format!("{resource}/{sub}"),
            [resource, ..] => (*resource).to_owned(),
            [] => panic!("no resource: {}", request.uri),
        };
        let name = rest.get(1).copied();
        let watch = query.split('&').any(|p| p == "watch=true");
        let verb = match (&request.method, name) {
            (&Method::GET, _) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, None) => "deletecollection",
            (&Method::DELETE, Some(_)) => "delete",
            (method, _) => panic!("unexpected method {method}"),
        };
        Self {
            verb: verb.into(),
            group: group.into(),
            resource,
            namespace: namespace.map(Into::into),
            name: name
                .filter(|_| verb != "watch" && verb != "list")
                .map(Into::into),
        }
    }
}

/// Every list is empty, a watch ends at once (and is retried), a write is
/// answered with `{}` (the writers' errors do not matter here).
fn reply(request: &Seen) -> Value {
    if request.method == Method::GET && !request.uri.contains("watch=true") {
        return json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
    }
    if request.method == Method::GET {
        return Value::Null;
    }
    json!({})
}

/// Waits until every listed collection has been watched too, then returns
/// the requests as calls.
async fn calls_once_watching(log: &Log) -> Vec<Call> {
    for _ in 0..500 {
        let calls: Vec<Call> = seen(log).iter().map(Call::of).collect();
        let unwatched = calls.iter().filter(|c| c.verb == "list").any(|list| {
            !calls.iter().any(|c| {
                c.verb == "watch" && c.resource == list.resource && c.namespace == list.namespace
            })
        });
        if !unwatched {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a list was never followed by its watch");
}

fn event() -> Event {
    Event {
        regarding: Regarding::Service(ObjectKey::new("shop", "web")),
        type_: EventType::Normal,
        reason: "IPAllocated",
        message: "192.0.2.10".into(),
    }
}

/// What the controller asks of the API server, as `deploy/porter.yaml` runs it.
async fn controller_calls() -> Vec<Call> {
    let (client, log) = mock_client(reply);
    let watch = Watch {
        secret_namespaces: vec!["porter-system".into()],
        health: Health::starting(),
    };
    let _snapshots = start_watching(client.clone(), &watch).await;
    let _holders = layer2::watch_kube(client.clone(), LAYER2_NAMESPACE, &Health::starting()).await;
    let writer = KubeWriter::new(client.clone(), None, None);
    let web = ObjectKey::new("shop", "web");
    let _ = writer.service_ingress(&web, &[]).await;
    let _ = writer.service_finalizer(&web, true).await;
    let _ = writer.eip_status("pool", &EipStatus::default()).await;
    let _ = writer
        .bgp_peer_status("tor", porter_api::crd::CONTROLLER_STATUS_KEY, None)
        .await;
    let _ = writer.event(&event()).await;
    // The liveness check's state on a Node (central mode, docs/bfd.md).
    let down = porter_api::node_reachability::Reachability::Down.condition();
    let _ = writer.node_condition("node-1", &down).await;
    let mut calls = calls_once_watching(&log).await;
    calls.extend(uninstall_calls().await);
    // Leader election (porter-controller's leader_lease, through
    // porter_api::lease::compare_and_set): reads the Lease, creates it when
    // missing, and takes, renews or releases it with an update that carries
    // the resourceVersion it read.
    let election = Some("porter-controller");
    calls.extend([
        Call::new(
            "get",
            "coordination.k8s.io",
            "leases",
            "porter-system",
            election,
        ),
        Call::new(
            "create",
            "coordination.k8s.io",
            "leases",
            "porter-system",
            None,
        ),
        Call::new(
            "update",
            "coordination.k8s.io",
            "leases",
            "porter-system",
            election,
        ),
    ]);
    calls
}

/// What uninstall asks, given one Service with Porter's finalizer and address.
async fn uninstall_calls() -> Vec<Call> {
    let (client, log) = mock_client(|request| {
        if request.method == Method::GET && request.uri.starts_with("/api/v1/services") {
            return json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "1"}, "items": [
                {"metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1",
                              "annotations": {"lb.kubesphere.io/v1alpha1": "porter"},
                              "finalizers": [porter_api::annotations::SERVICE_FINALIZER]},
                 "spec": {"type": "LoadBalancer"},
                 "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}]});
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}})
    });
    let now = k8s_openapi::jiff::Timestamp::now();
    let _ = uninstall::check_no_leader(&client, "porter-system", "porter-controller", now).await;
    let report = uninstall::remove_finalizers(&client)
        .await
        .expect("uninstall");
    assert_eq!(report.done.len(), 1, "{report:?}");
    seen(&log).iter().map(Call::of).collect()
}

/// What an agent asks: the same watches without Secrets (it reads them only
/// when given --secret-namespaces, for node mode), its node's BgpPeer
/// status entry, its Node's data plane condition, and its Layer 2 Leases (porter-agent's `KubeLeases`: get,
/// create or compare-and-set replace, list, delete on release).
async fn agent_calls() -> Vec<Call> {
    let (client, log) = mock_client(reply);
    let _snapshots = start_watching(client.clone(), &Watch::default()).await;
    let writer = KubeWriter::new(client, None, None);
    let _ = writer.bgp_peer_status("tor", "node-1", None).await;
    // Node mode: BfdDown and BfdUp Events on the BgpPeer.
    let _ = writer.event(&event()).await;
    // Its node's data plane condition (a frozen data plane is withdrawn).
    let frozen = porter_api::node_dataplane::condition(false, "NewerPinLayout", "roll forward");
    let _ = writer.node_condition("node-1", &frozen).await;
    let mut calls = calls_once_watching(&log).await;
    let lease = Some("porter-l2-192.0.2.10");
    for verb in ["get", "create", "update", "delete"] {
        let name = lease.filter(|_| verb != "create");
        calls.push(Call::new(
            verb,
            "coordination.k8s.io",
            "leases",
            LAYER2_NAMESPACE,
            name,
        ));
    }
    calls.push(Call::new(
        "list",
        "coordination.k8s.io",
        "leases",
        LAYER2_NAMESPACE,
        None,
    ));
    calls
}

/// A rule as granted: where it applies (`None`: every namespace and the
/// cluster scope).
struct Grant {
    role: String,
    namespace: Option<String>,
    rule: PolicyRule,
}

/// The rules bound to the service account `who`.
fn grants(who: &str) -> Vec<Grant> {
    let cluster_roles = bundle_of::<ClusterRole>("ClusterRole");
    let roles = bundle_of::<Role>("Role");
    let binds = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount" && s.name == who)
    };
    let rules_of_cluster_role = |name: &str| -> Vec<PolicyRule> {
        cluster_roles
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(name))
            .flat_map(|r| r.rules.clone().unwrap_or_default())
            .collect()
    };
    let mut out = Vec::new();
    for binding in bundle_of::<ClusterRoleBinding>("ClusterRoleBinding") {
        if binds(&binding.subjects) {
            for rule in rules_of_cluster_role(&binding.role_ref.name) {
                out.push(Grant {
                    role: binding.role_ref.name.clone(),
                    namespace: None,
                    rule,
                });
            }
        }
    }
    for binding in bundle_of::<RoleBinding>("RoleBinding") {
        if !binds(&binding.subjects) {
            continue;
        }
        let namespace = binding
            .metadata
            .namespace
            .clone()
            .expect("a RoleBinding has a namespace");
        let rules = if binding.role_ref.kind == "ClusterRole" {
            rules_of_cluster_role(&binding.role_ref.name)
        } else {
            roles
                .iter()
                .filter(|r| {
                    r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                        && r.metadata.namespace.as_deref() == Some(namespace.as_str())
                })
                .flat_map(|r| r.rules.clone().unwrap_or_default())
                .collect()
        };
        for rule in rules {
            out.push(Grant {
                role: binding.role_ref.name.clone(),
                namespace: Some(namespace.clone()),
                rule,
            });
        }
    }
    out
}

/// Whether `grant` covers `verb` of `call` (the authorizer's matching,
/// without wildcards, which the bundle does not use).
fn covers(grant: &Grant, verb: &str, call: &Call) -> bool {
    let rule = &grant.rule;
    let has = |list: &Option<Vec<String>>, item: &str| list.iter().flatten().any(|x| x == item);
    rule.verbs.iter().any(|v| v == verb)
        && has(&rule.api_groups, &call.group)
        && has(&rule.resources, &call.resource)
        && (grant.namespace.is_none() || grant.namespace == call.namespace)
        && match &rule.resource_names {
            None => true,
            Some(names) if names.is_empty() => true,
            Some(names) => call.name.as_ref().is_some_and(|n| names.contains(n)),
        }
}

fn check(who: &str, calls: &[Call]) {
    let grants = grants(who);
    for call in calls {
        assert!(
            grants.iter().any(|g| covers(g, &call.verb, call)),
            "{who} may not {} {} {:?} in {:?} (name {:?}), which it does",
            call.verb,
            call.group,
            call.resource,
            call.namespace,
            call.name
        );
    }
    for grant in &grants {
        for verb in &grant.rule.verbs {
            assert!(
                calls
                    .iter()
                    .any(|c| c.verb == *verb && covers(grant, verb, c)),
                "{who} is granted `{verb}` on {:?} by {} (in {:?}), which no code of it uses",
                grant.rule.resources,
                grant.role,
                grant.namespace
            );
        }
    }
}

#[tokio::test]
async fn the_controller_is_granted_exactly_what_it_asks_for() {
    let calls = controller_calls().await;
    assert!(
        calls
            .iter()
            .any(|c| c.resource == "secrets" && c.verb == "watch"),
        "the controller reads BgpPeer passwords"
    );
    check(CONTROLLER, &calls);
}

#[tokio::test]
async fn an_agent_is_granted_exactly_what_it_asks_for_and_cannot_reach_the_election_lease() {
    let calls = agent_calls().await;
    assert!(
        calls.iter().all(|c| c.resource != "secrets"),
        "without --secret-namespaces the agent reads no Secret: {calls:?}"
    );
    check(AGENT, &calls);
    let grants = grants(AGENT);
    for verb in ["get", "create", "update", "patch", "delete"] {
        let election = Call::new(
            verb,
            "coordination.k8s.io",
            "leases",
            "porter-system",
            Some("porter-controller"),
        );
        assert!(
            !grants.iter().any(|g| covers(g, verb, &election)),
            "an agent may {verb} the controller's election Lease"
        );
    }
    let secrets = Call::new("list", "", "secrets", "porter-system", None);
    assert!(
        !grants.iter().any(|g| covers(g, "list", &secrets)),
        "an agent may read Secrets without needing them"
    );
}

#[test]
fn calls_are_read_from_request_paths() {
    let seen = |method: Method, uri: &str| Seen {
        method,
        uri: uri.into(),
        content_type: String::new(),
        body: Value::Null,
    };
    assert_eq!(
        Call::of(&seen(
            Method::PATCH,
            "/api/v1/namespaces/shop/services/web/status?fieldManager=x"
        )),
        Call::new("patch", "", "services/status", "shop", Some("web"))
    );
    let list = Call::of(&seen(Method::GET, "/api/v1/namespaces?limit=500"));
    assert_eq!(
        (list.verb.as_str(), list.resource.as_str(), list.namespace),
        ("list", "namespaces", None)
    );
    let watch = Call::of(&seen(
        Method::GET,
        "/apis/coordination.k8s.io/v1/namespaces/porter-layer2/leases?watch=true&labelSelector=x",
    ));
    assert_eq!(
        watch,
        Call {
            name: None,
            ..Call::new(
                "watch",
                "coordination.k8s.io",
                "leases",
                "porter-layer2",
                None
            )
        }
    );
}

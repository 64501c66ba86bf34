//! deploy/porter.yaml and deploy/samples/ are what users apply. Every
//! document must be a well-typed object of its kind with no field the API
//! would drop, the bundle's CRDs must be the generated ones, the samples must
//! pass the CRDs' schemas, and the RBAC and pod specs must keep their
//! least-privilege promises.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

#[path = "deploy_manifests/rbac.rs"]
mod rbac;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of `path`, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML maps to JSON"))
        .collect()
}

fn sample_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("samples"))
        .expect("deploy/samples exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Paths present in `original` but absent or different after a typed round
/// trip: fields the type does not know (a typo, or a field the API drops).
fn lost_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(t) => lost_fields(value, t, &format!("{path}.{key}"), out),
                    None if value.is_null() => {}
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(format!("fields the type does not keep: {lost:?}"))
    }
}

/// Parses `doc` as the typed object its apiVersion/kind names.
fn check_typed(doc: &Value) -> Result<(), String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc).map(drop),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc).map(drop),
        ("v1", "Service") => round_trip::<Service>(doc).map(drop),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc).map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc).map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc).map(drop),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc).map(drop),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc).map(drop),
        ("batch/v1", "Job") => round_trip::<k8s_openapi::api::batch::v1::Job>(doc).map(drop),
        ("network.kubesphere.io/v1alpha2", "Eip") => round_trip::<porter_api::Eip>(doc).map(drop),
        ("network.kubesphere.io/v1alpha1", "Eip") => {
            round_trip::<porter_api::crd::v1alpha1::Eip>(doc).map(drop)
        }
        ("network.kubesphere.io/v1alpha2", "BgpConf") => {
            round_trip::<porter_api::BgpConf>(doc).map(drop)
        }
        ("network.kubesphere.io/v1alpha2", "BgpPeer") => {
            round_trip::<porter_api::BgpPeer>(doc).map(drop)
        }
        _ => Err(format!("unexpected {api} {kind}")),
    }
}

#[test]
fn every_manifest_is_a_typed_object_without_unknown_fields() {
    let mut files = vec![
        deploy_dir().join("porter.yaml"),
        deploy_dir().join("uninstall.yaml"),
    ];
    files.extend(sample_files());
    let mut problems = Vec::new();
    let mut count = 0;
    for file in &files {
        for doc in documents(file) {
            count += 1;
            if let Err(e) = check_typed(&doc) {
                problems.push(format!(
                    "{} {} {}: {e}",
                    file.display(),
                    doc["kind"],
                    doc["metadata"]["name"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(count > 20, "only {count} documents found");
}

#[test]
fn the_bundle_carries_the_generated_crds() {
    let generated: Vec<Value> = porter_api::crd::crds()
        .expect("CRDs render")
        .into_iter()
        .map(|(_, crd)| serde_json::to_value(crd).expect("CRD to JSON"))
        .collect();
    let bundled: Vec<Value> = documents(&deploy_dir().join("porter.yaml"))
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(bundled.len(), generated.len(), "one of each CRD");
    for crd in &generated {
        assert!(
            bundled.contains(crd),
            "deploy/porter.yaml has a stale {}: run `cargo xtask gen-crds`",
            crd["metadata"]["name"]
        );
    }
}

/// The structural-schema rules the API server applies to a custom object:
/// types, required fields, enums, bounds, and no unknown fields (it would
/// prune them, silently dropping the setting).
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options.iter().any(|option| {
                let mut e = Vec::new();
                validate(option, value, path, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{path}: matches none of {key}"));
            }
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for option in all {
            validate(option, value, path, errors);
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(min) = schema["minimum"].as_f64()
        && value.as_f64().is_some_and(|v| v < min)
    {
        errors.push(format!("{path}: {value} is below {min}"));
    }
    if let Some(max) = schema["maximum"].as_f64()
        && value.as_f64().is_some_and(|v| v > max)
    {
        errors.push(format!("{path}: {value} is above {max}"));
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => {
            errors.push(format!("{path}: unknown schema type {other}"));
            true
        }
    };
    if !type_ok {
        errors.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            if let Some(name) = required.as_str()
                && !object.contains_key(name)
            {
                errors.push(format!("{path}.{name}: required"));
            }
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (key, field) in object {
            let sub = format!("{path}.{key}");
            if let Some(property) = schema["properties"].get(key) {
                validate(property, field, &sub, errors);
            } else if schema["additionalProperties"].is_object() {
                validate(&schema["additionalProperties"], field, &sub, errors);
            } else if !preserve && schema.get("properties").is_some() {
                errors.push(format!(
                    "{sub}: unknown field; the API server would prune it"
                ));
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

/// The YAML documents of the fenced ```yaml blocks of README.md and docs/*.md
/// (indented blocks too), named by file and line: the examples users copy.
fn documented_objects() -> Vec<(String, Value)> {
    let root = deploy_dir().join("..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable doc");
        let mut block: Option<(usize, usize, String)> = None;
        for (number, line) in text.lines().enumerate() {
            let indent = line.len() - line.trim_start().len();
            match &mut block {
                None if line.trim_start() == "```yaml" => {
                    block = Some((number + 1, indent, String::new()));
                }
                Some((start, _, body)) if line.trim_start() == "```" => {
                    let name = format!("{}:{start}", file.display());
                    for doc in serde_yaml::Deserializer::from_str(body) {
                        let value = serde_yaml::Value::deserialize(doc)
                            .unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}"));
                        if !value.is_null() {
                            let json = serde_json::to_value(value).expect("YAML maps to JSON");
                            out.push((name.clone(), json));
                        }
                    }
                    block = None;
                }
                Some((_, indent, body)) => {
                    body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn samples_and_documented_examples_pass_the_crd_schemas() {
    let crds: Vec<CustomResourceDefinition> = porter_api::crd::crds()
        .expect("CRDs render")
        .into_iter()
        .map(|(_, crd)| crd)
        .collect();
    let mut checked = 0;
    let mut errors = Vec::new();
    let samples = sample_files().into_iter().flat_map(|file| {
        let name = file.display().to_string();
        documents(&file)
            .into_iter()
            .map(move |doc| (name.clone(), doc))
    });
    let documented: Vec<(String, Value)> = documented_objects();
    assert!(
        documented.len() >= 2,
        "only {} documented objects",
        documented.len()
    );
    for (file, doc) in samples.chain(documented) {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let Some((group, version)) = api.split_once('/') else {
            continue;
        };
        let Some(crd) = crds.iter().find(|c| {
            c.spec.group == group && c.spec.names.kind == doc["kind"].as_str().unwrap_or("")
        }) else {
            assert_ne!(
                group, "network.kubesphere.io",
                "{file}: no CRD has kind {}",
                doc["kind"]
            );
            continue;
        };
        let served = crd
            .spec
            .versions
            .iter()
            .find(|v| v.name == version && v.served);
        let schema = served
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap_or_else(|| panic!("{file}: {api} is not a served version"));
        let schema = serde_json::to_value(schema).expect("schema to JSON");
        let mut object = doc.clone();
        if let Some(o) = object.as_object_mut() {
            // The API server handles these itself.
            o.remove("apiVersion");
            o.remove("kind");
            o.remove("metadata");
        }
        let name = format!("{file}:{}", doc["metadata"]["name"]);
        validate(&schema, &object, &name, &mut errors);
        checked += 1;
    }
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        checked >= 7,
        "only {checked} custom objects in the samples and docs"
    );
}

#[test]
fn the_schema_check_catches_what_the_api_server_would_refuse() {
    let crds = porter_api::crd::crds().expect("CRDs render");
    let (_, peer) = crds
        .iter()
        .find(|(f, _)| *f == "bgppeer.yaml")
        .expect("BgpPeer CRD");
    let schema = serde_json::to_value(
        peer.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("to JSON");
    let bad = serde_json::json!({
        "spec": {"conf": {"peerAs": "not a number", "neighborAdress": "10.0.0.1"}}
    });
    let mut errors = Vec::new();
    validate(&schema, &bad, "peer", &mut errors);
    let text = errors.join("\n");
    assert!(text.contains("peerAs"), "{text}");
    assert!(text.contains("neighborAdress: unknown field"), "{text}");
    assert!(text.contains("neighborAddress: required"), "{text}");
}

fn bundle_of<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    documents(&deploy_dir().join("porter.yaml"))
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).expect("typed"))
        .collect()
}

/// A role's name, its namespace (`None`: a ClusterRole) and its rules.
type RoleRules = (
    String,
    Option<String>,
    Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
);

/// Which service accounts a role is bound to.
fn bound_to(role: &str, namespace: Option<&str>) -> Vec<String> {
    let cluster = bundle_of::<ClusterRoleBinding>("ClusterRoleBinding")
        .into_iter()
        .filter(|b| b.role_ref.kind == "ClusterRole")
        .map(|b| (b.role_ref.name, None, b.subjects.unwrap_or_default()));
    let namespaced = bundle_of::<RoleBinding>("RoleBinding")
        .into_iter()
        .map(|b| {
            let ns = (b.role_ref.kind == "Role").then(|| b.metadata.namespace.unwrap_or_default());
            (b.role_ref.name, ns, b.subjects.unwrap_or_default())
        });
    cluster
        .chain(namespaced)
        .filter(|(name, ns, _)| name == role && ns.as_deref() == namespace)
        .flat_map(|(_, _, subjects)| subjects.into_iter().map(|s| s.name))
        .collect()
}

#[test]
fn rbac_is_least_privilege() {
    let roles: Vec<RoleRules> = bundle_of::<ClusterRole>("ClusterRole")
        .into_iter()
        .map(|r| {
            (
                r.metadata.name.unwrap_or_default(),
                None,
                r.rules.unwrap_or_default(),
            )
        })
        .chain(bundle_of::<Role>("Role").into_iter().map(|r| {
            (
                r.metadata.name.unwrap_or_default(),
                r.metadata.namespace,
                r.rules.unwrap_or_default(),
            )
        }))
        .collect();
    let mut secret_readers = Vec::new();
    for (name, namespace, rules) in &roles {
        for rule in rules {
            let all = rule
                .verbs
                .iter()
                .chain(rule.resources.iter().flatten())
                .chain(rule.api_groups.iter().flatten());
            for word in all {
                assert_ne!(word, "*", "role {name} uses a wildcard");
            }
            if rule.resources.iter().flatten().any(|r| r == "secrets") {
                // Only Porter's own namespace, only reading: the controller
                // keys its BGP sessions with these passwords (the agents, in
                // node mode, only when the operator grants them).
                assert_eq!(
                    namespace.as_deref(),
                    Some("porter-system"),
                    "role {name} reads Secrets outside porter-system"
                );
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                assert_eq!(verbs, ["list", "watch"], "role {name} on Secrets");
                assert_eq!(
                    rule.resources.as_deref(),
                    Some(&["secrets".to_string()][..]),
                    "role {name}: Secrets get a rule of their own"
                );
                assert!(
                    rule.resource_names.is_none(),
                    "a watch cannot be limited by resourceNames"
                );
                let mut readers = bound_to(name, namespace.as_deref());
                readers.sort();
                assert_eq!(
                    readers,
                    ["porter-controller"],
                    "role {name} reads Secrets for someone else than the controller"
                );
                secret_readers.push(name.clone());
            }
        }
    }
    assert_eq!(
        secret_readers.len(),
        1,
        "BgpPeer passwords need one Role on Secrets: {secret_readers:?}"
    );
    // The agent only reads, except the Leases that guard Layer 2 leadership,
    // its entry in BgpPeer status (node mode) and its Node's data plane
    // condition, which it only patches, and the Events it creates.
    let bound_to_agent: Vec<String> = bundle_of::<ClusterRoleBinding>("ClusterRoleBinding")
        .into_iter()
        .map(|b| (b.role_ref.name, b.subjects.unwrap_or_default()))
        .chain(
            bundle_of::<RoleBinding>("RoleBinding")
                .into_iter()
                .map(|b| (b.role_ref.name, b.subjects.unwrap_or_default())),
        )
        .filter(|(_, subjects)| subjects.iter().any(|s| s.name == "porter-agent"))
        .map(|(role, _)| role)
        .collect();
    assert!(!bound_to_agent.is_empty(), "the agent has no role at all");
    // What node mode needs: read BgpConf, BgpPeer and Nodes; patch BgpPeer status.
    let agent_may = |verb: &str, group: &str, resource: &str| {
        bound_to_agent.iter().any(|role| {
            roles
                .iter()
                .filter(|(n, _, _)| n == role)
                .any(|(_, _, rules)| {
                    rules.iter().any(|rule| {
                        rule.verbs.iter().any(|v| v == verb)
                            && rule.api_groups.iter().flatten().any(|g| g == group)
                            && rule.resources.iter().flatten().any(|r| r == resource)
                    })
                })
        })
    };
    for (verb, group, resource) in [
        ("watch", "network.kubesphere.io", "bgpconfs"),
        ("watch", "network.kubesphere.io", "bgppeers"),
        ("watch", "", "nodes"),
        ("patch", "network.kubesphere.io", "bgppeers/status"),
        ("patch", "", "nodes/status"),
        ("create", "events.k8s.io", "events"),
    ] {
        assert!(
            agent_may(verb, group, resource),
            "the agent may not {verb} {resource}"
        );
    }
    for role in &bound_to_agent {
        let (_, _, rules) = roles
            .iter()
            .find(|(n, _, _)| n == role)
            .expect("bound role exists");
        for rule in rules {
            let only = |resource: &str, group: &str| {
                rule.resources.iter().flatten().all(|r| r == resource)
                    && rule.api_groups.iter().flatten().all(|g| g == group)
            };
            let only_leases = only("leases", "coordination.k8s.io");
            let only_peer_status = only("bgppeers/status", "network.kubesphere.io");
            let only_events = only("events", "events.k8s.io");
            let only_node_status = only("nodes/status", "");
            for verb in &rule.verbs {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str())
                        || only_leases
                        || ((only_peer_status || only_node_status) && verb == "patch")
                        || (only_events && verb == "create"),
                    "the agent may {verb} through role {role}"
                );
            }
        }
    }
}

/// Liveness and startup ask whether the process answers, readiness whether
/// it is ready for work: a slow cache sync must not get a pod restarted.
fn probes_use_the_health_endpoints(who: &str, c: &k8s_openapi::api::core::v1::Container) {
    let metrics_port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map(|p| p.container_port);
    for (what, probe, path) in [
        ("startup", &c.startup_probe, "/healthz"),
        ("liveness", &c.liveness_probe, "/healthz"),
        ("readiness", &c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{who} has no HTTP {what} probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{who} {what} probe");
        let port = match &get.port {
            IntOrString::String(name) => {
                assert_eq!(name, "metrics", "{who} {what} probe port");
                metrics_port
            }
            IntOrString::Int(n) => Some(*n),
        };
        let arg = c
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--metrics-addr="))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<i32>().ok());
        assert_eq!(port, arg, "{who} {what} probe hits --metrics-addr");
    }
}

#[test]
fn workloads_keep_their_promises() {
    let [controller]: [Deployment; 1] = bundle_of("Deployment").try_into().expect("one Deployment");
    let spec = controller.spec;
    assert_eq!(spec.replicas, Some(2), "two controller replicas");
    let pod = spec.template.spec.expect("pod spec");
    let c = &pod.containers[0];
    assert!(
        c.args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--lease-name"))
    );
    assert!(
        c.env.iter().flatten().any(|e| e.name == "POD_NAME"),
        "identity for the lease"
    );
    probes_use_the_health_endpoints("controller", c);
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some()
    );

    let [agent]: [DaemonSet; 1] = bundle_of("DaemonSet").try_into().expect("one DaemonSet");
    let annotations = agent
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let pod = agent.spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.host_path.as_ref())
        .expect("a hostPath volume");
    assert_eq!(bpffs.path, "/sys/fs/bpf");
    let c = &pod.containers[0];
    probes_use_the_health_endpoints("agent", c);
    let security = c.security_context.as_ref().expect("securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "the agent is not privileged"
    );
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut added = caps.add.clone().unwrap_or_default();
    added.sort();
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"],
        "no SYS_RESOURCE: Linux >= 6.6 charges BPF memory to the memory cgroup"
    );
    // AppArmor and SELinux would deny pinning under /sys/fs/bpf; seccomp
    // stays on, explicitly.
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(
        security
            .se_linux_options
            .as_ref()
            .and_then(|o| o.type_.as_deref()),
        Some("spc_t")
    );
    assert_eq!(
        annotations
            .get(&format!(
                "container.apparmor.security.beta.kubernetes.io/{}",
                c.name
            ))
            .map(String::as_str),
        Some("unconfined"),
        "AppArmor profile of the agent container"
    );
    assert!(
        c.env.iter().flatten().any(|e| e.name == "NODE_NAME"),
        "the agent knows its node"
    );
    let layer2_namespace = |c: &k8s_openapi::api::core::v1::Container| {
        c.args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--layer2-namespace="))
            .map(str::to_owned)
    };
    let agents = layer2_namespace(c).expect("the agent names its Layer 2 Lease namespace");
    let [controller]: [Deployment; 1] = bundle_of("Deployment").try_into().expect("one Deployment");
    let controller = &controller.spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(
        layer2_namespace(controller).as_deref(),
        Some(agents.as_str()),
        "the controller reads the Leases where the agents write them"
    );
    assert_ne!(agents, "porter-system", "apart from the election Lease");
    assert!(
        bundle_of::<Namespace>("Namespace")
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(agents.as_str())),
        "the bundle creates {agents}"
    );
}

/// The controller mirrors the agents' Layer 2 Leases into the Eip status:
/// it reads them in their namespace (a Role, not cluster-wide), and it only
/// creates Events (each one new; see `KubeWriter::event`).
#[test]
fn the_controller_reads_the_layer2_leases_and_only_creates_events() {
    let bound: Vec<(String, String)> = bundle_of::<RoleBinding>("RoleBinding")
        .into_iter()
        .filter(|b| {
            b.subjects
                .iter()
                .flatten()
                .any(|s| s.name == "porter-controller")
        })
        .map(|b| (b.role_ref.name, b.metadata.namespace.unwrap_or_default()))
        .collect();
    let reads_leases = bundle_of::<Role>("Role").into_iter().any(|role| {
        let name = role.metadata.name.clone().unwrap_or_default();
        let namespace = role.metadata.namespace.clone().unwrap_or_default();
        namespace == porter_api::layer2::LEASE_NAMESPACE
            && bound.contains(&(name, namespace))
            && role.rules.iter().flatten().any(|rule| {
                rule.resources.iter().flatten().any(|r| r == "leases")
                    && rule
                        .api_groups
                        .iter()
                        .flatten()
                        .any(|g| g == "coordination.k8s.io")
                    && ["list", "watch"]
                        .iter()
                        .all(|verb| rule.verbs.iter().any(|v| v == verb))
            })
    });
    assert!(
        reads_leases,
        "the controller cannot list and watch the Layer 2 Leases: {bound:?}"
    );
    for role in bundle_of::<ClusterRole>("ClusterRole") {
        for rule in role.rules.iter().flatten() {
            if rule.resources.iter().flatten().any(|r| r == "events") {
                assert_eq!(
                    rule.verbs,
                    ["create"],
                    "role {:?}: Events are only ever created",
                    role.metadata.name
                );
            }
        }
    }
}

/// A pool as OpenELB / Porter v0.x documented it: the v1alpha1 fields
/// `address`, `protocol` and `disable`.
const OPENELB_V1ALPHA1_EIP: &str = "
apiVersion: network.kubesphere.io/v1alpha1
kind: Eip
metadata:
  name: eip-sample-pool
spec:
  address: 192.168.0.91-192.168.0.100
  protocol: layer2
  disable: true
";

#[test]
fn an_openelb_v1alpha1_eip_fits_the_served_schema_in_deploy_crds() {
    let path = deploy_dir().join("crds/eip.yaml");
    let [crd]: [Value; 1] = documents(&path).try_into().expect("one CRD in eip.yaml");
    let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("a CRD");
    assert_eq!(
        crd.spec.names.kind, "Eip",
        "a CRD has one kind: `EIP` cannot apply"
    );
    let v1alpha1 = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha1")
        .expect("v1alpha1 in deploy/crds/eip.yaml");
    assert!(v1alpha1.served && !v1alpha1.storage, "served, not stored");
    let schema = serde_json::to_value(
        v1alpha1
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("v1alpha1 schema"),
    )
    .expect("schema to JSON");

    let doc: Value = serde_yaml::from_str(OPENELB_V1ALPHA1_EIP).expect("YAML");
    let mut object = doc.clone();
    for field in ["apiVersion", "kind", "metadata"] {
        object.as_object_mut().expect("object").remove(field);
    }
    let mut errors = Vec::new();
    validate(&schema, &object, "eip", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    let typed: porter_api::crd::v1alpha1::Eip = round_trip(&doc).expect("every field kept");
    assert_eq!(typed.spec.protocol.as_deref(), Some("layer2"));
    assert!(typed.spec.disable);

    // The check has teeth: a misspelt field would be pruned.
    let mut typo = object.clone();
    typo["spec"]["protocl"] = Value::from("bgp");
    let mut errors = Vec::new();
    validate(&schema, &typo, "eip", &mut errors);
    assert!(
        errors.iter().any(|e| e.contains("protocl: unknown field")),
        "{errors:?}"
    );
}

/// The image builds are reproducible: BuildKit syntax declared (the cache
/// mounts need it), base images only through build arguments without a
/// default (which the build stage checks are digests), every cargo
/// invocation `--locked`, and no build output in the context.
#[test]
fn image_builds_are_pinned() {
    for name in ["controller.Dockerfile", "agent.Dockerfile"] {
        let path = deploy_dir().join("docker").join(name);
        let text = std::fs::read_to_string(&path).expect("Dockerfile");
        assert!(
            text.starts_with("# syntax=docker/dockerfile:1\n"),
            "{name}: first line"
        );
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().filter(|l| l.starts_with("FROM ")) {
            let image = line["FROM ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default();
            let arg = image
                .strip_prefix("${")
                .and_then(|a| a.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{name}: `{line}` names its image directly"));
            assert!(
                lines.contains(&format!("ARG {arg}").as_str()),
                "{name}: {arg} is declared without a default"
            );
        }
        assert!(text.contains("*@sha256:*"), "{name}: the digest check");
        // Continuation lines joined: one RUN per entry.
        let joined = text.replace("\\\n", " ");
        let cargo_runs: Vec<&str> = joined
            .lines()
            .filter(|l| l.starts_with("RUN ") && l.contains("cargo "))
            .collect();
        assert!(!cargo_runs.is_empty(), "{name} builds with cargo");
        for run in cargo_runs {
            for command in run.split("&&").filter(|c| c.contains("cargo ")) {
                assert!(
                    command.contains("--locked"),
                    "{name}: `{}` is not --locked",
                    command.trim()
                );
            }
        }
    }
    let ignored =
        std::fs::read_to_string(deploy_dir().join("../.dockerignore")).expect(".dockerignore");
    for dir in ["target/", "porter-ebpf/target/", "fuzz/target/"] {
        assert!(
            ignored.lines().any(|l| l == dir),
            ".dockerignore lacks {dir}"
        );
    }
}

use std::sync::Arc;

use super::*;

const NODE: &str = "n1";

/// A Porter Service `shop/<name>` with `externalTrafficPolicy: Local`, the
/// given ports (YAML flow list) and ingress IPs.
fn service(name: &str, ports: &str, ingress: &[&str]) -> String {
    service_with_policy(name, ports, ingress, "Local")
}

/// As [`service`], with the given `externalTrafficPolicy` ("" leaves it unset).
fn service_with_policy(name: &str, ports: &str, ingress: &[&str], policy: &str) -> String {
    let ingress: Vec<String> = ingress.iter().map(|ip| format!("{{ip: {ip}}}")).collect();
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!(", externalTrafficPolicy: {policy}")
    };
    format!(
        "kind: Service
metadata: {{name: {name}, namespace: shop, annotations: {{lb.kubesphere.io/v1alpha1: porter}}}}
spec: {{type: LoadBalancer, ports: {ports}{policy}}}
status: {{loadBalancer: {{ingress: [{}]}}}}
",
        ingress.join(", ")
    )
}

/// A Node with the given InternalIPs.
fn node(name: &str, ips: &[&str]) -> String {
    let addresses: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{type: InternalIP, address: \"{ip}\"}}"))
        .collect();
    format!(
        "kind: Node
metadata: {{name: {name}}}
status: {{addresses: [{}]}}
",
        addresses.join(", ")
    )
}

/// An EndpointSlice of `shop/<service>`; `endpoints` and `ports` are YAML flow lists.
fn slice(service: &str, family: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "kind: EndpointSlice
metadata: {{name: {service}-abc, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: {family}
ports: {ports}
endpoints: {endpoints}
"
    )
}

fn snapshot(docs: &[String]) -> Snapshot {
    let mut snap = Snapshot::default();
    for doc in docs {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("test YAML");
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => snap
                .services
                .push(Arc::new(serde_yaml::from_value(value).expect("Service"))),
            Some("EndpointSlice") => snap
                .endpoint_slices
                .push(Arc::new(serde_yaml::from_value(value).expect("slice"))),
            Some("Node") => snap
                .nodes
                .push(Arc::new(serde_yaml::from_value(value).expect("Node"))),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    snap
}

/// `vip:port/proto -> backends` in display form, for readable tables.
fn rendered(desired: &Desired) -> Vec<String> {
    desired
        .services
        .iter()
        .map(|spec| {
            let backends: Vec<String> = spec.backends.iter().map(ToString::to_string).collect();
            format!("{} -> {}", spec.addr, backends.join(","))
        })
        .collect()
}

const WEB: &str = "[{name: http, port: 80, targetPort: http}]";
const HTTP_8080: &str = "[{name: http, port: 8080}]";

fn ep(ip: &str, node: &str, conditions: &str) -> String {
    format!("{{addresses: [{ip}], nodeName: {node}, conditions: {conditions}}}")
}

#[test]
fn desired_services_from_cluster_state() {
    let local_a = ep("10.244.1.2", NODE, "{ready: true}");
    let local_b = ep("10.244.1.3", NODE, "{}");
    let remote = ep("10.244.9.9", "n2", "{ready: true}");
    let not_ready = ep("10.244.1.4", NODE, "{ready: false}");
    let terminating = ep("10.244.1.5", NODE, "{ready: true, terminating: true}");
    let stopped = ep(
        "10.244.1.6",
        NODE,
        "{ready: false, serving: false, terminating: true}",
    );
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "named targetPort resolves through the slice; local ready endpoints, and the \
             serving terminating one draining",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    HTTP_8080,
                    &format!(
                        "[{local_a}, {local_b}, {remote}, {not_ready}, {terminating}, {stopped}]"
                    ),
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.1.3:8080,10.244.1.5:8080 (draining)"],
        ),
        (
            "no EIP allocated yet: nothing to serve",
            vec![
                service("web", WEB, &[]),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_a}]")),
            ],
            vec![],
        ),
        (
            "not opted in",
            vec![
                service("web", WEB, &["192.0.2.10"]).replace("porter}", "metallb}"),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_a}]")),
            ],
            vec![],
        ),
        (
            "no local endpoint that serves: left out",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    HTTP_8080,
                    &format!("[{remote}, {not_ready}, {stopped}]"),
                ),
            ],
            vec![],
        ),
        (
            // Its flows go on; the table falls back to it for new ones.
            "no local ready endpoint: the terminating one keeps the service",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    HTTP_8080,
                    &format!("[{remote}, {terminating}]"),
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.5:8080 (draining)"],
        ),
        (
            "numeric targetPort without slice ports; UDP; unset targetPort is the port",
            vec![
                service(
                    "dns",
                    "[{name: dns, port: 53, targetPort: 5353, protocol: UDP}, {name: m, port: 9100}]",
                    &["192.0.2.11"],
                ),
                slice("dns", "IPv4", "[]", &format!("[{local_a}]")),
            ],
            vec![
                "192.0.2.11:53/udp -> 10.244.1.2:5353",
                "192.0.2.11:9100/tcp -> 10.244.1.2:9100",
            ],
        ),
        (
            "slice port picked by name and protocol",
            vec![
                service(
                    "dual",
                    "[{name: a, port: 80, targetPort: web}, {name: b, port: 80, targetPort: web, protocol: UDP}]",
                    &["192.0.2.12"],
                ),
                slice(
                    "dual",
                    "IPv4",
                    "[{name: b, port: 7000, protocol: UDP}, {name: a, port: 8000, protocol: TCP}]",
                    &format!("[{local_a}]"),
                ),
            ],
            vec![
                "192.0.2.12:80/tcp -> 10.244.1.2:8000",
                "192.0.2.12:80/udp -> 10.244.1.2:7000",
            ],
        ),
        (
            "dual stack: each EIP gets the slice of its family",
            vec![
                service("web", WEB, &["192.0.2.10", "2001:db8::10"]),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_a}]")),
                slice(
                    "web",
                    "IPv6",
                    HTTP_8080,
                    &format!("[{}]", ep("fd00::2", NODE, "{}")),
                )
                .replace("web-abc", "web-v6"),
            ],
            vec![
                "192.0.2.10:80/tcp -> 10.244.1.2:8080",
                "[2001:db8::10]:80/tcp -> [fd00::2]:8080",
            ],
        ),
        (
            "endpoints of several slices are merged",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_a}]")),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_b}]"))
                    .replace("web-abc", "web-def"),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.1.3:8080"],
        ),
        (
            "slices of another Service or namespace are ignored",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice("api", "IPv4", HTTP_8080, &format!("[{local_a}]")),
                slice("web", "IPv4", HTTP_8080, &format!("[{local_b}]"))
                    .replace("namespace: shop", "namespace: other"),
            ],
            vec![],
        ),
    ];
    for (name, docs, want) in cases {
        let got = desired(&snapshot(&docs), NODE);
        assert_eq!(rendered(&got), want, "{name}; problems: {:?}", got.problems);
    }
}

#[test]
fn problems_are_reported_and_the_rest_is_served() {
    let local = ep("10.244.1.2", NODE, "{}");
    let cases: Vec<(&str, Vec<String>, Vec<&str>, &str)> = vec![
        (
            "named targetPort the slice does not list",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice("web", "IPv4", "[]", &format!("[{local}]")),
            ],
            vec![],
            "targetPort \"http\"",
        ),
        (
            "SCTP is not served, TCP beside it is",
            vec![
                service(
                    "web",
                    "[{name: s, port: 90, protocol: SCTP}, {name: t, port: 91}]",
                    &["192.0.2.10"],
                ),
                slice("web", "IPv4", "[]", &format!("[{local}]")),
            ],
            vec!["192.0.2.10:91/tcp -> 10.244.1.2:91"],
            "SCTP",
        ),
        (
            "two Services on one EIP:port: the first by name wins",
            vec![
                service("b-web", WEB, &["192.0.2.10"]),
                slice("b-web", "IPv4", HTTP_8080, &format!("[{local}]")),
                service("a-web", WEB, &["192.0.2.10"]),
                slice(
                    "a-web",
                    "IPv4",
                    HTTP_8080,
                    &format!("[{}]", ep("10.244.1.7", NODE, "{}")),
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.7:8080"],
            "also claimed by shop/a-web",
        ),
        (
            "an endpoint address of the wrong family",
            vec![
                service("web", WEB, &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    HTTP_8080,
                    &format!("[{}, {local}]", ep("fd00::1", NODE, "{}")),
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.2:8080"],
            "\"fd00::1\" is not an IPv4 address",
        ),
    ];
    for (name, docs, want, problem) in cases {
        let got = desired(&snapshot(&docs), NODE);
        assert_eq!(rendered(&got), want, "{name}");
        assert!(
            got.problems.iter().any(|p| p.to_string().contains(problem)),
            "{name}: wanted a problem mentioning {problem:?}, got {:?}",
            got.problems
        );
    }
}

#[test]
fn a_cache_follows_changed_objects_and_reuses_unchanged_ones() {
    // Each step replaces objects by new Arcs (as a source does on a change)
    // and keeps the others; the warm cache must give what a cold one gives.
    let local = |ip: &str| ep(ip, NODE, "{}");
    let docs = vec![
        service("b-web", WEB, &["192.0.2.10"]),
        slice(
            "b-web",
            "IPv4",
            HTTP_8080,
            &format!("[{}]", local("10.244.1.2")),
        ),
        service("a-web", WEB, &["192.0.2.11"]),
        slice(
            "a-web",
            "IPv4",
            HTTP_8080,
            &format!("[{}]", local("10.244.1.3")),
        ),
    ];
    let mut snap = snapshot(&docs);
    let mut cache = Cache::new(NODE);
    let first = cache.desired(&snap);
    assert_eq!(first, desired(&snap, NODE));
    assert_eq!(first.services.len(), 2);

    // An endpoint moves: only b-web's slice is a new object.
    let moved = snapshot(&[slice(
        "b-web",
        "IPv4",
        HTTP_8080,
        &format!("[{}]", local("10.244.1.9")),
    )]);
    snap.endpoint_slices[0] = Arc::clone(&moved.endpoint_slices[0]);
    let second = cache.desired(&snap);
    assert_eq!(second, desired(&snap, NODE));
    assert_ne!(second, first);

    // a-web moves onto b-web's EIP: the conflict is reported as from scratch.
    let conflicting = snapshot(&[service("a-web", WEB, &["192.0.2.10"])]);
    snap.services[1] = Arc::clone(&conflicting.services[0]);
    let third = cache.desired(&snap);
    assert_eq!(third, desired(&snap, NODE));
    assert_eq!(third.problems.len(), 1, "{:?}", third.problems);

    // A Service goes away, and with it what it asked for.
    snap.services.remove(1);
    let fourth = cache.desired(&snap);
    assert_eq!(fourth, desired(&snap, NODE));
    assert_eq!(fourth.services.len(), 1);
    assert!(fourth.problems.is_empty());
}

/// Three nodes, pods on n1 (one), n2 (two) and n3 (one, terminating).
fn cluster_docs(policy: &str) -> Vec<String> {
    let endpoints = [
        ep("10.244.2.3", "n2", "{ready: true}"),
        ep("10.244.1.2", NODE, "{}"),
        ep("10.244.2.2", "n2", "{}"),
        ep("10.244.3.2", "n3", "{ready: true, terminating: true}"),
    ];
    vec![
        node(NODE, &["172.30.0.11"]),
        node("n2", &["172.30.0.12", "fd00:30::12"]),
        node("n3", &["172.30.0.13"]),
        service_with_policy("web", WEB, &["192.0.2.10"], policy),
        slice(
            "web",
            "IPv4",
            HTTP_8080,
            &format!("[{}]", endpoints.join(", ")),
        ),
    ]
}

#[test]
fn cluster_policy_serves_every_ready_endpoint_remote_ones_by_their_node() {
    let want = vec![
        "192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.2.2:8080@172.30.0.12,\
         10.244.2.3:8080@172.30.0.12,10.244.3.2:8080@172.30.0.13 (draining)",
    ];
    // Unset is Cluster, the Kubernetes default.
    for policy in ["Cluster", ""] {
        let got = desired(&snapshot(&cluster_docs(policy)), NODE);
        assert_eq!(rendered(&got), want, "policy {policy:?}");
        assert!(got.problems.is_empty(), "{:?}", got.problems);
    }
    // Local: this node's own pod only.
    let got = desired(&snapshot(&cluster_docs("Local")), NODE);
    assert_eq!(rendered(&got), ["192.0.2.10:80/tcp -> 10.244.1.2:8080"]);
    // A node without pods serves a Cluster Service too, all of it remote.
    let got = desired(&snapshot(&cluster_docs("Cluster")), "n3");
    assert_eq!(
        rendered(&got),
        [
            "192.0.2.10:80/tcp -> 10.244.1.2:8080@172.30.0.11,10.244.2.2:8080@172.30.0.12,\
          10.244.2.3:8080@172.30.0.12,10.244.3.2:8080 (draining)"
        ]
    );
}

#[test]
fn every_node_builds_the_same_cluster_table_whatever_the_input_order() {
    // Node n1 reads the objects in one order, n2 in the reverse order and
    // with the slice's endpoints reversed: each must map every slot to the
    // same pod, although each sees other pods as remote.
    let docs = cluster_docs("Cluster");
    let mut reversed = docs.clone();
    reversed.reverse();
    let endpoints = [
        ep("10.244.2.2", "n2", "{}"),
        ep("10.244.1.2", NODE, "{}"),
        ep("10.244.3.2", "n3", "{ready: true, terminating: true}"),
        ep("10.244.2.3", "n2", "{ready: true}"),
    ];
    reversed[0] = slice(
        "web",
        "IPv4",
        HTTP_8080,
        &format!("[{}]", endpoints.join(", ")),
    );
    let table = |docs: &[String], node: &str| -> Vec<String> {
        let got = desired(&snapshot(docs), node);
        let [spec] = got.services.as_slice() else {
            panic!("one service on {node}: {:?}", got.services);
        };
        let backends: Vec<Backend> = spec.backend_set().expect("valid").into_iter().collect();
        crate::maglev::backend_table(&backends, 1009)
            .expect("valid size")
            .into_iter()
            .map(|index| backends[index as usize].table_name())
            .collect()
    };
    let on_n1 = table(&docs, NODE);
    let on_n2 = table(&reversed, "n2");
    let on_n3 = table(&docs, "n3");
    assert_eq!(on_n1.len(), 1009);
    assert_eq!(on_n1, on_n2, "n1 and n2 disagree");
    assert_eq!(on_n1, on_n3, "n1 and n3 disagree");
    for pod in ["10.244.1.2:8080", "10.244.2.2:8080", "10.244.2.3:8080"] {
        let share = on_n1.iter().filter(|name| *name == pod).count();
        assert!(
            (300..=373).contains(&share),
            "{pod} has {share} of 1009 slots"
        );
    }
}

#[test]
fn cluster_endpoints_that_cannot_be_forwarded_to_are_reported() {
    let endpoints = [
        ep("10.244.1.2", NODE, "{}"),
        ep("10.244.4.2", "n4", "{}"),
        "{addresses: [10.244.5.2]}".to_string(),
        ep("10.244.2.2", "n2", "{}"),
        ep("10.244.2.2", "n3", "{}"),
    ];
    let docs = vec![
        node(NODE, &["172.30.0.11"]),
        node("n2", &["172.30.0.12"]),
        node("n3", &["172.30.0.13"]),
        node("n4", &["fd00:30::14"]),
        service_with_policy("web", WEB, &["192.0.2.10"], "Cluster"),
        slice(
            "web",
            "IPv4",
            HTTP_8080,
            &format!("[{}]", endpoints.join(", ")),
        ),
    ];
    let got = desired(&snapshot(&docs), NODE);
    // The pod listed on n2 and n3 goes to n2, the first by name, on every node.
    assert_eq!(
        rendered(&got),
        ["192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.2.2:8080@172.30.0.12"]
    );
    for problem in [
        "node n4 has no InternalIP of the family of 192.0.2.10",
        "an endpoint names no node",
        "endpoint 10.244.2.2 is listed on nodes n2 and n3; it is served on n2",
    ] {
        assert!(
            got.problems.iter().any(|p| p.message.contains(problem)),
            "wanted {problem:?} in {:?}",
            got.problems
        );
    }
    // IPv6 Cluster Services are forwarded too, to the node's IPv6 address.
    let v6 = vec![
        node(NODE, &["fd00:30::11"]),
        node("n2", &["fd00:30::12"]),
        service_with_policy("web", WEB, &["2001:db8::10"], "Cluster"),
        slice(
            "web",
            "IPv6",
            HTTP_8080,
            &format!(
                "[{}, {}]",
                ep("fd00:244:1::2", NODE, "{}"),
                ep("fd00:244:2::2", "n2", "{}")
            ),
        ),
    ];
    let got = desired(&snapshot(&v6), NODE);
    assert_eq!(
        rendered(&got),
        ["[2001:db8::10]:80/tcp -> [fd00:244:1::2]:8080,[fd00:244:2::2]:8080@fd00:30::12"]
    );
    assert!(got.problems.is_empty(), "{:?}", got.problems);
}

#[test]
fn a_node_address_change_reaches_cached_cluster_services() {
    let mut snap = snapshot(&cluster_docs("Cluster"));
    let mut cache = Cache::new(NODE);
    assert_eq!(cache.desired(&snap), desired(&snap, NODE));
    let renumbered = snapshot(&[node("n2", &["172.30.0.22"])]);
    snap.nodes[1] = Arc::clone(&renumbered.nodes[0]);
    let after = cache.desired(&snap);
    assert_eq!(after, desired(&snap, NODE));
    assert!(rendered(&after)[0].contains("@172.30.0.22"), "{after:?}");
}

#[test]
fn empty_cluster_wants_nothing() {
    assert_eq!(desired(&Snapshot::default(), NODE), Desired::default());
}

#[test]
fn changes_touch_only_what_differs() {
    let spec = |port: u16, backends: &[&str]| LocalService {
        addr: ServiceAddr {
            vip: "192.0.2.10".parse().expect("ip"),
            port,
            proto: Protocol::Tcp,
        },
        backends: backends
            .iter()
            .map(|ip| Backend {
                addr: ip.parse().expect("ip"),
                port: 8080,
                node: None,
                draining: false,
            })
            .collect(),
    };
    let a = spec(80, &["10.0.0.1", "10.0.0.2"]);
    let b = spec(81, &["10.0.0.1"]);
    let b2 = spec(81, &["10.0.0.3"]);
    let c = spec(82, &["10.0.0.1"]);
    // (name, installed, wanted, ports upserted, ports removed)
    type Case = (
        &'static str,
        Vec<LocalService>,
        Vec<LocalService>,
        Vec<u16>,
        Vec<u16>,
    );
    let cases: Vec<Case> = vec![
        (
            "from empty: all new",
            vec![],
            vec![a.clone(), b.clone()],
            vec![80, 81],
            vec![],
        ),
        (
            "unchanged: nothing",
            vec![a.clone(), b.clone()],
            vec![a.clone(), b.clone()],
            vec![],
            vec![],
        ),
        (
            "one endpoint changed",
            vec![a.clone(), b.clone()],
            vec![a.clone(), b2.clone()],
            vec![81],
            vec![],
        ),
        (
            "one gone, one new",
            vec![a.clone(), b.clone()],
            vec![a.clone(), c.clone()],
            vec![82],
            vec![81],
        ),
        (
            "all gone",
            vec![a.clone(), b.clone()],
            vec![],
            vec![],
            vec![80, 81],
        ),
    ];
    for (name, installed, wanted, upserts, removals) in cases {
        let got = changes(&installed, &wanted);
        let got_upserts: Vec<u16> = got.upserts.iter().map(|s| s.addr.port).collect();
        let got_removals: Vec<u16> = got.removals.iter().map(|a| a.port).collect();
        assert_eq!((got_upserts, got_removals), (upserts, removals), "{name}");
        assert_eq!(got.is_empty(), name.ends_with("nothing"), "{name}");
    }
}

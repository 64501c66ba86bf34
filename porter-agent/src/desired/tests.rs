use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use porter_api::annotations::LB;
use porter_api::service::ingress_status;
use porter_api::testing::{
    endpoint, endpoint_port, endpoint_slice, load_balancer, node_with_ips, service_in, service_port,
};

use super::*;

const NODE: &str = "n1";

/// One object of a test cluster, shared as a source shares it.
#[derive(Clone)]
enum Doc {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

/// A Porter Service `shop/<name>` with `externalTrafficPolicy: Local`, these
/// ports and ingress IPs.
fn service(name: &str, ports: Vec<ServicePort>, ingress: &[&str]) -> Doc {
    service_with_policy(name, ports, ingress, "Local")
}

/// As [`service`], with the given `externalTrafficPolicy` ("" leaves it unset).
fn service_with_policy(name: &str, ports: Vec<ServicePort>, ingress: &[&str], policy: &str) -> Doc {
    let mut spec = load_balancer(None);
    spec.ports = Some(ports);
    spec.external_traffic_policy = (!policy.is_empty()).then(|| policy.to_string());
    let mut svc = service_in("shop", name, &[(LB.key, "porter")], spec);
    let ips: Vec<IpAddr> = ingress
        .iter()
        .map(|ip| ip.parse().expect("an IP"))
        .collect();
    svc.status = Some(ingress_status(&ips));
    Doc::Service(Arc::new(svc))
}

/// A Node with the given InternalIPs.
fn node(name: &str, ips: &[&str]) -> Doc {
    Doc::Node(Arc::new(node_with_ips(name, ips)))
}

/// The EndpointSlice `shop/<service>-abc` of `shop/<service>`.
fn slice(service: &str, family: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> Doc {
    Doc::Slice(Arc::new(endpoint_slice(
        ("shop", &format!("{service}-abc")),
        service,
        family,
        ports,
        endpoints,
    )))
}

/// `doc`, a Service, annotated for another load balancer than Porter.
fn opted_out(doc: Doc) -> Doc {
    let Doc::Service(svc) = doc else {
        panic!("not a Service");
    };
    let mut svc = Arc::unwrap_or_clone(svc);
    svc.metadata.annotations = Some([(LB.key.to_string(), "metallb".to_string())].into());
    Doc::Service(Arc::new(svc))
}

/// `doc`, a slice, under another name or namespace.
fn moved(doc: Doc, namespace: &str, name: &str) -> Doc {
    let Doc::Slice(slice) = doc else {
        panic!("not a slice");
    };
    let mut slice = Arc::unwrap_or_clone(slice);
    slice.metadata.namespace = Some(namespace.into());
    slice.metadata.name = Some(name.into());
    Doc::Slice(Arc::new(slice))
}

fn snapshot(docs: &[Doc]) -> Snapshot {
    let mut snap = Snapshot::default();
    for doc in docs {
        match doc.clone() {
            Doc::Service(svc) => snap.services.push(svc),
            Doc::Slice(slice) => snap.endpoint_slices.push(slice),
            Doc::Node(node) => snap.nodes.push(node),
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

/// `http: 80` to the pods' port named `http`.
fn web() -> Vec<ServicePort> {
    vec![service_port(
        "http",
        80,
        Some(IntOrString::String("http".into())),
        "TCP",
    )]
}

/// The slice port `http: 8080`.
fn http_8080() -> Vec<EndpointPort> {
    vec![endpoint_port("http", 8080, "TCP")]
}

fn conditions(
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> EndpointConditions {
    EndpointConditions {
        ready,
        serving,
        terminating,
    }
}

/// No conditions given (ready, for Kubernetes).
fn unset() -> EndpointConditions {
    conditions(None, None, None)
}

fn ready(ready: bool) -> EndpointConditions {
    conditions(Some(ready), None, None)
}

/// Terminating but still serving.
fn terminating() -> EndpointConditions {
    conditions(Some(true), None, Some(true))
}

#[test]
fn desired_services_from_cluster_state() {
    let local_a = endpoint("10.244.1.2", NODE, ready(true));
    let local_b = endpoint("10.244.1.3", NODE, unset());
    let remote = endpoint("10.244.9.9", "n2", ready(true));
    let not_ready = endpoint("10.244.1.4", NODE, ready(false));
    let terminating = endpoint("10.244.1.5", NODE, terminating());
    let stopped = endpoint(
        "10.244.1.6",
        NODE,
        conditions(Some(false), Some(false), Some(true)),
    );
    let cases: Vec<(&str, Vec<Doc>, Vec<&str>)> = vec![
        (
            "named targetPort resolves through the slice; local ready endpoints, and the \
             serving terminating one draining",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    http_8080(),
                    vec![
                        local_a.clone(),
                        local_b.clone(),
                        remote.clone(),
                        not_ready.clone(),
                        terminating.clone(),
                        stopped.clone(),
                    ],
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.1.3:8080,10.244.1.5:8080 (draining)"],
        ),
        (
            "no EIP allocated yet: nothing to serve",
            vec![
                service("web", web(), &[]),
                slice("web", "IPv4", http_8080(), vec![local_a.clone()]),
            ],
            vec![],
        ),
        (
            "not opted in",
            vec![
                opted_out(service("web", web(), &["192.0.2.10"])),
                slice("web", "IPv4", http_8080(), vec![local_a.clone()]),
            ],
            vec![],
        ),
        (
            "no local endpoint that serves: left out",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    http_8080(),
                    vec![remote.clone(), not_ready.clone(), stopped.clone()],
                ),
            ],
            vec![],
        ),
        (
            // Its flows go on; the table falls back to it for new ones.
            "no local ready endpoint: the terminating one keeps the service",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    http_8080(),
                    vec![remote.clone(), terminating.clone()],
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.5:8080 (draining)"],
        ),
        (
            "numeric targetPort without slice ports; UDP; unset targetPort is the port",
            vec![
                service(
                    "dns",
                    vec![
                        service_port("dns", 53, Some(IntOrString::Int(5353)), "UDP"),
                        service_port("m", 9100, None, "TCP"),
                    ],
                    &["192.0.2.11"],
                ),
                slice("dns", "IPv4", vec![], vec![local_a.clone()]),
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
                    vec![
                        service_port("a", 80, Some(IntOrString::String("web".into())), "TCP"),
                        service_port("b", 80, Some(IntOrString::String("web".into())), "UDP"),
                    ],
                    &["192.0.2.12"],
                ),
                slice(
                    "dual",
                    "IPv4",
                    vec![
                        endpoint_port("b", 7000, "UDP"),
                        endpoint_port("a", 8000, "TCP"),
                    ],
                    vec![local_a.clone()],
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
                service("web", web(), &["192.0.2.10", "2001:db8::10"]),
                slice("web", "IPv4", http_8080(), vec![local_a.clone()]),
                moved(
                    slice(
                        "web",
                        "IPv6",
                        http_8080(),
                        vec![endpoint("fd00::2", NODE, unset())],
                    ),
                    "shop",
                    "web-v6",
                ),
            ],
            vec![
                "192.0.2.10:80/tcp -> 10.244.1.2:8080",
                "[2001:db8::10]:80/tcp -> [fd00::2]:8080",
            ],
        ),
        (
            "endpoints of several slices are merged",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice("web", "IPv4", http_8080(), vec![local_a.clone()]),
                moved(
                    slice("web", "IPv4", http_8080(), vec![local_b.clone()]),
                    "shop",
                    "web-def",
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.2:8080,10.244.1.3:8080"],
        ),
        (
            "slices of another Service or namespace are ignored",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice("api", "IPv4", http_8080(), vec![local_a.clone()]),
                moved(
                    slice("web", "IPv4", http_8080(), vec![local_b.clone()]),
                    "other",
                    "web-abc",
                ),
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
    let local = endpoint("10.244.1.2", NODE, unset());
    let cases: Vec<(&str, Vec<Doc>, Vec<&str>, &str)> = vec![
        (
            "named targetPort the slice does not list",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice("web", "IPv4", vec![], vec![local.clone()]),
            ],
            vec![],
            "targetPort \"http\"",
        ),
        (
            "SCTP is not served, TCP beside it is",
            vec![
                service(
                    "web",
                    vec![
                        service_port("s", 90, None, "SCTP"),
                        service_port("t", 91, None, "TCP"),
                    ],
                    &["192.0.2.10"],
                ),
                slice("web", "IPv4", vec![], vec![local.clone()]),
            ],
            vec!["192.0.2.10:91/tcp -> 10.244.1.2:91"],
            "SCTP",
        ),
        (
            "two Services on one EIP:port: the first by name wins",
            vec![
                service("b-web", web(), &["192.0.2.10"]),
                slice("b-web", "IPv4", http_8080(), vec![local.clone()]),
                service("a-web", web(), &["192.0.2.10"]),
                slice(
                    "a-web",
                    "IPv4",
                    http_8080(),
                    vec![endpoint("10.244.1.7", NODE, unset())],
                ),
            ],
            vec!["192.0.2.10:80/tcp -> 10.244.1.7:8080"],
            "also claimed by shop/a-web",
        ),
        (
            "an endpoint address of the wrong family",
            vec![
                service("web", web(), &["192.0.2.10"]),
                slice(
                    "web",
                    "IPv4",
                    http_8080(),
                    vec![endpoint("fd00::1", NODE, unset()), local.clone()],
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
    let local = |ip: &str| endpoint(ip, NODE, unset());
    let docs = vec![
        service("b-web", web(), &["192.0.2.10"]),
        slice("b-web", "IPv4", http_8080(), vec![local("10.244.1.2")]),
        service("a-web", web(), &["192.0.2.11"]),
        slice("a-web", "IPv4", http_8080(), vec![local("10.244.1.3")]),
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
        http_8080(),
        vec![local("10.244.1.9")],
    )]);
    snap.endpoint_slices[0] = Arc::clone(&moved.endpoint_slices[0]);
    let second = cache.desired(&snap);
    assert_eq!(second, desired(&snap, NODE));
    assert_ne!(second, first);

    // a-web moves onto b-web's EIP: the conflict is reported as from scratch.
    let conflicting = snapshot(&[service("a-web", web(), &["192.0.2.10"])]);
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
fn cluster_docs(policy: &str) -> Vec<Doc> {
    let endpoints = [
        endpoint("10.244.2.3", "n2", ready(true)),
        endpoint("10.244.1.2", NODE, unset()),
        endpoint("10.244.2.2", "n2", unset()),
        endpoint("10.244.3.2", "n3", terminating()),
    ];
    vec![
        node(NODE, &["172.30.0.11"]),
        node("n2", &["172.30.0.12", "fd00:30::12"]),
        node("n3", &["172.30.0.13"]),
        service_with_policy("web", web(), &["192.0.2.10"], policy),
        slice("web", "IPv4", http_8080(), endpoints.to_vec()),
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
        endpoint("10.244.2.2", "n2", unset()),
        endpoint("10.244.1.2", NODE, unset()),
        endpoint("10.244.3.2", "n3", terminating()),
        endpoint("10.244.2.3", "n2", ready(true)),
    ];
    reversed[0] = slice("web", "IPv4", http_8080(), endpoints.to_vec());
    let table = |docs: &[Doc], node: &str| -> Vec<String> {
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
        endpoint("10.244.1.2", NODE, unset()),
        endpoint("10.244.4.2", "n4", unset()),
        Endpoint {
            node_name: None,
            ..endpoint("10.244.5.2", NODE, unset())
        },
        endpoint("10.244.2.2", "n2", unset()),
        endpoint("10.244.2.2", "n3", unset()),
    ];
    let docs = vec![
        node(NODE, &["172.30.0.11"]),
        node("n2", &["172.30.0.12"]),
        node("n3", &["172.30.0.13"]),
        node("n4", &["fd00:30::14"]),
        service_with_policy("web", web(), &["192.0.2.10"], "Cluster"),
        slice("web", "IPv4", http_8080(), endpoints.to_vec()),
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
        service_with_policy("web", web(), &["2001:db8::10"], "Cluster"),
        slice(
            "web",
            "IPv6",
            http_8080(),
            vec![
                endpoint("fd00:244:1::2", NODE, unset()),
                endpoint("fd00:244:2::2", "n2", unset()),
            ],
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

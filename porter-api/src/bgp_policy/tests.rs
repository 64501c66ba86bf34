use super::*;
use crate::crd::{LinkBandwidthConf, ServiceAttributes};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ns", name)
}

const NO_EXPORT: u32 = 0xFFFF_FF01;

fn c(asn: u32, value: u32) -> u32 {
    (asn << 16) | value
}

#[test]
fn pool_policy_reads_what_it_can_and_reports_the_rest() {
    let spec = EipBgp {
        communities: strings(&["65000:100", "no-export", "65000:x", "70000:1"]),
        large_communities: strings(&["65000:1:2", "1:2"]),
        local_pref: Some(200),
        peer_selector: None,
        node_selector: None,
        service_attributes: None,
    };
    let (pool, errors) = PoolPolicy::from_spec(Some(&spec));
    assert_eq!(pool.communities, [c(65000, 100), NO_EXPORT]);
    assert_eq!(pool.large_communities, [(65000, 1, 2)]);
    assert_eq!(pool.local_pref, Some(200));
    assert!(pool.peer_selector.is_everything() && pool.node_selector.is_everything());
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.bgp.communities[2]",
            "spec.bgp.communities[3]",
            "spec.bgp.largeCommunities[1]"
        ]
    );
    assert!(
        errors[0]
            .to_string()
            .contains("\"65000:x\" is not a BGP community"),
        "{}",
        errors[0]
    );
    assert_eq!(PoolPolicy::from_spec(None), (PoolPolicy::default(), vec![]));
}

#[test]
fn selectors_follow_kubernetes_semantics() {
    let expr = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| strings(values)),
    };
    let sel = |match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| {
        Selector::from_label_selector(
            &LabelSelector {
                match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
                match_expressions: (!exprs.is_empty()).then_some(exprs),
            },
            "spec.bgp.nodeSelector",
        )
    };
    let a = labels(&[("zone", "a"), ("rack", "1")]);
    let b = labels(&[("zone", "b")]);
    type Case<'a> = (&'a str, (Selector, Vec<PolicyError>), bool, bool);
    let cases: Vec<Case> = vec![
        ("empty matches all", sel(&[], vec![]), true, true),
        ("matchLabels", sel(&[("zone", "a")], vec![]), true, false),
        (
            "In",
            sel(&[], vec![expr("zone", "In", &["a", "c"])]),
            true,
            false,
        ),
        (
            "NotIn matches a missing key",
            sel(&[], vec![expr("rack", "NotIn", &["1"])]),
            false,
            true,
        ),
        (
            "Exists",
            sel(&[], vec![expr("rack", "Exists", &[])]),
            true,
            false,
        ),
        (
            "DoesNotExist",
            sel(&[], vec![expr("rack", "DoesNotExist", &[])]),
            false,
            true,
        ),
        (
            "all must hold",
            sel(&[("zone", "a")], vec![expr("rack", "In", &["2"])]),
            false,
            false,
        ),
        (
            "unknown operator: nothing",
            sel(&[], vec![expr("zone", "Gt", &["1"])]),
            false,
            false,
        ),
        (
            "In without values: nothing",
            sel(&[], vec![expr("zone", "In", &[])]),
            false,
            false,
        ),
    ];
    for (name, (selector, errors), want_a, want_b) in cases {
        assert_eq!(
            (selector.matches(&a), selector.matches(&b)),
            (want_a, want_b),
            "{name}"
        );
        let invalid = name.ends_with("nothing");
        assert_eq!(!errors.is_empty(), invalid, "{name}: {errors:?}");
        if invalid {
            assert_eq!(
                errors[0].field, "spec.bgp.nodeSelector.matchExpressions[0]",
                "{name}"
            );
        }
    }
    assert!(Selector::from_labels(&labels(&[("zone", "b")])).matches(&b));
    assert!(!Selector::from_labels(&labels(&[("zone", "b")])).matches(&a));
}

#[test]
fn service_annotations_parse_with_aliases_and_errors() {
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        ServicePolicy,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        ("none", vec![], ServicePolicy::default(), vec![]),
        (
            "all four",
            vec![
                (
                    "bgp.porter.kubesphere.io/communities",
                    "65000:300, no-export",
                ),
                ("bgp.porter.kubesphere.io/large-communities", "65000:3:0"),
                ("bgp.porter.kubesphere.io/local-pref", "300"),
                ("bgp.porter.kubesphere.io/link-bandwidth", "Off"),
            ],
            ServicePolicy {
                communities: vec![c(65000, 300), NO_EXPORT],
                large_communities: vec![(65000, 3, 0)],
                local_pref: Some(300),
                link_bandwidth: Some(false),
            },
            vec![],
        ),
        (
            "openelb aliases",
            vec![
                ("bgp.openelb.kubesphere.io/communities", "65000:1"),
                ("bgp.openelb.kubesphere.io/local-pref", "50"),
            ],
            ServicePolicy {
                communities: vec![c(65000, 1)],
                local_pref: Some(50),
                ..Default::default()
            },
            vec![],
        ),
        (
            "bad values are left out, good ones kept",
            vec![
                ("bgp.porter.kubesphere.io/communities", "65000:1,bogus"),
                ("bgp.porter.kubesphere.io/large-communities", "1:2:3:4"),
                ("bgp.porter.kubesphere.io/local-pref", "-5"),
                ("bgp.porter.kubesphere.io/link-bandwidth", "maybe"),
            ],
            ServicePolicy {
                communities: vec![c(65000, 1)],
                ..Default::default()
            },
            vec![
                "bgp.porter.kubesphere.io/communities",
                "bgp.porter.kubesphere.io/large-communities",
                "bgp.porter.kubesphere.io/local-pref",
                "bgp.porter.kubesphere.io/link-bandwidth",
            ],
        ),
    ];
    for (name, annotations, want, want_errors) in cases {
        let annotations = labels(&annotations);
        let (policy, errors) = ServicePolicy::from_annotations(Some(&annotations));
        assert_eq!(policy, want, "{name}");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, want_errors, "{name}");
    }
}

#[test]
fn paths_merge_pool_services_endpoints_and_cluster() {
    let pool = PoolPolicy {
        communities: vec![c(65000, 100)],
        large_communities: vec![(65000, 1, 2)],
        local_pref: Some(200),
        service_may_set: ServiceAllowance::everything(),
        ..Default::default()
    };
    let on = ClusterPolicy::default();
    let off = ClusterPolicy {
        link_bandwidth: false,
    };
    let annotated = ServicePolicy {
        communities: vec![c(65000, 300), c(65000, 100)],
        large_communities: vec![(65000, 3, 0)],
        local_pref: Some(300),
        link_bandwidth: None,
    };
    let plain = ServicePolicy::default();
    let lb_off = ServicePolicy {
        link_bandwidth: Some(false),
        ..Default::default()
    };
    let low_pref = ServicePolicy {
        local_pref: Some(150),
        ..Default::default()
    };
    let (a, b) = (key("a"), key("b"));
    type Case<'a> = (
        &'a str,
        Vec<(&'a ObjectKey, &'a ServicePolicy)>,
        u32,
        ClusterPolicy,
        PathAttributes,
        Vec<&'a str>,
    );
    let lb = |k| Some(LinkBandwidth::for_endpoints(k, true));
    let cases: Vec<Case> = vec![
        (
            "pool only, 3 endpoints",
            vec![(&a, &plain)],
            3,
            on,
            PathAttributes {
                communities: vec![c(65000, 100)],
                large_communities: vec![(65000, 1, 2)],
                local_pref: Some(200),
                link_bandwidth: lb(3),
                only_peers: None,
            },
            vec![],
        ),
        (
            "a Service adds communities and overrides local-pref",
            vec![(&a, &annotated)],
            1,
            on,
            PathAttributes {
                communities: vec![c(65000, 100), c(65000, 300)],
                large_communities: vec![(65000, 1, 2), (65000, 3, 0)],
                local_pref: Some(300),
                link_bandwidth: lb(1),
                only_peers: None,
            },
            vec![],
        ),
        (
            "cluster switch off",
            vec![(&a, &plain)],
            2,
            off,
            PathAttributes {
                communities: vec![c(65000, 100)],
                large_communities: vec![(65000, 1, 2)],
                local_pref: Some(200),
                link_bandwidth: None,
                only_peers: None,
            },
            vec![],
        ),
        (
            "shared: the union, the highest local-pref, off wins",
            vec![(&a, &annotated), (&b, &lb_off)],
            4,
            on,
            PathAttributes {
                communities: vec![c(65000, 100), c(65000, 300)],
                large_communities: vec![(65000, 1, 2), (65000, 3, 0)],
                local_pref: Some(300),
                link_bandwidth: None,
                only_peers: None,
            },
            vec!["local-pref (300 by ns/a)", "link bandwidth is off for ns/b"],
        ),
        (
            "shared: two local-prefs",
            vec![(&a, &annotated), (&b, &low_pref)],
            2,
            on,
            PathAttributes {
                communities: vec![c(65000, 100), c(65000, 300)],
                large_communities: vec![(65000, 1, 2), (65000, 3, 0)],
                local_pref: Some(300),
                link_bandwidth: lb(2),
                only_peers: None,
            },
            vec!["150 by ns/b, 300 by ns/a); the highest, 300"],
        ),
        (
            "shared: both off is no disagreement",
            vec![(&a, &lb_off), (&b, &lb_off)],
            2,
            on,
            PathAttributes {
                communities: vec![c(65000, 100)],
                large_communities: vec![(65000, 1, 2)],
                local_pref: Some(200),
                link_bandwidth: None,
                only_peers: None,
            },
            vec![],
        ),
    ];
    for (name, services, k, cluster, want, want_conflicts) in cases {
        let (got, conflicts) = path_attributes(&pool, services, k, &cluster);
        assert_eq!(got, want, "{name}");
        assert_eq!(
            conflicts.len(),
            want_conflicts.len(),
            "{name}: {conflicts:?}"
        );
        for (got, want) in conflicts.iter().zip(want_conflicts) {
            assert!(got.contains(want), "{name}: {got:?} lacks {want:?}");
        }
    }
}

#[test]
fn link_bandwidth_is_proportional_to_ready_local_endpoints() {
    let (policy, _) = merge(
        &PoolPolicy::default(),
        [(&key("a"), &ServicePolicy::default())],
        &ClusterPolicy::default(),
    );
    let one = policy.attributes(1).link_bandwidth.expect("on by default");
    let three = policy.attributes(3).link_bandwidth.expect("on by default");
    assert!(one.transitive, "the controller builds the transitive form");
    assert_eq!(three.bytes_per_second, 3.0 * one.bytes_per_second);
    assert_eq!(one.bytes_per_second, 125_000_000.0, "1 Gbit/s per endpoint");
}

#[test]
fn cluster_policy_defaults_to_link_bandwidth_on() {
    assert!(ClusterPolicy::from_conf(None).link_bandwidth);
    let mut spec = BgpConfSpec::default();
    assert!(ClusterPolicy::from_conf(Some(&spec)).link_bandwidth);
    spec.link_bandwidth = Some(LinkBandwidthConf { enabled: false });
    assert!(!ClusterPolicy::from_conf(Some(&spec)).link_bandwidth);
    let yaml: BgpConfSpec =
        serde_yaml::from_str("as: 65000\nlinkBandwidth: {}\n").expect("valid BgpConf spec");
    assert!(ClusterPolicy::from_conf(Some(&yaml)).link_bandwidth);
}

/// Each reason a peer is not sent a node's path, as explain shows it.
#[test]
fn peer_takes_names_the_selector_that_keeps_a_path_from_a_peer() {
    let peer = PeerScope {
        address: "10.0.0.1".parse().expect("test IP"),
        labels: labels(&[("fabric", "blue")]),
        node_selector: Selector::from_labels(&labels(&[("rack", "1")])),
    };
    let pool = |fabric: &str| PoolPolicy {
        peer_selector: Selector::from_labels(&labels(&[("fabric", fabric)])),
        ..Default::default()
    };
    let rack1 = labels(&[("rack", "1")]);
    let rack2 = labels(&[("rack", "2")]);
    assert_eq!(peer_takes(&pool("blue"), &peer, &rack1), Ok(()));
    assert_eq!(
        peer_takes(&pool("red"), &peer, &rack1),
        Err(PeerSkip::PoolPeerSelector)
    );
    assert_eq!(
        peer_takes(&pool("blue"), &peer, &rack2),
        Err(PeerSkip::PeerNodeSelector)
    );
}

#[test]
fn only_peers_from_pool_peer_selector_and_peer_node_selectors() {
    let peer = |addr: &str, l: &[(&str, &str)], nodes: &[(&str, &str)]| PeerScope {
        address: addr.parse().expect("test IP"),
        labels: labels(l),
        node_selector: Selector::from_labels(&labels(nodes)),
    };
    let peers = vec![
        peer("10.0.0.1", &[("fabric", "blue")], &[("rack", "1")]),
        peer("10.0.0.2", &[("fabric", "blue")], &[("rack", "2")]),
        peer("10.0.0.3", &[("fabric", "red")], &[]),
    ];
    let blue = PoolPolicy {
        peer_selector: Selector::from_labels(&labels(&[("fabric", "blue")])),
        ..Default::default()
    };
    let any = PoolPolicy::default();
    let set = |v: &[&str]| {
        Some(
            v.iter()
                .map(|a| a.parse().expect("test IP"))
                .collect::<BTreeSet<IpAddr>>(),
        )
    };
    let rack1 = labels(&[("rack", "1")]);
    let rack3 = labels(&[("rack", "3")]);
    assert_eq!(
        only_peers(&any, &peers, &rack1),
        set(&["10.0.0.1", "10.0.0.3"])
    );
    assert_eq!(only_peers(&blue, &peers, &rack1), set(&["10.0.0.1"]));
    assert_eq!(
        only_peers(&blue, &peers, &rack3),
        set(&[]),
        "no peer: the path goes nowhere"
    );
    let open = vec![peer("10.0.0.1", &[], &[]), peer("10.0.0.2", &[], &[])];
    assert_eq!(
        only_peers(&any, &open, &rack1),
        None,
        "every peer: unscoped"
    );
    assert_eq!(only_peers(&any, &[], &rack1), None);
}

#[test]
fn peer_policy_defaults_and_modes() {
    assert_eq!(
        peer_policy(None),
        PeerPolicy {
            communities: true,
            link_bandwidth: LinkBandwidthPolicy::Transitive
        }
    );
    let spec = PeerPolicySpec {
        send_communities: Some(false),
        link_bandwidth: Some(LinkBandwidthMode::NonTransitive),
    };
    assert_eq!(
        peer_policy(Some(&spec)),
        PeerPolicy {
            communities: false,
            link_bandwidth: LinkBandwidthPolicy::NonTransitive
        }
    );
    let off: PeerPolicySpec = serde_yaml::from_str("linkBandwidth: Off\n").expect("valid policy");
    assert_eq!(
        peer_policy(Some(&off)).link_bandwidth,
        LinkBandwidthPolicy::Off
    );
}

#[test]
fn a_pool_lets_its_services_set_only_what_it_allows() {
    let (a, b) = (key("a"), key("b"));
    let blackhole = 0xFFFF_029A;
    let greedy = ServicePolicy {
        communities: vec![c(65000, 300), blackhole],
        large_communities: vec![(65000, 3, 0)],
        local_pref: Some(900),
        link_bandwidth: None,
    };
    let quiet = ServicePolicy {
        link_bandwidth: Some(false),
        ..Default::default()
    };
    let on = ClusterPolicy::default();
    let pool_with = |attributes: Option<ServiceAttributes>| {
        let spec = EipBgp {
            communities: strings(&["65000:100"]),
            service_attributes: attributes,
            ..Default::default()
        };
        let (pool, errors) = PoolPolicy::from_spec(Some(&spec));
        assert!(errors.is_empty(), "{errors:?}");
        pool
    };

    // Unset: nothing a Service sets is sent, and the refusal names it all.
    let closed = pool_with(None);
    let (attributes, notes) = path_attributes(&closed, [(&a, &greedy)], 1, &on);
    assert_eq!(attributes.communities, [c(65000, 100)], "the pool's only");
    assert!(attributes.large_communities.is_empty());
    assert_eq!(attributes.local_pref, None);
    assert_eq!(
        notes,
        [
            "ns/a sets community 65000:300, community 65535:666, large community 65000:3:0, \
          local-pref 900 by annotation, which the pool does not allow its Services \
          (spec.bgp.serviceAttributes): not sent"
        ]
    );
    // Switching link bandwidth off needs no permission.
    let (attributes, notes) = path_attributes(&closed, [(&b, &quiet)], 1, &on);
    assert_eq!(attributes.link_bandwidth, None);
    assert!(notes.is_empty(), "{notes:?}");

    // A list: what is on it passes, the rest (blackhole) is refused.
    let listed = pool_with(Some(ServiceAttributes {
        communities: strings(&["65000:300", "65000:301"]),
        large_communities: strings(&["*"]),
        local_pref: Some(false),
    }));
    let (attributes, notes) = path_attributes(&listed, [(&a, &greedy)], 1, &on);
    assert_eq!(attributes.communities, [c(65000, 100), c(65000, 300)]);
    assert_eq!(attributes.large_communities, [(65000, 3, 0)]);
    assert_eq!(attributes.local_pref, None);
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].starts_with("ns/a sets community 65535:666, local-pref 900 by annotation"),
        "{}",
        notes[0]
    );

    // Everything allowed: as before the allow-list existed.
    let open = pool_with(Some(ServiceAttributes {
        communities: strings(&["*"]),
        large_communities: strings(&["*"]),
        local_pref: Some(true),
    }));
    let (attributes, notes) = path_attributes(&open, [(&a, &greedy)], 1, &on);
    assert_eq!(
        attributes.communities,
        [c(65000, 100), c(65000, 300), blackhole]
    );
    assert_eq!(attributes.local_pref, Some(900));
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn an_unreadable_allowance_is_reported_and_allows_nothing_more() {
    let spec = EipBgp {
        service_attributes: Some(ServiceAttributes {
            communities: strings(&["65000:1", "nonsense"]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (pool, errors) = PoolPolicy::from_spec(Some(&spec));
    assert_eq!(
        pool.service_may_set.communities,
        Allowed::Only([c(65000, 1)].into())
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.bgp.serviceAttributes.communities[1]"]);
}

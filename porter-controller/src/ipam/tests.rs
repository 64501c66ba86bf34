use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use porter_api::{Eip, EipSpec};

fn eip(name: &str, address: &str, f: impl FnOnce(&mut Eip)) -> Pool {
    let mut e = Eip {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: EipSpec {
            address: address.into(),
            ..Default::default()
        },
        status: None,
    };
    f(&mut e);
    Pool::from_eip(&e)
}

fn plain(name: &str, address: &str) -> Pool {
    eip(name, address, |_| {})
}

fn req(ns_name: &str) -> ServiceRequest {
    let (ns, name) = ns_name.split_once('/').expect("ns/name");
    ServiceRequest {
        key: ObjectKey::new(ns, name),
        pool: None,
        requested: vec![],
        invalid_request: None,
        sharing_key: None,
        ports: [("TCP".to_string(), 80)].into(),
        families: vec![Family::V4],
        policy: FamilyPolicy::SingleStack,
        current: vec![],
    }
}

type Outcome = Result<Vec<IpAddr>, AllocError>;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn ipam(pools: Vec<Pool>) -> Ipam {
    let mut i = Ipam::default();
    i.set_pools(pools);
    i
}

fn no_labels() -> NamespaceLabels {
    NamespaceLabels::new()
}

/// Allocates each request in order, the way the reconciler does for Services
/// that hold nothing yet, and returns the outcome per Service.
fn allocate_all(i: &mut Ipam, reqs: &[ServiceRequest], labels: &NamespaceLabels) -> Vec<Outcome> {
    reqs.iter().map(|r| i.allocate(r, labels)).collect()
}

#[test]
fn allocates_from_every_pool_syntax() {
    let cases: &[(&str, Family, &[&str])] = &[
        ("192.168.0.100", Family::V4, &["192.168.0.100"]),
        (
            "10.0.0.0/30",
            Family::V4,
            &["10.0.0.0", "10.0.0.1", "10.0.0.2"],
        ),
        (
            "10.0.0.10-10.0.0.12",
            Family::V4,
            &["10.0.0.10", "10.0.0.11", "10.0.0.12"],
        ),
        ("2001:db8::/64", Family::V6, &["2001:db8::", "2001:db8::1"]),
        (
            "2001:db8::5-2001:db8::6",
            Family::V6,
            &["2001:db8::5", "2001:db8::6"],
        ),
    ];
    for (address, family, want) in cases {
        let mut i = ipam(vec![plain("p", address)]);
        let reqs: Vec<_> = (0..want.len())
            .map(|n| ServiceRequest {
                families: vec![*family],
                ..req(&format!("ns/s{n}"))
            })
            .collect();
        let got: Vec<IpAddr> = allocate_all(&mut i, &reqs, &no_labels())
            .into_iter()
            .map(|r| r.expect("allocates")[0])
            .collect();
        assert_eq!(got, ips(want), "{address}");
    }
}

#[test]
fn exhausted_pool_fails_with_reason_then_succeeds_when_space_frees() {
    let mut i = ipam(vec![plain("tiny", "10.0.0.1-10.0.0.2")]);
    let l = no_labels();
    assert_eq!(i.allocate(&req("a/one"), &l), Ok(ips(&["10.0.0.1"])));
    assert_eq!(i.allocate(&req("a/two"), &l), Ok(ips(&["10.0.0.2"])));
    let err = i.allocate(&req("a/three"), &l).expect_err("pool is full");
    assert_eq!(
        err,
        AllocError::Exhausted {
            family: Family::V4,
            pools: "tiny".into()
        }
    );
    assert!(
        err.to_string()
            .contains("no free IPv4 address in pool(s) tiny")
    );
    assert_eq!(i.addresses_of(&req("a/three").key), None);
    assert_eq!(i.release(&req("a/one").key), ips(&["10.0.0.1"]));
    assert_eq!(i.allocate(&req("a/three"), &l), Ok(ips(&["10.0.0.1"])));
}

#[test]
fn v6_64_pool_fills_without_overflow_and_reports_its_size() {
    let mut i = ipam(vec![plain("v6", "2001:db8:1::/64")]);
    let r = ServiceRequest {
        families: vec![Family::V6],
        ..req("a/s")
    };
    assert_eq!(i.allocate(&r, &no_labels()), Ok(ips(&["2001:db8:1::"])));
    let pool = i.pools().next().expect("pool");
    assert_eq!(pool.range.map(|r| r.size()), Some(1u128 << 64));
}

#[test]
fn overlapping_pool_is_refused_and_never_used() {
    let older = eip("older", "10.0.0.0/24", |e| {
        e.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1).expect("ts"),
        ))
    });
    let newer = eip("a-newer", "10.0.0.128/25", |e| {
        e.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(2).expect("ts"),
        ))
    });
    let mut i = ipam(vec![newer, older, plain("bad", "10.0.0.0/99")]);
    let states: BTreeMap<_, _> = i
        .pools()
        .map(|p| (p.name.clone(), p.state.clone()))
        .collect();
    assert_eq!(states["older"], PoolState::Accepted);
    assert!(
        matches!(&states["a-newer"], PoolState::Refused(w) if w.contains("overlaps pool `older`"))
    );
    assert!(matches!(&states["bad"], PoolState::Refused(w) if w.contains("10.0.0.0/99")));
    let named = ServiceRequest {
        pool: Some("a-newer".into()),
        ..req("a/s")
    };
    assert!(matches!(
        i.allocate(&named, &no_labels()),
        Err(AllocError::PoolUnusable { .. })
    ));
    assert_eq!(
        i.allocate(&req("a/s"), &no_labels()),
        Ok(ips(&["10.0.0.0"]))
    );
}

#[test]
fn disabled_pool_keeps_existing_and_gives_no_new() {
    let mut i = ipam(vec![plain("p", "10.0.0.0/24")]);
    let l = no_labels();
    let a = req("a/a");
    assert_eq!(i.allocate(&a, &l), Ok(ips(&["10.0.0.0"])));
    i.set_pools(vec![eip("p", "10.0.0.0/24", |e| e.spec.disable = true)]);
    assert!(
        i.keep_existing(&a, &l),
        "existing allocation survives disable"
    );
    assert_eq!(i.addresses_of(&a.key), Some(&ips(&["10.0.0.0"])[..]));
    assert_eq!(
        i.allocate(&req("a/b"), &l),
        Err(AllocError::NoPool(Family::V4))
    );
    let asked = ServiceRequest {
        requested: ips(&["10.0.0.9"]),
        ..req("a/c")
    };
    assert!(
        matches!(i.allocate(&asked, &l), Err(AllocError::PoolUnusable { why, .. }) if why.contains("disabled"))
    );
}

#[test]
fn pool_choice_follows_namespace_then_default_then_priority() {
    let pools = || {
        vec![
            eip("open-high", "10.0.1.0/24", |e| e.spec.priority = 5),
            eip("open-low", "10.0.2.0/24", |e| e.spec.priority = 1),
            eip("default", "10.0.3.0/24", |e| {
                e.metadata.annotations = Some(
                    [(
                        "eip.openelb.kubesphere.io/is-default-eip".to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                )
            }),
            eip("team-b", "10.0.4.0/24", |e| {
                e.spec.namespaces = vec!["b".into()]
            }),
            eip("team-b-pref", "10.0.5.0/24", |e| {
                e.spec.namespaces = vec!["b".into()];
                e.spec.priority = -1
            }),
            eip("labelled", "10.0.6.0/24", |e| {
                e.spec.namespace_selector = [("tier".to_string(), "gold".to_string())].into()
            }),
        ]
    };
    let labels: NamespaceLabels = [(
        "c".to_string(),
        [("tier".to_string(), "gold".to_string())].into(),
    )]
    .into();
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("x/s", "10.0.3.0", None),              // default pool beats open pools
        ("b/s", "10.0.5.0", None),              // namespace pools first, by priority
        ("c/s", "10.0.6.0", None),              // namespaceSelector match
        ("x/s", "10.0.1.0", Some("open-high")), // annotation names the pool
    ];
    for (key, want, pool) in cases {
        let mut i = ipam(pools());
        let r = ServiceRequest {
            pool: pool.map(str::to_string),
            ..req(key)
        };
        assert_eq!(i.allocate(&r, &labels), Ok(ips(&[want])), "{key} {pool:?}");
    }
    // Without a default pool, open pools go by priority (lower first).
    let mut i = ipam(
        pools()
            .into_iter()
            .filter(|p| p.name != "default")
            .collect(),
    );
    assert_eq!(i.allocate(&req("x/s"), &labels), Ok(ips(&["10.0.2.0"])));
    // A reserved pool is not open to other namespaces even by name.
    let mut i = ipam(pools());
    let r = ServiceRequest {
        pool: Some("team-b".into()),
        ..req("x/s")
    };
    assert!(matches!(
        i.allocate(&r, &labels),
        Err(AllocError::PoolNotAllowed { .. })
    ));
    let r = ServiceRequest {
        pool: Some("nope".into()),
        ..req("x/s")
    };
    assert_eq!(
        i.allocate(&r, &labels),
        Err(AllocError::PoolNotFound("nope".into()))
    );
}

#[test]
fn requested_address_is_validated() {
    let l = no_labels();
    let fresh = || {
        let mut i = ipam(vec![plain("p", "10.0.0.0/24"), plain("q", "10.0.1.0/24")]);
        assert_eq!(i.allocate(&req("a/holder"), &l), Ok(ips(&["10.0.0.0"])));
        i
    };
    let asking = |ip: &str| ServiceRequest {
        requested: ips(&[ip]),
        ..req("a/s")
    };
    let cases: Vec<(&str, ServiceRequest, Outcome)> = vec![
        (
            "free and in a pool",
            asking("10.0.0.7"),
            Ok(ips(&["10.0.0.7"])),
        ),
        (
            "outside every pool",
            asking("192.0.2.1"),
            Err(AllocError::NotInPool(ip("192.0.2.1"))),
        ),
        (
            "in use, no sharing key",
            asking("10.0.0.0"),
            Err(AllocError::InUse {
                ip: ip("10.0.0.0"),
                holders: "a/holder".into(),
            }),
        ),
        (
            "in another pool than the named one",
            ServiceRequest {
                pool: Some("p".into()),
                ..asking("10.0.1.1")
            },
            Err(AllocError::NotInPool(ip("10.0.1.1"))),
        ),
        (
            "unparsable",
            ServiceRequest {
                invalid_request: Some("10.0.0.300".into()),
                ..req("a/s")
            },
            Err(AllocError::InvalidRequest("10.0.0.300".into())),
        ),
        (
            "family the Service does not use",
            asking("2001:db8::1"),
            Err(AllocError::FamilyNotWanted(Family::V6)),
        ),
    ];
    for (name, r, want) in cases {
        let mut i = fresh();
        assert_eq!(i.allocate(&r, &l), want, "{name}");
    }
}

#[test]
fn sharing_needs_same_key_and_disjoint_ports() {
    let l = no_labels();
    let shared = |key: &str, k: Option<&str>, port: i32| ServiceRequest {
        sharing_key: k.map(str::to_string),
        ports: [("TCP".to_string(), port)].into(),
        ..req(key)
    };
    let cases: &[(&str, Option<&str>, i32, &str)] = &[
        ("same key, other port: shares", Some("k"), 443, "10.0.0.0"),
        (
            "same key, same port: new address",
            Some("k"),
            80,
            "10.0.0.1",
        ),
        ("other key: new address", Some("other"), 443, "10.0.0.1"),
        ("no key: new address", None, 443, "10.0.0.1"),
    ];
    for (name, k, port, want) in cases {
        let mut i = ipam(vec![plain("p", "10.0.0.0/24")]);
        assert_eq!(
            i.allocate(&shared("a/first", Some("k"), 80), &l),
            Ok(ips(&["10.0.0.0"]))
        );
        assert_eq!(
            i.allocate(&shared("a/second", *k, *port), &l),
            Ok(ips(&[want])),
            "{name}"
        );
    }
    // Asking for a shared address explicitly follows the same rule.
    let mut i = ipam(vec![plain("p", "10.0.0.0/24")]);
    assert!(i.allocate(&shared("a/first", Some("k"), 80), &l).is_ok());
    let clash = ServiceRequest {
        requested: ips(&["10.0.0.0"]),
        ..shared("a/x", Some("k"), 80)
    };
    assert!(matches!(
        i.allocate(&clash, &l),
        Err(AllocError::InUse { .. })
    ));
    let fine = ServiceRequest {
        requested: ips(&["10.0.0.0"]),
        ..shared("a/y", Some("k"), 53)
    };
    assert_eq!(i.allocate(&fine, &l), Ok(ips(&["10.0.0.0"])));
    // The address stays while one user remains.
    i.release(&ObjectKey::new("a", "first"));
    assert_eq!(i.used_in("p").get(&ip("10.0.0.0")).map(Vec::len), Some(1));
}

#[test]
fn dual_stack_follows_policy() {
    let l = no_labels();
    let both = || {
        ipam(vec![
            plain("v4", "10.0.0.0/24"),
            plain("v6", "2001:db8::/120"),
        ])
    };
    let only_v4 = || ipam(vec![plain("v4", "10.0.0.0/24")]);
    let dual = |policy, families: Vec<Family>| ServiceRequest {
        policy,
        families,
        ..req("a/s")
    };
    use Family::{V4, V6};
    use FamilyPolicy::*;
    let cases: Vec<(&str, Ipam, ServiceRequest, Outcome)> = vec![
        (
            "single v6",
            both(),
            dual(SingleStack, vec![V6]),
            Ok(ips(&["2001:db8::"])),
        ),
        (
            "prefer, both pools",
            both(),
            dual(PreferDualStack, vec![V4, V6]),
            Ok(ips(&["10.0.0.0", "2001:db8::"])),
        ),
        (
            "prefer, v6 first",
            both(),
            dual(PreferDualStack, vec![V6, V4]),
            Ok(ips(&["2001:db8::", "10.0.0.0"])),
        ),
        (
            "prefer, v4 only",
            only_v4(),
            dual(PreferDualStack, vec![V4, V6]),
            Ok(ips(&["10.0.0.0"])),
        ),
        (
            "require, v4 only",
            only_v4(),
            dual(RequireDualStack, vec![V4, V6]),
            Err(AllocError::NoPool(V6)),
        ),
    ];
    for (name, mut i, r, want) in cases {
        assert_eq!(i.allocate(&r, &l), want, "{name}");
        if want.is_err() {
            assert!(
                i.allocations().is_empty(),
                "{name}: a failed dual-stack request holds nothing"
            );
        }
    }
}

#[test]
fn restart_rebuilds_from_status_and_changes_no_address() {
    let l = no_labels();
    let pools = || vec![plain("p", "10.0.0.0/29")];
    // Before the restart: three Services got .0, .1, .2; .1's owner was
    // created last, so a naive fresh allocation would hand .0/.1 out differently.
    let with_status = |key: &str, addr: &str| ServiceRequest {
        current: ips(&[addr]),
        ..req(key)
    };
    let reqs = [
        with_status("a/z", "10.0.0.0"),
        with_status("a/y", "10.0.0.1"),
        with_status("a/x", "10.0.0.2"),
    ];
    let mut i = ipam(pools());
    let newcomer = req("a/new");
    // The reconciler keeps existing holdings for every Service first.
    for r in &reqs {
        assert!(i.keep_existing(r, &l));
    }
    assert!(!i.keep_existing(&newcomer, &l));
    assert_eq!(i.allocate(&newcomer, &l), Ok(ips(&["10.0.0.3"])));
    for r in &reqs {
        assert_eq!(i.addresses_of(&r.key), Some(&r.current[..]), "{}", r.key);
    }
    // A status address that is no longer in any pool is not adopted.
    let stray = with_status("a/stray", "192.0.2.9");
    assert!(!i.keep_existing(&stray, &l));
    // Two Services claiming the same address: the first one seen keeps it.
    let twin = with_status("a/twin", "10.0.0.0");
    assert!(!i.keep_existing(&twin, &l));
}

#[test]
fn changing_the_request_moves_the_service() {
    let l = no_labels();
    let mut i = ipam(vec![plain("p", "10.0.0.0/24"), plain("q", "10.0.1.0/24")]);
    let r = req("a/s");
    assert_eq!(i.allocate(&r, &l), Ok(ips(&["10.0.0.0"])));
    assert!(
        i.keep_existing(&r, &l),
        "unchanged request keeps its address"
    );
    let moved = ServiceRequest {
        pool: Some("q".into()),
        ..r.clone()
    };
    assert!(
        !i.keep_existing(&moved, &l),
        "named pool changed: old address released"
    );
    assert_eq!(i.allocate(&moved, &l), Ok(ips(&["10.0.1.0"])));
    // Deleting the pool releases what it gave.
    i.set_pools(vec![plain("p", "10.0.0.0/24")]);
    assert_eq!(i.addresses_of(&moved.key), None);
}

#[test]
fn filling_a_pool_reuses_released_gaps_after_wrapping() {
    let l = no_labels();
    let mut i = ipam(vec![plain("p", "10.0.0.0/30")]);
    for n in 0..4 {
        assert!(i.allocate(&req(&format!("a/s{n}")), &l).is_ok());
    }
    i.release(&ObjectKey::new("a", "s1"));
    assert_eq!(i.allocate(&req("a/late"), &l), Ok(ips(&["10.0.0.1"])));
}

/// Found by the `ipam` fuzz target: when a pool's address changed and a
/// kept address now lay in another pool, it was still counted in the old
/// one (Eip.status.used, and the sharing search).
#[test]
fn kept_address_moves_to_the_pool_that_now_holds_it() {
    let mut i = ipam(vec![plain("a", "10.0.0.0/30")]);
    let r = req("ns/svc");
    assert_eq!(i.allocate(&r, &no_labels()), Ok(ips(&["10.0.0.0"])));
    i.set_pools(vec![plain("a", "10.0.1.0/30"), plain("b", "10.0.0.0/30")]);
    assert_eq!(i.addresses_of(&r.key), Some(&ips(&["10.0.0.0"])[..]));
    assert!(i.used_in("a").is_empty(), "{:?}", i.used_in("a"));
    assert_eq!(
        i.used_in("b").keys().copied().collect::<Vec<_>>(),
        ips(&["10.0.0.0"])
    );
}

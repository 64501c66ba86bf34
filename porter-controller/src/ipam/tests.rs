use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::Eip;

fn eip(name: &str, address: &str, f: impl FnOnce(&mut Eip)) -> Pool {
    let mut e = crate::testing::eip(name, address);
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
        sharing_terms: SharingTerms::default(),
        ports: [("TCP".to_string(), 80)].into(),
        families: vec![IpFamily::V4],
        policy: IpFamilyPolicy::SingleStack,
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
    i.set_pools(pools, &[]);
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
    let cases: &[(&str, IpFamily, &[&str])] = &[
        ("192.168.0.100", IpFamily::V4, &["192.168.0.100"]),
        // A CIDR leaves out its network and broadcast addresses.
        (
            "10.0.0.0/29",
            IpFamily::V4,
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        ),
        (
            "10.0.0.10-10.0.0.12",
            IpFamily::V4,
            &["10.0.0.10", "10.0.0.11", "10.0.0.12"],
        ),
        (
            "2001:db8::/64",
            IpFamily::V6,
            &["2001:db8::1", "2001:db8::2"],
        ),
        (
            "2001:db8::5-2001:db8::6",
            IpFamily::V6,
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
            family: IpFamily::V4,
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
        families: vec![IpFamily::V6],
        ..req("a/s")
    };
    // The first address (Subnet-Router anycast) is left out.
    assert_eq!(i.allocate(&r, &no_labels()), Ok(ips(&["2001:db8:1::1"])));
    let pool = i.pools().next().expect("pool");
    assert_eq!(pool.range.map(|r| r.size()), Some((1u128 << 64) - 1));
}

#[test]
fn overlapping_pool_is_refused_and_never_used() {
    let older = eip("older", "10.0.0.0-10.0.0.255", |e| {
        e.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1).expect("ts"),
        ))
    });
    let newer = eip("a-newer", "10.0.0.128-10.0.0.255", |e| {
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
    let mut i = ipam(vec![plain("p", "10.0.0.0-10.0.0.255")]);
    let l = no_labels();
    let a = req("a/a");
    assert_eq!(i.allocate(&a, &l), Ok(ips(&["10.0.0.0"])));
    i.set_pools(
        vec![eip("p", "10.0.0.0-10.0.0.255", |e| e.spec.disable = true)],
        &[],
    );
    assert!(
        i.keep(&a, &ips(&["10.0.0.0"]), &l),
        "existing allocation survives disable"
    );
    assert_eq!(i.addresses_of(&a.key), Some(&ips(&["10.0.0.0"])[..]));
    assert_eq!(
        i.allocate(&req("a/b"), &l),
        Err(AllocError::NoPool(IpFamily::V4))
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
            eip("open-high", "10.0.1.0-10.0.1.255", |e| e.spec.priority = 5),
            eip("open-low", "10.0.2.0-10.0.2.255", |e| e.spec.priority = 1),
            eip("default", "10.0.3.0-10.0.3.255", |e| {
                e.metadata.annotations = Some(
                    [(
                        "eip.openelb.kubesphere.io/is-default-eip".to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                )
            }),
            eip("team-b", "10.0.4.0-10.0.4.255", |e| {
                e.spec.namespaces = vec!["b".into()]
            }),
            eip("team-b-pref", "10.0.5.0-10.0.5.255", |e| {
                e.spec.namespaces = vec!["b".into()];
                e.spec.priority = -1
            }),
            eip("labelled", "10.0.6.0-10.0.6.255", |e| {
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
        let mut i = ipam(vec![
            plain("p", "10.0.0.0-10.0.0.255"),
            plain("q", "10.0.1.0-10.0.1.255"),
        ]);
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
            Err(AllocError::FamilyNotWanted(IpFamily::V6)),
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
        let mut i = ipam(vec![plain("p", "10.0.0.0-10.0.0.255")]);
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
    let mut i = ipam(vec![plain("p", "10.0.0.0-10.0.0.255")]);
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
            plain("v4", "10.0.0.0-10.0.0.255"),
            plain("v6", "2001:db8::-2001:db8::ff"),
        ])
    };
    let only_v4 = || ipam(vec![plain("v4", "10.0.0.0-10.0.0.255")]);
    let dual = |policy, families: Vec<IpFamily>| ServiceRequest {
        policy,
        families,
        ..req("a/s")
    };
    use IpFamily::{V4, V6};
    use IpFamilyPolicy::*;
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
    let pools = || vec![plain("p", "10.0.0.0-10.0.0.7")];
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
        assert!(i.keep(r, &r.current, &l));
    }
    assert!(!i.keep(&newcomer, &newcomer.current, &l));
    assert_eq!(i.allocate(&newcomer, &l), Ok(ips(&["10.0.0.3"])));
    for r in &reqs {
        assert_eq!(i.addresses_of(&r.key), Some(&r.current[..]), "{}", r.key);
    }
    // A status address that is no longer in any pool is not adopted.
    let stray = with_status("a/stray", "192.0.2.9");
    assert!(!i.keep(&stray, &stray.current, &l));
    // Two Services claiming the same address: the first one seen keeps it.
    let twin = with_status("a/twin", "10.0.0.0");
    assert!(!i.keep(&twin, &twin.current, &l));
}

#[test]
fn changing_the_request_moves_the_service() {
    let l = no_labels();
    let mut i = ipam(vec![
        plain("p", "10.0.0.0-10.0.0.255"),
        plain("q", "10.0.1.0-10.0.1.255"),
    ]);
    let r = req("a/s");
    assert_eq!(i.allocate(&r, &l), Ok(ips(&["10.0.0.0"])));
    let held = ips(&["10.0.0.0"]);
    assert!(i.keep(&r, &held, &l), "unchanged request keeps its address");
    let moved = ServiceRequest {
        pool: Some("q".into()),
        ..r.clone()
    };
    assert!(
        !i.keep(&moved, &held, &l),
        "named pool changed: old address released"
    );
    assert_eq!(i.allocate(&moved, &l), Ok(ips(&["10.0.1.0"])));
    // Deleting the pool releases what it gave.
    i.set_pools(vec![plain("p", "10.0.0.0-10.0.0.255")], &[]);
    assert_eq!(i.addresses_of(&moved.key), None);
}

/// Found by the `ipam` fuzz target: when a pool's address changed and a
/// kept address now lay in another pool, it was still counted in the old
/// one (Eip.status.used, and the sharing search). An edit that leaves out an
/// address in use is now held back, so the address stays in its pool and
/// the newcomer over the old range is refused.
#[test]
fn kept_address_is_counted_in_the_pool_that_holds_it() {
    let mut i = ipam(vec![plain("a", "10.0.0.0-10.0.0.3")]);
    let r = req("ns/svc");
    assert_eq!(i.allocate(&r, &no_labels()), Ok(ips(&["10.0.0.0"])));
    i.set_pools(
        vec![
            plain("a", "10.0.1.0-10.0.1.3"),
            plain("b", "10.0.0.0-10.0.0.3"),
        ],
        &[],
    );
    assert_eq!(i.addresses_of(&r.key), Some(&ips(&["10.0.0.0"])[..]));
    assert_eq!(i.pool_of(ip("10.0.0.0")), Some("a"));
    assert!(i.used_in("b").is_empty(), "{:?}", i.used_in("b"));
    let b = i.pools().find(|p| p.name == "b").expect("b");
    assert!(matches!(&b.state, PoolState::Refused(why) if why.contains("overlaps pool `a`")));
}

fn published(reqs: &[ServiceRequest]) -> Vec<(&ObjectKey, &[IpAddr])> {
    reqs.iter()
        .map(|r| (&r.key, r.current.as_slice()))
        .collect()
}

fn with_status(key: &str, addrs: &[&str]) -> ServiceRequest {
    ServiceRequest {
        current: ips(addrs),
        ..req(key)
    }
}

/// One pass as the reconciler makes it: decide the pools, fill the book
/// from the published addresses, then allocate the rest in order.
fn pass(i: &mut Ipam, pools: Vec<Pool>, reqs: &[ServiceRequest]) -> Vec<Vec<IpAddr>> {
    let l = no_labels();
    let gone: Vec<ObjectKey> = i
        .allocations()
        .keys()
        .filter(|k| !reqs.iter().any(|r| r.key == **k))
        .cloned()
        .collect();
    for key in gone {
        i.release(&key);
    }
    i.set_pools(pools, &published(reqs));
    i.clear_book();
    let held: Vec<bool> = reqs.iter().map(|r| i.keep(r, &r.current, &l)).collect();
    for (r, held) in reqs.iter().zip(held) {
        if !held {
            let _ = i.allocate(r, &l);
        }
    }
    reqs.iter()
        .map(|r| i.addresses_of(&r.key).unwrap_or_default().to_vec())
        .collect()
}

#[test]
fn the_next_address_follows_from_the_published_state_not_from_history() {
    let l = no_labels();
    // One replica filled the pool and saw two Services go: its search
    // position is past the gaps.
    let mut busy = ipam(vec![plain("p", "10.0.0.0-10.0.0.7")]);
    for n in 0..6 {
        assert!(busy.allocate(&req(&format!("a/s{n}")), &l).is_ok());
    }
    busy.release(&ObjectKey::new("a", "s1"));
    busy.release(&ObjectKey::new("a", "s3"));
    // Another replica only ever saw what is published now.
    let now = [
        with_status("a/s0", &["10.0.0.0"]),
        with_status("a/s2", &["10.0.0.2"]),
        with_status("a/s4", &["10.0.0.4"]),
        with_status("a/s5", &["10.0.0.5"]),
        req("a/new1"),
        req("a/new2"),
        req("a/new3"),
    ];
    let mut fresh = Ipam::default();
    let from_fresh = pass(&mut fresh, vec![plain("p", "10.0.0.0-10.0.0.7")], &now);
    let from_busy = pass(&mut busy, vec![plain("p", "10.0.0.0-10.0.0.7")], &now);
    assert_eq!(from_fresh, from_busy);
    // The lowest free addresses, in the Services' order.
    assert_eq!(
        from_fresh[4..],
        [ips(&["10.0.0.1"]), ips(&["10.0.0.3"]), ips(&["10.0.0.6"])]
    );
}

#[test]
fn a_rebuilt_book_holds_what_is_published_not_what_was_remembered() {
    let l = no_labels();
    let mut i = ipam(vec![plain("p", "10.0.0.0-10.0.0.7")]);
    // This replica chose .0 for web on its own; the leader published .3.
    assert_eq!(i.allocate(&req("a/web"), &l), Ok(ips(&["10.0.0.0"])));
    let now = [with_status("a/web", &["10.0.0.3"]), req("a/api")];
    let got = pass(&mut i, vec![plain("p", "10.0.0.0-10.0.0.7")], &now);
    assert_eq!(got, [ips(&["10.0.0.3"]), ips(&["10.0.0.0"])]);
    assert_eq!(i.usage("p"), 2);
}

/// The example: pool .100-.200 edited to .150-.199 while a Service
/// holds .100.
#[test]
fn shrinking_a_pool_under_an_address_in_use_is_held_back_until_it_is_released() {
    let old = || plain("p", "10.0.0.100-10.0.0.200");
    let new = || plain("p", "10.0.0.150-10.0.0.199");
    let mut i = Ipam::default();
    let web = [req("a/web")];
    assert_eq!(pass(&mut i, vec![old()], &web), [ips(&["10.0.0.100"])]);

    let mut now = vec![with_status("a/web", &["10.0.0.100"]), req("a/api")];
    let got = pass(&mut i, vec![new()], &now);
    assert_eq!(got[0], ips(&["10.0.0.100"]), "the held address stays");
    assert_eq!(
        got[1],
        ips(&["10.0.0.150"]),
        "new addresses come from inside the new range"
    );
    let p = i.pools().next().expect("pool");
    assert_eq!(p.state, PoolState::Accepted);
    assert_eq!(p.range, IpRange::parse("10.0.0.100-10.0.0.200").ok());
    let held = p.held.as_ref().expect("edit held back");
    assert_eq!(held.invalid, None);
    assert_eq!(
        held.in_the_way,
        [(ip("10.0.0.100"), vec![ObjectKey::new("a", "web")])]
    );
    // Nor may a request take an address the edit removes.
    let asked = ServiceRequest {
        requested: ips(&["10.0.0.101"]),
        ..req("a/asks")
    };
    assert_eq!(
        i.allocate(&asked, &no_labels()),
        Err(AllocError::Leaving {
            ip: ip("10.0.0.101"),
            pool: "p".into()
        })
    );

    // web goes: the edit applies, api keeps its address.
    now.remove(0);
    now[0].current = ips(&["10.0.0.150"]);
    assert_eq!(pass(&mut i, vec![new()], &now), [ips(&["10.0.0.150"])]);
    let p = i.pools().next().expect("pool");
    assert_eq!(p.range, IpRange::parse("10.0.0.150-10.0.0.199").ok());
    assert_eq!(p.held, None);
}

#[test]
fn growing_a_pool_or_moving_it_with_nothing_in_the_way_applies() {
    let mut i = Ipam::default();
    let web = [req("a/web")];
    assert_eq!(
        pass(&mut i, vec![plain("p", "10.0.0.100-10.0.0.101")], &web),
        [ips(&["10.0.0.100"])]
    );
    let web = [with_status("a/web", &["10.0.0.100"])];
    for (address, kept) in [
        ("10.0.0.0-10.0.0.255", "10.0.0.100"),
        ("10.0.0.100-10.0.0.100", "10.0.0.100"),
    ] {
        assert_eq!(
            pass(&mut i, vec![plain("p", address)], &web),
            [ips(&[kept])]
        );
        let p = i.pools().next().expect("pool");
        assert_eq!(p.range, IpRange::parse(address).ok(), "{address}");
        assert_eq!(p.held, None, "{address}");
    }
    // Moved once nothing is in it.
    assert_eq!(
        pass(&mut i, vec![plain("p", "10.0.9.0-10.0.9.3")], &[]),
        Vec::<Vec<IpAddr>>::new()
    );
    let p = i.pools().next().expect("pool");
    assert_eq!(p.range, IpRange::parse("10.0.9.0-10.0.9.3").ok());
    assert_eq!(p.held, None);
}

#[test]
fn after_a_restart_the_published_range_is_what_an_edit_is_compared_with() {
    let edited = || {
        eip("p", "10.0.0.150-10.0.0.199", |e| {
            e.status = Some(porter_api::EipStatus {
                ready: true,
                first_ip: Some("10.0.0.100".into()),
                last_ip: Some("10.0.0.200".into()),
                ..Default::default()
            })
        })
    };
    let now = [with_status("a/web", &["10.0.0.100"])];
    let mut restarted = Ipam::default();
    assert_eq!(
        pass(&mut restarted, vec![edited()], &now),
        [ips(&["10.0.0.100"])]
    );
    let p = restarted.pools().next().expect("pool");
    assert_eq!(p.range, IpRange::parse("10.0.0.100-10.0.0.200").ok());
    assert!(p.held.is_some());
    // Without a published range the edit is all there is to go by.
    let mut blind = Ipam::default();
    let moved = pass(&mut blind, vec![plain("p", "10.0.0.150-10.0.0.199")], &now);
    assert_eq!(moved, [ips(&["10.0.0.150"])]);
}

#[test]
fn an_unusable_edit_under_addresses_in_use_keeps_the_range_in_force() {
    let now = [with_status("a/web", &["10.0.0.1"])];
    for (edit, why) in [
        ("10.0.0.300", "is not an IP"),
        ("10.0.1.0-10.0.1.255", "overlaps pool `other`"),
    ] {
        let mut i = Ipam::default();
        let pools = |address| {
            vec![
                plain("p", address),
                eip("other", "10.0.1.0-10.0.1.255", |e| {
                    e.metadata.creation_timestamp = Some(Time(
                        k8s_openapi::jiff::Timestamp::from_second(1).expect("ts"),
                    ))
                }),
            ]
        };
        pass(&mut i, pools("10.0.0.0-10.0.0.255"), &now);
        assert_eq!(
            pass(&mut i, pools(edit), &now),
            [ips(&["10.0.0.1"])],
            "{edit}"
        );
        let p = i.pools().find(|p| p.name == "p").expect("pool");
        assert_eq!(p.state, PoolState::Accepted, "{edit}");
        assert_eq!(
            p.range,
            IpRange::parse("10.0.0.0-10.0.0.255").ok(),
            "{edit}"
        );
        let held = p.held.as_ref().expect("held");
        assert!(
            held.invalid.as_ref().is_some_and(|w| w.contains(why)),
            "{edit}: {held:?}"
        );
    }
    // With nothing to protect, an unusable address refuses the pool.
    let mut i = Ipam::default();
    pass(&mut i, vec![plain("p", "10.0.0.0-10.0.0.255")], &[]);
    pass(&mut i, vec![plain("p", "10.0.0.300")], &[]);
    let p = i.pools().next().expect("pool");
    assert!(matches!(p.state, PoolState::Refused(_)));
}

#[test]
fn disabling_a_pool_with_a_shrunk_address_keeps_every_allocation() {
    let now = [with_status("a/web", &["10.0.0.100"])];
    let mut i = Ipam::default();
    pass(&mut i, vec![plain("p", "10.0.0.100-10.0.0.200")], &now);
    let edited = eip("p", "10.0.0.150-10.0.0.199", |e| e.spec.disable = true);
    assert_eq!(pass(&mut i, vec![edited], &now), [ips(&["10.0.0.100"])]);
    let p = i.pools().next().expect("pool");
    assert!(p.disabled && p.held.is_some());
}

/// docs/controller.md: a pool reserved for other namespaces is never used,
/// not even by name. That holds for keeping an address too: a Service that
/// names the pool, or requests the address, in another namespace does not
/// keep what its status shows (say, from before the pool was reserved).
#[test]
fn keeping_an_address_checks_the_pool_namespaces_even_when_named_or_requested() {
    let l = no_labels();
    let reserved = || {
        eip("p", "10.0.0.0-10.0.0.255", |e| {
            e.spec.namespaces = vec!["blue".into()]
        })
    };
    let shown = ips(&["10.0.0.7"]);
    let named = ServiceRequest {
        pool: Some("p".into()),
        current: shown.clone(),
        ..req("red/named")
    };
    let asked = ServiceRequest {
        requested: shown.clone(),
        current: shown.clone(),
        ..req("red/asked")
    };
    let at_home = ServiceRequest {
        pool: Some("p".into()),
        current: ips(&["10.0.0.8"]),
        ..req("blue/named")
    };
    let mut i = ipam(vec![reserved()]);
    for r in [&named, &asked] {
        assert!(!i.keep(r, &r.current, &l), "{}", r.key);
        assert!(
            matches!(i.allocate(r, &l), Err(AllocError::PoolNotAllowed { .. })),
            "{}",
            r.key
        );
    }
    assert!(i.keep(&at_home, &at_home.current, &l));
}

#[test]
fn a_cidr_pool_hands_out_neither_network_nor_broadcast_unless_told() {
    let l = no_labels();
    let fill = |pool: Pool| {
        let mut i = ipam(vec![pool]);
        (0..5)
            .map_while(|n| i.allocate(&req(&format!("a/s{n}")), &l).ok())
            .flatten()
            .collect::<Vec<IpAddr>>()
    };
    assert_eq!(
        fill(plain("p", "10.0.0.0/30")),
        ips(&["10.0.0.1", "10.0.0.2"])
    );
    let routed = eip("p", "10.0.0.0/30", |e| {
        e.spec.include_network_and_broadcast = true
    });
    assert_eq!(
        fill(routed),
        ips(&["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"])
    );
    // Nor may they be requested.
    let mut i = ipam(vec![plain("p", "10.0.0.0/30")]);
    let asked = ServiceRequest {
        requested: ips(&["10.0.0.3"]),
        ..req("a/asks")
    };
    assert_eq!(
        i.allocate(&asked, &l),
        Err(AllocError::NotInPool(ip("10.0.0.3")))
    );
}

/// A Service sharing under `key` on `port`, `Local` or not, selecting `app`.
fn sharer(ns_name: &str, key: &str, port: i32, local: bool, app: Option<&str>) -> ServiceRequest {
    ServiceRequest {
        sharing_key: Some(key.into()),
        sharing_terms: SharingTerms {
            local,
            selector: app
                .map(|a| [("app".to_string(), a.to_string())].into())
                .unwrap_or_default(),
        },
        ports: [("TCP".to_string(), port)].into(),
        ..req(ns_name)
    }
}

#[test]
fn a_sharing_key_joins_services_of_one_namespace_unless_the_pool_allows_more() {
    let l = no_labels();
    let owner = sharer("shop/web", "front", 80, false, Some("web"));
    let same_ns = sharer("shop/api", "front", 8080, false, Some("api"));
    let intruder = sharer("other/steal", "front", 8080, false, Some("x"));
    let scoped = || ipam(vec![plain("p", "10.0.0.0-10.0.0.255")]);

    let mut i = scoped();
    assert_eq!(i.allocate(&owner, &l), Ok(ips(&["10.0.0.0"])));
    assert_eq!(i.allocate(&same_ns, &l), Ok(ips(&["10.0.0.0"])));
    // Another namespace that knows the key is refused, and gets no other
    // address either: its owner asked to share.
    let refused = i.allocate(&intruder, &l);
    assert!(
        matches!(&refused, Err(AllocError::SharingRefused { ip, holders, why })
            if *ip == self::ip("10.0.0.0")
                && holders.contains("shop/web")
                && why.contains("spec.sharing.crossNamespace")),
        "{refused:?}"
    );
    assert_eq!(i.addresses_of(&intruder.key), None);
    // Asking for the address by name is refused the same way.
    let asking = ServiceRequest {
        requested: ips(&["10.0.0.0"]),
        ..intruder.clone()
    };
    assert!(matches!(
        i.allocate(&asking, &l),
        Err(AllocError::SharingRefused { .. })
    ));
    // Nor may it keep the address after a restart, if it had published it.
    assert!(!i.keep(&intruder, &ips(&["10.0.0.0"]), &l));
    assert_eq!(i.used_in("p")[&ip("10.0.0.0")].len(), 2);

    // A pool that allows it lets the namespaces share.
    let mut open = ipam(vec![eip("p", "10.0.0.0-10.0.0.255", |e| {
        e.spec.sharing = Some(porter_api::crd::EipSharing {
            cross_namespace: true,
        });
    })]);
    assert_eq!(open.allocate(&owner, &l), Ok(ips(&["10.0.0.0"])));
    assert_eq!(open.allocate(&intruder, &l), Ok(ips(&["10.0.0.0"])));
}

#[test]
fn services_share_an_address_only_when_every_announced_node_serves_all_of_them() {
    let l = no_labels();
    let v4 = || ipam(vec![plain("p", "10.0.0.0-10.0.0.255")]);
    let v6 = || ipam(vec![plain("p", "2001:db8::-2001:db8::ff")]);
    let v6_req = |r: ServiceRequest| ServiceRequest {
        families: vec![IpFamily::V6],
        ..r
    };
    type Case = (
        &'static str,
        fn() -> Ipam,
        ServiceRequest,
        ServiceRequest,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "Cluster, different selectors: every node forwards both",
            v4,
            sharer("ns/a", "k", 80, false, Some("web")),
            sharer("ns/b", "k", 8080, false, Some("api")),
            true,
        ),
        (
            "Local, the same selector: the same pods, the same nodes",
            v4,
            sharer("ns/a", "k", 80, true, Some("web")),
            sharer("ns/b", "k", 8080, true, Some("web")),
            true,
        ),
        (
            "Local, different selectors: pods on different nodes",
            v4,
            sharer("ns/a", "k", 80, true, Some("web")),
            sharer("ns/b", "k", 8080, true, Some("api")),
            false,
        ),
        (
            "Local without a selector: its endpoints can be anywhere",
            v4,
            sharer("ns/a", "k", 80, true, None),
            sharer("ns/b", "k", 8080, true, None),
            false,
        ),
        (
            "Local and Cluster",
            v4,
            sharer("ns/a", "k", 80, false, Some("web")),
            sharer("ns/b", "k", 8080, true, Some("web")),
            false,
        ),
        (
            "Cluster on IPv6 is forwarded too: different selectors share",
            v6,
            v6_req(sharer("ns/a", "k", 80, false, Some("web"))),
            v6_req(sharer("ns/b", "k", 8080, false, Some("api"))),
            true,
        ),
        (
            "Cluster on IPv6, the same selector",
            v6,
            v6_req(sharer("ns/a", "k", 80, false, Some("web"))),
            v6_req(sharer("ns/b", "k", 8080, false, Some("web"))),
            true,
        ),
    ];
    for (name, pools, first, second, shares) in cases {
        let mut i = pools();
        let got = i.allocate(&first, &l).expect(name);
        let outcome = i.allocate(&second, &l);
        if shares {
            assert_eq!(outcome, Ok(got), "{name}");
        } else {
            assert!(
                matches!(&outcome, Err(AllocError::SharingRefused { why, .. }) if why.contains("externalTrafficPolicy")),
                "{name}: {outcome:?}"
            );
            assert_eq!(i.addresses_of(&second.key), None, "{name}");
        }
    }
}

#[test]
fn of_two_incompatible_services_publishing_one_address_the_older_keeps_it() {
    // Shared before this rule existed: the older keeps the address, the
    // younger is refused (and told why) rather than left half served.
    let older = ServiceRequest {
        current: ips(&["10.0.0.0"]),
        ..sharer("ns/web", "k", 80, true, Some("web"))
    };
    let younger = ServiceRequest {
        current: ips(&["10.0.0.0"]),
        ..sharer("ns/api", "k", 8080, true, Some("api"))
    };
    let mut i = Ipam::default();
    let got = pass(
        &mut i,
        vec![plain("p", "10.0.0.0-10.0.0.255")],
        &[older, younger.clone()],
    );
    assert_eq!(got, [ips(&["10.0.0.0"]), vec![]]);
    assert!(matches!(
        i.allocate(&younger, &no_labels()),
        Err(AllocError::SharingRefused { .. })
    ));
}

fn layer2(name: &str, address: &str) -> Pool {
    eip(name, address, |e| {
        e.spec.protocol = Some("layer2".into());
    })
}

fn nodes(list: &[(&str, &str)]) -> NodeAddresses {
    list.iter()
        .map(|(ip, node)| (self::ip(ip), node.to_string()))
        .collect()
}

#[test]
fn a_layer2_pool_that_contains_a_node_address_is_refused() {
    let mut i = Ipam::default();
    i.set_node_addresses(nodes(&[("10.0.0.11", "n1"), ("10.0.1.5", "n2")]));
    i.set_pools(
        vec![
            layer2("l2-bad", "10.0.0.0/24"),
            layer2("l2-good", "10.0.2.0/24"),
            // BGP pools are routed, never answered for on a segment.
            plain("bgp", "10.0.1.0/24"),
        ],
        &[],
    );
    let state = |name: &str| {
        i.pools()
            .find(|p| p.name == name)
            .map(|p| p.state.clone())
            .expect("pool")
    };
    assert!(
        matches!(state("l2-bad"), PoolState::Refused(why)
            if why.contains("10.0.0.11") && why.contains("`n1`")),
        "{:?}",
        state("l2-bad")
    );
    assert_eq!(state("l2-good"), PoolState::Accepted);
    assert_eq!(state("bgp"), PoolState::Accepted);
    let asking = ServiceRequest {
        requested: ips(&["10.0.0.11"]),
        ..req("ns/s")
    };
    assert_eq!(
        i.allocate(&asking, &no_labels()),
        Err(AllocError::NotInPool(ip("10.0.0.11")))
    );
}

#[test]
fn a_node_that_joins_inside_a_layer2_pool_in_use_stops_new_allocations_only() {
    let pools = || vec![layer2("l2", "10.0.0.0-10.0.0.15")];
    let mut i = Ipam::default();
    let web = req("ns/web");
    i.set_pools(pools(), &[]);
    assert_eq!(i.allocate(&web, &no_labels()), Ok(ips(&["10.0.0.0"])));
    i.set_node_addresses(nodes(&[("10.0.0.9", "n3")]));
    i.set_pools(pools(), &[]);
    // Refusing the pool outright would take its Services' addresses: it
    // stays in force, says why, and hands out nothing new.
    assert_eq!(i.addresses_of(&web.key), Some(&ips(&["10.0.0.0"])[..]));
    let pool = i.pools().next().expect("pool");
    let held = pool.held.as_ref().expect("held");
    assert!(
        held.invalid
            .as_deref()
            .is_some_and(|w| w.contains("10.0.0.9")),
        "{held:?}"
    );
    assert_eq!(pool.offered(), None);
    assert!(matches!(
        i.allocate(&req("ns/new"), &no_labels()),
        Err(AllocError::Exhausted { .. } | AllocError::NoPool(_))
    ));
    // Once the Service goes, the pool is refused outright.
    i.release(&web.key);
    i.set_pools(pools(), &[]);
    assert!(matches!(
        i.pools().next().map(|p| &p.state),
        Some(PoolState::Refused(_))
    ));
}

/// Every reason explain gives for a Service's pool, each from the rule that
/// made the choice.
#[test]
fn pool_choice_says_which_rule_chose_the_pool() {
    let default = |e: &mut Eip| {
        e.metadata.annotations = Some(
            [(
                "eip.porter.kubesphere.io/is-default-eip".to_string(),
                "true".to_string(),
            )]
            .into(),
        )
    };
    let pools = vec![
        eip("open", "10.0.1.0-10.0.1.255", |e| e.spec.priority = 3),
        eip("default", "10.0.3.0-10.0.3.255", default),
        eip("team-b", "10.0.4.0-10.0.4.255", |e| {
            e.spec.namespaces = vec!["b".into()];
            e.spec.priority = 2
        }),
    ];
    let mut i = ipam(pools);
    let labels = no_labels();
    let shared = |name: &str, port: i32| ServiceRequest {
        sharing_key: Some("k".into()),
        ports: [("TCP".to_string(), port)].into(),
        ..req(name)
    };
    let cases: Vec<(ServiceRequest, PoolChoice)> = vec![
        (req("b/s"), PoolChoice::Reserved { priority: 2 }),
        (req("x/s"), PoolChoice::Default),
        (
            ServiceRequest {
                pool: Some("open".into()),
                ..req("x/named")
            },
            PoolChoice::Named,
        ),
        (
            ServiceRequest {
                requested: ips(&["10.0.1.9"]),
                ..req("x/asked")
            },
            PoolChoice::Requested,
        ),
        (shared("x/first", 80), PoolChoice::Default),
        (
            shared("x/second", 81),
            PoolChoice::Shared {
                key: "k".into(),
                with: vec![ObjectKey::new("x", "first")],
            },
        ),
    ];
    for (r, want) in cases {
        let got = i.allocate(&r, &labels).expect("allocated");
        let (pool, choice) = i.pool_choice(&r, got[0]).expect("held");
        assert_eq!(choice, want, "{}", r.key);
        assert_eq!(i.pool_of(got[0]), Some(pool.name.as_str()));
    }
    // Without a default pool, an open one, by priority.
    let mut i = ipam(vec![eip("open", "10.0.1.0-10.0.1.255", |e| {
        e.spec.priority = 3
    })]);
    let got = i.allocate(&req("x/s"), &labels).expect("allocated");
    assert_eq!(
        i.pool_choice(&req("x/s"), got[0]).map(|(_, c)| c),
        Some(PoolChoice::Open { priority: 3 })
    );
}

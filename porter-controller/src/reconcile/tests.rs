use super::*;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use porter_api::Eip;
use porter_api::service::ingress_status;
use porter_api::testing::{load_balancer_on_80, service_in};

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
}

/// A reconciler that leads: it hands out addresses.
fn leader() -> Reconciler {
    let mut r = Reconciler::default();
    r.set_leading(true);
    r
}

fn svc(name: &str, annotations: &[(&str, &str)]) -> Service {
    service_in("default", name, annotations, load_balancer_on_80())
}

fn porter_svc(name: &str) -> Service {
    svc(name, &[("lb.kubesphere.io/v1alpha1", "porter")])
}

fn pool(name: &str, address: &str) -> Eip {
    let mut pool = crate::testing::eip(name, address);
    pool.metadata.generation = Some(1);
    pool
}

fn node(name: &str, ip: &str) -> Node {
    crate::testing::node(name, "True", &[ip])
}

fn slice(service: &str, nodes: &[&str]) -> EndpointSlice {
    let eps: Vec<(&str, Option<bool>)> = nodes.iter().map(|n| (*n, Some(true))).collect();
    crate::testing::slice("default", service, &eps)
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

/// What the API server would hold after the plan's writes.
fn settle(snap: &Snapshot, plan: &Plan) -> Snapshot {
    Arc::unwrap_or_clone(crate::testing::after_writes(Arc::new(snap.clone()), plan))
}

/// The one Event of the plan with this reason.
fn only_event<'a>(plan: &'a Plan, reason: &str) -> &'a Event {
    let found: Vec<&Event> = plan.events.iter().filter(|e| e.reason == reason).collect();
    assert_eq!(found.len(), 1, "{reason} in {:?}", plan.events);
    found[0]
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn ingress_of(snap: &Snapshot, name: &str) -> Vec<String> {
    snap.services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip)
        .collect()
}

fn seed() -> Snapshot {
    Snapshot {
        services: vec![Arc::new(porter_svc("web")), Arc::new(svc("other", &[]))],
        endpoint_slices: vec![Arc::new(slice("web", &["n1", "n2"]))],
        nodes: vec![
            Arc::new(node("n1", "192.168.1.1")),
            Arc::new(node("n2", "192.168.1.2")),
        ],
        eips: vec![Arc::new(pool(
            "eip-sample-pool",
            "192.168.0.100-192.168.0.101",
        ))],
        ..Default::default()
    }
}

#[test]
fn allocates_publishes_announces_then_stays_quiet() {
    let mut r = leader();
    let snap = seed();
    let plan = r.plan(&snap, &now());
    assert_eq!(*plan.finalizers, [(key("web"), true)]);
    assert_eq!(
        *plan.ingress,
        [(key("web"), vec!["192.168.0.100".parse().expect("ip")])]
    );
    assert_eq!(reasons(&plan), [REASON_ALLOCATED, REASON_ANNOUNCED]);
    assert_eq!(plan.allocated, 1);
    let hops: Vec<String> = plan
        .paths
        .values()
        .flat_map(|hops| hops.keys())
        .map(|h| h.to_string())
        .collect();
    assert_eq!(hops, ["192.168.1.1", "192.168.1.2"]);
    let (_, st) = &plan.eip_status[0];
    assert_eq!(
        (st.usage, st.pool_size, st.ready, st.v4, st.occupied),
        (1, 2, true, true, false)
    );
    assert_eq!(
        st.used.get("192.168.0.100").map(String::as_str),
        Some("default/web")
    );

    let settled = settle(&snap, &plan);
    let again = r.plan(&settled, &now());
    assert!(
        again.ingress.is_empty() && again.finalizers.is_empty() && again.eip_status.is_empty(),
        "{again:?}"
    );
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(again.paths, plan.paths);
}

#[test]
fn a_restarted_controller_keeps_every_address() {
    let mut first = leader();
    let mut snap = seed();
    snap.services
        .insert(0, Arc::new(porter_svc("zz-older-name")));
    let plan = first.plan(&snap, &now());
    let settled = settle(&snap, &plan);
    let before: Vec<_> = ["web", "zz-older-name"]
        .iter()
        .map(|n| ingress_of(&settled, n))
        .collect();

    // New process, Services listed in another order, plus a newcomer.
    let mut restarted = leader();
    let mut shuffled = settled.clone();
    shuffled.services.reverse();
    shuffled.eips = vec![Arc::new(pool(
        "eip-sample-pool",
        "192.168.0.100-192.168.0.102",
    ))];
    shuffled.services.push(Arc::new(porter_svc("newcomer")));
    let plan = restarted.plan(&shuffled, &now());
    assert_eq!(
        *plan.ingress,
        [(key("newcomer"), vec!["192.168.0.102".parse().expect("ip")])]
    );
    let after: Vec<_> = ["web", "zz-older-name"]
        .iter()
        .map(|n| ingress_of(&settle(&shuffled, &plan), n))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn deletion_releases_withdraws_and_lets_the_object_go() {
    let mut r = leader();
    let snap = seed();
    let snap = settle(&snap, &r.plan(&snap, &now()));
    let mut deleting = snap.clone();
    deleting.services = snap
        .services
        .iter()
        .map(|s| {
            let mut s = (**s).clone();
            if s.metadata.name.as_deref() == Some("web") {
                s.metadata.deletion_timestamp = Some(now());
            }
            Arc::new(s)
        })
        .collect();
    let plan = r.plan(&deleting, &now());
    assert_eq!(*plan.finalizers, [(key("web"), false)]);
    assert!(plan.paths.is_empty(), "route withdrawn");
    assert!(
        reasons(&plan).is_empty(),
        "the Service is going away: nothing to tell it"
    );
    assert_eq!(plan.eip_status[0].1.usage, 0);
    let gone = settle(&deleting, &plan);
    assert!(
        gone.services
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some("web"))
    );
}

#[test]
fn opting_out_or_changing_type_clears_what_was_written() {
    for change in ["opt-out", "type"] {
        let mut r = leader();
        let snap = seed();
        let snap = settle(&snap, &r.plan(&snap, &now()));
        let mut changed = snap.clone();
        changed.services = snap
            .services
            .iter()
            .map(|s| {
                let mut s = (**s).clone();
                if s.metadata.name.as_deref() == Some("web") {
                    match change {
                        "opt-out" => s.metadata.annotations = None,
                        _ => s.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into()),
                    }
                }
                Arc::new(s)
            })
            .collect();
        let plan = r.plan(&changed, &now());
        assert_eq!(*plan.ingress, [(key("web"), vec![])], "{change}");
        assert_eq!(*plan.finalizers, [(key("web"), false)], "{change}");
        assert!(plan.paths.is_empty(), "{change}");
    }
}

#[test]
fn exhaustion_is_reported_once_and_retried_when_space_frees() {
    let mut r = leader();
    let mut snap = seed();
    snap.eips = vec![Arc::new(pool("tiny", "192.168.0.100"))];
    let mut second = porter_svc("second");
    // Created after `web`, so it is the one left out.
    second.metadata.creation_timestamp = Some(now());
    let mut web = porter_svc("web");
    web.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1).expect("ts"),
    ));
    snap.services = vec![Arc::new(second), Arc::new(web)];
    let plan = r.plan(&snap, &now());
    let failed: Vec<_> = plan
        .events
        .iter()
        .filter(|e| e.reason == REASON_FAILED)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].regarding, Regarding::Service(key("second")));
    assert!(
        failed[0]
            .message
            .contains("no free IPv4 address in pool(s) tiny"),
        "{}",
        failed[0].message
    );
    assert_eq!(plan.failures, ["exhausted"]);
    let snap = settle(&snap, &plan);
    let plan = r.plan(&snap, &now());
    assert!(
        plan.events.iter().all(|e| e.reason != REASON_FAILED),
        "not repeated"
    );

    let mut freed = snap.clone();
    freed
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("web"));
    let plan = r.plan(&freed, &now());
    assert_eq!(
        *plan.ingress,
        [(key("second"), vec!["192.168.0.100".parse().expect("ip")])]
    );
}

#[test]
fn other_load_balancers_are_left_alone() {
    let mut r = leader();
    let mut snap = seed();
    let mut foreign = svc("metallb", &[]);
    foreign.spec.as_mut().expect("spec").load_balancer_class = Some("metallb.io/metallb".into());
    foreign.status = Some(ingress_status(&["192.168.0.100".parse().expect("ip")]));
    snap.services.push(Arc::new(foreign));
    let plan = r.plan(&snap, &now());
    let touched: BTreeSet<String> = plan
        .ingress
        .iter()
        .map(|(k, _)| k.name.to_string())
        .chain(plan.finalizers.iter().map(|(k, _)| k.name.to_string()))
        .collect();
    assert_eq!(touched, BTreeSet::from(["web".to_string()]));
}

#[test]
fn overlapping_pool_shows_a_refused_condition() {
    let mut r = leader();
    let mut snap = seed();
    snap.eips.push(Arc::new(pool("z-overlap", "192.168.0.101")));
    let plan = r.plan(&snap, &now());
    let (_, st) = plan
        .eip_status
        .iter()
        .find(|(n, _)| n == "z-overlap")
        .expect("status");
    assert!(!st.ready);
    assert_eq!(st.conditions[0].reason, "Refused");
    assert!(
        st.conditions[0]
            .message
            .contains("overlaps pool `eip-sample-pool`")
    );
    // Besides the condition, a Warning Event on the Eip, once.
    let refused = only_event(&plan, REASON_POOL_REFUSED);
    assert_eq!(refused.type_, EventType::Warning);
    assert_eq!(refused.regarding, Regarding::Eip("z-overlap".into()));
    assert_eq!(refused.message, st.conditions[0].message);
    let again = r.plan(&settle(&snap, &plan), &now());
    assert!(
        again.events.iter().all(|e| e.reason != REASON_POOL_REFUSED),
        "{:?}",
        again.events
    );
}

#[test]
fn the_ready_condition_of_a_full_or_disabled_pool_says_so() {
    let mut r = leader();
    let mut snap = seed();
    let ready = |plan: &Plan| {
        let (_, st) = &plan.eip_status[0];
        let c = &st.conditions[0];
        (st.ready, c.reason.clone(), c.message.clone())
    };
    let plan = r.plan(&snap, &now());
    assert_eq!(ready(&plan).1, "Accepted");
    snap = settle(&snap, &plan);
    snap.services.push(Arc::new(porter_svc("second")));
    let plan = r.plan(&snap, &now());
    assert_eq!(
        ready(&plan),
        (
            true,
            "Exhausted".into(),
            "every address is in use (2 of 2); Services without one wait until one is released"
                .into()
        )
    );
    snap = settle(&snap, &plan);
    let mut e = (*snap.eips[0]).clone();
    e.spec.disable = true;
    snap.eips = vec![Arc::new(e)];
    let plan = r.plan(&snap, &now());
    assert_eq!(
        ready(&plan),
        (
            true,
            "Disabled".into(),
            "spec.disable is set: no new addresses are handed out; the 2 in use stay".into()
        )
    );
}

#[tokio::test]
async fn apply_adds_the_finalizer_before_publishing_the_address() {
    let mut r = leader();
    let plan = r.plan(&seed(), &now());
    let log = crate::testing::RecordingWriter::default();
    assert!(apply(&plan, &log).await.is_empty());
    let calls = log.calls();
    assert_eq!(calls[0], "finalizer default/web true");
    assert_eq!(calls[1], "ingress default/web [192.168.0.100]");
    assert_eq!(
        &calls[2..],
        [
            "eip eip-sample-pool",
            "event IPAllocated",
            "event Announced"
        ]
    );
}

#[test]
fn an_endpoint_change_alone_moves_the_route_and_nothing_else() {
    let mut r = leader();
    let snap = seed();
    let snap = settle(&snap, &r.plan(&snap, &now()));
    assert!(r.plan(&snap, &now()).ingress.is_empty());
    let mut moved = snap.clone();
    moved.endpoint_slices = vec![Arc::new(slice("web", &["n2"]))];
    let plan = r.plan(&moved, &now());
    let hops: Vec<String> = plan
        .paths
        .values()
        .flat_map(|hops| hops.keys())
        .map(|h| h.to_string())
        .collect();
    assert_eq!(hops, ["192.168.1.2"]);
    assert_eq!(reasons(&plan), [REASON_ANNOUNCED]);
    assert!(
        plan.events[0]
            .message
            .ends_with("next hop(s) 192.168.1.2 (1 endpoint(s)); not through n1 (NoReadyEndpoint)"),
        "the Event names each next hop's weight, and the node that went and why: {}",
        plan.events[0].message
    );
    assert!(plan.ingress.is_empty() && plan.finalizers.is_empty() && plan.eip_status.is_empty());
}

/// The Announced Event names the nodes with endpoints that are left out,
/// and those whose path went with their last endpoint, by the reason word
/// explain gives, and only when the paths change.
#[test]
fn announced_events_say_in_a_word_why_a_node_with_endpoints_is_left_out() {
    let mut r = leader();
    let snap = seed();
    let snap = settle(&snap, &r.plan(&snap, &now()));
    let mut n2_down = snap.clone();
    n2_down.nodes = vec![
        Arc::new(node("n1", "192.168.1.1")),
        Arc::new(crate::testing::node("n2", "False", &["192.168.1.2"])),
    ];
    let plan = r.plan(&n2_down, &now());
    assert_eq!(
        only_event(&plan, REASON_ANNOUNCED).message,
        "192.168.0.100 announced with next hop(s) 192.168.1.1 (1 endpoint(s)); not through n2 (NotReady)"
    );
    assert!(
        !reasons(&r.plan(&n2_down, &now())).contains(&REASON_ANNOUNCED),
        "no change, no Event"
    );
    r.set_withdrawn(["n1".to_string()].into());
    assert_eq!(
        only_event(&r.plan(&n2_down, &now()), REASON_ANNOUNCED).message,
        "192.168.0.100 withdrawn; not through n1 (LivenessWithdrawn), n2 (NotReady)"
    );
    let mut r = leader();
    let snap = settle(&snap, &r.plan(&snap, &now()));
    let mut idle = snap.clone();
    idle.endpoint_slices = vec![Arc::new(slice("web", &[]))];
    assert_eq!(
        only_event(&r.plan(&idle, &now()), REASON_ANNOUNCED).message,
        "192.168.0.100 withdrawn; not through n1 (NoReadyEndpoint), n2 (NoReadyEndpoint)"
    );
    // Gone from the Event once said: they have no endpoint to leave out.
    let mut back = idle.clone();
    back.endpoint_slices = vec![Arc::new(slice("web", &["n2"]))];
    assert_eq!(
        only_event(&r.plan(&back, &now()), REASON_ANNOUNCED).message,
        "192.168.0.100 announced with next hop(s) 192.168.1.2 (1 endpoint(s))"
    );
}

fn layer2_seed() -> Snapshot {
    let mut snap = seed();
    let mut lan = pool("lan", "192.168.0.100-192.168.0.101");
    lan.spec.protocol = Some("layer2".into());
    snap.eips = vec![Arc::new(lan)];
    snap
}

fn with_holder(snap: &Snapshot, holder: Option<&str>) -> Snapshot {
    let ip: IpAddr = "192.168.0.100".parse().expect("ip");
    Snapshot {
        layer2_holders: Arc::new(holder.map(|h| (ip, h.to_owned())).into_iter().collect()),
        ..snap.clone()
    }
}

fn layer2_events(plan: &Plan) -> Vec<(EventType, String)> {
    plan.events
        .iter()
        .filter(|e| e.reason == crate::layer2_status::REASON_LAYER2)
        .inspect(|e| assert_eq!(e.regarding, Regarding::Service(key("web"))))
        .map(|e| (e.type_, e.message.clone()))
        .collect()
}

fn announcers(plan: &Plan) -> Vec<(String, String, Time)> {
    plan.eip_status
        .iter()
        .flat_map(|(_, st)| &st.layer2_announcers)
        .map(|a| (a.address.clone(), a.node.clone(), a.since.clone()))
        .collect()
}

fn later() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).expect("ts"))
}

#[test]
fn the_eip_status_names_the_node_announcing_each_layer2_address_and_a_change_is_an_event() {
    let mut r = leader();
    let snap = with_holder(&layer2_seed(), Some("n1"));
    let plan = r.plan(&snap, &now());
    assert_eq!(
        announcers(&plan),
        [("192.168.0.100".into(), "n1".into(), now())]
    );
    assert_eq!(plan.eip_status[0].1.layer2_nodes, "n1");
    assert_eq!(plan.layer2_unanswered, 0);
    assert_eq!(
        layer2_events(&plan),
        [(
            EventType::Normal,
            "node n1 now answers ARP for 192.168.0.100".into()
        )]
    );
    let settled = settle(&snap, &plan);
    let again = r.plan(&settled, &later());
    assert!(
        again.eip_status.is_empty() && again.events.is_empty(),
        "{again:?}"
    );

    // Failover: only the announcers change; the rest of the status stays.
    let failed_over = with_holder(&settled, Some("n2"));
    let plan = r.plan(&failed_over, &later());
    assert_eq!(
        announcers(&plan),
        [("192.168.0.100".into(), "n2".into(), later())]
    );
    assert_eq!(plan.eip_status[0].1.usage, 1);
    assert_eq!(
        layer2_events(&plan),
        [(
            EventType::Normal,
            "node n2 now answers ARP for 192.168.0.100".into()
        )]
    );
    let settled = settle(&failed_over, &plan);
    assert!(r.plan(&settled, &later()).events.is_empty());

    // Nobody left: the entry goes, with a warning.
    let dark = with_holder(&settled, None);
    let plan = r.plan(&dark, &later());
    assert_eq!(plan.eip_status.len(), 1);
    assert!(announcers(&plan).is_empty());
    assert_eq!(plan.eip_status[0].1.layer2_nodes, "");
    assert_eq!(layer2_events(&plan).len(), 1);
    assert_eq!(layer2_events(&plan)[0].0, EventType::Warning);
    // ... and the metric behind the PorterLayer2AddressUnanswered alert counts it.
    assert_eq!(plan.layer2_unanswered, 1);
    assert_eq!(r.plan(&dark, &later()).layer2_unanswered, 1);
}

#[test]
fn a_new_leader_does_not_repeat_what_the_status_already_says() {
    let mut first = leader();
    let snap = with_holder(&layer2_seed(), Some("n1"));
    let plan = first.plan(&snap, &now());
    let settled = settle(&snap, &plan);
    let mut second = leader();
    let plan = second.plan(&settled, &later());
    assert!(layer2_events(&plan).is_empty(), "{:?}", plan.events);
    // `since` is when n1 started, not when this replica looked.
    assert!(
        plan.eip_status
            .iter()
            .all(|(_, st)| st.layer2_announcers[0].since == now())
    );
}

#[test]
fn bgp_pools_name_no_announcer() {
    let mut r = leader();
    let snap = with_holder(&seed(), Some("n1"));
    let plan = r.plan(&snap, &now());
    assert!(announcers(&plan).is_empty());
    assert!(layer2_events(&plan).is_empty());
}

#[test]
fn unreadable_pool_policy_sets_a_condition_and_the_pool_keeps_working() {
    let mut r = leader();
    let mut snap = seed();
    let mut eip = (*snap.eips[0]).clone();
    eip.spec.bgp = Some(porter_api::crd::EipBgp {
        communities: vec!["65000:1".into(), "65000:99999".into()],
        ..Default::default()
    });
    snap.eips = vec![Arc::new(eip)];
    let plan = r.plan(&snap, &now());
    let (_, status) = &plan.eip_status[0];
    assert!(status.ready, "the pool still allocates");
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "BgpPolicyInvalid")
        .expect("BgpPolicyInvalid condition");
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains("spec.bgp.communities[1]"),
        "{}",
        condition.message
    );
    let hops = plan.paths.values().next().expect("still announced");
    assert!(
        hops.values().all(|a| a.communities == [65000 << 16 | 1]),
        "the readable community applies"
    );

    // Fixed: the condition goes.
    let snap = settle(&snap, &plan);
    let mut fixed = snap.clone();
    let mut eip = (*fixed.eips[0]).clone();
    eip.spec.bgp = None;
    fixed.eips = vec![Arc::new(eip)];
    let plan = r.plan(&fixed, &now());
    let (_, status) = &plan.eip_status[0];
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != "BgpPolicyInvalid")
    );
}

/// Passes come faster than the watch shows what was written: a replayed
/// plan (woken by a BGP session change) and a pass that sees the finalizer
/// but not yet the address both used to repeat IPAllocated, three identical
/// Events in a Service's first second. One is sent per address change.
#[test]
fn ip_allocated_is_reported_once_per_address_until_it_changes() {
    let mut r = leader();
    let snap = seed();
    let allocated = |plan: &Plan| {
        plan.events
            .iter()
            .filter(|e| e.reason == REASON_ALLOCATED)
            .count()
    };
    let first = r.plan(&snap, &now());
    assert_eq!(allocated(&first), 1);
    let replayed = r.plan(&snap, &now());
    assert_eq!(*replayed.ingress, *first.ingress, "the write is retried");
    assert_eq!(allocated(&replayed), 0, "{:?}", replayed.events);
    // The finalizer is back from the API server, the address not yet.
    let mut half = snap.clone();
    half.services[0] = {
        let mut s = (*snap.services[0]).clone();
        s.metadata.finalizers = Some(vec![SERVICE_FINALIZER.into()]);
        Arc::new(s)
    };
    let half_settled = r.plan(&half, &now());
    assert!(
        !half_settled.ingress.is_empty(),
        "the address is still to publish"
    );
    assert_eq!(allocated(&half_settled), 0, "{:?}", half_settled.events);
    // A new leader reports afresh.
    r.set_leading(true);
    assert_eq!(allocated(&r.plan(&half, &now())), 1);
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn with_pool(snap: &Snapshot, address: &str) -> Snapshot {
    let mut out = snap.clone();
    out.eips = snap
        .eips
        .iter()
        .map(|e| {
            let mut e = (**e).clone();
            e.spec.address = address.into();
            e.metadata.generation = e.metadata.generation.map(|g| g + 1);
            Arc::new(e)
        })
        .collect();
    out
}

fn without(snap: &Snapshot, name: &str) -> Snapshot {
    let mut out = snap.clone();
    out.services
        .retain(|s| s.metadata.name.as_deref() != Some(name));
    out
}

/// `seed()` with web published at `address` by some leader.
fn published_web(address: &str) -> Snapshot {
    let mut snap = seed();
    snap.services = vec![Arc::new(crate::testing::published(
        porter_svc("web"),
        address,
    ))];
    snap
}

fn pending_condition(st: &EipStatus) -> Option<&Condition> {
    st.conditions
        .iter()
        .find(|c| c.type_ == CONDITION_CHANGE_PENDING)
}

/// The example: pool .100-.200 with a Service at .100, edited to
/// .150-.199. The Service keeps .100; the Eip says why the edit waits, in
/// a condition and a Warning Event naming the Service; a newcomer gets an
/// address inside the new range; once the Service is gone the edit applies.
#[test]
fn shrinking_a_pool_under_a_service_is_refused_until_the_service_goes() {
    let mut r = leader();
    let mut snap = seed();
    snap.eips = vec![Arc::new(pool(
        "eip-sample-pool",
        "192.168.0.100-192.168.0.200",
    ))];
    let snap = settle(&snap, &r.plan(&snap, &now()));
    assert_eq!(ingress_of(&snap, "web"), ["192.168.0.100"]);

    let mut edited = with_pool(&snap, "192.168.0.150-192.168.0.199");
    edited.services.push(Arc::new(porter_svc("newcomer")));
    let plan = r.plan(&edited, &now());
    assert_eq!(
        *plan.ingress,
        [(key("newcomer"), vec![ip("192.168.0.150")])],
        "web is not moved"
    );
    let refused = only_event(&plan, REASON_CHANGE_REFUSED);
    assert_eq!(refused.type_, EventType::Warning);
    assert_eq!(refused.regarding, Regarding::Eip("eip-sample-pool".into()));
    for part in [
        "`192.168.0.150-192.168.0.199` is not applied",
        "192.168.0.100 (default/web)",
        "keeps 192.168.0.100-192.168.0.200",
    ] {
        assert!(refused.message.contains(part), "{}", refused.message);
    }
    let (_, st) = &plan.eip_status[0];
    assert_eq!(
        (st.first_ip.as_deref(), st.last_ip.as_deref(), st.ready),
        (Some("192.168.0.100"), Some("192.168.0.200"), true)
    );
    let pending = pending_condition(st).expect("AddressChangePending");
    assert_eq!(
        (pending.status.as_str(), pending.reason.as_str()),
        ("True", "AddressesInUse")
    );
    assert_eq!(pending.message, refused.message);

    // Said once; a controller that starts now reads the range in force
    // back from the status and keeps refusing.
    let edited = settle(&edited, &plan);
    let again = r.plan(&edited, &now());
    assert!(again.events.is_empty(), "{:?}", again.events);
    let mut restarted = leader();
    let plan = restarted.plan(&edited, &now());
    assert!(plan.ingress.is_empty(), "{:?}", plan.ingress);
    assert_eq!(
        restarted.ipam().addresses_of(&key("web")),
        Some(&[ip("192.168.0.100")][..])
    );

    // web goes: the edit applies, the newcomer keeps its address.
    let gone = without(&edited, "web");
    let plan = r.plan(&gone, &now());
    assert!(plan.ingress.is_empty(), "{:?}", plan.ingress);
    assert_eq!(
        only_event(&plan, REASON_CHANGE_APPLIED).type_,
        EventType::Normal
    );
    let (_, st) = &plan.eip_status[0];
    assert_eq!(
        (st.first_ip.as_deref(), st.last_ip.as_deref()),
        (Some("192.168.0.150"), Some("192.168.0.199"))
    );
    assert!(pending_condition(st).is_none(), "{:?}", st.conditions);
}

#[test]
fn growing_a_pool_or_disabling_it_keeps_every_address_and_says_nothing() {
    let mut r = leader();
    let snap = seed();
    let snap = settle(&snap, &r.plan(&snap, &now()));
    for (address, disable, first) in [
        ("192.168.0.0/24", false, "192.168.0.1"),
        ("192.168.0.100", true, "192.168.0.100"),
    ] {
        let mut edited = with_pool(&snap, address);
        let mut e = (*edited.eips[0]).clone();
        e.spec.disable = disable;
        edited.eips = vec![Arc::new(e)];
        let plan = r.plan(&edited, &now());
        assert!(plan.ingress.is_empty(), "{address}: {:?}", plan.ingress);
        assert!(
            plan.events.iter().all(|e| e.type_ == EventType::Normal),
            "{address}: {:?}",
            plan.events
        );
        let (_, st) = &plan.eip_status[0];
        assert!(pending_condition(st).is_none(), "{address}");
        assert_eq!(st.first_ip.as_deref(), Some(first));
    }
}

/// A follower computes but hands out nothing of its own: once it leads,
/// it writes what is published, not what it would have chosen.
#[test]
fn a_follower_keeps_nothing_of_its_own_into_leadership() {
    let mut follower = Reconciler::default();
    let snap = seed();
    let plan = follower.plan(&snap, &now());
    assert!(plan.ingress.is_empty() && plan.allocated == 0, "{plan:?}");
    assert_eq!(follower.ipam().addresses_of(&key("web")), None);

    // The leader of the time published .101 for web.
    let mut published = published_web("192.168.0.101");
    published.services.push(Arc::new(porter_svc("api")));
    follower.plan(&published, &now());
    follower.set_leading(true);
    let plan = follower.plan(&published, &now());
    assert_eq!(
        *plan.ingress,
        [(key("api"), vec![ip("192.168.0.100")])],
        "web keeps its published address; api gets the one left"
    );
}

/// A Service whose status write was lost still shows in its pool's
/// `status.used`: a new leader gives it that address again.
#[test]
fn a_new_leader_adopts_what_a_pool_status_shows_for_a_service_without_status() {
    let mut old = leader();
    let mut snap = seed();
    snap.services.insert(0, Arc::new(porter_svc("first")));
    let plan = old.plan(&snap, &now());
    assert_eq!(plan.ingress[1], (key("web"), vec![ip("192.168.0.101")]));
    // Everything but web's status reached the API server, and `first` was
    // deleted since: the lowest free address is no longer web's.
    let mut lost = settle(&snap, &plan);
    let mut web = (*lost.services[1]).clone();
    web.status = None;
    lost.services[1] = Arc::new(web);
    lost.services.remove(0);

    let plan = leader().plan(&lost, &now());
    assert_eq!(*plan.ingress, [(key("web"), vec![ip("192.168.0.101")])]);
}

/// A pool written as a CIDR by an earlier version handed out its network
/// address. Now the CIDR leaves it out, but the Service there keeps it: the
/// change is held back like an edit, and the message says what to set.
#[test]
fn a_service_on_a_network_address_keeps_it_and_is_told_how_to_keep_the_pool_whole() {
    let mut snap = published_web("192.168.0.0");
    let mut e = pool("eip-sample-pool", "192.168.0.0/30");
    e.status = Some(EipStatus {
        ready: true,
        first_ip: Some("192.168.0.0".into()),
        last_ip: Some("192.168.0.3".into()),
        ..Default::default()
    });
    snap.eips = vec![Arc::new(e)];
    let plan = leader().plan(&snap, &now());
    assert!(plan.ingress.is_empty(), "{:?}", plan.ingress);
    let (_, st) = &plan.eip_status[0];
    let pending = pending_condition(st).expect("AddressChangePending");
    assert!(
        pending.message.contains("spec.includeNetworkAndBroadcast"),
        "{}",
        pending.message
    );

    // With the field set, the pool is whole again and nothing waits.
    let mut e = (*snap.eips[0]).clone();
    e.spec.include_network_and_broadcast = true;
    snap.eips = vec![Arc::new(e)];
    let plan = leader().plan(&snap, &now());
    assert!(plan.ingress.is_empty(), "{:?}", plan.ingress);
    let (_, st) = &plan.eip_status[0];
    assert!(pending_condition(st).is_none(), "{:?}", st.conditions);
}

/// A leader that loses the lease before its write lands keeps nothing of
/// what it chose: as a follower its book is what is published.
#[test]
fn a_deposed_leader_forgets_what_it_chose_and_never_published() {
    let mut r = leader();
    let snap = seed();
    let plan = r.plan(&snap, &now());
    assert_eq!(*plan.ingress, [(key("web"), vec![ip("192.168.0.100")])]);
    r.set_leading(false);
    let plan = r.plan(&snap, &now());
    assert_eq!(r.ipam().addresses_of(&key("web")), None);
    assert_eq!(plan.allocated, 0);
}

#[test]
fn a_community_the_pool_does_not_allow_is_not_sent_and_the_service_is_told() {
    let mut r = leader();
    let mut snap = seed();
    snap.services = vec![Arc::new(svc(
        "web",
        &[
            ("lb.kubesphere.io/v1alpha1", "porter"),
            ("bgp.porter.kubesphere.io/communities", "blackhole"),
        ],
    ))];
    let plan = r.plan(&snap, &now());
    let hops = plan.paths.values().next().expect("still announced");
    assert!(
        hops.values().all(|a| a.communities.is_empty()),
        "blackhole is not sent: {hops:?}"
    );
    let told: Vec<&Event> = plan
        .events
        .iter()
        .filter(|e| e.reason == porter_api::bgp_policy::REASON_CONFLICT)
        .collect();
    assert_eq!(told.len(), 1, "{:?}", plan.events);
    assert_eq!(told[0].regarding, Regarding::Service(key("web")));
    assert_eq!(told[0].type_, EventType::Warning);
    assert!(
        told[0].message.contains("community 65535:666")
            && told[0].message.contains("spec.bgp.serviceAttributes"),
        "{}",
        told[0].message
    );
    // Told once, not on every pass.
    let snap = settle(&snap, &plan);
    assert!(
        r.plan(&snap, &now())
            .events
            .iter()
            .all(|e| e.reason != porter_api::bgp_policy::REASON_CONFLICT)
    );
}

/// A node whose address lands inside a Layer 2 pool: only the Nodes
/// changed, yet the pool is checked again (the address plan is otherwise
/// replayed while Services and Eips stay); a heartbeat alone replans
/// nothing.
#[test]
fn a_node_address_inside_a_layer2_pool_is_seen_without_a_service_or_eip_change() {
    let mut r = leader();
    let mut snap = seed();
    snap.services = vec![];
    let mut l2 = pool("lan", "192.168.1.100-192.168.1.110");
    l2.spec.protocol = Some("layer2".into());
    snap.eips = vec![Arc::new(l2)];
    let plan = r.plan(&snap, &now());
    assert!(!reasons(&plan).contains(&REASON_POOL_REFUSED), "{plan:?}");
    let settled = settle(&snap, &plan);
    // A heartbeat: new Node objects, the same addresses.
    let mut beat = settled.clone();
    beat.nodes = vec![
        Arc::new(node("n1", "192.168.1.1")),
        Arc::new(node("n2", "192.168.1.2")),
    ];
    let quiet = r.plan(&beat, &now());
    assert!(
        quiet.eip_status.is_empty() && quiet.events.is_empty(),
        "{quiet:?}"
    );
    // n3 joins with an address in the pool.
    let mut joined = beat.clone();
    joined.nodes.push(Arc::new(node("n3", "192.168.1.105")));
    let refused = r.plan(&joined, &now());
    let event = only_event(&refused, REASON_POOL_REFUSED);
    assert!(
        event.message.contains("192.168.1.105") && event.message.contains("`n3`"),
        "{}",
        event.message
    );
    let (_, status) = &refused.eip_status[0];
    assert!(!status.ready);
}

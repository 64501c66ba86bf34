use super::*;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use porter_api::{Eip, EipSpec};

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
}

fn svc(name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn porter_svc(name: &str) -> Service {
    svc(name, &[("lb.kubesphere.io/v1alpha1", "porter")])
}

fn pool(name: &str, address: &str) -> Eip {
    Eip {
        metadata: ObjectMeta {
            name: Some(name.into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: EipSpec {
            address: address.into(),
            ..Default::default()
        },
        status: None,
    }
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
    let mut out = snap.clone();
    out.services = snap
        .services
        .iter()
        .filter_map(|s| {
            let mut s = (**s).clone();
            let k = ObjectKey::of(&s.metadata);
            for (_, ips) in plan.ingress.iter().filter(|(p, _)| *p == k) {
                s.status = Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(
                            ips.iter()
                                .map(|ip| LoadBalancerIngress {
                                    ip: Some(ip.to_string()),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                    }),
                    conditions: None,
                });
            }
            for (_, add) in plan.finalizers.iter().filter(|(p, _)| *p == k) {
                let f = s.metadata.finalizers.get_or_insert_with(Vec::new);
                f.retain(|x| x != SERVICE_FINALIZER);
                if *add {
                    f.push(SERVICE_FINALIZER.into());
                }
            }
            let finalized = s.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty());
            // A deleted object goes once its last finalizer is removed.
            (!(service::deleting(&s) && finalized)).then(|| Arc::new(s))
        })
        .collect();
    out.eips = snap
        .eips
        .iter()
        .map(|e| {
            let mut e = (**e).clone();
            for (_, st) in plan
                .eip_status
                .iter()
                .filter(|(n, _)| Some(n) == e.metadata.name.as_ref())
            {
                e.status = Some((**st).clone());
            }
            Arc::new(e)
        })
        .collect();
    out
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
    let mut r = Reconciler::default();
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
    let mut first = Reconciler::default();
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
    let mut restarted = Reconciler::default();
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
    let mut r = Reconciler::default();
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
        let mut r = Reconciler::default();
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
    let mut r = Reconciler::default();
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
    let mut r = Reconciler::default();
    let mut snap = seed();
    let mut foreign = svc("metallb", &[]);
    foreign.spec.as_mut().expect("spec").load_balancer_class = Some("metallb.io/metallb".into());
    foreign.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("192.168.0.100".into()),
                ..Default::default()
            }]),
        }),
        conditions: None,
    });
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
    let mut r = Reconciler::default();
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
}

#[tokio::test]
async fn apply_adds_the_finalizer_before_publishing_the_address() {
    let mut r = Reconciler::default();
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
    let mut r = Reconciler::default();
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
            .ends_with("next hop(s) 192.168.1.2 (1 endpoint(s))"),
        "the Event names each next hop's weight: {}",
        plan.events[0].message
    );
    assert!(plan.ingress.is_empty() && plan.finalizers.is_empty() && plan.eip_status.is_empty());
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
    let mut r = Reconciler::default();
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
    let mut first = Reconciler::default();
    let snap = with_holder(&layer2_seed(), Some("n1"));
    let plan = first.plan(&snap, &now());
    let settled = settle(&snap, &plan);
    let mut second = Reconciler::default();
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
    let mut r = Reconciler::default();
    let snap = with_holder(&seed(), Some("n1"));
    let plan = r.plan(&snap, &now());
    assert!(announcers(&plan).is_empty());
    assert!(layer2_events(&plan).is_empty());
}

#[test]
fn unreadable_pool_policy_sets_a_condition_and_the_pool_keeps_working() {
    let mut r = Reconciler::default();
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

#[test]
fn a_community_the_pool_does_not_allow_is_not_sent_and_the_service_is_told() {
    let mut r = Reconciler::default();
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

//! End to end: the controller, three agents, BIRD and a client in the
//! data-centre lab (tests/src/datacenter.rs), driven through the manifests
//! a cluster would hold. One lab is shared by all cases (building it is the
//! slow part); each case sets up what it needs (the cases on Service `web`
//! create it when an earlier case has not), leaves the lab as it found it
//! and prints its measured convergence time, so any case runs alone.
//!
//! `cargo test -p porter-tests --test e2e [-- NAME...]` runs the cases whose
//! name contains one of the NAMEs (all by default); `-- --list` lists them.
use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use porter_common::Stat;
use porter_tests::{
    cases::{Case, Suite},
    datacenter::{Datacenter, per_node, samples_dir},
    disruption,
    lab::wait_for,
    manifests::{self, ServiceManifest},
    monitoring::{
        as_prometheus_text, dashboard, dashboard_expressions, metrics_read_by, promtool,
        rule_expressions, series_names,
    },
};

const NS: &str = "default";
const POOL_V4: &str = "lab-v4";
const POOL_V6: &str = "lab-v6";
const POOL_TINY: &str = "tiny";
const POOL_LAN: &str = "lan";
const WAIT: Duration = Duration::from_secs(30);
const POOL_ANNOTATION: &str = "eip.porter.kubesphere.io/v1alpha2";

/// The shared lab, and what the cases left in it.
struct Ctx {
    dc: Datacenter,
    /// The external IP of Service `web` while it exists (cases 1 to 6 use it).
    web: Option<IpAddr>,
}

const CASES: &[(&str, Case<Ctx>)] = &[
    ("new_service_is_reachable", new_service_is_reachable),
    ("scale_node_to_zero_withdraws_its_path", scale_node_to_zero),
    ("node_failure_withdraws_its_path", node_failure),
    ("controller_restart_loses_no_request", controller_restart),
    ("agent_restart_loses_no_request", agent_restart),
    ("delete_service_withdraws_and_releases", delete_service),
    ("two_services_share_one_ip", shared_ip),
    ("ipv6_eip_end_to_end", ipv6_end_to_end),
    ("exhausted_pool_reports_and_others_work", exhausted_pool),
    ("cluster_policy_spreads_over_every_pod", cluster_spread),
    (
        "cluster_policy_spreads_over_every_pod_ipv6",
        cluster_spread_v6,
    ),
    ("cluster_flows_survive_ecmp_changes", disruption),
    (
        "metrics_lint_clean_and_monitoring_reads_only_real_metrics",
        metrics_and_monitoring,
    ),
];

fn main() -> ExitCode {
    Suite {
        name: "e2e",
        cases: CASES,
        setup,
        describe: |ctx| ctx.dc.describe(),
    }
    .main()
}

fn setup() -> Result<Ctx> {
    let mut dc = Datacenter::new("e2e", &[1, 2, 3])?;
    dc.apply_file(&samples_dir().join("bgp.yaml"))?;
    let pools = [
        manifests::eip(POOL_V4, "192.168.2.0/28"),
        manifests::eip(POOL_V6, "fd00:40::/124"),
        manifests::eip(POOL_TINY, "192.168.9.1"),
    ];
    dc.apply("pools.yaml", &pools.join("---\n"))?;
    dc.start_porter(WAIT)?;
    Ok(Ctx { dc, web: None })
}

/// Writes Service `name` (opted in, `port` -> 80) with its pods on `nodes`.
fn add_service(
    dc: &Datacenter,
    name: &str,
    port: u16,
    nodes: &[usize],
    annotations: &[(&str, &str)],
) -> Result<()> {
    let spec = ServiceManifest {
        namespace: NS,
        name,
        port,
        target_port: porter_tests::datacenter::POD_PORT,
        annotations,
        ipv6: annotations.iter().any(|(_, value)| *value == POOL_V6),
        cluster: false,
    };
    dc.add_service(&spec, nodes)
}

fn remove_service(dc: &Datacenter, name: &str) -> Result<()> {
    dc.delete(&format!("svc-{name}.yaml"))?;
    dc.delete(&format!("endpoints-{NS}-{name}.yaml"))
}

fn all_nodes(dc: &Datacenter) -> Vec<usize> {
    (0..dc.nodes.len()).collect()
}

/// Waits until a request to `addr` succeeds; returns the time it took.
fn first_answer(dc: &Datacenter, addr: SocketAddr, since: Instant) -> Result<Duration> {
    wait_for(&format!("a first answer from {addr}"), WAIT, || {
        dc.request(addr).map(Some)
    })?;
    Ok(since.elapsed())
}

/// `count` requests that must all succeed, served only by pods on `nodes`,
/// every one of which must serve some.
fn expect_spread(dc: &Datacenter, addr: SocketAddr, count: usize, nodes: &[usize]) -> Result<()> {
    let per_pod = dc.spread(addr, count)?;
    let served = per_node(&per_pod);
    let want: Vec<&str> = nodes.iter().map(|&i| dc.nodes[i].name.as_str()).collect();
    let got: Vec<&str> = served.keys().map(String::as_str).collect();
    ensure!(
        got == want,
        "{count} requests to {addr} were served by nodes {got:?} (pods {per_pod:?}), expected {want:?}"
    );
    println!("     {addr}: per node {served:?}");
    Ok(())
}

/// Service `web` with a pod on every node, served by all of them: made
/// here unless an earlier case left it.
fn web(ctx: &mut Ctx) -> Result<SocketAddr> {
    let ip = match ctx.web {
        Some(ip) => ip,
        None => create_web(ctx)?.0,
    };
    Ok(SocketAddr::new(ip, 8088))
}

/// Creates Service `web` and waits until every node serves it; returns its
/// IP and the time to its first answer.
fn create_web(ctx: &mut Ctx) -> Result<(IpAddr, Duration)> {
    let dc = &ctx.dc;
    let nodes = all_nodes(dc);
    let started = Instant::now();
    add_service(dc, "web", 8088, &nodes, &[(POOL_ANNOTATION, POOL_V4)])?;
    let ip = dc.wait_service_ip(NS, "web", WAIT)?;
    ctx.web = Some(ip);
    let convergence = first_answer(dc, SocketAddr::new(ip, 8088), started)?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &nodes), WAIT)?;
    // Each agent programs the Service on its own schedule.
    expect_spread_eventually(dc, SocketAddr::new(ip, 8088), &nodes)?;
    Ok((ip, convergence))
}

/// 1. Service creation -> first successful request through its EIP.
fn new_service_is_reachable(ctx: &mut Ctx) -> Result<Duration> {
    if ctx.web.is_some() {
        delete_service(ctx)?;
    }
    Ok(create_web(ctx)?.1)
}

/// 2. All pods of n3 gone: n3's path is withdrawn, the rest serve.
fn scale_node_to_zero(ctx: &mut Ctx) -> Result<Duration> {
    let addr = web(ctx)?;
    let dc = &ctx.dc;
    let load = dc.load(addr);
    dc.set_endpoints(NS, "web", &dc.endpoints_on(&[0, 1]))?;
    let convergence = dc.wait_next_hops(addr.ip(), &dc.hops_of(addr.ip(), &[0, 1]), WAIT)?;
    let during = load.stop()?;
    println!(
        "     while converging: {} answered, {} failed",
        during.ok,
        during.failures.len()
    );
    expect_spread(dc, addr, 60, &[0, 1])?;
    dc.set_endpoints(NS, "web", &dc.endpoints_on(&all_nodes(dc)))?;
    dc.wait_next_hops(addr.ip(), &dc.hops_of(addr.ip(), &all_nodes(dc)), WAIT)?;
    // n3's agent programs its pods again on its own schedule.
    expect_spread_eventually(dc, addr, &all_nodes(dc))?;
    Ok(convergence)
}

/// 3. n2 fails: NotReady and its switch port down. Its path goes; the
///    others serve.
fn node_failure(ctx: &mut Ctx) -> Result<Duration> {
    let addr = web(ctx)?;
    let port = format!("v-{}", ctx.dc.nodes[1].name);
    let router_ns = ctx.dc.router_ns.clone();
    let started = Instant::now();
    ctx.dc.lab.ip(&router_ns, &["link", "set", &port, "down"])?;
    ctx.dc.set_node_ready(1, false)?;
    let dc = &ctx.dc;
    dc.wait_next_hops(addr.ip(), &dc.hops_of(addr.ip(), &[0, 2]), WAIT)?;
    let convergence = started.elapsed();
    expect_spread(dc, addr, 60, &[0, 2])?;
    ctx.dc.lab.ip(&router_ns, &["link", "set", &port, "up"])?;
    ctx.dc.set_node_ready(1, true)?;
    let dc = &ctx.dc;
    dc.wait_next_hops(addr.ip(), &dc.hops_of(addr.ip(), &all_nodes(dc)), WAIT)?;
    // The switch port is back when the node answers again.
    expect_spread_eventually(dc, addr, &all_nodes(dc))?;
    Ok(convergence)
}

fn expect_spread_eventually(dc: &Datacenter, addr: SocketAddr, nodes: &[usize]) -> Result<()> {
    wait_for("every node to serve again", WAIT, || {
        Ok(expect_spread(dc, addr, 30, nodes).ok())
    })
}

/// 4. The controller restarts under load: BIRD keeps the routes (graceful
///    restart) and no request fails.
fn controller_restart(ctx: &mut Ctx) -> Result<Duration> {
    let addr = web(ctx)?;
    let hops = ctx.dc.hops_of(addr.ip(), &all_nodes(&ctx.dc));
    let load = ctx.dc.load(addr);
    thread::sleep(Duration::from_millis(300));
    ctx.dc.stop_controller()?;
    // The controller is gone: the router must still route to every node.
    thread::sleep(Duration::from_secs(1));
    let kept = ctx.dc.next_hops(addr.ip())?;
    ensure!(
        kept == sorted(&hops),
        "with the controller down BIRD routes {addr} via {kept:?}, not {hops:?}"
    );
    let started = Instant::now();
    ctx.dc.start_controller()?;
    let dc = &ctx.dc;
    dc.wait_controller_session(WAIT)?;
    let convergence = started.elapsed();
    // After End-of-RIB the stale routes are gone or refreshed: same hops.
    thread::sleep(Duration::from_secs(1));
    let after = dc.next_hops(addr.ip())?;
    let report = load.stop()?;
    ensure!(
        after == sorted(&hops),
        "after the restart BIRD routes via {after:?}"
    );
    report.ensure_lossless("across the restart")?;
    ensure!(
        dc.service_ips(NS, "web")? == vec![addr.ip()],
        "the Service's IP changed"
    );
    println!("     {} requests, none lost", report.ok);
    Ok(convergence)
}

fn sorted(hops: &[IpAddr]) -> Vec<IpAddr> {
    let mut hops = hops.to_vec();
    hops.sort();
    hops
}

/// 5. Every agent restarts under load; the pinned data plane keeps serving.
fn agent_restart(ctx: &mut Ctx) -> Result<Duration> {
    let addr = web(ctx)?;
    let load = ctx.dc.load(addr);
    let mut slowest = Duration::ZERO;
    for index in 0..ctx.dc.nodes.len() {
        thread::sleep(Duration::from_millis(200));
        ctx.dc.stop_agent(index)?;
        let started = Instant::now();
        ctx.dc.start_agent(index)?;
        slowest = slowest.max(started.elapsed());
    }
    thread::sleep(Duration::from_millis(300));
    let report = load.stop()?;
    report.ensure_lossless("across agent restarts")?;
    ensure!(report.ok > 0, "no request was made");
    println!(
        "     {} requests, none lost; per pod {:?}",
        report.ok, report.per_pod
    );
    Ok(slowest)
}

/// 6. Deleting the Service withdraws its route and frees its address.
fn delete_service(ctx: &mut Ctx) -> Result<Duration> {
    let addr = web(ctx)?;
    let dc = &ctx.dc;
    remove_service(dc, "web")?;
    let convergence = dc.wait_next_hops(addr.ip(), &[], WAIT)?;
    let ip = addr.ip().to_string();
    wait_for(&format!("pool {POOL_V4} to release {ip}"), WAIT, || {
        Ok((!dc.eip_used(POOL_V4)?.contains_key(&ip)).then_some(()))
    })?;
    ensure!(dc.request(addr).is_err(), "{addr} still answers");
    ctx.web = None;
    Ok(convergence)
}

/// 7. The shared-IP sample's topology (deploy/samples/shared-ip.yaml): two
///    Services with one key, different ports and different selectors,
///    their pods on different nodes. `Cluster`: one IP, announced through
///    both nodes, and every request to either port is answered, by that
///    Service's pods (a node without them forwards). `Local`: refused with
///    an AllocationFailed Event, since one node would drop the other's port;
///    the first keeps working.
fn shared_ip(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    fn shared<'a>(
        name: &'a str,
        port: u16,
        annotations: &'a [(&'a str, &'a str)],
        cluster: bool,
    ) -> ServiceManifest<'a> {
        ServiceManifest {
            namespace: NS,
            name,
            port,
            target_port: porter_tests::datacenter::POD_PORT,
            annotations,
            ipv6: false,
            cluster,
        }
    }
    let cluster_key = [
        (POOL_ANNOTATION, POOL_V4),
        ("porter.kubesphere.io/allow-shared-ip", "front"),
    ];
    let local_key = [
        (POOL_ANNOTATION, POOL_V4),
        ("porter.kubesphere.io/allow-shared-ip", "front-local"),
    ];
    let started = Instant::now();
    dc.add_service(&shared("shared-a", 80, &cluster_key, true), &[0])?;
    dc.add_service(&shared("shared-b", 8080, &cluster_key, true), &[1])?;
    let a = dc.wait_service_ip(NS, "shared-a", WAIT)?;
    let b = dc.wait_service_ip(NS, "shared-b", WAIT)?;
    ensure!(a == b, "shared-a got {a}, shared-b got {b}");
    first_answer(dc, SocketAddr::new(a, 80), started)?;
    let convergence = first_answer(dc, SocketAddr::new(a, 8080), started)?;
    dc.wait_next_hops(a, &dc.hops_of(a, &[0, 1]), WAIT)?;
    // Both nodes take requests for both ports (ECMP); 60 requests to each
    // port all answered, and only by that Service's pods, so the node
    // without them forwarded its share. Each agent programs the new ports
    // on its own schedule: wait for the first clean run, then measure again.
    for (port, node, other) in [(80, 0, 1), (8080, 1, 0)] {
        let addr = SocketAddr::new(a, port);
        wait_for("both nodes to serve the port", WAIT, || {
            Ok(expect_spread(dc, addr, 30, &[node]).ok())
        })?;
        let before = dc.dataplane_stat(other, Stat::ForwardedRemote)?;
        expect_spread(dc, addr, 60, &[node])?;
        let forwarded = dc.dataplane_stat(other, Stat::ForwardedRemote)? - before;
        println!(
            "     {addr}: {forwarded} packet(s) forwarded by n{}",
            other + 1
        );
        ensure!(
            forwarded > 0,
            "n{} took no request for {addr}: the case proves nothing",
            other + 1
        );
    }
    remove_service(dc, "shared-a")?;
    // The IP stays announced for shared-b alone, through its node.
    dc.wait_next_hops(a, &dc.hops_of(a, &[1]), WAIT)?;
    expect_spread(dc, SocketAddr::new(a, 8080), 30, &[1])?;
    remove_service(dc, "shared-b")?;
    dc.wait_next_hops(a, &[], WAIT)?;

    dc.add_service(&shared("shared-c", 80, &local_key, false), &[0])?;
    let c = dc.wait_service_ip(NS, "shared-c", WAIT)?;
    dc.add_service(&shared("shared-d", 8080, &local_key, false), &[1])?;
    let event = wait_for("an AllocationFailed Event for shared-d", WAIT, || {
        Ok(dc.events()?.into_iter().find(|(reason, regarding, _)| {
            reason == "AllocationFailed" && regarding.contains("shared-d")
        }))
    })?;
    println!("     Event: {} {}: {}", event.0, event.1, event.2);
    ensure!(
        event.2.contains(&c.to_string()) && event.2.contains("spec.selector"),
        "the refusal does not say why: {}",
        event.2
    );
    ensure!(
        dc.service_ips(NS, "shared-d")?.is_empty(),
        "shared-d got an address it cannot be served on"
    );
    first_answer(dc, SocketAddr::new(c, 80), Instant::now())?;
    expect_spread(dc, SocketAddr::new(c, 80), 30, &[0])?;
    for name in ["shared-d", "shared-c"] {
        remove_service(dc, name)?;
    }
    dc.wait_next_hops(c, &[], WAIT)?;
    Ok(convergence)
}

/// 8. An IPv6 pool: the route has the nodes' IPv6 next hops and the
///    client reaches the pods over IPv6.
fn ipv6_end_to_end(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let nodes = all_nodes(dc);
    let started = Instant::now();
    add_service(dc, "web6", 8088, &nodes, &[(POOL_ANNOTATION, POOL_V6)])?;
    let ip = dc.wait_service_ip(NS, "web6", WAIT)?;
    ensure!(ip.is_ipv6(), "web6 got {ip} from the IPv6 pool");
    let convergence = first_answer(dc, SocketAddr::new(ip, 8088), started)?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &nodes), WAIT)?;
    expect_spread_eventually(dc, SocketAddr::new(ip, 8088), &nodes)?;
    // web6 stays: the next case checks it keeps working.
    Ok(convergence)
}

/// 9. A one-address pool: the second Service gets an AllocationFailed
///    Event; the first and the others keep working.
fn exhausted_pool(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let nodes = all_nodes(dc);
    add_service(dc, "filler", 8088, &nodes, &[(POOL_ANNOTATION, POOL_TINY)])?;
    let filler = dc.wait_service_ip(NS, "filler", WAIT)?;
    first_answer(dc, SocketAddr::new(filler, 8088), Instant::now())?;
    expect_spread_eventually(dc, SocketAddr::new(filler, 8088), &nodes)?;
    let started = Instant::now();
    add_service(
        dc,
        "overflow",
        8088,
        &nodes,
        &[(POOL_ANNOTATION, POOL_TINY)],
    )?;
    let event = wait_for("an AllocationFailed Event for overflow", WAIT, || {
        Ok(dc.events()?.into_iter().find(|(reason, regarding, _)| {
            reason == "AllocationFailed" && regarding.contains("overflow")
        }))
    })?;
    let convergence = started.elapsed();
    println!("     Event: {} {}: {}", event.0, event.1, event.2);
    ensure!(
        dc.service_ips(NS, "overflow")?.is_empty(),
        "overflow got an address from a full pool"
    );
    expect_spread(dc, SocketAddr::new(filler, 8088), 30, &nodes)?;
    // The Service of case 8, when it ran, is unaffected.
    let web6 = dc.service_ips(NS, "web6")?;
    if let Some(&web6) = web6.first() {
        expect_spread(dc, SocketAddr::new(web6, 8088), 30, &nodes)?;
        remove_service(dc, "web6")?;
    }
    for name in ["overflow", "filler"] {
        remove_service(dc, name)?;
    }
    Ok(convergence)
}

/// 10. `externalTrafficPolicy: Cluster` with the lab's 6 pods on 3 nodes
///     (1/2/3) behind BIRD's unweighted ECMP: every node picks the same
///     pod for a flow from one cluster-wide Maglev table and forwards it to
///     that pod's node, so each pod gets about a sixth, where `Local`
///     splits per node. Every pod sees the client's own address.
fn cluster_spread(ctx: &mut Ctx) -> Result<Duration> {
    spread_over_every_pod(ctx, false)
}

/// 10b. The same over IPv6, where every forwarded packet travels in IPv6.
fn cluster_spread_v6(ctx: &mut Ctx) -> Result<Duration> {
    spread_over_every_pod(ctx, true)
}

fn spread_over_every_pod(ctx: &mut Ctx, ipv6: bool) -> Result<Duration> {
    const REQUESTS: usize = 600;
    let dc = &ctx.dc;
    let nodes = all_nodes(dc);
    let started = Instant::now();
    let (name, port, pool, client) = if ipv6 {
        ("spread6", 8091, POOL_V6, "fd00:31::2")
    } else {
        ("spread", 8090, POOL_V4, porter_tests::datacenter::CLIENT_V4)
    };
    let spec = ServiceManifest {
        namespace: NS,
        name,
        port,
        target_port: porter_tests::datacenter::POD_PORT,
        annotations: &[(POOL_ANNOTATION, pool)],
        ipv6,
        cluster: true,
    };
    dc.add_service(&spec, &nodes)?;
    let ip = dc.wait_service_ip(NS, name, WAIT)?;
    let addr = SocketAddr::new(ip, port);
    let convergence = first_answer(dc, addr, started)?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &nodes), WAIT)?;
    let pods: Vec<String> = dc
        .nodes
        .iter()
        .flat_map(|node| node.pods.iter().map(|pod| pod.name.clone()))
        .collect();
    // Each agent programs the Service on its own schedule: wait until every
    // pod serves, then measure.
    wait_for("every pod to serve", WAIT, || {
        let served = dc.spread(addr, 30).ok();
        Ok(served.filter(|per_pod| per_pod.len() == pods.len()))
    })?;
    let clients_before = dc.pod_clients()?;
    let per_pod = dc.spread(addr, REQUESTS)?;
    let even = REQUESTS / pods.len();
    println!("     {addr} (Cluster): {REQUESTS} requests, per pod {per_pod:?}, even share {even}");
    for pod in &pods {
        let got = per_pod.get(pod).copied().unwrap_or(0);
        ensure!(
            got.abs_diff(even) * 100 <= even * 35,
            "pod {pod} answered {got} of {REQUESTS} requests, more than 35% off an even {even}: \
             {per_pod:?}"
        );
    }
    // The pods saw the client itself, not a node: no SNAT on the way.
    let client: IpAddr = client.parse()?;
    let clients_after = dc.pod_clients()?;
    let mut seen = 0;
    for (pod, clients) in &clients_after {
        let before = clients_before.get(pod).map_or(0, Vec::len);
        for address in &clients[before..] {
            ensure!(
                *address == client,
                "pod {pod} saw a request from {address}, not {client}"
            );
            seen += 1;
        }
    }
    ensure!(
        seen >= REQUESTS,
        "the pods logged {seen} requests, fewer than {REQUESTS}"
    );
    remove_service(dc, name)?;
    Ok(convergence)
}

/// 11. At least 200 idle long-lived connections to a `Cluster` and to a
///     `Local` Service through BIRD's ECMP while the ECMP set changes and
///     Porter restarts (porter_tests::disruption). `Cluster` must keep every
///     connection (0 resets, 0 timeouts): any node maps a flow to the same
///     pod, and forwards it there. `Local`'s numbers are printed beside it:
///     a flow the router moves lands on a node with other pods, which reset it.
fn disruption(ctx: &mut Ctx) -> Result<Duration> {
    let (outcomes, slowest) =
        disruption::run(&mut ctx.dc, NS, (POOL_ANNOTATION, POOL_V4), 200, WAIT)?;
    let mut broken_cluster = Vec::new();
    for outcome in &outcomes {
        println!("{}", outcome.json());
        if outcome.policy == "cluster" && outcome.broken() > 0 {
            broken_cluster.push(outcome.json().to_string());
        }
    }
    ensure!(
        broken_cluster.is_empty(),
        "Cluster connections broke: {broken_cluster:?}"
    );
    // The slowest event, until BIRD routed by the new set where it changed.
    Ok(slowest)
}

/// Every binary's `/metrics` passes `promtool check metrics` (Prometheus'
/// naming conventions), and every metric that deploy/monitoring's alerts and
/// dashboard read is one that a running controller or agent exports.
fn metrics_and_monitoring(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let nodes = all_nodes(dc);
    let started = Instant::now();
    // Per-service and per-address series exist only while there is something
    // to count: a BGP Service that has carried traffic, and a Layer 2 one.
    add_service(dc, "metered", 8088, &nodes, &[(POOL_ANNOTATION, POOL_V4)])?;
    dc.apply(
        "pool-lan.yaml",
        &manifests::layer2_eip(POOL_LAN, "172.30.0.200-172.30.0.201"),
    )?;
    add_service(
        dc,
        "metered-lan",
        8088,
        &nodes,
        &[(POOL_ANNOTATION, POOL_LAN)],
    )?;
    let metered = dc.wait_service_ip(NS, "metered", WAIT)?;
    first_answer(dc, SocketAddr::new(metered, 8088), started)?;
    dc.wait_service_ip(NS, "metered-lan", WAIT)?;
    let scrapes = wait_for("every agent to report a Layer 2 leader", WAIT, || {
        let scrapes = dc.scrape_metrics()?;
        let led = scrapes
            .iter()
            .filter(|(who, _)| who.starts_with("porter-agent"))
            .all(|(_, text)| text.contains("porter_agent_layer2_leader{"));
        Ok(led.then_some(scrapes))
    })?;
    let checked = check_monitoring_against(&scrapes);
    remove_service(dc, "metered")?;
    remove_service(dc, "metered-lan")?;
    dc.delete("pool-lan.yaml")?;
    checked?;
    Ok(started.elapsed())
}

fn check_monitoring_against(scrapes: &[(String, String)]) -> Result<()> {
    let mut exported = std::collections::BTreeSet::new();
    for (who, text) in scrapes {
        promtool(
            &std::env::temp_dir(),
            &["check", "metrics"],
            &as_prometheus_text(text),
        )
        .with_context(|| format!("linting what {who} exports"))?;
        exported.extend(series_names(text));
    }
    let dashboard = dashboard()?;
    let reads = rule_expressions()?
        .into_iter()
        .map(|(alert, expr)| (format!("alert {alert}"), expr))
        .chain(
            dashboard_expressions(&dashboard)
                .into_iter()
                .map(|(panel, expr)| (format!("panel {panel:?}"), expr)),
        );
    let mut read = 0;
    let mut unknown = Vec::new();
    for (place, expr) in reads {
        for metric in metrics_read_by(&expr) {
            read += 1;
            if !exported.contains(&metric) {
                unknown.push(format!("{place} reads {metric}"));
            }
        }
    }
    ensure!(
        unknown.is_empty(),
        "deploy/monitoring reads metrics that no binary exports: {unknown:?}"
    );
    println!(
        "     {} scrapes lint clean; {read} metric reads in deploy/monitoring, all exported",
        scrapes.len()
    );
    Ok(())
}

//! Controller failover in the data-centre lab (tests/src/datacenter.rs)
//! with two controller replicas electing a leader through the `dir:`
//! source's file lease: what the router sees when the leader dies, freezes
//! or loses the lease store, and that no Service's address moves.
//!
//! The lease is 4 s, the BgpPeer's hold time 9 s and its BFD 300 ms × 3
//! (BIRD: `bfd graceful`): BFD, not the hold timer, is what makes the
//! router drop a frozen or dead leader's session before a successor may
//! take the lease (docs/bfd.md, "When the leader's node dies"). The
//! controllers advertise long-lived graceful restart, so the router keeps
//! the dead leader's paths, stale, until the successor's replace them.
//!
//! Replica 0 runs on node n1 (Datacenter::with_standby_on_node), so that
//! `leader_node_dies_silently` can take a leader and a next hop down at once;
//! `leader_node_dies_silently_frr` does the same with FRR on the router.
//!
//! `cargo test -p porter-tests --test failover [-- NAME...]`.
use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use porter_tests::{
    cases::{Case, Suite},
    datacenter::{Datacenter, POD_PORT, http_get, samples_dir},
    lab::wait_for,
    manifests::{self, ServiceManifest},
    netns::{NamedClient, NamedServer, enter, run_in},
    routers::Daemon,
};

const NS: &str = "default";
const POOL: &str = "lab-v4";
const POOL_ANNOTATION: &str = "eip.porter.kubesphere.io/v1alpha2";
/// The replicas' leader lease, seconds.
const LEASE: u64 = 4;
const WAIT: Duration = Duration::from_secs(30);
const WEB_PORT: u16 = 8088;

struct Ctx {
    dc: Datacenter,
    web: IpAddr,
}

const CASES: &[(&str, Case<Ctx>)] = &[
    ("leader_kill_loses_no_request", leader_kill),
    ("leader_stop_hands_over_at_once", leader_stop),
    ("lease_store_partition_closes_within_the_lease", partition),
    ("frozen_leader_steps_down_on_waking", frozen_leader),
    ("failover_keeps_addresses", failover_keeps_addresses),
    ("leader_node_dies_silently", leader_node_dies),
    ("leader_node_dies_silently_frr", leader_node_dies_frr),
];

fn main() -> ExitCode {
    Suite {
        name: "failover",
        cases: CASES,
        setup,
        describe: |ctx| ctx.dc.describe(),
    }
    .main()
}

fn setup() -> Result<Ctx> {
    lab_with("failover", Daemon::Bird)
}

/// The lab of this suite with `daemon` on the router.
fn lab_with(tag: &str, daemon: Daemon) -> Result<Ctx> {
    let mut dc = Datacenter::with_standby_on_node(tag, &[1, 1, 1], daemon)?;
    let bgp = std::fs::read_to_string(samples_dir().join("bgp.yaml"))?;
    let with_bfd = bgp.replace("holdTime: 90", "holdTime: 9").replace(
        "    neighborAddress: 172.30.0.1\n",
        "    neighborAddress: 172.30.0.1\n  bfd: {}\n",
    );
    ensure!(
        with_bfd.contains("holdTime: 9\n") && with_bfd.contains("bfd: {}"),
        "the sample BgpPeer no longer sets holdTime: 90 and neighborAddress: 172.30.0.1"
    );
    dc.apply("bgp.yaml", &with_bfd)?;
    dc.apply("pools.yaml", &manifests::eip(POOL, "192.168.2.0/25"))?;
    for index in 0..dc.nodes.len() {
        dc.start_agent(index)?;
    }
    // Replica 0 first, so that it leads; then its standby.
    dc.start_replica(0, LEASE)?;
    wait_for("replica 0 to lead", WAIT, || {
        Ok((dc.lease_holder()? == Some(0) && established(&dc, 0)?).then_some(()))
    })?;
    dc.start_replica(1, LEASE)?;
    let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
    dc.add_service(&service("web", WEB_PORT), &nodes)?;
    let web = dc.wait_service_ip(NS, "web", WAIT)?;
    dc.wait_next_hops(web, &dc.hops_of(web, &nodes), WAIT)?;
    // Every path (router, node, pod) has answered once before a case
    // counts lost requests: the cases measure failovers, not the lab's
    // first neighbour resolutions.
    let mut answered = std::collections::BTreeSet::new();
    wait_for("an answer from every pod of web", WAIT, || {
        answered.insert(dc.request(SocketAddr::new(web, WEB_PORT))?);
        Ok((answered.len() == nodes.len()).then_some(()))
    })?;
    Ok(Ctx { dc, web })
}

fn service(name: &str, port: u16) -> ServiceManifest<'_> {
    ServiceManifest {
        namespace: NS,
        name,
        port,
        target_port: POD_PORT,
        annotations: &[(POOL_ANNOTATION, POOL)],
        ipv6: false,
        cluster: false,
    }
}

/// The `Cluster` Service whose long-lived connections
/// `leader_node_dies_silently` holds, and its port (on every pod too).
const HOLD: &str = "hold";
const HOLD_PORT: u16 = 7100;
/// Connections held through the leader's node's death.
const HELD: usize = 24;

/// Whether the router has replica `replica`'s session Established.
fn established(dc: &Datacenter, replica: usize) -> Result<bool> {
    let ip = dc.replica_ip(replica).context("no such replica")?;
    dc.router.established(&dc.lab, ip)
}

/// The replicas the router has an Established session with.
fn announcing(dc: &Datacenter) -> Result<Vec<usize>> {
    let mut up = Vec::new();
    for replica in 0..2 {
        if established(dc, replica)? {
            up.push(replica);
        }
    }
    Ok(up)
}

/// The replica that holds the lease and whose session is up.
fn leader(dc: &Datacenter) -> Result<usize> {
    wait_for("a leader announcing", WAIT, || {
        Ok(dc
            .lease_holder()?
            .filter(|&r| established(dc, r).unwrap_or(false)))
    })
}

fn log_of(dc: &Datacenter, replica: usize) -> String {
    let name = ["controller.log", "controller-b.log"][replica];
    std::fs::read_to_string(dc.lab.run_dir().join(name)).unwrap_or_default()
}

/// SIGKILL of the leader under load: the router keeps routing (graceful
/// restart) until the standby takes the lease and announces; no request
/// fails. Returns the failover time (kill -> successor Established).
fn leader_kill(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &mut ctx.dc;
    let addr = SocketAddr::new(ctx.web, WEB_PORT);
    let hops = sorted(dc.hops_of(ctx.web, &[0, 1, 2]));
    let old = leader(dc)?;
    let new = 1 - old;
    let load = dc.load(addr);
    thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    println!("     killing replica {old} 300ms into the load");
    dc.kill_replica(old)?;
    let mut gaps = Vec::new();
    let failover = loop {
        let routed = dc.next_hops(ctx.web)?;
        if routed != hops {
            gaps.push((killed.elapsed(), routed));
        }
        if established(dc, new)? {
            break killed.elapsed();
        }
        ensure!(killed.elapsed() < WAIT, "replica {new} never took over");
        thread::sleep(Duration::from_millis(50));
    };
    thread::sleep(Duration::from_secs(1));
    let after = dc.next_hops(ctx.web)?;
    let report = load.stop()?;
    // Back as a follower before judging, so that a failure here leaves the
    // next cases their two replicas.
    dc.start_replica(old, LEASE)?;
    ensure!(
        gaps.is_empty(),
        "the router lost routes during the failover: {gaps:?}"
    );
    ensure!(
        after == hops,
        "after the failover the router routes via {after:?}"
    );
    report.ensure_lossless("across the leader's kill")?;
    ensure!(
        dc.service_ips(NS, "web")? == vec![ctx.web],
        "the Service's IP changed"
    );
    println!(
        "     {} requests, none lost; failover {failover:?} (lease {LEASE} s)",
        report.ok
    );
    Ok(failover)
}

/// SIGTERM of the leader, as a rollout stops a pod: it gives the lease up,
/// so the standby leads at once instead of after the lease; no request
/// fails meanwhile.
fn leader_stop(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &mut ctx.dc;
    let addr = SocketAddr::new(ctx.web, WEB_PORT);
    let old = leader(dc)?;
    let new = 1 - old;
    let load = dc.load(addr);
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    dc.stop_replica(old)?;
    wait_for("the standby to announce", WAIT, || {
        Ok(established(dc, new)?.then_some(()))
    })?;
    let handover = stopped.elapsed();
    let report = load.stop()?;
    report.ensure_lossless("across the leader's stop")?;
    ensure!(
        handover < Duration::from_secs(LEASE),
        "replica {new} took {handover:?} to lead: the lease ({LEASE} s) was waited out, not given up"
    );
    println!(
        "     replica {new} announced {handover:?} after replica {old} was stopped (lease {LEASE} s); \
         {} requests, none lost",
        report.ok
    );
    dc.start_replica(old, LEASE)?;
    Ok(handover)
}

/// Holds the lease directory's lock, as a lease store cut off would: no
/// renewal succeeds, though the leader runs on.
struct LeaseStoreCut {
    /// Held (locked) until dropped.
    _lock: File,
}

impl LeaseStoreCut {
    fn start(dc: &Datacenter) -> Result<Self> {
        let path = dc
            .manifests
            .join(porter_api::lease::CONTROLLER_LEASE_DIR)
            .join(".lock");
        let file = File::options().create(true).append(true).open(&path)?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}", path.display());
        }
        Ok(Self { _lock: file })
    }
}

/// The lease store out of reach while the leader runs: it notices on its
/// own that it cannot renew, and closes its session within the lease
/// duration (the router keeps its routes by graceful restart, so no
/// request fails); once the store is back, one replica leads, and the
/// router never has two controllers' sessions up.
fn partition(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let addr = SocketAddr::new(ctx.web, WEB_PORT);
    let old = leader(dc)?;
    let load = dc.load(addr);
    let cut = LeaseStoreCut::start(dc)?;
    let started = Instant::now();
    let closed = loop {
        if !established(dc, old)? {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3 * LEASE),
            "replica {old} kept its session up without its lease"
        );
        thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        closed < Duration::from_secs(LEASE),
        "replica {old} closed its session {closed:?} after the cut, later than the {LEASE} s lease"
    );
    // The election says why once its attempt in flight gives up.
    wait_for("the old leader to say why it stepped down", WAIT, || {
        Ok(log_of(dc, old).contains("leadership lost").then_some(()))
    })?;
    // Past the lease: nobody may lead, nobody announces.
    while started.elapsed() < Duration::from_secs(LEASE + 1) {
        let up = announcing(dc)?;
        ensure!(up.is_empty(), "announcing without a lease: {up:?}");
        thread::sleep(Duration::from_millis(100));
    }
    drop(cut);
    let back = Instant::now();
    let next = leader(dc)?;
    while back.elapsed() < Duration::from_secs(3) {
        let up = announcing(dc)?;
        ensure!(up.len() <= 1, "two controllers announce at once: {up:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let report = load.stop()?;
    report.ensure_lossless("across the lease store's partition")?;
    println!(
        "     replica {old} closed its session {closed:?} after the cut (lease {LEASE} s); \
         replica {next} leads after it; {} requests, none lost",
        report.ok
    );
    Ok(closed)
}

/// SIGSTOP of the leader past its lease, then SIGCONT: the router drops the
/// frozen session (BFD) before the standby takes
/// over; the old leader, on waking, finds its deadline passed, closes what
/// it had and stays a follower: it never announces again, and the router
/// never has two controllers' sessions up.
fn frozen_leader(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let old = leader(dc)?;
    let new = 1 - old;
    dc.signal_replica(old, libc::SIGSTOP)?;
    let frozen = Instant::now();
    let mut overlaps = Vec::new();
    let mut dropped = None;
    let handover = loop {
        let up = announcing(dc)?;
        if !up.contains(&old) && dropped.is_none() {
            dropped = Some(frozen.elapsed());
        }
        if up.len() > 1 {
            overlaps.push(frozen.elapsed());
        }
        if up.contains(&new) {
            break frozen.elapsed();
        }
        if frozen.elapsed() > WAIT {
            // Let it run before failing, or the lab's teardown waits on it.
            let _ = dc.signal_replica(old, libc::SIGCONT);
            bail!("replica {new} never took over from the frozen replica {old}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Frozen past its lease, then woken.
    while frozen.elapsed() < Duration::from_secs(LEASE + 2) {
        if announcing(dc)?.len() > 1 {
            overlaps.push(frozen.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    dc.signal_replica(old, libc::SIGCONT)?;
    let woke = Instant::now();
    // Several connect-retry intervals: a stale speaker would be back.
    while woke.elapsed() < Duration::from_secs(4) {
        let up = announcing(dc)?;
        ensure!(
            up == vec![new],
            "{:?} after waking replica {old}: the router has sessions with {up:?}",
            woke.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        overlaps.is_empty(),
        "two controllers announced at once at {overlaps:?} after the freeze"
    );
    let text = log_of(dc, old);
    ensure!(
        text.contains("leadership lost") || text.contains("leadership changed leader=false"),
        "replica {old} did not step down on waking"
    );
    let hops = sorted(dc.hops_of(ctx.web, &[0, 1, 2]));
    dc.wait_next_hops(ctx.web, &hops, WAIT)?;
    println!(
        "     router dropped the frozen leader after {dropped:?}, replica {new} announced after \
         {handover:?} (lease {LEASE} s, BFD 300 ms x 3)"
    );
    Ok(handover)
}

/// A tiny deterministic generator (xorshift), seeded from the clock and
/// printed, so a failing run can be told apart and repeated by hand.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every Service's published address, by name; fails when one address is
/// held by two Services.
fn addresses(dc: &Datacenter, names: &[String]) -> Result<BTreeMap<String, IpAddr>> {
    let published = dc.all_service_ips()?;
    let mut holders: BTreeMap<IpAddr, &(String, String)> = BTreeMap::new();
    for (key, ips) in &published {
        for &ip in ips {
            if let Some(other) = holders.insert(ip, key) {
                bail!("{ip} is held by both {other:?} and {key:?}");
            }
        }
    }
    Ok(names
        .iter()
        .filter_map(|name| {
            let ips = published.get(&(NS.to_owned(), name.clone()))?;
            Some((name.clone(), *ips.first()?))
        })
        .collect())
}

/// Records every Service's first address and fails when one changes.
fn check_stable(
    dc: &Datacenter,
    names: &[String],
    first: &mut BTreeMap<String, IpAddr>,
) -> Result<()> {
    for (name, ip) in addresses(dc, names)? {
        let was = *first.entry(name.clone()).or_insert(ip);
        ensure!(was == ip, "Service {name} moved from {was} to {ip}");
    }
    Ok(())
}

fn add(dc: &Datacenter, name: &str) -> Result<()> {
    // Endpoints on one node: the addresses are what this case watches.
    dc.add_service(&service(name, 9000), &[0])
}

fn remove(dc: &Datacenter, name: &str) -> Result<()> {
    dc.delete(&format!("svc-{name}.yaml"))?;
    dc.delete(&format!("endpoints-{NS}-{name}.yaml"))
}

/// 50 Services, some released and reallocated; then the leader killed at
/// random moments 20 times while Services come and go. No Service's
/// address ever changes while it exists; no address is held by two.
fn failover_keeps_addresses(ctx: &mut Ctx) -> Result<Duration> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    println!("     seed {seed}");
    let mut random = Random(seed);
    let started = Instant::now();
    let mut live: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    for name in &live {
        add(&ctx.dc, name)?;
    }
    let mut first = BTreeMap::new();
    let all_have_addresses = |dc: &Datacenter, live: &[String]| -> Result<Option<()>> {
        Ok((addresses(dc, live)?.len() == live.len()).then_some(()))
    };
    wait_for("addresses for 50 Services", WAIT, || {
        all_have_addresses(&ctx.dc, &live)
    })?;
    check_stable(&ctx.dc, &live, &mut first)?;
    // Release ten and let new Services take the addresses.
    for name in live.drain(..10) {
        remove(&ctx.dc, &name)?;
        first.remove(&name);
    }
    for i in 0..10 {
        let name = format!("r{i}");
        add(&ctx.dc, &name)?;
        live.push(name);
    }
    wait_for("addresses for the reallocated Services", WAIT, || {
        all_have_addresses(&ctx.dc, &live)
    })?;
    check_stable(&ctx.dc, &live, &mut first)?;

    let mut created = 0;
    for round in 0..20 {
        let old = leader(&ctx.dc)?;
        // Churn, then the kill at a random moment inside it.
        let kill_after = random.below(4);
        for step in 0..4 {
            if step == kill_after {
                ctx.dc.kill_replica(old)?;
            }
            if random.below(2) == 0 && live.len() > 40 {
                let gone = live.remove(random.below(live.len() as u64) as usize);
                remove(&ctx.dc, &gone)?;
                first.remove(&gone);
            } else {
                let name = format!("c{created}");
                created += 1;
                add(&ctx.dc, &name)?;
                live.push(name);
            }
            check_stable(&ctx.dc, &live, &mut first).with_context(|| format!("round {round}"))?;
            thread::sleep(Duration::from_millis(random.below(400)));
        }
        ctx.dc.start_replica(old, LEASE)?;
        // The successor takes over and serves the churn.
        let dc = &ctx.dc;
        wait_for("every live Service addressed", WAIT, || {
            check_stable(dc, &live, &mut first)?;
            all_have_addresses(dc, &live)
        })
        .with_context(|| format!("round {round}"))?;
    }
    println!(
        "     20 leader kills, {created} Services created meanwhile, {} live: no address moved",
        live.len()
    );
    for name in &live {
        remove(&ctx.dc, name)?;
    }
    Ok(started.elapsed())
}

fn sorted(mut hops: Vec<IpAddr>) -> Vec<IpAddr> {
    hops.sort();
    hops
}

/// New requests from the client, each on a new connection, each timed from
/// its start (a request to a dead next hop fails a connect timeout later).
struct Requests {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<Result<Vec<(Instant, bool)>>>,
}

impl Requests {
    fn start(client: String, addr: SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            enter(&client)?;
            let mut made = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                made.push((started, http_get(addr).is_ok()));
                thread::sleep(Duration::from_millis(5));
            }
            Ok(made)
        });
        Self { stop, thread }
    }

    fn stop(self) -> Result<Vec<(Instant, bool)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the request thread panicked"))?
    }
}

/// Makes replica 0 (on node n1) the leader, with replica 1 following and
/// checking n1: a SIGTERM of replica 1 hands the lease over at once.
fn lead_from_n1(dc: &mut Datacenter) -> Result<()> {
    if leader(dc)? == 1 {
        dc.stop_replica(1)?;
        wait_for("replica 0 to lead", WAIT, || {
            Ok((dc.lease_holder()? == Some(0) && established(dc, 0)?).then_some(()))
        })?;
        dc.start_replica(1, LEASE)?;
    }
    // The follower must know n1 answers: only a node it has heard from can
    // be found dead (one it never heard stays announced, unchecked).
    wait_for(
        "replica 1 to hear n1 answer its liveness probe",
        WAIT,
        || {
            Ok(log_of(dc, 1)
                .lines()
                .any(|line| line.contains("checked from now on") && line.contains("n1"))
                .then_some(()))
        },
    )
}

/// The node hosting the leader (n1, also a next hop of every Service) dies
/// silently: its port stops forwarding and the leader process freezes,
/// with no Kubernetes change. The router must keep routing to n2 and n3
/// throughout (it holds the dead leader's paths as long-lived stale,
/// replaced by the successor's), and lose n1's next hop once the dead
/// leader's paths turn long-lived stale after noticing the death (BFD,
/// `bfd graceful`; the restart time is the lease) and the successor
/// announces without n1: it already knows n1 is down, as every replica
/// checks the nodes. The times are printed (docs/bfd.md quotes them). Long-lived connections to pods on n2 and n3
/// survive; new requests fail only while the router still sends some to n1.
fn leader_node_dies(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &mut ctx.dc;
    lead_from_n1(dc)?;
    let nodes: Vec<usize> = (0..dc.nodes.len()).collect();
    let mut servers: Vec<(String, NamedServer)> = Vec::new();
    for pod in dc.nodes.iter().flat_map(|node| &node.pods) {
        servers.push((
            pod.name.clone(),
            NamedServer::start(&pod.ns, HOLD_PORT, &pod.name)?,
        ));
    }
    let hold_spec = ServiceManifest {
        target_port: HOLD_PORT,
        cluster: true,
        ..service(HOLD, HOLD_PORT)
    };
    // The pods' port is HOLD_PORT, not the lab's HTTP port.
    let endpoints = dc.endpoints_on(&nodes);
    dc.apply(
        &format!("endpoints-{NS}-{HOLD}.yaml"),
        &manifests::endpoint_slice(NS, HOLD, false, HOLD_PORT, &endpoints),
    )?;
    dc.apply(&format!("svc-{HOLD}.yaml"), &manifests::service(&hold_spec))?;
    let hold = dc.wait_service_ip(NS, HOLD, WAIT)?;
    dc.wait_next_hops(hold, &dc.hops_of(hold, &nodes), WAIT)?;
    let result = die_and_judge(ctx, hold);
    let dc = &mut ctx.dc;
    // The lab as the other cases expect it, whatever happened: n1 back,
    // its replica awake (it steps down on waking), the Service gone.
    let _ = dc.signal_replica(0, libc::SIGCONT);
    let _ = dc.silence(0, false);
    drop(servers);
    remove(dc, HOLD)?;
    let all = sorted(dc.hops_of(ctx.web, &nodes));
    dc.wait_next_hops(ctx.web, &all, WAIT)?;
    result
}

/// [`leader_node_dies`] with FRR 8.4 on the router, in a lab of its own.
/// FRR has no `bfd graceful`: with `bfd check-control-plane-failure` it
/// ignores the BFD failure of a neighbour whose C bit is clear, as
/// Porter's is, and its hold timer (9 s, above the lease) decides; it
/// then drops the dead leader's paths, n1's with them, while the
/// successor's carry n2 and n3 (docs/bfd.md).
fn leader_node_dies_frr(_: &mut Ctx) -> Result<Duration> {
    let mut frr = lab_with("failover-frr", Daemon::Frr)?;
    leader_node_dies(&mut frr)
}

fn die_and_judge(ctx: &mut Ctx, hold: IpAddr) -> Result<Duration> {
    let dc = &ctx.dc;
    let web = SocketAddr::new(ctx.web, WEB_PORT);
    let client = dc.client.clone();
    let hold_addr = SocketAddr::new(hold, HOLD_PORT);
    // Every path answers once first (as in setup: the lab's first
    // neighbour resolutions are not what this case measures).
    let mut greeted = std::collections::BTreeSet::new();
    let mut last_error = String::new();
    wait_for("a greeting from every pod of hold", WAIT, || {
        let from = run_in(&client, move || {
            NamedClient::connect(hold_addr).map(|c| c.server)
        });
        match from {
            Ok(pod) => {
                greeted.insert(pod);
            }
            Err(error) => last_error = format!("{error:#}"),
        }
        Ok((greeted.len() == dc.nodes.len()).then_some(()))
    })
    .with_context(|| format!("greeted by {greeted:?}; last error: {last_error}"))?;
    let mut held = run_in(&client, move || {
        (0..HELD)
            .map(|_| NamedClient::connect(hold_addr))
            .collect::<Result<Vec<_>>>()
    })?;
    for connection in &mut held {
        let echo = connection.echo("before")?;
        ensure!(echo == format!("{}:before", connection.server), "{echo}");
    }
    let survivors =
        |held: &[NamedClient]| held.iter().filter(|c| !c.server.starts_with("n1-")).count();
    let others = sorted(dc.hops_of(ctx.web, &[1, 2]));
    let n1 = dc.nodes[0].ip;
    let unreachable_before = node_events(dc, "NodeUnreachable", "n1")?;
    // The router must watch the leader with BFD before the cut, or what is
    // measured is its hold timer.
    let leader_ip = dc.replica_ip(0).context("no replica 0")?;
    wait_for(
        "the router's BFD session with replica 0 to be Up",
        WAIT,
        || Ok(dc.router.bfd_up(&dc.lab, leader_ip)?.then_some(())),
    )?;
    let requests = Requests::start(client.clone(), web);
    thread::sleep(Duration::from_millis(500));

    dc.silence(0, true)?;
    dc.signal_replica(0, libc::SIGSTOP)?;
    let cut = Instant::now();
    let cut_wall = std::time::SystemTime::now();
    // The lease file's times (since the epoch) on this test's clock.
    let at = |since_epoch: Duration| {
        let wall = std::time::UNIX_EPOCH + since_epoch;
        match wall.duration_since(cut_wall) {
            Ok(after) => cut + after,
            Err(before) => cut - before.duration(),
        }
    };
    let lease = dc.lease()?.context("no leader lease")?;
    ensure!(
        lease.holder == "ctl-a",
        "replica 0 did not hold the lease at the cut: {lease:?}"
    );
    // The earliest moment a successor may lead.
    let expiry = at(lease.expires());
    let mut taken = None;

    let mut lost_others = Vec::new();
    let mut successor = None;
    // When the router's session with the dead leader went down (its BFD).
    let mut noticed = None;
    let gone = loop {
        let hops = dc.next_hops(ctx.web)?;
        if !others.iter().all(|hop| hops.contains(hop)) {
            lost_others.push((cut.elapsed(), hops.clone()));
        }
        if successor.is_none() && established(dc, 1)? {
            successor = Some(Instant::now());
        }
        if noticed.is_none() && !established(dc, 0)? {
            noticed = Some(Instant::now());
        }
        // The successor's first record: when its winning attempt began.
        if taken.is_none()
            && let Some(record) = dc.lease()?.filter(|record| record.holder == "ctl-b")
        {
            taken = Some(at(record.renewed));
        }
        if !hops.contains(&n1) {
            break Instant::now();
        }
        ensure!(
            cut.elapsed() < WAIT,
            "the router still routes via n1 {WAIT:?} after its death: {hops:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    // Steady afterwards: n1 does not come back, nothing else goes.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(2) {
        let hops = dc.next_hops(ctx.web)?;
        if hops != others {
            lost_others.push((cut.elapsed(), hops));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let made = requests.stop()?;
    let mut broken = (0, 0);
    let mut kept = 0;
    for connection in held.iter_mut().filter(|c| !c.server.starts_with("n1-")) {
        let want = format!("{}:after", connection.server);
        match connection.echo("after") {
            Ok(echo) if echo == want => kept += 1,
            Ok(_) => broken.1 += 1,
            Err(error) => match error
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind)
            {
                Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    broken.1 += 1
                }
                _ => broken.0 += 1,
            },
        }
    }
    let failed_late: Vec<Duration> = made
        .iter()
        .filter(|(started, ok)| !ok && *started >= gone)
        .map(|(started, _)| started.duration_since(cut))
        .collect();
    let failed = made.iter().filter(|(_, ok)| !ok).count();
    let answered_meanwhile = made
        .iter()
        .filter(|(started, ok)| *ok && *started >= cut && *started < gone)
        .count();
    let unreachable = node_events(dc, "NodeUnreachable", "n1")?;
    let taken = taken.context("replica 1 never took the lease")?;
    let noticed = noticed.context("the router never noticed the leader's death")?;
    let gone_after = gone - cut;
    println!(
        "     n1 (and leader replica 0 on it) died; its lease expired {:?} later, replica 1 \
         took it {:?} after that and was Established {:?} after the cut; the router noticed \
         the death {:?} after it and dropped n1 {gone_after:?} after it, {:?} after replica 1 \
         took the lease (lease {LEASE} s)",
        expiry.saturating_duration_since(cut),
        taken.saturating_duration_since(expiry),
        successor.map(|at| at - cut),
        noticed - cut,
        gone.saturating_duration_since(taken),
    );
    println!(
        "     {} new requests ({failed} failed, all started while n1 was a next hop; \
         {answered_meanwhile} answered meanwhile); {kept} of {} held connections to n2/n3 \
         kept, {} reset, {} timed out",
        made.len(),
        survivors(&held),
        broken.0,
        broken.1
    );
    ensure!(
        lost_others.is_empty(),
        "the router lost n2 or n3 meanwhile: {lost_others:?}"
    );
    // The timing is printed above, not judged here: docs/bfd.md says what
    // bounds it. n1 must go, and only once the successor announces.
    ensure!(
        successor.is_some_and(|up| up <= gone),
        "n1 left the route before replica 1 announced: the router had no path to n1's \
         replacement meanwhile"
    );
    ensure!(
        failed_late.is_empty(),
        "new requests failed after n1 left the route, started at {failed_late:?} after the cut"
    );
    ensure!(
        answered_meanwhile > 0,
        "no request was answered between the cut and n1's withdrawal"
    );
    ensure!(
        broken == (0, 0) && kept == survivors(&held),
        "held connections to pods on n2/n3 broke: {} reset, {} timed out",
        broken.0,
        broken.1
    );
    ensure!(
        unreachable > unreachable_before,
        "the new leader wrote no NodeUnreachable Event for n1"
    );
    Ok(gone_after)
}

/// How many `reason` Events name node `node`.
fn node_events(dc: &Datacenter, reason: &str, node: &str) -> Result<usize> {
    let regarding = format!("Node {node}");
    Ok(dc
        .events()?
        .iter()
        .filter(|(r, about, _)| r == reason && *about == regarding)
        .count())
}

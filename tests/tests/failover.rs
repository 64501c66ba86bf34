//! Controller failover in the data-centre lab of tests/src/standby_lab.rs
//! with two controller replicas electing a leader through the `dir:`
//! source's file lease: what the router sees when the leader dies, freezes
//! or loses the lease store, and that no Service's address moves.
//!
//! Both replicas announce: the leader, and its standby while the lease
//! store answers it, with the same paths (docs/controller.md, "Across
//! replicas"). So a failover moves no route; what changes hands is the
//! writing. The lease is 4 s, the BgpPeer's hold time 9 s and its BFD
//! 300 ms × 3 (BIRD: `bfd graceful`; FRR: `neighbor X bfd`). The
//! controllers ask for a restart time of 1 s, then long-lived stale: a
//! silent replica's paths stay until the other's replace them, and all of
//! them stay while both are silent.
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
    datacenter::{Datacenter, http_get},
    lab::wait_for,
    manifests::{self, ServiceManifest},
    netns::{NamedClient, NamedServer, enter, run_in},
    routers::Daemon,
    standby_lab::{
        LEASE, NS, StandbyLab as Ctx, WAIT, WEB_PORT, announcing, answered_by_every_pod,
        bfd_watches, established, kill_leader_node, lead_from_n1, leader, log_of, rejoin,
        revive_leader_node, service,
    },
};

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
    Ctx::start("failover", Daemon::Bird)
}

/// The `Cluster` Service whose long-lived connections
/// `leader_node_dies_silently` holds, and its port (on every pod too).
const HOLD: &str = "hold";
const HOLD_PORT: u16 = 7100;
/// Connections held through the leader's node's death.
const HELD: usize = 24;

/// Waits until `replica` holds the lease, failing if its session goes
/// down meanwhile; returns when it took it, after `since`.
fn takes_over(dc: &Datacenter, replica: usize, since: Instant) -> Result<Duration> {
    loop {
        ensure!(
            established(dc, replica)?,
            "replica {replica}'s session went down {:?} into the failover",
            since.elapsed()
        );
        if dc.lease_holder()? == Some(replica) {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < WAIT,
            "replica {replica} never took the lease"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL of the leader under load: the standby announces all along, so
/// the router's routes never change, and it takes the lease once it
/// expires; no request fails. Returns the failover time (kill -> the
/// successor holds the lease).
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
        ensure!(
            established(dc, new)?,
            "the standby's session went down {:?} after the kill",
            killed.elapsed()
        );
        if dc.lease_holder()? == Some(new) {
            break killed.elapsed();
        }
        ensure!(killed.elapsed() < WAIT, "replica {new} never took over");
        thread::sleep(Duration::from_millis(50));
    };
    thread::sleep(Duration::from_secs(1));
    let after = dc.next_hops(ctx.web)?;
    let report = load.stop()?;
    // Back as a standby before judging, so that a failure here leaves the
    // next cases their two replicas.
    rejoin(dc, old)?;
    ensure!(
        gaps.is_empty(),
        "the router's routes changed during the failover: {gaps:?}"
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
        "     {} requests, none lost; replica {new} announced throughout and took the lease \
         {failover:?} after the kill (lease {LEASE} s)",
        report.ok
    );
    Ok(failover)
}

/// SIGTERM of the leader, as a rollout stops a pod: it gives the lease up,
/// so the standby, which announces throughout, leads at once instead of
/// after the lease; no request fails meanwhile.
fn leader_stop(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &mut ctx.dc;
    let addr = SocketAddr::new(ctx.web, WEB_PORT);
    let old = leader(dc)?;
    let new = 1 - old;
    let load = dc.load(addr);
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    dc.stop_replica(old)?;
    let handover = takes_over(dc, new, stopped)?;
    let report = load.stop()?;
    report.ensure_lossless("across the leader's stop")?;
    ensure!(
        handover < Duration::from_secs(LEASE),
        "replica {new} took {handover:?} to lead: the lease ({LEASE} s) was waited out, not given up"
    );
    println!(
        "     replica {new} led {handover:?} after replica {old} was stopped (lease {LEASE} s), \
         announcing throughout; {} requests, none lost",
        report.ok
    );
    rejoin(dc, old)?;
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

/// The lease store out of reach while both replicas run: each notices on
/// its own that the store no longer answers, and closes its session within
/// the lease duration (the router keeps their routes by graceful restart,
/// long-lived stale); nobody announces past the lease; once the store is
/// back, one replica leads and both announce.
///
/// The router never loses a next hop, so no request times out and no SYN is
/// lost. It does rehash for a moment, twice: when the last replica's paths
/// turn long-lived stale, and when the first replica announces again, BIRD
/// 2.0 re-exports the ECMP route one path at a time (for some tens of
/// microseconds a partial set, down to one next hop, is in the kernel). A
/// `Cluster` flow survives that, as any rehash, so its load must lose
/// nothing; a `Local` flow with a packet in that instant lands on a node
/// without its state and is reset, which is all its load may lose
/// (docs/controller.md).
fn partition(ctx: &mut Ctx) -> Result<Duration> {
    let nodes: Vec<usize> = (0..ctx.dc.nodes.len()).collect();
    let spread = ServiceManifest {
        cluster: true,
        ..service(SPREAD, WEB_PORT)
    };
    ctx.dc.add_service(&spread, &nodes)?;
    let spread = ctx.dc.wait_service_ip(NS, SPREAD, WAIT)?;
    ctx.dc
        .wait_next_hops(spread, &ctx.dc.hops_of(spread, &nodes), WAIT)?;
    answered_by_every_pod(&ctx.dc, SocketAddr::new(spread, WEB_PORT))?;
    let result = partition_under_load(ctx, spread);
    remove(&ctx.dc, SPREAD)?;
    result
}

/// The `Cluster` Service of [`partition`], on the pods of `web`.
const SPREAD: &str = "spread";

fn partition_under_load(ctx: &Ctx, spread: IpAddr) -> Result<Duration> {
    let dc = &ctx.dc;
    let old = leader(dc)?;
    let hops = sorted(dc.hops_of(ctx.web, &[0, 1, 2]));
    let local = dc.load(SocketAddr::new(ctx.web, WEB_PORT));
    let cluster = dc.load(SocketAddr::new(spread, WEB_PORT));
    let cut = LeaseStoreCut::start(dc)?;
    let started = Instant::now();
    let closed = loop {
        if announcing(dc)?.is_empty() {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3 * LEASE),
            "replicas {:?} kept their sessions up without an answer from the lease store",
            announcing(dc)?
        );
        thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        closed < Duration::from_secs(LEASE),
        "the replicas closed their sessions {closed:?} after the cut, later than the {LEASE} s lease"
    );
    // The election says why once its attempt in flight gives up.
    wait_for("the old leader to say why it stepped down", WAIT, || {
        Ok(log_of(dc, old).contains("leadership lost").then_some(()))
    })?;
    // Past the lease: nobody may lead, nobody announces, and the router
    // keeps every route.
    while started.elapsed() < Duration::from_secs(LEASE + 1) {
        let up = announcing(dc)?;
        ensure!(up.is_empty(), "announcing without the lease store: {up:?}");
        let routed = dc.next_hops(ctx.web)?;
        ensure!(
            routed == hops,
            "the router routes via {routed:?} while both replicas are silent"
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(cut);
    let next = leader(dc)?;
    wait_for("both replicas to announce again", WAIT, || {
        Ok((announcing(dc)? == [0, 1]).then_some(()))
    })?;
    let cluster = cluster.stop()?;
    let local = local.stop()?;
    cluster.ensure_lossless("to the Cluster Service across the lease store's partition")?;
    let lost: Vec<&String> = local
        .failures
        .iter()
        .filter(|failure| !failure.contains("reset by peer"))
        .collect();
    ensure!(
        lost.is_empty() && local.retransmitted == 0,
        "{} requests to the Local Service failed other than by a reset, and {} needed a SYN \
         retransmission, across the lease store's partition: {:?}",
        lost.len(),
        local.retransmitted,
        lost.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "     both replicas closed their sessions {closed:?} after the cut (lease {LEASE} s); \
         replica {next} leads after it, both announce; Cluster: {} requests, none lost; \
         Local: {} requests, {} reset by the router's momentary rehash, none otherwise lost",
        cluster.ok,
        local.ok + local.failures.len(),
        local.failures.len()
    );
    Ok(closed)
}

/// SIGSTOP of the leader past its lease, then SIGCONT: the router drops the
/// frozen session (BFD) while the standby, announcing throughout, takes the
/// lease once it expires; the old leader, on waking, finds its deadline
/// passed, closes what it had, and comes back as a standby: it never leads
/// again, and the router keeps every route throughout.
fn frozen_leader(ctx: &mut Ctx) -> Result<Duration> {
    let dc = &ctx.dc;
    let old = leader(dc)?;
    let new = 1 - old;
    let hops = sorted(dc.hops_of(ctx.web, &[0, 1, 2]));
    bfd_watches(dc, old)?;
    dc.signal_replica(old, libc::SIGSTOP)?;
    let frozen = Instant::now();
    let mut gaps = Vec::new();
    let mut dropped = None;
    let handover = loop {
        let up = announcing(dc)?;
        if !up.contains(&old) && dropped.is_none() {
            dropped = Some(frozen.elapsed());
        }
        let routed = dc.next_hops(ctx.web)?;
        if routed != hops {
            gaps.push((frozen.elapsed(), routed));
        }
        if !up.contains(&new) || frozen.elapsed() > WAIT {
            // Let it run before failing, or the lab's teardown waits on it.
            let _ = dc.signal_replica(old, libc::SIGCONT);
            bail!(
                "{:?} after freezing replica {old}, the router has sessions with {up:?}",
                frozen.elapsed()
            );
        }
        if dc.lease_holder()? == Some(new) {
            break frozen.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Frozen past its lease, then woken.
    while frozen.elapsed() < Duration::from_secs(LEASE + 2) {
        thread::sleep(Duration::from_millis(100));
    }
    dc.signal_replica(old, libc::SIGCONT)?;
    let woke = Instant::now();
    wait_for("the woken replica to announce as a standby", WAIT, || {
        Ok((announcing(dc)? == [0, 1]).then_some(()))
    })?;
    while woke.elapsed() < Duration::from_secs(4) {
        ensure!(
            dc.lease_holder()? == Some(new),
            "{:?} after waking replica {old}, the lease is {:?}'s",
            woke.elapsed(),
            dc.lease_holder()?
        );
        let routed = dc.next_hops(ctx.web)?;
        if routed != hops {
            gaps.push((frozen.elapsed(), routed));
        }
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        gaps.is_empty(),
        "the router's routes changed at {gaps:?} after the freeze"
    );
    let text = log_of(dc, old);
    ensure!(
        text.contains("leadership lost") || text.contains("leadership changed leader=false"),
        "replica {old} did not step down on waking"
    );
    println!(
        "     router dropped the frozen leader after {dropped:?}, replica {new} led after \
         {handover:?} (lease {LEASE} s, BFD 300 ms x 3), announcing throughout"
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

/// Attempts made one after another on a thread of their own until stopped:
/// when each started, and whether it succeeded.
struct Attempts {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<Result<Vec<(Instant, bool)>>>,
}

impl Attempts {
    /// Runs `prepare` on the thread, then `attempt` every `pause` until
    /// stopped or until it has nothing left to try (None).
    fn start(
        prepare: impl FnOnce() -> Result<()> + Send + 'static,
        pause: Duration,
        mut attempt: impl FnMut() -> Option<bool> + Send + 'static,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            prepare()?;
            let mut made = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let Some(ok) = attempt() else { break };
                made.push((started, ok));
                thread::sleep(pause);
            }
            Ok(made)
        });
        Self { stop, thread }
    }

    /// New requests from the client, each on a new connection, each timed
    /// from its start (a request to a dead next hop fails a connect timeout
    /// later).
    fn requests(client: String, addr: SocketAddr) -> Self {
        Self::start(
            move || enter(&client),
            Duration::from_millis(5),
            move || Some(http_get(addr).is_ok()),
        )
    }

    /// Echoes on `connections`, in turn. A connection whose echo goes
    /// unanswered is dropped (its next reply would be this one's).
    fn echoes(mut connections: Vec<NamedClient>) -> Self {
        let mut next = 0;
        Self::start(
            || Ok(()),
            Duration::from_millis(20),
            move || {
                if connections.is_empty() {
                    return None;
                }
                next %= connections.len();
                let connection = &mut connections[next];
                let want = format!("{}:meanwhile", connection.server);
                let answered = connection.echo("meanwhile").is_ok_and(|echo| echo == want);
                if answered {
                    next += 1;
                } else {
                    connections.swap_remove(next);
                }
                Some(answered)
            },
        )
    }

    fn stop(self) -> Result<Vec<(Instant, bool)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("an attempts thread panicked"))?
    }
}

/// The node hosting the leader (n1, also a next hop of every Service) dies
/// silently: its port stops forwarding and the leader process freezes,
/// with no Kubernetes change. The router must keep routing to n2 and n3
/// throughout, through the standby's paths, and lose n1's next hop once
/// both hold: the standby has withdrawn n1 (its liveness check, BFD's
/// speed), and the dead leader's paths are gone or long-lived stale (the
/// router's BFD noticed the death; BIRD: after the 1 s restart time).
/// The times are printed (docs/bfd.md quotes them). Long-lived connections
/// to pods on n2 and n3 survive; new requests fail only while the router
/// still sends some to n1.
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
    let _ = revive_leader_node(dc);
    drop(servers);
    remove(dc, HOLD)?;
    let all = sorted(dc.hops_of(ctx.web, &nodes));
    dc.wait_next_hops(ctx.web, &all, WAIT)?;
    result
}

/// [`leader_node_dies`] with FRR 8.4 on the router, in a lab of its own.
/// FRR has no `bfd graceful`: with `neighbor X bfd` a BFD failure takes the
/// dead leader's session down at once, paths and all, and the standby's
/// carry n2 and n3 (docs/bfd.md).
fn leader_node_dies_frr(_: &mut Ctx) -> Result<Duration> {
    let mut frr = Ctx::start("failover-frr", Daemon::Frr)?;
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
    // Connections of their own, to pods on n2 and n3, echoed on from the
    // cut on: traffic to the other nodes' pods while n1 is still routed. A
    // probe the router hashes to n1 goes unanswered then, so it leaves the
    // rotation; the held connections are judged only after n1 has gone.
    let probes = run_in(&client, move || {
        (0..HELD)
            .map(|_| NamedClient::connect(hold_addr))
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .filter(|c| !c.server.starts_with("n1-"))
    .collect::<Vec<_>>();
    // A probe hashed to n1 holds the rotation up this long at most, well
    // inside the window.
    for probe in &probes {
        probe.set_reply_timeout(Duration::from_millis(100))?;
    }
    let survivors =
        |held: &[NamedClient]| held.iter().filter(|c| !c.server.starts_with("n1-")).count();
    let others = sorted(dc.hops_of(ctx.web, &[1, 2]));
    let n1 = dc.nodes[0].ip;
    let unreachable_before = node_events(dc, "NodeUnreachable", "n1")?;
    bfd_watches(dc, 0)?;
    let requests = Attempts::requests(client.clone(), web);
    let echoes = Attempts::echoes(probes);
    thread::sleep(Duration::from_millis(500));

    kill_leader_node(dc)?;
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
    // Moments the standby's session was not up (it must be, throughout).
    let mut standby_down = Vec::new();
    // When the router's session with the dead leader went down (its BFD).
    let mut noticed = None;
    // The successor's first record: when its winning attempt began.
    let take = |taken: &mut Option<Instant>| -> Result<()> {
        if taken.is_none()
            && let Some(record) = dc.lease()?.filter(|record| record.holder == "ctl-b")
        {
            *taken = Some(at(record.renewed));
        }
        Ok(())
    };
    let gone = loop {
        let hops = dc.next_hops(ctx.web)?;
        if !others.iter().all(|hop| hops.contains(hop)) {
            lost_others.push((cut.elapsed(), hops.clone()));
        }
        if !established(dc, 1)? {
            standby_down.push(cut.elapsed());
        }
        if noticed.is_none() && !established(dc, 0)? {
            noticed = Some(Instant::now());
        }
        take(&mut taken)?;
        if !hops.contains(&n1) {
            break Instant::now();
        }
        ensure!(
            cut.elapsed() < WAIT,
            "the router still routes via n1 {WAIT:?} after its death: {hops:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    // Steady afterwards, until the standby leads and a second more: n1 does
    // not come back, nothing else goes.
    let mut steady = None;
    while steady.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(1)) {
        let hops = dc.next_hops(ctx.web)?;
        if hops != others {
            lost_others.push((cut.elapsed(), hops));
        }
        take(&mut taken)?;
        if steady.is_none() && taken.is_some() {
            steady = Some(Instant::now());
        }
        ensure!(cut.elapsed() < WAIT, "replica 1 never took the lease");
        thread::sleep(Duration::from_millis(50));
    }
    let made = requests.stop()?;
    let echoed = echoes.stop()?;
    let echoed_meanwhile = |answered: bool| {
        echoed
            .iter()
            .filter(|(started, ok)| *ok == answered && *started >= cut && *started < gone)
            .count()
    };
    let echoed = (echoed_meanwhile(true), echoed_meanwhile(false));
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
    // The new leader writes the Event once it leads.
    let unreachable = wait_for("a NodeUnreachable Event for n1", WAIT, || {
        let now = node_events(dc, "NodeUnreachable", "n1")?;
        Ok((now > unreachable_before).then_some(now))
    })
    .unwrap_or(unreachable_before);
    let taken = taken.context("replica 1 never took the lease")?;
    let noticed = noticed.context("the router never noticed the leader's death")?;
    let gone_after = gone - cut;
    println!(
        "     n1 (and leader replica 0 on it) died; the router noticed the death {:?} after \
         it and dropped n1 {gone_after:?} after it, with replica 1 announcing throughout; \
         the lease expired {:?} after the cut, and replica 1 took it {:?} after that \
         (lease {LEASE} s)",
        noticed - cut,
        expiry.saturating_duration_since(cut),
        taken.saturating_duration_since(expiry),
    );
    println!(
        "     {} new requests ({failed} failed, all started while n1 was a next hop; \
         {answered_meanwhile} answered meanwhile); {} echoes to pods on n2/n3 answered \
         meanwhile, {} not; {kept} of {} held connections to n2/n3 kept, {} reset, {} timed \
         out",
        made.len(),
        echoed.0,
        echoed.1,
        survivors(&held),
        broken.0,
        broken.1
    );
    ensure!(
        lost_others.is_empty(),
        "the router lost n2 or n3 meanwhile: {lost_others:?}"
    );
    // The timing is printed above, not judged here: docs/bfd.md says what
    // bounds it.
    ensure!(
        standby_down.is_empty(),
        "replica 1's session was down at {standby_down:?} after the cut"
    );
    ensure!(
        failed_late.is_empty(),
        "new requests failed after n1 left the route, started at {failed_late:?} after the cut"
    );
    ensure!(
        echoed.0 > 0,
        "between the cut and n1's withdrawal, {} echoes to pods on n2/n3 were answered and \
         {} were not",
        echoed.0,
        echoed.1
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

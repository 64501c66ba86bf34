//! `porter-controller`: EIP allocation for LoadBalancer Services and their
//! BGP announcements. See docs/controller.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use porter_api::cli::{init_logging, parse_duration};
use porter_api::lease::{CONTROLLER_LEASE_DIR, FileLeaseDir};
use porter_api::metrics_http::spawn_server;
use porter_api::source::{SourceArg as Source, dir, kube as kube_source, layer2};
use porter_controller::bgp::LocalSettings;
use porter_controller::bgp_speaker::SpeakerAnnouncer;
use porter_controller::leader_lease::{FileLeaderLease, KubeLeaderLease, run_elected};
use porter_controller::leadership::{Leadership, Timing};
use porter_controller::metrics::Metrics;
use porter_controller::node_check::Timing as NodeCheckTiming;
use porter_controller::node_check_runtime::NodeChecker;
use porter_controller::peer_auth::SecretScope;
use porter_controller::run::{Controller, Settings, run};
use tokio::sync::watch;

/// A lease or holder name: one file name, and a valid Lease name or
/// holder identity (no `/`, no spaces, which the file format separates by).
fn parse_lease_name(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}`: use letters, digits, `-`, `.` and `_` only (a Lease name and a file name)"
        ))
    }
}

/// Gives LoadBalancer Services an external IP from Eip pools and announces
/// each one over BGP, with one path per node that has a ready endpoint.
#[derive(Parser, Debug)]
#[command(name = "porter-controller", version)]
struct Args {
    /// Without a command: run the controller.
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the cluster state comes from: `kube` (the API server, from the
    /// in-cluster config or KUBECONFIG) or `dir:PATH` (a directory of YAML
    /// manifests, watched; status and events are written to PATH/status/).
    /// `explain` reads the same.
    #[arg(long, default_value = "kube", env = "PORTER_SOURCE", global = true)]
    source: Source,
    /// Address to serve Prometheus metrics on, at /metrics, and the probes:
    /// /healthz (the process answers) and /readyz (the cluster state is
    /// loaded: the caches are synced, or the directory read). `[::]` takes
    /// IPv4 too (and falls back to `0.0.0.0` where IPv6 is off); a node
    /// address limits it to that address.
    #[arg(long, default_value = "[::]:9190", env = "PORTER_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// How often `dir:` checks its directory for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// A full pass at least this often, even without changes (retries and drift).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Wait before retrying after a write to the cluster failed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    retry_interval: Duration,
    /// Lease the replicas elect a leader with: a coordination.k8s.io Lease
    /// with `kube`; with `dir:PATH`, the file PATH/controller-leases/NAME,
    /// so several processes sharing the directory elect one leader.
    #[arg(long, default_value = "porter-controller", value_parser = parse_lease_name)]
    lease_name: String,
    /// Namespace of the lease; the pod's own namespace in a Deployment.
    #[arg(long, default_value = "porter-system", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// Namespace of the agents' Layer 2 Leases, whose holders the Eip status
    /// reports (`kube`); the agents' `--layer2-namespace` must match.
    #[arg(long, default_value = porter_api::layer2::LEASE_NAMESPACE, env = "PORTER_LAYER2_NAMESPACE")]
    layer2_namespace: String,
    /// This replica's name in the lease and in Events; the pod name in a
    /// Deployment. Must differ between replicas (two processes with one
    /// identity would both lead). Default: the host name.
    #[arg(long, env = "POD_NAME", value_parser = parse_lease_name)]
    identity: Option<String>,
    /// Seconds a leader holds the lease without renewing it. The leader
    /// renews every sixth of it; when no renewal has succeeded for two
    /// thirds of it, the leader steps down by itself (stops writing, and
    /// closes its BGP sessions). The other replicas announce as standbys
    /// while the lease store answers them, with the same deadline, so a
    /// failover moves no route; the writes resume within this long plus
    /// one renewal interval.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Namespaces to read Secrets from (BgpPeer `authPasswordSecretRef`),
    /// comma-separated; a reference without a namespace means the first.
    /// Default: the controller's own namespace (that of --lease-namespace).
    /// With `kube`, each needs a Role letting the controller get, list and
    /// watch Secrets there.
    #[arg(long, value_delimiter = ',', env = "PORTER_SECRET_NAMESPACES")]
    secret_namespaces: Vec<String>,
    /// Central mode (speakerMode: controller): every replica sends a
    /// liveness probe (UDP to port 3785) to the InternalIP of every node
    /// announced as a next hop this often; the node's XDP program answers
    /// it. Every replica that announces (the leader and its standbys)
    /// withdraws the nodes that stop answering; the leader alone writes
    /// their Events and Node conditions. BFD's default. See docs/bfd.md.
    #[arg(long, default_value = "300ms", value_parser = parse_check_interval)]
    node_check_interval: Duration,
    /// Unanswered probes in a row after which a node's paths are withdrawn
    /// (2-255). With the interval, the detection time: 300ms x 3 = 0.9 s.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=255))]
    node_check_multiplier: u32,
    /// How long a withdrawn node must answer without a gap before its paths
    /// are announced again.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_check_hold: Duration,
    /// Turns the node liveness check off: nodes leave the paths only when
    /// Kubernetes says so (NotReady, endpoints gone).
    #[arg(long)]
    no_node_check: bool,
    /// Graceful restart as RFC 4724 alone, for routers without long-lived
    /// graceful restart (RFC 9494): the routers keep a silent replica's
    /// routes for the restart time, merged with the other replicas'. By
    /// default --restart-time of it is sent as the restart time, the rest
    /// as the long-lived stale time, so that a dead replica's paths stop
    /// counting soon after its routers notice (docs/bfd.md, "When the
    /// leader's node dies").
    #[arg(long)]
    classic_graceful_restart: bool,
    /// Seconds of graceful restart the routers keep a silent replica's
    /// paths as good as fresh ones (RFC 4724's restart time; 0-4095), before
    /// they count as long-lived stale. With two or more replicas keep it
    /// short: the other replicas announce the same paths, and a dead
    /// replica's node stays a next hop for this long after the routers
    /// notice. With one replica, set it to how long a restart takes (the
    /// lease, say), so that a restarted replica's paths are merged with the
    /// stale ones instead of replacing them one next hop at a time.
    #[arg(long, default_value_t = porter_controller::bgp::RESTART_SECONDS, value_parser = clap::value_parser!(u16).range(0..=4095))]
    restart_time: u16,
    /// This replica's BGP identifier when BgpConf `default` sets no
    /// routerId: the first IPv4 address of a comma-separated list (IPv6
    /// addresses are skipped). The deploy manifest passes the Pod's
    /// addresses (`status.podIPs`, its node's under hostNetwork), so that
    /// each replica has its own and no router sees two sessions with one
    /// identifier.
    #[arg(long, env = "PORTER_ROUTER_ID", value_parser = parse_addresses)]
    router_id: Option<Addresses>,
}

/// `--router-id`'s addresses.
#[derive(Clone, Debug, PartialEq)]
struct Addresses(Vec<IpAddr>);

/// A comma-separated list; empty items name nothing, so that an env var
/// filled from a Pod field that is still empty starts the replica (with
/// no identifier of its own) instead of failing it.
fn parse_addresses(s: &str) -> Result<Addresses, String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse()
                .map_err(|_| format!("{item:?} is not an IP address"))
        })
        .collect::<Result<_, _>>()
        .map(Addresses)
}

/// `--router-id`'s identifier: a BGP identifier is four bytes.
fn first_ipv4(addresses: Option<&Addresses>) -> Option<Ipv4Addr> {
    addresses?.0.iter().find_map(|address| match address {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

fn parse_check_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_duration(s)?;
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(60) {
        return Err(format!("`{s}`: must be 10ms to 60s"));
    }
    Ok(interval)
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Remove Porter's finalizer (and the addresses it set) from every
    /// Service, before deleting Porter; see docs/install.md.
    Uninstall(porter_controller::uninstall::UninstallArgs),
    /// Why each address of a Service is, or is not, announced through
    /// each node and sent to each peer (reads --source, writes nothing;
    /// see docs/troubleshooting.md).
    ///
    /// For each address: its pool and why that pool; for every node
    /// `announced`, or the word for why not (NoReadyEndpoint, UnknownNode,
    /// NotReady, DataplaneFrozen, NoInternalIP, LivenessWithdrawn,
    /// PoolNodeSelector), from the predicates the controller announces by;
    /// for every BgpPeer its sessions and whether each path was sent
    /// (PoolPeerSelector, PeerNodeSelector, SessionDown). Exits non-zero
    /// when the Service does not exist.
    Explain(porter_controller::explain::cli::ExplainArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let args = Args::parse();
    match args.command {
        Some(Command::Uninstall(uninstall)) => {
            return porter_controller::uninstall::run(uninstall).await;
        }
        Some(Command::Explain(explain)) => {
            return porter_controller::explain::cli::run(
                explain,
                &args.source,
                &args.layer2_namespace,
            )
            .await;
        }
        None => {}
    }
    if args.lease_duration < 2 {
        bail!("--lease-duration must be at least 2 seconds");
    }
    let metrics = Arc::new(Metrics::default());
    let served = metrics.clone();
    let health = spawn_server(args.metrics_addr, move || served.render())
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "metrics at /metrics, probes at /healthz and /readyz");
    let mut secret_namespaces = args.secret_namespaces.clone();
    secret_namespaces.retain(|n| !n.trim().is_empty());
    let scope = SecretScope::new(secret_namespaces)
        .or_else(|| SecretScope::new(vec![args.lease_namespace.clone()]))
        .unwrap_or_default();
    let mut controller = Controller::new(
        SpeakerAnnouncer::spawn((!args.classic_graceful_restart).then_some(args.restart_time)),
        metrics.clone(),
    )
    .with_local_settings(LocalSettings {
        secrets: scope.clone(),
        router_id: first_ipv4(args.router_id.as_ref()),
    });
    if !args.no_node_check {
        let timing = NodeCheckTiming {
            interval: args.node_check_interval,
            multiplier: args.node_check_multiplier,
            hold: args.node_check_hold,
        };
        let checker = NodeChecker::spawn(timing, metrics.clone())
            .context("cannot open a UDP socket for the node liveness check")?;
        tracing::info!(
            interval = ?timing.interval,
            multiplier = timing.multiplier,
            hold = ?timing.hold,
            "node liveness check on (central mode: this replica leaves the nodes that stop answering out of what it announces)"
        );
        controller = controller.with_node_check(checker);
    }
    let settings = Settings {
        resync: args.resync_interval,
        retry: args.retry_interval,
    };
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let timing = Timing::for_lease(Duration::from_secs(args.lease_duration));
    let (publish, leader) = watch::channel(Leadership::Follower);
    match args.source {
        Source::Dir(path) => {
            let (snapshots, writer) = dir::start(path.clone(), args.poll_interval)
                .with_context(|| format!("cannot read manifests in {}", path.display()))?;
            tracing::info!(dir = %path.display(), "reading the cluster from manifests");
            let store = FileLeaseDir::new(path.join(CONTROLLER_LEASE_DIR))
                .context("cannot set up the leader election lease")?;
            let lease = FileLeaderLease::new(store, &args.lease_name, &identity);
            tracing::info!(identity, lease = %path.join(CONTROLLER_LEASE_DIR).join(&args.lease_name).display(), "electing a leader");
            let holders =
                layer2::watch_dir(path.join(porter_api::layer2::LEASE_DIR), args.poll_interval);
            let snapshots = layer2::with_holders(snapshots, holders);
            health.set_ready(true);
            let work = run(controller, snapshots, writer, leader, settings);
            run_elected(lease, timing, publish, metrics, work).await?;
        }
        Source::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the API server: run in a pod or set KUBECONFIG")?;
            // An API server unreachable for a while (a control plane
            // upgrade, a network policy being fixed) leaves this replica a
            // follower that keeps trying and says why, instead of exiting
            // into a crash loop.
            let lease = KubeLeaderLease::new(
                client.clone(),
                &args.lease_namespace,
                &args.lease_name,
                &identity,
            );
            tracing::info!(identity, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "electing a leader");
            let work = async move {
                tracing::info!(identity, "waiting for the cluster state");
                let watch = kube_source::Watch {
                    secret_namespaces: scope.namespaces().to_vec(),
                    health: health.clone(),
                };
                tracing::info!(namespaces = ?watch.secret_namespaces, "reading Secrets (BgpPeer passwords)");
                let (snapshots, stores) = kube_source::start_watching(client.clone(), &watch).await;
                let holders =
                    layer2::watch_kube(client.clone(), &args.layer2_namespace, &health).await;
                let snapshots = layer2::with_holders(snapshots, holders);
                // Every store is listed: this replica can lead at once.
                health.set_ready(true);
                let writer = kube_source::KubeWriter::new(client, Some(identity), Some(stores));
                run(controller, snapshots, writer, leader, settings).await;
            };
            run_elected(lease, timing, publish, metrics, work).await?;
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "porter-controller".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from(["porter-controller", "--source", "dir:/tmp/x"])
            .expect("valid flags");
        assert_eq!(args.source, Source::Dir("/tmp/x".into()));
        assert!(Args::try_parse_from(["porter-controller", "--source", "etcd"]).is_err());
        let defaults = Args::try_parse_from(["porter-controller"]).expect("defaults");
        assert_eq!(
            (
                defaults.node_check_interval,
                defaults.node_check_multiplier,
                defaults.node_check_hold,
                defaults.no_node_check
            ),
            (Duration::from_millis(300), 3, Duration::from_secs(5), false)
        );
        assert_eq!(defaults.restart_time, 1);
        // `status.podIPs` of a dual-stack Pod, IPv6 first: the IPv4 one.
        let dual = Args::try_parse_from(["porter-controller", "--router-id", "fd00::7,10.0.0.7"])
            .expect("a list of addresses");
        assert_eq!(
            first_ipv4(dual.router_id.as_ref()),
            Some(Ipv4Addr::new(10, 0, 0, 7))
        );
        for none in ["fd00::7", "", " , "] {
            let parsed = Args::try_parse_from(["porter-controller", "--router-id", none])
                .expect("no IPv4 address is no error");
            assert_eq!(first_ipv4(parsed.router_id.as_ref()), None, "{none:?}");
        }
        for bad in [
            ["--node-check-interval", "5ms"],
            ["--node-check-interval", "2m"],
            ["--node-check-multiplier", "1"],
            ["--restart-time", "4096"],
            ["--router-id", "node-1"],
            ["--router-id", "10.0.0.7,node-1"],
        ] {
            let parsed = Args::try_parse_from(["porter-controller", bad[0], bad[1]]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        let uninstall = Args::try_parse_from(["porter-controller", "uninstall", "--force"])
            .expect("the uninstall command");
        assert!(matches!(uninstall.command, Some(Command::Uninstall(u)) if u.force));
        let explain = Args::try_parse_from([
            "porter-controller",
            "explain",
            "shop/web",
            "--source",
            "dir:/x",
        ])
        .expect("the explain command, --source after it");
        assert_eq!(explain.source, Source::Dir("/x".into()));
        assert!(
            matches!(explain.command, Some(Command::Explain(e)) if e.service.to_string() == "shop/web")
        );
        assert!(parse_lease_name("porter-controller").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            assert!(parse_lease_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}

//! `porter-controller`: EIP allocation for LoadBalancer Services and their
//! BGP announcements. See docs/controller.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use porter_api::metrics_http::{Health, serve_with_health};
use porter_api::source::{SourceArg as Source, dir, kube as kube_source, layer2};
use porter_controller::bgp_speaker::SpeakerAnnouncer;
use porter_controller::metrics::Metrics;
use porter_controller::peer_auth::SecretScope;
use porter_controller::run::{Controller, Settings, run};
use tokio::sync::watch;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}`: unit must be ms, s or m")),
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
    #[arg(long, default_value = "kube", env = "PORTER_SOURCE")]
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
    /// Lease (coordination.k8s.io) the replicas elect a leader with; `kube` only.
    #[arg(long, default_value = "porter-controller")]
    lease_name: String,
    /// Namespace of the lease; the pod's own namespace in a Deployment.
    #[arg(long, default_value = "porter-system", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// Namespace of the agents' Layer 2 Leases, whose holders the Eip status
    /// reports (`kube`); the agents' `--layer2-namespace` must match.
    #[arg(long, default_value = porter_api::layer2::LEASE_NAMESPACE, env = "PORTER_LAYER2_NAMESPACE")]
    layer2_namespace: String,
    /// This replica's name in the lease and in Events; the pod name in a
    /// Deployment. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader holds the lease without renewing it. A failover takes
    /// at most this long; BGP graceful restart keeps routes meanwhile.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Namespaces to read Secrets from (BgpPeer `authPasswordSecretRef`),
    /// comma-separated; a reference without a namespace means the first.
    /// Default: the controller's own namespace (that of --lease-namespace).
    /// With `kube`, each needs a Role letting the controller get, list and
    /// watch Secrets there.
    #[arg(long, value_delimiter = ',', env = "PORTER_SECRET_NAMESPACES")]
    secret_namespaces: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Remove Porter's finalizer (and the addresses it set) from every
    /// Service, before deleting Porter; see docs/install.md.
    Uninstall(porter_controller::uninstall::UninstallArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::Uninstall(uninstall)) = args.command {
        return porter_controller::uninstall::run(uninstall).await;
    }
    if args.lease_duration < 2 {
        bail!("--lease-duration must be at least 2 seconds");
    }
    let metrics = Arc::new(Metrics::default());
    let listener = porter_api::metrics_http::bind(args.metrics_addr)
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let served = metrics.clone();
    let health = Health::starting();
    tokio::spawn(serve_with_health(
        listener,
        move || served.render(),
        health.clone(),
    ));
    tracing::info!(addr = %args.metrics_addr, "metrics at /metrics, probes at /healthz and /readyz");
    let mut secret_namespaces = args.secret_namespaces.clone();
    secret_namespaces.retain(|n| !n.trim().is_empty());
    let scope = SecretScope::new(secret_namespaces)
        .or_else(|| SecretScope::new(vec![args.lease_namespace.clone()]))
        .unwrap_or_default();
    let controller =
        Controller::new(SpeakerAnnouncer::spawn(), metrics).with_secret_scope(scope.clone());
    let settings = Settings {
        resync: args.resync_interval,
        retry: args.retry_interval,
    };
    match args.source {
        Source::Dir(path) => {
            let (snapshots, writer) = dir::start(path.clone(), args.poll_interval)
                .with_context(|| format!("cannot read manifests in {}", path.display()))?;
            tracing::info!(dir = %path.display(), "reading the cluster from manifests");
            let holders =
                layer2::watch_dir(path.join(porter_api::layer2::LEASE_DIR), args.poll_interval);
            let snapshots = layer2::with_holders(snapshots, holders);
            health.set_ready(true);
            // One process owns a directory: it is always the leader.
            let (_keep, leader) = watch::channel(true);
            run(controller, snapshots, writer, leader, settings).await;
        }
        Source::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the API server: run in a pod or set KUBECONFIG")?;
            let identity = args.identity.unwrap_or_else(hostname);
            // The API server may be unreachable for a while (a control plane
            // upgrade, a network policy being fixed): keep trying and say
            // why, as the agent does, instead of exiting into a crash loop.
            let lease = loop {
                let built =
                    kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                        .with_namespace(&args.lease_namespace)
                        .with_identity(&identity)
                        .with_duration(args.lease_duration)
                        .with_grace((args.lease_duration / 3).max(1))
                        .with_field_manager(porter_api::annotations::FIELD_MANAGER)
                        .build()
                        .await;
                match built {
                    Ok(lease) => break lease,
                    Err(error) => {
                        tracing::error!(
                            %error,
                            lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
                            "cannot set up the leader election lease (is the API server reachable, and may this service account manage Leases?); retrying in {:?}",
                            args.retry_interval
                        );
                        tokio::time::sleep(args.retry_interval).await;
                    }
                }
            };
            let (leader, lease_task) = lease.watch().await;
            tracing::info!(identity, "waiting for the cluster state");
            let watch = kube_source::Watch {
                secret_namespaces: scope.namespaces().to_vec(),
                health: health.clone(),
            };
            tracing::info!(namespaces = ?watch.secret_namespaces, "reading Secrets (BgpPeer passwords)");
            let (snapshots, stores) = kube_source::start_watching(client.clone(), &watch).await;
            let holders = layer2::watch_kube(client.clone(), &args.layer2_namespace, &health).await;
            let snapshots = layer2::with_holders(snapshots, holders);
            // Every store is listed: this replica can lead at once.
            health.set_ready(true);
            let writer = kube_source::KubeWriter::new(client, Some(identity), Some(stores));
            // Without a working election this replica cannot know whether it
            // may write: stop, and let the Deployment restart it.
            tokio::select! {
                () = run(controller, snapshots, writer, leader, settings) => {}
                r = lease_task => match r {
                    Ok(Ok(_)) => bail!("leader election ended"),
                    Ok(Err(e)) => bail!("leader election failed: {e}"),
                    Err(e) => bail!("leader election task died: {e}"),
                },
            }
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
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
        let uninstall = Args::try_parse_from(["porter-controller", "uninstall", "--force"])
            .expect("the uninstall command");
        assert!(matches!(uninstall.command, Some(Command::Uninstall(u)) if u.force));
    }
}

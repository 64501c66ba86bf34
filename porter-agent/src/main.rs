//! `porter-agent`: runs on every node and keeps its XDP data plane in step
//! with the cluster. See docs/agent.md.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use porter_agent::{
    DataplaneConfig, Forwarding, PinLayout,
    bgp::NodeSpeaker,
    dataplane::attach::{self, XdpModePreference},
    inspect,
    layer2::{
        Layer2,
        announce::FrameSender,
        kube_lease::KubeLeases,
        lease::FileLeases,
        lease_rounds::{LeaseRounds, Timing},
        leases::Leases,
    },
    metrics::Metrics,
    sync::{self, Agent, AgentSettings, Backoff},
    writer::ClusterWriter,
};
use porter_api::annotations::PORTER_NAMESPACE;
use porter_api::cli::{init_logging, parse_duration};
use porter_api::metrics_http::{Health, spawn_server};
use porter_api::peer_auth::SecretScope;
use porter_api::source::{SnapshotReceiver, SourceArg, dir, kube as kube_source};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "porter-agent",
    version,
    about = "Porter node agent: programs this node's XDP load balancer from the cluster state",
    long_about = "Porter node agent. Loads the XDP (ingress) and tc (reply) programs onto the \
                  node's uplinks, pins them and their maps under --bpffs, and keeps the maps \
                  serving this node's ready endpoints of every Porter Service. Stopping it leaves \
                  the data plane serving; the next agent adopts it. An agent that cannot \
                  program its node (pins of a newer agent, maps of other sizes) sets the Node \
                  condition PorterDataplaneReady=False, which withdraws the node's paths, and \
                  fails /readyz saying why. `porter-agent cleanup` \
                  removes everything it installed; `porter-agent inspect` shows the pinned state. \
                  With BgpConf `speakerMode: node` it also announces this node's EIPs over BGP \
                  to the BgpPeers whose nodeSelector matches the node (docs/bgp-policy.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Program the data plane and keep it in sync until stopped (SIGINT/SIGTERM).
    /// Stopping leaves the programs attached and serving; run `cleanup` to remove them.
    Run(RunArgs),
    /// Detach every XDP program and tc filter and remove every pin the agent created.
    Cleanup(PinArgs),
    /// Print the pinned state as tables (works while an agent runs): services,
    /// backends, Maglev size, map occupancy (conntrack included) and counters.
    Inspect(PinArgs),
}

#[derive(clap::Args, Debug)]
struct PinArgs {
    /// Mounted bpf filesystem under which Porter pins its maps and links
    /// (in `<bpffs>/porter/v<layout>/`).
    #[arg(long, env = "PORTER_BPFFS", default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// This node's name, as in the Node object and in EndpointSlice `nodeName`s.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Uplink interface(s) to attach to; repeat the flag for several. Default:
    /// the interface holding the node's InternalIP.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Where the cluster state comes from: `kube` (the API server, from the
    /// in-cluster config or KUBECONFIG) or `dir:PATH` (a directory of YAML
    /// manifests, watched).
    #[arg(long, default_value = "kube", env = "PORTER_SOURCE")]
    source: SourceArg,
    /// Address to serve Prometheus metrics on, at /metrics, and the probes
    /// /healthz and /readyz. `[::]` takes IPv4 too (and falls back to
    /// `0.0.0.0` where IPv6 is off); a node address limits it to that address.
    #[arg(long, default_value = "[::]:9191", env = "PORTER_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// XDP attach mode: `auto` tries native (driver) mode and falls back to generic.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModePreference,
    /// How often `dir:` checks its directory for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// A full sync at least this often, even without changes.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Maglev table size M per service: a prime at least 100 times the most
    /// backends a service has here (all of the cluster's for an
    /// `externalTrafficPolicy: Cluster` Service). Every agent of a cluster
    /// must use the same M, so that all build the same tables. Fixed when
    /// the maps are first pinned.
    #[arg(long, default_value_t = porter_agent::DEFAULT_MAGLEV_SIZE)]
    maglev_size: u32,
    /// Most EIP:port/protocol services this node can serve. Fixed when the
    /// maps are first pinned.
    #[arg(long, default_value_t = porter_common::limits::DEFAULT_MAX_SERVICES)]
    max_services: u32,
    /// How translated packets reach a local pod. `redirect` skips the node's
    /// routing and netfilter (more packets per second per CPU) but is
    /// correct only where the node neither masquerades pod traffic
    /// nor enforces NetworkPolicy in netfilter, and the pods' interfaces take
    /// XDP-redirected frames (veth: the pod side runs XDP). See docs/design.md.
    #[arg(long, value_enum, default_value = "kernel", env = "PORTER_FORWARDING")]
    forwarding: Forwarding,
    /// Namespaces to read BgpPeer password Secrets from, comma-separated:
    /// set it only for `speakerMode: node` with `authPasswordSecretRef`. The
    /// first is where a reference without a namespace points. Default: none,
    /// so the agent reads no Secret and needs no RBAC for them. With `kube`,
    /// each needs a Role letting the agent list and watch Secrets there.
    #[arg(long, value_delimiter = ',', env = "PORTER_SECRET_NAMESPACES")]
    secret_namespaces: Vec<String>,
    /// Namespace of the Layer 2 Leases (`kube`): kept apart from the
    /// controller's leader-election Lease, so that an agent's RBAC on them
    /// cannot reach it. The controller's `--layer2-namespace` must match.
    #[arg(long, default_value = porter_api::layer2::LEASE_NAMESPACE, env = "PORTER_LAYER2_NAMESPACE")]
    layer2_namespace: String,
    #[command(flatten)]
    pins: PinArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Cleanup(args) => cleanup(&PinLayout::new(&args.bpffs)),
        Command::Inspect(args) => {
            let state = inspect::read(&PinLayout::new(&args.bpffs))?;
            print!("{}", inspect::render(&state));
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let settings = AgentSettings {
        node: args.node_name,
        interfaces: args.interfaces,
        xdp_mode: args.xdp_mode,
        bpffs: args.pins.bpffs,
        config: DataplaneConfig {
            maglev_size: args.maglev_size,
            max_services: args.max_services,
            forwarding: args.forwarding,
        },
        resync: args.resync_interval,
    };
    let pins = PinLayout::new(&settings.bpffs);
    let metrics = Metrics::default();
    let served = metrics.clone();
    let health = spawn_server(args.metrics_addr, move || served.render(&pins))
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, node = %settings.node, "metrics served at /metrics");

    let mut secret_namespaces = args.secret_namespaces.clone();
    secret_namespaces.retain(|n| !n.trim().is_empty());
    let secrets =
        SecretScope::new(secret_namespaces).unwrap_or_else(|| SecretScope::unread(own_namespace()));
    let shutdown = shutdown_signal()?;
    let (snapshots, leases, status_writer) = tokio::select! {
        connected = connect(&args.source, args.poll_interval, &secrets, &args.layer2_namespace, &health) => connected?,
        () = shutdown.clone_wait() => return Ok(()),
    };
    let node = settings.node.clone();
    let mut agent = Agent::new(settings, metrics.clone())
        .with_health(health)
        .with_node_condition(status_writer.clone())
        .with_bgp(
            NodeSpeaker::new(node.clone(), status_writer, metrics.bgp.clone())
                .with_secret_scope(secrets),
        );
    match FrameSender::open() {
        Ok(frames) => {
            let rounds = LeaseRounds::new(node, Timing::default(), leases);
            agent = agent.with_layer2(Layer2::new(rounds, frames, metrics.layer2.clone()));
        }
        Err(err) => {
            error!(error = %err, "Layer 2 mode is off: cannot open an AF_PACKET socket (the agent needs CAP_NET_RAW)");
        }
    }
    sync::run(agent, snapshots, shutdown.wait()).await;
    Ok(())
}

/// Starts the cluster-state source. An unreachable API server is retried
/// with backoff (the agent must not crashloop); a `dir:` that cannot be
/// read is a configuration error.
///
/// Layer 2 leases live beside the cluster state: as files in
/// `<dir>/layer2-leases` (shared by the nodes) with the dir source, as
/// Leases in `layer2_namespace` with kube. BgpPeer status (node mode) is
/// written through the source's own writer. A watch the API server refuses
/// is reported in `health`.
async fn connect(
    source: &SourceArg,
    poll: Duration,
    secrets: &SecretScope,
    layer2_namespace: &str,
    health: &Health,
) -> Result<(SnapshotReceiver, Leases, ClusterWriter)> {
    match source {
        SourceArg::Dir(path) => {
            let (snapshots, writer) = dir::start(path.clone(), poll)
                .with_context(|| format!("cannot read manifests in {}", path.display()))?;
            info!(dir = %path.display(), "reading the cluster from manifests");
            let leases = FileLeases::new(path.join("layer2-leases"))?;
            Ok((snapshots, Leases::File(leases), ClusterWriter::Dir(writer)))
        }
        SourceArg::Kube => {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            let client = loop {
                match kube::Client::try_default().await {
                    Ok(client) => break client,
                    Err(err) => {
                        let wait = backoff.failed();
                        error!(error = %err, retry_in = ?wait, "cannot reach the API server: run in a pod or set KUBECONFIG");
                        tokio::time::sleep(wait).await;
                    }
                }
            };
            info!("waiting for the cluster state");
            let leases = Leases::Kube(Box::new(KubeLeases::new(client.clone(), layer2_namespace)));
            let writer = kube_source::KubeWriter::new(client.clone(), None, None);
            Ok((
                // Only the node-mode speaker uses them (BgpPeer passwords).
                kube_source::start_watching(
                    client,
                    &kube_source::Watch {
                        secret_namespaces: secrets.namespaces().to_vec(),
                        health: health.clone(),
                    },
                )
                .await
                .0,
                leases,
                ClusterWriter::Kube(Box::new(writer)),
            ))
        }
    }
}

/// The agent's namespace: where an `authPasswordSecretRef` without a
/// namespace points when `--secret-namespaces` is not given.
fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_else(|_| PORTER_NAMESPACE.to_owned())
}

/// SIGINT or SIGTERM, observable from several places.
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    fn clone_wait(&self) -> impl std::future::Future<Output = ()> + use<> {
        Shutdown(self.0.clone()).wait()
    }
}

fn shutdown_signal() -> Result<Shutdown> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(Shutdown(rx))
}

fn cleanup(pins: &PinLayout) -> Result<()> {
    let report = attach::cleanup(pins)
        .with_context(|| format!("removing pins under {}", pins.root().display()))?;
    if report.removed_pins.is_empty() {
        info!(dir = %pins.root().display(), "nothing to clean up");
    }
    for pin in report.removed_pins {
        info!(pin = %pin.display(), "removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "porter-agent",
            "run",
            "--node-name",
            "n1",
            "--interface",
            "eth0",
            "--interface",
            "eth1",
            "--source",
            "dir:/tmp/m",
            "--poll-interval",
            "100ms",
        ])
        .expect("valid flags");
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(args.interfaces, ["eth0", "eth1"]);
        assert_eq!(args.source, SourceArg::Dir("/tmp/m".into()));
        assert_eq!(args.poll_interval, Duration::from_millis(100));
        assert!(
            Cli::try_parse_from([
                "porter-agent",
                "run",
                "--node-name",
                "n1",
                "--source",
                "etcd"
            ])
            .is_err()
        );
    }
}

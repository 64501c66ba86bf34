//! `porter-agent`: runs on every node and keeps its XDP data plane in place.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use porter_agent::{
    Dataplane, DataplaneConfig, Forwarding, PinLayout, stats,
    xdp_attach::{self, XdpModePreference},
};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "porter-agent",
    version,
    about = "Porter node agent: attaches the XDP load balancer to this node's uplinks",
    long_about = "Porter node agent. Loads the XDP program onto the node's uplink interfaces and \
                  pins it (and its maps) under --bpffs, so traffic keeps flowing while the agent \
                  restarts or is upgraded. `porter-agent cleanup` removes everything it installed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the data plane and keep it in place until stopped (SIGINT/SIGTERM).
    /// Stopping leaves the programs attached; run `cleanup` to remove them.
    Run(RunArgs),
    /// Detach every program and remove every pin the agent created.
    Cleanup(PinArgs),
    /// Print the global counters from the pinned maps (works while an agent runs).
    Stats(PinArgs),
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
    /// Uplink interface(s) to attach XDP to. Repeat the flag for several.
    #[arg(long = "interface", required = true)]
    interfaces: Vec<String>,
    /// XDP attach mode: `auto` tries native (driver) mode and falls back to generic.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModePreference,
    /// How often to log the packet counters (0 disables).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Maglev table size M: a prime at least 100x the most local backends of a
    /// service. Fixed when the maps are first created; changing it needs `cleanup`.
    #[arg(long, default_value_t = DataplaneConfig::default().maglev_size)]
    maglev_size: u32,
    /// Most services (EIP:port/protocol) this node serves; each costs two
    /// Maglev tables of M slots. Fixed like --maglev-size.
    #[arg(long, default_value_t = DataplaneConfig::default().max_services)]
    max_services: u32,
    #[command(flatten)]
    pins: PinArgs,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" | "" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("`{text}`: unit must be ms, s or m")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Cleanup(args) => cleanup(&PinLayout::new(&args.bpffs)),
        Command::Stats(args) => print_stats(&PinLayout::new(&args.bpffs)),
    }
}

async fn run(args: RunArgs) -> Result<()> {
    raise_memlock_limit();
    let pins = PinLayout::new(&args.pins.bpffs);
    let config = DataplaneConfig {
        maglev_size: args.maglev_size,
        max_services: args.max_services,
        forwarding: Forwarding::Kernel,
    };
    let mut dataplane = Dataplane::open(&pins, config).context("loading the data plane")?;
    for interface in &args.interfaces {
        let attachment = dataplane
            .attach_xdp(interface, args.xdp_mode)
            .with_context(|| format!("attaching XDP to {interface}"))?;
        dataplane
            .attach_tc_egress(interface)
            .with_context(|| format!("attaching tc reverse NAT to {interface}"))?;
        info!(interface, mode = %attachment, services = dataplane.services().len(), "data plane ready");
    }

    let mut ticker =
        (!args.stats_interval.is_zero()).then(|| tokio::time::interval(args.stats_interval));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                match stats::read_global_stats(&pins) {
                    Ok(counters) => for (stat, value) in counters {
                        info!(counter = stat.name(), value, "stats");
                    },
                    Err(err) => warn!(error = %err, "cannot read stats"),
                }
            }
        }
    }
    info!("stopping; the data plane stays attached (run `porter-agent cleanup` to remove it)");
    Ok(())
}

/// Older kernels charge BPF maps to RLIMIT_MEMLOCK; newer ones use memcg and
/// ignore it, so a failure is only worth a log line.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        info!(error = %std::io::Error::last_os_error(), "RLIMIT_MEMLOCK not raised; kernels >= 5.11 account BPF memory to the cgroup instead, so this is harmless there");
    }
}

fn cleanup(pins: &PinLayout) -> Result<()> {
    let report = xdp_attach::cleanup(pins)
        .with_context(|| format!("removing pins under {}", pins.root().display()))?;
    if report.removed_pins.is_empty() {
        info!(dir = %pins.root().display(), "nothing to clean up");
    }
    for pin in report.removed_pins {
        info!(pin = %pin.display(), "removed");
    }
    Ok(())
}

fn print_stats(pins: &PinLayout) -> Result<()> {
    for (stat, value) in stats::read_global_stats(pins)? {
        println!("{:<24} {value}", stat.name());
    }
    Ok(())
}

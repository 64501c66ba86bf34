//! `cargo xtask bench <suite>`: prints one JSON object per line,
//! `{"suite":..,"case":..,"metric":..,"value":..,"unit":..}`, each suite with
//! a baseline measured in the same run.
mod agent;
mod bgp;
mod controller;
mod dataplane;
mod layer2;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which suite to run.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Seconds per throughput measurement (lab suites; each side is measured 5 times).
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Suite {
    /// XDP per-packet cost (BPF_PROG_TEST_RUN) and lab throughput vs iptables DNAT.
    Dataplane,
    /// 10,000 prefixes x 4 next hops into BIRD, against GoBGP loading the same set.
    Bgp,
    /// IPAM and announcements for 10,000 Services over 1,000 nodes.
    Controller,
    /// Agent sync: 1,000 services x 10 local backends from empty, and one endpoint change.
    Agent,
    /// Layer 2 failover time after a leader crash (median of 10), and handback.
    Layer2,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.suite {
        Suite::Dataplane => dataplane::run(args),
        Suite::Bgp => bgp::run(),
        Suite::Controller => controller::run(),
        Suite::Agent => agent::run(),
        Suite::Layer2 => layer2::run(),
    }
}

/// Prints one result line.
pub fn emit(suite: &str, case: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"suite": suite, "case": case, "metric": metric, "value": value, "unit": unit})
    );
}

//! `cargo xtask bench <suite>`: prints one JSON object per line,
//! `{"suite":..,"case":..,"metric":..,"value":..,"unit":..}`, each suite with
//! a baseline measured in the same run.
mod agent;
mod bgp;
mod controller;
mod controller_failover;
mod dataplane;
mod disruption;
mod failover;
mod layer2;

use anyhow::Result;

use crate::cmd;

pub use crate::args::{BenchArgs, Suite};

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.suite {
        Suite::Dataplane => dataplane::run(args),
        Suite::Bgp => bgp::run(),
        Suite::Controller => controller::run(),
        Suite::Agent => agent::run(),
        Suite::Layer2 => layer2::run(),
        Suite::Failover => failover::run(),
        Suite::Disruption => disruption::run(),
    }
}

/// Prints one result line.
pub fn emit(suite: &str, case: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"suite": suite, "case": case, "metric": metric, "value": value, "unit": unit})
    );
}

/// Runs `bench <suite>` again from an optimised build, for suites that time
/// CPU-bound userspace code. With `lab`: a release xtask without it would
/// hand the command back to a debug `lab` build, which would come here again,
/// forever.
pub fn in_release(suite: &str) -> Result<()> {
    cmd::run(cmd::lab_xtask(true).args(["bench", suite]))
}

/// The median of `samples` (the upper one of an even count).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The largest of `samples`.
pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NAN, f64::max)
}

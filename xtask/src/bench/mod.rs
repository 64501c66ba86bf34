//! `cargo xtask bench <suite>`: benchmarks that print one JSON object per line,
//! `{"suite":..,"case":..,"metric":..,"value":..,"unit":..}`.
mod bgp;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The suite to run: bgp.
    pub suite: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.suite.as_str() {
        "bgp" => bgp::run(),
        other => bail!("unknown bench suite {other:?}; known: bgp"),
    }
}

/// Prints one result line.
pub fn report(suite: &str, case: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"suite": suite, "case": case, "metric": metric, "value": value, "unit": unit})
    );
}

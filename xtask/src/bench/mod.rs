//! `cargo xtask bench <suite>`: benchmarks printing JSON lines
//! `{"suite":..,"case":..,"metric":..,"value":..,"unit":..}`.
mod controller;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which suite to run: `controller`.
    suite: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.suite.as_str() {
        "controller" => controller::run(),
        other => bail!("unknown bench suite `{other}`; known: controller"),
    }
}

/// One result line.
pub fn report(suite: &str, case: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"suite": suite, "case": case, "metric": metric, "value": value, "unit": unit})
    );
}

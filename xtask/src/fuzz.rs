//! `cargo xtask fuzz [TARGET] [--seconds N]`: coverage-guided fuzzing of the
//! parsers of untrusted input with cargo-fuzz (libFuzzer, nightly). Not part
//! of `cargo xtask test`: the seed corpora are replayed there by ordinary
//! unit tests instead (see docs/fuzzing.md).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, toolchain};

/// The targets in fuzz/fuzz_targets, one per parser of untrusted input.
pub const TARGETS: &[&str] = &[
    "bgp_receive",
    "manifests",
    "seed_toml",
    "eip_address",
    "ipam",
    "bfd_receive",
    "probe_reply",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Fuzz only this target (default: every target in turn).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Option<String>,
    /// How long to fuzz each target; 0 only replays its corpus once.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    toolchain::ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let root = root();
    let targets: Vec<&str> = match &args.target {
        Some(target) => vec![target.as_str()],
        None => TARGETS.to_vec(),
    };
    for target in targets {
        // libFuzzer writes new inputs to the first directory only, so the
        // checked-in seeds stay as they are.
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root.join("fuzz/seeds").join(target);
        let budget = match args.seconds {
            0 => "-runs=0".to_string(),
            seconds => format!("-max_total_time={seconds}"),
        };
        let plus_nightly = format!("+{}", toolchain::nightly());
        cmd::run(
            rustup_cargo()
                .current_dir(&root)
                .args([plus_nightly.as_str(), "fuzz", "run", "-O", target])
                .arg(&corpus)
                .arg(&seeds)
                .args(["--", &budget, "-print_final_stats=1"]),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed; a crashing input is saved in fuzz/artifacts/{target}/ \
                 (reproduce with `cargo {plus_nightly} fuzz run {target} <file>`)"
            )
        })?;
    }
    Ok(())
}

/// The rustup proxy, which understands `+<toolchain>` (the `$CARGO` that runs
/// xtask is the stable toolchain's own binary, which does not).
fn rustup_cargo() -> Command {
    Command::new("cargo")
}

fn ensure_cargo_fuzz() -> Result<()> {
    if cmd::stdout(cmd::cargo().args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz from crates.io")?;
    if cmd::stdout(cmd::cargo().args(["fuzz", "--version"])).is_none() {
        bail!("cargo-fuzz was installed but `cargo fuzz` does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target listed here is a [[bin]] of fuzz/ and has a seed corpus,
    /// which the crates' unit tests replay.
    #[test]
    fn targets_match_the_fuzz_crate_and_have_seeds() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).expect("fuzz crate");
        let bins: Vec<&str> = manifest
            .lines()
            .filter_map(|line| line.strip_prefix("name = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .filter(|name| *name != "porter-fuzz")
            .collect();
        assert_eq!(bins, TARGETS);
        for target in TARGETS {
            let seeds = root().join("fuzz/seeds").join(target);
            let count = std::fs::read_dir(&seeds).map_or(0, Iterator::count);
            assert!(count > 0, "no seeds in {}", seeds.display());
        }
    }
}

//! `cargo xtask build-ebpf`: the agent's build script compiles the eBPF object
//! (porter-agent/build.rs is the single definition of that build); this task
//! installs the toolchain first, drives that build, and reports the object.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, toolchain};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build the agent in release mode (the eBPF object itself is always optimised).
    #[arg(long)]
    pub release: bool,
    /// Fail if Cargo.lock would have to change (image builds).
    #[arg(long)]
    pub locked: bool,
}

/// Builds the agent (and with it the eBPF object); returns the object's path.
pub fn build(args: &BuildArgs) -> Result<PathBuf> {
    toolchain::ensure_ebpf_toolchain()?;
    let mut cargo = cmd::cargo();
    cargo.args([
        "build",
        "--package",
        "porter-agent",
        "--message-format=json-render-diagnostics",
    ]);
    if args.release {
        cargo.arg("--release");
    }
    if args.locked {
        cargo.arg("--locked");
    }
    eprintln!(
        "$ cargo build --package porter-agent{}{}",
        if args.release { " --release" } else { "" },
        if args.locked { " --locked" } else { "" }
    );
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_agent_build_script = message["reason"] == "build-script-executed"
            && message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("porter-agent"));
        if is_agent_build_script {
            out_dir = message["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building porter-agent (and its eBPF object) failed: {status}");
    }
    let object = out_dir
        .context("cargo did not report porter-agent's build script output directory")?
        .join("porter.bpf.o");
    if !object.is_file() {
        bail!("the build finished but {} is missing", object.display());
    }
    Ok(object)
}

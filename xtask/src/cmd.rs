//! Running commands with the command line echoed, so a failure is easy to reproduce.
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `command` with inherited output; fails unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", display(command)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(command));
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout, or None when it cannot run or fails.
pub fn stdout(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo run` of xtask with the `lab` feature (demo, bench), debug or
/// release; the xtask arguments follow.
pub fn lab_xtask(release: bool) -> Command {
    let mut command = cargo();
    command.args(["run", "--quiet"]);
    if release {
        command.arg("--release");
    }
    command.args(["--package", "xtask", "--features", "lab", "--"]);
    command
}

fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

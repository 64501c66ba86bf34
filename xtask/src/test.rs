//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
use anyhow::Result;

use crate::{cmd, ebpf, images, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::ensure_all()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    cmd::run(cmd::cargo().args([
        "fmt",
        "--check",
        "--manifest-path",
        "porter-ebpf/Cargo.toml",
    ]))?;
    // clippy compiles porter-agent, whose build script builds the eBPF object,
    // so the eBPF build comes first and fails on its own, with a clear message.
    let object = ebpf::build(&ebpf::BuildArgs {
        release: false,
        locked: false,
    })?;
    eprintln!("eBPF object: {}", object.display());
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // `--all-features` covers xtask's `lab` tasks (demo, bench); every step
    // uses the same feature set so nothing is compiled twice.
    // The privileged tests start the binaries themselves.
    cmd::run(cmd::cargo().args(["build", "--workspace", "--all-features", "--bins"]))?;
    let mut test = cmd::cargo();
    test.args(["test", "--workspace", "--all-features"]);
    if setup::is_root() {
        // The images, for the e2e case that runs Porter from them.
        images::build()?;
        test.env("PORTER_AGENT_IMAGE", images::AGENT)
            .env("PORTER_CONTROLLER_IMAGE", images::CONTROLLER);
    } else {
        eprintln!(
            "not root: no images, and privileged tests (netns, BPF) will print SKIP and pass"
        );
    }
    cmd::run(test.arg("--").args(&args.cargo_test_args))
}

//! `demo` and `bench` need xtask's `lab` feature, which links the agent and
//! therefore needs the eBPF toolchain to build (see xtask/Cargo.toml). A plain
//! xtask installs the prerequisites first, then runs the same command line
//! again from a `lab` build.
use anyhow::Result;

use crate::{cmd, setup};

pub fn with_lab_feature() -> Result<()> {
    setup::ensure_all()?;
    cmd::run(cmd::lab_xtask(false).args(std::env::args_os().skip(1)))
}

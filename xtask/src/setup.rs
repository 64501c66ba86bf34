//! Installs what the demo and the tests need on a fresh Debian or Ubuntu
//! machine: the Debian packages, a mounted bpffs, and the eBPF toolchain.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{cmd, toolchain};

/// Debian packages the lab, the tests and the benchmarks use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bird2",
    "frr",
    "gobgpd",
    "bpftool",
    "iproute2",
    "iptables",
    "iputils-ping",
    // sysctl: only "important", so a minimal Debian lacks it.
    "procps",
    "curl",
    "iperf3",
    "file",
    // `bench bgp` drives GoBGP over gRPC from Debian's python3 with stubs
    // generated from the .proto files GoBGP's -dev package ships.
    "python3-grpcio",
    "python3-protobuf",
    "protobuf-compiler",
    "protobuf-compiler-grpc",
    // GoBGP's .proto files import google/protobuf/*.proto, which protoc
    // finds under /usr/include only with this package.
    "libprotobuf-dev",
    "golang-github-osrg-gobgp-dev",
    "ethtool",
    // promtool: the tests lint /metrics and check and unit-test the alerts
    // in deploy/monitoring.
    "prometheus",
    // `cargo xtask images`: buildah builds the images and mounts them for
    // the e2e case that runs Porter from them; debootstrap makes the build
    // stage's base image.
    "buildah",
    "debootstrap",
];

pub fn ensure_all() -> Result<()> {
    if is_root() {
        ensure_debian_packages()?;
        ensure_bpffs()?;
    } else {
        eprintln!(
            "not root: skipping Debian packages and bpffs (privileged tests will be skipped)"
        );
    }
    toolchain::ensure_ebpf_toolchain()
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing the Debian packages the lab needs")
}

fn installed(package: &str) -> bool {
    cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn ensure_bpffs() -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if cmd::stdout(Command::new("mountpoint").args(["-q"]).arg(bpffs)).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(bpffs)?;
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs))
        .context("mounting bpffs at /sys/fs/bpf")
}

/// Root may install packages, mount bpffs and run the privileged tests.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests;

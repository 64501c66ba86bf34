//! `cargo xtask images`: porter-agent's and porter-controller's images, built
//! with buildah from deploy/docker/*.Dockerfile as `docker build` builds
//! them, on base images made here from Debian packages (bases.rs) and pinned
//! by digest, as the Dockerfiles demand of every base.
//!
//! What differs from a Docker build, and why:
//! - Every RUN runs in a chroot (`--isolation chroot`): root in this sandbox
//!   cannot start an OCI runtime's container (it may not set the rlimits).
//! - The build stage finds this machine's Rust toolchains where the Rust
//!   image has its own (rustup's home and cargo's bin, mounted read-only):
//!   the stable toolchain, and the nightly, rust-src and bpf-linker that
//!   `cargo xtask setup` installed, so the eBPF build downloads no toolchain.
//! - It trusts this machine's CA certificates, so that cargo reaches
//!   crates.io through a proxy that this machine trusts.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{cmd, setup};

mod bases;
mod buildah;

pub const AGENT: &str = "localhost/porter-agent:local";
pub const CONTROLLER: &str = "localhost/porter-controller:local";

/// Where the Rust image keeps its toolchains.
const RUSTUP_HOME_INSIDE: &str = "/usr/local/rustup";
const CARGO_BIN_INSIDE: &str = "/usr/local/cargo/bin";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn run() -> Result<()> {
    setup::ensure_all()?;
    build()?;
    for image in [AGENT, CONTROLLER] {
        println!("{}", buildah::name_and_size(image)?);
    }
    Ok(())
}

/// Builds both images (names [`AGENT`] and [`CONTROLLER`]).
pub fn build() -> Result<()> {
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let bases = bases::ensure(&repo.join("target/images"))?;
    let volumes = toolchain_volumes()?;
    for (dockerfile, image) in [("agent", AGENT), ("controller", CONTROLLER)] {
        let previous = buildah::id(image);
        cmd::run(
            Command::new("buildah")
                .args(["build", "--isolation", "chroot", "--pull=never"])
                .arg("--file")
                .arg(repo.join(format!("deploy/docker/{dockerfile}.Dockerfile")))
                .arg("--build-arg")
                .arg(format!("RUST_IMAGE={}", bases.build))
                .arg("--build-arg")
                .arg(format!("RUNTIME_IMAGE={}", bases.runtime))
                .args(volumes.iter().flat_map(|volume| ["--volume", volume]))
                .args(["--tag", image])
                .arg(&repo),
        )
        .with_context(|| format!("building {image}"))?;
        // The build before this one is only a dangling copy now.
        if let Some(previous) = previous.filter(|id| Some(id) != buildah::id(image).as_ref()) {
            buildah::remove(&previous);
        }
    }
    eprintln!("images built in {:.0?}", started.elapsed());
    Ok(())
}

/// `--volume` arguments: this machine's toolchains and CA bundle, read-only.
fn toolchain_volumes() -> Result<Vec<String>> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".rustup"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cargo"));
    let mut volumes = Vec::new();
    for (host, inside) in [
        (rustup_home, RUSTUP_HOME_INSIDE),
        (cargo_home.join("bin"), CARGO_BIN_INSIDE),
        (PathBuf::from(CA_BUNDLE), CA_BUNDLE),
    ] {
        let host = host
            .canonicalize()
            .with_context(|| format!("{} (installed by `cargo xtask setup`)", host.display()))?;
        volumes.push(format!("{}:{inside}:ro", host.display()));
    }
    Ok(volumes)
}

//! Compiles `porter-ebpf` for `bpfel-unknown-none` with the nightly toolchain and
//! leaves the object in `OUT_DIR/porter.bpf.o`, where `src/ebpf_object.rs` embeds it.
//!
//! This is the one place that knows how the eBPF object is built; `cargo xtask
//! build-ebpf` installs the toolchain, then drives this script and prints the path.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Lets a packager supply a prebuilt object (e.g. a container build stage).
const PREBUILT_ENV: &str = "PORTER_EBPF_OBJECT";
const OBJECT_NAME: &str = "porter.bpf.o";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("porter-agent lives in the workspace");
    let ebpf_dir = workspace.join("porter-ebpf");
    let common_dir = workspace.join("porter-common");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-env-changed={PREBUILT_ENV}");

    let destination = out_dir.join(OBJECT_NAME);
    if let Some(prebuilt) = env::var_os(PREBUILT_ENV) {
        std::fs::copy(&prebuilt, &destination).unwrap_or_else(|err| {
            panic!(
                "{PREBUILT_ENV}={}: cannot copy: {err}",
                Path::new(&prebuilt).display()
            )
        });
        return;
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        // BTF makes `bpftool map dump` print field names.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        );
    // The outer (stable, maybe clippy-wrapped) build leaks these into our
    // environment; the nightly build must pick its own.
    for leaked in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(leaked);
    }
    let status = cargo.status().unwrap_or_else(|err| {
        panic!("cannot run rustup ({err}); install rustup, then run `cargo xtask build-ebpf`")
    });
    if !status.success() {
        panic!(
            "building porter-ebpf failed ({status}). `cargo xtask build-ebpf` installs the \
             nightly toolchain, rust-src and bpf-linker, then builds it; run that first."
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/porter");
    std::fs::copy(&built, &destination)
        .unwrap_or_else(|err| panic!("cannot copy {}: {err}", built.display()));
}

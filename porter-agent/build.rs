//! Compiles `porter-ebpf` for `bpfel-unknown-none` with the nightly toolchain
//! pinned in `porter-ebpf/rust-toolchain.toml` and leaves the object in
//! `OUT_DIR/porter.bpf.o`, where `src/ebpf_object.rs` embeds it.
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
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        toolchain_file.clone(),
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

    let pin = std::fs::read_to_string(&toolchain_file)
        .unwrap_or_else(|err| panic!("{}: {err}", toolchain_file.display()));
    let nightly = pin
        .lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no `channel = ...` in {}", toolchain_file.display()));
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        // --locked: a build that would change porter-ebpf/Cargo.lock fails.
        .args(["run", nightly, "cargo", "build", "--release", "--locked"])
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
            "building porter-ebpf with {nightly} failed ({status}). `cargo xtask build-ebpf` \
             installs that toolchain, rust-src and bpf-linker, then builds it; run that first."
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/porter");
    std::fs::copy(&built, &destination)
        .unwrap_or_else(|err| panic!("cannot copy {}: {err}", built.display()));
}

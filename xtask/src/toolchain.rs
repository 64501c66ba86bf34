//! Makes sure the eBPF toolchain is present, installing what is missing, as
//! docs/toolchain.md describes: the pinned nightly
//! (porter-ebpf/rust-toolchain.toml), its rust-src, and bpf-linker at a
//! pinned version, built `--locked` against that nightly's own libLLVM.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The pin, next to the crate it builds; porter-agent/build.rs reads it too.
const TOOLCHAIN_FILE: &str = include_str!("../../porter-ebpf/rust-toolchain.toml");

/// bpf-linker, by exact version, installed with `--locked` so that its own
/// dependencies are the ones it was released with. To move it: change it
/// here, run `cargo xtask build-ebpf`, then `cargo xtask test`.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The pinned nightly, e.g. `nightly-2026-05-20`.
pub fn nightly() -> &'static str {
    channel(TOOLCHAIN_FILE).unwrap_or("nightly")
}

/// `channel = "..."` of a rust-toolchain.toml.
fn channel(toml: &str) -> Option<&str> {
    toml.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"'))
}

pub fn ensure_ebpf_toolchain() -> Result<()> {
    if cmd::stdout(Command::new("rustup").arg("--version")).is_none() {
        bail!(
            "rustup is required to build the eBPF programs; install it from your distribution or rustup.rs"
        );
    }
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()
}

pub fn ensure_nightly() -> Result<()> {
    let installed =
        cmd::stdout(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if installed
        .lines()
        .any(|line| line.starts_with(&format!("{}-", nightly())))
    {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        nightly(),
        "--profile",
        "minimal",
    ]))
    .with_context(|| {
        format!(
            "installing {} (needed for -Z build-std; pinned in porter-ebpf/rust-toolchain.toml)",
            nightly()
        )
    })
}

fn ensure_rust_src() -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        nightly(),
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        nightly(),
    ]))
    .context("adding rust-src to nightly (needed for -Z build-std=core)")
}

/// bpf-linker loads libLLVM dynamically. Built against nightly's own library,
/// it starts under `rustup run <nightly>` (which puts that library on the
/// loader path) exactly when its LLVM is that nightly's; after the pin moves
/// it no longer loads, and is rebuilt, as it is when its version is not the
/// pinned one.
fn ensure_bpf_linker() -> Result<()> {
    let running =
        cmd::stdout(Command::new("rustup").args(["run", nightly(), "bpf-linker", "--version"]));
    if running.is_some_and(|v| v.trim() == format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    let plus_nightly = format!("+{}", nightly());
    let version = cmd::stdout(Command::new("rustc").args([plus_nightly.as_str(), "-vV"]))
        .with_context(|| format!("cannot run `rustc {plus_nightly} -vV`"))?;
    let llvm_major = llvm_major(&version)
        .with_context(|| format!("no `LLVM version:` line in `rustc +nightly -vV`:\n{version}"))?;
    let sysroot =
        cmd::stdout(Command::new("rustc").args([plus_nightly.as_str(), "--print", "sysroot"]))
            .context("cannot ask nightly for its sysroot")?;
    let nightly_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = find_libllvm(&nightly_lib, llvm_major)?;

    // llvm-sys wants `<prefix>/lib/libLLVM.so`; point it at nightly's library.
    let prefix = env::temp_dir().join(format!("porter-llvm-{llvm_major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;

    eprintln!(
        "bpf-linker {BPF_LINKER_VERSION} is missing or does not match nightly's LLVM {llvm_major}; building it (about a minute)"
    );
    cmd::run(
        cmd::cargo()
            .args(["install", "--force", "--locked", "bpf-linker", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker against nightly's libLLVM; see docs/toolchain.md")
}

fn llvm_major(rustc_verbose_version: &str) -> Option<u32> {
    rustc_verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn find_libllvm(nightly_lib: &std::path::Path, llvm_major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{llvm_major}.");
    std::fs::read_dir(nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix))
        })
        .with_context(|| {
            format!(
                "nightly ships no {prefix}* in {}; is the nightly toolchain complete?",
                nightly_lib.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nightly_is_pinned_by_date() {
        assert_eq!(
            channel("[toolchain]\nchannel = \"nightly-2026-05-20\"\n"),
            Some("nightly-2026-05-20")
        );
        let pinned = nightly();
        let date = pinned.strip_prefix("nightly-").expect("a nightly");
        assert!(
            date.len() == 10 && date.split('-').all(|part| part.parse::<u32>().is_ok()),
            "porter-ebpf/rust-toolchain.toml pins a dated nightly, not {pinned}"
        );
    }

    #[test]
    fn reads_llvm_major_from_rustc_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}

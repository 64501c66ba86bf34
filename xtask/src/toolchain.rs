//! Makes sure the eBPF toolchain is present, installing what is missing, as
//! described in docs/toolchain.md: nightly, its rust-src, and a bpf-linker
//! linked against nightly's own libLLVM.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

const NIGHTLY: &str = "nightly";

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
    if installed.lines().any(|line| line.starts_with("nightly")) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
        .context("installing the nightly toolchain (needed for -Z build-std)")
}

fn ensure_rust_src() -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("adding rust-src to nightly (needed for -Z build-std=core)")
}

/// bpf-linker loads libLLVM dynamically. Built against nightly's own library,
/// it starts under `rustup run nightly` (which puts that library on the loader
/// path) exactly when its LLVM is nightly's; after a nightly update it no
/// longer loads, and is rebuilt.
fn ensure_bpf_linker() -> Result<()> {
    if cmd::stdout(Command::new("rustup").args(["run", NIGHTLY, "bpf-linker", "--version"]))
        .is_some()
    {
        return Ok(());
    }
    let version = cmd::stdout(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("cannot run `rustc +nightly -vV`")?;
    let llvm_major = llvm_major(&version)
        .with_context(|| format!("no `LLVM version:` line in `rustc +nightly -vV`:\n{version}"))?;
    let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
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
        "bpf-linker is missing or does not match nightly's LLVM {llvm_major}; building it (about a minute)"
    );
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
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
    fn reads_llvm_major_from_rustc_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}

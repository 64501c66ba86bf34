//! Locates Porter's binaries built in the same target directory as the test.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::lab::Lab;

/// Path of workspace binary `name` in the profile directory that holds the
/// running test (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
///
/// `cargo xtask test` builds the binaries before the tests; run
/// `cargo build --workspace --bins` first when invoking `cargo test` directly.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .ancestors()
        .find(|dir| dir.join(name).is_file())
        .map(|dir| dir.join(name));
    match profile_dir {
        Some(path) => Ok(path),
        None => bail!(
            "binary {name} not found next to {}; run `cargo build --workspace --bins` (cargo xtask test does)",
            exe.display()
        ),
    }
}

/// `porter-agent inspect` on the node whose namespace is `ns` and whose
/// bpffs is `bpffs`, as an operator runs it there.
pub fn agent_inspect(lab: &Lab, ns: &str, bpffs: &Path) -> Result<String> {
    let agent = binary("porter-agent")?.display().to_string();
    let bpffs = bpffs.display().to_string();
    lab.exec(ns, &[&agent, "inspect", "--bpffs", &bpffs])
}

/// `porter-controller explain <service>` against the `dir:` source
/// `manifests`, as an operator runs it; its output.
pub fn controller_explain(manifests: &Path, service: &str) -> Result<String> {
    let source = format!("dir:{}", manifests.display());
    let out = std::process::Command::new(binary("porter-controller")?)
        .args(["explain", service, "--source", &source])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "porter-controller explain {service} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

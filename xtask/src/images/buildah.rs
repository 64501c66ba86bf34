//! The few buildah operations the images need, on this machine's store.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Whether the local store holds `image`.
pub fn exists(image: &str) -> bool {
    cmd::stdout(Command::new("buildah").args(["inspect", "--type", "image", image])).is_some()
}

/// The digest of `image`'s manifest (`sha256:...`), which pins it.
pub fn digest(image: &str) -> Result<String> {
    let out = cmd::stdout(Command::new("buildah").args([
        "images",
        "--no-trunc",
        "--format",
        "{{.Digest}}",
        image,
    ]))
    .with_context(|| format!("no image {image} in the local store"))?;
    match out.lines().next() {
        Some(digest) if digest.starts_with("sha256:") => Ok(digest.to_owned()),
        _ => bail!("image {image} has no digest: {out:?}"),
    }
}

/// Its ID, which changes with every build of a tag.
pub fn id(image: &str) -> Option<String> {
    cmd::stdout(Command::new("buildah").args([
        "images",
        "--no-trunc",
        "--format",
        "{{.ID}}",
        image,
    ]))
    .and_then(|out| out.lines().next().map(str::to_owned))
}

/// `name:tag size` of `image`, as `buildah images` prints it.
pub fn name_and_size(image: &str) -> Result<String> {
    let out = cmd::stdout(Command::new("buildah").args([
        "images",
        "--format",
        "{{.Name}}:{{.Tag}} {{.Size}}",
        image,
    ]))
    .with_context(|| format!("no image {image} in the local store"))?;
    Ok(out.lines().next().unwrap_or_default().to_owned())
}

/// A one-layer image `name` holding the tree `root`, with environment `env`.
pub fn import(root: &Path, name: &str, env: &[&str]) -> Result<()> {
    let container = cmd::stdout(Command::new("buildah").args(["from", "scratch"]))
        .context("buildah from scratch")?;
    let container = container.trim();
    cmd::run(
        Command::new("buildah")
            .args(["copy", "--quiet", container])
            .arg(root)
            .arg("/"),
    )?;
    for variable in env {
        cmd::run(Command::new("buildah").args(["config", "--env", variable, container]))?;
    }
    cmd::run(Command::new("buildah").args(["commit", "--quiet", "--rm", container, name]))
}

/// Removes image `id` (an earlier build of a tag): nothing else uses it.
pub fn remove(id: &str) {
    let _ = cmd::stdout(Command::new("buildah").args(["rmi", id]));
}

//! The base images the Dockerfiles build on here, made from Debian packages
//! of this machine's release, so CI needs no registry:
//! - the build stage's, in place of `rust:<version>-<release>`: a
//!   `debootstrap --variant=minbase` system with a C toolchain (cargo links
//!   with `cc`, and ring compiles C), and the Rust image's environment
//!   (`RUSTUP_HOME`, `CARGO_HOME`, `PATH`). The Rust toolchains are not in
//!   it: the build mounts this machine's (see `super::toolchain_volumes`).
//! - the runtime's, in place of `gcr.io/distroless/cc-<release>`: what
//!   distroless builds its `cc` image from, and no more than Porter can use
//!   of it (glibc, libgcc, base files, tzdata, CA certificates, the users
//!   `root` and `nonroot` (65532)); no shell, no package manager.
//!
//! Each is tagged by a hash of its recipe and reused while it exists.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::buildah;
use crate::cmd;

const BUILD_BASE: &str = "localhost/porter-base/build";
const RUNTIME_BASE: &str = "localhost/porter-base/runtime";

/// What the build stage adds to a minimal Debian.
const BUILD_PACKAGES: &[&str] = &["gcc", "libc6-dev", "ca-certificates"];
/// The runtime's packages, unpacked (no maintainer scripts run, as in
/// distroless).
const RUNTIME_PACKAGES: &[&str] = &[
    "base-files",
    "netbase",
    "tzdata",
    "ca-certificates",
    "libc6",
    "libgcc-s1",
    "gcc-12-base",
];
const MIRROR: &str = "http://deb.debian.org/debian";
/// As in the official Rust image.
const BUILD_ENV: &[&str] = &[
    "RUSTUP_HOME=/usr/local/rustup",
    "CARGO_HOME=/usr/local/cargo",
    "PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
];
/// As in distroless: root, nobody, and nonroot (65532).
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
    nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
    nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";

/// The two bases as `name:tag@sha256:...`, made when missing.
pub struct Bases {
    pub build: String,
    pub runtime: String,
}

pub fn ensure(work: &Path) -> Result<Bases> {
    let release = debian_release()?;
    let build_recipe = format!("{release} {BUILD_PACKAGES:?} {BUILD_ENV:?}");
    let build = ensure_one(
        BUILD_BASE,
        &build_recipe,
        |root| debootstrap(&release, root),
        BUILD_ENV,
        work,
    )?;
    let runtime_recipe = format!("{release} {RUNTIME_PACKAGES:?} {PASSWD:?} {GROUP:?}");
    let runtime = ensure_one(RUNTIME_BASE, &runtime_recipe, unpack_runtime, &[], work)?;
    Ok(Bases { build, runtime })
}

/// `name:<hash of recipe>` pinned by digest, made by `make` into a fresh
/// directory and imported when missing.
fn ensure_one(
    name: &str,
    recipe: &str,
    make: impl FnOnce(&Path) -> Result<()>,
    env: &[&str],
    work: &Path,
) -> Result<String> {
    let tagged = format!("{name}:{:016x}", fnv1a(recipe));
    if !buildah::exists(&tagged) {
        eprintln!("making base image {tagged} from Debian packages");
        let root = work.join(name.rsplit('/').next().unwrap_or(name));
        remove_dir(&root)?;
        std::fs::create_dir_all(&root)?;
        make(&root)?;
        buildah::import(&root, &tagged, env)?;
        remove_dir(&root)?;
    }
    Ok(format!("{tagged}@{}", buildah::digest(&tagged)?))
}

/// This machine's Debian release (`bookworm`), which the bases are made of.
fn debian_release() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release")?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .context("no VERSION_CODENAME in /etc/os-release: the images are built on Debian")
}

fn debootstrap(release: &str, root: &Path) -> Result<()> {
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(BUILD_PACKAGES.join(","))
            .arg(release)
            .arg(root)
            .arg(MIRROR),
    )?;
    // The downloaded packages and lists: 100 MB the image does not need.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for entry in std::fs::read_dir(root.join(dir))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

fn unpack_runtime(root: &Path) -> Result<()> {
    let debs = root.with_extension("debs");
    remove_dir(&debs)?;
    std::fs::create_dir_all(&debs)?;
    cmd::run(
        Command::new("apt-get")
            .arg("download")
            .args(RUNTIME_PACKAGES)
            .current_dir(&debs),
    )?;
    for deb in std::fs::read_dir(&debs)? {
        cmd::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb?.path())
                .arg(root),
        )?;
    }
    remove_dir(&debs)?;
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    let home = root.join("home/nonroot");
    std::fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(65532), Some(65532))?;
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    // update-ca-certificates' bundle, which its maintainer script would write.
    let mut bundle = String::new();
    let mozilla = root.join("usr/share/ca-certificates/mozilla");
    let mut certificates: Vec<PathBuf> = std::fs::read_dir(&mozilla)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    certificates.sort();
    for certificate in certificates {
        bundle.push_str(std::fs::read_to_string(&certificate)?.trim_end());
        bundle.push('\n');
    }
    std::fs::create_dir_all(root.join("etc/ssl/certs"))?;
    std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle)?;
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A stable 64-bit hash (std's hashers may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_change_changes_the_tag() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(
            fnv1a("bookworm [\"gcc\"]"),
            fnv1a("bookworm [\"gcc\", \"make\"]")
        );
    }
}

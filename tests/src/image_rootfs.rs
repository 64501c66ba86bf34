//! Running a container image's binary the way a Pod runs it, without a
//! container runtime (`podman run` cannot set its rlimits in this sandbox):
//! the image's root filesystem is mounted with buildah, and the process is
//! started in a lab network namespace, in a mount namespace of its own
//! whose root is that filesystem (read-only when the Pod says so) with
//! /proc, /sys, /dev and the Pod's hostPath volumes mounted, as the image's
//! entrypoint, with the Pod's user and no capability but the Pod's.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{lab, workloads::Container};

/// Linux's capabilities by number, as Kubernetes spells them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The character devices a container runtime puts in a container's /dev
/// (a tmpfs): (name, major, minor).
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The capability numbers of `names` (`NET_ADMIN`, or `CAP_NET_ADMIN`).
pub fn capability_numbers(names: &[String]) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|name| {
            let bare = name.to_ascii_uppercase();
            let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
            CAPABILITIES
                .iter()
                .position(|known| *known == bare)
                .map(|n| n as u32)
                .with_context(|| format!("unknown capability {name}"))
        })
        .collect()
}

/// An image's root filesystem, mounted through a buildah working
/// container (unmounted and removed on drop), and the image's config.
pub struct ImageRootfs {
    container: String,
    pub image: String,
    pub root: PathBuf,
    pub entrypoint: Vec<String>,
    /// `USER` of the image: `uid[:gid]`, empty for root.
    pub user: String,
    pub env: Vec<String>,
}

impl ImageRootfs {
    /// Mounts `image` from local storage (nothing is pulled) in a working
    /// container called `name`.
    pub fn mount(image: &str, name: &str) -> Result<Self> {
        // A container left by a killed run of the same lab id is stale.
        let _ = lab::run(Command::new("buildah").args(["rm", name]));
        lab::run(
            Command::new("buildah")
                .args(["from", "--quiet", "--pull=never", "--name", name])
                .arg(image),
        )
        .with_context(|| format!("image {image} (build it with `cargo xtask images`)"))?;
        let mut rootfs = Self {
            container: name.to_owned(),
            image: image.to_owned(),
            root: PathBuf::new(),
            entrypoint: Vec::new(),
            user: String::new(),
            env: Vec::new(),
        };
        rootfs.root =
            PathBuf::from(lab::run(Command::new("buildah").args(["mount", name]))?.trim());
        let inspect =
            lab::run(Command::new("buildah").args(["inspect", "--type", "image", image]))?;
        let inspect: serde_json::Value = serde_json::from_str(&inspect)?;
        let config = &inspect["OCIv1"]["config"];
        let strings = |value: &serde_json::Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        rootfs.entrypoint = strings(&config["Entrypoint"]);
        rootfs.env = strings(&config["Env"]);
        rootfs.user = config["User"].as_str().unwrap_or_default().to_owned();
        ensure!(
            !rootfs.entrypoint.is_empty(),
            "image {image} has no ENTRYPOINT"
        );
        Ok(rootfs)
    }

    /// The command that runs the image's entrypoint with `args` as Pod
    /// container `spec` would: in network namespace `netns`, with `env`
    /// (besides the image's), and `mounts` as (host path, path inside)
    /// besides the runtime's own.
    pub fn command(
        &self,
        netns: &str,
        spec: &Container,
        args: &[String],
        env: &[(String, String)],
        mounts: &[(PathBuf, PathBuf)],
    ) -> Result<Command> {
        let (uid, gid) = self.identity(spec)?;
        if spec.run_as_non_root && uid == 0 {
            bail!("runAsNonRoot, but {} would run as root", self.image);
        }
        let keep = capability_numbers(&spec.capabilities)?;
        // The mount points, made in the container's writable layer as a
        // runtime makes them, before the root is made read-only.
        for inside in ["/proc", "/sys", "/dev"]
            .iter()
            .map(Path::new)
            .chain(mounts.iter().map(|(_, inside)| inside.as_path()))
        {
            std::fs::create_dir_all(self.path(inside))?;
        }
        let net = File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening network namespace {netns}"))?;
        let setup = ProcessSetup {
            net,
            root: c_path(&self.root)?,
            proc: c_path(&self.path(Path::new("/proc")))?,
            sys: c_path(&self.path(Path::new("/sys")))?,
            dev: c_path(&self.path(Path::new("/dev")))?,
            devices: DEVICES
                .iter()
                .map(|(name, major, minor)| {
                    Ok((
                        c_path(&self.path(&Path::new("/dev").join(name)))?,
                        *major,
                        *minor,
                    ))
                })
                .collect::<Result<_>>()?,
            mounts: mounts
                .iter()
                .map(|(host, inside)| Ok((c_path(host)?, c_path(&self.path(inside))?)))
                .collect::<Result<_>>()?,
            read_only_root: spec.read_only_root,
            no_new_privs: spec.no_new_privs,
            keep,
            last_capability: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
                .trim()
                .parse()?,
            uid,
            gid,
        };
        let mut command = Command::new(&self.entrypoint[0]);
        command
            .args(&self.entrypoint[1..])
            .args(args)
            .env_clear()
            .envs(self.env.iter().filter_map(|kv| kv.split_once('=')))
            .envs(env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the closure makes only system calls (no allocation, no
        // lock) on data prepared above, as a child between fork and exec must.
        unsafe {
            command.pre_exec(move || setup.enter());
        }
        Ok(command)
    }

    /// `inside` (absolute, as in the container) under the mounted root.
    fn path(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// The uid and gid the container runs as: the Pod's, else the image's.
    fn identity(&self, spec: &Container) -> Result<(u32, u32)> {
        let (image_uid, image_gid) = match self.user.split_once(':') {
            _ if self.user.is_empty() => (0, None),
            Some((uid, gid)) => (uid.parse()?, Some(gid.parse()?)),
            None => (
                self.user.parse().with_context(|| {
                    format!("USER {} of {} is not numeric", self.user, self.image)
                })?,
                None,
            ),
        };
        let uid = spec.user.unwrap_or(image_uid);
        Ok((uid, spec.group.or(image_gid).unwrap_or(uid)))
    }
}

impl Drop for ImageRootfs {
    fn drop(&mut self) {
        let _ = lab::run(Command::new("buildah").args(["umount", &self.container]));
        let _ = lab::run(Command::new("buildah").args(["rm", &self.container]));
    }
}

fn c_path(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// Everything the child does between fork and exec, prepared beforehand.
struct ProcessSetup {
    net: File,
    root: CString,
    proc: CString,
    sys: CString,
    dev: CString,
    devices: Vec<(CString, u32, u32)>,
    mounts: Vec<(CString, CString)>,
    read_only_root: bool,
    no_new_privs: bool,
    keep: Vec<u32>,
    last_capability: u32,
    uid: u32,
    gid: u32,
}

impl ProcessSetup {
    fn enter(&self) -> io::Result<()> {
        use libc::{
            CLONE_NEWNET, CLONE_NEWNS, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
            MS_RDONLY, MS_REC, MS_REMOUNT,
        };
        // SAFETY (every call below): plain system calls on valid,
        // NUL-terminated strings and integers.
        unsafe {
            check(libc::setns(self.net.as_raw_fd(), CLONE_NEWNET))?;
            check(libc::unshare(CLONE_NEWNS))?;
            // Nothing mounted here reaches the lab's own namespace.
            mount(None, c"/", None, MS_REC | MS_PRIVATE)?;
            mount(Some(&self.root), &self.root, None, MS_BIND | MS_REC)?;
            mount(
                Some(c"proc"),
                &self.proc,
                Some(c"proc"),
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
            )?;
            // A fresh sysfs shows this network namespace's devices; a
            // runtime mounts it read-only for an unprivileged container.
            let sys_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY;
            mount(Some(c"sysfs"), &self.sys, Some(c"sysfs"), sys_flags)?;
            mount(
                Some(c"tmpfs"),
                &self.dev,
                Some(c"tmpfs"),
                MS_NOSUID | MS_NOEXEC,
            )?;
            for (path, major, minor) in &self.devices {
                let device = libc::makedev(*major, *minor);
                check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, device))?;
                check(libc::chmod(path.as_ptr(), 0o666))?;
            }
            for (host, inside) in &self.mounts {
                mount(Some(host), inside, None, MS_BIND | MS_REC)?;
            }
            if self.read_only_root {
                mount(None, &self.root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)?;
            }
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            if self.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            // A root process keeps exactly the bounding set across exec;
            // another user keeps nothing once it changes uid.
            for capability in 0..=self.last_capability {
                if !self.keep.contains(&capability) {
                    check(libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0))?;
                }
            }
            let clear_ambient = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
            check(libc::prctl(libc::PR_CAP_AMBIENT, clear_ambient, 0, 0, 0))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2); None is a null pointer.
unsafe fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: the caller's strings are NUL-terminated; no data argument.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_are_linux_numbers() {
        let names = ["BPF", "NET_ADMIN", "PERFMON", "CAP_NET_RAW"].map(String::from);
        assert_eq!(capability_numbers(&names).unwrap(), [39, 12, 38, 13]);
        assert!(capability_numbers(&["FLY".into()]).is_err());
    }
}

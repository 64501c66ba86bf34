//! A lab of network namespaces on this machine, as in docs/lab.md.
//!
//! Everything a [`Lab`] creates (namespaces, daemons, bpffs mounts, its run
//! directory) is removed when it is dropped, so a failing test leaves nothing
//! behind. Names carry the process id and a counter, so concurrent runs and
//! concurrent tests never collide. Traffic only ever flows between the lab's
//! own namespaces.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    id: String,
    run_dir: PathBuf,
    namespaces: Vec<String>,
    daemons: Vec<(String, Child)>,
    mounts: Vec<PathBuf>,
}

impl Lab {
    /// Starts an empty lab; `tag` is a short word naming its purpose.
    pub fn new(tag: &str) -> Result<Self> {
        let id = format!(
            "pt{}-{}-{tag}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let run_dir = Path::new("/run/porter-lab").join(&id);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(Self {
            id,
            run_dir,
            namespaces: Vec::new(),
            daemons: Vec::new(),
            mounts: Vec::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A directory for this lab's config files, sockets and logs.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Creates namespace `<lab id>-<short>` with loopback up, and returns its name.
    pub fn netns(&mut self, short: &str) -> Result<String> {
        let name = format!("{}-{short}", self.id);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Connects `a.0` (interface `a.1`) to `b.0` (interface `b.1`) with a veth pair, both up.
    /// Interface names live in their namespaces, so they need not be unique across labs.
    pub fn veth(&self, a: (&str, &str), b: (&str, &str)) -> Result<()> {
        self.ip(
            a.0,
            &[
                "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", b.0,
            ],
        )?;
        self.ip(a.0, &["link", "set", a.1, "up"])?;
        self.ip(b.0, &["link", "set", b.1, "up"])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24`) to `interface` in `ns`.
    pub fn addr(&self, ns: &str, interface: &str, cidr: &str) -> Result<()> {
        // nodad: IPv6 addresses are usable at once instead of after DAD.
        let mut args = vec!["addr", "add", cidr, "dev", interface];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args)?;
        Ok(())
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", ns]).args(args))
    }

    /// A command that runs `program` inside `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Runs `args` inside `ns`, failing with its stderr when it fails.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        run(self.command(ns, program).args(rest))
    }

    /// Starts a long-running process; it is stopped when the lab is dropped.
    /// Its output goes to `<run dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<PathBuf> {
        let log_path = self.run_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        self.daemons.push((name.to_owned(), child));
        Ok(log_path)
    }

    /// Stops daemon `name` gracefully (SIGTERM), waiting up to `timeout`.
    pub fn stop(&mut self, name: &str, timeout: Duration) -> Result<()> {
        let mut child = self.take(name)?;
        terminate(&mut child, timeout);
        Ok(())
    }

    /// Daemon `name`, no longer the lab's to stop.
    fn take(&mut self, name: &str) -> Result<Child> {
        let index = self
            .daemons
            .iter()
            .position(|(daemon, _)| daemon == name)
            .with_context(|| format!("no daemon named {name}"))?;
        Ok(self.daemons.remove(index).1)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT...) to daemon `name`.
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let (_, child) = self
            .daemons
            .iter()
            .find(|(daemon, _)| daemon == name)
            .with_context(|| format!("no daemon named {name}"))?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: signalling our own child; no memory effects.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("cannot signal {name}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills daemon `name` at once (SIGKILL), as a crash or the OOM killer
    /// would, and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let mut child = self.take(name)?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Mounts a private bpffs under the run directory and returns its path.
    /// (`ip netns exec` remounts /sys, which would hide /sys/fs/bpf.)
    pub fn bpffs(&mut self) -> Result<PathBuf> {
        let path = self.run_dir.join(format!("bpffs{}", self.mounts.len()));
        std::fs::create_dir_all(&path)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path))?;
        self.mounts.push(path.clone());
        Ok(path)
    }

    /// Leaves everything running (for `cargo xtask demo --keep`).
    pub fn keep(mut self) {
        self.namespaces.clear();
        self.mounts.clear();
        for (_, child) in self.daemons.drain(..) {
            std::mem::forget(child);
        }
        self.run_dir = PathBuf::new();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            terminate(child, Duration::from_secs(3));
        }
        for ns in &self.namespaces {
            // Anything else a test started inside the namespace.
            if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<i32>().ok())
                {
                    // SAFETY: kill has no memory effects; the pid came from the kernel.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for mount in self.mounts.iter().rev() {
            let _ = run(Command::new("umount").arg(mount));
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        if !self.run_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

fn terminate(child: &mut Child, timeout: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child; no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `command`, returning stdout, or an error that carries its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!(
            "{command:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))` or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    while Instant::now() < deadline {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        thread::sleep(Duration::from_millis(50));
    }
    match last_error {
        Some(err) => Err(err.context(format!("timed out after {timeout:?} waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Runs `work` while two threads keep both cores of the CI machine busy
/// until `until`; the threads stop by themselves then, and are joined
/// before this returns.
pub fn with_cores_busy<T>(until: Instant, work: impl FnOnce() -> T) -> T {
    let burners: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let result = work();
    for burner in burners {
        let _ = burner.join();
    }
    result
}

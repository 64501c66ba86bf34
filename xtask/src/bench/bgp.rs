//! `cargo xtask bench bgp`: Porter's speaker announces 10,000 prefixes × 4
//! next hops (ADD-PATH) to BIRD in a netns lab; we time from starting the
//! speaker until BIRD holds all 40,000 paths, and read the speaker's CPU time
//! and peak RSS from its rusage. The baseline is GoBGP announcing the same
//! set into the same BIRD in the same run, loaded over its gRPC API.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use porter_tests::{
    lab::{self, wait_for},
    privilege,
    routers::{BgpLab, Daemon, ROUTER_V4, Router, SPEAKER_V4},
};

use super::emit;
use crate::cmd;

const PREFIXES: u32 = 10_000;
const NEXT_HOPS: u8 = 4;
const TIMEOUT: Duration = Duration::from_secs(120);

/// One speaker's run.
struct Measurement {
    seconds: f64,
    /// From Established to convergence: UPDATE transfer, without session setup.
    seconds_after_established: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

pub fn run() -> Result<()> {
    crate::setup::ensure_all()?;
    if !privilege::is_root() {
        bail!("bench bgp needs root (network namespaces); run it as root");
    }
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "porter-bgp",
        "--example",
        "bgp_load",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from("target"),
        std::path::PathBuf::from,
    );
    let load = target.join("release/examples/bgp_load");
    let load =
        std::fs::canonicalize(&load).with_context(|| format!("finding {}", load.display()))?;

    let mut lab = BgpLab::new("bench")?;
    // BIRD connects too (as in the lab's measurements, docs/lab.md): GoBGP listens and
    // takes BIRD's connection as soon as the peer is added, whereas its own
    // first connect attempt comes only after several seconds. Porter's
    // speaker has no listener here and connects itself.
    let router = lab.start_router(Daemon::Bird, None, false, false)?;
    wait_bird_ready(&lab, &router)?;
    let case = format!("{PREFIXES}x{NEXT_HOPS}_into_bird");

    let porter = measure_porter(&lab, &router, &load)?;
    emit("bgp", &case, "seconds_to_converge", porter.seconds, "s");
    emit(
        "bgp",
        &case,
        "seconds_after_established",
        porter.seconds_after_established,
        "s",
    );
    emit("bgp", &case, "cpu_seconds", porter.cpu_seconds, "s");
    emit("bgp", &case, "peak_rss_mib", porter.peak_rss_mib, "MiB");

    // A fresh BIRD for the baseline, so that neither speaker meets a BIRD
    // still backing off from the previous session.
    router.restart(&mut lab.lab)?;
    wait_bird_ready(&lab, &router)?;

    let gobgp = measure_gobgp(&mut lab, &router)?;
    let baseline = format!("{case}_gobgp");
    emit("bgp", &baseline, "seconds_to_converge", gobgp.seconds, "s");
    emit(
        "bgp",
        &baseline,
        "seconds_after_established",
        gobgp.seconds_after_established,
        "s",
    );
    emit("bgp", &baseline, "cpu_seconds", gobgp.cpu_seconds, "s");
    emit("bgp", &baseline, "peak_rss_mib", gobgp.peak_rss_mib, "MiB");
    emit(
        "bgp",
        &case,
        "ratio_vs_gobgp",
        porter.seconds / gobgp.seconds,
        "ratio",
    );
    emit(
        "bgp",
        &case,
        "ratio_vs_gobgp_after_established",
        porter.seconds_after_established / gobgp.seconds_after_established,
        "ratio",
    );
    Ok(())
}

fn wait_bird_ready(lab: &BgpLab, router: &Router) -> Result<()> {
    wait_for("BIRD's control socket", Duration::from_secs(10), || {
        Ok(router
            .birdc(&lab.lab, &["show", "status"])
            .is_ok()
            .then_some(()))
    })
}

/// Waits until BIRD holds every path; says on stderr when the session came
/// up, so that setup and transfer time can be told apart.
/// Returns (seconds from `start`, seconds from Established) to convergence.
fn wait_converged(lab: &BgpLab, router: &Router, start: Instant) -> Result<(f64, f64)> {
    let expected = u64::from(PREFIXES) * u64::from(NEXT_HOPS);
    let mut up_at = None;
    wait_for("BIRD to hold every path", TIMEOUT, || {
        if up_at.is_none() && router.established(&lab.lab, SPEAKER_V4.parse()?)? {
            up_at = Some(start.elapsed().as_secs_f64());
            eprintln!(
                "  session Established after {:.3} s",
                start.elapsed().as_secs_f64()
            );
        }
        let count = router.birdc(&lab.lab, &["show", "route", "count"])?;
        Ok((bird_route_count(&count) >= expected).then(|| {
            let total = start.elapsed().as_secs_f64();
            (total, total - up_at.unwrap_or(0.0))
        }))
    })
}

/// Porter's speaker: the clock runs from starting its process, which
/// includes building the routes and the whole session setup.
fn measure_porter(lab: &BgpLab, router: &Router, load: &std::path::Path) -> Result<Measurement> {
    let start = Instant::now();
    let mut child = lab
        .lab
        .command(&lab.speaker_ns, load)
        .args([
            ROUTER_V4,
            "65001",
            "65000",
            "172.30.0.10",
            &PREFIXES.to_string(),
            &NEXT_HOPS.to_string(),
        ])
        .spawn()
        .context("starting bgp_load")?;
    let converged = wait_converged(lab, router, start);
    // `ip netns exec` execs the speaker, so this pid is the speaker's.
    let pid = i32::try_from(child.id()).context("pid")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let usage = wait_rusage(pid);
    let _ = child.try_wait();
    let usage = usage?;
    let (seconds, seconds_after_established) = converged?;
    Ok(Measurement {
        seconds,
        seconds_after_established,
        cpu_seconds: usage.cpu.as_secs_f64(),
        peak_rss_mib: usage.max_rss_kib as f64 / 1024.0,
    })
}

/// GoBGP loaded through its gRPC API (AddPathStream), as fast as it loads.
/// The clock runs from AddPeer: GoBGP already holds the paths, so its
/// number leaves out the loading that Porter's includes.
fn measure_gobgp(lab: &mut BgpLab, router: &Router) -> Result<Measurement> {
    let api_dir = Path::new("/usr/share/gocode/src/github.com/osrg/gobgp/api");
    let stubs = lab.lab.run_dir().join("gobgp-stubs");
    std::fs::create_dir_all(&stubs)?;
    lab::run(
        Command::new("protoc")
            .arg("-I")
            .arg(api_dir)
            .args(["-I", "/usr/include"])
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_out={}", stubs.display()))
            .arg("--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin")
            .args(["gobgp.proto", "attribute.proto", "capability.proto"])
            .current_dir(api_dir),
    )
    .context("generating GoBGP's gRPC stubs (needs protobuf-compiler, protobuf-compiler-grpc, golang-github-osrg-gobgp-dev)")?;
    let script = stubs.join("gobgp_load.py");
    std::fs::write(&script, include_str!("gobgp_load.py"))?;
    let config = lab.lab.run_dir().join("gobgp-speaker.toml");
    std::fs::write(
        &config,
        "[global.config]\n  as = 65000\n  router-id = \"172.30.0.10\"\n  port = 179\n",
    )?;
    let ns = lab.speaker_ns.clone();
    let mut gobgpd = lab.lab.command(&ns, "gobgpd");
    gobgpd
        .arg("-f")
        .arg(&config)
        .args(["-t", "toml", "--api-hosts", "127.0.0.1:50051"]);
    lab.lab.spawn("gobgp-speaker", gobgpd)?;
    let gobgpd_pid = wait_for("gobgpd to start", Duration::from_secs(10), || {
        Ok(process_in(&ns, "gobgpd"))
    })?;

    // Debian's python3 has the grpcio and protobuf modules.
    let mut loader = lab
        .lab
        .command(&ns, "/usr/bin/python3")
        .arg(&script)
        .arg(&stubs)
        .args([
            "127.0.0.1:50051",
            ROUTER_V4,
            "65001",
            &PREFIXES.to_string(),
            &NEXT_HOPS.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the GoBGP loader")?;
    let stdout = loader.stdout.take().context("loader stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut start = None;
    for line in lines.by_ref() {
        let line = line?;
        if line.starts_with("loaded") {
            eprintln!("GoBGP {line} s (AddPathStream of every path)");
            start = Some(Instant::now());
            break;
        }
    }
    let start = start.context("the GoBGP loader failed before adding the peer")?;
    let (seconds, seconds_after_established) = wait_converged(lab, router, start)?;
    // Read the rest so the loader can finish writing and exit.
    lines.for_each(drop);
    let _ = loader.wait();
    let (cpu_seconds, peak_rss_mib) = proc_usage(gobgpd_pid)?;
    lab.lab.stop("gobgp-speaker", Duration::from_secs(5))?;
    Ok(Measurement {
        seconds,
        seconds_after_established,
        cpu_seconds,
        peak_rss_mib,
    })
}

/// The pid of the process named `comm` inside namespace `ns`.
fn process_in(ns: &str, comm: &str) -> Option<i32> {
    let pids = lab::run(Command::new("ip").args(["netns", "pids", ns])).ok()?;
    pids.split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
}

/// CPU seconds (user + system) and peak RSS (VmHWM) of a running process.
fn proc_usage(pid: i32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |index: usize| -> f64 {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .context("VmHWM missing from /proc status")?;
    Ok((cpu, hwm_kib / 1024.0))
}

/// Parses BIRD's `show route count`: "40000 of 40000 routes for 10000 networks in table master4".
fn bird_route_count(text: &str) -> u64 {
    text.lines()
        .filter(|line| line.contains("master4"))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Usage {
    cpu: Duration,
    max_rss_kib: i64,
}

fn wait_rusage(pid: i32) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 on the speaker: {}", std::io::Error::last_os_error());
    }
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    Ok(Usage {
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bird_route_count() {
        let text = "BIRD 2.0.12 ready.\n40000 of 40000 routes for 10000 networks in table master4\n\
                    0 of 0 routes for 0 networks in table master6\nTotal: 40000 of 40000 routes for 10000 networks in 2 tables\n";
        assert_eq!(bird_route_count(text), 40000);
    }
}

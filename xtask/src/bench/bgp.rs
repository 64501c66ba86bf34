//! `cargo xtask bench bgp`: Porter's speaker announces 10,000 prefixes × 4
//! next hops (ADD-PATH) to BIRD in a netns lab; we time from starting the
//! speaker until BIRD holds all 40,000 paths, and read the speaker's CPU time
//! and peak RSS from its rusage.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use porter_tests::{
    lab::wait_for,
    privilege,
    routers::{BgpLab, Daemon, ROUTER_V4},
};

use super::report;
use crate::cmd;

const PREFIXES: u32 = 10_000;
const NEXT_HOPS: u8 = 4;
const TIMEOUT: Duration = Duration::from_secs(120);

pub fn run() -> Result<()> {
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
    let router = lab.start_router(Daemon::Bird, None, false)?;
    // Let BIRD come up before the clock starts.
    wait_for("BIRD's control socket", Duration::from_secs(10), || {
        Ok(router
            .birdc(&lab.lab, &["show", "status"])
            .is_ok()
            .then_some(()))
    })?;
    let expected = u64::from(PREFIXES) * u64::from(NEXT_HOPS);

    let start = Instant::now();
    let mut child = lab
        .lab
        .command(&lab.speaker_ns, &load)
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
    let converged = wait_for("BIRD to hold every path", TIMEOUT, || {
        let count = router.birdc(&lab.lab, &["show", "route", "count"])?;
        Ok((bird_route_count(&count) >= expected).then(|| start.elapsed()))
    });
    // SIGTERM, then collect rusage of the speaker process (`ip netns exec`
    // execs it, so the pid is the speaker's).
    let pid = i32::try_from(child.id()).context("pid")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let usage = wait_rusage(pid)?;
    let _ = child.try_wait();
    let converged = converged?;

    let case = format!("{PREFIXES}x{NEXT_HOPS}_into_bird");
    report(
        "bgp",
        &case,
        "seconds_to_converge",
        converged.as_secs_f64(),
        "s",
    );
    report("bgp", &case, "cpu_seconds", usage.cpu.as_secs_f64(), "s");
    report(
        "bgp",
        &case,
        "peak_rss_mib",
        usage.max_rss_kib as f64 / 1024.0,
        "MiB",
    );
    eprintln!(
        "no GoBGP baseline in this run: loading GoBGP fast needs its gRPC API \
         (AddPathStream), which this bench does not have a client for yet, and the \
         gobgp CLI adds one route per process, which would not be a fair baseline"
    );
    drop(router);
    Ok(())
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

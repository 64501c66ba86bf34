//! A node whose agent cannot program its data plane is withdrawn, in the
//! data-centre lab (tests/src/datacenter.rs): an agent started over the
//! pins of a newer agent's layout (a rollback), or over maps pinned with
//! other sizes, publishes `PorterDataplaneReady=False` on its Node, the
//! controller withdraws the node's path at the router (BIRD), and an Event
//! says why; a working agent brings the node back.
//!
//! `cargo test -p porter-tests --test frozen_dataplane [-- NAME...]`.
use std::{
    net::IpAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use porter_agent::{PinLayout, pins::PIN_LAYOUT_VERSION};
use porter_common::map_names;
use porter_tests::{
    bins,
    cases::{Case, Suite},
    datacenter::{Datacenter, POD_PORT, samples_dir},
    lab::{run, wait_for},
    manifests::{self, ServiceManifest},
};

const NS: &str = "default";
const POOL: &str = "lab-v4";
const WAIT: Duration = Duration::from_secs(30);
/// The node whose agent is rolled back or misconfigured (`n2`).
const NODE: usize = 1;
const AGENT_METRICS: &str = "http://127.0.0.1:9191";

struct Ctx {
    dc: Datacenter,
    web: IpAddr,
}

const CASES: &[(&str, Case<Ctx>)] = &[
    ("newer_pin_layout_withdraws_the_node", newer_pin_layout),
    ("map_size_mismatch_withdraws_the_node", map_size_mismatch),
];

fn main() -> ExitCode {
    Suite {
        name: "frozen_dataplane",
        cases: CASES,
        setup,
        describe: |ctx| ctx.dc.describe(),
    }
    .main()
}

fn setup() -> Result<Ctx> {
    let mut dc = Datacenter::new("frozen", &[1, 1])?;
    dc.apply_file(&samples_dir().join("bgp.yaml"))?;
    dc.apply("pools.yaml", &manifests::eip(POOL, "192.168.2.0/28"))?;
    dc.start_porter(WAIT)?;
    dc.add_service(
        &ServiceManifest {
            namespace: NS,
            name: "web",
            port: 8080,
            target_port: POD_PORT,
            annotations: &[("eip.porter.kubesphere.io/v1alpha2", POOL)],
            ipv6: false,
            cluster: false,
        },
        &[0, 1],
    )?;
    let web = dc.wait_service_ip(NS, "web", WAIT)?;
    dc.wait_next_hops(web, &dc.hops_of(web, &[0, 1]), WAIT)?;
    Ok(Ctx { dc, web })
}

fn agent_name() -> String {
    format!("agent-n{}", NODE + 1)
}

/// Starts node n2's agent with `extra` flags, without waiting for a data
/// plane it may never get.
fn spawn_agent(dc: &mut Datacenter, extra: &[&str]) -> Result<()> {
    let mut command = dc.agent_command(NODE)?;
    command.args(extra);
    dc.lab.spawn(&agent_name(), command)?;
    Ok(())
}

/// Waits until the router reaches the EIP through n1 only, and checks what
/// the operator sees: a Warning Event on the Node naming `why`, the
/// agent's `/readyz` failing with `reason`, and the metric. Returns how
/// long the withdrawal took after `since`.
fn expect_withdrawn(ctx: &Ctx, since: Instant, reason: &str, why: &str) -> Result<Duration> {
    let dc = &ctx.dc;
    dc.wait_next_hops(ctx.web, &dc.hops_of(ctx.web, &[0]), WAIT)?;
    let took = since.elapsed();
    let node = format!("Node {}", dc.nodes[NODE].name);
    let event = wait_for("a DataplaneFrozen Event on the Node", WAIT, || {
        Ok(dc
            .events()?
            .into_iter()
            .rev()
            .find(|(r, regarding, _)| r == "DataplaneFrozen" && *regarding == node))
    })?;
    ensure!(event.2.contains(why), "the Event says why: {event:?}");
    ensure!(event.2.contains("withdrawn"), "and what follows: {event:?}");
    let ns = &dc.nodes[NODE].ns;
    let readyz = dc
        .lab
        .exec(ns, &["curl", "-s", &format!("{AGENT_METRICS}/readyz")])?;
    ensure!(readyz.contains(reason), "/readyz says {readyz}");
    let metrics = dc
        .lab
        .exec(ns, &["curl", "-sSf", &format!("{AGENT_METRICS}/metrics")])?;
    for line in [
        format!("porter_agent_dataplane_frozen{{reason=\"{reason}\"}} 1"),
        "porter_agent_dataplane_ready 0".to_owned(),
    ] {
        ensure!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    Ok(took)
}

/// Starts a working agent on n2 and waits until the router reaches the EIP
/// through both nodes again, with a DataplaneReady Event.
fn expect_restored(ctx: &mut Ctx) -> Result<Duration> {
    let started = Instant::now();
    ctx.dc.start_agent(NODE)?;
    let dc = &ctx.dc;
    dc.wait_next_hops(ctx.web, &dc.hops_of(ctx.web, &[0, 1]), WAIT)?;
    let took = started.elapsed();
    let node = format!("Node {}", dc.nodes[NODE].name);
    let last = dc
        .events()?
        .into_iter()
        .rfind(|(_, regarding, _)| *regarding == node)
        .map(|(reason, _, _)| reason);
    ensure!(
        last.as_deref() == Some("DataplaneReady"),
        "the Node's last Event: {last:?}"
    );
    Ok(took)
}

/// A rollback: the pins (and the attached program) are those of an agent
/// of the next layout version. The older agent must leave them alone and
/// withdraw the node; `porter-agent cleanup` and a restart bring it back.
fn newer_pin_layout(ctx: &mut Ctx) -> Result<Duration> {
    ctx.dc.stop_agent(NODE)?;
    let pins = PinLayout::new(&ctx.dc.nodes[NODE].bpffs);
    let newer = PIN_LAYOUT_VERSION + 1;
    std::fs::rename(pins.versioned(), pins.root().join(format!("v{newer}")))?;
    std::fs::rename(pins.marker(PIN_LAYOUT_VERSION), pins.marker(newer))?;
    let started = Instant::now();
    spawn_agent(&mut ctx.dc, &[])?;
    let took = expect_withdrawn(ctx, started, "NewerPinLayout", &format!("v{newer}"))?;
    println!("    withdrawn {took:?} after the older agent started");
    ensure!(
        !pins.versioned().exists(),
        "the older agent created no pins of its own beside the newer ones"
    );
    ctx.dc.stop_agent(NODE)?;
    run(std::process::Command::new(bins::binary("porter-agent")?)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(&ctx.dc.nodes[NODE].bpffs))
    .context("porter-agent cleanup")?;
    let back = expect_restored(ctx)?;
    println!("    back {back:?} after a working agent started");
    Ok(took)
}

/// An agent restarted with another `--maglev-size` than the pinned maps
/// have; restarted with the old size, it serves again.
fn map_size_mismatch(ctx: &mut Ctx) -> Result<Duration> {
    ctx.dc.stop_agent(NODE)?;
    let started = Instant::now();
    spawn_agent(&mut ctx.dc, &["--maglev-size", "4099"])?;
    let took = expect_withdrawn(ctx, started, "MapSizeMismatch", map_names::MAGLEV)?;
    println!("    withdrawn {took:?} after the misconfigured agent started");
    ctx.dc.stop_agent(NODE)?;
    let back = expect_restored(ctx)?;
    println!("    back {back:?} after a working agent started");
    Ok(took)
}

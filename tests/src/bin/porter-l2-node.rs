//! A Layer 2 node for the netns lab until the agent drives Layer 2 from the
//! cluster state: the data plane serving one service per EIP from local pods,
//! plus the agent's own Layer 2 rounds (porter_agent::layer2) with a fixed
//! candidate set and file leases. Killing it is what a crashed agent looks like.
//!
//! Usage: porter-l2-node --node N --bpffs P --interface I --lease-dir D
//!        --candidates n1,n2 --port 80 --target-port 8080
//!        (--eip IP)... (--backend POD_IP)... [--answer-on NAME|can_reach:IP]
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use porter_agent::{
    Backend, Dataplane, DataplaneConfig, PinLayout, Protocol, ServiceAddr, ServiceSpec,
    layer2::{
        Layer2,
        announce::Announcer,
        lease::FileLeases,
        metrics::Layer2Metrics,
        speaker::{Speaker, Timing},
    },
    xdp_attach::XdpModePreference,
};

#[derive(Default)]
struct Args {
    node: String,
    bpffs: PathBuf,
    interface: String,
    lease_dir: PathBuf,
    candidates: BTreeSet<String>,
    port: u16,
    target_port: u16,
    eips: Vec<IpAddr>,
    backends: Vec<IpAddr>,
    /// `--answer-on CHOICE` limits every EIP to one interface (as a pool's
    /// `spec.interface` does): a name or `can_reach:<ip>`.
    interface_choices: BTreeMap<IpAddr, String>,
    answer_on: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args::default();
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--node" => args.node = value,
            "--bpffs" => args.bpffs = value.into(),
            "--interface" => args.interface = value,
            "--lease-dir" => args.lease_dir = value.into(),
            "--candidates" => args.candidates = value.split(',').map(str::to_owned).collect(),
            "--port" => args.port = value.parse()?,
            "--target-port" => args.target_port = value.parse()?,
            "--eip" => args.eips.push(value.parse()?),
            "--backend" => args.backends.push(value.parse()?),
            "--answer-on" => args.answer_on = Some(value),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.node.is_empty() || args.interface.is_empty() {
        bail!("--node and --interface are required");
    }
    if let Some(choice) = &args.answer_on {
        args.interface_choices = args.eips.iter().map(|&eip| (eip, choice.clone())).collect();
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let config = DataplaneConfig {
        maglev_size: 251,
        max_services: 8,
        ..DataplaneConfig::default()
    };
    let mut dataplane = Dataplane::open(&PinLayout::new(&args.bpffs), config)?;
    dataplane.attach_xdp(&args.interface, XdpModePreference::Driver)?;
    dataplane.attach_tc_egress(&args.interface)?;
    for &eip in &args.eips {
        dataplane.upsert_service(&ServiceSpec {
            addr: ServiceAddr {
                vip: eip,
                port: args.port,
                proto: Protocol::Tcp,
            },
            backends: args
                .backends
                .iter()
                .filter(|pod| pod.is_ipv4() == eip.is_ipv4())
                .map(|&addr| Backend {
                    addr,
                    port: args.target_port,
                })
                .collect(),
        })?;
    }
    let candidates: BTreeMap<IpAddr, BTreeSet<String>> = args
        .eips
        .iter()
        .map(|&eip| (eip, args.candidates.clone()))
        .collect();
    let speaker = Speaker::new(
        args.node.clone(),
        Timing::default(),
        FileLeases::new(&args.lease_dir)?,
    );
    let mut layer2 = Layer2::new(speaker, Announcer::open()?, Layer2Metrics::default());
    println!("layer2 node {} ready", args.node);
    let mut ticker = tokio::time::interval(layer2.round_interval());
    loop {
        ticker.tick().await;
        match layer2
            .step(&mut dataplane, &candidates, &args.interface_choices)
            .await
        {
            Ok(round) => {
                if !round.takeovers.is_empty() {
                    println!("took over {:?}", round.takeovers);
                }
            }
            Err(err) => eprintln!("layer 2 round failed: {err}"),
        }
    }
}

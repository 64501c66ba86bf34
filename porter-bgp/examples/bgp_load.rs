//! Announces N prefixes × K next hops to one peer and runs until SIGTERM.
//! `cargo xtask bench bgp` runs it in a lab namespace and times how long the
//! peer takes to hold every path; its rusage gives CPU time and peak RSS.
//!
//! Usage: bgp_load <peer ip> <peer as> <local as> <router id> <prefixes> <next hops>
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};
use porter_bgp::{PeerConfig, Speaker, SpeakerConfig};

fn arg<T: std::str::FromStr>(args: &[String], index: usize, name: &str) -> Result<T, String> {
    args.get(index)
        .ok_or_else(|| format!("missing argument {name}"))?
        .parse()
        .map_err(|_| format!("invalid {name}: {:?}", args.get(index)))
}

/// Prefixes 10.0.0.0/32 upwards, next hops 172.30.0.11 upwards: the same set
/// the GoBGP baseline loads.
fn routes(prefixes: u32, next_hops: u8) -> BTreeMap<IpNet, BTreeSet<IpAddr>> {
    let hops: BTreeSet<IpAddr> = (0..next_hops)
        .map(|n| IpAddr::V4(Ipv4Addr::new(172, 30, 0, 11 + n)))
        .collect();
    (0..prefixes)
        .filter_map(|index| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + index), 32).ok())
        .map(|net| (IpNet::V4(net), hops.clone()))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let peer_ip: IpAddr = arg(&args, 1, "peer ip")?;
    let peer_as: u32 = arg(&args, 2, "peer as")?;
    let local_as: u32 = arg(&args, 3, "local as")?;
    let router_id: Ipv4Addr = arg(&args, 4, "router id")?;
    let prefixes: u32 = arg(&args, 5, "prefixes")?;
    let next_hops: u8 = arg(&args, 6, "next hops")?;
    let speaker = Speaker::start(SpeakerConfig {
        local_as,
        router_id,
        listen: None,
        graceful_restart: None,
    })
    .await
    .map_err(|error| error.to_string())?;
    speaker.set_routes(routes(prefixes, next_hops)).await;
    let mut peer = PeerConfig::new(peer_ip, peer_as);
    peer.connect_retry = Duration::from_millis(200);
    speaker.upsert_peer(peer).await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| error.to_string())?;
    term.recv().await;
    speaker.shutdown().await;
    Ok(())
}

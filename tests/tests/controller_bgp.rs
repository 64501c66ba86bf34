//! porter-controller on the `dir:` source peering with BIRD for real: the
//! seed's samples applied, the Service gets its IP in the status file, and
//! BIRD installs an ECMP route to it with one next hop per serving node.
use std::time::{Duration, Instant};

use anyhow::Result;
use porter_tests::{
    datacenter::{Datacenter, samples_dir},
    privilege,
};

#[test]
fn controller_announces_the_service_ip_to_bird_with_ecmp() -> Result<()> {
    if !privilege::can_run("controller_announces_the_service_ip_to_bird_with_ecmp") {
        return Ok(());
    }
    let mut dc = Datacenter::new("ctlbgp", &[1, 1, 1])?;
    for sample in ["eip.yaml", "bgp.yaml", "service.yaml"] {
        dc.apply_file(&samples_dir().join(sample))?;
    }
    // Pods ready on n1 and n3 only: n2 must not be a next hop.
    dc.set_endpoints("default", "mylbapp", &dc.endpoints_on(&[0, 2]))?;
    let started = Instant::now();
    dc.start_controller()?;
    let ip = dc.wait_service_ip("default", "mylbapp", Duration::from_secs(20))?;
    assert_eq!(
        ip.to_string(),
        "192.168.2.2",
        "the sample pool's only address"
    );
    let hops = dc.hops_of(ip, &[0, 2]);
    dc.wait_next_hops(ip, &hops, Duration::from_secs(30))?;
    println!(
        "controller start -> ECMP route {ip} via {hops:?} in BIRD: {:?}",
        started.elapsed()
    );
    let route = dc
        .lab
        .ip(&dc.router_ns, &["route", "show", &format!("{ip}/32")])?;
    assert!(route.contains("proto bird"), "installed by BIRD: {route}");

    // A third serving node joins the route; a node going NotReady leaves it.
    dc.set_endpoints("default", "mylbapp", &dc.endpoints_on(&[0, 1, 2]))?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &[0, 1, 2]), Duration::from_secs(20))?;
    dc.set_node_ready(0, false)?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &[1, 2]), Duration::from_secs(20))?;
    Ok(())
}

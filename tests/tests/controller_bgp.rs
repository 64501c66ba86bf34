//! porter-controller on the `dir:` source peering with BIRD for real: the
//! seed's samples applied, the Service gets its IP in the status file, and
//! BIRD installs an ECMP route to it with one next hop per serving node;
//! and a TCP MD5 session keyed from a Secret.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use porter_tests::{
    datacenter::{CONTROLLER_V4, Datacenter, PORTER_AS, ROUTER_AS, ROUTER_LAN_V4, samples_dir},
    lab::wait_for,
};

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn controller_announces_the_service_ip_to_bird_with_ecmp() -> Result<()> {
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

/// BIRD requires TCP MD5 on the session; the controller's password comes
/// from a Secret in the `dir:` source (`kind: Secret` beside the other
/// manifests). No Secret: nothing is started, an Event says why. A wrong
/// value: no session. The right value, changed in place: the same
/// controller re-keys the session and the route is installed.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn controller_keys_the_bird_session_with_a_password_from_a_secret() -> Result<()> {
    const PASSWORD: &str = "md5-from-a-secret";
    const WRONG: &str = "not-the-password";
    let mut dc = Datacenter::new("ctlmd5", &[1])?;
    dc.router.config.neighbors[0].md5_password = Some(PASSWORD.into());
    dc.router.restart(&mut dc.lab)?;
    for sample in ["eip.yaml", "service.yaml"] {
        dc.apply_file(&samples_dir().join(sample))?;
    }
    dc.set_endpoints("default", "mylbapp", &dc.endpoints_on(&[0]))?;
    dc.apply(
        "bgp.yaml",
        &format!(
            "apiVersion: network.kubesphere.io/v1alpha2
kind: BgpConf
metadata:
  name: default
spec:
  as: {PORTER_AS}
  routerId: {CONTROLLER_V4}
---
apiVersion: network.kubesphere.io/v1alpha2
kind: BgpPeer
metadata:
  name: router
spec:
  conf:
    peerAs: {ROUTER_AS}
    neighborAddress: {ROUTER_LAN_V4}
    authPasswordSecretRef:
      name: bgp-auth
      key: password
  timers:
    config:
      connectRetry: 1
"
        ),
    )?;
    let log = dc.start_controller()?;
    let ip = dc.wait_service_ip("default", "mylbapp", Duration::from_secs(20))?;
    let controller: std::net::IpAddr = CONTROLLER_V4.parse()?;

    // No Secret yet: a Warning Event on the BgpPeer names what is missing.
    wait_for(
        "an AuthPasswordUnavailable Event",
        Duration::from_secs(20),
        || {
            Ok(dc
                .events()?
                .into_iter()
                .find(|(reason, regarding, message)| {
                    reason == "AuthPasswordUnavailable"
                        && regarding == "BgpPeer router"
                        && message.contains("Secret porter-system/bgp-auth")
                }))
        },
    )?;

    // A wrong value (base64 under `data`): the session never comes up.
    dc.apply(
        "secret.yaml",
        &secret_manifest(&format!("data:\n  password: {}", base64(WRONG)?)),
    )?;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        assert!(
            !dc.router.established(&dc.lab, controller)?,
            "a session came up with the wrong password:\n{}",
            dc.router.describe(&dc.lab)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(dc.next_hops(ip)?.is_empty(), "no route without a session");

    // The right value (plain text under `stringData`): the running
    // controller re-keys the session and BIRD installs the route.
    dc.apply(
        "secret.yaml",
        &secret_manifest(&format!("stringData:\n  password: {PASSWORD}")),
    )?;
    dc.wait_next_hops(ip, &dc.hops_of(ip, &[0]), Duration::from_secs(30))
        .with_context(|| dc.router.describe(&dc.lab))?;
    assert!(dc.router.established(&dc.lab, controller)?);
    let text = std::fs::read_to_string(&log)?;
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "the controller logged a password");
    }
    Ok(())
}

fn secret_manifest(data: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: bgp-auth
  namespace: porter-system
{data}
"
    )
}

/// `text` as `kubectl create secret` writes it under `data`.
fn base64(text: &str) -> Result<String> {
    let encoded = serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))?;
    Ok(encoded.as_str().unwrap_or_default().to_string())
}

//! The disruption suite: the data-centre lab (BIRD, the controller, three
//! agents, 1/2/3 pods) holds 200 idle connections to an
//! `externalTrafficPolicy: Cluster` and to a `Local` Service through BIRD's
//! ECMP while a node is drained and rejoins, every agent restarts and the
//! controller restarts (`porter_tests::disruption`). Prints, per event and
//! policy, `{"suite":"disruption","case":EVENT_POLICY,"metric":"broken_connections",
//! "value":N,"held":..}`; `Local` is the same run's baseline.
use std::time::Duration;

use anyhow::{Result, bail};
use porter_tests::{
    datacenter::{Datacenter, samples_dir},
    disruption, manifests, privilege,
};

use crate::cmd;

const WAIT: Duration = Duration::from_secs(30);
const HELD: usize = 200;
const POOL: &str = "bench-v4";

pub fn run() -> Result<()> {
    if !privilege::is_root() {
        bail!("the disruption benchmark builds network namespaces and loads BPF: run it as root");
    }
    cmd::run(cmd::cargo().args(["build", "--workspace", "--bins"]))?;
    let mut dc = Datacenter::new("bdis", &[1, 2, 3])?;
    dc.apply_file(&samples_dir().join("bgp.yaml"))?;
    dc.apply("pools.yaml", &manifests::eip(POOL, "192.168.2.0/28"))?;
    dc.start_porter(WAIT)?;
    let (outcomes, _) = disruption::run(
        &mut dc,
        "default",
        ("eip.porter.kubesphere.io/v1alpha2", POOL),
        HELD,
        WAIT,
    )?;
    for outcome in outcomes {
        println!("{}", outcome.json());
    }
    Ok(())
}

//! BFD in `speakerMode: node` (docs/bfd.md), in the lab of
//! `porter_tests::bfd_lab`: node n1 behind an FRR leaf running bfdd for its
//! BGP neighbour n1, the BgpPeer with `spec.bfd` at 300 ms × 3. The agent's
//! BFD session comes up and shows in the BgpPeer status; an agent restart
//! keeps the route (BGP closes first, graceful restart, then AdminDown);
//! then n1 goes silent on its link (every packet dropped both ways; no link
//! goes down, no Kubernetes object changes) and the leaf removes n1's next
//! hop, timed from the leaf's side; when the link heals, the route returns.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use porter_tests::bfd_lab::NodeBfdLab;

/// The leaf must drop the route within this much of the cut: the detection
/// time (900 ms at the defaults) after the last packet, plus FRR and the
/// kernel, plus slack for a loaded 2-core CI machine. The measured value is
/// printed; `cargo xtask bench failover` reports the median of 10.
const DEADLINE: Duration = Duration::from_secs(2);

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn bfd_takes_a_silently_cut_node_out_of_the_leaf_s_route() -> Result<()> {
    let mut lab = NodeBfdLab::start("bfdnode", Duration::from_millis(300))?;
    let n1 = lab.n1;

    // An agent restart is not a failure: the leaf keeps n1's route throughout.
    lab.dc.stop_agent(0)?;
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(3) {
        ensure!(
            lab.leaf_hops()? == [n1],
            "the leaf dropped n1 {:?} into an agent restart: {}",
            stopped.elapsed(),
            lab.dc.leaves[0].describe(&lab.dc.lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.dc.start_agent(0)?;
    lab.wait_bfd_up()?;
    ensure!(lab.leaf_hops()? == [n1], "route lost over the restart");

    let gone = lab.time_silent_cut()?;
    println!("silent cut: the leaf removed n1's next hop after {gone:?}");
    ensure!(
        gone <= DEADLINE,
        "the leaf removed n1 after {gone:?} (deadline {DEADLINE:?})"
    );
    let back = lab.heal()?;
    println!("link healed: route back after {back:?}");
    Ok(())
}

//! The agent attaches the XDP program, the program counts real packets, the
//! attachment survives an agent restart with its counters, and `cleanup`
//! removes everything.
use porter_tests::scenarios::SingleNodeLab;

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn agent_attaches_counts_survives_restart_and_cleans_up() -> anyhow::Result<()> {
    let mut lab = SingleNodeLab::new("attach")?;
    let log = lab.start_agent()?;
    assert!(lab.xdp_attached()?, "XDP is attached to the node's eth0");
    let agent_log = std::fs::read_to_string(&log)?;
    assert!(
        agent_log.contains("mode=driver"),
        "veth supports native XDP, and the agent says which mode it used:\n{agent_log}"
    );

    let before = lab.packets_seen()?;
    lab.ping_node(20)?;
    let after = lab.packets_seen()?;
    assert!(
        after - before >= 20,
        "20 echo requests crossed the XDP hook, counter went {before} -> {after}"
    );

    // A stopped agent leaves the data plane in place.
    lab.stop_agent()?;
    assert!(
        lab.xdp_attached()?,
        "XDP stays attached after the agent stops"
    );
    lab.ping_node(10)?;
    let while_stopped = lab.packets_seen()?;
    assert!(
        while_stopped - after >= 10,
        "packets are still counted with no agent running"
    );

    // A new agent adopts the pinned link and keeps the pinned counters.
    let log = lab.start_agent()?;
    let agent_log = std::fs::read_to_string(&log)?;
    assert!(
        agent_log.contains("replaced the program on the pinned XDP link"),
        "restart swaps the program on the existing link:\n{agent_log}"
    );
    assert!(
        lab.packets_seen()? >= while_stopped,
        "counters survive the restart"
    );
    lab.stop_agent()?;

    let cleanup = lab.agent_command(&["cleanup"])?.output()?;
    assert!(cleanup.status.success(), "cleanup: {cleanup:?}");
    assert!(!lab.xdp_attached()?, "cleanup detaches XDP");
    assert!(!lab.pins().root().exists(), "cleanup removes every pin");
    Ok(())
}

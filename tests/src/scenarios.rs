//! Labs assembled for a purpose, shared by the tests and `cargo xtask demo`.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use porter_agent::{PinLayout, stats};
use porter_common::Stat;

use crate::{
    bins,
    lab::{Lab, wait_for},
};

/// A client and one node joined by a veth pair, with `porter-agent` attaching
/// XDP to the node's `eth0`.
pub struct SingleNodeLab {
    pub lab: Lab,
    pub client: String,
    pub node: String,
    pub bpffs: PathBuf,
    pub node_ip: &'static str,
}

const AGENT: &str = "agent";

impl SingleNodeLab {
    pub fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let client = lab.netns("cl")?;
        let node = lab.netns("n1")?;
        lab.veth((&client, "eth0"), (&node, "eth0"))?;
        lab.addr(&client, "eth0", "172.31.0.2/24")?;
        lab.addr(&node, "eth0", "172.31.0.1/24")?;
        let bpffs = lab.bpffs()?;
        Ok(Self {
            lab,
            client,
            node,
            bpffs,
            node_ip: "172.31.0.1",
        })
    }

    pub fn pins(&self) -> PinLayout {
        PinLayout::new(&self.bpffs)
    }

    /// `porter-agent <args> --bpffs <lab bpffs>` run inside the node.
    pub fn agent_command(&self, args: &[&str]) -> Result<Command> {
        let mut command = self.lab.command(&self.node, bins::binary("porter-agent")?);
        command.args(args).arg("--bpffs").arg(&self.bpffs);
        Ok(command)
    }

    /// Starts the agent on the node and waits until it reports its data plane ready.
    pub fn start_agent(&mut self) -> Result<PathBuf> {
        let command =
            self.agent_command(&["run", "--interface", "eth0", "--stats-interval", "0"])?;
        let log = self.lab.spawn(AGENT, command)?;
        wait_for(
            "the agent to report its data plane ready",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&log)?;
                Ok(text.contains("data plane ready").then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "agent log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(log)
    }

    /// Stops the agent the way a DaemonSet rollout would (SIGTERM).
    pub fn stop_agent(&mut self) -> Result<()> {
        self.lab.stop(AGENT, Duration::from_secs(5))
    }

    /// Sends `count` pings from the client to the node; all must be answered.
    pub fn ping_node(&self, count: u32) -> Result<()> {
        self.lab.exec(
            &self.client,
            &[
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                "1",
                self.node_ip,
            ],
        )?;
        Ok(())
    }

    /// The XDP program's count of packets seen, read from the pinned map.
    pub fn packets_seen(&self) -> Result<u64> {
        Ok(stats::read_stat(&self.pins(), Stat::PacketsSeen)?)
    }

    /// The `xdp` line of the node's `eth0`, if a program is attached.
    pub fn xdp_attached(&self) -> Result<bool> {
        let link = self.lab.ip(&self.node, &["link", "show", "eth0"])?;
        Ok(link.contains("xdp"))
    }
}

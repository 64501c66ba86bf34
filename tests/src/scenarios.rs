//! Labs assembled for a purpose, shared by the tests and `cargo xtask demo`.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use porter_agent::{
    Backend, Dataplane, DataplaneConfig, LocalService, PinLayout, Protocol, ServiceAddr,
    dataplane::attach::XdpModePreference, ebpf_object::EBPF_OBJECT, stats,
};
use porter_common::{Stat, program_names};

use crate::{
    bins,
    lab::{Lab, wait_for},
    netns::{NamedClient, NamedServer, run_in},
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
        let (client, node) = client_and_node(&mut lab)?;
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

    /// Starts the agent on the node (with an empty cluster, so it only
    /// attaches) and waits until it reports its data plane ready.
    pub fn start_agent(&mut self) -> Result<PathBuf> {
        let manifests = self.lab.run_dir().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let source = format!("dir:{}", manifests.display());
        let command = self.agent_command(&[
            "run",
            "--node-name",
            "n1",
            "--interface",
            "eth0",
            "--source",
            &source,
        ])?;
        spawn_agent(&mut self.lab, AGENT, command)
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

/// Starts `command` (a `porter-agent run`) as daemon `name` and waits until
/// it reports its data plane ready; returns its log.
pub fn spawn_agent(lab: &mut Lab, name: &str, command: Command) -> Result<PathBuf> {
    let log = lab.spawn(name, command)?;
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

/// A client, a node running the data plane on its uplink, and two pods on
/// that node, each serving TCP/8080 with a [`NamedServer`] that says which
/// pod it is:
///
/// ```text
/// client 172.31.0.2 ── eth0 172.31.0.1  node  vp1 ── pod1 10.244.1.2
///   (EIP 192.0.2.10 routed via the node)       vp2 ── pod2 10.244.2.2
/// ```
///
/// The client's uplink sends complete checksums, as a wire does (veth would
/// otherwise hand over offloaded, unfinished ones).
pub struct PodLab {
    /// Detached and stopped before the lab goes (fields drop in order).
    pass_xdp: Vec<Ebpf>,
    _servers: Vec<NamedServer>,
    pub lab: Lab,
    pub client: String,
    pub node: String,
    pub pods: [String; 2],
    pub bpffs: PathBuf,
}

impl PodLab {
    pub const EIP: &'static str = "192.0.2.10";
    pub const EIP6: &'static str = "2001:db8::10";
    pub const POD_IPS: [&'static str; 2] = ["10.244.1.2", "10.244.2.2"];
    pub const POD_IPS6: [&'static str; 2] = ["fd00:244:1::2", "fd00:244:2::2"];
    pub const POD_SUBNET: &'static str = "10.244.0.0/16";
    pub const TARGET_PORT: u16 = 8080;

    pub fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let (client, node) = client_and_node(&mut lab)?;
        lab.addr(&client, "eth0", "fd00:31::2/64")?;
        lab.addr(&node, "eth0", "fd00:31::1/64")?;
        for (eip, via) in [
            (format!("{}/32", Self::EIP), "172.31.0.1"),
            (format!("{}/128", Self::EIP6), "fd00:31::1"),
        ] {
            lab.ip(&client, &["route", "add", &eip, "via", via])?;
        }
        // Full checksums from the client, as from a wire.
        lab.exec(&client, &["ethtool", "-K", "eth0", "tx", "off"])?;
        lab.exec(
            &node,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (index, pod_ip) in Self::POD_IPS.iter().enumerate() {
            let pod = lab.netns(&format!("p{}", index + 1))?;
            let host_side = format!("vp{}", index + 1);
            lab.veth((&node, &host_side), (&pod, "eth0"))?;
            let gateway = format!("10.244.{}.1", index + 1);
            lab.addr(&node, &host_side, &format!("{gateway}/24"))?;
            lab.addr(&pod, "eth0", &format!("{pod_ip}/24"))?;
            lab.ip(&pod, &["route", "add", "default", "via", &gateway])?;
            let gateway6 = format!("fd00:244:{}::1", index + 1);
            lab.addr(&node, &host_side, &format!("{gateway6}/64"))?;
            lab.addr(&pod, "eth0", &format!("{}/64", Self::POD_IPS6[index]))?;
            lab.ip(&pod, &["-6", "route", "add", "default", "via", &gateway6])?;
            servers.push(NamedServer::start(
                &pod,
                Self::TARGET_PORT,
                &format!("pod{}", index + 1),
            )?);
            pods.push(pod);
        }
        let bpffs = lab.bpffs()?;
        // A veth only takes frames sent back with XDP_TX (echo replies) when
        // its peer runs XDP too; a physical NIC needs nothing of the sort.
        let client_xdp = attach_pass_xdp(&client)?;
        let pods: [String; 2] = pods.try_into().map_err(|_| anyhow::anyhow!("two pods"))?;
        Ok(Self {
            pass_xdp: vec![client_xdp],
            _servers: servers,
            lab,
            client,
            node,
            pods,
            bpffs,
        })
    }

    /// Runs a pass-everything XDP program on the pods' interfaces too, as
    /// veth needs before it takes frames redirected from XDP.
    pub fn enable_pod_xdp(&mut self) -> Result<()> {
        for pod in &self.pods {
            self.pass_xdp.push(attach_pass_xdp(pod)?);
        }
        Ok(())
    }

    /// What Calico's natOutgoing and flannel install: masquerade pod traffic
    /// leaving the pod network.
    pub fn add_pod_masquerade(&self) -> Result<()> {
        self.lab.exec(
            &self.node,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                Self::POD_SUBNET,
                "!",
                "-d",
                Self::POD_SUBNET,
                "-j",
                "MASQUERADE",
            ],
        )?;
        Ok(())
    }

    /// Opens the data plane on the node's bpffs, with XDP on the uplink and
    /// reverse NAT on its egress (attached from inside the node namespace).
    pub fn start_dataplane(&self, config: DataplaneConfig) -> Result<Dataplane> {
        let pins = PinLayout::new(&self.bpffs);
        run_in(&self.node, move || {
            let mut dataplane = Dataplane::open(&pins, config)?;
            dataplane.attach_xdp("eth0", XdpModePreference::Driver)?;
            dataplane.attach_tc_egress("eth0")?;
            Ok(dataplane)
        })
    }

    /// The service `eip:port/tcp` ([`Self::EIP`] or [`Self::EIP6`]) with the
    /// given pods (indices) as backends, in the EIP's family.
    pub fn service(eip: &str, port: u16, pods: &[usize]) -> Result<LocalService> {
        let vip: IpAddr = eip.parse()?;
        let pod_ips = if vip.is_ipv4() {
            Self::POD_IPS
        } else {
            Self::POD_IPS6
        };
        Ok(LocalService {
            addr: ServiceAddr {
                vip,
                port,
                proto: Protocol::Tcp,
            },
            backends: pods
                .iter()
                .map(|&pod| {
                    Ok(Backend {
                        addr: pod_ips.get(pod).context("pod index")?.parse()?,
                        port: Self::TARGET_PORT,
                        node: None,
                        draining: false,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Opens a connection from the client to `eip:port`.
    pub fn connect(&self, eip: &str, port: u16) -> Result<NamedClient> {
        let addr = SocketAddr::new(eip.parse()?, port);
        run_in(&self.client, move || NamedClient::connect(addr))
    }

    /// Opens `count` connections to `eip:port` one after another and counts
    /// who answered.
    pub fn spread(&self, eip: &str, port: u16, count: usize) -> Result<BTreeMap<String, usize>> {
        let addr = SocketAddr::new(eip.parse()?, port);
        run_in(&self.client, move || {
            let mut answers = BTreeMap::new();
            for _ in 0..count {
                let client = NamedClient::connect(addr)?;
                if client.peer()? != addr {
                    bail!(
                        "connection answered by {} instead of {addr}",
                        client.peer()?
                    );
                }
                *answers.entry(client.server).or_insert(0) += 1;
            }
            Ok(answers)
        })
    }
}

/// The client and the node, eth0 to eth0: 172.31.0.2/24 and 172.31.0.1/24.
fn client_and_node(lab: &mut Lab) -> Result<(String, String)> {
    let client = lab.netns("cl")?;
    let node = lab.netns("n1")?;
    lab.veth((&client, "eth0"), (&node, "eth0"))?;
    lab.addr(&client, "eth0", "172.31.0.2/24")?;
    lab.addr(&node, "eth0", "172.31.0.1/24")?;
    Ok((client, node))
}

/// Puts Porter's pass-everything XDP program on `ns`'s eth0 (with maps of
/// its own, unpinned); detached when dropped.
pub fn attach_pass_xdp(ns: &str) -> Result<Ebpf> {
    attach_pass_xdp_to(ns, "eth0")
}

/// [`attach_pass_xdp`] on `interface`.
pub fn attach_pass_xdp_to(ns: &str, interface: &str) -> Result<Ebpf> {
    attach_xdp_program(ns, interface, program_names::XDP_EMPTY)
}

/// Attaches XDP `program` of Porter's object (with maps of its own,
/// unpinned) to `ns`'s `interface`; detached when dropped.
pub fn attach_xdp_program(ns: &str, interface: &str, program: &'static str) -> Result<Ebpf> {
    let interface = interface.to_owned();
    run_in(ns, move || {
        let mut ebpf = load_xdp_program(program)?;
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .context("loaded just now")?
            .try_into()?;
        xdp.attach(&interface, XdpMode::Driver)?;
        Ok(ebpf)
    })
}

/// Porter's object with its XDP `program` loaded (not attached).
pub fn load_xdp_program(program: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("no XDP program {program}"))?
        .try_into()?;
    xdp.load()?;
    Ok(ebpf)
}

/// MAC of the `up0` of [`enter_cluster_node`]'s node (172.30.0.11).
pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
/// MAC of its resolved peer node 172.30.0.12.
pub const PEER_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];

/// Makes the calling thread a node for `Cluster` forwarding, and returns
/// the ifindex of its uplink `up0`: in a new namespace of `lab`, node
/// 172.30.0.11/24 and fd00:30::11/64 on `up0` ([`NODE_MAC`]) with peer node
/// 172.30.0.12 / fd00:30::12 ([`PEER_NODE_MAC`]) resolved on the same
/// segment, node 172.30.0.13 not resolved, 172.30.9.0/24 and fd00:30:9::/64
/// behind router 172.30.0.1 / fd00:30::1, and IP forwarding on (as on
/// every Kubernetes node; the FIB refuses to route otherwise). XDP
/// run from this thread then does its FIB lookups there.
pub fn enter_cluster_node(lab: &mut Lab) -> Result<u32> {
    let node = lab.netns("node")?;
    let wire = lab.netns("wire")?;
    lab.veth((&node, "up0"), (&wire, "up1"))?;
    lab.ip(
        &node,
        &["link", "set", "up0", "address", "02:00:00:00:00:11"],
    )?;
    lab.addr(&node, "up0", "172.30.0.11/24")?;
    lab.ip(
        &node,
        &["addr", "add", "fd00:30::11/64", "dev", "up0", "nodad"],
    )?;
    for (neighbour, mac) in [
        ("172.30.0.12", "02:00:00:00:00:12"),
        ("172.30.0.1", "02:00:00:00:00:01"),
        ("fd00:30::12", "02:00:00:00:00:12"),
        ("fd00:30::1", "02:00:00:00:00:01"),
    ] {
        lab.ip(
            &node,
            &[
                "neigh",
                "replace",
                neighbour,
                "lladdr",
                mac,
                "dev",
                "up0",
                "nud",
                "permanent",
            ],
        )?;
    }
    lab.ip(
        &node,
        &["route", "add", "172.30.9.0/24", "via", "172.30.0.1"],
    )?;
    lab.ip(
        &node,
        &["-6", "route", "add", "fd00:30:9::/64", "via", "fd00:30::1"],
    )?;
    lab.exec(&node, &["sysctl", "-w", "net.ipv4.ip_forward=1"])?;
    lab.exec(&node, &["sysctl", "-w", "net.ipv6.conf.all.forwarding=1"])?;
    crate::netns::enter(&node)?;
    let name = std::ffi::CString::new("up0")?;
    // SAFETY: a NUL-terminated name; no other effect.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no up0 in {node}");
    }
    Ok(ifindex)
}

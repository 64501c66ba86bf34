//! The Layer 2 lab: no router; a client and the nodes share one Ethernet
//! segment (a bridge in its own namespace), and the EIPs come from that
//! segment's subnet. Each node has one pod serving TCP/8080 and runs
//! `porter-agent`, which reads the cluster from a shared manifest directory
//! (the Layer 2 pool answers on `can_reach:<client>`) and keeps its Layer 2
//! leases beside it.
//!
//! ```text
//!   client 172.30.0.2 ─┐
//!   n1 172.30.0.11 ────┤ br0 (namespace "sw")      EIP 172.30.0.100, fd00:30::100
//!   n2 172.30.0.12 ────┤                            each node: pod 10.244.<i>.2:8080
//!   n3 172.30.0.13 ────┘
//! ```
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use porter_agent::{PinLayout, layer2::election, stats};
use porter_common::Stat;

use crate::{
    bins,
    lab::{Lab, wait_for},
    netns::{NamedServer, run_in},
    scenarios::attach_pass_xdp_to,
};

pub const EIP: &str = "172.30.0.100";
pub const EIP6: &str = "fd00:30::100";
pub const PORT: u16 = 80;
/// The Layer 2 pools `EIP` and `EIP6` come from.
pub const POOL: &str = "lan";
pub const POOL6: &str = "lan6";
const TARGET_PORT: u16 = 8080;

/// The agents' Maglev size M: at least 100 x the Service's backends (with
/// externalTrafficPolicy Cluster those are every node's pods).
pub const MAGLEV_SIZE: u32 = 1009;

pub struct L2Node {
    /// Short name, also the node name in elections: `n1`, `n2`, ...
    pub name: String,
    pub ns: String,
    pub bpffs: PathBuf,
}

pub struct L2Lab {
    /// Detached before the lab goes (fields drop in order).
    _pass_xdp: Vec<Ebpf>,
    _servers: Vec<NamedServer>,
    pub lab: Lab,
    pub client: String,
    pub nodes: Vec<L2Node>,
    /// The cluster as the agents read it (`--source dir:`), shared.
    manifests: PathBuf,
}

impl L2Lab {
    pub fn new(tag: &str, node_count: usize) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let switch = lab.netns("sw")?;
        lab.ip(&switch, &["link", "add", "br0", "type", "bridge"])?;
        // Solicitations go to groups nobody joined by MLD: flood them.
        lab.ip(
            &switch,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        lab.ip(&switch, &["link", "set", "br0", "up"])?;
        let client = lab.netns("cl")?;
        plug(&lab, &switch, &client, "pc")?;
        lab.addr(&client, "eth0", "172.30.0.2/24")?;
        lab.addr(&client, "eth0", "fd00:30::2/64")?;
        // Full checksums, as from a wire.
        lab.exec(&client, &["ethtool", "-K", "eth0", "tx", "off"])?;

        let mut pass_xdp = Vec::new();
        let mut servers = Vec::new();
        let mut nodes = Vec::new();
        for i in 1..=node_count {
            let name = format!("n{i}");
            let ns = lab.netns(&name)?;
            let port = format!("p{i}");
            plug(&lab, &switch, &ns, &port)?;
            // veth only takes the node's XDP_TX answers when its peer runs XDP.
            pass_xdp.push(attach_pass_xdp_to(&switch, &port)?);
            lab.addr(&ns, "eth0", &format!("172.30.0.1{i}/24"))?;
            lab.addr(&ns, "eth0", &format!("fd00:30::1{i}/64"))?;
            lab.exec(
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    // A crash takes the link down; its IPv6 address must
                    // survive for the node to come back as it was.
                    "net.ipv6.conf.all.keep_addr_on_down=1",
                ],
            )?;
            let pod = lab.netns(&format!("p{i}"))?;
            lab.veth((&ns, "vp"), (&pod, "eth0"))?;
            lab.addr(&ns, "vp", &format!("10.244.{i}.1/24"))?;
            lab.addr(&pod, "eth0", &format!("10.244.{i}.2/24"))?;
            lab.ip(
                &pod,
                &["route", "add", "default", "via", &format!("10.244.{i}.1")],
            )?;
            lab.addr(&ns, "vp", &format!("fd00:244:{i}::1/64"))?;
            lab.addr(&pod, "eth0", &format!("fd00:244:{i}::2/64"))?;
            lab.ip(
                &pod,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd00:244:{i}::1"),
                ],
            )?;
            servers.push(NamedServer::start(
                &pod,
                TARGET_PORT,
                &format!("pod-{name}"),
            )?);
            let bpffs = lab.bpffs()?;
            nodes.push(L2Node { name, ns, bpffs });
        }
        let manifests = lab.run_dir().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("cluster.yaml"), cluster(node_count, "Local"))?;
        Ok(Self {
            _pass_xdp: pass_xdp,
            _servers: servers,
            lab,
            client,
            nodes,
            manifests,
        })
    }

    /// Sets the Service's `externalTrafficPolicy` (`Local` at first).
    pub fn set_policy(&self, policy: &str) -> Result<()> {
        let text = cluster(self.nodes.len(), policy);
        std::fs::write(self.manifests.join("cluster.yaml"), text)?;
        Ok(())
    }

    fn node(&self, name: &str) -> Result<&L2Node> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("no node {name}"))
    }

    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|node| node.name.as_str()).collect()
    }

    /// The node the election picks for `eip` among `alive`.
    pub fn expected_leader<'a>(eip: &str, alive: &[&'a str]) -> Result<&'a str> {
        election::choose(eip.parse()?, alive.iter().copied(), |_| true).context("no candidate")
    }

    /// Starts every node's agent, then the controller; returns the nodes'
    /// names.
    pub fn start_porter(&mut self) -> Result<Vec<String>> {
        let names: Vec<String> = self.node_names().iter().map(|n| n.to_string()).collect();
        for name in &names {
            self.start(name)?;
        }
        self.start_controller()?;
        Ok(names)
    }

    /// Starts `porter-agent run` on node `name`, reading the cluster from
    /// the shared manifest directory, and waits until its data plane is ready.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let log = self.spawn_agent(name, MAGLEV_SIZE)?;
        wait_for(&format!("{name} ready"), Duration::from_secs(10), || {
            Ok(std::fs::read_to_string(&log)?
                .contains("data plane ready")
                .then_some(()))
        })
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Starts the agent of node `name` with Maglev size `maglev_size`,
    /// without waiting for its data plane; returns its log.
    pub fn spawn_agent(&mut self, name: &str, maglev_size: u32) -> Result<PathBuf> {
        let node = self.node(name)?;
        let mut command = self.lab.command(&node.ns, bins::binary("porter-agent")?);
        command
            .args(["run", "--node-name", name, "--interface", "eth0"])
            .arg("--source")
            .arg(format!("dir:{}", self.manifests.display()))
            .args([
                "--poll-interval",
                "100ms",
                "--metrics-addr",
                "127.0.0.1:9191",
            ])
            .args([
                "--maglev-size",
                &maglev_size.to_string(),
                "--max-services",
                "8",
            ])
            .arg("--bpffs")
            .arg(&node.bpffs);
        self.lab.spawn(&format!("agent-{name}"), command)
    }

    /// Starts `porter-controller` on the shared manifest directory, as
    /// operators run it with the dir source: it writes the Eip status
    /// (`status/` beside the manifests) and mirrors the agents' leases into
    /// it. Returns once it wrote the first status.
    pub fn start_controller(&mut self) -> Result<()> {
        let ns = self.lab.netns("ctl")?;
        let mut command = self.lab.command(&ns, bins::binary("porter-controller")?);
        command
            .arg("--source")
            .arg(format!("dir:{}", self.manifests.display()))
            .args(["--poll-interval", "100ms"])
            .args(["--metrics-addr", "127.0.0.1:9190"]);
        let log = self.lab.spawn("controller", command)?;
        wait_for(
            "the controller's first Eip status",
            Duration::from_secs(10),
            || Ok(self.announcers(POOL)?.map(|_| ())),
        )
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// `status.layer2Announcers` of pool `pool` as address → node, once the
    /// controller has written a status for it.
    pub fn announcers(&self, pool: &str) -> Result<Option<BTreeMap<String, String>>> {
        let (snapshot, _) = porter_api::source::dir::load(&self.manifests)?;
        let status = snapshot
            .eips
            .iter()
            .find(|eip| eip.metadata.name.as_deref() == Some(pool))
            .and_then(|eip| eip.status.as_ref())
            // The manifest's own status has no conditions; the controller's has.
            .filter(|status| !status.conditions.is_empty());
        Ok(status.map(|status| {
            status
                .layer2_announcers
                .iter()
                .map(|a| (a.address.clone(), a.node.clone()))
                .collect()
        }))
    }

    /// Waits until the Eip status of `pool` says `node` announces `eip`.
    pub fn announcer_becomes(&self, pool: &str, eip: &str, node: &str) -> Result<()> {
        wait_for(
            &format!("status of Eip {pool} to name {node} as the announcer of {eip}"),
            Duration::from_secs(5),
            || {
                let now = self.announcers(pool)?.unwrap_or_default();
                Ok((now.get(eip).map(String::as_str) == Some(node)).then_some(()))
            },
        )
        .with_context(|| format!("status now: {:?}", self.announcers(pool)))
    }

    /// The Events the controller wrote (`status/events.jsonl`), one per line.
    pub fn events(&self) -> Result<Vec<String>> {
        let path = self.manifests.join("status").join("events.jsonl");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err).with_context(|| path.display().to_string()),
        }
    }

    /// `porter-agent inspect` on node `name`, as an operator runs it there.
    pub fn inspect(&self, name: &str) -> Result<String> {
        let node = self.node(name)?;
        bins::agent_inspect(&self.lab, &node.ns, &node.bpffs)
    }

    /// A node crash: its agent dies without a word and its link goes down.
    pub fn crash(&mut self, name: &str) -> Result<()> {
        self.lab
            .stop(&format!("agent-{name}"), Duration::from_secs(2))?;
        let ns = self.node(name)?.ns.clone();
        self.lab.ip(&ns, &["link", "set", "eth0", "down"])?;
        Ok(())
    }

    /// Brings a crashed node back (link up, agent started).
    pub fn revive(&mut self, name: &str) -> Result<()> {
        let ns = self.node(name)?.ns.clone();
        self.lab.ip(&ns, &["link", "set", "eth0", "up"])?;
        self.start(name)
    }

    pub fn node_mac(&self, name: &str) -> Result<String> {
        let ns = &self.node(name)?.ns;
        let link = self.lab.ip(ns, &["link", "show", "eth0"])?;
        link.split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .context("eth0 has no MAC")
    }

    /// The client's neighbour entry for `ip`: its MAC, if resolved.
    pub fn client_neighbour(&self, ip: &str) -> Result<Option<String>> {
        let text = self.lab.ip(&self.client, &["neigh", "show", ip])?;
        Ok(text
            .split_whitespace()
            .skip_while(|word| *word != "lladdr")
            .nth(1)
            .map(str::to_owned))
    }

    pub fn flush_client_neighbours(&self) -> Result<()> {
        self.lab
            .ip(&self.client, &["neigh", "flush", "dev", "eth0"])?;
        Ok(())
    }

    /// One request from the client to `eip`:80 with a short timeout; the
    /// name of the pod that answered.
    pub fn request(&self, eip: &str, timeout: Duration) -> Result<String> {
        let addr = SocketAddr::new(eip.parse::<IpAddr>()?, PORT);
        run_in(&self.client, move || {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut greeting = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut greeting)?;
            let name = greeting.trim().to_owned();
            if name.is_empty() {
                bail!("{addr} closed without a greeting");
            }
            Ok(name)
        })
    }

    /// Requests until one is answered by `pod` (within `timeout`), and
    /// returns how long that took.
    pub fn until_answered_by(&self, eip: &str, pod: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_for(&format!("{eip} answered by {pod}"), timeout, || match self
            .request(eip, Duration::from_millis(200))
        {
            Ok(name) if name == pod => Ok(Some(start.elapsed())),
            Ok(_) => Ok(None),
            Err(err) => Err(err),
        })
    }

    /// ARP requests and neighbour solicitations node `name`'s XDP answered.
    pub fn answered(&self, name: &str) -> Result<(u64, u64)> {
        let pins = PinLayout::new(&self.node(name)?.bpffs);
        Ok((
            stats::read_stat(&pins, Stat::ArpAnswered)?,
            stats::read_stat(&pins, Stat::NdpAnswered)?,
        ))
    }
}

/// The nodes, a dual-stack Service with `policy` on both EIPs with one pod per node, and
/// the Layer 2 pools that handed the EIPs out (with the status the
/// controller writes, so that the agents work without one).
fn cluster(node_count: usize, policy: &str) -> String {
    let mut docs = Vec::new();
    let mut endpoints4 = Vec::new();
    let mut endpoints6 = Vec::new();
    for i in 1..=node_count {
        docs.push(format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n{i}}}\nstatus:\n  \
             addresses: [{{type: InternalIP, address: 172.30.0.1{i}}}]\n  \
             conditions: [{{type: Ready, status: \"True\"}}]\n"
        ));
        endpoints4.push(format!(
            "- {{addresses: [10.244.{i}.2], nodeName: n{i}, conditions: {{ready: true}}}}"
        ));
        endpoints6.push(format!(
            "- {{addresses: [\"fd00:244:{i}::2\"], nodeName: n{i}, conditions: {{ready: true}}}}"
        ));
    }
    docs.push(format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  \
         annotations: {{lb.kubesphere.io/v1alpha1: porter}}\nspec:\n  type: LoadBalancer\n  \
         externalTrafficPolicy: {policy}\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  \
         ports: [{{name: http, port: {PORT}, targetPort: http}}]\n\
         status:\n  loadBalancer:\n    ingress: [{{ip: {EIP}}}, {{ip: \"{EIP6}\"}}]\n"
    ));
    // Object names are DNS-1123 subdomains: lower case.
    for (family, endpoints) in [("IPv4", &endpoints4), ("IPv6", &endpoints6)] {
        let suffix = family.to_ascii_lowercase();
        docs.push(format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: web-{suffix}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: {family}\nports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]\n\
             endpoints:\n{}\n",
            endpoints.join("\n")
        ));
    }
    for (pool, range, eip) in [
        (POOL, "172.30.0.100-172.30.0.110", EIP),
        (POOL6, "fd00:30::100-fd00:30::110", EIP6),
    ] {
        docs.push(format!(
            "apiVersion: network.kubesphere.io/v1alpha2\nkind: Eip\nmetadata: {{name: {pool}}}\n\
             spec: {{address: \"{range}\", protocol: layer2, interface: \"can_reach:172.30.0.2\"}}\n\
             status:\n  used: {{\"{eip}\": shop/web}}\n"
        ));
    }
    docs.join("---\n")
}

pub fn pod_of(node: &str) -> String {
    format!("pod-{node}")
}

/// Connects `ns` to the switch with a veth (`eth0` in `ns`, `port` on br0).
fn plug(lab: &Lab, switch: &str, ns: &str, port: &str) -> Result<()> {
    lab.veth((ns, "eth0"), (switch, port))?;
    lab.ip(switch, &["link", "set", port, "master", "br0"])?;
    Ok(())
}

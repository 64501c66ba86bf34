//! The full lab of docs/lab.md: a small data centre on one machine.
//!
//! ```text
//!   cl (client 172.31.0.2) ── r (router: BIRD, 172.31.0.1 / 172.30.0.1)
//!                                 │  bridge "lan" 172.30.0.0/24, fd00:30::/64
//!             ┌───────────────────┼──────────────────┬──────────────────┐
//!        ctl 172.30.0.10     n1 172.30.0.11     n2 172.30.0.12     n3 172.30.0.13
//!    (porter-controller)    (porter-agent)      (porter-agent)     (porter-agent)
//!                            └─ pods 10.244.1.x  └─ pods 10.244.2.x  └─ pods 10.244.3.x
//! ```
//!
//! The cluster is a directory of manifests (the controller's and agents'
//! `dir:` source): the lab writes the Nodes and EndpointSlices that the
//! kubelet and the endpoint controller would publish, and the tests write
//! Services and pools. Each pod runs an HTTP server on port 80 answering
//! with its name (`n2-p1`), so a client knows which pod and node served it.
//! The router hashes flows by L4 ports over the ECMP next hops.
//!
//! [`Datacenter::fabric`] builds the routed variant for `speakerMode: node`:
//! one rack (its own /24 behind its own FRR leaf) per node, the leaves
//! under an FRR spine in `r`, the client on the spine.
//!
//! ```text
//!                    cl 172.31.0.2 ── r (spine: FRR AS 65001)
//!                         172.29.1.1 ┌──────┴──────┐ 172.29.2.1
//!          l1 (leaf: FRR AS 65011) 172.29.1.2    172.29.2.2 l2 (leaf: FRR AS 65012)
//!            │ lan 172.30.1.0/24                       │ lan 172.30.2.0/24
//!     ctl 172.30.1.10   n1 172.30.1.11                n2 172.30.2.12
//! ```
//!
//! IPv6 is routed the same way: fd00:29:k::/64 on the spine–leaf links
//! (spine ::1, leaf ::2), fd00:30:k::/64 on rack k's lan (leaf ::1, node
//! fd00:30:k::1k, its Node's second InternalIP), the client fd00:31::2;
//! every BGP session is IPv4 and carries both families.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use porter_agent::{PinLayout, inspect::ServiceState, stats::read_global_stats};
use porter_common::{Stat, map_names};

use crate::{
    bins,
    lab::{Lab, wait_for},
    manifests::{self, Endpoint, ServiceManifest},
    netns::{CONNECT_TIMEOUT, SYN_RETRANSMIT, run_in},
    routers::{Daemon, Neighbor, Router, RouterConfig},
    scenarios::attach_pass_xdp_to,
    workloads,
};

pub const ROUTER_AS: u32 = 65001;
pub const PORTER_AS: u32 = 65000;
pub const CONTROLLER_V4: &str = "172.30.0.10";
/// `--restart-time` of a lone controller: the lease's default, as
/// docs/controller.md suggests, well over a restart in the lab.
const SINGLE_REPLICA_RESTART_SECONDS: &str = "15";
/// The second controller replica of [`Datacenter::with_standby`], in `ctl-b`.
pub const STANDBY_V4: &str = "172.30.0.9";
pub const ROUTER_LAN_V4: &str = "172.30.0.1";
pub const CLIENT_V4: &str = "172.31.0.2";
/// The port every pod serves HTTP on (the Services' targetPort).
pub const POD_PORT: u16 = 80;

/// The controller replicas' daemon names, by replica index.
const CONTROLLERS: [&str; 2] = ["controller", "controller-b"];
/// Their `--identity` in the leader lease (with [`Datacenter::start_replica`]).
pub const REPLICA_IDENTITIES: [&str; 2] = ["ctl-a", "ctl-b"];
const CONTROLLER_METRICS_PORT: u16 = 9190;
/// The agent's default `--metrics-addr` port, in each node's namespace.
const AGENT_METRICS_PORT: u16 = 9191;

pub struct Pod {
    /// `n<node>-p<index>`, also what its server answers.
    pub name: String,
    pub ns: String,
    pub ip: IpAddr,
    pub ip6: IpAddr,
    /// Its veth's end on the node.
    host_side: String,
}

pub struct LabNode {
    /// The Node object's name, `n1`...
    pub name: String,
    pub ns: String,
    pub ip: IpAddr,
    pub ip6: IpAddr,
    /// This node's own bpffs (as a node has its own kernel).
    pub bpffs: PathBuf,
    pub pods: Vec<Pod>,
    /// The number the next pod started here gets (pods are never renumbered).
    next_pod: usize,
    ready: bool,
    /// The Node object's labels (`rack: "<k>"` in a fabric).
    labels: Vec<(String, String)>,
}

/// Where the lab's controller replicas run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replicas {
    /// One, in its own namespace `ctl`.
    One,
    /// Two, in `ctl` and `ctl-b`.
    WithStandby,
    /// Two: the first on node n1, the second in `ctl-b`.
    FirstOnNode,
}

pub struct Datacenter {
    pub lab: Lab,
    /// The router the client sits behind (the spine in a fabric).
    pub router: Router,
    pub router_ns: String,
    /// A fabric's leaves, leaf `k` serving rack `k + 1`; none otherwise.
    pub leaves: Vec<Router>,
    /// The namespace controller replica 0 runs in (node n1's with
    /// [`Datacenter::with_standby_on_node`]).
    pub ctl: String,
    controller_ip: IpAddr,
    /// The second replica's namespace and address, if the lab has one.
    standby: Option<(String, IpAddr)>,
    pub client: String,
    pub nodes: Vec<LabNode>,
    /// The `dir:` source both binaries read.
    pub manifests: PathBuf,
    /// Pass-everything XDP on the bridge's node ports: a veth only takes
    /// frames a node sends with `XDP_TX` (Cluster forwarding to another
    /// node) when its peer runs XDP too; a physical NIC needs nothing of
    /// the sort.
    _pass_xdp: Vec<aya::Ebpf>,
}

impl Datacenter {
    /// Builds the lab with `pods_per_node[i]` pods on node `i + 1`, BIRD on
    /// the router (passive, graceful-restart helper, ADD-PATH receive), the
    /// Nodes written as Ready. Starts no Porter binary.
    pub fn new(tag: &str, pods_per_node: &[usize]) -> Result<Self> {
        Self::with_router(tag, pods_per_node, Daemon::Bird, ROUTER_AS)
    }

    /// Like [`Datacenter::new`] with `daemon` on the router in AS
    /// `router_as` ([`PORTER_AS`] makes the session iBGP). FRR installs
    /// weighted ECMP from link bandwidth; BIRD does not.
    pub fn with_router(
        tag: &str,
        pods_per_node: &[usize],
        daemon: Daemon,
        router_as: u32,
    ) -> Result<Self> {
        Self::build(tag, pods_per_node, daemon, router_as, Replicas::One)
    }

    /// Like [`Datacenter::new`], with room for a second controller replica
    /// (`ctl-b`, [`STANDBY_V4`], a BIRD neighbour too) for leader election:
    /// start both with [`Datacenter::start_replica`].
    pub fn with_standby(tag: &str, pods_per_node: &[usize]) -> Result<Self> {
        Self::build(
            tag,
            pods_per_node,
            Daemon::Bird,
            ROUTER_AS,
            Replicas::WithStandby,
        )
    }

    /// Like [`Datacenter::with_standby`], but replica 0 runs on node n1 (in
    /// its namespace, peering with the router from n1's address), as a
    /// controller pod shares a node with the traffic it announces: when n1
    /// dies, the router loses a next hop and that replica together. The
    /// router (`daemon`: BIRD or FRR) runs BFD with both replicas, set up
    /// as docs/bfd.md asks of it (see [`crate::routers::Neighbor`]).
    pub fn with_standby_on_node(
        tag: &str,
        pods_per_node: &[usize],
        daemon: Daemon,
    ) -> Result<Self> {
        Self::build(tag, pods_per_node, daemon, ROUTER_AS, Replicas::FirstOnNode)
    }

    fn build(
        tag: &str,
        pods_per_node: &[usize],
        daemon: Daemon,
        router_as: u32,
        replicas: Replicas,
    ) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let router_ns = lab.netns("r")?;
        let client = lab.netns("cl")?;
        enable_routing(&lab, &router_ns)?;
        lab.ip(&router_ns, &["link", "add", "lan", "type", "bridge"])?;
        lab.ip(&router_ns, &["link", "set", "lan", "up"])?;
        lab.addr(&router_ns, "lan", "172.30.0.1/24")?;
        lab.addr(&router_ns, "lan", "fd00:30::1/64")?;

        connect_client(&lab, &router_ns, &client)?;

        let own_namespace = replicas != Replicas::FirstOnNode;
        // The lab where a controller's node can die runs BFD with the
        // controllers as docs/bfd.md asks ("When the leader's node dies").
        let bfd = replicas == Replicas::FirstOnNode;
        let ctl = if own_namespace {
            let ctl = lab.netns("ctl")?;
            attach_to_lan(&lab, &router_ns, &ctl, "v-ctl")?;
            lab.addr(&ctl, "eth0", &format!("{CONTROLLER_V4}/24"))?;
            lab.addr(&ctl, "eth0", "fd00:30::10/64")?;
            ctl
        } else {
            String::new()
        };
        let mut neighbors = Vec::new();
        let standby = if replicas != Replicas::One {
            let ns = lab.netns("ctl-b")?;
            attach_to_lan(&lab, &router_ns, &ns, "v-ctl-b")?;
            lab.addr(&ns, "eth0", &format!("{STANDBY_V4}/24"))?;
            neighbors.push(Neighbor {
                bfd,
                ..Neighbor::new(STANDBY_V4.parse()?, PORTER_AS)
            });
            Some((ns, STANDBY_V4.parse()?))
        } else {
            None
        };

        let mut nodes = Vec::new();
        let mut pass_xdp = Vec::new();
        for (index, &pod_count) in pods_per_node.iter().enumerate() {
            let n = index + 1;
            let ip: IpAddr = format!("172.30.0.{}", 10 + n).parse()?;
            let ip6: IpAddr = format!("fd00:30::{}", 10 + n).parse()?;
            let gateways = (ROUTER_LAN_V4, "fd00:30::1");
            let (ns, xdp) = join_lan(&mut lab, &router_ns, n, (ip, ip6), gateways)?;
            pass_xdp.push(xdp);
            nodes.push(finish_node(
                &mut lab,
                n,
                ns,
                ip,
                ip6,
                pod_count,
                Vec::new(),
            )?);
        }

        let (ctl, controller_ip) = match nodes.first() {
            Some(n1) if !own_namespace => (n1.ns.clone(), n1.ip),
            _ => (ctl, CONTROLLER_V4.parse()?),
        };
        neighbors.insert(
            0,
            Neighbor {
                bfd,
                ..Neighbor::new(controller_ip, PORTER_AS)
            },
        );
        let router = Router::start(
            &mut lab,
            &router_ns,
            RouterConfig {
                daemon,
                router_id: ROUTER_LAN_V4.into(),
                local_address: ROUTER_LAN_V4.parse()?,
                local_as: router_as,
                neighbors,
                graceful_restart: true,
                passive: true,
            },
        )?;
        let manifests = lab.run_dir().join("cluster");
        Self {
            lab,
            router,
            router_ns,
            leaves: Vec::new(),
            ctl,
            controller_ip,
            standby,
            client,
            nodes,
            manifests,
            _pass_xdp: pass_xdp,
        }
        .ready()
    }

    /// The routed fabric of the module docs: node `k` (with
    /// `pods_per_rack[k - 1]` pods) alone in rack `k`, on 172.30.k.0/24
    /// behind leaf `lk` (FRR, AS 65010 + k, 172.30.k.1), with Node label
    /// `rack: "<k>"`; the leaves peer with the spine (FRR, AS 65001) in
    /// `r`, which the client sits behind. Each leaf lists its rack's node
    /// (AS [`PORTER_AS`]) as a neighbour, for node-mode agents to connect
    /// to. The controller sits in rack 1. Starts no Porter binary.
    pub fn fabric(tag: &str, pods_per_rack: &[usize]) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let router_ns = lab.netns("r")?;
        let ctl = lab.netns("ctl")?;
        let client = lab.netns("cl")?;
        enable_routing(&lab, &router_ns)?;
        connect_client(&lab, &router_ns, &client)?;
        let mut nodes = Vec::new();
        let mut pass_xdp = Vec::new();
        let mut spine_neighbors = Vec::new();
        let mut leaves = Vec::new();
        for (index, &pod_count) in pods_per_rack.iter().enumerate() {
            let k = index + 1;
            let leaf_ns = lab.netns(&format!("l{k}"))?;
            enable_routing(&lab, &leaf_ns)?;
            let uplink: IpAddr = format!("172.29.{k}.2").parse()?;
            lab.veth((&router_ns, &format!("v-l{k}")), (&leaf_ns, "uplink"))?;
            lab.addr(&router_ns, &format!("v-l{k}"), &format!("172.29.{k}.1/24"))?;
            lab.addr(&leaf_ns, "uplink", &format!("{uplink}/24"))?;
            // IPv6 rides the IPv4 sessions (MP-BGP); FRR needs a global
            // IPv6 address on the link to announce an IPv6 next hop (it
            // sends it with the link-local one, which the spine installs).
            lab.addr(
                &router_ns,
                &format!("v-l{k}"),
                &format!("fd00:29:{k}::1/64"),
            )?;
            lab.addr(&leaf_ns, "uplink", &format!("fd00:29:{k}::2/64"))?;
            for (family, spine) in [
                ("-4", format!("172.29.{k}.1")),
                ("-6", format!("fd00:29:{k}::1")),
            ] {
                lab.ip(
                    &leaf_ns,
                    &[family, "route", "add", "default", "via", &spine],
                )?;
            }
            lab.ip(&leaf_ns, &["link", "add", "lan", "type", "bridge"])?;
            lab.ip(&leaf_ns, &["link", "set", "lan", "up"])?;
            let leaf_ip = format!("172.30.{k}.1");
            lab.addr(&leaf_ns, "lan", &format!("{leaf_ip}/24"))?;
            lab.addr(&leaf_ns, "lan", &format!("fd00:30:{k}::1/64"))?;
            if k == 1 {
                attach_to_lan(&lab, &leaf_ns, &ctl, "v-ctl")?;
                lab.addr(&ctl, "eth0", "172.30.1.10/24")?;
                lab.ip(&ctl, &["route", "add", "default", "via", &leaf_ip])?;
            }
            // The racks reach each other through the spine, as the nodes
            // of one cluster do (Cluster traffic crosses racks in IPIP).
            lab.ip(
                &router_ns,
                &[
                    "route",
                    "add",
                    &format!("172.30.{k}.0/24"),
                    "via",
                    &uplink.to_string(),
                ],
            )?;
            let ip: IpAddr = format!("172.30.{k}.{}", 10 + k).parse()?;
            let ip6: IpAddr = format!("fd00:30:{k}::{}", 10 + k).parse()?;
            let leaf_ip6 = format!("fd00:30:{k}::1");
            let gateways = (leaf_ip.as_str(), leaf_ip6.as_str());
            let (ns, xdp) = join_lan(&mut lab, &leaf_ns, k, (ip, ip6), gateways)?;
            pass_xdp.push(xdp);
            let labels = vec![("rack".to_owned(), k.to_string())];
            nodes.push(finish_node(&mut lab, k, ns, ip, ip6, pod_count, labels)?);
            let leaf_as = 65010 + u32::try_from(k)?;
            let leaf = Router::start_named(
                &mut lab,
                &leaf_ns,
                &format!("leaf{k}"),
                RouterConfig {
                    daemon: Daemon::Frr,
                    router_id: leaf_ip.clone(),
                    local_address: leaf_ip.parse()?,
                    local_as: leaf_as,
                    neighbors: vec![
                        Neighbor::new(ip, PORTER_AS),
                        Neighbor::new(format!("172.29.{k}.1").parse()?, ROUTER_AS),
                    ],
                    graceful_restart: true,
                    passive: false,
                },
            )?;
            leaves.push(leaf);
            spine_neighbors.push(Neighbor::new(uplink, leaf_as));
        }
        let router = Router::start_named(
            &mut lab,
            &router_ns,
            "spine",
            RouterConfig {
                daemon: Daemon::Frr,
                router_id: "172.31.0.1".into(),
                local_address: "172.31.0.1".parse()?,
                local_as: ROUTER_AS,
                neighbors: spine_neighbors,
                graceful_restart: true,
                passive: false,
            },
        )?;
        let manifests = lab.run_dir().join("cluster");
        Self {
            lab,
            router,
            router_ns,
            leaves,
            ctl,
            controller_ip: "172.30.1.10".parse()?,
            standby: None,
            client,
            nodes,
            manifests,
            _pass_xdp: pass_xdp,
        }
        .ready()
    }

    /// The last step of every constructor: the cluster directory with the
    /// Node manifests in it, and every pod answering.
    fn ready(self) -> Result<Self> {
        std::fs::create_dir_all(&self.manifests)?;
        self.write_nodes()?;
        self.wait_pods()?;
        Ok(self)
    }

    /// Waits until every pod's HTTP server answers inside its node.
    fn wait_pods(&self) -> Result<()> {
        for node in &self.nodes {
            for (pod, ip) in node.pods.iter().flat_map(|p| [(p, p.ip), (p, p.ip6)]) {
                let ns = node.ns.clone();
                wait_for(
                    &format!("{}'s HTTP server on {ip}", pod.name),
                    Duration::from_secs(10),
                    move || {
                        let ns = ns.clone();
                        Ok(run_in(&ns, move || http_get(SocketAddr::new(ip, POD_PORT))).ok())
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Writes `text` as manifest `file` (atomically: the sources never read half a file).
    pub fn apply(&self, file: &str, text: &str) -> Result<()> {
        let path = self.manifests.join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Copies a manifest file (e.g. from deploy/samples) into the cluster.
    pub fn apply_file(&self, source: &Path) -> Result<()> {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("reading {}", source.display()))?;
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .context("manifest without a file name")?;
        self.apply(name, &text)
    }

    /// Deletes manifest `file`, as `kubectl delete -f` would the objects in it.
    pub fn delete(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifests.join(file)).with_context(|| format!("deleting {file}"))
    }

    fn write_nodes(&self) -> Result<()> {
        let text: Vec<String> = self
            .nodes
            .iter()
            .map(|n| manifests::labelled_node(&n.name, &[n.ip, n.ip6], n.ready, &n.labels))
            .collect();
        self.apply("nodes.yaml", &text.join("---\n"))
    }

    /// Marks node `index` Ready or NotReady, as its kubelet's heartbeat would.
    pub fn set_node_ready(&mut self, index: usize, ready: bool) -> Result<()> {
        self.nodes.get_mut(index).context("no such node")?.ready = ready;
        self.write_nodes()
    }

    /// Starts `count` new pods on node `index` under new numbers (and
    /// addresses), as a rollout's new ReplicaSet would; returns their names.
    /// They serve HTTP at once; endpoints are the caller's to publish.
    pub fn add_pods(&mut self, index: usize, count: usize) -> Result<Vec<String>> {
        let node = self.nodes.get_mut(index).context("no such node")?;
        let mut names = Vec::new();
        for _ in 0..count {
            let pod = add_pod(&mut self.lab, &node.ns, index + 1, node.next_pod)?;
            node.next_pod += 1;
            names.push(pod.name.clone());
            node.pods.push(pod);
        }
        Ok(names)
    }

    /// Takes pods `names` of node `index` away for good, as the kubelet does
    /// once a terminating pod has stopped: its server stops and its veth
    /// goes, so nothing answers at its address any more.
    pub fn remove_pods(&mut self, index: usize, names: &[String]) -> Result<()> {
        let node = self.nodes.get_mut(index).context("no such node")?;
        let (gone, kept) = std::mem::take(&mut node.pods)
            .into_iter()
            .partition(|pod| names.contains(&pod.name));
        node.pods = kept;
        for pod in gone {
            self.lab
                .stop(&format!("http-{}", pod.name), Duration::from_secs(5))?;
            self.lab
                .ip(&node.ns, &["link", "del", pod.host_side.as_str()])?;
        }
        Ok(())
    }

    /// Every pod (both families) of the given nodes, as ready endpoints.
    pub fn endpoints_on(&self, nodes: &[usize]) -> Vec<Endpoint> {
        nodes
            .iter()
            .filter_map(|&i| self.nodes.get(i))
            .flat_map(|node| {
                node.pods.iter().flat_map(move |pod| {
                    [pod.ip, pod.ip6].map(|address| Endpoint {
                        address,
                        node: node.name.clone(),
                        ready: true,
                        terminating: false,
                    })
                })
            })
            .collect()
    }

    /// Publishes the EndpointSlices (v4 and v6) of `namespace/service`.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let text = [false, true]
            .map(|v6| manifests::endpoint_slice(namespace, service, v6, POD_PORT, endpoints))
            .join("---\n");
        self.apply(&format!("endpoints-{namespace}-{service}.yaml"), &text)
    }

    /// Writes Service `spec` as `svc-<name>.yaml`, its EndpointSlices first,
    /// with its pods on the nodes of `nodes` (indices).
    pub fn add_service(&self, spec: &ServiceManifest, nodes: &[usize]) -> Result<()> {
        self.set_endpoints(spec.namespace, spec.name, &self.endpoints_on(nodes))?;
        self.apply(
            &format!("svc-{}.yaml", spec.name),
            &manifests::service(spec),
        )
    }

    /// Starts `porter-controller --source dir:<manifests>` in `ctl`.
    pub fn start_controller(&mut self) -> Result<PathBuf> {
        self.start_controller_with(&[])
    }

    /// [`Datacenter::start_controller`] with `args` added to its command line.
    pub fn start_controller_with(&mut self, args: &[&str]) -> Result<PathBuf> {
        let mut command = self.controller_command(0)?;
        // One replica, as docs/controller.md says to run it: no standby
        // carries its paths while it restarts, so the routers keep them as
        // good as fresh for as long as a restart takes. With the 1 s meant
        // for replicas with a standby they would turn long-lived stale
        // during a restart, which BIRD re-exports one path at a time (a
        // momentary rehash that resets `Local` flows).
        command.args(["--restart-time", SINGLE_REPLICA_RESTART_SECONDS]);
        command.args(args);
        self.lab.spawn(CONTROLLERS[0], command)
    }

    /// Starts `command` as the controller (see [`crate::from_images`]).
    pub fn start_controller_as(&mut self, command: Command) -> Result<PathBuf> {
        self.lab.spawn(CONTROLLERS[0], command)
    }

    /// Stops the controller the way a rollout would (SIGTERM).
    pub fn stop_controller(&mut self) -> Result<()> {
        self.stop_replica(0)
    }

    fn controller_command(&self, replica: usize) -> Result<Command> {
        let (ns, ip) = match replica {
            0 => (&self.ctl, self.controller_ip),
            _ => self
                .standby
                .as_ref()
                .map(|(ns, ip)| (ns, *ip))
                .context("this lab has one controller (see Datacenter::with_standby)")?,
        };
        let mut command = self.lab.command(ns, bins::binary("porter-controller")?);
        command
            .arg("--source")
            .arg(format!("dir:{}", self.manifests.display()))
            .args(["--poll-interval", "100ms"])
            .arg("--metrics-addr")
            .arg(SocketAddr::new(ip, CONTROLLER_METRICS_PORT).to_string())
            // As the deploy manifest's `status.podIPs`: the replica's own
            // address is its BGP identifier (the samples set no routerId).
            .env("PORTER_ROUTER_ID", ip.to_string())
            .env("RUST_LOG", "info");
        Ok(command)
    }

    /// Starts controller replica `replica` (0 in `ctl`, 1 in `ctl-b`) with
    /// identity [`REPLICA_IDENTITIES`]`[replica]` and a leader lease of
    /// `lease_seconds`; returns its log.
    pub fn start_replica(&mut self, replica: usize, lease_seconds: u64) -> Result<PathBuf> {
        let mut command = self.controller_command(replica)?;
        command
            .args(["--identity", REPLICA_IDENTITIES[replica]])
            .args(["--lease-duration", &lease_seconds.to_string()]);
        self.lab.spawn(CONTROLLERS[replica], command)
    }

    /// Stops controller replica `replica` the way a rollout would (SIGTERM).
    pub fn stop_replica(&mut self, replica: usize) -> Result<()> {
        self.lab.stop(CONTROLLERS[replica], Duration::from_secs(5))
    }

    /// Kills controller replica `replica` at once (SIGKILL).
    pub fn kill_replica(&mut self, replica: usize) -> Result<()> {
        self.lab.kill(CONTROLLERS[replica])
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to controller replica `replica`.
    pub fn signal_replica(&self, replica: usize, signal: i32) -> Result<()> {
        self.lab.signal(CONTROLLERS[replica], signal)
    }

    /// The address replica `replica` peers with the router from.
    pub fn replica_ip(&self, replica: usize) -> Option<IpAddr> {
        match replica {
            0 => Some(self.controller_ip),
            _ => self.standby.as_ref().map(|(_, ip)| *ip),
        }
    }

    /// The replica holding the controllers' leader lease now (the lease
    /// file's holder, whether or not it expired).
    pub fn lease_holder(&self) -> Result<Option<usize>> {
        let holder = self.lease()?.map(|lease| lease.holder);
        Ok(REPLICA_IDENTITIES
            .iter()
            .position(|identity| holder.as_deref() == Some(*identity)))
    }

    /// The controllers' leader lease as its file says now (holder, last
    /// renewal, duration), if there is one.
    pub fn lease(&self) -> Result<Option<porter_api::layer2::LeaseRecord>> {
        let path = self
            .manifests
            .join(porter_api::lease::CONTROLLER_LEASE_DIR)
            .join("porter-controller");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        Ok(porter_api::layer2::parse_lease_file(&text))
    }

    /// Cuts node `index` off the LAN (`on`), or reconnects it: its bridge
    /// port goes to the disabled state, which drops every frame to and from
    /// it, while every link stays up, the bridge keeps its
    /// ports (and so its MAC address: taking a port out can change it, and
    /// the controller's UPDATEs would then go to a stale MAC) and no
    /// Kubernetes object changes. This is a node that died, as the
    /// controllers and the router see it. (A filter inside the node would
    /// not do: its XDP program answers the probes before the node's
    /// netfilter sees them.)
    pub fn silence(&self, index: usize, on: bool) -> Result<()> {
        let port = format!("v-{}", self.nodes[index].name);
        // Port states (STP is off): 0 disabled, 3 forwarding.
        let state = if on { "0" } else { "3" };
        self.lab.exec(
            &self.router_ns,
            &["bridge", "link", "set", "dev", &port, "state", state],
        )?;
        Ok(())
    }

    /// `porter-agent run` for node `index`, reading the same manifests.
    pub fn agent_command(&self, index: usize) -> Result<Command> {
        let node = self.nodes.get(index).context("no such node")?;
        // Exactly the capabilities deploy/porter.yaml gives the DaemonSet
        // (read from it), so the lab proves the agent needs nothing more.
        let capabilities: Vec<String> = workloads::container(workloads::AGENT)?
            .capabilities
            .iter()
            .map(|name| format!("+{}", name.to_ascii_lowercase()))
            .collect();
        let mut command = self.lab.command(&node.ns, "setpriv");
        command
            .arg(format!("--bounding-set=-all,{}", capabilities.join(",")))
            .arg(bins::binary("porter-agent")?)
            .args(["run", "--node-name", &node.name, "--interface", "eth0"])
            .args(["--poll-interval", "100ms"])
            .arg("--source")
            .arg(format!("dir:{}", self.manifests.display()))
            .arg("--bpffs")
            .arg(&node.bpffs)
            .env("RUST_LOG", "info");
        Ok(command)
    }

    /// Starts every node's agent and the controller, and waits until the
    /// router has its BGP session with the controller Established.
    pub fn start_porter(&mut self, within: Duration) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.start_agent(index)?;
        }
        self.start_controller()?;
        self.wait_controller_session(within)
    }

    /// Waits until the router has its BGP session with the controller
    /// Established.
    pub fn wait_controller_session(&self, within: Duration) -> Result<()> {
        wait_for(
            "the router's BGP session with the controller",
            within,
            || {
                Ok(self
                    .router
                    .established(&self.lab, self.controller_ip)?
                    .then_some(()))
            },
        )
    }

    /// Starts the agent of node `index` and waits for its data plane.
    pub fn start_agent(&mut self, index: usize) -> Result<PathBuf> {
        let command = self.agent_command(index)?;
        self.start_agent_as(index, command)
    }

    /// Starts `command` as the agent of node `index` (see
    /// [`crate::from_images`]) and waits for its data plane.
    pub fn start_agent_as(&mut self, index: usize, command: Command) -> Result<PathBuf> {
        let name = agent_name(index);
        let log = self.lab.spawn(&name, command)?;
        wait_for(
            &format!("{name} to report its data plane ready"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&log)?;
                Ok(text.contains("data plane ready").then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "{name} log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(log)
    }

    /// Stops the agent of node `index` (SIGTERM); its data plane stays pinned.
    pub fn stop_agent(&mut self, index: usize) -> Result<()> {
        self.lab.stop(&agent_name(index), Duration::from_secs(5))
    }

    /// The addresses the controller wrote into the Service's status.
    pub fn service_ips(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>> {
        let key = (namespace.to_owned(), name.to_owned());
        Ok(self.all_service_ips()?.remove(&key).unwrap_or_default())
    }

    /// Every Service's published addresses, by (namespace, name), read in
    /// one pass over the manifests.
    pub fn all_service_ips(&self) -> Result<BTreeMap<(String, String), Vec<IpAddr>>> {
        let (snapshot, _) = porter_api::source::dir::load(&self.manifests)?;
        Ok(snapshot
            .services
            .iter()
            .map(|s| {
                let key = (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                );
                let ips = s
                    .status
                    .as_ref()
                    .and_then(|status| status.load_balancer.as_ref()?.ingress.clone())
                    .into_iter()
                    .flatten()
                    .filter_map(|ingress| ingress.ip?.parse().ok())
                    .collect();
                (key, ips)
            })
            .collect())
    }

    /// Waits until the Service has an external IP and returns the first.
    pub fn wait_service_ip(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<IpAddr> {
        wait_for(
            &format!("an external IP for {namespace}/{name}"),
            timeout,
            || Ok(self.service_ips(namespace, name)?.first().copied()),
        )
    }

    /// The addresses pool `eip` reports in use (`status.used`: ip -> Service).
    pub fn eip_used(&self, eip: &str) -> Result<BTreeMap<String, String>> {
        let (snapshot, _) = porter_api::source::dir::load(&self.manifests)?;
        Ok(snapshot
            .eips
            .iter()
            .find(|e| e.metadata.name.as_deref() == Some(eip))
            .and_then(|e| e.status.as_ref())
            .map(|s| s.used.clone())
            .unwrap_or_default())
    }

    /// Events the controller wrote (`status/events.jsonl`), each as
    /// (reason, regarding, message).
    pub fn events(&self) -> Result<Vec<(String, String, String)>> {
        let path = self.manifests.join("status").join("events.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error.into()),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<BTreeMap<String, String>>(line).ok())
            .map(|mut event| {
                let mut take = |key: &str| event.remove(key).unwrap_or_default();
                (take("reason"), take("regarding"), take("message"))
            })
            .collect())
    }

    /// The router's next hops for `eip` (from its kernel FIB).
    pub fn next_hops(&self, eip: IpAddr) -> Result<Vec<IpAddr>> {
        let prefix = match eip {
            IpAddr::V4(_) => format!("{eip}/32"),
            IpAddr::V6(_) => format!("{eip}/128"),
        };
        Ok(self
            .router
            .next_hops(&self.lab, &prefix)?
            .into_iter()
            .collect())
    }

    /// Waits until the router's route to `eip` has exactly these next hops
    /// (none: withdrawn), and returns how long that took.
    pub fn wait_next_hops(
        &self,
        eip: IpAddr,
        want: &[IpAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut want = want.to_vec();
        want.sort();
        wait_for(
            &format!("the router's route to {eip} via {want:?}"),
            timeout,
            || Ok((self.next_hops(eip)? == want).then_some(())),
        )
        .with_context(|| format!("the router has {:?}", self.next_hops(eip)))?;
        Ok(started.elapsed())
    }

    /// The node next hops of nodes `indices`, in the family of `eip`.
    pub fn hops_of(&self, eip: IpAddr, indices: &[usize]) -> Vec<IpAddr> {
        indices
            .iter()
            .filter_map(|&i| self.nodes.get(i))
            .map(|n| if eip.is_ipv6() { n.ip6 } else { n.ip })
            .collect()
    }

    /// One HTTP request from the client; returns the pod that answered.
    pub fn request(&self, addr: SocketAddr) -> Result<String> {
        run_in(&self.client, move || Ok(http_get(addr)?.pod))
    }

    /// `count` requests from the client, each on a new connection; returns
    /// how many each pod answered. Fails on the first failed request, and
    /// when a node's data plane dropped a packet meanwhile: TCP would hide
    /// such a drop behind a retransmission, its counters do not.
    pub fn spread(&self, addr: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
        let before = self.dataplane_drops()?;
        let answers = run_in(&self.client, move || {
            let mut answers = BTreeMap::new();
            for attempt in 0..count {
                let answer =
                    http_get(addr).with_context(|| format!("request {attempt} of {count}"))?;
                *answers.entry(answer.pod).or_insert(0) += 1;
            }
            Ok(answers)
        });
        let dropped = counted_since(&before, &self.dataplane_drops()?);
        match answers {
            Ok(_) if !dropped.is_empty() => bail!(
                "the data planes dropped packets during {count} requests to {addr}: {dropped:?}"
            ),
            Ok(answers) => Ok(answers),
            Err(error) => Err(error.context(format!("data plane drops meanwhile: {dropped:?}"))),
        }
    }

    /// The client address of every request each pod has answered so far,
    /// by pod, from its HTTP server's log (`<address> - - [date] "GET ..."`).
    pub fn pod_clients(&self) -> Result<BTreeMap<String, Vec<IpAddr>>> {
        let mut out = BTreeMap::new();
        for pod in self.nodes.iter().flat_map(|node| &node.pods) {
            let log = self.lab.run_dir().join(format!("http-{}.log", pod.name));
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            let clients = text
                .lines()
                .filter(|line| line.contains("\"GET "))
                .filter_map(|line| line.split_whitespace().next())
                .map(|address| address.trim_start_matches("::ffff:").parse())
                .collect::<Result<Vec<IpAddr>, _>>()
                .with_context(|| format!("a client address in {}", log.display()))?;
            out.insert(pod.name.clone(), clients);
        }
        Ok(out)
    }

    /// Every node's drop counters (`drop_*` and `revnat_failed`), per
    /// node and counter; nodes whose agent never ran have none.
    pub fn dataplane_drops(&self) -> Result<BTreeMap<String, u64>> {
        let mut drops = BTreeMap::new();
        for node in &self.nodes {
            let pins = PinLayout::new(&node.bpffs);
            if !pins.map(map_names::STATS).exists() {
                continue;
            }
            for (stat, value) in read_global_stats(&pins)? {
                if stat.name().starts_with("drop_") || stat == Stat::RevNatFailed {
                    drops.insert(format!("{}/{}", node.name, stat.name()), value);
                }
            }
        }
        Ok(drops)
    }

    /// TCP service `addr` as each node's data plane holds it (read from the
    /// pinned maps, as `inspect` does), by node name; nodes without it are
    /// left out.
    fn installed(&self, addr: SocketAddr) -> Result<BTreeMap<String, ServiceState>> {
        let mut out = BTreeMap::new();
        for node in &self.nodes {
            let pins = PinLayout::new(&node.bpffs);
            if !pins.map(map_names::SERVICES).exists() {
                continue;
            }
            let state = porter_agent::inspect::read(&pins)?;
            let wanted = (addr.ip(), addr.port(), porter_agent::Protocol::Tcp);
            if let Some(service) = state
                .services
                .into_iter()
                .find(|s| (s.addr.vip, s.addr.port, s.addr.proto) == wanted)
            {
                out.insert(node.name.clone(), service);
            }
        }
        Ok(out)
    }

    /// The pod addresses that any node's data plane holds as backends of
    /// TCP service `addr`.
    pub fn installed_backends(&self, addr: SocketAddr) -> Result<BTreeSet<IpAddr>> {
        Ok(self
            .installed(addr)?
            .values()
            .flat_map(|service| service.backends.iter().map(|backend| backend.addr))
            .collect())
    }

    /// The packets each node has forwarded to another node for TCP service
    /// `addr` (`Cluster`), by node name.
    pub fn forwarded_out(&self, addr: SocketAddr) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .installed(addr)?
            .into_iter()
            .map(|(node, service)| (node, service.counters.forwarded_out))
            .collect())
    }

    /// One counter of node `index`'s data plane (0 when its agent never ran).
    pub fn dataplane_stat(&self, index: usize, stat: Stat) -> Result<u64> {
        let node = self.nodes.get(index).context("no such node")?;
        let pins = PinLayout::new(&node.bpffs);
        if !pins.map(map_names::STATS).exists() {
            return Ok(0);
        }
        Ok(read_global_stats(&pins)?
            .into_iter()
            .find(|(s, _)| *s == stat)
            .map_or(0, |(_, value)| value))
    }

    /// Starts requests from the client in a loop until the returned load is stopped.
    pub fn load(&self, addr: SocketAddr) -> Load {
        Load::start(self.client.clone(), addr)
    }

    /// What `/metrics` of the controller and of each node's agent says now,
    /// as (who, OpenMetrics text); every one of them must be running.
    pub fn scrape_metrics(&self) -> Result<Vec<(String, String)>> {
        let controller = SocketAddr::new(self.controller_ip, CONTROLLER_METRICS_PORT);
        let mut scrapes = vec![(
            "porter-controller".to_owned(),
            self.lab.exec(
                &self.ctl,
                &["curl", "-sSf", &format!("http://{controller}/metrics")],
            )?,
        )];
        let agent = format!("http://127.0.0.1:{AGENT_METRICS_PORT}/metrics");
        for node in &self.nodes {
            let text = self
                .lab
                .exec(&node.ns, &["curl", "-sSf", &agent])
                .with_context(|| format!("scraping the agent of {}", node.name))?;
            scrapes.push((format!("porter-agent on {}", node.name), text));
        }
        Ok(scrapes)
    }

    /// The routers' and daemons' view, for failure messages.
    pub fn describe(&self) -> String {
        let routes = self
            .lab
            .ip(&self.router_ns, &["route"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let mut text = format!(
            "router routes:\n{routes}\n{}",
            self.router.describe(&self.lab)
        );
        // The data planes' counters say where a lost packet went.
        for node in &self.nodes {
            let inspect = bins::agent_inspect(&self.lab, &node.ns, &node.bpffs)
                .unwrap_or_else(|e| format!("{e:#}"));
            text.push_str(&format!(
                "\n---- porter-agent inspect on {}:\n{inspect}",
                node.name
            ));
        }
        text
    }

    /// Leaves everything running (for `cargo xtask demo --keep`).
    pub fn keep(self) {
        self.lab.keep();
    }
}

/// The counters of `now` that grew since `before`, by how much.
fn counted_since(
    before: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(name, &value)| {
            let grown = value.saturating_sub(before.get(name).copied().unwrap_or(0));
            (grown > 0).then(|| (name.clone(), grown))
        })
        .collect()
}

/// Per-node counts from per-pod counts (pods are named `<node>-p<i>`).
pub fn per_node(per_pod: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (pod, count) in per_pod {
        let node = pod.split('-').next().unwrap_or(pod).to_owned();
        *out.entry(node).or_insert(0) += count;
    }
    out
}

/// Forwarding on, and ECMP hashing by ports too, not only addresses.
fn enable_routing(lab: &Lab, ns: &str) -> Result<()> {
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv6.fib_multipath_hash_policy=1",
    ] {
        lab.exec(ns, &["sysctl", "-qw", sysctl])?;
    }
    Ok(())
}

/// The client namespace behind `router_ns`, on 172.31.0.0/24 and fd00:31::/64.
fn connect_client(lab: &Lab, router_ns: &str, client: &str) -> Result<()> {
    lab.veth((router_ns, "v-cl"), (client, "eth0"))?;
    lab.addr(router_ns, "v-cl", "172.31.0.1/24")?;
    lab.addr(router_ns, "v-cl", "fd00:31::1/64")?;
    lab.addr(client, "eth0", &format!("{CLIENT_V4}/24"))?;
    lab.addr(client, "eth0", "fd00:31::2/64")?;
    lab.ip(client, &["route", "add", "default", "via", "172.31.0.1"])?;
    lab.ip(
        client,
        &["-6", "route", "add", "default", "via", "fd00:31::1"],
    )?;
    // Full checksums from the client, as from a wire: XDP on a veth
    // would otherwise see offloaded, unfinished ones.
    lab.exec(client, &["ethtool", "-K", "eth0", "tx", "off"])?;
    Ok(())
}

/// Node `n`'s forwarding, bpffs and pods, once its uplink is addressed.
fn finish_node(
    lab: &mut Lab,
    n: usize,
    ns: String,
    ip: IpAddr,
    ip6: IpAddr,
    pod_count: usize,
    labels: Vec<(String, String)>,
) -> Result<LabNode> {
    lab.exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    lab.exec(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    let bpffs = lab.bpffs()?;
    let mut pods = Vec::new();
    for p in 1..=pod_count {
        pods.push(add_pod(lab, &ns, n, p)?);
    }
    Ok(LabNode {
        name: format!("n{n}"),
        ns,
        ip,
        ip6,
        bpffs,
        pods,
        next_pod: pod_count + 1,
        ready: true,
        labels,
    })
}

fn agent_name(index: usize) -> String {
    format!("agent-n{}", index + 1)
}

/// Connects `ns`'s `eth0` to the router's bridge through port `port`.
fn attach_to_lan(lab: &Lab, router_ns: &str, ns: &str, port: &str) -> Result<()> {
    lab.veth((router_ns, port), (ns, "eth0"))?;
    lab.ip(router_ns, &["link", "set", port, "master", "lan"])?;
    Ok(())
}

/// Node `n`'s namespace on `lan_ns`'s bridge, behind port `v-n<n>` with
/// the pass-everything XDP program on it (see `Datacenter::_pass_xdp`):
/// `ip`/24 and `ip6`/64 on its eth0, default routes through `gateways`.
fn join_lan(
    lab: &mut Lab,
    lan_ns: &str,
    n: usize,
    (ip, ip6): (IpAddr, IpAddr),
    (gateway, gateway6): (&str, &str),
) -> Result<(String, aya::Ebpf)> {
    let name = format!("n{n}");
    let ns = lab.netns(&name)?;
    let port = format!("v-{name}");
    attach_to_lan(lab, lan_ns, &ns, &port)?;
    let pass_xdp = attach_pass_xdp_to(lan_ns, &port)?;
    lab.addr(&ns, "eth0", &format!("{ip}/24"))?;
    lab.addr(&ns, "eth0", &format!("{ip6}/64"))?;
    lab.ip(&ns, &["route", "add", "default", "via", gateway])?;
    lab.ip(&ns, &["-6", "route", "add", "default", "via", gateway6])?;
    Ok((ns, pass_xdp))
}

/// Pod `p` of node `n`: its own namespace behind a veth, addresses
/// 10.244.<n>.<p+1> and fd00:244:<n>::<p+1>, routed by the node (the way
/// Calico wires pods: a /32 route per pod, the node as gateway).
fn add_pod(lab: &mut Lab, node_ns: &str, n: usize, p: usize) -> Result<Pod> {
    let name = format!("n{n}-p{p}");
    let ns = lab.netns(&format!("n{n}p{p}"))?;
    let host_side = format!("vp{p}");
    lab.veth((node_ns, &host_side), (&ns, "eth0"))?;
    let (gateway, gateway6) = (format!("10.244.{n}.1"), format!("fd00:244:{n}::1"));
    let ip: IpAddr = format!("10.244.{n}.{}", p + 1).parse()?;
    let ip6: IpAddr = format!("fd00:244:{n}::{}", p + 1).parse()?;
    lab.addr(node_ns, &host_side, &format!("{gateway}/32"))?;
    lab.addr(node_ns, &host_side, &format!("{gateway6}/128"))?;
    lab.ip(
        node_ns,
        &["route", "add", &format!("{ip}/32"), "dev", &host_side],
    )?;
    lab.ip(
        node_ns,
        &[
            "-6",
            "route",
            "add",
            &format!("{ip6}/128"),
            "dev",
            &host_side,
        ],
    )?;
    lab.addr(&ns, "eth0", &format!("{ip}/32"))?;
    lab.addr(&ns, "eth0", &format!("{ip6}/128"))?;
    lab.ip(&ns, &["route", "add", &gateway, "dev", "eth0"])?;
    lab.ip(&ns, &["route", "add", "default", "via", &gateway])?;
    lab.ip(&ns, &["-6", "route", "add", &gateway6, "dev", "eth0"])?;
    lab.ip(&ns, &["-6", "route", "add", "default", "via", &gateway6])?;
    // The server answers every path with the pod's name.
    let www = lab.run_dir().join("www").join(&name);
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), format!("{name}\n"))?;
    let mut server = lab.command(&ns, "python3");
    // `--bind ::` makes it dual-stack (IPv4 too); without it, IPv4 only.
    server
        .args(["-m", "http.server", &POD_PORT.to_string(), "--bind", "::"])
        .arg("--directory")
        .arg(&www);
    lab.spawn(&format!("http-{name}"), server)?;
    Ok(Pod {
        name,
        ns,
        ip,
        ip6,
        host_side,
    })
}

/// One answered `GET /`.
pub struct Answer {
    /// The body, trimmed: the name of the pod that answered.
    pub pod: String,
    /// How long the connect took.
    pub connect: Duration,
}

/// `GET /` over a new connection from the calling thread's namespace.
pub fn http_get(addr: SocketAddr) -> Result<Answer> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    let connect = started.elapsed();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} sent no complete HTTP response: {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr} answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(Answer {
        pod: body.trim().to_owned(),
        connect,
    })
}

/// Requests in a loop from the client, each on a new connection, counting
/// successes and keeping the failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<LoadReport>>>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failures: Vec<String>,
    pub per_pod: BTreeMap<String, usize>,
    /// Answered requests whose connect took a SYN retransmission: a SYN or
    /// its answer was lost on the way.
    pub retransmitted: usize,
}

impl LoadReport {
    /// Fails unless every request was answered, each without a lost SYN.
    pub fn ensure_lossless(&self, during: &str) -> Result<()> {
        if !self.failures.is_empty() || self.retransmitted > 0 {
            bail!(
                "{} of {} requests failed and {} needed a SYN retransmission {during}: {:?}",
                self.failures.len(),
                self.ok + self.failures.len(),
                self.retransmitted,
                self.failures.iter().take(3).collect::<Vec<_>>()
            );
        }
        Ok(())
    }
}

impl Load {
    fn start(client: String, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            crate::netns::enter(&client)?;
            let mut report = LoadReport::default();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                match http_get(addr) {
                    Ok(answer) => {
                        report.ok += 1;
                        report.retransmitted += usize::from(answer.connect >= SYN_RETRANSMIT);
                        *report.per_pod.entry(answer.pod).or_insert(0) += 1;
                    }
                    Err(error) => report
                        .failures
                        .push(format!("{:?} into the load: {error:#}", started.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(report)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the load thread panicked"))?,
            None => bail!("load already stopped"),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `deploy/samples/` of this repository: the manifests users apply.
pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("samples")
}

//! Porter in the data-centre lab as a cluster runs it: every agent and the
//! controller started from the images `cargo xtask images` builds, each
//! with its workload's args, environment, user, capabilities, read-only
//! root and mounts from deploy/porter.yaml (tests/src/workloads.rs). Only
//! what the lab has instead of a cluster differs: the cluster is the lab's
//! `dir:` source (mounted at [`CLUSTER_INSIDE`]) instead of `kube`, polled
//! every 100 ms; a node's bpffs is the lab's bpffs of that node.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    datacenter::Datacenter,
    image_rootfs::ImageRootfs,
    workloads::{self, Container, EnvValue},
};

/// Where a container sees the lab's cluster directory.
pub const CLUSTER_INSIDE: &str = "/var/lib/porter-lab/cluster";
/// The namespace the manifest deploys Porter in (`metadata.namespace`).
const POD_NAMESPACE: &str = "porter-system";

/// The images to run, as `cargo xtask test` passes them.
pub struct Images {
    pub agent: String,
    pub controller: String,
}

impl Images {
    /// `PORTER_AGENT_IMAGE` and `PORTER_CONTROLLER_IMAGE`, which `cargo
    /// xtask test` sets to what `cargo xtask images` built; None when unset.
    pub fn from_env() -> Option<Self> {
        Some(Self {
            agent: std::env::var("PORTER_AGENT_IMAGE").ok()?,
            controller: std::env::var("PORTER_CONTROLLER_IMAGE").ok()?,
        })
    }
}

/// Both images mounted, with their workloads' containers.
pub struct FromImages {
    agent: (ImageRootfs, Container),
    controller: (ImageRootfs, Container),
}

impl FromImages {
    pub fn mount(images: &Images, dc: &Datacenter) -> Result<Self> {
        let name = |what: &str| format!("porter-lab-{}-{what}", dc.lab.id());
        Ok(Self {
            agent: (
                ImageRootfs::mount(&images.agent, &name("agent"))?,
                workloads::container(workloads::AGENT)?,
            ),
            controller: (
                ImageRootfs::mount(&images.controller, &name("controller"))?,
                workloads::container(workloads::CONTROLLER)?,
            ),
        })
    }

    /// Replaces the lab's agents and controller by ones from the images, and
    /// waits for each agent's data plane and the controller's BGP session.
    pub fn start(&self, dc: &mut Datacenter, within: Duration) -> Result<()> {
        let cluster = vec![(dc.manifests.clone(), PathBuf::from(CLUSTER_INSIDE))];
        // The directory stands in for the API server, where RBAC lets both
        // service accounts write status: here, file modes let both users.
        open_to_every_user(&dc.manifests)?;
        for index in 0..dc.nodes.len() {
            let node = &dc.nodes[index];
            let (rootfs, spec) = &self.agent;
            let mut mounts = cluster.clone();
            for (host, inside) in &spec.host_mounts {
                if host != Path::new("/sys/fs/bpf") {
                    bail!("the lab has no stand-in for hostPath {}", host.display());
                }
                mounts.push((node.bpffs.clone(), inside.clone()));
            }
            let pod = Pod {
                node: &node.name,
                name: &format!("porter-agent-{}", node.name),
                addresses: &node.ip.to_string(),
            };
            let env = resolve_env(spec, &pod)?;
            let command = rootfs.command(&node.ns, spec, &lab_args(spec)?, &env, &mounts)?;
            dc.stop_agent(index)?;
            dc.start_agent_as(index, command)?;
        }
        let (rootfs, spec) = &self.controller;
        let address = dc.replica_ip(0).context("the lab has no controller")?;
        let pod = Pod {
            node: "ctl",
            name: "porter-controller-0",
            addresses: &address.to_string(),
        };
        let env = resolve_env(spec, &pod)?;
        let command = rootfs.command(&dc.ctl, spec, &lab_args(spec)?, &env, &cluster)?;
        dc.stop_controller()?;
        dc.start_controller_as(command)?;
        dc.wait_controller_session(within)
    }
}

/// The container's args with the lab's cluster in place of the API server.
fn lab_args(spec: &Container) -> Result<Vec<String>> {
    let mut args = spec.args.clone();
    let source = args
        .iter_mut()
        .find(|arg| *arg == "--source=kube")
        .context("the lab replaces `--source=kube` by its dir: source; the manifest has none")?;
    *source = format!("--source=dir:{CLUSTER_INSIDE}");
    // The lab's changes are written by the tests, not watched: poll often.
    args.push("--poll-interval=100ms".into());
    Ok(args)
}

/// What the downward API would say of a lab's stand-in for a Pod.
struct Pod<'a> {
    node: &'a str,
    name: &'a str,
    /// `status.podIPs`: under hostNetwork, the node's addresses.
    addresses: &'a str,
}

/// The container's environment with the Pod's fields filled in.
fn resolve_env(spec: &Container, pod: &Pod) -> Result<Vec<(String, String)>> {
    spec.env
        .iter()
        .map(|(name, value)| {
            let value = match value {
                EnvValue::Literal(value) => value.clone(),
                EnvValue::Field(field) => match field.as_str() {
                    "spec.nodeName" => pod.node.to_owned(),
                    "metadata.namespace" => POD_NAMESPACE.to_owned(),
                    "metadata.name" => pod.name.to_owned(),
                    "status.podIPs" => pod.addresses.to_owned(),
                    other => bail!("env {name}: the lab has no value for field {other}"),
                },
            };
            Ok((name.clone(), value))
        })
        .collect()
}

/// Every directory under `root` writable and every file readable and
/// writable by every user.
fn open_to_every_user(root: &Path) -> Result<()> {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777))?;
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() {
            open_to_every_user(&path)?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        }
    }
    Ok(())
}

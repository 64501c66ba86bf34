//! `--source dir:PATH`: the cluster as a directory of Kubernetes YAML
//! manifests (any `*.yaml`, `*.yml`, `*.json`, multi-document allowed),
//! polled for changes. What the core writes goes beside them, under
//! `PATH/status/`: one `<kind>_<namespace>_<name>.yaml` per object holding
//! its `status` and `finalizers` (read back over the manifest on the next
//! load, as the API server would; a Node's conditions are merged by type,
//! so its agent's data plane condition joins the manifest's), and Events
//! appended to `events.jsonl`
//! (rotated to `events.jsonl.1` at [`EVENTS_CAP`], so it never outgrows
//! twice that). Object names are checked as the API server checks them
//! before they become file names, and a symlinked directory is read once
//! however often it is linked. The netns lab and standalone use run on this.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, NodeCondition, NodeStatus, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Event, EventType, Regarding, Snapshot, SnapshotReceiver, StatusWriter, WriteError};
use crate::annotations::{
    SEED_BGP_CONFIGMAP_NAME, SEED_BGP_CONFIGMAP_NAMESPACE, SERVICE_FINALIZER,
};
use crate::names::NameRule;
use crate::node_dataplane;
use crate::service::ingress_status;
use crate::{BgpConf, BgpPeer, BgpPeerNodeStatus, BgpPeerStatus, Eip, EipStatus, ObjectKey};

const STATUS_DIR: &str = "status";
const EVENTS_FILE: &str = "events.jsonl";
/// Where `events.jsonl` goes when it reaches [`EVENTS_CAP`].
const EVENTS_ROTATED: &str = "events.jsonl.1";
/// `events.jsonl` is rotated before it grows past this many bytes.
pub const EVENTS_CAP: u64 = 4 << 20;

/// What the core wrote about one object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StatusFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<serde_yaml::Value>,
}

/// A manifest that could not be used, with why; loading goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: PathBuf,
    pub problem: String,
}

/// The status file of an object, or why its names cannot be part of a
/// path (loading refuses such objects; this guards the writer too).
fn status_path(root: &Path, kind: &str, namespace: &str, name: &str) -> Result<PathBuf, String> {
    NameRule::of_kind(kind).check(name)?;
    if !namespace.is_empty() {
        NameRule::Dns1123Label.check(namespace)?;
    }
    Ok(root
        .join(STATUS_DIR)
        .join(format!("{kind}_{namespace}_{name}.yaml")))
}

fn manifest_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    // Directories by (device, inode): a symlink back up the tree (or two
    // links to one directory) is read once instead of looping forever.
    let mut visited = std::collections::BTreeSet::new();
    while let Some(dir) = stack.pop() {
        let meta = std::fs::metadata(&dir)?;
        if !visited.insert((meta.dev(), meta.ino())) {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path != root.join(STATUS_DIR) {
                    stack.push(path);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Size and mtime of every file that feeds a snapshot, status files
/// included; a change in any of them means a new snapshot.
fn fingerprint(root: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = manifest_files(root).unwrap_or_default();
    files.extend(
        std::fs::read_dir(root.join(STATUS_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

fn read_status(root: &Path, kind: &str, namespace: &str, name: &str) -> Option<StatusFile> {
    let text = std::fs::read_to_string(status_path(root, kind, namespace, name).ok()?).ok()?;
    serde_yaml::from_str(&text).ok()
}

fn overlay_status<S: serde::de::DeserializeOwned>(
    file: &StatusFile,
    status: &mut Option<S>,
    finalizers: &mut Option<Vec<String>>,
) {
    if let Some(s) = file
        .status
        .clone()
        .and_then(|v| serde_yaml::from_value(v).ok())
    {
        *status = Some(s);
    }
    if !file.finalizers.is_empty() {
        *finalizers = Some(file.finalizers.clone());
    }
}

/// A Node's status file holds only the conditions written for it (its
/// agent's [`node_dataplane::CONDITION`]): they are merged by type over the
/// manifest's, as the API server merges a node status patch, so that the
/// manifest keeps its addresses and the kubelet's `Ready`.
fn overlay_node_conditions(file: &StatusFile, node: &mut Node) {
    let Some(written) = file
        .status
        .clone()
        .and_then(|v| serde_yaml::from_value::<NodeStatus>(v).ok())
        .and_then(|s| s.conditions)
    else {
        return;
    };
    let status = node.status.get_or_insert_with(NodeStatus::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for condition in written {
        node_dataplane::merge(conditions, condition);
    }
}

/// Reads every manifest under `root` into a snapshot.
pub fn load(root: &Path) -> std::io::Result<(Snapshot, Vec<LoadProblem>)> {
    let mut snap = Snapshot::default();
    let mut problems = Vec::new();
    for file in manifest_files(root)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => problems.extend(load_text(root, &file, &text, &mut snap)),
            Err(e) => problems.push(LoadProblem {
                file,
                problem: e.to_string(),
            }),
        }
    }
    Ok((snap, problems))
}

/// Adds the objects of one manifest file's `text` (read from `file` under
/// `root`) to `snap`; what cannot be used is returned, never a panic. Pure
/// apart from reading the status files under `root`, so the fuzz target
/// `manifests` drives it directly.
pub fn load_text(root: &Path, file: &Path, text: &str, snap: &mut Snapshot) -> Vec<LoadProblem> {
    let mut problems = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                // The YAML parser cannot resynchronise after a syntax error.
                problems.push(LoadProblem {
                    file: file.to_path_buf(),
                    problem: format!("not YAML: {e}"),
                });
                break;
            }
        };
        if let Err(problem) = add_object(root, snap, value) {
            problems.push(LoadProblem {
                file: file.to_path_buf(),
                problem,
            });
        }
    }
    problems
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: &str,
    value: serde_yaml::Value,
) -> Result<T, String> {
    serde_yaml::from_value(value).map_err(|e| format!("invalid {kind}: {e}"))
}

/// The kinds a snapshot holds; other documents are skipped unread.
const READ_KINDS: &[&str] = &[
    "Service",
    "EndpointSlice",
    "Node",
    "Namespace",
    "Eip",
    "EIP",
    "BgpConf",
    "BgpPeer",
    "Secret",
    "ConfigMap",
];

/// `metadata.name` and `metadata.namespace` as the API server checks them.
fn check_names(kind: &str, value: &serde_yaml::Value) -> Result<(), String> {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f));
    let name = match field("name") {
        Some(serde_yaml::Value::String(name)) => name,
        _ => return Err(format!("a {kind} without metadata.name")),
    };
    let kind = if kind == "EIP" { "Eip" } else { kind };
    NameRule::of_kind(kind)
        .check(name)
        .map_err(|e| format!("{kind} metadata.name {e}; the API server would refuse it"))?;
    match field("namespace") {
        None | Some(serde_yaml::Value::Null) => Ok(()),
        Some(serde_yaml::Value::String(namespace)) => {
            NameRule::Dns1123Label.check(namespace).map_err(|e| {
                format!("{kind} {name}: metadata.namespace {e}; the API server would refuse it")
            })
        }
        Some(_) => Err(format!("{kind} {name}: metadata.namespace is not a string")),
    }
}

fn add_object(root: &Path, snap: &mut Snapshot, value: serde_yaml::Value) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or("a document without `kind`")?
        .to_string();
    if READ_KINDS.contains(&kind.as_str()) {
        check_names(&kind, &value)?;
    }
    match kind.as_str() {
        "Service" => {
            let mut svc: Service = parse(&kind, value)?;
            let key = ObjectKey::of(&svc.metadata);
            if let Some(f) = read_status(root, "Service", &key.namespace, &key.name) {
                overlay_status(&f, &mut svc.status, &mut svc.metadata.finalizers);
            }
            snap.services.push(Arc::new(svc));
        }
        "EndpointSlice" => snap
            .endpoint_slices
            .push(Arc::new(parse::<EndpointSlice>(&kind, value)?)),
        "Node" => {
            let mut node: Node = parse(&kind, value)?;
            let name = node.metadata.name.clone().unwrap_or_default();
            if let Some(f) = read_status(root, "Node", "", &name) {
                overlay_node_conditions(&f, &mut node);
            }
            snap.nodes.push(Arc::new(node));
        }
        "Namespace" => snap
            .namespaces
            .push(Arc::new(parse::<Namespace>(&kind, value)?)),
        // `EIP` is how the seed's oldest manifests spell the kind.
        "Eip" | "EIP" => {
            let mut eip: Eip = parse(&kind, value)?;
            let name = eip.metadata.name.clone().unwrap_or_default();
            if let Some(f) = read_status(root, "Eip", "", &name) {
                overlay_status(&f, &mut eip.status, &mut eip.metadata.finalizers);
            }
            snap.eips.push(Arc::new(eip));
        }
        "BgpConf" => snap
            .bgp_confs
            .push(Arc::new(parse::<BgpConf>(&kind, value)?)),
        "BgpPeer" => {
            let mut peer: BgpPeer = parse(&kind, value)?;
            let name = peer.metadata.name.clone().unwrap_or_default();
            if let Some(f) = read_status(root, "BgpPeer", "", &name) {
                overlay_status(&f, &mut peer.status, &mut peer.metadata.finalizers);
            }
            snap.bgp_peers.push(Arc::new(peer));
        }
        "Secret" => snap.secrets.push(Arc::new(parse_secret(value)?)),
        "ConfigMap" => {
            let cm: ConfigMap = parse(&kind, value)?;
            if cm.metadata.name.as_deref() == Some(SEED_BGP_CONFIGMAP_NAME)
                && cm.metadata.namespace.as_deref() == Some(SEED_BGP_CONFIGMAP_NAMESPACE)
            {
                snap.config_maps.push(Arc::new(cm));
            }
        }
        // Deployments, RBAC and the like sit next to these in real manifests.
        _ => {}
    }
    Ok(())
}

/// A Secret as the API server would store it: `stringData` merged into
/// `data` (winning on a shared key). Errors name the Secret and the key but
/// never show a value.
fn parse_secret(value: serde_yaml::Value) -> Result<Secret, String> {
    let meta = value.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string()
    };
    let name = format!("{}/{}", field("namespace"), field("name"));
    if let Some(data) = value.get("data").and_then(|d| d.as_mapping()) {
        for (key, encoded) in data {
            if serde_yaml::from_value::<ByteString>(encoded.clone()).is_err() {
                let key = key.as_str().unwrap_or("?");
                return Err(format!(
                    "Secret {name}: data.{key} is not valid base64; encode it (base64 -w0) or put the plain text under stringData"
                ));
            }
        }
    }
    let mut secret: Secret = serde_yaml::from_value(value).map_err(|_| {
        format!("Secret {name} is not a well-formed Secret (values are not shown); check its fields against `kubectl explain secret`")
    })?;
    if let Some(plain) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, text) in plain {
            data.insert(key, ByteString(text.into_bytes()));
        }
    }
    Ok(secret)
}

/// Starts polling `root` every `poll`; the first snapshot is loaded before
/// this returns, so a bad path fails at once.
pub fn start(root: PathBuf, poll: Duration) -> std::io::Result<(SnapshotReceiver, DirWriter)> {
    // Fingerprint before loading: a change made while loading is seen next poll.
    let mut seen = fingerprint(&root);
    let (first, problems) = load(&root)?;
    report(&problems);
    let (tx, rx) = watch::channel(Arc::new(first));
    let writer = DirWriter::new(root.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(poll).await;
            let now = fingerprint(&root);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&root) {
                Ok((snap, problems)) => {
                    report(&problems);
                    if tx.send(Arc::new(snap)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %root.display(), error = %e, "cannot read manifests; keeping the last snapshot")
                }
            }
        }
    });
    Ok((rx, writer))
}

fn report(problems: &[LoadProblem]) {
    for p in problems {
        tracing::warn!(file = %p.file.display(), problem = %p.problem, "manifest skipped; fix it and it is read again");
    }
}

/// Writes status beside the manifests. The files are small and local, so
/// the writes use blocking calls; this source is for labs and standalone use.
#[derive(Debug, Clone)]
pub struct DirWriter {
    root: PathBuf,
    events_cap: u64,
}

impl DirWriter {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            events_cap: EVENTS_CAP,
        }
    }

    /// Rotates `events.jsonl` at `bytes` instead of [`EVENTS_CAP`].
    pub fn with_events_cap(mut self, bytes: u64) -> Self {
        self.events_cap = bytes;
        self
    }

    /// Read-modify-write of one status file; untouched when nothing changes,
    /// so that an idempotent write does not trigger a reload.
    fn update(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut StatusFile),
    ) -> Result<(), WriteError> {
        let path =
            status_path(&self.root, kind, namespace, name).map_err(|problem| WriteError::Io {
                what: format!("the status of {kind} {namespace}/{name}"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, problem),
            })?;
        let what = || format!("{}", path.display());
        let old = read_status(&self.root, kind, namespace, name).unwrap_or_default();
        let mut new = old.clone();
        f(&mut new);
        if new == old {
            return Ok(());
        }
        let text = serde_yaml::to_string(&new).map_err(|source| WriteError::Encode {
            what: what(),
            source,
        })?;
        let io = |source| WriteError::Io {
            what: what(),
            source,
        };
        std::fs::create_dir_all(self.root.join(STATUS_DIR)).map_err(io)?;
        // Write then rename, so that the poller never reads half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

fn to_value<T: Serialize>(what: &str, v: &T) -> Result<serde_yaml::Value, WriteError> {
    serde_yaml::to_value(v).map_err(|source| WriteError::Encode {
        what: what.to_string(),
        source,
    })
}

impl DirWriter {
    /// Sets the node's condition of `condition`'s type in its status file,
    /// which loading merges over the Node's manifest.
    pub fn node_condition(&self, node: &str, condition: &NodeCondition) -> Result<(), WriteError> {
        // The agent (PorterDataplaneReady) and the leader controller
        // (PorterNodeReachable) write one Node's status file from separate
        // processes: one read-modify-write at a time, so neither drops the
        // other's condition.
        let lock_path = self.root.join(STATUS_DIR).join(".node-status.lock");
        let io = |source| WriteError::Io {
            what: lock_path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(self.root.join(STATUS_DIR)).map_err(io)?;
        let lock = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&lock_path)
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let mut status: NodeStatus = read_status(&self.root, "Node", "", node)
            .and_then(|f| f.status)
            .and_then(|v| serde_yaml::from_value(v).ok())
            .unwrap_or_default();
        node_dataplane::merge(
            status.conditions.get_or_insert_with(Vec::new),
            condition.clone(),
        );
        let value = to_value("Node status", &status)?;
        self.update("Node", "", node, |f| f.status = Some(value))
    }
}

impl StatusWriter for DirWriter {
    async fn node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
    ) -> Result<(), WriteError> {
        DirWriter::node_condition(self, node, condition)
    }

    async fn service_ingress(
        &self,
        service: &ObjectKey,
        ingress: &[IpAddr],
    ) -> Result<(), WriteError> {
        let value = to_value("Service status", &ingress_status(ingress))?;
        self.update("Service", &service.namespace, &service.name, |f| {
            f.status = Some(value)
        })
    }

    async fn service_finalizer(
        &self,
        service: &ObjectKey,
        present: bool,
    ) -> Result<(), WriteError> {
        self.update("Service", &service.namespace, &service.name, |f| {
            f.finalizers.retain(|x| x != SERVICE_FINALIZER);
            if present {
                f.finalizers.push(SERVICE_FINALIZER.to_string());
            }
        })
    }

    async fn eip_status(&self, eip: &str, status: &EipStatus) -> Result<(), WriteError> {
        let value = to_value("Eip status", status)?;
        self.update("Eip", "", eip, |f| f.status = Some(value))
    }

    /// Read-modify-write of the one entry. Agents in separate processes
    /// may race on the file; each re-writes its entry when the snapshot
    /// shows it missing, so a lost entry comes back at the next pass.
    async fn bgp_peer_status(
        &self,
        peer: &str,
        key: &str,
        status: Option<&BgpPeerNodeStatus>,
    ) -> Result<(), WriteError> {
        let old: BgpPeerStatus = read_status(&self.root, "BgpPeer", "", peer)
            .and_then(|f| f.status)
            .and_then(|v| serde_yaml::from_value(v).ok())
            .unwrap_or_default();
        let mut new = old;
        new.nodes.retain(|entry| entry.node != key);
        new.nodes.extend(status.cloned());
        new.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let value = to_value("BgpPeer status", &new)?;
        self.update("BgpPeer", "", peer, |f| f.status = Some(value))
    }

    async fn event(&self, event: &Event) -> Result<(), WriteError> {
        use std::io::Write;
        let regarding = match &event.regarding {
            Regarding::Service(k) => format!("Service {k}"),
            Regarding::Eip(n) => format!("Eip {n}"),
            Regarding::BgpPeer(n) => format!("BgpPeer {n}"),
            Regarding::Node(n) => format!("Node {n}"),
        };
        let line: BTreeMap<&str, &str> = [
            ("regarding", regarding.as_str()),
            (
                "type",
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                },
            ),
            ("reason", event.reason),
            ("message", event.message.as_str()),
        ]
        .into();
        // serde_json of a map of strings cannot fail.
        let text = serde_json::to_string(&line).unwrap_or_default();
        let path = self.root.join(STATUS_DIR).join(EVENTS_FILE);
        let io = |source| WriteError::Io {
            what: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(self.root.join(STATUS_DIR)).map_err(io)?;
        // One older generation is kept: the disk holds at most twice the cap.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() + text.len() as u64 + 1 > self.events_cap)
        {
            std::fs::rename(&path, self.root.join(STATUS_DIR).join(EVENTS_ROTATED)).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        writeln!(file, "{text}").map_err(io)
    }
}

#[cfg(test)]
mod tests;

//! `--source kube`: the cluster through kube-rs reflectors, with status and
//! finalizers written by server-side apply under the field manager
//! `porter-controller`, and Events through the events.k8s.io API.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, NodeCondition, ObjectReference, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::{Event, EventType, Regarding, Snapshot, SnapshotReceiver, StatusWriter, WriteError};
use crate::annotations::{
    FIELD_MANAGER, SEED_BGP_CONFIGMAP_NAME, SEED_BGP_CONFIGMAP_NAMESPACE, SERVICE_FINALIZER,
};
use crate::crd::CONTROLLER_STATUS_KEY;
use crate::health::Health;
use crate::{BgpConf, BgpPeer, BgpPeerNodeStatus, Eip, EipStatus, ObjectKey};

/// Coalesces bursts of watch events into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The reflector stores behind the snapshots.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub eips: Store<Eip>,
    pub bgp_confs: Store<BgpConf>,
    pub bgp_peers: Store<BgpPeer>,
    pub config_maps: Store<ConfigMap>,
    /// One store per namespace Secrets are read from.
    pub secrets: Vec<Store<Secret>>,
}

impl Stores {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            nodes: self.nodes.state(),
            namespaces: self.namespaces.state(),
            eips: self.eips.state(),
            bgp_confs: self.bgp_confs.state(),
            bgp_peers: self.bgp_peers.state(),
            config_maps: self.config_maps.state(),
            secrets: self.secrets.iter().flat_map(Store::state).collect(),
            ..Snapshot::default()
        }
    }
}

/// Starts one reflector per kind; `managedFields` (and a node's image list)
/// are dropped before caching, as nothing reads them and they are most of
/// the bytes. A watch the API server refuses (403) is an error that names
/// the missing permission, in the log and in `/readyz`, until it succeeds:
/// the first list never completes, so the binary would otherwise wait
/// forever with nothing but retry warnings.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    health: Health,
    strip: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            strip(o);
        })
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let problem = format!("watch {kind}");
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    health.set_problem(&problem, None);
                    changed.notify_one();
                }
                Err(e) => match forbidden(&e) {
                    Some(refusal) => {
                        let message = format!("cannot watch {kind}s: {refusal}");
                        tracing::error!(
                            kind,
                            "{message}; grant it in the service account's (Cluster)Role, see docs/install.md; retrying with backoff"
                        );
                        health.set_problem(&problem, Some(message));
                    }
                    None => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff")
                    }
                },
            }
        }
    });
    reader
}

/// The API server's message when it refused a list or watch for lack of
/// permission (it names the verb, resource, group and scope).
pub fn forbidden(error: &watcher::Error) -> Option<&str> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
            if status.code == 403 =>
        {
            Some(&status.message)
        }
        watcher::Error::WatchError(status) if status.code == 403 => Some(&status.message),
        _ => None,
    }
}

fn keep<K>(_: &mut K) {}

/// What to watch beyond the kinds every binary reads.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Namespaces whose Secrets are read (BgpPeer passwords). Each is one
    /// namespaced watch, so a Role in each namespace is all the RBAC it
    /// takes; empty reads none.
    pub secret_namespaces: Vec<String>,
    /// Where a refused watch is reported (`/readyz`).
    pub health: Health,
}

/// Starts the reflectors and returns once every store has its first full
/// list, so the first snapshot is complete.
pub async fn start_watching(client: Client, watch: &Watch) -> (SnapshotReceiver, Stores) {
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let h = || watch.health.clone();
    let stores = Stores {
        services: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        endpoint_slices: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        nodes: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            |n: &mut Node| {
                if let Some(s) = n.status.as_mut() {
                    s.images = None;
                }
            },
        ),
        namespaces: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        eips: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        bgp_confs: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        bgp_peers: reflect(
            Api::all(client.clone()),
            all.clone(),
            changed.clone(),
            h(),
            keep,
        ),
        config_maps: reflect(
            Api::namespaced(client.clone(), SEED_BGP_CONFIGMAP_NAMESPACE),
            all.clone()
                .fields(&format!("metadata.name={SEED_BGP_CONFIGMAP_NAME}")),
            changed.clone(),
            h(),
            keep,
        ),
        secrets: watch
            .secret_namespaces
            .iter()
            .map(|ns| {
                reflect(
                    Api::namespaced(client.clone(), ns),
                    all.clone(),
                    changed.clone(),
                    h(),
                    |s: &mut Secret| {
                        // kubectl's last-applied annotation repeats the data
                        // in plain text; nothing reads annotations.
                        s.metadata.annotations = None;
                    },
                )
            })
            .collect(),
    };
    wait_ready(&stores).await;
    let (tx, rx) = watch::channel(Arc::new(stores.snapshot()));
    let publisher = stores.clone();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            if tx.send(Arc::new(publisher.snapshot())).is_err() {
                return;
            }
        }
    });
    (rx, stores)
}

async fn wait_ready(s: &Stores) {
    // An error here means the writer side was dropped, which only happens at shutdown.
    let _ = tokio::join!(
        s.services.wait_until_ready(),
        s.endpoint_slices.wait_until_ready(),
        s.nodes.wait_until_ready(),
        s.namespaces.wait_until_ready(),
        s.eips.wait_until_ready(),
        s.bgp_confs.wait_until_ready(),
        s.bgp_peers.wait_until_ready(),
        s.config_maps.wait_until_ready(),
        futures::future::join_all(s.secrets.iter().map(Store::wait_until_ready)),
    );
}

/// Writes through the API server. Events need the object's uid, which comes
/// from the reflector stores when there are any.
#[derive(Clone)]
pub struct KubeWriter {
    client: Client,
    /// `reportingInstance` of the Events.
    instance: String,
    stores: Option<Stores>,
}

impl KubeWriter {
    /// `instance` names this replica in Events (the pod name).
    pub fn new(client: Client, instance: Option<String>, stores: Option<Stores>) -> Self {
        Self {
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.into()),
            client,
            stores,
        }
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    fn reference(&self, regarding: &Regarding) -> ObjectReference {
        match regarding {
            Regarding::Service(k) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(k.namespace.to_string()),
                name: Some(k.name.to_string()),
                uid: self.stores.as_ref().and_then(|s| {
                    s.services
                        .get(&ObjectRef::new(&k.name).within(&k.namespace))
                        .and_then(|o| o.uid())
                }),
                ..Default::default()
            },
            Regarding::Eip(name) => ObjectReference {
                api_version: Some(Eip::api_version(&()).into_owned()),
                kind: Some("Eip".into()),
                name: Some(name.clone()),
                uid: self
                    .stores
                    .as_ref()
                    .and_then(|s| s.eips.get(&ObjectRef::new(name)).and_then(|o| o.uid())),
                ..Default::default()
            },
            Regarding::BgpPeer(name) => ObjectReference {
                api_version: Some(BgpPeer::api_version(&()).into_owned()),
                kind: Some("BgpPeer".into()),
                name: Some(name.clone()),
                uid: self
                    .stores
                    .as_ref()
                    .and_then(|s| s.bgp_peers.get(&ObjectRef::new(name)).and_then(|o| o.uid())),
                ..Default::default()
            },
            // The kubelet's convention, which `kubectl describe node` looks
            // Events up by: a Node's uid in an Event is its name.
            Regarding::Node(name) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(name.clone()),
                uid: Some(name.clone()),
                ..Default::default()
            },
        }
    }
}

impl KubeWriter {
    /// Sets the node's [`crate::node_dataplane::CONDITION`] to `condition`, leaving
    /// its other conditions alone: a strategic merge patch of
    /// `nodes/status`, which merges conditions by type (as the kubelet's
    /// and node-problem-detector's own updates do).
    pub async fn node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
    ) -> Result<(), WriteError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": [condition]}});
        api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map(drop)
            .map_err(api_error(format!(
                "condition {} of Node {node}",
                condition.type_
            )))
    }
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> WriteError {
    move |source| WriteError::Api {
        what,
        source: Box::new(source),
    }
}

/// `status.loadBalancer.ingress` as applied: the IPs. No `ipMode`: unset
/// means `VIP`, which is what Porter wants, and API servers before 1.29 do
/// not know the field and would refuse the whole apply.
pub fn ingress_patch(ingress: &[IpAddr]) -> serde_json::Value {
    let ingress: Vec<_> = ingress
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "status": {"loadBalancer": {"ingress": ingress}},
    })
}

/// The field manager that owns one speaker's `BgpPeer.status.nodes` entry:
/// the controller's own, or one per node, so that server-side apply merges
/// the agents' entries instead of each agent's apply removing the others'.
/// Field managers are at most 128 characters; node names rarely come close.
pub fn peer_status_field_manager(key: &str) -> String {
    if key == CONTROLLER_STATUS_KEY {
        return FIELD_MANAGER.to_owned();
    }
    let mut manager = format!("porter-agent-{key}");
    if manager.len() > 128 {
        let mut end = 128;
        while !manager.is_char_boundary(end) {
            end -= 1;
        }
        manager.truncate(end);
    }
    manager
}

/// The apply patch of one speaker's entry; `None` applies an empty list,
/// which removes the entry this manager owned.
pub fn peer_status_patch(status: Option<&BgpPeerNodeStatus>) -> serde_json::Value {
    let nodes: Vec<&BgpPeerNodeStatus> = status.into_iter().collect();
    json!({
        "apiVersion": BgpPeer::api_version(&()),
        "kind": "BgpPeer",
        "status": {"nodes": nodes},
    })
}

impl StatusWriter for KubeWriter {
    async fn node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
    ) -> Result<(), WriteError> {
        KubeWriter::node_condition(self, node, condition).await
    }

    async fn service_ingress(
        &self,
        service: &ObjectKey,
        ingress: &[IpAddr],
    ) -> Result<(), WriteError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        api.patch_status(
            &service.name,
            &Self::apply_params(),
            &Patch::Apply(ingress_patch(ingress)),
        )
        .await
        .map(drop)
        .map_err(api_error(format!("status of Service {service}")))
    }

    async fn service_finalizer(
        &self,
        service: &ObjectKey,
        present: bool,
    ) -> Result<(), WriteError> {
        // Applying without the finalizer drops it: server-side apply removes
        // list items this manager owned and no longer sets.
        let finalizers: Vec<&str> = if present {
            vec![SERVICE_FINALIZER]
        } else {
            vec![]
        };
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": &*service.name, "finalizers": finalizers},
        });
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        api.patch(&service.name, &Self::apply_params(), &Patch::Apply(patch))
            .await
            .map(drop)
            .map_err(api_error(format!("finalizer of Service {service}")))
    }

    async fn eip_status(&self, eip: &str, status: &EipStatus) -> Result<(), WriteError> {
        let patch = json!({
            "apiVersion": Eip::api_version(&()),
            "kind": "Eip",
            "status": status,
        });
        let api: Api<Eip> = Api::all(self.client.clone());
        api.patch_status(eip, &Self::apply_params(), &Patch::Apply(patch))
            .await
            .map(drop)
            .map_err(api_error(format!("status of Eip {eip}")))
    }

    async fn bgp_peer_status(
        &self,
        peer: &str,
        key: &str,
        status: Option<&BgpPeerNodeStatus>,
    ) -> Result<(), WriteError> {
        let params = PatchParams::apply(&peer_status_field_manager(key)).force();
        let api: Api<BgpPeer> = Api::all(self.client.clone());
        api.patch_status(peer, &params, &Patch::Apply(peer_status_patch(status)))
            .await
            .map(drop)
            .map_err(api_error(format!("status of BgpPeer {peer} for {key}")))
    }

    async fn event(&self, event: &Event) -> Result<(), WriteError> {
        // Created, never folded into an earlier Event's series as
        // kube-runtime's Recorder does: its key ignores the note, so a
        // changed message ("node n3 now answers ...") within its 6 minute
        // cache would show as a repeat of the old one. The core only reports
        // changes, so repeats are rare anyway.
        let regarding = self.reference(&event.regarding);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(FIELD_MANAGER),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.into()),
            action: Some(event.reason.into()),
            note: Some(event.message.clone()),
            regarding: Some(regarding),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &ev)
            .await
            .map(drop)
            .map_err(api_error(format!("Event {}", event.reason)))
    }
}

#[cfg(test)]
mod tests;

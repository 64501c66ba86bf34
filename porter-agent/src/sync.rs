//! The agent's loop: every new cluster snapshot (and every retry after a
//! failure) brings the pinned data plane to what this node should serve,
//! and keeps XDP and tc attached to the uplinks.
//!
//! Nothing here detaches or empties the data plane on the way out: a stopped
//! agent leaves it serving, and the next one adopts it (`Dataplane::open`
//! reads the pinned maps back, attaching swaps the program on the pinned
//! links) and then removes only what is stale.
use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use porter_api::metrics_http::Health;
use porter_api::node_dataplane;
use porter_api::source::{Snapshot, SnapshotReceiver};
use tracing::{error, info, warn};

use crate::{
    Dataplane, DataplaneConfig, DataplaneError, LocalService, PinLayout,
    bgp::NodeSpeaker,
    dataplane::attach::{AttachError, XdpModePreference},
    desired::{self, Desired},
    frozen::{Judge, Verdict},
    interfaces,
    layer2::{self, Layer2, leases::Leases},
    maglev,
    metrics::{self, Metrics, Stage},
    neighbours,
    node_condition::Publisher,
    pins::PIN_LAYOUT_VERSION,
    writer::ClusterWriter,
};

/// The `/readyz` problem of a frozen data plane.
const FROZEN_PROBLEM: &str = "dataplane";

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub node: String,
    /// Empty: the interface that holds the node's InternalIP.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModePreference,
    pub bpffs: PathBuf,
    pub config: DataplaneConfig,
    /// A full pass at least this often, even without changes.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "pins of pin layout v{found} (a newer porter-agent's) are under {}; this agent \
         (layout v{own}) cannot adopt them, and leaves them and the program on the uplinks \
         as they are",
        root.display()
    )]
    NewerLayout { found: u32, own: u32, root: PathBuf },
    #[error("cannot load the data plane: {0}")]
    Open(#[source] Box<DataplaneError>),
    #[error(
        "node {node} has no InternalIP held by a local interface (node addresses: {ips:?}); \
         pass --interface, or check that --node-name names this node"
    )]
    NoInterface { node: String, ips: Vec<String> },
    #[error("cannot list local addresses: {0}")]
    Addresses(#[source] std::io::Error),
    #[error("interface {0} does not exist in this network namespace; check --interface")]
    MissingInterface(String),
    #[error("cannot attach to {interface}: {source}")]
    Attach {
        interface: String,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error("cannot program service {service}: {source}")]
    Program {
        service: String,
        #[source]
        source: Box<DataplaneError>,
    },
}

impl SyncError {
    fn stage(&self) -> Stage {
        match self {
            SyncError::NewerLayout { .. } | SyncError::Open(_) => Stage::Open,
            SyncError::NoInterface { .. } | SyncError::Addresses(_) => Stage::Interface,
            SyncError::MissingInterface(_) | SyncError::Attach { .. } => Stage::Attach,
            SyncError::Program { .. } => Stage::Program,
        }
    }
}

pub struct Agent {
    settings: AgentSettings,
    pins: PinLayout,
    metrics: Metrics,
    dataplane: Option<Dataplane>,
    /// Interfaces this process attached to, and the XDP mode it saw.
    attached: BTreeMap<String, String>,
    last_problems: Vec<String>,
    /// This node's desired state, kept between passes.
    desired: desired::Cache,
    /// Layer 2 mode (answering ARP/NDP for led EIPs), when enabled.
    layer2: Option<Layer2<Leases>>,
    /// Node-mode BGP speaker (idle unless BgpConf says `speakerMode: node`).
    bgp: Option<NodeSpeaker>,
    /// The wanted services the data plane holds and is attached for: what
    /// node mode announces.
    served: Vec<LocalService>,
    /// `/readyz`: ready once the data plane is attached to an interface.
    health: Health,
    /// Nodes that `Cluster` traffic is forwarded to, kept resolved.
    neighbour_probes: neighbours::Probes,
    /// Whether the data plane can be programmed, judged at every pass.
    judge: Judge,
    verdict: Verdict,
    /// Where the verdict is published (the Node condition), when connected.
    publisher: Option<Publisher>,
}

impl Agent {
    pub fn new(settings: AgentSettings, metrics: Metrics) -> Self {
        Self {
            pins: PinLayout::new(&settings.bpffs),
            desired: desired::Cache::new(&settings.node),
            settings,
            metrics,
            dataplane: None,
            attached: BTreeMap::new(),
            last_problems: Vec::new(),
            layer2: None,
            bgp: None,
            served: Vec::new(),
            health: Health::starting(),
            neighbour_probes: neighbours::Probes::default(),
            judge: Judge::default(),
            verdict: Verdict::Starting,
            publisher: None,
        }
    }

    /// Publishes whether the data plane can be programmed as the Node's
    /// condition, through `writer`.
    pub fn with_node_condition(mut self, writer: ClusterWriter) -> Self {
        self.publisher = Some(Publisher::new(self.settings.node.clone(), writer));
        self
    }

    /// Publishes the verdict on this node's object in `snapshot`.
    pub async fn publish_verdict(&mut self, snapshot: &Snapshot) {
        let Some(publisher) = &mut self.publisher else {
            return;
        };
        let node = snapshot
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.settings.node.as_str()));
        let published = node.and_then(|n| node_dataplane::published(n));
        publisher.publish(&self.verdict, published).await;
    }

    /// Reports readiness through `health` (served at `/readyz`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Runs the node-mode BGP speaker next to the syncs.
    pub fn with_bgp(mut self, bgp: NodeSpeaker) -> Self {
        self.bgp = Some(bgp);
        self
    }

    /// One node-mode BGP step: announces what the data plane serves and
    /// reports the sessions.
    pub async fn bgp_round(&mut self, snapshot: &Snapshot) {
        if let Some(bgp) = &mut self.bgp {
            bgp.step(snapshot, &self.served).await;
        }
    }

    /// Runs Layer 2 rounds (see docs/layer2.md) next to the syncs.
    pub fn with_layer2(mut self, layer2: Layer2<Leases>) -> Self {
        self.layer2 = Some(layer2);
        self
    }

    /// One Layer 2 round for the EIPs of `snapshot`, once the data plane is
    /// attached. Idle (no lease traffic) while the cluster has no Layer 2
    /// EIP and this node answers for none. A failure is logged; the
    /// answers then lapse with the lease.
    pub async fn layer2_round(&mut self, snapshot: &Snapshot) {
        let (Some(layer2), Some(dataplane)) = (&mut self.layer2, &mut self.dataplane) else {
            return;
        };
        if self.attached.is_empty() {
            return;
        }
        let mut candidates = layer2::candidates::candidates(snapshot);
        if candidates.is_empty() && !layer2.answering() {
            return;
        }
        let hosts = layer2::host_addresses(snapshot, self.attached.keys().map(String::as_str));
        layer2.refuse_host_addresses(&mut candidates, &hosts);
        let choices = layer2::candidates::interface_choices(snapshot);
        if let Err(err) = layer2.step(dataplane, &candidates, &choices).await {
            warn!(error = %err, "layer 2 round failed; answers lapse with the lease");
        }
    }

    fn layer2_interval(&self) -> Option<Duration> {
        self.layer2.as_ref().map(Layer2::round_interval)
    }

    /// One pass. Programs the maps first, then attaches, so that a fresh
    /// node's first packet already finds its services. Every failure is
    /// counted; the first one is returned so that the caller backs off.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<(), SyncError> {
        let mut errors = Vec::new();
        let mut record = |err: SyncError, metrics: &Metrics| {
            metrics.sync_error(err.stage());
            error!(error = %err, "sync step failed; retrying with backoff");
            errors.push(err);
        };
        let started = Instant::now();
        let wanted = self.desired.desired(snapshot);
        self.report_problems(&wanted);
        match self.program(&wanted) {
            Ok(()) => self.metrics.synced(
                wanted.services.len(),
                wanted.problems.len(),
                started.elapsed().as_secs_f64(),
            ),
            Err(err) => record(err, &self.metrics),
        }
        if self.dataplane.is_some() {
            match self.interfaces(snapshot) {
                Ok(names) => {
                    for name in names {
                        if let Err(err) = self.attach(&name) {
                            record(err, &self.metrics);
                        }
                    }
                }
                Err(err) => record(err, &self.metrics),
            }
        }
        let verdict = self.judge.judge(
            &errors,
            self.dataplane.is_some() && !self.attached.is_empty(),
        );
        self.set_verdict(verdict);
        self.served = self.served(wanted.services);
        let mut errors = errors.into_iter();
        errors.next().map_or(Ok(()), Err)
    }

    /// Reports a new verdict: readiness, metric and log. (The Node
    /// condition follows in [`Self::publish_verdict`].)
    fn set_verdict(&mut self, verdict: Verdict) {
        if verdict == self.verdict {
            return;
        }
        self.metrics.dataplane(&verdict);
        match &verdict {
            Verdict::Frozen { reason, message } => {
                error!(node = %self.settings.node, reason = reason.as_str(), pins = %self.pins.root().display(),
                    "{message}");
                self.health.set_problem(
                    FROZEN_PROBLEM,
                    Some(format!("{}: {message}", reason.as_str())),
                );
            }
            Verdict::Ready => {
                if self.verdict.is_frozen() {
                    info!(node = %self.settings.node, "the data plane is programmed again; the node's paths return");
                }
                self.health.set_problem(FROZEN_PROBLEM, None);
            }
            Verdict::Starting => self.health.set_problem(FROZEN_PROBLEM, None),
        }
        self.verdict = verdict;
    }

    /// The `wanted` services that the data plane holds, when it is attached
    /// somewhere: announcing anything else would draw traffic that nothing
    /// here forwards.
    fn served(&self, wanted: Vec<LocalService>) -> Vec<LocalService> {
        let Some(dataplane) = &self.dataplane else {
            return Vec::new();
        };
        if self.attached.is_empty() || self.verdict.is_frozen() {
            return Vec::new();
        }
        let installed: std::collections::BTreeSet<_> =
            dataplane.services().into_iter().map(|s| s.addr).collect();
        wanted
            .into_iter()
            .filter(|s| installed.contains(&s.addr))
            .collect()
    }

    fn program(&mut self, wanted: &Desired) -> Result<(), SyncError> {
        let dataplane = match &mut self.dataplane {
            Some(dataplane) => dataplane,
            None => {
                if let Some(found) = self.pins.newer_version() {
                    return Err(SyncError::NewerLayout {
                        found,
                        own: PIN_LAYOUT_VERSION,
                        root: self.pins.root().to_owned(),
                    });
                }
                self.pins.mark().map_err(|source| {
                    SyncError::Open(Box::new(DataplaneError::Attach(AttachError::PinDir {
                        path: self.pins.marker(PIN_LAYOUT_VERSION),
                        source,
                    })))
                })?;
                let dataplane = Dataplane::open(&self.pins, self.settings.config)
                    .map_err(|err| SyncError::Open(Box::new(err)))?;
                info!(
                    pins = %self.pins.versioned().display(),
                    adopted = dataplane.services().len(),
                    "data plane loaded"
                );
                self.dataplane.insert(dataplane)
            }
        };
        let (changed, removed) = apply(dataplane, &wanted.services)?;
        neighbours::probe(&self.neighbour_probes.due(&wanted.services, Instant::now()));
        if changed + removed > 0 {
            info!(
                changed,
                removed,
                services = wanted.services.len(),
                "data plane synced"
            );
        }
        Ok(())
    }

    fn interfaces(&self, snapshot: &Snapshot) -> Result<Vec<String>, SyncError> {
        if !self.settings.interfaces.is_empty() {
            return Ok(self.settings.interfaces.clone());
        }
        let ips = interfaces::node_internal_ips(snapshot, &self.settings.node);
        let names = interfaces::holding(&ips).map_err(SyncError::Addresses)?;
        if names.is_empty() {
            return Err(SyncError::NoInterface {
                node: self.settings.node.clone(),
                ips: ips.iter().map(ToString::to_string).collect(),
            });
        }
        Ok(names)
    }

    fn attach(&mut self, interface: &str) -> Result<(), SyncError> {
        if self.attached.contains_key(interface) {
            return Ok(());
        }
        let Some(dataplane) = &mut self.dataplane else {
            return Ok(());
        };
        if !interfaces::exists(interface) {
            return Err(SyncError::MissingInterface(interface.to_owned()));
        }
        let attach_err = |source| SyncError::Attach {
            interface: interface.to_owned(),
            source: Box::new(source),
        };
        let attachment = dataplane
            .attach_xdp(interface, self.settings.xdp_mode)
            .map_err(attach_err)?;
        dataplane.attach_tc_egress(interface).map_err(attach_err)?;
        let mode = metrics::mode_of(attachment)
            .map(str::to_owned)
            .or_else(|| crate::xdp_mode::query(interface).ok().flatten())
            .unwrap_or_else(|| "unknown".to_owned());
        self.metrics.attached(interface, &mode);
        info!(interface, mode = %attachment, xdp_mode = %mode, "data plane ready");
        self.attached.insert(interface.to_owned(), mode);
        self.health.set_ready(true);
        Ok(())
    }

    /// Logs the cluster-state problems when they change, not at every pass.
    fn report_problems(&mut self, wanted: &Desired) {
        let problems: Vec<String> = wanted.problems.iter().map(ToString::to_string).collect();
        if problems != self.last_problems {
            for problem in &problems {
                warn!(problem, "part of a Service cannot be served on this node");
            }
            self.last_problems = problems;
        }
    }
}

/// Rewrites only the services of `dataplane` that differ from `wanted`
/// (each through the atomic Maglev swap) and removes the ones not wanted;
/// returns how many were (re)written and removed. A service that cannot be
/// written does not hold up the others; the first such error is returned.
pub fn apply(
    dataplane: &mut Dataplane,
    wanted: &[LocalService],
) -> Result<(usize, usize), SyncError> {
    let installed = dataplane.services();
    let changes = desired::changes(&installed, wanted);
    let mut first_error = None;
    let mut failed = |service: String, source: DataplaneError| {
        warn!(service, error = %source, "cannot program service");
        first_error.get_or_insert(SyncError::Program {
            service,
            source: Box::new(source),
        });
    };
    for addr in &changes.removals {
        if let Err(source) = dataplane.remove_service(addr) {
            failed(addr.to_string(), source);
        }
    }
    let maglev_size = dataplane.config().maglev_size;
    let mut valid = Vec::with_capacity(changes.upserts.len());
    for spec in changes.upserts {
        let checked = spec
            .backend_set()
            .map_err(DataplaneError::from)
            .and_then(|set| Ok(maglev::validate_size(maglev_size, set.len())?));
        match checked {
            Ok(()) => valid.push(spec.clone()),
            Err(source) => failed(spec.addr.to_string(), source),
        }
    }
    // One batch; should it fail (say, the service slots run out), one by
    // one, so that every service that fits is served.
    if dataplane.upsert_services(&valid).is_err() {
        for spec in &valid {
            if let Err(source) = dataplane.upsert_service(spec) {
                failed(spec.addr.to_string(), source);
            }
        }
    }
    first_error.map_or(Ok((valid.len(), changes.removals.len())), Err)
}

/// How often node-mode BGP status and metrics are refreshed between syncs.
const BGP_STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Doubles the wait after each failure, from `min` up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next retry.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Syncs at every snapshot, retries failures with backoff, and resyncs at
/// least every `resync`, until `shutdown` completes or the source stops.
pub async fn run(
    mut agent: Agent,
    mut snapshots: SnapshotReceiver,
    shutdown: impl Future<Output = ()>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    tokio::pin!(shutdown);
    // Layer 2 rounds run between syncs; without Layer 2 the branch is off.
    let mut layer2_ticker =
        tokio::time::interval(agent.layer2_interval().unwrap_or(Duration::from_secs(3600)));
    layer2_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // BGP steps follow every sync and also run on their own tick, which
    // refreshes session status and metrics.
    let mut bgp_ticker = tokio::time::interval(BGP_STATUS_INTERVAL);
    bgp_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync_due = true;
    let mut next_sync = tokio::time::Instant::now();
    loop {
        if sync_due {
            let snapshot = snapshots.borrow_and_update().clone();
            let wait = match agent.sync(&snapshot) {
                Ok(()) => {
                    backoff.reset();
                    agent.settings.resync
                }
                Err(_) => backoff.failed(),
            };
            agent.publish_verdict(&snapshot).await;
            agent.bgp_round(&snapshot).await;
            next_sync = tokio::time::Instant::now() + wait;
            sync_due = false;
        }
        tokio::select! {
            () = &mut shutdown => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    error!("the cluster-state source stopped; the data plane keeps its last state");
                    break;
                }
                sync_due = true;
            }
            () = tokio::time::sleep_until(next_sync) => sync_due = true,
            _ = layer2_ticker.tick(), if agent.layer2.is_some() => {
                let snapshot = snapshots.borrow().clone();
                agent.layer2_round(&snapshot).await;
            }
            _ = bgp_ticker.tick(), if agent.bgp.is_some() => {
                let snapshot = snapshots.borrow().clone();
                agent.bgp_round(&snapshot).await;
            }
        }
    }
    if let Some(bgp) = agent.bgp.take() {
        bgp.shutdown().await;
    }
    info!(
        "stopping; the data plane stays attached and serving (`porter-agent cleanup` removes it)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u64> = (0..5)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.failed(), Duration::from_millis(500));
    }
}

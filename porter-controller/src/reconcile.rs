//! One pass from a [`Snapshot`] to a [`Plan`]: what to write to the cluster
//! and what to announce. Pure apart from the memory it keeps between passes
//! (the IPAM, and what was last reported so that Events are not repeated).
//! [`apply`] carries a plan out through a [`StatusWriter`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::annotations::{BGP_CONF_NAME, SERVICE_FINALIZER};
use porter_api::bgp_policy::{self, ClusterPolicy, PeerScope, PoolPolicy, ServicePolicy};
use porter_api::layer2::PROTOCOL_LAYER2;
use porter_api::service::ingress_ips;
use porter_api::source::{Event, EventType, Regarding, Snapshot, StatusWriter, WriteError};
use porter_api::{EipStatus, ObjectKey};

use crate::announce::incremental::RouteTable;
use crate::announce::{Exclusion, Inputs, Policy, Verdict};
use crate::bgp::{self, BgpDesired};
use crate::ipam::{Ipam, NamespaceLabels, NodeAddresses, Pool, PoolState};
use crate::layer2_status::Layer2Status;
use crate::service::{self, ServiceRequest};
use memo::{Changed, LastInputs, Memo};
use pool_status::{eip_status, held_message, join_errors};
use porter_bgp::PathTable;

pub const REASON_ALLOCATED: &str = "IPAllocated";
pub const REASON_FAILED: &str = "AllocationFailed";
pub const REASON_ANNOUNCED: &str = "Announced";
/// Warning on an `Eip` whose new `spec.address` would leave out addresses
/// in use (or cannot be used): the last accepted range stays in force.
pub const REASON_CHANGE_REFUSED: &str = "AddressChangeRefused";
/// Normal, on an `Eip` whose held-back `spec.address` is now in force.
pub const REASON_CHANGE_APPLIED: &str = "AddressChangeApplied";
/// Condition of an `Eip` while an edit of its `spec.address` is held back.
pub const CONDITION_CHANGE_PENDING: &str = "AddressChangePending";
/// Warning on an `Eip` that is refused (unreadable address, overlap).
pub const REASON_POOL_REFUSED: &str = "PoolRefused";

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Services whose `status.loadBalancer.ingress` must become this list.
    /// Shared with the reconciler's memo of the last address plan, which
    /// replays it (10,000 entries on a first pass).
    pub ingress: Arc<[(ObjectKey, Vec<IpAddr>)]>,
    /// Finalizers to add (`true`) or remove; shared as `ingress` is.
    pub finalizers: Arc<[(ObjectKey, bool)]>,
    /// Shared with the memo as `ingress` is (`Eip.status.used` lists
    /// every address in use).
    pub eip_status: Vec<(String, Arc<EipStatus>)>,
    pub events: Vec<Event>,
    pub paths: Arc<PathTable>,
    /// Changes whenever `paths` does. Hold on to this, not to `paths`: a
    /// kept `paths` makes the next change copy the whole table.
    pub paths_version: u64,
    pub bgp: BgpDesired,
    /// Addresses newly handed out in this pass.
    pub allocated: u64,
    /// Kinds of the AllocationFailed events in this plan.
    pub failures: Vec<&'static str>,
    /// Layer 2 addresses in use that no node answers ARP/NDP for.
    pub layer2_unanswered: usize,
    /// The nodes the liveness check probes in central mode, with the
    /// address to probe (see [`RouteTable::checked_nodes`]).
    pub checked_nodes: Arc<BTreeMap<String, IpAddr>>,
}

#[derive(Debug, Default)]
pub struct Reconciler {
    /// Only a leader hands out new addresses; a follower's book holds what
    /// is published and nothing else.
    leading: bool,
    ipam: Ipam,
    /// Last failure message per Service, so that AllocationFailed is sent once per reason.
    failed: HashMap<ObjectKey, String>,
    /// The IPAllocated message last reported per Service. A pass repeats
    /// the event until the watch shows the published address (replayed
    /// memos and passes woken by BGP session changes alike), which made a
    /// new Service show up to three identical Events in its first second.
    allocated_reported: HashMap<ObjectKey, String>,
    /// Last Warning (PoolRefused, AddressChangeRefused) per pool, sent
    /// once per message.
    pool_warnings: HashMap<String, (&'static str, String)>,
    /// The announcements, updated incrementally.
    routes: RouteTable,
    paths_version: u64,
    /// What the last pass read, by identity.
    last_inputs: LastInputs,
    /// The outcome of the last address plan, while its inputs stay.
    last_addresses: Option<Memo>,
    /// Which node announces each Layer 2 address, as last reported.
    layer2: Layer2Status,
    /// Password Secrets' scope and the fallback BGP identifier.
    local: bgp::LocalSettings,
    /// The nodes' addresses the IPAM last checked Layer 2 pools against.
    node_addresses: NodeAddresses,
    /// The BGP policy, read again when its inputs change.
    policy: Policy,
    policy_generation: u64,
    /// Whether `policy` was read from the inputs of the last pass.
    policy_read: bool,
    /// Last invalid-annotation message per Service, so that
    /// BgpPolicyInvalid is sent once per message.
    policy_reported: HashMap<ObjectKey, String>,
    /// Nodes the liveness check withdrew (see [`Self::set_withdrawn`]).
    withdrawn: BTreeSet<String>,
    /// The routes' checked nodes, refreshed when the paths change.
    checked_nodes: Option<Arc<BTreeMap<String, IpAddr>>>,
}

/// The event that goes with publishing `ips` as a Service's addresses.
pub(super) fn allocated_event(key: &ObjectKey, ips: &[IpAddr]) -> Option<Event> {
    (!ips.is_empty()).then(|| Event {
        regarding: Regarding::Service(key.clone()),
        type_: EventType::Normal,
        reason: REASON_ALLOCATED,
        message: format!("assigned {}", join(ips)),
    })
}

impl Reconciler {
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Every node's part in `eip`'s paths as of the last pass, decided by
    /// the predicates the paths were (see [`RouteTable::verdicts`]).
    pub fn verdicts(&self, eip: IpAddr) -> BTreeMap<String, Verdict> {
        let pool = self
            .ipam
            .pool_of(eip)
            .and_then(|name| self.policy.pools.get(name));
        self.routes.verdicts(eip, pool, &self.policy)
    }

    /// The nodes whose data plane failed the liveness check: the next
    /// passes announce no path through them.
    pub fn set_withdrawn(&mut self, withdrawn: BTreeSet<String>) {
        self.withdrawn = withdrawn;
    }

    pub fn set_local_settings(&mut self, local: bgp::LocalSettings) {
        self.local = local;
    }

    /// Leads (hands out addresses; the caller writes the plans) or follows.
    /// Either way the next pass starts from the published state alone: a
    /// new leader must not keep addresses it chose, or pool ranges it
    /// decided, before, as its predecessor may have published others.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
        self.ipam.forget();
        self.forget_reported();
    }

    /// Forgets which Events were sent, so that a new leader reports afresh.
    fn forget_reported(&mut self) {
        self.failed.clear();
        self.allocated_reported.clear();
        self.pool_warnings.clear();
        self.routes = RouteTable::default();
        self.checked_nodes = None;
        self.paths_version += 1;
        self.last_addresses = None;
        self.layer2.forget();
        self.policy_read = false;
        self.policy_reported.clear();
    }

    pub fn plan(&mut self, snap: &Snapshot, now: &Time) -> Plan {
        // Before the address plan: remembering the new inputs lets go of
        // the old ones, whose Weaks may hold the allocations of many
        // replaced objects (see crate::identity).
        let inputs = self.last_inputs.update(snap);
        // The nodes' addresses, not the Nodes: a Node's status changes at
        // every heartbeat, its addresses hardly ever.
        let node_addresses = layer2_node_addresses(snap);
        let nodes_moved = node_addresses != self.node_addresses;
        if nodes_moved {
            self.node_addresses.clone_from(&node_addresses);
            self.ipam.set_node_addresses(node_addresses);
        }
        let mut plan = match &self.last_addresses {
            // Nothing the address plan depends on changed (the sources keep
            // an unchanged object's Arc): the last one stands. This is what
            // keeps an EndpointSlice change cheap at 10,000 Services.
            Some(addresses) if !inputs.addresses() && !nodes_moved => addresses.replay(),
            _ => {
                // The old memo goes before the new plan is made.
                self.last_addresses = None;
                let plan = self.plan_addresses(snap, now);
                self.last_addresses = Some(Memo::of(&plan));
                plan
            }
        };
        let reported = &mut self.allocated_reported;
        plan.events
            .retain(|event| match (&event.regarding, event.reason) {
                (Regarding::Service(key), REASON_ALLOCATED) => {
                    let new = reported.get(key) != Some(&event.message);
                    if new {
                        reported.insert(key.clone(), event.message.clone());
                    }
                    new
                }
                _ => true,
            });
        self.refresh_policy(snap, inputs, &mut plan.events);
        let ipam = &self.ipam;
        let changed = self.routes.update(Inputs {
            allocations: ipam.allocations(),
            generation: ipam.generation(),
            pool_of: |ip| ipam.pool_of(ip),
            slices: &snap.endpoint_slices,
            nodes: &snap.nodes,
            policy: &self.policy,
            policy_generation: self.policy_generation,
            withdrawn: &self.withdrawn,
        });
        if !changed.is_empty() {
            self.paths_version += 1;
            self.checked_nodes = None;
        }
        // Serving nodes change only with the paths (or the withdrawn set,
        // which changes the paths too): a pass without either reuses them.
        plan.checked_nodes = Arc::clone(
            self.checked_nodes
                .get_or_insert_with(|| Arc::new(self.routes.checked_nodes())),
        );
        plan.paths = self.routes.paths().clone();
        plan.paths_version = self.paths_version;
        self.announcement_events(&changed, &mut plan.events);
        plan.layer2_unanswered = self.layer2.plan(
            snap,
            &self.ipam,
            now,
            &mut plan.eip_status,
            &mut plan.events,
        );
        plan.bgp = bgp::desired(snap, &self.local);
        plan
    }

    /// Reads the BGP policy again when its inputs changed, and reports
    /// Service annotations that cannot be read (once per message).
    fn refresh_policy(&mut self, snap: &Snapshot, inputs: Changed, events: &mut Vec<Event>) {
        if self.policy_read && !inputs.policy() {
            return;
        }
        self.policy_read = true;
        let mut services = HashMap::new();
        // Rebuilt rather than pruned: only Services with bad values are in it.
        let mut reported = HashMap::new();
        for svc in &snap.services {
            if !service::opted_in(svc) || service::deleting(svc) {
                continue;
            }
            let (policy, errors) =
                ServicePolicy::from_annotations(svc.metadata.annotations.as_ref());
            if !errors.is_empty() {
                let key = ObjectKey::of(&svc.metadata);
                let message = format!(
                    "{}; the pool's policy applies in their place",
                    join_errors(&errors)
                );
                if self.policy_reported.get(&key) != Some(&message) {
                    tracing::warn!(service = %key, reason = %message, "invalid BGP policy annotation");
                    events.push(Event {
                        regarding: Regarding::Service(key.clone()),
                        type_: EventType::Warning,
                        reason: bgp_policy::REASON_INVALID,
                        message: message.clone(),
                    });
                }
                reported.insert(key, message);
            }
            if !policy.is_empty() {
                services.insert(ObjectKey::of(&svc.metadata), policy);
            }
        }
        self.policy_reported = reported;
        let policy = Policy {
            pools: snap
                .eips
                .iter()
                .filter_map(|e| {
                    let name = e.metadata.name.clone()?;
                    Some((name, PoolPolicy::from_spec(e.spec.bgp.as_ref()).0))
                })
                .collect(),
            services,
            cluster: ClusterPolicy::from_conf(
                snap.bgp_confs
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(BGP_CONF_NAME))
                    .map(|c| &c.spec),
            ),
            peers: snap
                .bgp_peers
                .iter()
                .filter_map(|p| PeerScope::of(p))
                .collect(),
        };
        if policy != self.policy {
            self.policy = policy;
            self.policy_generation += 1;
        }
    }

    /// Allocation, statuses, finalizers and their events.
    fn plan_addresses(&mut self, snap: &Snapshot, now: &Time) -> Plan {
        let mut plan = Plan::default();
        let (mut ingress, mut finalizers) = (Vec::new(), Vec::new());
        let labels = namespace_labels(snap);

        // With each Service's place in the snapshot, for the sort below.
        let mut active: Vec<(Option<Time>, usize, ServiceRequest, bool)> =
            Vec::with_capacity(snap.services.len());
        for svc in &snap.services {
            let has_finalizer = svc
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == SERVICE_FINALIZER);
            if service::opted_in(svc) && !service::deleting(svc) {
                active.push((
                    svc.metadata.creation_timestamp.clone(),
                    active.len(),
                    service::request(svc),
                    has_finalizer,
                ));
                continue;
            }
            // Deleted, opted out or no longer a LoadBalancer: release, and
            // undo what we wrote if we wrote anything (the finalizer says so).
            let key = ObjectKey::of(&svc.metadata);
            self.ipam.release(&key);
            self.failed.remove(&key);
            if has_finalizer {
                if !service::deleting(svc) && !ingress_ips(svc).is_empty() {
                    ingress.push((key.clone(), Vec::new()));
                }
                finalizers.push((key, false));
            }
        }
        // Older Services first: on a conflict between two statuses the older
        // keeps its address. Objects without a timestamp (manifests) go last.
        // Ties keep the snapshot's order, as a stable sort would, without
        // its scratch copy of every request (2 MiB at 10,000 Services).
        active.sort_unstable_by(|a, b| {
            let at = a.0.as_ref().map(|t| t.0);
            let bt = b.0.as_ref().map(|t| t.0);
            (at.is_none(), at, &a.2.key, a.1).cmp(&(bt.is_none(), bt, &b.2.key, b.1))
        });
        let live: HashSet<&ObjectKey> = active.iter().map(|(_, _, r, _)| &r.key).collect();
        let gone: Vec<ObjectKey> = self
            .ipam
            .allocations()
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.ipam.release(&key);
        }
        self.failed.retain(|k, _| live.contains(k));
        self.allocated_reported.retain(|k, _| live.contains(k));
        drop(live);

        let requests: Vec<&ServiceRequest> = active.iter().map(|(_, _, req, _)| req).collect();
        let holding = self.rebuild_book(snap, &requests, &labels);
        drop(requests);
        for ((_, _, req, has_finalizer), held) in active.iter().zip(holding) {
            // A follower only mirrors what the leader publishes.
            if !held && self.leading {
                match self.ipam.allocate(req, &labels) {
                    Ok(ips) => {
                        self.failed.remove(&req.key);
                        plan.allocated += ips.len() as u64;
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if self.failed.get(&req.key) != Some(&message) {
                            plan.failures.push(failure_kind(&e));
                            tracing::warn!(service = %req.key, reason = %message, "no address");
                            plan.events.push(Event {
                                regarding: Regarding::Service(req.key.clone()),
                                type_: EventType::Warning,
                                reason: REASON_FAILED,
                                message: message.clone(),
                            });
                            self.failed.insert(req.key.clone(), message);
                        }
                    }
                }
            }
            let desired = self.ipam.addresses_of(&req.key).unwrap_or_default();
            if !desired.is_empty() && !has_finalizer {
                finalizers.push((req.key.clone(), true));
            }
            if desired != req.current.as_slice() {
                // Reported when published rather than when chosen, so that a
                // follower's pass does not swallow the event.
                plan.events.extend(allocated_event(&req.key, desired));
                ingress.push((req.key.clone(), desired.to_vec()));
            }
        }

        // The requests go before the statuses are built: at 10,000 Services
        // both are megabytes, and this pass may be the process's peak.
        drop(active);
        plan.ingress = ingress.into();
        plan.finalizers = finalizers.into();
        self.report_pools(&mut plan.events);
        for eip in &snap.eips {
            let name = eip.metadata.name.clone().unwrap_or_default();
            if let Some(pool) = self.ipam.pools().find(|p| p.name == name) {
                let (_, policy_errors) = PoolPolicy::from_spec(eip.spec.bgp.as_ref());
                let status = eip_status(
                    pool,
                    &self.ipam,
                    eip.status.as_ref(),
                    eip.metadata.generation,
                    &policy_errors,
                    now,
                );
                if eip.status.as_ref() != Some(&status) {
                    plan.eip_status.push((name, Arc::new(status)));
                }
            }
        }
        plan
    }

    /// Decides the pools and fills the book again from the published state,
    /// `requests` in order (older Services first, so that of two Services
    /// publishing one address the older keeps it):
    ///
    /// 1. each Service's published address, if still valid;
    /// 2. for the rest, what this leader handed out and is not published
    ///    yet (a follower keeps nothing of its own), else what a pool's
    ///    `status.used` shows for the Service (its own status write may have
    ///    been lost).
    ///
    /// Returns whether each request now holds addresses.
    fn rebuild_book(
        &mut self,
        snap: &Snapshot,
        requests: &[&ServiceRequest],
        labels: &NamespaceLabels,
    ) -> Vec<bool> {
        let published: Vec<(&ObjectKey, &[IpAddr])> = requests
            .iter()
            .filter(|r| !r.current.is_empty())
            .map(|r| (&r.key, r.current.as_slice()))
            .collect();
        self.ipam.set_pools(
            snap.eips.iter().map(|e| Pool::from_eip(e)).collect(),
            &published,
        );
        drop(published);
        let mut remembered = self.ipam.clear_book();
        if self.leading {
            // Most of it is what is published anyway: let that go before
            // the book is filled again (10,000 entries on a big cluster).
            for req in requests {
                if remembered.get(&req.key) == Some(&req.current) {
                    remembered.remove(&req.key);
                }
            }
        } else {
            remembered.clear();
        }
        let mut holding: Vec<bool> = requests
            .iter()
            .map(|req| self.ipam.keep(req, &req.current, labels))
            .collect();
        if holding.iter().all(|held| *held) {
            return holding;
        }
        let waiting: HashSet<(&str, &str)> = requests
            .iter()
            .zip(&holding)
            .filter(|(_, held)| !**held)
            .map(|(req, _)| (&*req.key.namespace, &*req.key.name))
            .collect();
        let used = used_by_pools(snap, &waiting);
        drop(waiting);
        for (req, held) in requests.iter().zip(&mut holding) {
            if *held {
                continue;
            }
            *held = [remembered.get(&req.key), used.get(&req.key)]
                .into_iter()
                .flatten()
                .any(|ips| self.ipam.keep(req, ips, labels));
        }
        holding
    }

    /// A Warning Event for each pool that is refused or whose
    /// `spec.address` is held back, once per message, with a log line; a
    /// Normal one when a held-back address is applied.
    fn report_pools(&mut self, events: &mut Vec<Event>) {
        let mut warnings = HashMap::new();
        for pool in self.ipam.pools() {
            let warning = match (&pool.state, &pool.held) {
                (PoolState::Refused(why), _) => Some((REASON_POOL_REFUSED, why.clone())),
                (PoolState::Accepted, Some(held)) => {
                    Some((REASON_CHANGE_REFUSED, held_message(pool, held)))
                }
                (PoolState::Accepted, None) => None,
            };
            let last = self.pool_warnings.get(&pool.name);
            let Some(warning) = warning else {
                if last.is_some_and(|(reason, _)| *reason == REASON_CHANGE_REFUSED) {
                    tracing::info!(eip = %pool.name, address = %pool.address, "held-back address change applied");
                    events.push(Event {
                        regarding: Regarding::Eip(pool.name.clone()),
                        type_: EventType::Normal,
                        reason: REASON_CHANGE_APPLIED,
                        message: format!("spec.address `{}` is in force", pool.address),
                    });
                }
                continue;
            };
            if last != Some(&warning) {
                let (reason, message) = &warning;
                tracing::warn!(eip = %pool.name, reason, "{message}");
                events.push(Event {
                    regarding: Regarding::Eip(pool.name.clone()),
                    type_: EventType::Warning,
                    reason,
                    message: message.clone(),
                });
            }
            warnings.insert(pool.name.clone(), warning);
        }
        self.pool_warnings = warnings;
    }

    /// An Announced event on each Service whose EIP's paths changed, and a
    /// BgpPolicyConflict event on each Service of an EIP whose Services
    /// started to disagree or set what the pool does not allow them.
    fn announcement_events(&self, changed: &BTreeSet<IpAddr>, events: &mut Vec<Event>) {
        let paths = self.routes.paths();
        // Room for exactly these: a first pass adds one per Service to as
        // many IPAllocated events, and doubling would leave 12,000 empty
        // 96-byte slots at 10,000 Services.
        events.reserve_exact(changed.iter().map(|ip| self.routes.users(ip).count()).sum());
        for ip in changed {
            // The nodes with endpoints left out, by the reason word the
            // paths were decided with (`porter-controller explain` tells
            // more).
            let excluded = self.routes.excluded(ip);
            let left_out: Vec<String> = excluded
                .iter()
                .map(|(node, why)| (node, *why))
                .chain(
                    self.routes
                        .departed(ip)
                        .map(|node| (node, Exclusion::NoReadyEndpoint)),
                )
                .map(|(node, why)| format!("{node} ({})", why.word()))
                .collect();
            let not_through = if left_out.is_empty() {
                String::new()
            } else {
                format!("; not through {}", left_out.join(", "))
            };
            let message = match paths.get(&IpNet::from(*ip)) {
                Some(hops) => format!(
                    "{ip} announced with next hop(s) {}{not_through}",
                    hops.iter()
                        .map(|(hop, attributes)| match attributes.link_bandwidth {
                            // The weight a router gives the path: its ready endpoints.
                            Some(lb) => format!(
                                "{hop} ({} endpoint(s))",
                                (lb.bytes_per_second
                                    / porter_bgp::LinkBandwidth::BYTES_PER_SECOND_PER_ENDPOINT)
                                    .round()
                            ),
                            None => hop.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None if left_out.is_empty() => format!(
                    "{ip} withdrawn: no node has a ready endpoint of its Service(s) ({})",
                    Exclusion::NoReadyEndpoint.word()
                ),
                None => format!("{ip} withdrawn{not_through}"),
            };
            for key in self.routes.users(ip) {
                events.push(Event {
                    regarding: Regarding::Service(key.clone()),
                    type_: EventType::Normal,
                    reason: REASON_ANNOUNCED,
                    message: message.clone(),
                });
            }
        }
        for (ip, conflict) in self.routes.new_conflicts() {
            tracing::warn!(eip = %ip, conflict = %conflict, "BGP annotations of a Service are not applied as written");
            for key in self.routes.users(ip) {
                events.push(Event {
                    regarding: Regarding::Service(key.clone()),
                    type_: EventType::Warning,
                    reason: bgp_policy::REASON_CONFLICT,
                    message: format!("{ip}: {conflict}"),
                });
            }
        }
    }
}

/// Each namespace's labels, for the pools' `namespaceSelector`.
pub fn namespace_labels(snap: &Snapshot) -> NamespaceLabels {
    snap.namespaces
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

/// The addresses the pools' `status.used` show for the Services of
/// `waiting` (namespace, name); only those are read, as the lists hold
/// every Service with an address.
fn used_by_pools(
    snap: &Snapshot,
    waiting: &HashSet<(&str, &str)>,
) -> BTreeMap<ObjectKey, Vec<IpAddr>> {
    let mut used: BTreeMap<ObjectKey, Vec<IpAddr>> = BTreeMap::new();
    for status in snap.eips.iter().filter_map(|e| e.status.as_ref()) {
        for (ip, users) in &status.used {
            let users = users.split(';').filter_map(|u| u.split_once('/'));
            for (namespace, name) in users.filter(|user| waiting.contains(user)) {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    used.entry(ObjectKey::new(namespace, name))
                        .or_default()
                        .push(ip);
                }
            }
        }
    }
    used
}

/// What an `Eip` whose edit is held back says, in its condition and Event.
/// Every address of every Node (InternalIP, ExternalIP), when a Layer 2
/// pool exists to check them against; none otherwise, so that a cluster
/// without one pays nothing.
fn layer2_node_addresses(snap: &Snapshot) -> NodeAddresses {
    let layer2 = snap
        .eips
        .iter()
        .any(|e| e.spec.protocol.as_deref() == Some(PROTOCOL_LAYER2));
    if !layer2 {
        return NodeAddresses::new();
    }
    snap.nodes
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.as_deref()?,
                n.status.as_ref()?.addresses.as_ref()?,
            ))
        })
        .flat_map(|(name, addresses)| {
            addresses
                .iter()
                .filter_map(move |a| Some((a.address.trim().parse().ok()?, name.to_string())))
        })
        .collect()
}

/// Addresses for a message: `a, b`.
pub(crate) fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kinds of allocation failure, the `reason` of
/// `porter_allocation_failures_total`: invalid request, no pool, exhausted,
/// requested address unavailable, sharing refused (another namespace,
/// incompatible Services).
pub const FAILURE_KINDS: [&str; 5] = [
    "invalid_request",
    "no_pool",
    "exhausted",
    "requested_unavailable",
    "sharing_refused",
];

fn failure_kind(e: &crate::ipam::AllocError) -> &'static str {
    use crate::ipam::AllocError::*;
    let [invalid, no_pool, exhausted, unavailable, sharing] = FAILURE_KINDS;
    match e {
        InvalidRequest(_) | FamilyNotWanted(_) => invalid,
        PoolNotFound(_) | PoolUnusable { .. } | PoolNotAllowed { .. } | NoPool(_) => no_pool,
        Exhausted { .. } => exhausted,
        NotInPool(_) | InUse { .. } | Leaving { .. } => unavailable,
        SharingRefused { .. } => sharing,
    }
}

/// Writes a plan out. A finalizer is added before the address is published
/// and removed after it is cleared, so a deletion can never skip the release.
/// Errors are collected, not fatal: the next pass retries what is still off.
pub async fn apply<W: StatusWriter>(plan: &Plan, writer: &W) -> Vec<WriteError> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), WriteError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    for (key, _) in plan.finalizers.iter().filter(|(_, add)| *add) {
        note(writer.service_finalizer(key, true).await);
    }
    for (key, ips) in plan.ingress.iter() {
        note(writer.service_ingress(key, ips).await);
    }
    for (key, _) in plan.finalizers.iter().filter(|(_, add)| !*add) {
        note(writer.service_finalizer(key, false).await);
    }
    for (name, status) in &plan.eip_status {
        note(writer.eip_status(name, status).await);
    }
    for event in &plan.events {
        note(writer.event(event).await);
    }
    errors
}

mod memo;
mod pool_status;
#[cfg(test)]
mod tests;

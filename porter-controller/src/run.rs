//! The loop that ties a source, the reconciler, a writer and the speaker
//! together. Every replica computes; only the leader writes. The leader and
//! every standby in touch with the lease store announce the same paths (the
//! standby's come from the leader's published state), so a standby is hot:
//! it takes over with one pass and no path has to reach the routers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::bgp_config::status_changes;
use porter_api::crd::CONTROLLER_STATUS_KEY;
use porter_api::source::{Event, EventType, Regarding, Snapshot, SnapshotReceiver, StatusWriter};
use tokio::sync::watch;

use porter_api::bgp_config::Note;

use crate::bgp::{Announcer, BgpDriver, LocalSettings, status_entries};
use crate::leader_lease::until;
use crate::leadership::{Leadership, Role};
use crate::metrics::Metrics;
use crate::node_check::Transition;
use crate::node_check_runtime::NodeChecker;
use crate::reachability;
use crate::reconcile::{Reconciler, apply};

/// The node check's targets when this replica must not check.
static NO_NODES: BTreeMap<String, IpAddr> = BTreeMap::new();

pub struct Settings {
    /// Full pass even without a change: retries failed writes and catches drift.
    pub resync: Duration,
    /// Wait before retrying after a failed write.
    pub retry: Duration,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub writes: usize,
    pub failed_writes: usize,
}

pub struct Controller<A: Announcer> {
    reconciler: Reconciler,
    bgp: BgpDriver,
    announcer: A,
    metrics: Arc<Metrics>,
    was_leader: bool,
    /// The contact (see [`Role`]) the sessions run in, while they run.
    speaking: Option<u64>,
    /// Central mode's node liveness check, when enabled.
    node_check: Option<NodeChecker>,
    /// A follower's latest node-check news by node, for the Events it
    /// writes when it leads (see [`Controller::node_events`]).
    heard_while_following: BTreeMap<String, Transition>,
}

impl<A: Announcer> Controller<A> {
    pub fn new(announcer: A, metrics: Arc<Metrics>) -> Self {
        Self {
            reconciler: Reconciler::default(),
            bgp: BgpDriver::default(),
            announcer,
            metrics,
            was_leader: false,
            speaking: None,
            node_check: None,
            heard_while_following: BTreeMap::new(),
        }
    }

    /// Checks the announced nodes' data planes and withdraws the nodes
    /// that stop answering (see [`crate::node_check`]).
    pub fn with_node_check(mut self, check: NodeChecker) -> Self {
        self.node_check = Some(check);
        self
    }

    /// Notified when the node check has news for a pass; never without one.
    pub fn node_check_changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.node_check.as_ref().map(NodeChecker::changed)
    }

    /// Where BgpPeer password Secrets are read (default: porter-system),
    /// and the BGP identifier when BgpConf sets none (default: none).
    pub fn with_local_settings(mut self, local: LocalSettings) -> Self {
        self.reconciler.set_local_settings(local);
        self
    }

    pub fn announcer(&self) -> &A {
        &self.announcer
    }

    /// Starts or stops the sessions. A replica that falls silent, even for
    /// a moment it did not see (frozen past its deadline: a new contact),
    /// closes them before anything else, so the routers hold its routes by
    /// graceful restart and it never announces a view it could not check.
    fn speak(&mut self, contact: Option<u64>) {
        if self.speaking.is_some() && contact != self.speaking {
            tracing::info!("announcing stopped: BGP sessions closed");
            self.announcer.abandon();
            self.bgp.reset();
        }
        if contact.is_some() && self.speaking != contact {
            tracing::info!("announcing");
        }
        self.speaking = contact;
        self.metrics.set_announcing(contact.is_some());
    }

    fn lead(&mut self, leader: bool) {
        if leader != self.was_leader {
            tracing::info!(leader, "leadership changed");
            // A new leader rebuilds from the published state: its
            // predecessor's state is unknown. It reports afresh too.
            self.reconciler.set_leading(leader);
            self.bgp.forget_notes();
            self.was_leader = leader;
            if !leader {
                self.heard_while_following.clear();
            }
        }
        if !leader {
            // BFD news is the leader's to report; a new leader starts from
            // the sessions' states, not from old news.
            self.announcer.take_bfd_events();
        }
    }

    /// Sets the node check's targets and collects its news as Events to
    /// write, each with the node it withdraws (for the metric).
    ///
    /// Every replica in central mode checks, and leaves the nodes that stop
    /// answering out of what it announces (the standbys announce too): when
    /// the leader's own node dies, its standby has already withdrawn it.
    /// Only the leader writes Events and exports the states. Another
    /// replica keeps the latest news of each node, and the Events of what
    /// still holds are written when it leads (a node it found down, or one
    /// that never answered, has had no Event from the replica that led
    /// then, which may be the node that died). In node mode nothing is
    /// checked: the routers see the nodes.
    fn node_events(
        &mut self,
        leader: bool,
        central: bool,
        nodes: &BTreeMap<String, IpAddr>,
    ) -> Vec<(Event, Option<String>)> {
        let Some(check) = &self.node_check else {
            return Vec::new();
        };
        check.set_targets(if central { nodes } else { &NO_NODES });
        check.set_leading(leader);
        let news = check.take_transitions();
        let timing = check.timing();
        if !leader {
            for transition in news {
                self.heard_while_following
                    .insert(transition.node().to_owned(), transition);
            }
            return Vec::new();
        }
        let withdrawn = check.withdrawn();
        let still_holds = |t: &Transition| match t {
            Transition::Unreachable { node, .. } => withdrawn.contains(node),
            Transition::NeverAnswered { .. } => true,
            Transition::FirstAnswer { .. } | Transition::Reachable { .. } => false,
        };
        std::mem::take(&mut self.heard_while_following)
            .into_values()
            .filter(|t| still_holds(t))
            .chain(news)
            .filter_map(|t| {
                let node = matches!(t, Transition::Unreachable { .. }).then(|| t.node().to_owned());
                t.event(&timing).map(|event| (event, node))
            })
            .collect()
    }

    /// Ends a leadership term at once, without a pass: nothing more is
    /// written until the next term, and the sessions close unless `role`
    /// announces on in the same contact (a leader the lease was taken from
    /// while it could reach the lease store goes on as a standby).
    pub fn resign(&mut self, role: Role) {
        self.speak(role.contact());
        self.lead(false);
    }

    /// One pass over `snap`, in `role`: writes only as the leader, BGP as the
    /// leader or a standby.
    pub async fn step<W: StatusWriter>(
        &mut self,
        snap: Arc<Snapshot>,
        role: Role,
        writer: &W,
    ) -> Step {
        let leader = role.leads();
        let speaking = role.contact().is_some();
        self.speak(role.contact());
        self.lead(leader);
        let started = Instant::now();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        if let Some(check) = &self.node_check {
            self.reconciler.set_withdrawn(check.withdrawn());
        }
        let plan = self.reconciler.plan(&snap, &now);
        let node_events = self.node_events(leader, plan.bgp.speaker.is_some(), &plan.checked_nodes);
        // The check's states, published on the Nodes (by the leader only).
        let reachable = if leader {
            let states = self.node_check.as_ref().map(NodeChecker::states);
            reachability::changes(&snap.nodes, &states.unwrap_or_default())
        } else {
            Vec::new()
        };
        // The rest of the step reads only the BgpPeers. The snapshot itself
        // goes now: the objects the writes below replace (each comes back
        // through the watch while the step runs) are then freed as they come
        // instead of held twice, about 15 MiB when a first pass writes
        // 10,000 Service statuses.
        let peers = Snapshot {
            bgp_peers: snap.bgp_peers.clone(),
            ..Snapshot::default()
        };
        drop(snap);
        let mut step = Step::default();
        if leader {
            step.writes = plan.ingress.len()
                + plan.finalizers.len()
                + plan.eip_status.len()
                + plan.events.len();
            for e in apply(&plan, writer).await {
                step.failed_writes += 1;
                tracing::warn!(error = %e, "write failed; retrying");
            }
            for (event, withdrawn) in &node_events {
                if let Some(node) = withdrawn {
                    self.metrics.node_withdrawn(node);
                }
                step.writes += 1;
                if let Err(e) = writer.event(event).await {
                    tracing::warn!(error = %e, "cannot write an Event");
                }
            }
            for (node, state) in reachable {
                step.writes += 1;
                if let Err(e) = writer.node_condition(&node, &state.condition()).await {
                    step.failed_writes += 1;
                    tracing::warn!(error = %e, "write failed; retrying");
                }
            }
        }
        if speaking {
            let notes = self.bgp.configure(plan.bgp.clone(), &mut self.announcer);
            step.writes += report(notes, leader.then_some(writer)).await;
            if leader {
                for event in self.announcer.take_bfd_events() {
                    step.writes += 1;
                    if let Err(e) = writer.event(&event).await {
                        tracing::warn!(error = %e, "cannot write an Event");
                    }
                }
            }
            if self
                .bgp
                .paths(&plan.paths, plan.paths_version, &mut self.announcer)
            {
                tracing::info!(
                    prefixes = plan.paths.len(),
                    paths = plan.paths.values().map(|h| h.len()).sum::<usize>(),
                    "announcements updated"
                );
            }
            let notes = self
                .bgp
                .family_notes(&peers, &plan.paths, plan.paths_version);
            step.writes += report(notes, leader.then_some(writer)).await;
        }
        let sessions = self.announcer.peer_status();
        self.metrics.bfd(&self.announcer.bfd_states());
        if leader {
            // The controller's own entry in each BgpPeer's status; in node
            // mode the speaker is stopped, so stale entries are removed.
            let entries = status_entries(&peers, &sessions, &self.announcer.bfd_states());
            for (peer, entry) in status_changes(&peers, CONTROLLER_STATUS_KEY, &entries) {
                step.writes += 1;
                if let Err(e) = writer
                    .bgp_peer_status(&peer, CONTROLLER_STATUS_KEY, entry.as_ref())
                    .await
                {
                    step.failed_writes += 1;
                    tracing::warn!(error = %e, "write failed; retrying");
                }
            }
        }
        self.metrics.observe(
            &plan,
            self.reconciler.ipam(),
            &sessions,
            started.elapsed().as_secs_f64(),
        );
        step
    }
}

/// Logs each note, and writes the Warning Event a note asks for on its
/// BgpPeer when there is a `writer` (the leader's); returns how many Events
/// it wrote. Notes are reported once, so a lost Event is not retried.
async fn report<W: StatusWriter>(notes: Vec<Note>, writer: Option<&W>) -> usize {
    let mut events = 0;
    for note in notes {
        if note.warning {
            tracing::warn!("{}", note.message);
        } else {
            tracing::info!("{}", note.message);
        }
        if let (Some(about), Some(writer)) = (note.event, writer) {
            events += 1;
            let event = Event {
                regarding: Regarding::BgpPeer(about.peer),
                type_: EventType::Warning,
                reason: about.reason,
                message: note.message,
            };
            if let Err(e) = writer.event(&event).await {
                tracing::warn!(error = %e, "cannot write an Event");
            }
        }
    }
    events
}

/// Runs until the source goes away. Leads, or announces as a standby,
/// while `leader` says so at the moment of each pass, and stops at the
/// deadline it gives even if no word comes from the election (a frozen or
/// starved process wakes up past it).
pub async fn run<A: Announcer, W: StatusWriter>(
    mut controller: Controller<A>,
    mut snapshots: SnapshotReceiver,
    writer: W,
    mut leader: watch::Receiver<Leadership>,
    settings: Settings,
) {
    // A fixed leadership (tests) has no sender; stop listening to it then.
    let mut leader_open = true;
    let mut term = None;
    let sessions_changed = controller.announcer().sessions_changed();
    let node_check_changed = controller.node_check_changed();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let now = Instant::now();
        let leadership = *leader.borrow_and_update();
        let now_term = leadership.term_at(now);
        let role = leadership.role_at(now);
        if term.is_some() && now_term != term {
            // Lost, or lost and won again (a new term starts clean).
            controller.resign(role);
        }
        term = now_term;
        let step = controller.step(snap, role, &writer).await;
        let wait = if step.failed_writes > 0 {
            settings.retry
        } else {
            settings.resync
        };
        let resync = tokio::time::sleep(wait);
        tokio::pin!(resync);
        loop {
            // Renewals move the deadline without a notification (a pass per
            // renewal would cost a full reconcile); read it afresh.
            let deadline = leader.borrow().deadline().filter(|_| role != Role::Silent);
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return } else { break },
                r = leader.changed(), if leader_open => {
                    leader_open = r.is_ok();
                    break;
                }
                // A pass without a cluster change costs little, and it brings
                // the BgpPeer status and the metrics to the sessions.
                () = sessions_changed.notified() => break,
                // A node withdrawn or back: a pass announces it at once.
                () = notified(node_check_changed.as_deref()) => break,
                () = &mut resync => break,
                () = until(deadline), if role != Role::Silent => {
                    if leader.borrow().role_at(Instant::now()) != role {
                        break;
                    }
                }
            }
        }
    }
}

async fn notified(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

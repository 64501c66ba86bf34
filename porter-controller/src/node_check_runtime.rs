//! Runs the node liveness check ([`crate::node_check`]) on a tokio task: a
//! probe to every target node each interval from one UDP socket per family,
//! answers matched by source address and this process's token, and the
//! timers. The controller's loop sets the targets and reads the withdrawn
//! nodes and the transitions to report; it is woken when either changes.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use porter_common::probe;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;
use crate::node_check::{NodeCheck, State, Timing, Transition, answer_from};

/// The controller's side of a running check.
pub struct NodeChecker {
    targets: watch::Sender<BTreeMap<String, IpAddr>>,
    /// Whether this replica leads: only the leader exports the states.
    leading: watch::Sender<bool>,
    withdrawn: watch::Receiver<BTreeSet<String>>,
    states: watch::Receiver<BTreeMap<String, State>>,
    transitions: Arc<Mutex<Vec<Transition>>>,
    changed: Arc<Notify>,
    timing: Timing,
}

/// What the task shares with [`NodeChecker`].
struct Outputs {
    /// The [`NodeCheck::version`] last published.
    published: u64,
    withdrawn: watch::Sender<BTreeSet<String>>,
    /// Every target's state, for the leader's `PorterNodeReachable`
    /// condition (see `crate::reachability`).
    states: watch::Sender<BTreeMap<String, State>>,
    transitions: Arc<Mutex<Vec<Transition>>>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// The states are exported only while this replica leads; a follower's
    /// would stand beside the leader's with other values.
    leading: watch::Receiver<bool>,
}

impl NodeChecker {
    /// Opens the sockets and starts the check, with no target yet. Must be
    /// called within a tokio runtime. No IPv6 socket where IPv6 is off;
    /// an error only when neither family can be used.
    pub fn spawn(timing: Timing, metrics: Arc<Metrics>) -> io::Result<Self> {
        let v4 = bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let v6 = bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let (v4, v6) = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (v4, v6) => (v4.ok(), v6.ok()),
        };
        let (targets, targets_rx) = watch::channel(BTreeMap::new());
        let (withdrawn_tx, withdrawn) = watch::channel(BTreeSet::new());
        let (states_tx, states) = watch::channel(BTreeMap::new());
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (leading, leading_rx) = watch::channel(false);
        let outputs = Outputs {
            published: 0,
            withdrawn: withdrawn_tx,
            states: states_tx,
            transitions: Arc::clone(&transitions),
            changed: Arc::clone(&changed),
            metrics,
            leading: leading_rx,
        };
        // Tells our answers from anything else arriving on the socket.
        let token = RandomState::new().hash_one((std::process::id(), Instant::now()));
        tokio::spawn(run(
            NodeCheck::new(timing),
            Sockets { v4, v6 },
            token,
            targets_rx,
            outputs,
        ));
        Ok(Self {
            targets,
            leading,
            withdrawn,
            states,
            transitions,
            changed,
            timing,
        })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The nodes to check (none: the check idles and forgets every state).
    pub fn set_targets(&self, targets: &BTreeMap<String, IpAddr>) {
        self.targets.send_if_modified(|current| {
            let modified = current != targets;
            if modified {
                current.clone_from(targets);
            }
            modified
        });
    }

    /// Whether this replica leads (exports the states' metrics).
    pub fn set_leading(&self, leading: bool) {
        self.leading.send_if_modified(|current| {
            let modified = *current != leading;
            *current = leading;
            modified
        });
    }

    /// The nodes withdrawn now.
    pub fn withdrawn(&self) -> BTreeSet<String> {
        self.withdrawn.borrow().clone()
    }

    /// Every target's state now.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.states.borrow().clone()
    }

    /// The transitions since the last call, to report.
    pub fn take_transitions(&self) -> Vec<Transition> {
        self.transitions
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    /// Notified when the withdrawn nodes change or a transition is queued.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }
}

fn bind(any: IpAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Sockets {
    async fn send(&self, request: &[u8], node: &str, addr: IpAddr) {
        let socket = if addr.is_ipv4() { &self.v4 } else { &self.v6 };
        let Some(socket) = socket else {
            tracing::debug!(node, %addr, "no socket of this family: not probed");
            return;
        };
        if let Err(error) = socket
            .send_to(request, SocketAddr::new(addr, probe::PORT))
            .await
        {
            // No route, a full buffer: the missing answers tell the state.
            tracing::debug!(node, %addr, %error, "cannot send a liveness probe");
        }
    }
}

/// Receives one datagram on `socket`, or waits forever without one.
async fn receive(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(
    mut check: NodeCheck,
    sockets: Sockets,
    token: u64,
    mut targets: watch::Receiver<BTreeMap<String, IpAddr>>,
    mut outputs: Outputs,
) {
    let request = probe::request(token);
    let mut send = tokio::time::interval(check.timing().interval);
    send.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut buf4, mut buf6) = ([0u8; 64], [0u8; 64]);
    loop {
        let deadline = check.next_deadline();
        let transitions = tokio::select! {
            _ = send.tick() => {
                for (node, addr) in check.targets() {
                    sockets.send(&request, node, addr).await;
                }
                continue;
            }
            received = receive(sockets.v4.as_ref(), &mut buf4) => answered(&mut check, received, &buf4, token),
            received = receive(sockets.v6.as_ref(), &mut buf6) => answered(&mut check, received, &buf6, token),
            () = until(deadline) => check.poll(Instant::now()),
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                let targets = targets.borrow_and_update().clone();
                check.set_targets(&targets, Instant::now());
                Vec::new()
            }
            Ok(()) = outputs.leading.changed() => {
                outputs.export_states(&check);
                Vec::new()
            }
        };
        outputs.publish(&check, transitions);
    }
}

/// The transitions an answer causes; none for anything that is no answer
/// to our probes.
fn answered(
    check: &mut NodeCheck,
    received: io::Result<(usize, SocketAddr)>,
    buf: &[u8],
    token: u64,
) -> Vec<Transition> {
    let (len, from) = match received {
        Ok(received) => received,
        Err(error) => {
            // ICMP errors (port unreachable) surface here; the state
            // follows from the missing answers.
            tracing::debug!(%error, "liveness probe socket");
            return Vec::new();
        }
    };
    match answer_from(from, &buf[..len], token) {
        Some(node) => check.answer(node, Instant::now()),
        None => Vec::new(),
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Outputs {
    /// Publishes the withdrawn nodes and the states' metrics when a state
    /// changed, logs and queues the transitions, and wakes the controller
    /// when there is news.
    fn publish(&mut self, check: &NodeCheck, transitions: Vec<Transition>) {
        let mut moved = false;
        if check.version() != self.published {
            self.published = check.version();
            let withdrawn = check.withdrawn();
            moved = self.withdrawn.send_if_modified(|current| {
                let modified = *current != withdrawn;
                if modified {
                    *current = withdrawn;
                }
                modified
            });
            self.export_states(check);
            let states: BTreeMap<String, State> = check
                .states()
                .map(|(node, state)| (node.to_owned(), state))
                .collect();
            // A state that withdraws nothing new (down to recovering) still
            // changes what the leader publishes on the Node.
            moved |= self.states.send_if_modified(|current| {
                let modified = *current != states;
                if modified {
                    *current = states;
                }
                modified
            });
        }
        for transition in &transitions {
            log(transition);
        }
        let news = !transitions.is_empty();
        if news && let Ok(mut queue) = self.transitions.lock() {
            queue.extend(transitions);
        }
        if moved || news {
            self.changed.notify_one();
        }
    }
}

impl Outputs {
    fn export_states(&mut self, check: &NodeCheck) {
        if *self.leading.borrow_and_update() {
            self.metrics.node_check(check.states());
        } else {
            self.metrics.node_check([]);
        }
    }
}

fn log(transition: &Transition) {
    match transition {
        Transition::FirstAnswer { node, addr } => {
            tracing::info!(node, %addr, "node answers the liveness probe: checked from now on");
        }
        Transition::NeverAnswered { node, addr, waited } => tracing::warn!(
            node,
            %addr,
            ?waited,
            "node has never answered the liveness probe: it stays announced, unchecked"
        ),
        Transition::Unreachable { node, addr, silent } => tracing::warn!(
            node,
            %addr,
            ?silent,
            "node stopped answering the liveness probe: withdrawing its paths"
        ),
        Transition::Reachable {
            node,
            addr,
            down_for,
        } => tracing::info!(
            node,
            %addr,
            ?down_for,
            "node answers the liveness probe again: announcing its paths"
        ),
    }
}

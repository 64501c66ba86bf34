//! The node liveness check of central (ADD-PATH) mode, as pure state: which
//! announced nodes answer their probes (see `porter_common::probe`), which
//! must be withdrawn, and when they may come back. The I/O (a UDP socket,
//! timers) is in [`crate::node_check_runtime`]; time is passed in.
//!
//! - **Up → Down**: no answer for `multiplier × interval` (BFD's detection
//!   time). The node's paths are withdrawn.
//! - **Down → Recovering → Up**: answers again, without a gap of the
//!   detection time, for `hold`; only then are the paths announced again, so
//!   that a flapping link does not flap the routers' ECMP sets with it.
//! - **Unchecked**: a node that has not answered since it became a target
//!   (start-up, a new node) is never withdrawn: the check
//!   cannot tell a dead node from one it cannot reach (a wrong address, a
//!   filter in between, an agent that has not attached yet). It is reported
//!   once, after the detection time, and stays announced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use porter_common::probe;

use porter_api::source::{Event, EventType, Regarding};

/// Warning on a Node whose paths were withdrawn: it stopped answering.
pub const REASON_UNREACHABLE: &str = "NodeUnreachable";
/// Normal on a Node whose paths are announced again.
pub const REASON_REACHABLE: &str = "NodeReachable";
/// Warning on a Node that never answered: announced, but unchecked.
pub const REASON_UNCHECKED: &str = "NodeUnchecked";

/// The check's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A probe to every node this often.
    pub interval: Duration,
    /// Unanswered probes in a row that make a node Down.
    pub multiplier: u32,
    /// How long a Down node must answer before it is announced again.
    pub hold: Duration,
}

impl Default for Timing {
    /// BFD's defaults (300 ms × 3), and a few seconds of hysteresis.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(300),
            multiplier: 3,
            hold: Duration::from_secs(5),
        }
    }
}

impl Timing {
    pub fn detection(&self) -> Duration {
        self.interval * self.multiplier
    }
}

/// A node's state, as metrics and logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Has not answered since it became a target; stays announced.
    Unchecked,
    Up,
    /// Withdrawn: stopped answering.
    Down,
    /// Withdrawn, answering again; announced once that has held for `hold`.
    Recovering,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Unchecked => "unchecked",
            State::Up => "up",
            State::Down => "down",
            State::Recovering => "recovering",
        }
    }

    pub fn withdrawn(self) -> bool {
        matches!(self, State::Down | State::Recovering)
    }
}

/// What changed for a node, to be reported (an Event, a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Answered for the first time: checked from now on.
    FirstAnswer { node: String, addr: IpAddr },
    /// Has not answered within the detection time since it became a target.
    NeverAnswered {
        node: String,
        addr: IpAddr,
        waited: Duration,
    },
    /// Stopped answering: its paths are withdrawn.
    Unreachable {
        node: String,
        addr: IpAddr,
        silent: Duration,
    },
    /// Answered for `hold`: its paths are announced again.
    Reachable {
        node: String,
        addr: IpAddr,
        down_for: Duration,
    },
}

impl Transition {
    pub fn node(&self) -> &str {
        match self {
            Transition::FirstAnswer { node, .. }
            | Transition::NeverAnswered { node, .. }
            | Transition::Unreachable { node, .. }
            | Transition::Reachable { node, .. } => node,
        }
    }

    /// The Event on the Node that reports it; none for a first answer
    /// (the log says it).
    pub fn event(&self, timing: &Timing) -> Option<Event> {
        let (node, type_, reason, message) = match self {
            Transition::FirstAnswer { .. } => return None,
            Transition::NeverAnswered { node, addr, waited } => (
                node,
                EventType::Warning,
                REASON_UNCHECKED,
                format!(
                    "node {node} has not answered the data-plane liveness probe to {addr} \
                     (UDP port {}) in {waited:.1?} since it became a next hop: it stays \
                     announced, unchecked. Check that its agent's XDP program is attached, \
                     that {addr} is the address the node receives on, and that nothing \
                     between the controller and the node drops the probe",
                    porter_common::probe::PORT
                ),
            ),
            Transition::Unreachable { node, addr, silent } => (
                node,
                EventType::Warning,
                REASON_UNREACHABLE,
                format!(
                    "node {node} stopped answering the data-plane liveness probe to {addr} \
                     (no answer for {silent:.1?}, {} × {:?}): its paths are withdrawn until \
                     it answers again for {:?}",
                    timing.multiplier, timing.interval, timing.hold
                ),
            ),
            Transition::Reachable {
                node,
                addr,
                down_for,
            } => (
                node,
                EventType::Normal,
                REASON_REACHABLE,
                format!(
                    "node {node} has answered the data-plane liveness probe to {addr} for \
                     {:?}: its paths are announced again (withdrawn for {down_for:.1?})",
                    timing.hold
                ),
            ),
        };
        Some(Event {
            regarding: Regarding::Node(node.clone()),
            type_,
            reason,
            message,
        })
    }
}

/// The node address a datagram received on the probe socket answers for:
/// a well-formed reply from the probe port carrying our `token`. None for
/// anything else (stray traffic, another controller's replies, garbage).
pub fn answer_from(from: SocketAddr, payload: &[u8], token: u64) -> Option<IpAddr> {
    let ours = from.port() == probe::PORT && probe::reply_token(payload) == Some(token);
    // A v4-mapped source (dual-stack socket) is the node's IPv4 address.
    ours.then(|| from.ip().to_canonical())
}

#[derive(Debug, Clone)]
struct Tracked {
    addr: IpAddr,
    state: State,
    /// When the node became a target, or its address changed.
    since: Instant,
    last_answer: Option<Instant>,
    /// Down: when it went down. Recovering: when answers resumed.
    changed: Instant,
    went_down: Instant,
    never_answered_reported: bool,
}

/// Every target node's state.
#[derive(Debug, Default)]
pub struct NodeCheck {
    timing: Timing,
    nodes: BTreeMap<String, Tracked>,
    /// Bumped by every change of the targets or of a state, so that the
    /// runtime republishes (metrics, the withdrawn set) only then and not
    /// on every answer: thousands of answers a second in a large cluster.
    version: u64,
}

impl NodeCheck {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            nodes: BTreeMap::new(),
            version: 0,
        }
    }

    /// Changes whenever the targets or a node's state do.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The nodes to check now, with the address to probe. New nodes start
    /// Unchecked; a node whose address changed starts over; a node no longer
    /// a target is forgotten (its withdrawal with it: it has no paths).
    pub fn set_targets(&mut self, targets: &BTreeMap<String, IpAddr>, now: Instant) {
        self.version += 1;
        self.nodes.retain(|node, _| targets.contains_key(node));
        for (node, addr) in targets {
            let fresh = Tracked {
                addr: *addr,
                state: State::Unchecked,
                since: now,
                last_answer: None,
                changed: now,
                went_down: now,
                never_answered_reported: false,
            };
            match self.nodes.get_mut(node) {
                Some(tracked) if tracked.addr == *addr => {}
                Some(tracked) => *tracked = fresh,
                None => {
                    self.nodes.insert(node.clone(), fresh);
                }
            }
        }
    }

    /// The nodes to probe and their addresses.
    pub fn targets(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.nodes.iter().map(|(node, t)| (node.as_str(), t.addr))
    }

    /// An answer from `from` arrived at `now`.
    pub fn answer(&mut self, from: IpAddr, now: Instant) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (node, tracked) in self.nodes.iter_mut().filter(|(_, t)| t.addr == from) {
            tracked.last_answer = Some(now);
            match tracked.state {
                State::Unchecked => {
                    self.version += 1;
                    tracked.state = State::Up;
                    transitions.push(Transition::FirstAnswer {
                        node: node.clone(),
                        addr: from,
                    });
                }
                State::Down => {
                    self.version += 1;
                    tracked.state = State::Recovering;
                    tracked.changed = now;
                }
                State::Up | State::Recovering => {}
            }
        }
        transitions
    }

    /// Applies the timers at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Transition> {
        let detection = self.timing.detection();
        let hold = self.timing.hold;
        let mut transitions = Vec::new();
        let mut changed = false;
        for (node, t) in &mut self.nodes {
            let silent = now.saturating_duration_since(t.last_answer.unwrap_or(t.since));
            match t.state {
                State::Unchecked => {
                    if !t.never_answered_reported && silent >= detection {
                        t.never_answered_reported = true;
                        transitions.push(Transition::NeverAnswered {
                            node: node.clone(),
                            addr: t.addr,
                            waited: silent,
                        });
                    }
                }
                State::Up if silent >= detection => {
                    changed = true;
                    t.state = State::Down;
                    t.changed = now;
                    t.went_down = now;
                    transitions.push(Transition::Unreachable {
                        node: node.clone(),
                        addr: t.addr,
                        silent,
                    });
                }
                // A gap while recovering starts the hold over.
                State::Recovering if silent >= detection => {
                    changed = true;
                    t.state = State::Down;
                    t.changed = now;
                }
                State::Recovering if now.saturating_duration_since(t.changed) >= hold => {
                    changed = true;
                    t.state = State::Up;
                    transitions.push(Transition::Reachable {
                        node: node.clone(),
                        addr: t.addr,
                        down_for: now.saturating_duration_since(t.went_down),
                    });
                }
                State::Up | State::Down | State::Recovering => {}
            }
        }
        self.version += u64::from(changed);
        transitions
    }

    /// When [`poll`](Self::poll) may next have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let detection = self.timing.detection();
        self.nodes
            .values()
            .filter_map(|t| {
                let silence_ends = t.last_answer.unwrap_or(t.since) + detection;
                match t.state {
                    State::Unchecked => (!t.never_answered_reported).then_some(silence_ends),
                    State::Up => Some(silence_ends),
                    State::Down => None,
                    State::Recovering => Some(silence_ends.min(t.changed + self.timing.hold)),
                }
            })
            .min()
    }

    /// The nodes whose paths are withdrawn now.
    pub fn withdrawn(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, t)| t.state.withdrawn())
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Every target's state.
    pub fn states(&self) -> impl Iterator<Item = (&str, State)> {
        self.nodes.iter().map(|(node, t)| (node.as_str(), t.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: &str = "n1";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn one_node(start: Instant) -> NodeCheck {
        let mut check = NodeCheck::new(Timing::default());
        check.set_targets(&[(N1.to_string(), ip("10.0.0.1"))].into(), start);
        check
    }

    /// Answers every `interval` from `from` until `until`, polling at each.
    fn answer_until(check: &mut NodeCheck, from: Instant, until: Instant) -> Vec<Transition> {
        let mut all = Vec::new();
        let mut t = from;
        while t <= until {
            all.extend(check.answer(ip("10.0.0.1"), t));
            all.extend(check.poll(t));
            t += ms(300);
        }
        all
    }

    #[test]
    fn a_node_that_never_answered_is_reported_once_and_never_withdrawn() {
        let start = Instant::now();
        let mut check = one_node(start);
        assert_eq!(check.next_deadline(), Some(start + ms(900)));
        assert!(check.poll(start + ms(899)).is_empty());
        let reported = check.poll(start + ms(900));
        assert!(matches!(&reported[..], [Transition::NeverAnswered { node, .. }] if node == N1));
        assert!(check.poll(start + Duration::from_secs(600)).is_empty());
        assert!(check.withdrawn().is_empty());
        assert_eq!(check.next_deadline(), None);
        assert_eq!(check.states().collect::<Vec<_>>(), [(N1, State::Unchecked)]);
    }

    #[test]
    fn silence_for_the_detection_time_withdraws_and_the_hold_brings_back() {
        let start = Instant::now();
        let mut check = one_node(start);
        let first = check.answer(ip("10.0.0.1"), start);
        assert!(matches!(&first[..], [Transition::FirstAnswer { .. }]));
        // The last answer at start + 300 ms; the link is cut after it.
        assert!(answer_until(&mut check, start + ms(300), start + ms(300)).is_empty());
        assert_eq!(check.next_deadline(), Some(start + ms(1200)));
        assert!(check.poll(start + ms(1199)).is_empty());
        let down = check.poll(start + ms(1200));
        assert!(
            matches!(&down[..], [Transition::Unreachable { node, silent, .. }] if node == N1 && *silent == ms(900))
        );
        assert_eq!(check.withdrawn(), [N1.to_string()].into());

        // Answers again at 5 s: recovering, still withdrawn, until 5 s later.
        let back = start + Duration::from_secs(5);
        let transitions = answer_until(&mut check, back, back + ms(4800));
        assert!(transitions.is_empty(), "{transitions:?}");
        assert_eq!(check.withdrawn(), [N1.to_string()].into());
        let up = answer_until(&mut check, back + ms(5100), back + ms(5100));
        assert!(
            matches!(&up[..], [Transition::Reachable { down_for, .. }] if *down_for == ms(8900)),
            "{up:?}"
        );
        assert!(check.withdrawn().is_empty());
    }

    #[test]
    fn a_gap_while_recovering_starts_the_hold_over() {
        let start = Instant::now();
        let mut check = one_node(start);
        check.answer(ip("10.0.0.1"), start);
        check.poll(start + ms(900));
        assert_eq!(check.withdrawn().len(), 1);
        let back = start + Duration::from_secs(2);
        answer_until(&mut check, back, back + ms(3000));
        // Silent for the detection time: Down again, and the hold restarts.
        assert!(check.poll(back + ms(3900)).is_empty());
        assert_eq!(check.states().next(), Some((N1, State::Down)));
        let again = back + ms(4000);
        let transitions = answer_until(&mut check, again, again + ms(4800));
        assert!(transitions.is_empty(), "{transitions:?}");
        let up = answer_until(&mut check, again + ms(5100), again + ms(5100));
        assert!(matches!(&up[..], [Transition::Reachable { .. }]), "{up:?}");
    }

    #[test]
    fn answers_from_other_addresses_and_late_polls_change_nothing_else() {
        let start = Instant::now();
        let mut check = one_node(start);
        assert!(check.answer(ip("10.0.0.99"), start).is_empty());
        assert_eq!(check.states().next(), Some((N1, State::Unchecked)));
        answer_until(&mut check, start, start + ms(3000));
        // Never more than one interval between answers: stays Up.
        assert_eq!(check.states().next(), Some((N1, State::Up)));
        assert!(check.withdrawn().is_empty());
    }

    #[test]
    fn targets_come_and_go_and_an_address_change_starts_over() {
        let start = Instant::now();
        let mut check = one_node(start);
        check.answer(ip("10.0.0.1"), start);
        check.poll(start + ms(900));
        assert_eq!(check.withdrawn().len(), 1);
        // Same address: the state stays.
        check.set_targets(&[(N1.to_string(), ip("10.0.0.1"))].into(), start + ms(1000));
        assert_eq!(check.withdrawn().len(), 1);
        // New address: unchecked, announced.
        check.set_targets(&[(N1.to_string(), ip("10.0.0.2"))].into(), start + ms(1100));
        assert_eq!(check.states().next(), Some((N1, State::Unchecked)));
        assert!(check.withdrawn().is_empty());
        check.set_targets(&BTreeMap::new(), start + ms(1200));
        assert_eq!(check.targets().count(), 0);
        assert_eq!(check.next_deadline(), None);
    }

    #[test]
    fn events_name_the_node_and_why() {
        let timing = Timing::default();
        let addr = ip("10.0.0.1");
        let down = Transition::Unreachable {
            node: N1.into(),
            addr,
            silent: ms(900),
        }
        .event(&timing)
        .expect("an event");
        assert_eq!(down.regarding, Regarding::Node(N1.into()));
        assert_eq!(
            (down.type_, down.reason),
            (EventType::Warning, REASON_UNREACHABLE)
        );
        assert!(
            down.message.contains("node n1 stopped answering"),
            "{}",
            down.message
        );
        assert!(down.message.contains("10.0.0.1"), "{}", down.message);
        let unchecked = Transition::NeverAnswered {
            node: N1.into(),
            addr,
            waited: ms(900),
        }
        .event(&timing)
        .expect("an event");
        assert_eq!(unchecked.reason, REASON_UNCHECKED);
        assert!(
            unchecked.message.contains("stays announced"),
            "{}",
            unchecked.message
        );
        let up = Transition::Reachable {
            node: N1.into(),
            addr,
            down_for: ms(6000),
        }
        .event(&timing)
        .expect("an event");
        assert_eq!((up.type_, up.reason), (EventType::Normal, REASON_REACHABLE));
        assert!(
            Transition::FirstAnswer {
                node: N1.into(),
                addr
            }
            .event(&timing)
            .is_none()
        );
    }

    #[test]
    fn the_version_moves_with_states_and_targets_only() {
        let start = Instant::now();
        let mut check = one_node(start);
        let mut last = check.version();
        let mut moved = |check: &NodeCheck| {
            let moved = check.version() != last;
            last = check.version();
            moved
        };
        check.answer(ip("10.0.0.1"), start);
        assert!(moved(&check), "unchecked -> up");
        check.answer(ip("10.0.0.1"), start + ms(300));
        check.poll(start + ms(300));
        assert!(!moved(&check), "an answer that changes no state");
        check.poll(start + ms(1200));
        assert!(moved(&check), "up -> down");
        check.answer(ip("10.0.0.1"), start + ms(2000));
        assert!(moved(&check), "down -> recovering");
        check.poll(start + ms(2100));
        assert!(!moved(&check));
        check.poll(start + ms(2900));
        assert!(moved(&check), "recovering -> down (a gap)");
        check.set_targets(&BTreeMap::new(), start + ms(3000));
        assert!(moved(&check), "targets");
    }
}

//! Leader election as a state machine with time as an input, so that the
//! rules are tested without a clock or a lease store (the I/O around it is
//! [`crate::leader_lease`]).
//!
//! The rules:
//! - a successful take or renewal started at `t` makes this replica leader
//!   until `t + duration - margin`. Counting from the start of the attempt,
//!   not its end, is what the lease record says: its renew time is stamped
//!   when the attempt is made.
//! - the lease found held by another replica ends leadership at once, and
//!   makes this replica a standby until `t + duration - margin`: it runs
//!   BGP with the same paths as the leader (so that no path has to arrive
//!   when it takes over, or when the leader's node dies), but writes
//!   nothing.
//! - a failed attempt changes nothing by itself; leadership, or standby,
//!   simply runs out at that deadline unless a later attempt succeeds. This
//!   is how a loss is observed even when the lease store never answers, and
//!   why a replica cut off from the lease store (and so, in a cluster, from
//!   the API server it reads its view from) stops announcing.
//!
//! The margin covers what a successor's view can differ by (clock skew
//! between the replicas, which read the lease's wall-clock times) and the
//! time this replica needs to close its BGP sessions: the old leader has
//! gone quiet before any successor may take the lease.

use std::time::{Duration, Instant};

/// Lease timing, all derived from the lease duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease holds without renewal, as other replicas judge it.
    pub duration: Duration,
    /// How often the lease is renewed (leader) or tried (follower).
    pub retry: Duration,
    /// How long before the lease's expiry a leader that could not renew
    /// steps down.
    pub margin: Duration,
}

impl Timing {
    /// Renewal every sixth of the lease, step-down a third of it before the
    /// lease ends: a leader gets four attempts before it gives up (client-go
    /// uses 15 s, 10 s and 2 s the same way).
    pub fn for_lease(duration: Duration) -> Self {
        Self {
            duration,
            retry: duration / 6,
            margin: duration / 3,
        }
    }
}

/// What one attempt to take or renew the lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now.
    Held,
    /// Another replica holds an unexpired lease.
    HeldBy(String),
    /// The store could not be asked (unreachable, refused, timed out).
    Failed(String),
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// No renewal succeeded for `duration - margin`: the lease may be
    /// another's by now.
    Expired { since_renewal: Duration },
    /// Another replica holds the lease.
    Taken(String),
}

/// A change of role the I/O adapter reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Elected,
    SteppedDown(StepDown),
    /// A standby heard nothing from the lease store for `duration - margin`:
    /// it stops announcing.
    Silenced {
        since_answer: Duration,
    },
}

/// What a replica does in a pass. `contact` counts the times it started
/// announcing: the same number at two passes means it announced all along
/// in between (standby to leader and back included); another one means it
/// fell silent in between, if only while frozen, and its sessions must
/// start afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes status and Events, and runs BGP.
    Leader { contact: u64 },
    /// Runs BGP with the paths the leader's published state gives, and
    /// writes nothing (hot standby).
    Standby { contact: u64 },
    /// Neither: the lease store has not answered lately, so this replica
    /// cannot tell that its view of the cluster is current.
    Silent,
}

impl Role {
    pub fn leads(self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The contact this replica announces in, if it announces.
    pub fn contact(self) -> Option<u64> {
        match self {
            Role::Leader { contact } | Role::Standby { contact } => Some(contact),
            Role::Silent => None,
        }
    }
}

/// Whether and until when this replica may lead, or announce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    /// Silent: no answer from the lease store within the deadline.
    #[default]
    Follower,
    /// Another replica leads; this one announces too until `until` unless
    /// the lease store answers again.
    Standby { until: Instant, contact: u64 },
    /// Leader until `until` unless renewed; every pass checks it at the
    /// time it is made. `term` counts elections: a replica that lost its
    /// lease and won it again (a frozen process waking up) is in a new
    /// term, and starts it from a clean state.
    Until {
        until: Instant,
        term: u64,
        contact: u64,
    },
}

impl Leadership {
    pub fn leads_at(&self, now: Instant) -> bool {
        matches!(self, Leadership::Until { until, .. } if now < *until)
    }

    /// When the role (leader or standby) runs out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Leadership::Until { until, .. } | Leadership::Standby { until, .. } => Some(*until),
            Leadership::Follower => None,
        }
    }

    /// The term this replica leads in at `now`, if it leads.
    pub fn term_at(&self, now: Instant) -> Option<u64> {
        match self {
            Leadership::Until { until, term, .. } if now < *until => Some(*term),
            _ => None,
        }
    }

    pub fn role_at(&self, now: Instant) -> Role {
        match *self {
            Leadership::Until { until, contact, .. } if now < until => Role::Leader { contact },
            Leadership::Standby { until, contact } if now < until => Role::Standby { contact },
            _ => Role::Silent,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Election {
    timing: Timing,
    leadership: Leadership,
    /// Start of the last attempt that held the lease.
    renewed: Option<Instant>,
    /// Start of the last attempt the lease store answered.
    answered: Option<Instant>,
    /// Elections won so far.
    terms: u64,
    /// Times this replica started announcing so far.
    contacts: u64,
}

impl Election {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            leadership: Leadership::Follower,
            renewed: None,
            answered: None,
            terms: 0,
            contacts: 0,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    /// Ends a role whose deadline has passed at `now`.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        let since = |at: Option<Instant>| at.map(|at| now - at).unwrap_or_default();
        match self.leadership {
            Leadership::Until { until, .. } if now >= until => {
                self.leadership = Leadership::Follower;
                let since_renewal = since(self.renewed);
                Some(Transition::SteppedDown(StepDown::Expired { since_renewal }))
            }
            Leadership::Standby { until, .. } if now >= until => {
                self.leadership = Leadership::Follower;
                let since_answer = since(self.answered);
                Some(Transition::Silenced { since_answer })
            }
            _ => None,
        }
    }

    /// The contact number of a role that starts or goes on now: the
    /// current one while announcing, a new one after silence.
    fn contact(&mut self) -> u64 {
        match self.leadership {
            Leadership::Until { contact, .. } | Leadership::Standby { contact, .. } => contact,
            Leadership::Follower => {
                self.contacts += 1;
                self.contacts
            }
        }
    }

    /// Records an attempt started at `started` and answered at `now`.
    pub fn record(
        &mut self,
        started: Instant,
        attempt: &Attempt,
        now: Instant,
    ) -> Option<Transition> {
        let expired = self.tick(now);
        let until = started + self.timing.duration.saturating_sub(self.timing.margin);
        let holder = match attempt {
            Attempt::Failed(_) => return expired,
            Attempt::Held => {
                self.renewed = Some(started);
                None
            }
            Attempt::HeldBy(holder) => Some(holder),
        };
        self.answered = Some(started);
        let was_leader = matches!(self.leadership, Leadership::Until { .. });
        if now >= until {
            // The answer came too late to act on.
            return match holder {
                Some(holder) if was_leader => {
                    self.leadership = Leadership::Follower;
                    Some(Transition::SteppedDown(StepDown::Taken(holder.clone())))
                }
                _ => expired,
            };
        }
        let contact = self.contact();
        match holder {
            None => {
                if let Leadership::Until { term, .. } = self.leadership {
                    self.leadership = Leadership::Until {
                        until,
                        term,
                        contact,
                    };
                    return None;
                }
                // A renewal that lands after the deadline passed starts a
                // new term: the step-down is reported first.
                self.terms += 1;
                self.leadership = Leadership::Until {
                    until,
                    term: self.terms,
                    contact,
                };
                expired.or(Some(Transition::Elected))
            }
            Some(holder) => {
                self.leadership = Leadership::Standby { until, contact };
                if was_leader {
                    Some(Transition::SteppedDown(StepDown::Taken(holder.clone())))
                } else {
                    expired
                }
            }
        }
    }

    /// When to make the next attempt after one started at `started`.
    pub fn next_attempt(&self, started: Instant) -> Instant {
        started + self.timing.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn election() -> (Election, Instant) {
        (Election::new(Timing::for_lease(LEASE)), Instant::now())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_held_lease_elects_and_renewals_keep_the_deadline_moving() {
        let (mut e, t0) = election();
        assert_eq!(e.leadership(), Leadership::Follower);
        assert_eq!(
            e.record(t0, &Attempt::Held, t0 + Duration::from_millis(20)),
            Some(Transition::Elected)
        );
        // 15 s lease, 5 s margin: leader until 10 s after the attempt began.
        assert_eq!(e.leadership().deadline(), Some(t0 + secs(10)));
        assert_eq!(e.leadership().term_at(t0), Some(1));
        assert!(e.leadership().leads_at(t0 + secs(9)));
        assert!(!e.leadership().leads_at(t0 + secs(10)));
        assert_eq!(e.record(t0 + secs(2), &Attempt::Held, t0 + secs(3)), None);
        assert_eq!(e.leadership().deadline(), Some(t0 + secs(12)));
        assert_eq!(e.leadership().term_at(t0 + secs(11)), Some(1));
        assert_eq!(e.next_attempt(t0 + secs(2)), t0 + secs(2) + secs(15) / 6);
    }

    #[test]
    fn failed_renewals_step_down_before_the_lease_can_be_taken() {
        let (mut e, t0) = election();
        e.record(t0, &Attempt::Held, t0);
        let refused = Attempt::Failed("connection refused".into());
        // Failures alone change nothing while the deadline holds...
        for s in [2, 5, 8] {
            assert_eq!(e.record(t0 + secs(s), &refused, t0 + secs(s)), None);
            assert!(e.leadership().leads_at(t0 + secs(s)));
        }
        // ... and at `duration - margin` after the last renewal began, the
        // leader gives up, five seconds before a successor may take over.
        assert_eq!(
            e.record(t0 + secs(10), &refused, t0 + secs(10)),
            Some(Transition::SteppedDown(StepDown::Expired {
                since_renewal: secs(10)
            }))
        );
        assert_eq!(e.leadership(), Leadership::Follower);
        assert_eq!(e.record(t0 + secs(12), &refused, t0 + secs(12)), None);
    }

    #[test]
    fn a_leader_that_hears_nothing_steps_down_on_the_clock_alone() {
        let (mut e, t0) = election();
        e.record(t0, &Attempt::Held, t0);
        assert_eq!(e.tick(t0 + secs(9)), None);
        // A renewal that hangs, or a process frozen past its lease, is
        // caught by the deadline, not by an answer.
        assert!(matches!(
            e.tick(t0 + secs(40)),
            Some(Transition::SteppedDown(StepDown::Expired { .. }))
        ));
        assert_eq!(e.tick(t0 + secs(41)), None);
    }

    #[test]
    fn a_late_renewal_is_reported_as_a_step_down_and_then_a_new_term() {
        let (mut e, t0) = election();
        e.record(t0, &Attempt::Held, t0);
        // Frozen from 1 s to 30 s; on waking, the renewal started at 30 s
        // succeeds (nobody took the lease meanwhile). The step-down is
        // reported first, so the caller resets before leading again.
        assert!(matches!(
            e.record(t0 + secs(30), &Attempt::Held, t0 + secs(30)),
            Some(Transition::SteppedDown(StepDown::Expired { .. }))
        ));
        assert_eq!(e.leadership().deadline(), Some(t0 + secs(40)));
        assert_eq!(e.leadership().term_at(t0 + secs(30)), Some(2));
        // An answer that arrives after its own deadline does not elect.
        let (mut late, t1) = election();
        assert_eq!(late.record(t1, &Attempt::Held, t1 + secs(11)), None);
        assert_eq!(late.leadership(), Leadership::Follower);
    }

    #[test]
    fn another_holder_ends_leadership_at_once() {
        let (mut e, t0) = election();
        assert_eq!(e.record(t0, &Attempt::HeldBy("b".into()), t0), None);
        e.record(t0 + secs(1), &Attempt::Held, t0 + secs(1));
        assert_eq!(
            e.record(t0 + secs(2), &Attempt::HeldBy("b".into()), t0 + secs(2)),
            Some(Transition::SteppedDown(StepDown::Taken("b".into())))
        );
        assert!(!e.leadership().leads_at(t0 + secs(2)));
        // It announces on as a standby, with the sessions it had.
        assert_eq!(
            e.leadership().role_at(t0 + secs(2)),
            Role::Standby { contact: 1 }
        );
    }

    #[test]
    fn a_replica_that_hears_of_a_leader_announces_as_a_standby_until_the_deadline() {
        let (mut e, t0) = election();
        assert_eq!(e.leadership().role_at(t0), Role::Silent);
        assert_eq!(e.record(t0, &Attempt::HeldBy("b".into()), t0), None);
        // 15 s lease, 5 s margin, as a leader's own deadline.
        assert_eq!(e.leadership().deadline(), Some(t0 + secs(10)));
        assert_eq!(
            e.leadership().role_at(t0 + secs(9)),
            Role::Standby { contact: 1 }
        );
        // Each answer moves the deadline; the sessions go on.
        assert_eq!(
            e.record(t0 + secs(2), &Attempt::HeldBy("b".into()), t0 + secs(2)),
            None
        );
        assert_eq!(e.leadership().deadline(), Some(t0 + secs(12)));
        assert_eq!(e.leadership().role_at(t0 + secs(11)).contact(), Some(1));
        // Elected: a new term, but the same contact: the standby's sessions
        // carry on into the leadership, so no path has to arrive.
        assert_eq!(
            e.record(t0 + secs(4), &Attempt::Held, t0 + secs(4)),
            Some(Transition::Elected)
        );
        assert_eq!(
            e.leadership().role_at(t0 + secs(4)),
            Role::Leader { contact: 1 }
        );
        assert_eq!(e.leadership().term_at(t0 + secs(4)), Some(1));
    }

    #[test]
    fn a_standby_cut_off_from_the_lease_store_falls_silent_and_starts_afresh() {
        let (mut e, t0) = election();
        e.record(t0, &Attempt::HeldBy("b".into()), t0);
        let refused = Attempt::Failed("connection refused".into());
        assert_eq!(e.record(t0 + secs(5), &refused, t0 + secs(5)), None);
        assert!(matches!(
            e.leadership().role_at(t0 + secs(5)),
            Role::Standby { .. }
        ));
        assert_eq!(
            e.tick(t0 + secs(10)),
            Some(Transition::Silenced {
                since_answer: secs(10)
            })
        );
        assert_eq!(e.leadership().role_at(t0 + secs(10)), Role::Silent);
        // Heard again: announcing again, as a new contact.
        e.record(t0 + secs(12), &Attempt::HeldBy("b".into()), t0 + secs(12));
        assert_eq!(e.leadership().role_at(t0 + secs(12)).contact(), Some(2));
        // An answer that arrives after its own deadline is no contact.
        let (mut late, t1) = election();
        assert_eq!(
            late.record(t1, &Attempt::HeldBy("b".into()), t1 + secs(11)),
            None
        );
        assert_eq!(late.leadership().role_at(t1 + secs(11)), Role::Silent);
    }

    #[test]
    fn a_leader_frozen_past_its_deadline_starts_a_new_contact() {
        let (mut e, t0) = election();
        e.record(t0, &Attempt::Held, t0);
        assert_eq!(e.leadership().role_at(t0).contact(), Some(1));
        // Frozen from 1 s to 30 s: whatever it finds on waking, its
        // sessions must start afresh.
        e.record(t0 + secs(30), &Attempt::HeldBy("b".into()), t0 + secs(30));
        assert_eq!(
            e.leadership().role_at(t0 + secs(30)),
            Role::Standby { contact: 2 }
        );
    }
}

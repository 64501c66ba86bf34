//! Leader election as a state machine with time as an input, so that the
//! rules are tested without a clock or a lease store (the I/O around it is
//! [`crate::leader_lease`]).
//!
//! The rules:
//! - a successful take or renewal started at `t` makes this replica leader
//!   until `t + duration - margin`. Counting from the start of the attempt,
//!   not its end, is what the lease record says: its renew time is stamped
//!   when the attempt is made.
//! - a failed attempt changes nothing by itself; leadership simply runs
//!   out at that deadline unless a later renewal succeeds. This is how a
//!   loss is observed even when the lease store never answers.
//! - the lease found held by another replica ends leadership at once.
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
}

/// Whether and until when this replica may lead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    #[default]
    Follower,
    /// Leader until `until` unless renewed; every pass checks it at the
    /// time it is made. `term` counts elections: a replica that lost its
    /// lease and won it again (a frozen process waking up) is in a new
    /// term, and starts it from a clean state.
    Until { until: Instant, term: u64 },
}

impl Leadership {
    pub fn leads_at(&self, now: Instant) -> bool {
        matches!(self, Leadership::Until { until, .. } if now < *until)
    }

    /// When leadership runs out, if it is held.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Leadership::Until { until, .. } => Some(*until),
            Leadership::Follower => None,
        }
    }

    /// The term this replica leads in at `now`, if it leads.
    pub fn term_at(&self, now: Instant) -> Option<u64> {
        match self {
            Leadership::Until { until, term } if now < *until => Some(*term),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Election {
    timing: Timing,
    leadership: Leadership,
    /// Start of the last attempt that held the lease.
    renewed: Option<Instant>,
    /// Elections won so far.
    terms: u64,
}

impl Election {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            leadership: Leadership::Follower,
            renewed: None,
            terms: 0,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    /// Ends a leadership whose deadline has passed at `now`.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.leadership {
            Leadership::Until { until, .. } if now >= until => {
                self.leadership = Leadership::Follower;
                let since_renewal = self.renewed.map(|r| now - r).unwrap_or_default();
                Some(Transition::SteppedDown(StepDown::Expired { since_renewal }))
            }
            _ => None,
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
        match attempt {
            Attempt::Held => {
                let until = started + self.timing.duration.saturating_sub(self.timing.margin);
                self.renewed = Some(started);
                if now >= until {
                    // The answer came too late to lead on.
                    return expired;
                }
                if let Leadership::Until { term, .. } = self.leadership {
                    self.leadership = Leadership::Until { until, term };
                    return None;
                }
                // A renewal that lands after the deadline passed starts a
                // new term: the step-down is reported first.
                self.terms += 1;
                self.leadership = Leadership::Until {
                    until,
                    term: self.terms,
                };
                expired.or(Some(Transition::Elected))
            }
            Attempt::HeldBy(holder) => {
                if self.leadership == Leadership::Follower {
                    return expired;
                }
                self.leadership = Leadership::Follower;
                Some(Transition::SteppedDown(StepDown::Taken(holder.clone())))
            }
            Attempt::Failed(_) => expired,
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
    }
}

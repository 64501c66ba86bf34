//! Whether this node's data plane can be programmed, judged from what each
//! sync pass ran into. A data plane the agent cannot program is "frozen":
//! whatever an earlier agent left attached keeps serving maps nobody
//! updates (or nothing serves at all), so the node must not draw traffic.
//! Pure; the agent turns a verdict into its readiness, a metric, a log
//! line, and the Node condition that withdraws the node
//! ([`crate::node_condition`]).

use crate::{DataplaneError, sync::SyncError};

/// Why a data plane is frozen: the `reason` of the Node condition and of
/// the Event, and the `reason` label of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Pins of a newer agent's layout are in place (a rollback).
    NewerPinLayout,
    /// The pinned maps have other sizes than `--maglev-size` and
    /// `--max-services` ask for.
    MapSizeMismatch,
    /// The programs or maps cannot be loaded.
    LoadFailed,
    /// XDP or tc cannot be attached to an uplink (or none is found).
    AttachFailed,
    /// Writes to the maps keep failing.
    MapWriteFailed,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::NewerPinLayout,
        Reason::MapSizeMismatch,
        Reason::LoadFailed,
        Reason::AttachFailed,
        Reason::MapWriteFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewerPinLayout => "NewerPinLayout",
            Reason::MapSizeMismatch => "MapSizeMismatch",
            Reason::LoadFailed => "LoadFailed",
            Reason::AttachFailed => "AttachFailed",
            Reason::MapWriteFailed => "MapWriteFailed",
        }
    }
}

/// What the agent says about its data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing decided yet (no pass has attached, and none has failed).
    Starting,
    /// Programmed and attached.
    Ready,
    /// Cannot be programmed: `message` says why and what to do.
    Frozen { reason: Reason, message: String },
}

impl Verdict {
    pub fn is_frozen(&self) -> bool {
        matches!(self, Verdict::Frozen { .. })
    }
}

/// Passes in a row whose map writes fail before the node is withdrawn: a
/// single failure may be a passing shortage (memory pressure) that the
/// retry with backoff (0.5 s, 1 s, ...) gets past.
pub const WRITE_FAILURES_TO_FREEZE: u32 = 3;

/// Judges each pass, remembering how many passes in a row failed to write.
#[derive(Debug, Default)]
pub struct Judge {
    failed_write_passes: u32,
}

impl Judge {
    /// The verdict after a pass that ran into `errors`; `attached` says
    /// whether the data plane is loaded and attached to an uplink.
    pub fn judge(&mut self, errors: &[SyncError], attached: bool) -> Verdict {
        let write_failure = errors.iter().find(|e| is_write_failure(e));
        self.failed_write_passes = match write_failure {
            Some(_) => self.failed_write_passes.saturating_add(1),
            None => 0,
        };
        if let Some((reason, error)) = errors
            .iter()
            .find_map(|e| immediate_reason(e).map(|r| (r, e)))
        {
            return frozen(reason, error.to_string());
        }
        if let Some(error) = write_failure
            && self.failed_write_passes >= WRITE_FAILURES_TO_FREEZE
        {
            return frozen(
                Reason::MapWriteFailed,
                // The count stays out: the verdict changes only with its cause.
                format!("map writes failed in {WRITE_FAILURES_TO_FREEZE} passes in a row: {error}"),
            );
        }
        if attached {
            Verdict::Ready
        } else {
            Verdict::Starting
        }
    }
}

fn frozen(reason: Reason, why: String) -> Verdict {
    Verdict::Frozen {
        reason,
        message: format!(
            "{why}; the node's paths are withdrawn until this agent programs its data plane \
             (it retries with backoff){}",
            match reason {
                Reason::NewerPinLayout => {
                    ". Roll the agent forward to the version that made those pins, or run \
                     `porter-agent cleanup` (detaches the data plane and drops its conntrack) \
                     and start this agent again"
                }
                _ => "",
            }
        ),
    }
}

/// A failure that freezes the data plane at once: nothing this agent does
/// reaches the packets until it is fixed.
fn immediate_reason(error: &SyncError) -> Option<Reason> {
    match error {
        SyncError::NewerLayout { .. } => Some(Reason::NewerPinLayout),
        SyncError::Open(source) => Some(match **source {
            DataplaneError::PinnedSizeMismatch { .. } => Reason::MapSizeMismatch,
            _ => Reason::LoadFailed,
        }),
        SyncError::NoInterface { .. }
        | SyncError::Addresses(_)
        | SyncError::MissingInterface(_)
        | SyncError::Attach { .. } => Some(Reason::AttachFailed),
        SyncError::Program { .. } => None,
    }
}

/// A map the agent could not write. Other programming errors (a Service
/// that does not fit, too many backends for the Maglev size) concern one
/// Service, which the agent reports as such; the others are served.
fn is_write_failure(error: &SyncError) -> bool {
    matches!(
        error,
        SyncError::Program { source, .. }
            if matches!(**source, DataplaneError::Map { .. } | DataplaneError::MaglevWrite { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceAddr;

    fn write_failure() -> SyncError {
        SyncError::Program {
            service: "192.0.2.1:80/tcp".into(),
            source: Box::new(DataplaneError::MaglevWrite {
                source: std::io::Error::from_raw_os_error(libc::EFAULT),
            }),
        }
    }

    fn reason(verdict: &Verdict) -> Option<Reason> {
        match verdict {
            Verdict::Frozen { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn what_keeps_the_agent_from_its_maps_or_links_freezes_at_once() {
        let cases = [
            (
                SyncError::NewerLayout {
                    found: 13,
                    own: 11,
                    root: "/sys/fs/bpf/porter".into(),
                },
                Reason::NewerPinLayout,
            ),
            (
                SyncError::Open(Box::new(DataplaneError::PinnedSizeMismatch {
                    map: "PORTER_MAGLEV",
                    found: 10,
                    wanted: 20,
                })),
                Reason::MapSizeMismatch,
            ),
            (
                SyncError::Open(Box::new(DataplaneError::MissingMap("PORTER_SERVICES"))),
                Reason::LoadFailed,
            ),
            (
                SyncError::MissingInterface("eth9".into()),
                Reason::AttachFailed,
            ),
        ];
        for (error, want) in cases {
            let mut judge = Judge::default();
            let verdict = judge.judge(&[error], false);
            assert_eq!(reason(&verdict), Some(want), "{verdict:?}");
        }
    }

    #[test]
    fn the_message_says_why_and_what_to_do() {
        let verdict = Judge::default().judge(
            &[SyncError::NewerLayout {
                found: 13,
                own: 11,
                root: "/sys/fs/bpf/porter".into(),
            }],
            false,
        );
        let Verdict::Frozen { message, .. } = verdict else {
            panic!("frozen expected: {verdict:?}");
        };
        for part in ["v13", "v11", "withdrawn", "porter-agent cleanup", "forward"] {
            assert!(message.contains(part), "{part} missing in: {message}");
        }
    }

    #[test]
    fn map_writes_freeze_only_when_they_keep_failing_and_a_good_pass_clears_them() {
        let mut judge = Judge::default();
        for pass in 1..WRITE_FAILURES_TO_FREEZE {
            assert_eq!(
                judge.judge(&[write_failure()], true),
                Verdict::Ready,
                "pass {pass}"
            );
        }
        let verdict = judge.judge(&[write_failure()], true);
        assert_eq!(
            reason(&verdict),
            Some(Reason::MapWriteFailed),
            "{verdict:?}"
        );
        assert_eq!(
            judge.judge(&[write_failure()], true),
            verdict,
            "a failure that goes on is the same verdict, not news at every pass"
        );
        assert_eq!(judge.judge(&[], true), Verdict::Ready);
        assert_eq!(
            judge.judge(&[write_failure()], true),
            Verdict::Ready,
            "the count starts over after a good pass"
        );
    }

    #[test]
    fn a_service_that_does_not_fit_freezes_nothing() {
        let mut judge = Judge::default();
        let full = || SyncError::Program {
            service: "192.0.2.1:80/tcp".into(),
            source: Box::new(DataplaneError::ServiceSlotsFull(ServiceAddr {
                vip: "192.0.2.1".parse().expect("ip"),
                port: 80,
                proto: crate::Protocol::Tcp,
            })),
        };
        for _ in 0..=WRITE_FAILURES_TO_FREEZE {
            assert_eq!(judge.judge(&[full()], true), Verdict::Ready);
        }
        assert_eq!(judge.judge(&[], false), Verdict::Starting);
    }
}

//! One node's Layer 2 round: renew the heartbeat, read the leases, decide,
//! write the leases, and report what to answer for and what was taken over.
//! The caller programs the data plane with [`Round::answer`] (valid for
//! [`Round::valid_for`]) and announces [`Round::takeovers`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use tracing::info;

use super::{
    election::{ElectionInputs, LeaseWrite, decide},
    lease::{LeaseError, LeaseStore},
};

/// Timing of the Layer 2 leases. Rounds run every `lease / 4`, so a leader
/// renews four times per lease and survives two lost rounds; a crashed
/// leader is replaced within one lease plus one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(1),
        }
    }
}

impl Timing {
    pub fn round_interval(&self) -> Duration {
        self.lease / 4
    }

    /// How long the data plane answers after a round: three quarters of the
    /// lease, so a node that stops renewing falls silent before its lease
    /// expires and the successor starts answering.
    pub fn answer_validity(&self) -> Duration {
        self.lease * 3 / 4
    }
}

/// What one round decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// EIPs this node holds the lease of: answer ARP/NDP for them.
    pub answer: BTreeSet<IpAddr>,
    /// How long the answers stay valid unless the next round renews them.
    pub valid_for: Duration,
    /// EIPs this node started answering for in this round: announce them.
    pub takeovers: Vec<IpAddr>,
    /// Which node should lead each EIP (status and metrics).
    pub leaders: BTreeMap<IpAddr, String>,
}

pub struct LeaseRounds<S> {
    node: String,
    timing: Timing,
    store: S,
    answered: BTreeSet<IpAddr>,
}

impl<S: LeaseStore> LeaseRounds<S> {
    pub fn new(node: impl Into<String>, timing: Timing, store: S) -> Self {
        Self {
            node: node.into(),
            timing,
            store,
            answered: BTreeSet::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Runs one round at `now` (since the Unix epoch) for the Layer 2 EIPs
    /// and their candidate nodes. On an error nothing is renewed, and the
    /// data plane's answers run out by themselves.
    pub async fn round(
        &mut self,
        candidates: &BTreeMap<IpAddr, BTreeSet<String>>,
        now: Duration,
    ) -> Result<Round, LeaseError> {
        self.store.heartbeat(&self.node, now).await?;
        let view = self.store.read().await?;
        let decision = decide(&ElectionInputs {
            node: &self.node,
            candidates,
            heartbeats: &view.heartbeats,
            // A node is dead once it missed a lease's worth of rounds.
            heartbeat_ttl: self.timing.lease,
            leases: &view.leases,
            now,
        });
        let mut answer = BTreeSet::new();
        for (&eip, write) in &decision.writes {
            match write {
                LeaseWrite::Acquire => {
                    if self
                        .store
                        .acquire(eip, &self.node, now, self.timing.lease)
                        .await?
                    {
                        answer.insert(eip);
                    }
                }
                LeaseWrite::Release => {
                    self.store.release(eip, &self.node).await?;
                    info!(%eip, node = %self.node, "layer 2 leadership released");
                }
            }
        }
        let takeovers: Vec<IpAddr> = answer.difference(&self.answered).copied().collect();
        for eip in &takeovers {
            info!(%eip, node = %self.node, "layer 2 leadership taken");
        }
        self.answered = answer.clone();
        Ok(Round {
            answer,
            valid_for: self.timing.answer_validity(),
            takeovers,
            leaders: decision.leaders,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer2::lease::FileLeases;

    #[tokio::test]
    async fn a_crashed_leader_is_replaced_after_one_lease_and_the_successor_announces() {
        let dir = std::env::temp_dir().join(format!("porter-l2-speaker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let eip: IpAddr = "192.0.2.10".parse().expect("address");
        let nodes = ["n1", "n2", "n3"];
        let candidates = BTreeMap::from([(eip, nodes.iter().map(|n| n.to_string()).collect())]);
        let timing = Timing::default();
        let mut speakers: Vec<LeaseRounds<FileLeases>> = nodes
            .iter()
            .map(|n| LeaseRounds::new(*n, timing, FileLeases::new(&dir).expect("dir")))
            .collect();
        let ms = Duration::from_millis;
        let mut now = Duration::from_secs(1_000);
        // Two rounds: heartbeats seen, then the chosen node takes the lease.
        let mut rounds = Vec::new();
        for _ in 0..2 {
            rounds.clear();
            for speaker in &mut speakers {
                rounds.push(speaker.round(&candidates, now).await.expect("round"));
            }
            now += timing.round_interval();
        }
        let leader = rounds
            .iter()
            .position(|r| r.answer.contains(&eip))
            .expect("someone leads");
        assert_eq!(rounds.iter().filter(|r| r.answer.contains(&eip)).count(), 1);
        assert_eq!(
            rounds[leader].leaders.get(&eip),
            Some(&nodes[leader].to_string())
        );

        // The leader crashes: no more rounds from it.
        let crashed_at = now;
        let mut taken_at = None;
        while taken_at.is_none() && now < crashed_at + ms(5_000) {
            for (index, speaker) in speakers.iter_mut().enumerate() {
                if index == leader {
                    continue;
                }
                let round = speaker.round(&candidates, now).await.expect("round");
                if round.takeovers.contains(&eip) {
                    assert!(round.answer.contains(&eip));
                    taken_at = Some(now);
                }
            }
            now += timing.round_interval();
        }
        let taken_at = taken_at.expect("a successor took over");
        // Not before the lease ran out, and within one lease plus two rounds.
        assert!(taken_at - crashed_at >= timing.lease - timing.round_interval());
        assert!(taken_at - crashed_at <= timing.lease + 2 * timing.round_interval());
        let _ = std::fs::remove_dir_all(dir);
    }
}

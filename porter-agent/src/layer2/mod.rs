//! Layer 2 mode: one node per EIP answers ARP/NDP for it (in XDP), chosen
//! deterministically among the nodes that can serve it, and a new leader
//! announces itself with gratuitous ARP / unsolicited neighbour advertisements.
pub mod announce;
pub mod candidates;
pub mod election;
pub mod gateways;
pub mod kube_lease;
pub mod lease;
pub mod lease_rounds;
pub mod leases;
pub mod metrics;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use porter_api::source::Snapshot;
use tracing::warn;

use crate::{Dataplane, DataplaneError, l2_interface};
use announce::FrameSender;
use lease::{LeaseError, LeaseStore};
use lease_rounds::{LeaseRounds, Round};
use metrics::Layer2Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Layer2Error {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("cannot program layer 2 answers: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// The Layer 2 side of an agent: runs [`LeaseRounds`] rounds, programs the data
/// plane with their outcome, and announces takeovers in the background.
pub struct Layer2<S> {
    rounds: LeaseRounds<S>,
    frames: Arc<FrameSender>,
    metrics: Layer2Metrics,
    /// What this node answers for now, for announcements in flight.
    answering: tokio::sync::watch::Sender<BTreeSet<IpAddr>>,
    /// EIPs left unanswered because they are a host's address, as last
    /// logged: a warning when one appears, not every round.
    host_addresses: BTreeSet<IpAddr>,
}

impl<S: LeaseStore> Layer2<S> {
    pub fn new(rounds: LeaseRounds<S>, frames: FrameSender, metrics: Layer2Metrics) -> Self {
        Self {
            rounds,
            frames: Arc::new(frames),
            metrics,
            answering: tokio::sync::watch::Sender::new(BTreeSet::new()),
            host_addresses: BTreeSet::new(),
        }
    }

    /// Takes the EIPs that are a host's address (`hosts`) out of
    /// `candidates`: no node answers ARP/NDP for them. Warns once per EIP.
    pub fn refuse_host_addresses(
        &mut self,
        candidates: &mut BTreeMap<IpAddr, BTreeSet<String>>,
        hosts: &BTreeSet<IpAddr>,
    ) {
        let refused = candidates::without_host_addresses(candidates, hosts);
        for eip in refused.difference(&self.host_addresses) {
            warn!(%eip, "a Layer 2 EIP is a node's own address: not answering ARP/NDP for it (take it out of its Eip's spec.address)");
        }
        self.host_addresses = refused;
    }

    /// Whether this node answered for any EIP after the last round.
    pub fn answering(&self) -> bool {
        !self.answering.borrow().is_empty()
    }

    /// How often [`Self::step`] must run.
    pub fn round_interval(&self) -> Duration {
        self.rounds.timing().round_interval()
    }

    /// One round for `candidates` (Layer 2 EIP → candidate nodes), each EIP
    /// answered on the interface its pool chose (`choices`, see
    /// [`candidates::interface_choices`]) or on every uplink. Must run inside
    /// a tokio runtime (announcements are spawned). On an error the data
    /// plane is left alone, so its answers run out with the lease.
    pub async fn step(
        &mut self,
        dataplane: &mut Dataplane,
        candidates: &BTreeMap<IpAddr, BTreeSet<String>>,
        choices: &BTreeMap<IpAddr, String>,
    ) -> Result<Round, Layer2Error> {
        let round = match self.program(dataplane, candidates, choices).await {
            Ok(round) => round,
            Err(err) => {
                self.metrics.round_failed();
                // Unsure whether we still lead: stop announcing.
                self.answering.send_replace(BTreeSet::new());
                return Err(err);
            }
        };
        self.metrics.round(&round.leaders, &round.answer);
        self.answering.send_replace(round.answer.clone());
        if !round.takeovers.is_empty() {
            let links = dataplane.l2_interfaces();
            let eips = round.takeovers.clone();
            let (frames, metrics) = (self.frames.clone(), self.metrics.clone());
            let answering = self.answering.subscribe();
            tokio::spawn(async move {
                let still_led = |eip| answering.borrow().contains(&eip);
                metrics.gratuitous_sent(frames.announce_takeover(&links, &eips, still_led).await);
            });
        }
        Ok(round)
    }

    async fn program(
        &mut self,
        dataplane: &mut Dataplane,
        candidates: &BTreeMap<IpAddr, BTreeSet<String>>,
        choices: &BTreeMap<IpAddr, String>,
    ) -> Result<Round, Layer2Error> {
        let round = self.rounds.round(candidates, wall_clock()).await?;
        let answers: BTreeMap<IpAddr, Option<String>> = round
            .answer
            .iter()
            .map(|&eip| {
                (
                    eip,
                    choices.get(&eip).map(|choice| interface_for(eip, choice)),
                )
            })
            .collect();
        dataplane.set_l2_answers(&answers, round.valid_for)?;
        Ok(round)
    }
}

/// The addresses no Layer 2 EIP may be answered for on this node: every
/// Node's, those of this node's `uplinks` (the attached interfaces, which
/// the answers go out of; not every interface: kube-proxy in IPVS mode puts
/// each LoadBalancer address on a dummy one), and its gateways.
pub fn host_addresses<'a>(
    snapshot: &Snapshot,
    uplinks: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<IpAddr> {
    let mut hosts = candidates::node_addresses(snapshot);
    match crate::interfaces::addresses_on(uplinks) {
        Ok(local) => hosts.extend(local),
        Err(err) => {
            warn!(error = %err, "cannot read this node's addresses; Layer 2 EIPs are not checked against them")
        }
    }
    match gateways::gateways() {
        Ok(routers) => hosts.extend(routers),
        Err(err) => {
            warn!(error = %err, "cannot read this node's routes; Layer 2 EIPs are not checked against its gateways")
        }
    }
    hosts
}

/// The interface `choice` names; when it cannot be resolved, the choice
/// itself, which matches no interface: the EIP is answered nowhere rather
/// than on a NIC the operator did not ask for.
fn interface_for(eip: IpAddr, choice: &str) -> String {
    l2_interface::resolve_choice(choice).unwrap_or_else(|err| {
        warn!(%eip, error = %err, "cannot resolve the pool's interface; not answering for the EIP");
        choice.to_owned()
    })
}

pub use porter_api::layer2::wall_clock;

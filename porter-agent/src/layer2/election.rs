//! Who answers for each Layer 2 EIP. Pure: the inputs are what the agent
//! read (candidates, heartbeats, leases) and the time; the outputs are what
//! to answer for and which lease writes to make. See docs/layer2.md for the
//! failure analysis.
//!
//! - **Candidates** of an EIP are the Ready nodes with ready local endpoints
//!   of the Service(s) using it (computed by the caller from the cluster).
//! - **Choice**: rendezvous hashing. Every candidate gets a score from a
//!   stable hash of (node, EIP); the highest live one leads. Every node
//!   computes the same answer from the same inputs, EIPs spread evenly over
//!   the nodes, and a node leaving moves only the EIPs it led.
//! - **Liveness** comes from per-node heartbeats renewed every fraction of a
//!   second, not from Node Ready (which takes 40 s to turn): that is what
//!   makes failover take about one heartbeat lifetime.
//! - **Split-brain guard**: one lease per EIP. A node answers only while it
//!   holds the EIP's unexpired lease, and takes the lease only when it is free,
//!   expired, or its own. A node that stops being the choice releases the
//!   lease at once, so a planned move costs one poll, not a lease lifetime.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

/// The stable score of `node` for `eip`: FNV-1a over both, then a 64-bit
/// finaliser (splitmix64) so that similar names still spread. Never change
/// it casually: nodes running different versions must agree.
pub fn score(node: &str, eip: IpAddr) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let octets: Vec<u8> = match eip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    // The separator keeps ("ab", x) and ("a", "b" ++ x) apart.
    let mut hash = node
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(&octets)
        .fold(FNV_OFFSET, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        });
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The candidates of `eip` in order of preference (highest score first,
/// ties by name so the order is total).
pub fn ranking<'a>(eip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = candidates
        .into_iter()
        .map(|node| (score(node, eip), node))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, node)| node).collect()
}

/// The node that should lead `eip`: the best-ranked candidate that is alive.
pub fn choose<'a>(
    eip: IpAddr,
    candidates: impl IntoIterator<Item = &'a str>,
    alive: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    ranking(eip, candidates)
        .into_iter()
        .find(|node| alive(node))
}

pub use porter_api::layer2::LeaseRecord;

fn held_by(lease: &LeaseRecord, node: &str, now: Duration) -> bool {
    lease.holder == node && !lease.expired(now)
}

/// A write to make to one EIP's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseWrite {
    /// Take it (it is free, expired or already ours): holder = us, renewed = now.
    Acquire,
    /// Give it up, so the chosen node need not wait for it to expire.
    Release,
}

/// What this node does about Layer 2 now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The EIPs to answer ARP/NDP for: chosen here and leased to us.
    pub answer: BTreeSet<IpAddr>,
    /// Lease writes, by EIP. Only after an `Acquire` succeeds does the EIP
    /// join `answer` (on the next decision).
    pub writes: BTreeMap<IpAddr, LeaseWrite>,
    /// The node each EIP should be led by (for status and metrics); absent
    /// when no candidate is alive.
    pub leaders: BTreeMap<IpAddr, String>,
}

/// Everything a decision depends on.
#[derive(Clone, Debug)]
pub struct ElectionInputs<'a> {
    pub node: &'a str,
    /// Layer 2 EIP → its candidate nodes.
    pub candidates: &'a BTreeMap<IpAddr, BTreeSet<String>>,
    /// Node → when its heartbeat was last renewed.
    pub heartbeats: &'a BTreeMap<String, Duration>,
    /// How long a heartbeat keeps a node alive.
    pub heartbeat_ttl: Duration,
    /// EIP → its lease, where one exists.
    pub leases: &'a BTreeMap<IpAddr, LeaseRecord>,
    pub now: Duration,
}

impl ElectionInputs<'_> {
    fn alive(&self, node: &str) -> bool {
        // Our own liveness is not in question: we are the one deciding.
        node == self.node
            || self
                .heartbeats
                .get(node)
                .is_some_and(|&renewed| self.now < renewed.saturating_add(self.heartbeat_ttl))
    }
}

/// Decides which EIPs this node answers for and which leases it writes.
pub fn decide(inputs: &ElectionInputs<'_>) -> Decision {
    let mut decision = Decision::default();
    for (&eip, candidates) in inputs.candidates {
        let chosen = choose(eip, candidates.iter().map(String::as_str), |node| {
            inputs.alive(node)
        });
        let lease = inputs.leases.get(&eip);
        if let Some(chosen) = chosen {
            decision.leaders.insert(eip, chosen.to_owned());
        }
        if chosen == Some(inputs.node) {
            match lease {
                Some(lease) if held_by(lease, inputs.node, inputs.now) => {
                    decision.answer.insert(eip);
                    // Renewed every decision: the caller decides at a
                    // fraction of the lease duration.
                    decision.writes.insert(eip, LeaseWrite::Acquire);
                }
                // Someone else still holds it: wait for release or expiry.
                Some(lease) if !lease.expired(inputs.now) => {}
                _ => {
                    decision.writes.insert(eip, LeaseWrite::Acquire);
                }
            }
        } else if lease.is_some_and(|lease| held_by(lease, inputs.node, inputs.now)) {
            decision.writes.insert(eip, LeaseWrite::Release);
        }
    }
    // Leases of EIPs that are no longer Layer 2 EIPs (or gone) are released too.
    for (&eip, lease) in inputs.leases {
        if !inputs.candidates.contains_key(&eip) && held_by(lease, inputs.node, inputs.now) {
            decision.writes.insert(eip, LeaseWrite::Release);
        }
    }
    decision
}

#[cfg(test)]
mod tests;

//! The Layer 2 answers: which EIPs the XDP program answers ARP and
//! neighbour solicitations for, on which interface, until when.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use porter_common::{L2Key, L2Value, map_names};
use tracing::debug;

use super::{Dataplane, DataplaneError, map_err, mirror::ignore_missing};
use crate::l2_interface::L2Interface;

impl Dataplane {
    /// Makes XDP answer ARP requests and neighbour solicitations for exactly
    /// the EIPs of `answers` (the Layer 2 EIPs this node leads), each on
    /// every interface it was attached to here, or only on the one named
    /// (`Eip.spec.interface`; an interface XDP is not attached to answers
    /// nothing), with that interface's MAC, for `valid_for` from now (the
    /// rest of this node's lease): a leader that stops renewing stops
    /// answering by itself. Other EIPs stop being answered at once.
    pub fn set_l2_answers(
        &mut self,
        answers: &BTreeMap<IpAddr, Option<String>>,
        valid_for: Duration,
    ) -> Result<(), DataplaneError> {
        let expires_ns = deadline(valid_for)?;
        let desired = answers
            .iter()
            .flat_map(|(&eip, only)| {
                self.l2_interfaces
                    .iter()
                    .filter(move |(name, _)| only.as_ref().is_none_or(|only| only == *name))
                    .map(move |(_, link)| l2_entry(link, eip, expires_ns))
            })
            .collect();
        self.write_l2(desired)
    }

    /// The interfaces Layer 2 answers go out of (those XDP was attached to here).
    pub fn l2_interfaces(&self) -> Vec<L2Interface> {
        self.l2_interfaces.values().copied().collect()
    }

    /// Answers for `eips` on explicit interfaces, as [`Self::set_l2_answers`]
    /// does on the attached ones (e.g. for BPF_PROG_TEST_RUN, whose packets
    /// arrive on loopback).
    pub fn set_l2_leaderships_on(
        &mut self,
        interfaces: &[L2Interface],
        eips: &BTreeSet<IpAddr>,
        valid_for: Duration,
    ) -> Result<(), DataplaneError> {
        let expires_ns = deadline(valid_for)?;
        let desired = interfaces
            .iter()
            .flat_map(|link| eips.iter().map(move |&eip| l2_entry(link, eip, expires_ns)))
            .collect();
        self.write_l2(desired)
    }

    /// Makes the Layer 2 map hold exactly `desired`.
    fn write_l2(&mut self, desired: BTreeMap<L2Key, L2Value>) -> Result<(), DataplaneError> {
        let capacity = porter_common::limits::L2_LEADS;
        if desired.len() > capacity as usize {
            return Err(DataplaneError::L2LeadsFull {
                wanted: desired.len(),
                capacity,
            });
        }
        let mut stale = Vec::new();
        for key in self.l2_leads.keys() {
            let key = key.map_err(map_err(map_names::L2_LEADS))?;
            if !desired.contains_key(&key) {
                stale.push(key);
            }
        }
        // Removals first: the map is sized for what is desired, not for both.
        // Kept entries are overwritten in place (a renewal moves their
        // deadline), so they are answered throughout.
        for key in &stale {
            ignore_missing(self.l2_leads.remove(key)).map_err(map_err(map_names::L2_LEADS))?;
        }
        for (key, value) in &desired {
            self.l2_leads
                .insert(key, value, 0)
                .map_err(map_err(map_names::L2_LEADS))?;
        }
        debug!(answers = desired.len(), "layer 2 answers set");
        Ok(())
    }
}

/// `valid_for` from now on the clock of `bpf_ktime_get_ns`.
fn deadline(valid_for: Duration) -> Result<u64, DataplaneError> {
    Ok(monotonic_ns()
        .map_err(|err| DataplaneError::Clock(err.to_string()))?
        .saturating_add(u64::try_from(valid_for.as_nanos()).unwrap_or(u64::MAX)))
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> std::io::Result<u64> {
    // SAFETY: an all-zero timespec is valid; clock_gettime writes into it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to our own timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64))
}

fn l2_entry(link: &L2Interface, eip: IpAddr, expires_ns: u64) -> (L2Key, L2Value) {
    let (family, addr) = crate::service::encode_ip(eip);
    (
        L2Key {
            addr,
            ifindex: link.ifindex,
            family,
            _pad: [0; 3],
        },
        L2Value {
            mac: link.mac,
            _pad: [0; 2],
            expires_ns,
        },
    )
}

//! The desired paths, in the one shape they keep from the controller (or
//! the agent) to every session: prefix → next hop → attributes.
//!
//! Attributes sit behind `Arc`s. A caller that shares equal sets (the
//! controller interns them: a cluster has a handful of distinct sets, not
//! one per path) hands the speaker those same allocations, the speaker hands
//! them to every session, and a peer whose policy changes nothing sends them
//! without copying. 10,000 EIPs with a few paths each stay small.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use crate::PathAttributes;

/// Prefix → its paths. A prefix with no path is absent, which is what
/// withdraws it.
pub type PathTable = BTreeMap<IpNet, NextHops>;

/// One prefix's paths: next hop → attributes, sorted by next hop. A boxed
/// slice rather than a map: most prefixes have a few paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextHops(Box<[(IpAddr, Arc<PathAttributes>)]>);

impl NextHops {
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Arc<PathAttributes>)> {
        self.0.iter().map(|(hop, attributes)| (hop, attributes))
    }

    pub fn keys(&self) -> impl Iterator<Item = &IpAddr> {
        self.0.iter().map(|(hop, _)| hop)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<PathAttributes>> {
        self.0.iter().map(|(_, attributes)| attributes)
    }

    pub fn get(&self, hop: &IpAddr) -> Option<&Arc<PathAttributes>> {
        self.0
            .binary_search_by(|(h, _)| h.cmp(hop))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(IpAddr, Arc<PathAttributes>)> for NextHops {
    /// The last attributes given for a next hop win.
    fn from_iter<I: IntoIterator<Item = (IpAddr, Arc<PathAttributes>)>>(iter: I) -> Self {
        let map: BTreeMap<IpAddr, Arc<PathAttributes>> = iter.into_iter().collect();
        Self(map.into_iter().collect())
    }
}

impl std::ops::Index<&IpAddr> for NextHops {
    type Output = Arc<PathAttributes>;

    /// Panics when `hop` is not a next hop, as a map's index does.
    fn index(&self, hop: &IpAddr) -> &Self::Output {
        match self.get(hop) {
            Some(attributes) => attributes,
            None => panic!("{hop} is not a next hop"),
        }
    }
}

//! One `Eip` as the IPAM sees it, and the rule that refuses overlapping pools.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::Eip;
use porter_api::annotations::DEFAULT_EIP;

use super::NamespaceLabels;
use super::range::{Family, IpRange};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    Accepted,
    /// Invalid address or overlap: nothing is allocated from it; the reason
    /// goes into its status condition.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub range: Option<IpRange>,
    pub state: PoolState,
    pub disabled: bool,
    pub priority: i32,
    pub namespaces: Vec<String>,
    pub namespace_selector: BTreeMap<String, String>,
    pub is_default: bool,
    /// Creation time: on overlap the older pool is kept.
    pub created: Option<Time>,
    /// Offset where the next search for a free address starts.
    pub(super) cursor: u128,
}

impl Pool {
    pub fn from_eip(eip: &Eip) -> Self {
        let (range, state) = match IpRange::parse(&eip.spec.address) {
            Ok(r) => (Some(r), PoolState::Accepted),
            Err(e) => (None, PoolState::Refused(e.to_string())),
        };
        Self {
            name: eip.metadata.name.clone().unwrap_or_default(),
            range,
            state,
            disabled: eip.spec.disable,
            priority: eip.spec.priority,
            namespaces: eip.spec.namespaces.clone(),
            namespace_selector: eip.spec.namespace_selector.clone(),
            is_default: DEFAULT_EIP
                .get(eip.metadata.annotations.as_ref())
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            created: eip.metadata.creation_timestamp.clone(),
            cursor: 0,
        }
    }

    pub fn family(&self) -> Option<Family> {
        self.range.map(|r| r.family)
    }

    /// Reserved for some namespaces.
    pub fn restricted(&self) -> bool {
        !self.namespaces.is_empty() || !self.namespace_selector.is_empty()
    }

    /// Whether Services of `namespace` may be given addresses from it.
    pub fn open_to(&self, namespace: &str, labels: &NamespaceLabels) -> bool {
        if !self.restricted() {
            return true;
        }
        if self.namespaces.iter().any(|n| n == namespace) {
            return true;
        }
        !self.namespace_selector.is_empty()
            && labels.get(namespace).is_some_and(|l| {
                self.namespace_selector
                    .iter()
                    .all(|(k, v)| l.get(k) == Some(v))
            })
    }

    pub(super) fn inherit_cursor(&mut self, old: &Pool) {
        if old.range == self.range {
            self.cursor = old.cursor;
        }
    }
}

/// Refuses every pool that overlaps an older accepted one (ties by name), so
/// that one address never belongs to two pools.
pub(super) fn accept(mut pools: Vec<Pool>) -> BTreeMap<String, Pool> {
    pools.sort_by(|a, b| {
        let at = a.created.as_ref().map(|t| t.0);
        let bt = b.created.as_ref().map(|t| t.0);
        // Objects without a timestamp (manifests) come after those with one.
        (at.is_none(), at, &a.name).cmp(&(bt.is_none(), bt, &b.name))
    });
    let mut accepted: Vec<(String, IpRange)> = Vec::new();
    let mut out = BTreeMap::new();
    for mut pool in pools {
        if let (PoolState::Accepted, Some(range)) = (&pool.state, pool.range) {
            match accepted.iter().find(|(_, r)| r.overlaps(&range)) {
                Some((other, _)) => {
                    pool.state = PoolState::Refused(format!(
                        "address overlaps pool `{other}`; change one of them"
                    ))
                }
                None => accepted.push((pool.name.clone(), range)),
            }
        }
        out.insert(pool.name.clone(), pool);
    }
    out
}

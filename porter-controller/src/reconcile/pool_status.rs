//! What an `Eip` (a pool) shows in its status: its Ready condition, the
//! addresses in use and by whom, and why an edit of its range is held.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use porter_api::bgp_policy::{self, PolicyError};
use porter_api::{EipStatus, ObjectKey};

use super::CONDITION_CHANGE_PENDING;
use crate::ipam::{HeldEdit, Ipam, Pool, PoolState};

pub(super) fn held_message(pool: &Pool, held: &HeldEdit) -> String {
    const NAMED: usize = 5;
    let mut in_the_way: Vec<String> = held
        .in_the_way
        .iter()
        .take(NAMED)
        .map(|(ip, keys)| {
            let keys: Vec<String> = keys.iter().map(ObjectKey::to_string).collect();
            format!("{ip} ({})", keys.join(", "))
        })
        .collect();
    if held.in_the_way.len() > NAMED {
        in_the_way.push(format!("and {} more", held.in_the_way.len() - NAMED));
    }
    let range = pool
        .range
        .map(|r| format!("{}-{}", r.first(), r.last()))
        .unwrap_or_default();
    let why = match &held.invalid {
        Some(why) => why.clone(),
        None if held.in_the_way.iter().any(|(ip, _)| pool.edges.contains(ip)) => {
            "addresses in use would fall outside it (a CIDR leaves out its network and broadcast addresses unless spec.includeNetworkAndBroadcast is true)".into()
        }
        None => "addresses in use would fall outside it".into(),
    };
    let offer = match pool.offered() {
        Some(r) if r.first() == r.last() => format!("new addresses come only from {}", r.first()),
        Some(r) => format!("new addresses come only from {}-{}", r.first(), r.last()),
        None => "no new addresses are handed out from it".into(),
    };
    format!(
        "spec.address `{}` is not applied: {why}. The pool keeps {range} while addresses it would lose are in use: {}; {offer}. The change applies once they are released",
        pool.address,
        in_the_way.join(", ")
    )
}

pub(super) fn join_errors(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(PolicyError::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The Ready condition: status, reason and a message that says what is
/// true. A disabled or full pool is still Ready (valid and in force, keeping
/// what it gave); its reason says why it gives nothing new.
pub(super) fn ready_condition(
    pool: &Pool,
    used: usize,
    size: u128,
) -> (bool, &'static str, String) {
    match &pool.state {
        PoolState::Refused(why) => (false, "Refused", why.clone()),
        PoolState::Accepted if pool.disabled => (
            true,
            "Disabled",
            format!("spec.disable is set: no new addresses are handed out; the {used} in use stay"),
        ),
        PoolState::Accepted if used as u128 >= size => (
            true,
            "Exhausted",
            format!(
                "every address is in use ({used} of {size}); Services without one wait until one is released"
            ),
        ),
        PoolState::Accepted => (true, "Accepted", "addresses can be allocated".to_string()),
    }
}

/// The status an `Eip` should show. The Ready condition keeps its transition
/// time while its status stays the same, so an unchanged pool is not rewritten.
pub fn eip_status(
    pool: &Pool,
    ipam: &Ipam,
    prev: Option<&EipStatus>,
    generation: Option<i64>,
    policy_errors: &[PolicyError],
    now: &Time,
) -> EipStatus {
    let used: BTreeMap<String, String> = ipam
        .used_in(&pool.name)
        .into_iter()
        .map(|(ip, users)| {
            (
                ip.to_string(),
                users
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(";"),
            )
        })
        .collect();
    let size = pool.range.map_or(0, |r| r.size());
    let (ready, reason, message) = ready_condition(pool, used.len(), size);
    let status_word = if ready { "True" } else { "False" };
    // A condition keeps its transition time while its status stays.
    let since = |type_: &str, status: &str| {
        prev.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone())
    };
    let transition = since("Ready", status_word);
    let mut conditions = vec![Condition {
        type_: "Ready".into(),
        status: status_word.into(),
        reason: reason.into(),
        message,
        last_transition_time: transition,
        observed_generation: generation,
    }];
    // Only while an edit waits, as the pool itself keeps working.
    if let Some(held) = &pool.held {
        conditions.push(Condition {
            type_: CONDITION_CHANGE_PENDING.into(),
            status: "True".into(),
            reason: if held.invalid.is_some() {
                "AddressUnusable"
            } else {
                "AddressesInUse"
            }
            .into(),
            message: held_message(pool, held),
            last_transition_time: since(CONDITION_CHANGE_PENDING, "True"),
            observed_generation: generation,
        });
    }
    // Only while something is wrong, as the pool itself keeps working.
    if !policy_errors.is_empty() {
        conditions.push(Condition {
            type_: bgp_policy::REASON_INVALID.into(),
            status: "True".into(),
            reason: "UnreadableValues".into(),
            message: format!(
                "{}; these values are left out and the rest of spec.bgp applies",
                join_errors(policy_errors)
            ),
            last_transition_time: since(bgp_policy::REASON_INVALID, "True"),
            observed_generation: generation,
        });
    }
    EipStatus {
        occupied: size > 0 && used.len() as u128 >= size,
        usage: used.len() as i64,
        pool_size: i64::try_from(size).unwrap_or(i64::MAX),
        first_ip: pool.range.map(|r| r.first().to_string()),
        last_ip: pool.range.map(|r| r.last().to_string()),
        v4: pool.family() == Some(crate::ip_family::IpFamily::V4),
        ready,
        used,
        // Set by the Layer 2 pass; kept here so that an unchanged pool compares equal.
        layer2_announcers: prev
            .map(|p| p.layer2_announcers.clone())
            .unwrap_or_default(),
        layer2_nodes: prev.map(|p| p.layer2_nodes.clone()).unwrap_or_default(),
        conditions,
    }
}

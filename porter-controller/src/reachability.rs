//! The leader's word on each node's liveness (central mode), published as
//! the Node condition `PorterNodeReachable` (`porter_api::node_reachability`)
//! so that what the check found does not live only in the leader's memory:
//! `porter-controller explain` reads it, and so does `kubectl describe node`.
//! Pure: which conditions to write, given the check's states and what the
//! Nodes show. Written only on a change.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use porter_api::node_reachability::{Reachability, published};

use crate::node_check::State;

/// What the condition says for a node the check is in `state` for (`None`:
/// not a target).
pub fn reachability(state: Option<State>) -> Reachability {
    match state {
        Some(State::Up) => Reachability::Up,
        Some(State::Down) => Reachability::Down,
        Some(State::Recovering) => Reachability::Recovering,
        Some(State::Unchecked) => Reachability::Unchecked,
        None => Reachability::NotChecked,
    }
}

/// The nodes whose condition must change, with what it must say: the
/// check's state where the Node shows another. A Node that has never had
/// the condition gets none while it is not checked (node mode, the check
/// off, no path). Read from the Nodes at each pass rather than remembered,
/// so a write that was lost (another writer of the Node's status won a
/// race) is made again; one the watch has not brought back yet may be
/// repeated, which changes nothing.
pub fn changes(
    nodes: &[Arc<Node>],
    states: &BTreeMap<String, State>,
) -> Vec<(String, Reachability)> {
    nodes
        .iter()
        .filter_map(|node| {
            let name = node.metadata.name.as_deref()?;
            let wanted = reachability(states.get(name).copied());
            let shown = published(node);
            let unchanged =
                shown == Some(wanted) || (shown.is_none() && wanted == Reachability::NotChecked);
            (!unchanged).then(|| (name.to_owned(), wanted))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;
    use porter_api::node_dataplane::merge;

    fn showing(name: &str, state: Option<Reachability>) -> Arc<Node> {
        let mut n = node(name, "True", &["192.168.1.1"]);
        if let (Some(state), Some(status)) = (state, n.status.as_mut()) {
            merge(
                status.conditions.get_or_insert_with(Vec::new),
                state.condition(),
            );
        }
        Arc::new(n)
    }

    #[test]
    fn every_state_maps_to_its_condition() {
        let cases = [
            (Some(State::Up), Reachability::Up),
            (Some(State::Down), Reachability::Down),
            (Some(State::Recovering), Reachability::Recovering),
            (Some(State::Unchecked), Reachability::Unchecked),
            (None, Reachability::NotChecked),
        ];
        for (state, want) in cases {
            assert_eq!(reachability(state), want, "{state:?}");
        }
    }

    #[test]
    fn written_where_the_node_says_otherwise_and_never_on_a_node_never_checked() {
        let states: BTreeMap<String, State> = [("n1".to_string(), State::Down)].into();
        let nodes = [showing("n1", Some(Reachability::Up)), showing("n2", None)];
        assert_eq!(
            changes(&nodes, &states),
            [("n1".to_string(), Reachability::Down)],
            "n2 is not checked and never was: nothing to say"
        );
        let caught_up = [showing("n1", Some(Reachability::Down)), showing("n2", None)];
        assert!(changes(&caught_up, &states).is_empty(), "nothing new");
        // The check stops (node mode, or n1 has no path left): n1 says so.
        assert_eq!(
            changes(&caught_up, &BTreeMap::new()),
            [("n1".to_string(), Reachability::NotChecked)]
        );
    }
}

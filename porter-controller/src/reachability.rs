//! The leader's word on each node's liveness (central mode), published as
//! the Node condition `PorterNodeReachable` (`porter_api::node_reachability`)
//! so that what the check found does not live only in the leader's memory:
//! `porter-controller explain` reads it, and so does `kubectl describe node`.
//! Pure: which conditions to write, given the check's states and what the
//! Nodes show. Written only on a change.

use std::collections::{BTreeMap, HashMap};
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

/// What this leader wrote and the Nodes may not show yet.
#[derive(Debug, Default)]
pub struct ReachabilityPublisher {
    written: HashMap<String, Reachability>,
}

impl ReachabilityPublisher {
    /// A new leadership term starts from what the Nodes show.
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// The nodes whose condition must change, with what it must say: the
    /// check's state where it differs from what the Node shows and from
    /// what was written last. A Node that has never had the condition gets
    /// none while it is not checked (node mode, the check off, no path).
    pub fn changes(
        &mut self,
        nodes: &[Arc<Node>],
        states: &BTreeMap<String, State>,
    ) -> Vec<(String, Reachability)> {
        let mut changes = Vec::new();
        let mut awaited = HashMap::new();
        for node in nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            let wanted = reachability(states.get(name).copied());
            let shown = published(node);
            if shown == Some(wanted) || (shown.is_none() && wanted == Reachability::NotChecked) {
                continue;
            }
            if self.written.get(name) != Some(&wanted) {
                changes.push((name.to_owned(), wanted));
            } else {
                // Written, not back through the watch yet.
                awaited.insert(name.to_owned(), wanted);
            }
        }
        self.written = awaited;
        changes
    }

    /// `node`'s condition now says `state`.
    pub fn wrote(&mut self, node: String, state: Reachability) {
        self.written.insert(node, state);
    }
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
    fn written_once_per_change_and_never_on_a_node_that_was_never_checked() {
        let mut publisher = ReachabilityPublisher::default();
        let states: BTreeMap<String, State> = [("n1".to_string(), State::Down)].into();
        let nodes = [showing("n1", Some(Reachability::Up)), showing("n2", None)];
        assert_eq!(
            publisher.changes(&nodes, &states),
            [("n1".to_string(), Reachability::Down)],
            "n2 is not checked and never was: nothing to say"
        );
        publisher.wrote("n1".into(), Reachability::Down);
        assert!(
            publisher.changes(&nodes, &states).is_empty(),
            "written, the watch has not caught up: not again"
        );
        let caught_up = [showing("n1", Some(Reachability::Down)), showing("n2", None)];
        assert!(publisher.changes(&caught_up, &states).is_empty());
        // The check stops (node mode, or n1 has no path left): n1 says so.
        assert_eq!(
            publisher.changes(&caught_up, &BTreeMap::new()),
            [("n1".to_string(), Reachability::NotChecked)]
        );
        // A new leader's first pass, and a failed write, write again.
        publisher.forget();
        assert_eq!(
            publisher.changes(&caught_up, &BTreeMap::new()),
            [("n1".to_string(), Reachability::NotChecked)]
        );
    }
}

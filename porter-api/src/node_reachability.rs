//! What the leader controller's liveness check (central mode, docs/bfd.md)
//! found for each node, published as the Node condition [`CONDITION`] so
//! that `porter-controller explain`, `kubectl describe node` and the other
//! replicas can read what otherwise lives only in the leader's memory. The
//! leader writes it when a node's state changes; `False` is a node whose
//! paths the check withdrew.

use k8s_openapi::api::core::v1::{Node, NodeCondition};

use crate::node_dataplane::{condition_of, new_condition};

/// The condition type, beside the kubelet's `Ready` and the agent's
/// `PorterDataplaneReady`.
pub const CONDITION: &str = "PorterNodeReachable";

/// What the check says about a node: the condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Answers the probe: announced.
    Up,
    /// Stopped answering: withdrawn.
    Down,
    /// Answers again, not yet for the hold time: still withdrawn.
    Recovering,
    /// Has not answered since it became a target: announced, unchecked.
    Unchecked,
    /// Not a target of the check (no path to check, the check is off, or
    /// the BGP speaker runs on the nodes): nothing withdrawn.
    NotChecked,
}

impl Reachability {
    pub const ALL: [Reachability; 5] = [
        Reachability::Up,
        Reachability::Down,
        Reachability::Recovering,
        Reachability::Unchecked,
        Reachability::NotChecked,
    ];

    /// The condition's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Reachability::Up => "Up",
            Reachability::Down => "Down",
            Reachability::Recovering => "Recovering",
            Reachability::Unchecked => "Unchecked",
            Reachability::NotChecked => "NotChecked",
        }
    }

    /// The condition's status: `False` exactly when the paths are withdrawn.
    pub fn status(self) -> &'static str {
        match self {
            Reachability::Up => "True",
            Reachability::Down | Reachability::Recovering => "False",
            Reachability::Unchecked | Reachability::NotChecked => "Unknown",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reachability::Up => "the node's data plane answers the leader's liveness probe",
            Reachability::Down => {
                "the node's data plane stopped answering the leader's liveness probe: its paths are withdrawn"
            }
            Reachability::Recovering => {
                "the node answers the liveness probe again; its paths stay withdrawn until it has answered for the hold time"
            }
            Reachability::Unchecked => {
                "the node has not answered the liveness probe since it became a next hop: it stays announced, unchecked"
            }
            Reachability::NotChecked => "the leader does not check this node: nothing is withdrawn",
        }
    }

    /// The condition the leader writes for this state.
    pub fn condition(self) -> NodeCondition {
        new_condition(CONDITION, self.status(), self.reason(), self.message())
    }

    /// The state a published condition says, if it is one of ours.
    pub fn of(condition: &NodeCondition) -> Option<Self> {
        Self::ALL.into_iter().find(|r| {
            condition.reason.as_deref() == Some(r.reason()) && condition.status == r.status()
        })
    }
}

/// The state the leader last published on `node`, if any.
pub fn published(node: &Node) -> Option<Reachability> {
    condition_of(node, CONDITION).and_then(Reachability::of)
}

/// Whether the leader's check has the node's paths withdrawn.
pub fn withdrawn(node: &Node) -> bool {
    condition_of(node, CONDITION).is_some_and(|c| c.status == "False")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeStatus;

    fn with(condition: NodeCondition) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(vec![condition]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_state_reads_back_and_only_down_and_recovering_withdraw() {
        for state in Reachability::ALL {
            let node = with(state.condition());
            assert_eq!(published(&node), Some(state), "{state:?}");
            let expected = matches!(state, Reachability::Down | Reachability::Recovering);
            assert_eq!(withdrawn(&node), expected, "{state:?}");
        }
        assert_eq!(published(&Node::default()), None);
        assert!(!withdrawn(&Node::default()));
        let foreign = with(new_condition(CONDITION, "False", "SomethingElse", ""));
        assert_eq!(published(&foreign), None, "not a reason of ours");
        assert!(withdrawn(&foreign), "False withdraws whatever the reason");
    }
}

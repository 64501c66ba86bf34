//! Whether a node's Porter data plane can serve, as its agent publishes it:
//! the Node condition [`CONDITION`]. An agent that cannot program its node
//! (a newer pin layout it cannot adopt, pinned maps of other sizes, maps it
//! cannot write) sets it `False`, and the controller withdraws the node's
//! paths and the agents stop choosing it as a Layer 2 leader; a working agent
//! sets it `True` again. A node without the condition (no agent yet, or one
//! from before it existed) is not withdrawn: only a `False` withdraws.
//! See docs/agent.md ("When the data plane cannot be programmed").

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The condition type, beside the kubelet's `Ready`.
pub const CONDITION: &str = "PorterDataplaneReady";

/// The reason of a `True` condition.
pub const REASON_READY: &str = "DataplaneReady";

/// The agent's published condition on `node`, if any.
pub fn published(node: &Node) -> Option<&NodeCondition> {
    condition_of(node, CONDITION)
}

/// `node`'s condition of type `type_`, if it has one.
pub fn condition_of<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the node's agent says its data plane cannot serve. Absent or
/// `Unknown` is not withdrawn: an agent that never published keeps the
/// node's paths, as before the condition existed.
pub fn withdrawn(node: &Node) -> bool {
    published(node).is_some_and(|c| c.status == "False")
}

/// The condition an agent publishes: `True` with [`REASON_READY`], or
/// `False` with why (`reason`, CamelCase) and what to do (`message`).
pub fn condition(ready: bool, reason: &str, message: &str) -> NodeCondition {
    new_condition(
        CONDITION,
        if ready { "True" } else { "False" },
        reason,
        message,
    )
}

/// A Node condition as Porter writes them: only when its state changes, so
/// now is both its transition and its heartbeat.
pub fn new_condition(type_: &str, status: &str, reason: &str, message: &str) -> NodeCondition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    }
}

/// `conditions` with `condition` in place of the one of its type (or
/// added): how the API server merges a node status patch.
pub fn merge(conditions: &mut Vec<NodeCondition>, condition: NodeCondition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeStatus;

    fn node(conditions: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, status)| NodeCondition {
                            type_: (*type_).to_owned(),
                            status: (*status).to_owned(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_false_condition_withdraws() {
        let cases = [
            ("no status at all", Node::default(), false),
            (
                "only the kubelet's Ready",
                node(&[("Ready", "True")]),
                false,
            ),
            ("agent says True", node(&[(CONDITION, "True")]), false),
            ("agent says Unknown", node(&[(CONDITION, "Unknown")]), false),
            (
                "agent says False",
                node(&[("Ready", "True"), (CONDITION, "False")]),
                true,
            ),
        ];
        for (name, node, want) in cases {
            assert_eq!(withdrawn(&node), want, "{name}");
        }
    }

    #[test]
    fn merge_replaces_the_condition_of_its_type_and_keeps_the_others() {
        let mut conditions = node(&[("Ready", "True"), (CONDITION, "True")])
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        merge(
            &mut conditions,
            condition(false, "NewerPinLayout", "roll forward"),
        );
        let summary: Vec<(&str, &str)> = conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(summary, [("Ready", "True"), (CONDITION, "False")]);
        assert_eq!(conditions[1].reason.as_deref(), Some("NewerPinLayout"));
        let mut empty = Vec::new();
        merge(&mut empty, condition(true, REASON_READY, "serving"));
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].status, "True");
    }
}

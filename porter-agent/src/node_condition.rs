//! Publishing the agent's verdict on its data plane where the controller
//! and the other agents read it: the Node condition
//! [`porter_api::node_dataplane::CONDITION`] (`False` withdraws the node's
//! paths and its Layer 2 leadership), with an Event on the Node when the
//! state changes. Written only on a change, and again after a failed write.
use k8s_openapi::api::core::v1::NodeCondition;
use porter_api::{
    node_dataplane::{self, REASON_READY},
    source::{Event, EventType, Regarding},
};
use tracing::{info, warn};

use crate::{frozen::Verdict, writer::ClusterWriter};

/// The Warning Event of a node withdrawn for its data plane.
pub const REASON_FROZEN: &str = "DataplaneFrozen";

/// What to write for a verdict: the condition, and the Event if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub condition: NodeCondition,
    pub event: Option<Event>,
}

/// The condition's status and reason, what a change is judged by.
type Said = (String, Option<String>);

fn said(condition: &NodeCondition) -> Said {
    (condition.status.clone(), condition.reason.clone())
}

/// What `verdict` asks to write, given what this agent last wrote
/// (`written`) and what the Node shows (`published`, e.g. from an agent
/// before this one). `None`: nothing to write.
///
/// A frozen verdict is written with a Warning Event unless the Node already
/// says the same (an agent restarted into the same problem). A ready one
/// is written at start, with a Normal Event when it ends a frozen state.
pub fn change(
    node: &str,
    verdict: &Verdict,
    written: Option<&NodeCondition>,
    published: Option<&NodeCondition>,
) -> Option<Change> {
    let (ready, reason, message) = match verdict {
        Verdict::Starting => return None,
        Verdict::Ready => (
            true,
            REASON_READY,
            "the Porter agent programs this node's data plane".to_owned(),
        ),
        Verdict::Frozen { reason, message } => (false, reason.as_str(), message.clone()),
    };
    let condition = node_dataplane::condition(ready, reason, &message);
    let wanted = said(&condition);
    if written.map(said).as_ref() == Some(&wanted) {
        return None;
    }
    // A restarted agent finds its predecessor's word, and keeps it (and its
    // transition time) when it has nothing new to say.
    let unchanged = published
        .is_some_and(|p| said(p) == wanted && p.message.as_deref() == Some(message.as_str()));
    if written.is_none() && unchanged {
        return None;
    }
    let was_frozen = [written, published]
        .into_iter()
        .flatten()
        .any(|c| c.status == "False");
    let already_published = published.map(said).as_ref() == Some(&wanted);
    let event = match ready {
        false if !already_published => Some((EventType::Warning, REASON_FROZEN, message)),
        true if was_frozen => Some((
            EventType::Normal,
            REASON_READY,
            "the data plane is programmed again; the node's paths return".to_owned(),
        )),
        _ => None,
    };
    Some(Change {
        condition,
        event: event.map(|(type_, reason, message)| Event {
            regarding: Regarding::Node(node.to_owned()),
            type_,
            reason,
            message,
        }),
    })
}

/// Writes verdicts for one node.
pub struct Publisher {
    node: String,
    writer: ClusterWriter,
    /// The condition last written successfully.
    written: Option<NodeCondition>,
    /// The last write failure, logged once rather than at every pass.
    failing: Option<String>,
}

impl Publisher {
    pub fn new(node: String, writer: ClusterWriter) -> Self {
        Self {
            node,
            writer,
            written: None,
            failing: None,
        }
    }

    /// Writes what [`change`] asks for; a failed write is retried at the
    /// next call.
    pub async fn publish(&mut self, verdict: &Verdict, published: Option<&NodeCondition>) {
        let Some(change) = change(&self.node, verdict, self.written.as_ref(), published) else {
            return;
        };
        if let Err(err) = self
            .writer
            .node_condition(&self.node, &change.condition)
            .await
        {
            let err = err.to_string();
            if self.failing.as_ref() != Some(&err) {
                warn!(node = %self.node, error = %err, condition = node_dataplane::CONDITION,
                    "cannot publish the data plane state on the Node; retrying at the next pass");
                self.failing = Some(err);
            }
            return;
        }
        self.failing = None;
        info!(node = %self.node, condition = node_dataplane::CONDITION,
            status = %change.condition.status, reason = ?change.condition.reason,
            "published the data plane state on the Node");
        if let Some(event) = &change.event
            && let Err(err) = self.writer.event(event).await
        {
            warn!(node = %self.node, error = %err, reason = event.reason, "cannot create the Event");
        }
        self.written = Some(change.condition);
    }
}

#[cfg(test)]
mod tests {
    use porter_api::source::kube::KubeWriter;
    use porter_api::testing::{mock_client, seen};

    use super::*;
    use crate::frozen::Reason;

    fn frozen(reason: Reason) -> Verdict {
        Verdict::Frozen {
            reason,
            message: format!("{} happened; do this", reason.as_str()),
        }
    }

    fn event_of(change: Option<Change>) -> Option<(EventType, &'static str)> {
        change.expect("a change").event.map(|e| (e.type_, e.reason))
    }

    #[test]
    fn events_mark_the_changes_and_nothing_is_written_twice() {
        let frozen_cond = node_dataplane::condition(false, "NewerPinLayout", "x");
        let ready_cond = node_dataplane::condition(true, REASON_READY, "x");
        let newer = frozen(Reason::NewerPinLayout);
        assert_eq!(change("n1", &Verdict::Starting, None, None), None);
        assert_eq!(
            event_of(change("n1", &newer, None, None)),
            Some((EventType::Warning, REASON_FROZEN))
        );
        assert_eq!(
            event_of(change("n1", &newer, None, Some(&frozen_cond))),
            None,
            "a restarted agent in the same state, saying it otherwise, rewrites without a second Warning"
        );
        let same_words =
            node_dataplane::condition(false, "NewerPinLayout", "NewerPinLayout happened; do this");
        assert_eq!(
            change("n1", &newer, None, Some(&same_words)),
            None,
            "nor writes at all when it has nothing new to say"
        );
        let ready_words = change("n1", &Verdict::Ready, None, None).expect("a change");
        assert_eq!(
            change("n1", &Verdict::Ready, None, Some(&ready_words.condition)),
            None,
            "a restarted working agent leaves True as it is"
        );
        assert_eq!(change("n1", &newer, Some(&frozen_cond), None), None);
        assert_eq!(
            event_of(change(
                "n1",
                &frozen(Reason::MapSizeMismatch),
                Some(&frozen_cond),
                Some(&frozen_cond)
            )),
            Some((EventType::Warning, REASON_FROZEN)),
            "another reason is news"
        );
        assert_eq!(
            event_of(change("n1", &Verdict::Ready, None, None)),
            None,
            "a fresh node says ready without an Event"
        );
        assert_eq!(
            event_of(change("n1", &Verdict::Ready, None, Some(&frozen_cond))),
            Some((EventType::Normal, REASON_READY)),
            "a working agent over a frozen node announces its return"
        );
        assert_eq!(change("n1", &Verdict::Ready, Some(&ready_cond), None), None);
        let change = change("n1", &newer, Some(&ready_cond), None).expect("a change");
        assert_eq!(change.condition.status, "False");
        assert_eq!(change.condition.reason.as_deref(), Some("NewerPinLayout"));
        let event = change.event.expect("an event");
        assert_eq!(event.regarding, Regarding::Node("n1".into()));
        assert_eq!(event.message, "NewerPinLayout happened; do this");
    }

    /// The writes as the API server sees them: a strategic merge patch of
    /// the node's status holding only Porter's condition, then the Event;
    /// nothing more while the verdict stands; the return to ready likewise.
    #[tokio::test]
    async fn the_agent_patches_its_node_status_and_creates_events() {
        let (client, log) = mock_client(|request| {
            if request.uri.contains("/events") {
                serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                    "metadata": {"name": "x", "namespace": "default"},
                    "eventTime": "2026-01-01T00:00:00.000000Z"})
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
            }
        });
        let writer = ClusterWriter::Kube(Box::new(KubeWriter::new(client, None, None)));
        let mut publisher = Publisher::new("n1".into(), writer);
        let newer = frozen(Reason::NewerPinLayout);
        publisher.publish(&newer, None).await;
        publisher.publish(&newer, None).await;
        let requests = seen(&log);
        assert_eq!(requests.len(), 2, "{requests:?}");
        let patch = &requests[0];
        assert_eq!(patch.method, http::Method::PATCH);
        assert!(
            patch.uri.starts_with("/api/v1/nodes/n1/status"),
            "{}",
            patch.uri
        );
        assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
        let conditions = patch.body["status"]["conditions"]
            .as_array()
            .expect("conditions");
        assert_eq!(
            conditions.len(),
            1,
            "only Porter's condition: {conditions:?}"
        );
        assert_eq!(conditions[0]["type"], node_dataplane::CONDITION);
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["reason"], "NewerPinLayout");
        assert_eq!(conditions[0]["message"], "NewerPinLayout happened; do this");
        let event = &requests[1];
        assert_eq!(event.method, http::Method::POST);
        // Events about cluster-scoped objects go to `default`, as the kubelet's.
        let events_of_default = "/apis/events.k8s.io/v1/namespaces/default/events";
        assert!(event.uri.starts_with(events_of_default), "{}", event.uri);
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], REASON_FROZEN);
        assert_eq!(event.body["regarding"]["kind"], "Node");
        assert_eq!(event.body["regarding"]["name"], "n1");

        publisher.publish(&Verdict::Ready, None).await;
        let requests = seen(&log);
        assert_eq!(requests.len(), 4, "{requests:?}");
        assert_eq!(
            requests[2].body["status"]["conditions"][0]["status"],
            "True"
        );
        assert_eq!(requests[3].body["type"], "Normal");
        assert_eq!(requests[3].body["reason"], REASON_READY);
    }

    #[tokio::test]
    async fn a_refused_write_is_retried_at_the_next_pass() {
        let (client, log) = porter_api::testing::mock_client_with_status(|_| {
            (
                403,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403, "message": "nodes/status is forbidden"}),
            )
        });
        let writer = ClusterWriter::Kube(Box::new(KubeWriter::new(client, None, None)));
        let mut publisher = Publisher::new("n1".into(), writer);
        let newer = frozen(Reason::NewerPinLayout);
        publisher.publish(&newer, None).await;
        publisher.publish(&newer, None).await;
        let patches = seen(&log)
            .iter()
            .filter(|r| r.method == http::Method::PATCH)
            .count();
        assert_eq!(patches, 2, "no Event without the condition, and a retry");
        assert_eq!(seen(&log).len(), 2);
    }
}

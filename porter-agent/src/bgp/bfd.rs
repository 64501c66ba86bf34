//! Node mode's BFD: porter-api's [`SpeakerBfd`] beside the node's speaker,
//! its Events written as the agent writes any.
use std::sync::Arc;

use porter_api::bgp_bfd::SpeakerBfd;
use porter_bgp::Speaker;
use tokio::sync::mpsc;
use tracing::warn;

use crate::writer::ClusterWriter;

/// Starts BFD for `node`'s speaker; its Events go to `writer`.
pub fn start(node: &str, speaker: Speaker, writer: Arc<ClusterWriter>) -> SpeakerBfd {
    let (events, mut queued) = mpsc::unbounded_channel();
    let owner = node.to_owned();
    tokio::spawn(async move {
        while let Some(event) = queued.recv().await {
            if let Err(error) = writer.event(&event).await {
                warn!(node = %owner, %error, "cannot write the BFD Event");
            }
        }
    });
    SpeakerBfd::start(format!("node {node}"), speaker, events)
}

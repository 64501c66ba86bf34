//! Node mode (`BgpConf.spec.speakerMode: node`, docs/bgp-policy.md §5):
//! this agent runs its own porter-bgp speaker, peers with the BgpPeers whose
//! `nodeSelector` matches its node, and announces the EIPs its data plane
//! serves (≥ 1 ready local endpoint) with itself as the next hop.
//!
//! Sessions change one at a time as BgpPeers and node labels change. On a
//! normal stop the speaker closes its sessions; with graceful restart (on
//! by default in BgpConf) it closes them without a NOTIFICATION, so the
//! routers keep this node's routes for the restart time while the pinned
//! data plane goes on serving, and the next agent (which opens with the
//! restart flag) takes them over without a gap. Without graceful restart
//! the routers withdraw them at once.
pub mod bfd;
pub mod metrics;
pub mod wanted;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use porter_api::{
    BgpPeerNodeStatus,
    bgp_bfd::SpeakerBfd,
    bgp_config::{Note, SpeakerConfig, fresh_notes, status_changes},
    peer_auth::SecretScope,
    source::Snapshot,
};
use porter_bgp::{PathTable, Speaker};
use tracing::{error, info, warn};

use self::{
    metrics::BgpMetrics,
    wanted::{SelectedPeer, node_bgp, node_paths, status_entry, unnegotiated_families},
};
use crate::{LocalService, writer::ClusterWriter};

/// This node's speaker and what it last applied.
pub struct NodeSpeaker {
    node: String,
    writer: Arc<ClusterWriter>,
    metrics: BgpMetrics,
    running: Option<(SpeakerConfig, Speaker)>,
    /// BFD beside the running speaker.
    bfd: Option<SpeakerBfd>,
    peers: BTreeMap<IpAddr, SelectedPeer>,
    paths: Option<PathTable>,
    notes: Vec<Note>,
    /// Where BgpPeer password Secrets are read.
    secrets: SecretScope,
}

impl NodeSpeaker {
    pub fn new(node: String, writer: ClusterWriter, metrics: BgpMetrics) -> Self {
        Self {
            node,
            writer: Arc::new(writer),
            metrics,
            running: None,
            bfd: None,
            peers: BTreeMap::new(),
            paths: None,
            notes: Vec::new(),
            secrets: SecretScope::default(),
        }
    }
    /// Where BgpPeer password Secrets are read (default: `porter-system`).
    pub fn with_secret_scope(mut self, secrets: SecretScope) -> Self {
        self.secrets = secrets;
        self
    }

    /// Brings the speaker to `snapshot` with `served` (the services the data
    /// plane serves now), then reports the sessions. Idle outside node mode,
    /// apart from removing this node's stale status entries.
    pub async fn step(&mut self, snapshot: &Snapshot, served: &[LocalService]) {
        let mut wanted = node_bgp(snapshot, &self.node, &self.secrets);
        let mut notes = std::mem::take(&mut wanted.notes);
        if self.running.as_ref().map(|(c, _)| c) != wanted.speaker.as_ref() {
            self.restart(wanted.speaker.clone()).await;
        }
        let mut sessions = Vec::new();
        if let Some((_, speaker)) = &self.running {
            // Paths before peers: a session that comes up finds the full
            // set and sends it before its End-of-RIB, so a graceful-restart
            // helper never flushes routes it still holds from our
            // predecessor.
            let paths = node_paths(snapshot, &wanted, served);
            notes.extend(unnegotiated_families(&self.node, &wanted, &paths));
            if self.paths.as_ref() != Some(&paths) {
                info!(node = %self.node, prefixes = paths.len(), "node paths updated");
                speaker.set_paths(paths.clone()).await;
                self.paths = Some(paths);
            }
            let gone: Vec<IpAddr> = self
                .peers
                .keys()
                // A held peer (password unreadable now) keeps its session.
                .filter(|a| !wanted.peers.contains_key(a) && !wanted.held.contains(a))
                .copied()
                .collect();
            for address in gone {
                speaker.remove_peer(address).await;
                self.peers.remove(&address);
            }
            for (address, peer) in wanted.peers {
                if self.peers.get(&address) != Some(&peer) {
                    speaker.upsert_peer(peer.config.clone()).await;
                    self.peers.insert(address, peer);
                }
            }
            sessions = speaker.peer_status().await;
        }
        let bfd_states = self.step_bfd().await;
        self.log_notes(notes);
        self.metrics.sessions(&self.node, &sessions);
        self.metrics.bfd(
            &self.node,
            &bfd_states,
            self.bfd.as_ref().map(SpeakerBfd::counters),
        );
        self.report(snapshot, &sessions, &bfd_states).await;
    }

    /// Brings the BFD sessions to the selected peers' `spec.bfd`, and
    /// returns each session's state text by neighbour.
    async fn step_bfd(&mut self) -> BTreeMap<IpAddr, String> {
        let wanted: BTreeMap<IpAddr, (String, porter_bfd::PeerConfig)> = self
            .peers
            .iter()
            .filter_map(|(address, peer)| Some((*address, (peer.name.clone(), peer.bfd?))))
            .collect();
        let Some((_, speaker)) = &self.running else {
            return BTreeMap::new();
        };
        if wanted.is_empty() && self.bfd.is_none() {
            return BTreeMap::new();
        }
        let bfd = self
            .bfd
            .get_or_insert_with(|| bfd::start(&self.node, speaker.clone(), self.writer.clone()));
        bfd.set_peers(wanted).await;
        bfd.states()
    }

    /// Stops the running speaker, if any, and starts `config`'s. Going to no
    /// speaker (the cluster left node mode) is not a restart: a Cease makes
    /// the routers drop this node's routes now.
    async fn restart(&mut self, config: Option<SpeakerConfig>) {
        // BFD acts on the speaker it was started with; it stops after the
        // speaker (see SpeakerBfd::shutdown).
        let bfd = self.bfd.take();
        if let Some((_, old)) = self.running.take() {
            if config.is_none() {
                for address in self.peers.keys() {
                    old.remove_peer(*address).await;
                }
            }
            old.shutdown().await;
            info!(node = %self.node, "BGP speaker stopped");
        }
        if let Some(bfd) = bfd {
            bfd.shutdown().await;
        }
        self.peers.clear();
        self.paths = None;
        let Some(config) = config else {
            return;
        };
        match Speaker::start(config.clone()).await {
            Ok(speaker) => {
                info!(node = %self.node, local_as = config.local_as, router_id = %config.router_id, "BGP speaker started (speakerMode node)");
                self.running = Some((config, speaker));
            }
            // Retried at the next step: the port may be freed meanwhile.
            Err(err) => {
                error!(node = %self.node, error = %err, "cannot start the BGP speaker; retrying")
            }
        }
    }

    /// Writes this node's entry of each BgpPeer's status where the
    /// snapshot shows it differs.
    async fn report(
        &self,
        snapshot: &Snapshot,
        sessions: &[porter_bgp::PeerStatus],
        bfd_states: &BTreeMap<IpAddr, String>,
    ) {
        let entries: BTreeMap<String, BgpPeerNodeStatus> = sessions
            .iter()
            .filter_map(|session| {
                let peer = self.peers.get(&session.address)?;
                let bfd = peer
                    .bfd
                    .and_then(|_| bfd_states.get(&session.address).cloned());
                Some((peer.name.clone(), status_entry(&self.node, session, bfd)))
            })
            .collect();
        for (peer, entry) in status_changes(snapshot, &self.node, &entries) {
            if let Err(err) = self.writer.write(&peer, &self.node, entry.as_ref()).await {
                warn!(peer, node = %self.node, error = %err, "cannot write the BgpPeer status; retrying at the next step");
            }
        }
    }

    fn log_notes(&mut self, notes: Vec<Note>) {
        for note in fresh_notes(&notes, &self.notes) {
            if note.warning {
                warn!(node = %self.node, "{}", note.message);
            } else {
                info!(node = %self.node, "{}", note.message);
            }
        }
        self.notes = notes;
    }

    /// Stops the speaker on the way out (see the module docs for what the
    /// routers then do), and says so in this node's status entries, which
    /// would otherwise read Established until the next agent rewrites them.
    pub async fn shutdown(mut self) {
        let Some((config, speaker)) = self.running.take() else {
            return;
        };
        speaker.shutdown().await;
        if let Some(bfd) = self.bfd.take() {
            bfd.shutdown().await;
        }
        let why = match config.graceful_restart {
            Some(gr) => format!(
                "porter-agent stopped; with graceful restart the router keeps this node's routes for {} s",
                gr.restart_time
            ),
            None => "porter-agent stopped".to_owned(),
        };
        for peer in self.peers.values() {
            let entry = BgpPeerNodeStatus {
                node: self.node.clone(),
                state: "Idle".to_owned(),
                paths_announced: 0,
                last_error: Some(why.clone()),
                bfd: None,
            };
            if let Err(err) = self
                .writer
                .write(&peer.name, &self.node, Some(&entry))
                .await
            {
                warn!(peer = %peer.name, error = %err, "cannot write the BgpPeer status on the way out");
            }
        }
    }
}

#[cfg(test)]
mod tests;

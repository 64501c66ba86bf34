//! BFD beside a BGP speaker (an agent's in node mode, the controller's in
//! central mode): one porter-bfd task with a session to every BgpPeer of
//! the speaker that has `spec.bfd`. When a session that was Up goes Down,
//! the BGP session to that peer goes down at once (porter-bgp's
//! `peer_unreachable`), a Warning Event names the peer and the diagnostic,
//! and the log says the same; when BFD comes back Up, a BGP session waiting
//! to reconnect connects at once. A peer that says AdminDown is stopping
//! its BFD on purpose (RFC 5882 section 3.2): BGP is left alone. On the way
//! out BFD stops after BGP, so that routers keep the routes under graceful
//! restart (see [`SpeakerBfd::shutdown`]).
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use porter_bfd::{Bfd, Diag, PeerEvent, State};
use porter_bgp::Speaker;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    bgp_config::bfd_state_text,
    source::{Event, EventType, Regarding},
};

/// Event reason: the BFD session with the peer went down.
pub const REASON_BFD_DOWN: &str = "BfdDown";
/// Event reason: the BFD session with the peer came up.
pub const REASON_BFD_UP: &str = "BfdUp";

/// How long BFD keeps running after the BGP sessions closed (see
/// [`SpeakerBfd::shutdown`]).
const BGP_CLOSE_FIRST: std::time::Duration = std::time::Duration::from_millis(200);

/// The BFD sessions of one speaker and the task that acts on their changes.
pub struct SpeakerBfd {
    /// Who runs the sessions, for Events and logs: `node n1`, `the controller`.
    owner: String,
    bfd: Bfd,
    /// What each session was last configured with, by neighbour address.
    peers: BTreeMap<IpAddr, porter_bfd::PeerConfig>,
    /// BgpPeer names by neighbour address, for Events and logs.
    names: Arc<Mutex<BTreeMap<IpAddr, String>>>,
    watcher: JoinHandle<()>,
}

impl SpeakerBfd {
    /// Starts the BFD task; its state changes act on `speaker`, and the
    /// Events that report them go to `events`.
    pub fn start(owner: String, speaker: Speaker, events: mpsc::UnboundedSender<Event>) -> Self {
        let (bfd, changes) = Bfd::start();
        let names = Arc::new(Mutex::new(BTreeMap::new()));
        let watcher = tokio::spawn(watch(
            changes,
            owner.clone(),
            speaker,
            events,
            names.clone(),
        ));
        Self {
            owner,
            bfd,
            peers: BTreeMap::new(),
            names,
            watcher,
        }
    }

    /// Brings the sessions to `wanted` (neighbour → BgpPeer name and BFD
    /// settings); sessions not in it end with AdminDown.
    pub async fn set_peers(&mut self, wanted: BTreeMap<IpAddr, (String, porter_bfd::PeerConfig)>) {
        let gone: Vec<IpAddr> = self
            .peers
            .keys()
            .filter(|address| !wanted.contains_key(address))
            .copied()
            .collect();
        for address in gone {
            if let Some(config) = self.peers.remove(&address) {
                self.bfd.remove_peer(config.key);
            }
        }
        if let Ok(mut names) = self.names.lock() {
            *names = wanted
                .iter()
                .map(|(address, (name, _))| (*address, name.clone()))
                .collect();
        }
        for (address, (name, config)) in wanted {
            if self.peers.get(&address) == Some(&config) {
                continue;
            }
            // A hop-mode change is a new session; drop the old one first.
            if let Some(old) = self.peers.remove(&address)
                && old.key != config.key
            {
                self.bfd.remove_peer(old.key);
            }
            match self.bfd.upsert_peer(config).await {
                Ok(()) => {
                    self.peers.insert(address, config);
                }
                // Retried at the next step (the address may not be up yet).
                Err(error) => warn!(on = %self.owner, peer = %name, neighbor = %address, %error,
                    "cannot start BFD with the neighbour; retrying"),
            }
        }
    }

    /// The `BgpPeer.status.nodes[].bfd` text of each session, by neighbour.
    pub fn states(&self) -> BTreeMap<IpAddr, String> {
        self.bfd
            .status()
            .into_iter()
            .map(|status| {
                (
                    status.key.remote,
                    bfd_state_text(status.state, status.local_diag),
                )
            })
            .collect()
    }

    pub fn counters(&self) -> Arc<porter_bfd::Counters> {
        self.bfd.counters()
    }

    /// Ends every session with AdminDown. Call it after the speaker has
    /// closed its BGP sessions: a router that sees the BGP connection close
    /// first treats it as a graceful restart and keeps the node's routes,
    /// while one that sees BFD go down on an Established session resets it
    /// and drops them (FRR does, even for AdminDown). The pause gives the
    /// router time to read the close before the AdminDown arrives.
    pub async fn shutdown(self) {
        self.watcher.abort();
        tokio::time::sleep(BGP_CLOSE_FIRST).await;
        self.bfd.shutdown().await;
    }
}

/// Whether a state change means the neighbour is unreachable: Up to Down,
/// unless the neighbour said AdminDown.
pub fn takes_bgp_down(event: &PeerEvent) -> bool {
    event.change.from == State::Up
        && event.change.to == State::Down
        && event.remote_state != State::AdminDown
}

async fn watch(
    mut changes: mpsc::UnboundedReceiver<PeerEvent>,
    owner: String,
    speaker: Speaker,
    events: mpsc::UnboundedSender<Event>,
    names: Arc<Mutex<BTreeMap<IpAddr, String>>>,
) {
    while let Some(event) = changes.recv().await {
        let address = event.key.remote;
        let name = names
            .lock()
            .ok()
            .and_then(|names| names.get(&address).cloned())
            .unwrap_or_else(|| address.to_string());
        let why = if event.change.diag == Diag::NeighborSignaledSessionDown {
            format!("the neighbour signaled down ({})", event.remote_diag)
        } else {
            event.change.diag.to_string()
        };
        let (type_, reason, message) = if takes_bgp_down(&event) {
            let message =
                format!("BFD with {address} went down on {owner}: {why}; BGP session reset");
            warn!(on = %owner, peer = %name, neighbor = %address, %why, "BFD down: taking the BGP session down");
            speaker
                .peer_unreachable(address, format!("BFD down: {why}"))
                .await;
            (EventType::Warning, REASON_BFD_DOWN, message)
        } else if event.change.to == State::Up {
            info!(on = %owner, peer = %name, neighbor = %address, "BFD up");
            // A BGP session reset by BFD reconnects now, not after its backoff.
            speaker.peer_reachable(address).await;
            (
                EventType::Normal,
                REASON_BFD_UP,
                format!("BFD with {address} is up on {owner}"),
            )
        } else {
            info!(on = %owner, peer = %name, neighbor = %address, from = %event.change.from,
                to = %event.change.to, %why, "BFD state changed");
            continue;
        };
        let event = Event {
            regarding: Regarding::BgpPeer(name),
            type_,
            reason,
            message,
        };
        if events.send(event).is_err() {
            // Nobody writes Events any more: the owner is shutting down.
            return;
        }
    }
}

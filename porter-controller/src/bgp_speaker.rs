//! [`Announcer`] over porter-bgp's [`Speaker`]: what `porter-controller`
//! really peers and announces with.
//!
//! The controller calls the trait synchronously from its loop; the speaker is
//! async. The adapter records each call as the desired state and wakes one
//! task that owns the speaker and brings it to that state, paths before
//! peers. After a start, no session is opened until the controller has set
//! the paths: a session that comes up after a restart must find the full
//! path set ready and send it before its End-of-RIB, or a graceful-restart
//! helper flushes the routes it still holds from the previous instance. The
//! task runs on another thread and can wake between the calls of one
//! controller pass, so ordering the calls alone does not guarantee that.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porter_api::bgp_bfd::SpeakerBfd;
use porter_api::source::Event;
use porter_bgp::{PathTable, Speaker};
use tokio::sync::{Notify, mpsc};

use porter_bgp::{PeerConfig, PeerStatus, SpeakerConfig};

use crate::bgp::{Announcer, BfdSessions, long_lived, sessions_differ};

/// How often peer status is refreshed and a failed start retried.
const TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Desired {
    speaker: Option<SpeakerConfig>,
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Shared with the driver, which copies it only when `paths_version`
    /// moved: an idle tick costs a compare, not a copy of every path.
    paths: Arc<PathTable>,
    /// Bumped by every change of `paths`.
    paths_version: u64,
    /// Whether `paths` was set since the last start (see the module doc).
    paths_set: bool,
    /// Stopped by [`Announcer::abandon`]: sessions close without a Cease.
    abandoned: bool,
    /// BFD beside the sessions; started with them (once the paths are set).
    bfd: BfdSessions,
}

impl Desired {
    fn replace_paths(&mut self, paths: PathTable) {
        self.paths = Arc::new(paths);
        self.paths_version += 1;
    }
}

#[derive(Default)]
struct Shared {
    desired: Mutex<Desired>,
    wake: Notify,
    status: Mutex<Vec<PeerStatus>>,
    /// Each BFD session's state text, by neighbour.
    bfd_states: Mutex<BTreeMap<IpAddr, String>>,
    /// Events of BFD changes, not yet taken by the controller's loop.
    bfd_events: Mutex<Vec<Event>>,
    /// Tells the controller's loop that `status`, `bfd_states` or
    /// `bfd_events` changed.
    status_changed: Arc<Notify>,
}

/// The real speaker behind the controller. Create it inside a tokio runtime;
/// dropping it stops the speaker gracefully (peers keep the routes for the
/// graceful-restart time).
pub struct SpeakerAnnouncer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// Graceful restart as [`long_lived`] makes it for this restart time
    /// (seconds); else RFC 4724's alone.
    long_lived: Option<u16>,
}

impl SpeakerAnnouncer {
    pub fn spawn(long_lived: Option<u16>) -> Self {
        let shared = Arc::new(Shared::default());
        let (events, mut queued) = mpsc::unbounded_channel();
        let queue = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(event) = queued.recv().await {
                if let Ok(mut events) = queue.bfd_events.lock() {
                    events.push(event);
                }
                queue.status_changed.notify_one();
            }
        });
        let task = tokio::spawn(drive(Arc::clone(&shared), events));
        Self {
            shared,
            task,
            long_lived,
        }
    }

    fn change(&self, f: impl FnOnce(&mut Desired)) {
        if let Ok(mut desired) = self.shared.desired.lock() {
            f(&mut desired);
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for SpeakerAnnouncer {
    fn drop(&mut self) {
        // Aborting drops the speaker's handles: its sessions close without a
        // NOTIFICATION, which is what graceful restart expects of a restart.
        self.task.abort();
    }
}

impl Announcer for SpeakerAnnouncer {
    fn start(&mut self, config: &SpeakerConfig) {
        let config = match self.long_lived {
            Some(restart) => long_lived(config.clone(), restart),
            None => config.clone(),
        };
        self.change(|d| {
            d.speaker = Some(config);
            d.abandoned = false;
            // A new speaker starts with no sessions: the driver re-adds the
            // peers the controller configures next, once it has the paths.
            d.peers.clear();
            d.bfd.clear();
            d.paths_set = false;
        });
    }

    fn stop(&mut self) {
        self.change(|d| {
            d.speaker = None;
            d.abandoned = false;
            d.peers.clear();
            d.bfd.clear();
            d.replace_paths(PathTable::default());
        });
    }

    fn abandon(&mut self) {
        self.change(|d| {
            d.speaker = None;
            d.abandoned = true;
            d.peers.clear();
            d.bfd.clear();
            d.replace_paths(PathTable::default());
        });
    }

    fn upsert_peer(&mut self, peer: &PeerConfig) {
        let peer = peer.clone();
        self.change(|d| {
            d.peers.insert(peer.address, peer);
        });
    }

    fn remove_peer(&mut self, address: IpAddr) {
        self.change(|d| {
            d.peers.remove(&address);
        });
    }

    fn set_paths(&mut self, paths: &PathTable) {
        // The speaker keeps its own copy, which shares the attributes; the
        // controller's shared table must not be held here (its next change
        // would copy it whole).
        let paths = paths.clone();
        self.change(|d| {
            d.replace_paths(paths);
            d.paths_set = true;
        });
    }

    fn peer_status(&self) -> Vec<PeerStatus> {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn sessions_changed(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.status_changed)
    }

    fn set_bfd(&mut self, sessions: &BfdSessions) {
        let sessions = sessions.clone();
        self.change(|d| d.bfd = sessions);
    }

    fn bfd_states(&self) -> BTreeMap<IpAddr, String> {
        self.shared
            .bfd_states
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn take_bfd_events(&self) -> Vec<Event> {
        self.shared
            .bfd_events
            .lock()
            .map(|mut events| std::mem::take(&mut *events))
            .unwrap_or_default()
    }
}

/// What is running now.
#[derive(Default)]
struct Applied {
    speaker: Option<(SpeakerConfig, Speaker)>,
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// The [`Desired::paths_version`] the speaker has.
    paths_version: Option<u64>,
    /// BFD beside the running speaker's sessions.
    bfd: Option<SpeakerBfd>,
}

async fn drive(shared: Arc<Shared>, bfd_events: mpsc::UnboundedSender<Event>) {
    let mut applied = Applied::default();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            _ = tick.tick() => {}
        }
        let (speaker, abandoned, peers, paths) = match shared.desired.lock() {
            // Until the paths are known, the peers wait (see the module doc).
            Ok(d) => (
                d.speaker.clone(),
                d.abandoned,
                d.paths_set.then(|| (d.peers.clone(), d.bfd.clone())),
                (d.paths_version, Arc::clone(&d.paths)),
            ),
            Err(_) => return,
        };
        apply(
            &mut applied,
            (speaker, abandoned),
            peers,
            paths,
            &bfd_events,
        )
        .await;
        let status = match &applied.speaker {
            Some((_, speaker)) => speaker.peer_status().await,
            None => Vec::new(),
        };
        if let Ok(mut slot) = shared.status.lock() {
            if sessions_differ(&slot, &status) {
                shared.status_changed.notify_one();
            }
            *slot = status;
        }
        let bfd_states = applied
            .bfd
            .as_ref()
            .map(SpeakerBfd::states)
            .unwrap_or_default();
        if let Ok(mut slot) = shared.bfd_states.lock()
            && *slot != bfd_states
        {
            *slot = bfd_states;
            shared.status_changed.notify_one();
        }
    }
}

async fn apply(
    applied: &mut Applied,
    (speaker, abandoned): (Option<SpeakerConfig>, bool),
    peers: Option<(BTreeMap<IpAddr, PeerConfig>, BfdSessions)>,
    (paths_version, paths): (u64, Arc<PathTable>),
    bfd_events: &mpsc::UnboundedSender<Event>,
) {
    if applied.speaker.as_ref().map(|(c, _)| c) != speaker.as_ref() {
        // BFD acts on the speaker it was started with, and stops after it
        // (see SpeakerBfd::shutdown): a router that sees BFD go down while
        // the BGP session is still up would drop our routes.
        let bfd = applied.bfd.take();
        if let Some((_, old)) = applied.speaker.take() {
            if speaker.is_none() && !abandoned {
                // Switched off, not restarting nor handing over: a Cease
                // makes every peer drop our routes now instead of keeping
                // them for the graceful-restart time.
                for address in applied.peers.keys() {
                    old.remove_peer(*address).await;
                }
            }
            old.shutdown().await;
        }
        if let Some(bfd) = bfd {
            bfd.shutdown().await;
        }
        applied.peers.clear();
        applied.paths_version = None;
        if let Some(config) = speaker {
            match Speaker::start(config.clone()).await {
                Ok(started) => applied.speaker = Some((config, started)),
                // Retried on the next tick: the port may be freed meanwhile.
                Err(error) => {
                    tracing::error!(%error, "cannot start the BGP speaker; retrying");
                    return;
                }
            }
        }
    }
    let Some((_, speaker)) = &applied.speaker else {
        return;
    };
    if applied.paths_version != Some(paths_version) {
        speaker.set_paths(PathTable::clone(&paths)).await;
        applied.paths_version = Some(paths_version);
    }
    let Some((peers, bfd)) = peers else {
        return;
    };
    let gone: Vec<IpAddr> = applied
        .peers
        .keys()
        .filter(|a| !peers.contains_key(a))
        .copied()
        .collect();
    for address in gone {
        speaker.remove_peer(address).await;
        applied.peers.remove(&address);
    }
    for (address, peer) in peers {
        if applied.peers.get(&address) != Some(&peer) {
            speaker.upsert_peer(peer.clone()).await;
            applied.peers.insert(address, peer);
        }
    }
    if bfd.is_empty() && applied.bfd.is_none() {
        return;
    }
    applied
        .bfd
        .get_or_insert_with(|| {
            SpeakerBfd::start("the controller".into(), speaker.clone(), bfd_events.clone())
        })
        .set_peers(bfd)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    /// Two speakers on loopback: the controller's, driven through the
    /// trait, and a passive porter-bgp listener standing in for the router
    /// only to prove the session comes up through the adapter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_adapter_starts_the_speaker_and_peers_once_it_has_the_paths() {
        let router = porter_bgp::Speaker::start(porter_bgp::SpeakerConfig {
            local_as: 65001,
            router_id: Ipv4Addr::new(127, 0, 0, 1),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            graceful_restart: None,
        })
        .await
        .expect("router listens on loopback");
        let port = router.listen_address().expect("bound").port();
        let mut passive = porter_bgp::PeerConfig::new(IpAddr::from([127, 0, 0, 2]), 65000);
        passive.passive = true;
        router.upsert_peer(passive).await;

        let mut announcer = SpeakerAnnouncer::spawn(Some(15));
        announcer.start(&SpeakerConfig {
            local_as: 65000,
            router_id: Ipv4Addr::new(127, 0, 0, 2),
            listen: None,
            graceful_restart: None,
        });
        let mut peer = PeerConfig::new(IpAddr::from([127, 0, 0, 1]), 65001);
        peer.remote_port = port;
        peer.hold_time = 9;
        peer.connect_retry = Duration::from_secs(1);
        peer.local_address = Some(IpAddr::from([127, 0, 0, 2]));
        announcer.upsert_peer(&peer);
        // No session before the controller's paths: after a restart it would
        // send an empty table and End-of-RIB, and the router would flush the
        // routes it kept for us. The driver runs at least once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            announcer.peer_status().is_empty(),
            "a session was opened before the paths were set: {:?}",
            announcer.peer_status()
        );
        announcer.set_paths(&PathTable::default());
        // Waiting on the change notifications alone sees the session come
        // up: the controller's loop relies on them.
        let changed = announcer.sessions_changed();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !announcer
            .peer_status()
            .iter()
            .any(|s| s.state == porter_bgp::SessionState::Established)
        {
            let notified = tokio::time::timeout_at(deadline, changed.notified()).await;
            assert!(
                notified.is_ok(),
                "no notification of an established session: {:?}",
                announcer.peer_status()
            );
        }
        announcer.remove_peer(IpAddr::from([127, 0, 0, 1]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !announcer.peer_status().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "peer still reported after removal"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! The public handle: the peer table, the shared desired routes, and the
//! passive listener that hands connections to their peer's session.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;
use netgauze_bgp_pkt::notification::CeaseError;
use tokio::{
    net::TcpListener,
    sync::{Mutex as AsyncMutex, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    BgpError, PathAttributes, PathTable, PeerConfig, PeerStatus, SpeakerConfig,
    fsm::{FsmConfig, cease},
    policy::Sanitized,
    session::{self, Command, STOP_TIMEOUT, Session},
    socket,
};

struct Peer {
    config: PeerConfig,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<session::SharedStatus>>,
    task: JoinHandle<()>,
}

struct Inner {
    config: SpeakerConfig,
    routes: watch::Sender<Arc<PathTable>>,
    peers: AsyncMutex<HashMap<IpAddr, Peer>>,
    listener: Option<Arc<TcpListener>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

/// A running speaker. Cheap to clone; every clone drives the same sessions.
#[derive(Clone)]
pub struct Speaker {
    inner: Arc<Inner>,
}

impl Speaker {
    /// Starts the speaker and, when configured, its passive listener.
    pub async fn start(config: SpeakerConfig) -> Result<Speaker, BgpError> {
        let listener = match config.listen {
            Some(address) => Some(Arc::new(
                socket::listen(address).map_err(|source| BgpError::Listen { address, source })?,
            )),
            None => None,
        };
        let (routes, _) = watch::channel(Arc::new(PathTable::new()));
        let speaker = Speaker {
            inner: Arc::new(Inner {
                config,
                routes,
                peers: AsyncMutex::new(HashMap::new()),
                listener: listener.clone(),
                accept_task: Mutex::new(None),
            }),
        };
        if let Some(listener) = listener {
            // The accept loop holds only a weak reference, so dropping every
            // handle ends it.
            let weak = Arc::downgrade(&speaker.inner);
            let task = tokio::spawn(async move { accept_loop(listener, weak).await });
            if let Ok(mut slot) = speaker.inner.accept_task.lock() {
                *slot = Some(task);
            }
        }
        info!(local_as = speaker.inner.config.local_as, router_id = %speaker.inner.config.router_id, listen = ?speaker.inner.config.listen, "BGP speaker started");
        Ok(speaker)
    }

    /// Adds a peer, or changes one (restarting only that peer's session).
    /// An unchanged configuration leaves the session alone; a change of
    /// [`PeerConfig::policy`] alone re-sends the affected paths without a
    /// restart.
    pub async fn upsert_peer(&self, peer: PeerConfig) {
        let mut peers = self.inner.peers.lock().await;
        if let Some(existing) = peers.get_mut(&peer.address) {
            if existing.config == peer {
                return;
            }
            let only_policy = PeerConfig {
                policy: peer.policy.clone(),
                ..existing.config.clone()
            } == peer;
            if only_policy
                && existing
                    .commands
                    .send(Command::SetPolicy(peer.policy.clone()))
                    .await
                    .is_ok()
            {
                existing.config = peer;
                return;
            }
            info!(peer = %peer.address, "peer configuration changed; restarting its session");
            if let Some(old) = peers.remove(&peer.address) {
                self.stop_peer(
                    old,
                    Some(cease(CeaseError::OtherConfigurationChange {
                        value: Box::new([]),
                    })),
                )
                .await;
            }
        }
        self.set_listener_md5(&peer, peer.md5_password.as_deref());
        let status = Arc::new(Mutex::new(session::initial_status(&peer)));
        let (commands, receiver) = mpsc::channel(8);
        let config = &self.inner.config;
        let mut hasher = DefaultHasher::new();
        (config.router_id, peer.address).hash(&mut hasher);
        let fsm = FsmConfig {
            local_as: config.local_as,
            router_id: config.router_id,
            remote_as: peer.remote_as,
            passive: peer.passive,
            hold_time: match peer.hold_time {
                // RFC 4271: 0 or at least 3; peers refuse 1 and 2.
                1 | 2 => {
                    warn!(peer = %peer.address, hold_time = peer.hold_time, "hold time must be 0 or at least 3 s; using 3");
                    3
                }
                hold => hold,
            },
            keepalive: peer.keepalive,
            connect_retry: peer.connect_retry,
            families: peer.families.clone(),
            add_path_send_max: peer.add_path_send_max,
            graceful_restart: config.graceful_restart.as_ref().map(|gr| gr.restart_time),
            long_lived_stale_time: config
                .graceful_restart
                .as_ref()
                .and_then(|gr| gr.long_lived_stale_time),
            restarting: config
                .graceful_restart
                .as_ref()
                .is_some_and(|gr| gr.restarting),
            jitter_seed: hasher.finish(),
        };
        let session = Session::new(
            peer.clone(),
            fsm,
            self.inner.routes.subscribe(),
            Arc::clone(&status),
        );
        let task = tokio::spawn(session.run(receiver));
        info!(peer = %peer.address, remote_as = peer.remote_as, passive = peer.passive, "peer added");
        peers.insert(
            peer.address,
            Peer {
                config: peer,
                commands,
                status,
                task,
            },
        );
    }

    /// Removes a peer: its session ends with a Cease (peer de-configured).
    pub async fn remove_peer(&self, address: IpAddr) {
        let removed = self.inner.peers.lock().await.remove(&address);
        if let Some(peer) = removed {
            self.set_listener_md5(&peer.config, None);
            self.stop_peer(
                peer,
                Some(cease(CeaseError::PeerDeConfigured {
                    value: Box::new([]),
                })),
            )
            .await;
            info!(peer = %address, "peer removed");
        }
    }

    /// Takes the session with `address` down at once because a liveness
    /// check outside BGP (BFD) failed: the peer gets a Cease "BFD Down" if
    /// it can still hear us, and the session reconnects after its backoff
    /// or at [`Speaker::peer_reachable`].
    pub async fn peer_unreachable(&self, address: IpAddr, reason: String) {
        warn!(peer = %address, %reason, "taking the BGP session down");
        self.tell(address, Command::PeerUnreachable(reason)).await;
    }

    /// The liveness check passes again: a session waiting to reconnect
    /// connects now.
    pub async fn peer_reachable(&self, address: IpAddr) {
        self.tell(address, Command::PeerReachable).await;
    }

    async fn tell(&self, address: IpAddr, command: Command) {
        let commands = self
            .inner
            .peers
            .lock()
            .await
            .get(&address)
            .map(|peer| peer.commands.clone());
        if let Some(commands) = commands {
            let _ = commands.send(command).await;
        }
    }

    /// Sets the desired routes: prefix → next hops, each a plain path
    /// (no communities, LOCAL_PREF 100 on iBGP, no link bandwidth). Each
    /// session sends its peer only the difference; calls in quick
    /// succession coalesce. Same as [`Speaker::set_paths`] with default
    /// attributes.
    pub async fn set_routes(&self, routes: BTreeMap<IpNet, BTreeSet<IpAddr>>) {
        let plain = Arc::new(PathAttributes::default());
        let paths: PathTable = routes
            .into_iter()
            .filter(|(_, next_hops)| !next_hops.is_empty())
            .map(|(prefix, next_hops)| {
                let paths = next_hops
                    .into_iter()
                    .map(|next_hop| (next_hop, Arc::clone(&plain)))
                    .collect();
                (prefix.trunc(), paths)
            })
            .collect();
        self.inner.routes.send_replace(Arc::new(paths));
    }

    /// Sets the desired paths with their attributes: prefix → next hop →
    /// attributes. Replaces whatever `set_routes` or `set_paths` set before.
    /// Each session sends its peer only what changed for it: a path whose
    /// attributes (as shaped by the peer's [`crate::PeerPolicy`]) changed is
    /// re-announced under the same path id; an unchanged one is not sent.
    /// Attributes are sanitised first (see [`PathAttributes::sanitized`]);
    /// what had to be fixed is logged. Attributes already in bounds are
    /// kept as the caller's allocation (see [`crate::NextHops`]).
    ///
    /// A next hop of [`crate::NEXT_HOP_SELF_V4`] / [`crate::NEXT_HOP_SELF_V6`]
    /// is sent as each session's own address (the per-node speaker mode).
    pub async fn set_paths(&self, paths: PathTable) {
        // Next hops by truncated prefix, in the order given: where two
        // prefixes truncate to one, the later one's attributes win.
        let mut merged: BTreeMap<IpNet, Vec<(IpAddr, Arc<PathAttributes>)>> = BTreeMap::new();
        // Each distinct allocation sanitised once. Keyed by address, which
        // stays unique while `paths` (borrowed below) holds every one.
        let mut sanitized: HashMap<*const PathAttributes, (Arc<PathAttributes>, Vec<Sanitized>)> =
            HashMap::new();
        // One warning per call, not one per path: a pool's bad attributes
        // would otherwise repeat for every address in it.
        let mut fixed_paths = 0usize;
        let mut example = None;
        for (prefix, next_hops) in &paths {
            if next_hops.is_empty() {
                continue;
            }
            let entry = merged.entry(prefix.trunc()).or_default();
            for (next_hop, attributes) in next_hops.iter() {
                let (attributes, fixed) = sanitized
                    .entry(Arc::as_ptr(attributes))
                    .or_insert_with(|| sanitize(attributes));
                if !fixed.is_empty() {
                    fixed_paths += 1;
                    example.get_or_insert_with(|| (*prefix, *next_hop, fixed.clone()));
                }
                entry.push((*next_hop, Arc::clone(attributes)));
            }
        }
        if let Some((prefix, next_hop, fixed)) = example {
            warn!(paths = fixed_paths, %prefix, %next_hop, ?fixed, "path attributes were out of bounds and have been fixed (first example shown)");
        }
        let shared: PathTable = merged
            .into_iter()
            .map(|(prefix, next_hops)| (prefix, next_hops.into_iter().collect()))
            .collect();
        self.inner.routes.send_replace(Arc::new(shared));
    }

    /// The bound address of the passive listener (useful with port 0).
    pub fn listen_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.listener.as_ref()?.local_addr().ok()
    }

    pub async fn peer_status(&self) -> Vec<PeerStatus> {
        let peers = self.inner.peers.lock().await;
        let mut statuses: Vec<PeerStatus> = peers
            .values()
            .filter_map(|peer| peer.status.lock().ok().map(|shared| shared.snapshot()))
            .collect();
        statuses.sort_by_key(|status| status.address);
        statuses
    }

    /// Stops every session and the listener. With graceful restart
    /// configured the connections just close, so peers keep our routes for
    /// the restart time (a restart is the usual reason to stop); without it
    /// peers get a Cease and withdraw them. Call `set_routes` with an empty
    /// set first to withdraw everything regardless.
    pub async fn shutdown(self) {
        if let Ok(mut slot) = self.inner.accept_task.lock()
            && let Some(task) = slot.take()
        {
            task.abort();
        }
        let notification = match self.inner.config.graceful_restart {
            Some(_) => None,
            None => Some(cease(CeaseError::AdministrativeShutdown {
                value: Box::new([]),
            })),
        };
        let peers: Vec<Peer> = self
            .inner
            .peers
            .lock()
            .await
            .drain()
            .map(|(_, peer)| peer)
            .collect();
        for peer in peers {
            self.stop_peer(peer, notification.clone()).await;
        }
        info!("BGP speaker stopped");
    }

    async fn stop_peer(
        &self,
        peer: Peer,
        notification: Option<netgauze_bgp_pkt::notification::BgpNotificationMessage>,
    ) {
        let Peer {
            commands, mut task, ..
        } = peer;
        let _ = commands.send(Command::Stop(notification)).await;
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            warn!("a session did not stop in time; aborting it");
            task.abort();
        }
    }

    fn set_listener_md5(&self, peer: &PeerConfig, password: Option<&str>) {
        let Some(listener) = &self.inner.listener else {
            return;
        };
        let result = socket::listener_peer_address(listener, peer.address).and_then(|address| {
            socket::set_md5(
                listener.as_ref(),
                address,
                password.unwrap_or("").as_bytes(),
            )
        });
        match (result, password) {
            (Ok(()), _) => {}
            // Removing a key that was never set fails harmlessly (ENOENT).
            (Err(_), None) => {}
            (Err(error), Some(_)) => {
                warn!(peer = %peer.address, %error, "cannot set the TCP MD5 key on the listener; the peer's connections will fail")
            }
        }
    }
}

async fn accept_loop(listener: Arc<TcpListener>, speaker: std::sync::Weak<Inner>) {
    // Anyone who reaches the port can cause a refusal: one line per address
    // per minute.
    let mut refusals = crate::log_limit::LogLimit::default();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a BGP connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(inner) = speaker.upgrade() else {
            return;
        };
        let address = remote.ip().to_canonical();
        let peers = inner.peers.lock().await;
        match peers.get(&address) {
            // try_send: a session busy writing to its peer must not stall
            // the listener (and the peer table lock) for everyone else.
            Some(peer) => {
                if peer.commands.try_send(Command::Incoming(stream)).is_err() {
                    warn!(peer = %address, "session busy or gone; dropping the new connection");
                }
            }
            None => {
                if let Some(suppressed) = refusals.allow(&address, tokio::time::Instant::now()) {
                    info!(remote = %address, suppressed, "refusing a BGP connection from an address that is not a configured peer");
                }
            }
        }
    }
}

/// `attributes` within bounds, with what had to be fixed: the same
/// allocation when nothing changes.
fn sanitize(attributes: &Arc<PathAttributes>) -> (Arc<PathAttributes>, Vec<Sanitized>) {
    let (within, fixed) = PathAttributes::clone(attributes).sanitized();
    if within == **attributes {
        (Arc::clone(attributes), fixed)
    } else {
        (Arc::new(within), fixed)
    }
}

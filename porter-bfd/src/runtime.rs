//! The tokio side: one task owns every session, the receive sockets feed it
//! through a channel, and it runs each session's timers. State changes go
//! out on a channel ([`PeerEvent`]); a status snapshot and drop counters can
//! be read at any time.
use std::{
    collections::{BTreeMap, HashMap, hash_map::RandomState},
    hash::BuildHasher,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    fsm::{Action, Negotiated, Session, StateChange, Timers},
    packet::{ControlPacket, Diag, DropReason, State},
    socket::{self, MULTIHOP_PORT, SINGLE_HOP_PORT, TTL},
};

/// Identifies a session: one per remote address and hop mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub remote: IpAddr,
    /// RFC 5883 multihop (port 4784, no TTL check) instead of RFC 5881.
    pub multihop: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: PeerKey,
    /// Source address of our packets; `None` lets the kernel choose by route.
    pub local: Option<IpAddr>,
    pub timers: Timers,
}

/// One state change of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEvent {
    pub key: PeerKey,
    pub change: StateChange,
    /// The state and diagnostic the peer last sent: AdminDown means it
    /// stopped BFD on purpose, which is no reason to take a client
    /// protocol down (RFC 5882 section 3.2).
    pub remote_state: State,
    pub remote_diag: Diag,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub key: PeerKey,
    pub state: State,
    pub remote_state: State,
    pub local_diag: Diag,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    pub timers: Timers,
    pub negotiated: Negotiated,
}

/// Packet counters, shared with the task.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    fn drop_one(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

enum Command {
    Upsert(PeerConfig, oneshot::Sender<io::Result<()>>),
    Remove(PeerKey),
    Shutdown(oneshot::Sender<()>),
}

struct Received {
    bytes: Vec<u8>,
    source: SocketAddr,
    ttl: Option<u8>,
    multihop: bool,
}

/// Handle to the BFD task. Dropping the last clone (or [`Bfd::shutdown`])
/// sends AdminDown to every peer, so that they do not count our stop as a
/// failure (RFC 5882 section 3.2), and stops the task.
#[derive(Clone)]
pub struct Bfd {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Vec<PeerStatus>>,
    counters: Arc<Counters>,
}

impl Bfd {
    /// Starts the task; peers are added with [`Bfd::upsert_peer`]. Must be
    /// called inside a tokio runtime.
    pub fn start() -> (Self, mpsc::UnboundedReceiver<PeerEvent>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Vec::new());
        let counters = Arc::new(Counters::default());
        let (received_tx, received) = mpsc::channel(1024);
        let task = Task {
            sessions: BTreeMap::new(),
            by_discriminator: HashMap::new(),
            listeners: HashMap::new(),
            received_tx,
            events,
            status: status_tx,
            counters: counters.clone(),
            random: RandomState::new(),
        };
        tokio::spawn(task.run(command_rx, received));
        (
            Self {
                commands,
                status,
                counters,
            },
            event_rx,
        )
    }

    /// Adds a session, or changes its timers or source address. Fails when
    /// the sockets cannot be opened (port in use, address not local).
    pub async fn upsert_peer(&self, peer: PeerConfig) -> io::Result<()> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Upsert(peer, reply))
            .map_err(|_| io::Error::other("BFD task stopped"))?;
        result
            .await
            .map_err(|_| io::Error::other("BFD task stopped"))?
    }

    /// Sends AdminDown to the peer and forgets the session.
    pub fn remove_peer(&self, key: PeerKey) {
        let _ = self.commands.send(Command::Remove(key));
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change, for exporters.
    pub fn watch_status(&self) -> watch::Receiver<Vec<PeerStatus>> {
        self.status.clone()
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Tells every peer AdminDown and waits until the packets are sent.
    pub async fn shutdown(self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct Peer {
    config: PeerConfig,
    session: Session,
    sender: UdpSocket,
    remote_diag: Diag,
}

/// Aborts a listener task when its entry is dropped.
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Task {
    sessions: BTreeMap<PeerKey, Peer>,
    by_discriminator: HashMap<u32, PeerKey>,
    /// Receive sockets by (IPv6, multihop), opened when a peer needs one.
    listeners: HashMap<(bool, bool), Listener>,
    received_tx: mpsc::Sender<Received>,
    events: mpsc::UnboundedSender<PeerEvent>,
    status: watch::Sender<Vec<PeerStatus>>,
    counters: Arc<Counters>,
    random: RandomState,
}

impl Task {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut received: mpsc::Receiver<Received>,
    ) {
        loop {
            let deadline = self
                .sessions
                .values()
                .map(|peer| peer.session.next_deadline())
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Upsert(config, reply)) => {
                        let _ = reply.send(self.upsert(config));
                    }
                    Some(Command::Remove(key)) => self.remove(key),
                    Some(Command::Shutdown(done)) => {
                        self.remove_all();
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.remove_all();
                        return;
                    }
                },
                Some(packet) = received.recv() => self.receive(packet),
                () = tokio::time::sleep_until(deadline.into()) => self.tick(),
            }
            self.publish();
        }
    }

    fn upsert(&mut self, config: PeerConfig) -> io::Result<()> {
        self.listen(config.key)?;
        let now = Instant::now();
        if let Some(peer) = self.sessions.get_mut(&config.key)
            && peer.config.local == config.local
        {
            peer.config = config;
            let actions = peer.session.set_timers(config.timers, now);
            self.perform(config.key, actions);
            return Ok(());
        }
        let discriminator = self.new_discriminator();
        let port = if config.key.multihop {
            MULTIHOP_PORT
        } else {
            SINGLE_HOP_PORT
        };
        let sender = socket::sender(
            SocketAddr::new(config.key.remote, port),
            config.local,
            discriminator,
        )?;
        self.remove(config.key);
        let session = Session::new(
            config.timers,
            discriminator,
            self.random.hash_one(discriminator),
            now,
        );
        tracing::info!(peer = %config.key.remote, multihop = config.key.multihop,
            discriminator, "BFD session added");
        self.by_discriminator.insert(discriminator, config.key);
        self.sessions.insert(
            config.key,
            Peer {
                config,
                session,
                sender,
                remote_diag: Diag::None,
            },
        );
        Ok(())
    }

    fn new_discriminator(&self) -> u32 {
        let mut counter = self.sessions.len() as u64;
        loop {
            let candidate = self.random.hash_one(counter) as u32;
            if candidate != 0 && !self.by_discriminator.contains_key(&candidate) {
                return candidate;
            }
            counter += 1;
        }
    }

    fn listen(&mut self, key: PeerKey) -> io::Result<()> {
        let slot = (key.remote.is_ipv6(), key.multihop);
        if self.listeners.contains_key(&slot) {
            return Ok(());
        }
        let port = if key.multihop {
            MULTIHOP_PORT
        } else {
            SINGLE_HOP_PORT
        };
        let socket = socket::receiver(slot.0, port)?;
        let forward = self.received_tx.clone();
        let multihop = key.multihop;
        let counters = self.counters.clone();
        let handle = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match socket::receive(&socket, &mut buf).await {
                    Ok(datagram) => {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                        let packet = Received {
                            bytes: buf[..datagram.len.min(buf.len())].to_vec(),
                            source: datagram.source,
                            ttl: datagram.ttl,
                            multihop,
                        };
                        if forward.send(packet).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, port, "BFD receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.listeners.insert(slot, Listener(handle));
        Ok(())
    }

    fn remove(&mut self, key: PeerKey) {
        let Some(mut peer) = self.sessions.remove(&key) else {
            return;
        };
        let actions = peer.session.admin_down(Instant::now());
        self.by_discriminator
            .remove(&peer.session.local_discriminator());
        // The AdminDown packet goes out; the state change is not reported
        // for a peer that is no longer configured.
        for action in actions {
            if let Action::Send(packet) = action {
                self.send(&peer.sender, &packet);
            }
        }
        tracing::info!(peer = %key.remote, multihop = key.multihop, "BFD session removed");
    }

    fn remove_all(&mut self) {
        let keys: Vec<PeerKey> = self.sessions.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
    }

    fn send(&self, sender: &UdpSocket, packet: &ControlPacket) {
        match sender.try_send(&packet.encode()) {
            Ok(_) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            // An unreachable peer is what BFD is there to detect; the
            // detection timer reports it, not a log line per packet.
            Err(error) => {
                self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%error, "BFD send failed");
            }
        }
    }

    /// Section 6.8.6's checks that need the sessions, then the session.
    fn receive(&mut self, received: Received) {
        match self.accept(&received) {
            Ok((key, packet)) => {
                let Some(peer) = self.sessions.get_mut(&key) else {
                    return;
                };
                peer.remote_diag = packet.diag;
                let actions = peer.session.receive(&packet, Instant::now());
                self.perform(key, actions);
            }
            Err(reason) => {
                self.counters.drop_one(reason);
                tracing::debug!(source = %received.source, %reason, "BFD packet dropped");
            }
        }
    }

    fn accept(&self, received: &Received) -> Result<(PeerKey, ControlPacket), DropReason> {
        // RFC 5881 section 5: a single-hop packet must come with TTL 255, so
        // that it cannot have crossed a router.
        if !received.multihop {
            match received.ttl {
                None => return Err(DropReason::MissingAncillaryData),
                Some(ttl) if ttl != TTL => return Err(DropReason::WrongTtl),
                Some(_) => {}
            }
        }
        let packet = ControlPacket::decode(&received.bytes)?;
        let key = PeerKey {
            remote: received.source.ip(),
            multihop: received.multihop,
        };
        let known = if packet.your_discriminator == 0 {
            self.sessions.contains_key(&key)
        } else {
            // The discriminator selects the session; it must also be the
            // session of this sender and hop mode.
            self.by_discriminator.get(&packet.your_discriminator) == Some(&key)
        };
        if known {
            Ok((key, packet))
        } else {
            Err(DropReason::UnknownSession)
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerKey> = self
            .sessions
            .iter()
            .filter(|(_, peer)| peer.session.next_deadline() <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            if let Some(peer) = self.sessions.get_mut(&key) {
                let actions = peer.session.on_timer(now);
                self.perform(key, actions);
            }
        }
    }

    fn perform(&self, key: PeerKey, actions: Vec<Action>) {
        let Some(peer) = self.sessions.get(&key) else {
            return;
        };
        for action in actions {
            match action {
                Action::Send(packet) => self.send(&peer.sender, &packet),
                Action::StateChanged(change) => {
                    let remote_diag = peer.remote_diag;
                    let negotiated = peer.session.negotiated();
                    if change.to == State::Up {
                        tracing::info!(peer = %key.remote, multihop = key.multihop,
                            tx_interval = ?negotiated.tx_interval,
                            detection_time = ?negotiated.detection_time,
                            "BFD session up");
                    } else {
                        tracing::warn!(peer = %key.remote, multihop = key.multihop,
                            from = %change.from, to = %change.to, diag = %change.diag,
                            remote_diag = %remote_diag, "BFD session state changed");
                    }
                    let _ = self.events.send(PeerEvent {
                        key,
                        change,
                        remote_state: peer.session.remote_state(),
                        remote_diag,
                    });
                }
            }
        }
    }

    fn publish(&self) {
        let status: Vec<PeerStatus> = self
            .sessions
            .iter()
            .map(|(key, peer)| PeerStatus {
                key: *key,
                state: peer.session.state(),
                remote_state: peer.session.remote_state(),
                local_diag: peer.session.local_diag(),
                local_discriminator: peer.session.local_discriminator(),
                remote_discriminator: peer.session.remote_discriminator(),
                timers: peer.session.timers(),
                negotiated: peer.session.negotiated(),
            })
            .collect();
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

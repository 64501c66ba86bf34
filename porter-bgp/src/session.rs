//! One peer's session task: it runs the FSM's actions (TCP, timers, sends)
//! and turns socket reads, timers and route changes into FSM events.
//! Each peer has its own task, so one misbehaving peer never stalls another.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use netgauze_bgp_pkt::{BgpMessage, notification::BgpNotificationMessage};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::{
    Family, PathTable, PeerConfig, PeerPolicy, PeerStatus, SessionState,
    codec::{DecodeError, WireCodec, notification_code},
    fsm::{Action, Event, Fsm, FsmConfig, Negotiated, Timer},
    log_limit::LogLimit,
    rib::{self, AdjRibOut, FamilyPolicy, SendPolicy},
    socket::{self, ConnectOptions},
};

pub enum Command {
    /// The peer connected to our listener.
    Incoming(TcpStream),
    /// End the session (with a NOTIFICATION, or silently for graceful restart).
    Stop(Option<BgpNotificationMessage>),
    /// The peer's outbound policy changed: re-shape and send what differs,
    /// without resetting the session.
    SetPolicy(PeerPolicy),
    /// BFD says the peer is unreachable (see `Event::PeerUnreachable`).
    PeerUnreachable(String),
    /// BFD says the peer is reachable again (see `Event::PeerReachable`).
    PeerReachable,
}

enum Wake {
    Event(Event),
    Incoming(TcpStream),
    RoutesChanged,
    PolicyChanged(PeerPolicy),
    Stop(Option<BgpNotificationMessage>),
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

pub struct Session {
    peer: PeerConfig,
    local_as: u32,
    fsm: Fsm,
    options: ConnectOptions,
    conn: Option<Framed<TcpStream, WireCodec>>,
    connecting: Option<Connecting>,
    timers: HashMap<Timer, Instant>,
    rib: AdjRibOut,
    policy: Option<SendPolicy>,
    routes: watch::Receiver<Arc<PathTable>>,
    status: Arc<Mutex<SharedStatus>>,
    established_at: Option<Instant>,
    /// A write failed or stalled; the FSM hears of it as a lost connection.
    write_failure: Option<String>,
    /// NOTIFICATION log lines by (sent, code, subcode): a peer that
    /// reconnects in a loop must not flood the log.
    notification_log: LogLimit<(bool, u8, u8)>,
}

/// The TTL of our packets: 255 with GTSM (the peer checks it), else eBGP
/// peers are one hop away unless multihop says otherwise.
fn ttl(peer: &PeerConfig, local_as: u32) -> Option<u8> {
    if peer.min_ttl.is_some() {
        return Some(255);
    }
    match peer.ebgp_multihop_ttl {
        Some(ttl) => Some(ttl),
        None if peer.remote_as != local_as => Some(1),
        None => None,
    }
}

/// A session's status as the speaker handle reads it.
pub struct SharedStatus {
    pub status: PeerStatus,
    /// When the session reached Established; uptime is computed on read.
    pub established_at: Option<Instant>,
}

impl SharedStatus {
    pub fn snapshot(&self) -> PeerStatus {
        let mut status = self.status.clone();
        status.uptime = self.established_at.map(|at| at.elapsed());
        status
    }
}

pub fn initial_status(peer: &PeerConfig) -> SharedStatus {
    SharedStatus {
        established_at: None,
        status: PeerStatus {
            address: peer.address,
            remote_as: peer.remote_as,
            state: SessionState::Idle,
            uptime: None,
            established_count: 0,
            messages_sent: 0,
            messages_received: 0,
            updates_sent: 0,
            paths_announced: 0,
            families: Vec::new(),
            add_path: Vec::new(),
            last_error: None,
            notifications_sent: BTreeMap::new(),
            notifications_received: BTreeMap::new(),
        },
    }
}

impl Session {
    pub fn new(
        peer: PeerConfig,
        fsm_config: FsmConfig,
        routes: watch::Receiver<Arc<PathTable>>,
        status: Arc<Mutex<SharedStatus>>,
    ) -> Self {
        let local_as = fsm_config.local_as;
        let options = ConnectOptions {
            md5: peer.md5_password.clone(),
            ttl: ttl(&peer, local_as),
            min_ttl: peer.min_ttl,
            local_address: peer.local_address,
        };
        Self {
            fsm: Fsm::new(fsm_config),
            local_as,
            options,
            peer,
            conn: None,
            connecting: None,
            timers: HashMap::new(),
            rib: AdjRibOut::default(),
            policy: None,
            routes,
            status,
            established_at: None,
            write_failure: None,
            notification_log: LogLimit::default(),
        }
    }

    /// Counts a NOTIFICATION sent (`sent`) or received, and logs it with
    /// its reason, rate-limited: `last_error` is only the latest, and an
    /// operator who typed a wrong AS must find the reason in the log.
    fn notification(&mut self, sent: bool, notification: &BgpNotificationMessage) {
        let (code, subcode) = notification_code(notification);
        self.update_status(|status| {
            let counts = if sent {
                &mut status.notifications_sent
            } else {
                &mut status.notifications_received
            };
            *counts.entry((code, subcode)).or_default() += 1;
        });
        let Some(suppressed) = self
            .notification_log
            .allow(&(sent, code, subcode), Instant::now())
        else {
            return;
        };
        let peer = self.peer.address;
        if sent {
            let reason = match code {
                6 => "Cease: the session is stopped or reset on this side",
                _ => self.fsm.last_error().unwrap_or("unknown"),
            };
            warn!(%peer, code, subcode, %reason, ?notification, suppressed, "sent NOTIFICATION to the peer");
        } else {
            warn!(%peer, code, subcode, ?notification, suppressed, "received NOTIFICATION from the peer");
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut PeerStatus)) {
        if let Ok(mut shared) = self.status.lock() {
            change(&mut shared.status);
        }
    }

    fn set_established_at(&mut self, at: Option<Instant>) {
        self.established_at = at;
        if let Ok(mut shared) = self.status.lock() {
            shared.established_at = at;
        }
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.dispatch(Event::Start).await;
        loop {
            if let Some(reason) = self.write_failure.take() {
                self.dispatch(Event::TcpFailed(reason)).await;
                continue;
            }
            let event = match self.wait(&mut commands).await {
                Wake::Event(event) => event,
                Wake::Incoming(stream) => {
                    self.incoming(stream).await;
                    continue;
                }
                Wake::RoutesChanged => {
                    self.sync_routes().await;
                    continue;
                }
                Wake::PolicyChanged(policy) => {
                    info!(peer = %self.peer.address, ?policy, "outbound policy changed");
                    if let Some(send) = self.policy.as_mut() {
                        send.peer_policy = policy.clone();
                    }
                    self.peer.policy = policy;
                    self.sync_routes().await;
                    continue;
                }
                Wake::Stop(notification) => {
                    self.dispatch(Event::Stop(notification)).await;
                    return;
                }
            };
            if let Event::Message(BgpMessage::Notification(notification)) = &event {
                self.notification(false, notification);
            }
            self.dispatch(event).await;
        }
    }

    /// Waits for the next thing that needs handling.
    async fn wait(&mut self, commands: &mut mpsc::Receiver<Command>) -> Wake {
        let next_timer = self
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(timer, at)| (*timer, *at));
        let timer_at = next_timer.map_or_else(Instant::now, |(_, at)| at);
        let established = self.policy.is_some();
        let (connecting, conn, routes) = (&mut self.connecting, &mut self.conn, &mut self.routes);
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Incoming(stream)) => Wake::Incoming(stream),
                Some(Command::Stop(notification)) => Wake::Stop(notification),
                Some(Command::SetPolicy(policy)) => Wake::PolicyChanged(policy),
                Some(Command::PeerUnreachable(reason)) => Wake::Event(Event::PeerUnreachable(reason)),
                Some(Command::PeerReachable) => Wake::Event(Event::PeerReachable),
                None => Wake::Stop(None),
            },
            Some(result) = async { match connecting.as_mut() { Some(c) => Some(c.await), None => None } }, if connecting.is_some() => {
                *connecting = None;
                Wake::Event(match result {
                    Ok(stream) => {
                        if let Err(error) = socket::set_ttl(&stream, self.options.ttl) {
                            warn!(peer = %self.peer.address, %error, "setting the TTL");
                        }
                        *conn = Some(Framed::new(stream, WireCodec::new()));
                        Event::TcpEstablished
                    }
                    Err(error) => Event::TcpFailed(error.to_string()),
                })
            },
            Some(frame) = async { match conn.as_mut() { Some(c) => Some(c.next().await), None => None } }, if conn.is_some() => {
                Wake::Event(match frame {
                    Some(Ok(message)) => {
                        if let Ok(mut shared) = self.status.lock() {
                            shared.status.messages_received += 1;
                        }
                        Event::Message(message)
                    }
                    Some(Err(DecodeError::Malformed { reason, notification })) => {
                        warn!(peer = %self.peer.address, %reason, "malformed message from peer");
                        Event::Malformed { reason, notification }
                    }
                    Some(Err(DecodeError::Io(error))) => Event::TcpFailed(error.to_string()),
                    None => Event::TcpFailed("the peer closed the connection".into()),
                })
            },
            () = tokio::time::sleep_until(timer_at), if next_timer.is_some() => {
                match next_timer {
                    Some((timer, _)) => {
                        self.timers.remove(&timer);
                        Wake::Event(Event::TimerExpired(timer))
                    }
                    None => Wake::RoutesChanged,
                }
            },
            Ok(()) = routes.changed(), if established => Wake::RoutesChanged,
        }
    }

    async fn incoming(&mut self, stream: TcpStream) {
        if !self.fsm.accepts_incoming() {
            debug!(peer = %self.peer.address, state = ?self.fsm.state(), "refusing a second connection from the peer");
            return;
        }
        if let Err(error) = socket::set_ttl(&stream, self.options.ttl) {
            warn!(peer = %self.peer.address, %error, "setting the TTL");
        }
        if let Err(error) = socket::set_min_ttl(&stream, self.peer.address, self.options.min_ttl) {
            // Without it the session would run unprotected: refuse it.
            warn!(peer = %self.peer.address, %error, "cannot set the minimum TTL (GTSM); closing the connection");
            return;
        }
        // The peer's connection wins over our pending attempt.
        self.connecting = None;
        self.conn = Some(Framed::new(stream, WireCodec::new()));
        self.dispatch(Event::TcpEstablished).await;
    }

    async fn dispatch(&mut self, event: Event) {
        let before = self.fsm.state();
        let actions = self.fsm.handle(event);
        for action in actions {
            self.perform(action).await;
        }
        self.flush().await;
        let state = self.fsm.state();
        if state != before {
            debug!(peer = %self.peer.address, from = ?before, to = ?state, "state change");
        }
        let last_error = self.fsm.last_error().map(str::to_owned);
        self.update_status(|status| {
            status.state = state;
            status.last_error = last_error;
        });
    }

    /// How long a write may block before the peer counts as gone: a peer
    /// that stops reading would otherwise stall this session forever (its
    /// hold timer cannot fire while we wait on the socket).
    fn write_timeout(&self) -> Duration {
        match self.peer.hold_time {
            0 => Duration::from_secs(240),
            hold => Duration::from_secs(u64::from(hold.max(3))),
        }
    }

    /// Marks the connection failed; `run` feeds the FSM the failure next.
    fn write_failed(&mut self, reason: String) {
        debug!(peer = %self.peer.address, %reason, "write failed");
        self.conn = None;
        self.write_failure.get_or_insert(reason);
    }

    async fn send(&mut self, message: BgpMessage) {
        if let BgpMessage::Notification(notification) = &message
            && self.conn.is_some()
        {
            self.notification(true, notification);
        }
        let is_update = matches!(message, BgpMessage::Update(_));
        let timeout = self.write_timeout();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // feed() buffers, and writes out only when the buffer is full.
        match tokio::time::timeout(timeout, conn.feed(message)).await {
            Ok(Ok(())) => self.update_status(|status| {
                status.messages_sent += 1;
                status.updates_sent += u64::from(is_update);
            }),
            Ok(Err(error)) => self.write_failed(error.to_string()),
            Err(_) => self.write_failed(format!("the peer read nothing for {timeout:?}")),
        }
    }

    async fn flush(&mut self) {
        let timeout = self.write_timeout();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match tokio::time::timeout(timeout, conn.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.write_failed(error.to_string()),
            Err(_) => self.write_failed(format!("the peer read nothing for {timeout:?}")),
        }
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Connect => {
                let address = SocketAddr::new(self.peer.address, self.peer.remote_port);
                let options = self.options.clone();
                self.connecting =
                    Some(Box::pin(
                        async move { socket::connect(address, &options).await },
                    ));
            }
            Action::Send(message) => self.send(message).await,
            Action::CloseConnection => {
                self.flush().await;
                self.connecting = None;
                self.conn = None;
            }
            Action::StartTimer(timer, after) => {
                self.timers.insert(timer, Instant::now() + after);
            }
            Action::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Action::SessionUp(negotiated) => self.session_up(negotiated).await,
            Action::SessionDown(reason) => {
                info!(peer = %self.peer.address, %reason, "session down");
                self.policy = None;
                self.rib = AdjRibOut::default();
                self.set_established_at(None);
                self.update_status(|status| {
                    status.paths_announced = 0;
                    status.families.clear();
                    status.add_path.clear();
                });
            }
            Action::Resend(family) => {
                info!(peer = %self.peer.address, ?family, "route refresh requested");
                self.rib.forget(family);
                self.sync_routes().await;
            }
        }
    }

    async fn session_up(&mut self, negotiated: Negotiated) {
        let max_paths = usize::from(self.peer.add_path_send_max);
        let family_policy = |family: Family| {
            negotiated.families.contains(&family).then(|| {
                let add_path = negotiated.add_path.contains(&family);
                FamilyPolicy {
                    add_path,
                    max_paths: if add_path { max_paths } else { 1 },
                }
            })
        };
        for family in &negotiated.families {
            if !negotiated.add_path.contains(family) {
                info!(
                    peer = %self.peer.address,
                    ?family,
                    send_max = self.peer.add_path_send_max,
                    reason = if self.peer.add_path_send_max == 0 {
                        "ADD-PATH is disabled for this peer (send-max 0)"
                    } else {
                        "the peer did not offer ADD-PATH receive"
                    },
                    "sending one path per prefix"
                );
            }
        }
        let local_address = self
            .conn
            .as_ref()
            .and_then(|conn| conn.get_ref().local_addr().ok())
            .map(|address| address.ip().to_canonical());
        self.policy = Some(SendPolicy {
            peer: self.peer.address,
            local_address,
            next_hop_self: self.peer.next_hop_self.clone(),
            peer_policy: self.peer.policy.clone(),
            local_as: self.local_as,
            ebgp: self.peer.remote_as != self.local_as,
            asn4: negotiated.asn4,
            ipv4: family_policy(Family::Ipv4Unicast),
            ipv6: family_policy(Family::Ipv6Unicast),
        });
        info!(
            peer = %self.peer.address,
            router_id = %negotiated.remote_router_id,
            hold_time = negotiated.hold_time,
            families = ?negotiated.families,
            add_path = ?negotiated.add_path,
            "session established"
        );
        self.set_established_at(Some(Instant::now()));
        self.rib = AdjRibOut::default();
        self.update_status(|status| {
            status.established_count += 1;
            status.families = negotiated.families.clone();
            status.add_path = negotiated.add_path.clone();
        });
        self.sync_routes().await;
        for family in &negotiated.families {
            self.send(rib::end_of_rib(*family)).await;
        }
    }

    /// Sends the peer the difference between what it has and what it should have.
    async fn sync_routes(&mut self) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let routes = Arc::clone(&self.routes.borrow_and_update());
        let (desired, omitted) = rib::desired_paths(&routes, &policy);
        debug!(peer = %self.peer.address, ?omitted, "paths not sent to this peer");
        if omitted.next_hop_self_unavailable > 0 {
            warn!(
                peer = %self.peer.address,
                paths = omitted.next_hop_self_unavailable,
                "next hop self needs an address of the prefix's family: the session has none and the peer's next_hop_self gives none; those paths are not announced"
            );
        }
        if omitted.next_hop_family_mismatch > 0 {
            warn!(
                peer = %self.peer.address,
                next_hops = omitted.next_hop_family_mismatch,
                "next hops of the other address family than their prefix are not announced"
            );
        }
        let changes = self.rib.update(desired, &policy);
        if changes.is_empty() {
            return;
        }
        let messages = rib::encode(&changes, &policy);
        debug!(peer = %self.peer.address, updates = messages.len(), withdrawn = changes.withdraw.len(), "sending route changes");
        for message in messages {
            self.send(message).await;
        }
        self.flush().await;
        let paths = self.rib.paths() as u64;
        self.update_status(|status| status.paths_announced = paths);
    }
}

/// How long `Speaker::shutdown` waits for sessions to say goodbye.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);

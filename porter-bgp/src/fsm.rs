//! The RFC 4271 finite state machine of one peer, as a pure function:
//! events in, actions out. It owns no socket and no clock; the session task
//! (session.rs) performs the actions and turns I/O and timers into events.
use std::{net::Ipv4Addr, time::Duration};

use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
        GracefulRestartAddressFamily, GracefulRestartCapability,
        LongLivedGracefulRestartAddressFamily, LongLivedGracefulRestartCapability,
        MultiProtocolExtensionsCapability,
    },
    notification::{
        BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
        OpenMessageError,
    },
    open::{BgpOpenMessage, BgpOpenMessageParameter},
};
use netgauze_iana::address_family::AddressType;

use crate::{Family, codec::notification_code, policy::AS_TRANS};

/// RFC 4271 section 8.2.2 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    /// Delay before an automatic restart after a reset (RFC 4271
    /// IdleHoldTimer, used for peer oscillation damping).
    IdleHold,
}

/// The hold time used while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);
/// Keepalives received in Established after which a session counts as
/// stable and the reconnect backoff starts again from its base.
const STABLE_KEEPALIVES: u32 = 3;
/// Longest reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// What the FSM needs to know about both ends.
#[derive(Clone, Debug)]
pub struct FsmConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub remote_as: u32,
    pub passive: bool,
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs where fewer than a third of the hold time.
    pub keepalive: Option<u16>,
    pub connect_retry: Duration,
    pub families: Vec<Family>,
    pub add_path_send_max: u8,
    /// Graceful restart time in seconds, when enabled.
    pub graceful_restart: Option<u16>,
    /// Long-lived stale time in seconds (RFC 9494), when enabled; only
    /// with `graceful_restart`.
    pub long_lived_stale_time: Option<u32>,
    /// Set the restart flag (R) in the first OPEN: this speaker has just
    /// (re)started and peers may hold its routes as stale.
    pub restarting: bool,
    /// Spreads reconnects of different peers (0..=u64::MAX).
    pub jitter_seed: u64,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// ManualStart: connect (active) or wait for the peer (passive).
    Start,
    /// ManualStop; with a NOTIFICATION, the peer is told why (Cease); without
    /// one the connection just closes, so that a graceful-restart peer keeps
    /// our routes.
    Stop(Option<BgpNotificationMessage>),
    /// A TCP connection to the peer is up (ours or one the peer opened).
    TcpEstablished,
    /// Connecting failed, or the connection closed.
    TcpFailed(String),
    TimerExpired(Timer),
    Message(BgpMessage),
    /// A liveness check outside BGP (BFD, RFC 5882) says the peer is
    /// unreachable: the session goes down at once, with a Cease "BFD Down"
    /// (RFC 9384), instead of waiting for the hold timer.
    PeerUnreachable(String),
    /// The same check says the peer is reachable again: a session waiting
    /// to reconnect (Idle after a reset, or Active between attempts)
    /// connects now, with its backoff back at the base.
    PeerReachable,
    /// The peer sent bytes that do not decode; the NOTIFICATION says why.
    Malformed {
        reason: String,
        notification: BgpNotificationMessage,
    },
}

/// What a session agreed in the OPEN exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub hold_time: u16,
    pub remote_router_id: Ipv4Addr,
    pub asn4: bool,
    pub families: Vec<Family>,
    /// Families where we may send several paths per prefix (RFC 7911).
    pub add_path: Vec<Family>,
    pub route_refresh: bool,
    /// The peer advertised graceful restart: it may keep our routes over a restart.
    pub peer_graceful_restart: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open an outgoing TCP connection.
    Connect,
    Send(BgpMessage),
    CloseConnection,
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// Entered Established: send the routes, then End-of-RIB.
    SessionUp(Negotiated),
    /// Left Established.
    SessionDown(String),
    /// The peer asked for the routes of a family again (RFC 2918).
    Resend(Family),
}

pub struct Fsm {
    config: FsmConfig,
    state: State,
    negotiated: Option<Negotiated>,
    /// Resets since the session was last stable; drives the backoff.
    failures: u32,
    stable_keepalives: u32,
    sent_restart_flag: bool,
    last_error: Option<String>,
}

pub fn address_type(family: Family) -> AddressType {
    match family {
        Family::Ipv4Unicast => AddressType::Ipv4Unicast,
        Family::Ipv6Unicast => AddressType::Ipv6Unicast,
    }
}

fn family_of(address_type: AddressType) -> Option<Family> {
    match address_type {
        AddressType::Ipv4Unicast => Some(Family::Ipv4Unicast),
        AddressType::Ipv6Unicast => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

/// Reconnect delay after `failures` resets: exponential from `base`, capped,
/// scaled by a jitter factor in [0.75, 1] (RFC 4271 section 10).
pub fn backoff(base: Duration, failures: u32, seed: u64) -> Duration {
    let exponential = base.saturating_mul(1 << failures.min(7));
    let capped = exponential.min(MAX_BACKOFF.max(base));
    let mixed = (seed ^ u64::from(failures))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29);
    let jitter = 0.75 + 0.25 * (mixed % 1000) as f64 / 1000.0;
    capped.mul_f64(jitter)
}

/// Time between KEEPALIVEs on a session whose negotiated hold time is
/// `hold` seconds: a third of it (RFC 4271 section 4.4), or `configured`
/// when that is shorter, and never under a second (the RFC's floor). None
/// when the hold time is 0: no keepalives at all.
pub fn keepalive_interval(hold: u16, configured: Option<u16>) -> Option<Duration> {
    if hold == 0 {
        return None;
    }
    let third = hold / 3;
    let seconds = configured.map_or(third, |c| c.min(third)).max(1);
    Some(Duration::from_secs(seconds.into()))
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Self {
        Self {
            config,
            state: State::Idle,
            negotiated: None,
            failures: 0,
            stable_keepalives: 0,
            sent_restart_flag: false,
            last_error: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    #[cfg(test)]
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether a connection the peer opened may be taken now. Once we are in
    /// OpenSent or later we keep our own connection; in Idle we are backing off.
    pub fn accepts_incoming(&self) -> bool {
        matches!(self.state, State::Connect | State::Active)
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.state, event) {
            (State::Idle, Event::Start) | (State::Idle, Event::TimerExpired(Timer::IdleHold)) => {
                self.start(&mut actions)
            }
            (_, Event::Start) => {}
            (State::Idle, Event::PeerReachable) => {
                self.failures = 0;
                actions.push(Action::StopTimer(Timer::IdleHold));
                self.start(&mut actions);
            }
            (State::Active, Event::PeerReachable) if !self.config.passive => {
                self.failures = 0;
                actions.push(Action::Connect);
                actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
                self.state = State::Connect;
            }
            (State::Idle, Event::Stop(_)) => actions.push(Action::StopTimer(Timer::IdleHold)),
            (_, Event::Stop(notification)) => {
                if let Some(notification) = notification {
                    actions.push(Action::Send(BgpMessage::Notification(notification)));
                }
                self.leave(&mut actions, "stopped by configuration".into());
                actions.push(Action::StopTimer(Timer::IdleHold));
                self.state = State::Idle;
            }
            (State::Connect | State::Active, Event::TcpEstablished) => {
                actions.push(Action::StopTimer(Timer::ConnectRetry));
                actions.push(Action::Send(BgpMessage::Open(self.open())));
                actions.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
                self.state = State::OpenSent;
            }
            (State::Connect, Event::TcpFailed(reason)) => {
                self.last_error = Some(format!("connecting: {reason}"));
                self.failures = self.failures.saturating_add(1);
                actions.push(Action::CloseConnection);
                actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
                self.state = State::Active;
            }
            (State::Connect, Event::TimerExpired(Timer::ConnectRetry)) => {
                // The connect attempt hung: abandon it and try again.
                self.failures = self.failures.saturating_add(1);
                actions.push(Action::CloseConnection);
                actions.push(Action::Connect);
                actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
            }
            (State::Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                actions.push(Action::Connect);
                actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
                self.state = State::Connect;
            }
            (State::OpenSent, Event::Message(BgpMessage::Open(open))) => {
                match self.negotiate(&open) {
                    Ok(negotiated) => {
                        actions.push(Action::Send(BgpMessage::KeepAlive));
                        self.arm_session_timers(&mut actions, negotiated.hold_time);
                        self.negotiated = Some(negotiated);
                        self.state = State::OpenConfirm;
                    }
                    Err((reason, notification)) => {
                        self.fail(&mut actions, reason, Some(notification));
                    }
                }
            }
            (State::OpenConfirm, Event::Message(BgpMessage::KeepAlive)) => {
                if let Some(negotiated) = &self.negotiated {
                    self.restart_hold(&mut actions, negotiated.hold_time);
                    actions.push(Action::SessionUp(negotiated.clone()));
                }
                self.stable_keepalives = 0;
                self.last_error = None;
                self.state = State::Established;
            }
            (State::Established, Event::Message(BgpMessage::KeepAlive)) => {
                self.stable_keepalives = self.stable_keepalives.saturating_add(1);
                if self.stable_keepalives >= STABLE_KEEPALIVES {
                    self.failures = 0;
                }
                self.received_in_session(&mut actions);
            }
            (State::Established, Event::Message(BgpMessage::Update(_))) => {
                // Announce-only: what the peer sends is validated by the codec
                // and otherwise ignored.
                self.received_in_session(&mut actions);
            }
            (State::Established, Event::Message(BgpMessage::RouteRefresh(refresh))) => {
                self.received_in_session(&mut actions);
                let negotiated_family = family_of(refresh.address_type()).filter(|family| {
                    self.negotiated
                        .as_ref()
                        .is_some_and(|n| n.families.contains(family))
                });
                if let Some(family) = negotiated_family {
                    actions.push(Action::Resend(family));
                }
            }
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::Message(BgpMessage::Notification(notification)),
            ) => {
                let (code, subcode) = notification_code(&notification);
                self.fail(
                    &mut actions,
                    format!("peer sent NOTIFICATION {code}/{subcode}: {notification:?}"),
                    None,
                );
            }
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                Event::Message(message),
            ) => {
                let unexpected = match state {
                    State::OpenSent => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState {
                            value: Box::new([message.get_type() as u8]),
                        }
                    }
                    State::OpenConfirm => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState {
                            value: Box::new([message.get_type() as u8]),
                        }
                    }
                    _ => FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState {
                        value: Box::new([message.get_type() as u8]),
                    },
                };
                self.fail(
                    &mut actions,
                    format!("unexpected {:?} in {state:?}", message.get_type()),
                    Some(BgpNotificationMessage::FiniteStateMachineError(unexpected)),
                );
            }
            (State::OpenConfirm | State::Established, Event::TimerExpired(Timer::Keepalive)) => {
                actions.push(Action::Send(BgpMessage::KeepAlive));
                if let Some(hold) = self.negotiated.as_ref().map(|n| n.hold_time)
                    && let Some(interval) = keepalive_interval(hold, self.config.keepalive)
                {
                    actions.push(Action::StartTimer(Timer::Keepalive, interval));
                }
            }
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::TimerExpired(Timer::Hold),
            ) => self.fail(
                &mut actions,
                "hold timer expired: the peer went silent".into(),
                Some(BgpNotificationMessage::HoldTimerExpiredError(
                    HoldTimerExpiredError::Unspecific {
                        sub_code: 0,
                        value: Box::new([]),
                    },
                )),
            ),
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::TcpFailed(reason),
            ) => self.fail(&mut actions, format!("connection lost: {reason}"), None),
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::PeerUnreachable(reason),
            ) => {
                // The path failed, not the peer: the reconnect backoff does
                // not grow, so the session returns one backoff after the
                // path does, however often the path failed before.
                self.reset(
                    &mut actions,
                    reason,
                    Some(BgpNotificationMessage::CeaseError(CeaseError::BfdDown {
                        value: Box::new([]),
                    })),
                );
            }
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::Malformed {
                    reason,
                    notification,
                },
            ) => self.fail(&mut actions, reason, Some(notification)),
            // Timers that raced with a state change, and connection events that
            // no longer apply (a late connect result in Idle): nothing to do.
            (_, event) => {
                tracing::trace!(state = ?self.state, ?event, "event ignored in this state");
            }
        }
        actions
    }

    fn start(&mut self, actions: &mut Vec<Action>) {
        if self.config.passive {
            self.state = State::Active;
        } else {
            actions.push(Action::Connect);
            actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
            self.state = State::Connect;
        }
    }

    fn backoff(&self) -> Duration {
        backoff(
            self.config.connect_retry,
            self.failures,
            self.config.jitter_seed,
        )
    }

    fn arm_session_timers(&self, actions: &mut Vec<Action>, hold_time: u16) {
        self.restart_hold(actions, hold_time);
        match keepalive_interval(hold_time, self.config.keepalive) {
            Some(interval) => actions.push(Action::StartTimer(Timer::Keepalive, interval)),
            None => actions.push(Action::StopTimer(Timer::Keepalive)),
        }
    }

    fn restart_hold(&self, actions: &mut Vec<Action>, hold_time: u16) {
        if hold_time > 0 {
            actions.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(hold_time)),
            ));
        } else {
            actions.push(Action::StopTimer(Timer::Hold));
        }
    }

    fn received_in_session(&self, actions: &mut Vec<Action>) {
        if let Some(negotiated) = &self.negotiated {
            self.restart_hold(actions, negotiated.hold_time);
        }
    }

    /// Tears the connection down (telling the peer why, when there is a
    /// NOTIFICATION), then waits out the backoff before starting again.
    fn fail(
        &mut self,
        actions: &mut Vec<Action>,
        reason: String,
        notification: Option<BgpNotificationMessage>,
    ) {
        self.failures = self.failures.saturating_add(1);
        self.reset(actions, reason, notification);
    }

    /// [`Self::fail`] without counting a failure towards the backoff.
    fn reset(
        &mut self,
        actions: &mut Vec<Action>,
        reason: String,
        notification: Option<BgpNotificationMessage>,
    ) {
        if let Some(notification) = notification {
            actions.push(Action::Send(BgpMessage::Notification(notification)));
        }
        self.leave(actions, reason.clone());
        self.last_error = Some(reason);
        actions.push(Action::StartTimer(Timer::IdleHold, self.backoff()));
        self.state = State::Idle;
    }

    /// Closes the connection and stops the session timers.
    fn leave(&mut self, actions: &mut Vec<Action>, reason: String) {
        actions.push(Action::CloseConnection);
        for timer in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            actions.push(Action::StopTimer(timer));
        }
        if self.state == State::Established {
            actions.push(Action::SessionDown(reason));
        }
        self.negotiated = None;
    }

    fn open(&mut self) -> BgpOpenMessage {
        let config = &self.config;
        let mut capabilities: Vec<BgpCapability> = config
            .families
            .iter()
            .map(|family| {
                BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                    address_type(*family),
                ))
            })
            .collect();
        capabilities.push(BgpCapability::RouteRefresh);
        capabilities.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
            config.local_as,
        )));
        if config.add_path_send_max > 0 {
            capabilities.push(BgpCapability::AddPath(AddPathCapability::new(
                config
                    .families
                    .iter()
                    .map(|family| AddPathAddressFamily::new(address_type(*family), true, false))
                    .collect::<Vec<_>>(),
            )));
        }
        if let Some(restart_time) = config.graceful_restart {
            // Forwarding state is preserved: the nodes keep forwarding while
            // this speaker restarts, so peers must keep our routes (F bit).
            capabilities.push(BgpCapability::GracefulRestartCapability(
                GracefulRestartCapability::new(
                    config.restarting && !self.sent_restart_flag,
                    false,
                    restart_time.min(4095),
                    config
                        .families
                        .iter()
                        .map(|family| {
                            GracefulRestartAddressFamily::new(true, address_type(*family))
                        })
                        .collect::<Vec<_>>(),
                ),
            ));
            if let Some(stale_time) = config.long_lived_stale_time {
                // F bit as above; the peer caps the stale time with its own.
                capabilities.push(BgpCapability::LongLivedGracefulRestart(
                    LongLivedGracefulRestartCapability::new(
                        config
                            .families
                            .iter()
                            .map(|family| {
                                LongLivedGracefulRestartAddressFamily::new(
                                    true,
                                    address_type(*family),
                                    stale_time
                                        .min(LongLivedGracefulRestartAddressFamily::MAX_STALE_TIME),
                                )
                            })
                            .collect::<Vec<_>>(),
                    ),
                ));
            }
            self.sent_restart_flag = true;
        }
        BgpOpenMessage::new(
            u16::try_from(config.local_as).unwrap_or(AS_TRANS),
            config.hold_time,
            config.router_id,
            vec![BgpOpenMessageParameter::Capabilities(capabilities.into())],
        )
    }

    fn negotiate(
        &self,
        open: &BgpOpenMessage,
    ) -> Result<Negotiated, (String, BgpNotificationMessage)> {
        let config = &self.config;
        let peer_as = open.my_asn4();
        if peer_as != config.remote_as {
            return Err((
                format!(
                    "peer says it is AS {peer_as}, configured remote AS is {}",
                    config.remote_as
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs {
                    value: Box::new(open.my_as().to_be_bytes()),
                }),
            ));
        }
        if matches!(open.hold_time(), 1 | 2) {
            return Err((
                format!(
                    "peer proposed hold time {}s; it must be 0 or at least 3",
                    open.hold_time()
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime {
                    value: Box::new([]),
                }),
            ));
        }
        let id = open.bgp_id();
        let ibgp = peer_as == config.local_as;
        if id.is_unspecified() || (ibgp && id == config.router_id) {
            return Err((
                format!("peer BGP identifier {id} is invalid (zero, or ours on iBGP)"),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier {
                    value: Box::new(id.octets()),
                }),
            ));
        }
        let capabilities = open.capabilities();
        let mut peer_families: Vec<Family> = capabilities
            .iter()
            .filter_map(|cap| match cap {
                BgpCapability::MultiProtocolExtensions(mp) => family_of(mp.address_type()),
                _ => None,
            })
            .collect();
        let peer_sent_mp = capabilities
            .iter()
            .any(|cap| matches!(cap, BgpCapability::MultiProtocolExtensions(_)));
        if !peer_sent_mp {
            // RFC 4760: without the capability, the peer speaks IPv4 unicast only.
            peer_families.push(Family::Ipv4Unicast);
        }
        let families: Vec<Family> = config
            .families
            .iter()
            .copied()
            .filter(|family| peer_families.contains(family))
            .collect();
        if families.is_empty() {
            return Err((
                format!(
                    "no address family in common: we offer {:?}, the peer {peer_families:?}",
                    config.families
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedCapability {
                    value: Box::new([]),
                }),
            ));
        }
        let add_path = if config.add_path_send_max > 0 {
            families
                .iter()
                .copied()
                .filter(|family| {
                    capabilities.iter().any(|cap| match cap {
                        BgpCapability::AddPath(add_path) => add_path
                            .address_families()
                            .iter()
                            .any(|af| af.address_type() == address_type(*family) && af.receive()),
                        _ => false,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Negotiated {
            hold_time: config.hold_time.min(open.hold_time()),
            remote_router_id: id,
            asn4: capabilities
                .iter()
                .any(|cap| matches!(cap, BgpCapability::FourOctetAs(_))),
            families,
            add_path,
            route_refresh: capabilities.iter().any(|cap| {
                matches!(
                    cap,
                    BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh
                )
            }),
            peer_graceful_restart: capabilities
                .iter()
                .any(|cap| matches!(cap, BgpCapability::GracefulRestartCapability(_))),
        })
    }
}

/// A Cease NOTIFICATION for an operator-initiated close.
pub fn cease(error: CeaseError) -> BgpNotificationMessage {
    BgpNotificationMessage::CeaseError(error)
}

#[cfg(test)]
mod tests {
    use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
    use netgauze_bgp_pkt::{
        capabilities::AddPathAddressFamily, route_refresh::BgpRouteRefreshMessage,
    };

    use super::*;

    fn config(passive: bool) -> FsmConfig {
        FsmConfig {
            local_as: 65000,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            remote_as: 65001,
            passive,
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(1),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            add_path_send_max: 4,
            graceful_restart: Some(120),
            long_lived_stale_time: None,
            restarting: true,
            jitter_seed: 7,
        }
    }

    /// The peer's OPEN: AS 65001, MP v4 only, ADD-PATH receive for v4.
    fn peer_open(asn: u32, hold: u16, add_path_receive: bool) -> BgpMessage {
        let mut caps = vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv4Unicast,
            )),
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)),
            BgpCapability::RouteRefresh,
        ];
        if add_path_receive {
            caps.push(BgpCapability::AddPath(AddPathCapability::new(vec![
                AddPathAddressFamily::new(AddressType::Ipv4Unicast, false, true),
            ])));
        }
        BgpMessage::Open(BgpOpenMessage::new(
            u16::try_from(asn).unwrap_or(AS_TRANS),
            hold,
            Ipv4Addr::new(10, 0, 0, 2),
            vec![BgpOpenMessageParameter::Capabilities(caps.into())],
        ))
    }

    fn sent(actions: &[Action]) -> Vec<&BgpMessage> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Send(message) => Some(message),
                _ => None,
            })
            .collect()
    }

    fn sent_notification(actions: &[Action]) -> Option<(u8, u8)> {
        sent(actions).into_iter().find_map(|message| match message {
            BgpMessage::Notification(n) => Some(notification_code(n)),
            _ => None,
        })
    }

    /// Drives an active FSM to Established against an in-memory peer.
    fn established(add_path_receive: bool) -> (Fsm, Negotiated) {
        let mut fsm = Fsm::new(config(false));
        let actions = fsm.handle(Event::Start);
        assert!(actions.contains(&Action::Connect));
        assert_eq!(fsm.state(), State::Connect);
        let actions = fsm.handle(Event::TcpEstablished);
        let open = sent(&actions);
        let [BgpMessage::Open(open)] = open.as_slice() else {
            panic!("an OPEN is sent first: {actions:?}");
        };
        assert_eq!(open.my_asn4(), 65000);
        let caps = open.capabilities();
        assert!(caps.iter().any(|c| matches!(c, BgpCapability::AddPath(_))));
        assert!(caps.iter().any(|c| matches!(c, BgpCapability::GracefulRestartCapability(gr) if gr.restart() && gr.time() == 120)));
        assert_eq!(fsm.state(), State::OpenSent);
        let actions = fsm.handle(Event::Message(peer_open(65001, 30, add_path_receive)));
        assert_eq!(sent(&actions), vec![&BgpMessage::KeepAlive]);
        assert!(actions.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(30))));
        assert!(actions.contains(&Action::StartTimer(
            Timer::Keepalive,
            Duration::from_secs(10)
        )));
        assert_eq!(fsm.state(), State::OpenConfirm);
        let actions = fsm.handle(Event::Message(BgpMessage::KeepAlive));
        assert_eq!(fsm.state(), State::Established);
        let negotiated = actions
            .iter()
            .find_map(|action| match action {
                Action::SessionUp(negotiated) => Some(negotiated.clone()),
                _ => None,
            })
            .expect("SessionUp on entering Established");
        (fsm, negotiated)
    }

    #[test]
    fn active_session_negotiates_hold_time_families_and_add_path() {
        let (fsm, negotiated) = established(true);
        assert_eq!(negotiated.hold_time, 30, "the smaller hold time wins");
        assert_eq!(negotiated.families, vec![Family::Ipv4Unicast]);
        assert_eq!(negotiated.add_path, vec![Family::Ipv4Unicast]);
        assert!(negotiated.asn4 && negotiated.route_refresh);
        assert_eq!(fsm.negotiated(), Some(&negotiated));
    }

    #[test]
    fn peer_without_add_path_receive_negotiates_none() {
        let (_, negotiated) = established(false);
        assert!(negotiated.add_path.is_empty());
    }

    #[test]
    fn restart_flag_is_set_only_in_the_first_open() {
        let (mut fsm, _) = established(true);
        fsm.handle(Event::TcpFailed("reset".into()));
        fsm.handle(Event::TimerExpired(Timer::IdleHold));
        let actions = fsm.handle(Event::TcpEstablished);
        let Some(BgpMessage::Open(open)) = sent(&actions).first().copied() else {
            panic!("OPEN");
        };
        assert!(
            open.capabilities().iter().any(
                |c| matches!(c, BgpCapability::GracefulRestartCapability(gr) if !gr.restart())
            )
        );
    }

    #[test]
    fn long_lived_graceful_restart_is_offered_per_family_with_its_stale_time() {
        let mut fsm = Fsm::new(FsmConfig {
            graceful_restart: Some(0),
            long_lived_stale_time: Some(120),
            ..config(false)
        });
        fsm.handle(Event::Start);
        let actions = fsm.handle(Event::TcpEstablished);
        let Some(BgpMessage::Open(open)) = sent(&actions).first().copied() else {
            panic!("OPEN");
        };
        let caps = open.capabilities();
        assert!(
            caps.iter().any(
                |c| matches!(c, BgpCapability::GracefulRestartCapability(gr) if gr.time() == 0)
            )
        );
        let llgr: Vec<(AddressType, u32, bool)> = caps
            .iter()
            .filter_map(|c| match c {
                BgpCapability::LongLivedGracefulRestart(llgr) => Some(llgr),
                _ => None,
            })
            .flat_map(|llgr| llgr.address_families().iter())
            .map(|af| (af.address_type(), af.stale_time(), af.forwarding_state()))
            .collect();
        assert_eq!(
            llgr,
            vec![
                (AddressType::Ipv4Unicast, 120, true),
                (AddressType::Ipv6Unicast, 120, true)
            ]
        );
        // Without it, only RFC 4724's capability.
        let mut plain = Fsm::new(config(false));
        plain.handle(Event::Start);
        let actions = plain.handle(Event::TcpEstablished);
        let Some(BgpMessage::Open(open)) = sent(&actions).first().copied() else {
            panic!("OPEN");
        };
        assert!(
            !open
                .capabilities()
                .iter()
                .any(|c| matches!(c, BgpCapability::LongLivedGracefulRestart(_)))
        );
    }

    #[test]
    fn keepalives_are_sent_and_hold_expiry_notifies() {
        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::TimerExpired(Timer::Keepalive));
        assert_eq!(sent(&actions), vec![&BgpMessage::KeepAlive]);
        let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(sent_notification(&actions), Some((4, 0)));
        assert!(actions.contains(&Action::CloseConnection));
        assert!(actions.iter().any(|a| matches!(a, Action::SessionDown(_))));
        assert_eq!(fsm.state(), State::Idle);
        assert!(fsm.last_error().is_some_and(|e| e.contains("hold timer")));
    }

    #[test]
    fn keepalives_go_out_at_a_third_of_the_hold_time_or_the_shorter_configured_interval() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(keepalive_interval(90, None), secs(30));
        assert_eq!(keepalive_interval(9, Some(1)), secs(1));
        assert_eq!(
            keepalive_interval(9, Some(10)),
            secs(3),
            "never longer than a third"
        );
        assert_eq!(keepalive_interval(3, None), secs(1));
        assert_eq!(
            keepalive_interval(30, Some(0)),
            secs(1),
            "never under a second"
        );
        assert_eq!(keepalive_interval(0, Some(1)), None, "hold time 0: none");

        // The session arms its timer with it, and re-arms it after each KEEPALIVE.
        let mut fsm = Fsm::new(FsmConfig {
            keepalive: Some(1),
            ..config(false)
        });
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpEstablished);
        let armed = |actions: &[Action]| {
            actions.contains(&Action::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(1),
            ))
        };
        assert!(armed(
            &fsm.handle(Event::Message(peer_open(65001, 9, true)))
        ));
        let actions = fsm.handle(Event::TimerExpired(Timer::Keepalive));
        assert_eq!(sent(&actions), vec![&BgpMessage::KeepAlive]);
        assert!(armed(&actions), "{actions:?}");
    }

    #[test]
    fn wrong_peer_as_gets_bad_peer_as() {
        let mut fsm = Fsm::new(config(false));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpEstablished);
        let actions = fsm.handle(Event::Message(peer_open(65099, 90, true)));
        assert_eq!(sent_notification(&actions), Some((2, 2)));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn unacceptable_hold_time_is_refused() {
        let mut fsm = Fsm::new(config(false));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpEstablished);
        let actions = fsm.handle(Event::Message(peer_open(65001, 2, true)));
        assert_eq!(sent_notification(&actions), Some((2, 6)));
    }

    #[test]
    fn unexpected_messages_get_fsm_errors() {
        let mut fsm = Fsm::new(config(false));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpEstablished);
        let actions = fsm.handle(Event::Message(BgpMessage::KeepAlive));
        assert_eq!(sent_notification(&actions), Some((5, 1)));

        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::Message(peer_open(65001, 90, true)));
        assert_eq!(sent_notification(&actions), Some((5, 3)));
    }

    #[test]
    fn malformed_input_is_answered_with_its_notification() {
        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::Malformed {
            reason: "bad attribute".into(),
            notification: BgpNotificationMessage::UpdateMessageError(
                netgauze_bgp_pkt::notification::UpdateMessageError::MalformedAttributeList {
                    value: Box::new([]),
                },
            ),
        });
        assert_eq!(sent_notification(&actions), Some((3, 1)));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn route_refresh_requests_a_resend_of_negotiated_families_only() {
        let (mut fsm, _) = established(true);
        let refresh = |address_type| {
            Event::Message(BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
                address_type,
                RouteRefreshSubcode::NormalRequest,
            )))
        };
        assert!(
            fsm.handle(refresh(AddressType::Ipv4Unicast))
                .contains(&Action::Resend(Family::Ipv4Unicast))
        );
        assert!(
            !fsm.handle(refresh(AddressType::Ipv6Unicast))
                .iter()
                .any(|a| matches!(a, Action::Resend(_)))
        );
    }

    #[test]
    fn failures_back_off_and_a_stable_session_resets_the_backoff() {
        let mut fsm = Fsm::new(config(false));
        fsm.handle(Event::Start);
        let mut delays = Vec::new();
        for _ in 0..6 {
            let actions = fsm.handle(Event::TcpFailed("refused".into()));
            assert_eq!(fsm.state(), State::Active);
            delays.extend(actions.iter().filter_map(|a| match a {
                Action::StartTimer(Timer::ConnectRetry, d) => Some(*d),
                _ => None,
            }));
            let actions = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert!(actions.contains(&Action::Connect));
        }
        assert_eq!(delays.len(), 6);
        assert!(
            delays.windows(2).all(|w| w[1] > w[0]),
            "delays grow: {delays:?}"
        );
        assert!(delays[5] >= Duration::from_secs(24), "{delays:?}");

        // A flapping established session also backs off...
        let (mut fsm, _) = established(true);
        let mut idle_holds = Vec::new();
        for _ in 0..4 {
            let actions = fsm.handle(Event::TcpFailed("reset".into()));
            idle_holds.extend(actions.iter().filter_map(|a| match a {
                Action::StartTimer(Timer::IdleHold, d) => Some(*d),
                _ => None,
            }));
            fsm.handle(Event::TimerExpired(Timer::IdleHold));
            fsm.handle(Event::TcpEstablished);
            fsm.handle(Event::Message(peer_open(65001, 30, true)));
            fsm.handle(Event::Message(BgpMessage::KeepAlive));
            assert_eq!(fsm.state(), State::Established);
        }
        assert!(idle_holds.windows(2).all(|w| w[1] > w[0]), "{idle_holds:?}");
        // ...until it stays up for a few keepalives.
        for _ in 0..STABLE_KEEPALIVES {
            fsm.handle(Event::Message(BgpMessage::KeepAlive));
        }
        let actions = fsm.handle(Event::TcpFailed("reset".into()));
        let reset_delay = actions.iter().find_map(|a| match a {
            Action::StartTimer(Timer::IdleHold, d) => Some(*d),
            _ => None,
        });
        assert!(
            reset_delay.is_some_and(|d| d <= Duration::from_secs(2)),
            "{reset_delay:?}"
        );
    }

    #[test]
    fn passive_peer_waits_and_refuses_connections_while_backing_off() {
        let mut fsm = Fsm::new(config(true));
        let actions = fsm.handle(Event::Start);
        assert!(!actions.contains(&Action::Connect));
        assert_eq!(fsm.state(), State::Active);
        assert!(fsm.accepts_incoming());
        fsm.handle(Event::TcpEstablished);
        assert!(!fsm.accepts_incoming(), "one session at a time");
        fsm.handle(Event::TcpFailed("closed".into()));
        assert_eq!(fsm.state(), State::Idle);
        assert!(!fsm.accepts_incoming());
    }

    #[test]
    fn stop_sends_cease_or_closes_silently() {
        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::Stop(Some(cease(
            CeaseError::AdministrativeShutdown {
                value: Box::new([]),
            },
        ))));
        assert_eq!(sent_notification(&actions), Some((6, 2)));
        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::Stop(None));
        assert!(
            sent(&actions).is_empty(),
            "graceful restart: no NOTIFICATION"
        );
        assert!(actions.contains(&Action::CloseConnection));
    }

    #[test]
    fn bfd_down_takes_the_session_down_at_once_with_cease_bfd_down() {
        let (mut fsm, _) = established(true);
        let actions = fsm.handle(Event::PeerUnreachable(
            "BFD: control detection time expired".into(),
        ));
        assert_eq!(sent_notification(&actions), Some((6, 10)));
        assert!(actions.contains(&Action::CloseConnection));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::SessionDown(reason) if reason.contains("BFD")))
        );
        assert_eq!(fsm.state(), State::Idle);
        assert_eq!(
            fsm.last_error(),
            Some("BFD: control detection time expired")
        );
        // Not connected: nothing to take down.
        let mut idle = Fsm::new(config(false));
        idle.handle(Event::Start);
        assert!(idle.handle(Event::PeerUnreachable("BFD".into())).is_empty());
        assert_eq!(idle.state(), State::Connect);
        // BFD up again: the reset session connects now instead of after
        // its backoff.
        let actions = fsm.handle(Event::PeerReachable);
        assert!(actions.contains(&Action::Connect), "{actions:?}");
        assert!(actions.contains(&Action::StopTimer(Timer::IdleHold)));
        assert_eq!(fsm.state(), State::Connect);
        // Between connect attempts (Active) too; a connecting session is left alone.
        fsm.handle(Event::TcpFailed("unreachable".into()));
        assert_eq!(fsm.state(), State::Active);
        assert!(fsm.handle(Event::PeerReachable).contains(&Action::Connect));
        assert_eq!(fsm.state(), State::Connect);
        assert!(fsm.handle(Event::PeerReachable).is_empty());
    }
}

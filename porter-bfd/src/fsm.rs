//! One BFD session (RFC 5880 asynchronous mode) as a pure state machine:
//! received packets and the current time in, packets to send and state
//! changes out. It owns no socket and no clock; the runtime (runtime.rs)
//! feeds it and asks [`Session::next_deadline`] when to call it again.
//!
//! Timer negotiation follows section 6.8.3: while the session is not Up the
//! advertised Desired Min TX is at least one second (slow start); a change of
//! the advertised intervals while Up runs a Poll Sequence, and until its Final
//! arrives a slower transmit interval or a shorter detection time does not
//! take effect. Echo and demand mode are not implemented (Required Min Echo
//! RX is sent as zero, the D bit clear).
use std::time::{Duration, Instant};

use crate::packet::{ControlPacket, Diag, State};

/// Desired Min TX while the session is not Up (RFC 5880 section 6.8.3).
pub const SLOW_START_TX: Duration = Duration::from_secs(1);

/// The intervals and multiplier one side asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Desired Min TX Interval once the session is Up.
    pub desired_min_tx: Duration,
    /// Required Min RX Interval: how often we are willing to receive.
    pub required_min_rx: Duration,
    /// Detect Mult: packets the peer may miss before it declares us down.
    pub detect_mult: u8,
}

impl Default for Timers {
    /// 300 ms × 3, the defaults of BIRD and FRR.
    fn default() -> Self {
        Self {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
        }
    }
}

/// A state transition, reported once when it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub from: State,
    pub to: State,
    /// Why (our bfd.LocalDiag after the change).
    pub diag: Diag,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(ControlPacket),
    StateChanged(StateChange),
}

/// What both ends agreed, for status and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Our transmit interval before jitter; `None` while the peer asks for no packets.
    pub tx_interval: Option<Duration>,
    /// How long without a packet before the session goes down; `None`
    /// until the peer has been heard.
    pub detection_time: Option<Duration>,
    pub remote_detect_mult: u8,
    pub remote_min_rx: Duration,
    pub remote_desired_tx: Duration,
}

/// The advertised intervals (what our packets carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Intervals {
    tx: Duration,
    rx: Duration,
}

pub struct Session {
    timers: Timers,
    local_discriminator: u32,
    state: State,
    remote_state: State,
    remote_discriminator: u32,
    local_diag: Diag,
    /// Carried in our packets.
    advertised: Intervals,
    /// Used for our own transmit interval and detection time; lags
    /// `advertised` while a Poll Sequence is in progress (section 6.8.3).
    effective: Intervals,
    polling: bool,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    detect_deadline: Option<Instant>,
    next_tx: Instant,
    rng: u64,
}

impl Session {
    /// A session in Down that starts transmitting at `now`.
    /// `local_discriminator` must be non-zero and unique among the sessions
    /// of this system; `jitter_seed` spreads the transmit times.
    pub fn new(timers: Timers, local_discriminator: u32, jitter_seed: u64, now: Instant) -> Self {
        let slow = Intervals {
            tx: timers.desired_min_tx.max(SLOW_START_TX),
            rx: timers.required_min_rx,
        };
        Self {
            timers,
            local_discriminator,
            state: State::Down,
            remote_state: State::Down,
            remote_discriminator: 0,
            local_diag: Diag::None,
            advertised: slow,
            effective: slow,
            polling: false,
            // The initial value of bfd.RemoteMinRxInterval (section 6.8.1).
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            detect_deadline: None,
            next_tx: now,
            rng: jitter_seed | 1,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    pub fn polling(&self) -> bool {
        self.polling
    }

    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            tx_interval: self.tx_interval(),
            detection_time: self.detection_time(),
            remote_detect_mult: self.remote_detect_mult,
            remote_min_rx: self.remote_min_rx,
            remote_desired_tx: self.remote_desired_tx,
        }
    }

    /// When [`Session::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        match self.detect_deadline {
            Some(detect) => detect.min(self.next_tx),
            None => self.next_tx,
        }
    }

    /// Section 6.8.7: the larger of our Desired Min TX and the peer's
    /// Required Min RX; none while the peer asks for no packets.
    fn tx_interval(&self) -> Option<Duration> {
        (!self.remote_min_rx.is_zero()).then(|| self.effective.tx.max(self.remote_min_rx))
    }

    /// Section 6.8.4: the peer's Detect Mult times the larger of our
    /// Required Min RX and the peer's last Desired Min TX.
    fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult > 0).then(|| {
            self.effective
                .rx
                .max(self.remote_desired_tx)
                .saturating_mul(u32::from(self.remote_detect_mult))
        })
    }

    /// A uniformly jittered transmit interval: 75-100 % of `interval`, or
    /// 75-90 % when Detect Mult is 1 (section 6.8.7).
    fn jittered(&mut self, interval: Duration) -> Duration {
        // splitmix64: deterministic for a seed, so tests can replay it.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = if self.timers.detect_mult == 1 {
            0.15
        } else {
            0.25
        };
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(0.75 + span * fraction * 0.999_999)
    }

    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.timers.detect_mult,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: self.advertised.tx,
            required_min_rx: self.advertised.rx,
            required_min_echo_rx: Duration::ZERO,
        }
    }

    /// Sends one packet now, outside the periodic schedule (a state change
    /// or the start of a Poll Sequence), and restarts the schedule from here.
    fn send_now(&mut self, now: Instant, actions: &mut Vec<Action>) {
        actions.push(Action::Send(self.packet(false)));
        self.schedule_tx(now);
    }

    fn schedule_tx(&mut self, now: Instant) {
        // Without a transmit interval the peer wants no packets; look again
        // after the slow-start interval in case a packet changes that.
        let interval = self.tx_interval().unwrap_or(SLOW_START_TX);
        self.next_tx = now + self.jittered(interval);
    }

    /// The intervals to advertise in the current state.
    fn wanted(&self) -> Intervals {
        Intervals {
            tx: if self.state == State::Up {
                self.timers.desired_min_tx
            } else {
                self.timers.desired_min_tx.max(SLOW_START_TX)
            },
            rx: self.timers.required_min_rx,
        }
    }

    /// Brings the advertised intervals to what the state and configuration
    /// want: at once outside Up, through a Poll Sequence in Up.
    fn retarget(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let wanted = self.wanted();
        if wanted == self.advertised {
            return;
        }
        if self.state != State::Up {
            self.polling = false;
            self.advertised = wanted;
            self.effective = wanted;
            return;
        }
        // One Poll Sequence at a time (section 6.5); the Final re-runs this.
        if self.polling {
            return;
        }
        // Sending faster and accepting a longer detection time are safe at
        // once; the opposite waits for the peer's Final.
        self.effective = Intervals {
            tx: self.effective.tx.min(wanted.tx),
            rx: self.effective.rx.max(wanted.rx),
        };
        self.advertised = wanted;
        self.polling = true;
        self.send_now(now, actions);
    }

    fn transition(&mut self, to: State, diag: Diag, now: Instant, actions: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        self.local_diag = diag;
        actions.push(Action::StateChanged(StateChange { from, to, diag }));
        self.retarget(now, actions);
        // Tell the peer at once rather than at the next (slow-start) tick,
        // unless retarget has just sent a Poll.
        if !matches!(actions.last(), Some(Action::Send(_))) {
            self.send_now(now, actions);
        }
    }

    /// A packet for this session (already decoded, checked and matched by
    /// discriminator or address): section 6.8.6 from "Set bfd.RemoteDiscr".
    pub fn receive(&mut self, packet: &ControlPacket, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_detect_mult = packet.detect_mult;
        self.remote_desired_tx = packet.desired_min_tx;
        let old_interval = self.tx_interval();
        self.remote_min_rx = packet.required_min_rx;
        if packet.final_ && self.polling {
            self.polling = false;
            self.effective = self.advertised;
            self.retarget(now, &mut actions);
        }
        // A shorter interval (the peer now accepts packets faster) takes
        // effect now rather than after the old, longer wait.
        if let Some(interval) = self.tx_interval()
            && old_interval.is_none_or(|old| interval < old)
        {
            let sooner = now + self.jittered(interval);
            self.next_tx = self.next_tx.min(sooner);
        }
        self.detect_deadline = self.detection_time().map(|time| now + time);

        match (self.state, packet.state) {
            (State::AdminDown, _) | (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) | (State::Up, State::Down) => self.transition(
                State::Down,
                Diag::NeighborSignaledSessionDown,
                now,
                &mut actions,
            ),
            (State::Down, State::Down) => {
                self.transition(State::Init, Diag::None, now, &mut actions)
            }
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.transition(State::Up, Diag::None, now, &mut actions)
            }
            _ => {}
        }
        // The Final answers the Poll at once, outside the periodic schedule.
        if packet.poll {
            actions.push(Action::Send(self.packet(true)));
        }
        actions
    }

    /// Detection timeout and periodic transmission, whichever are due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.detect_deadline.is_some_and(|deadline| deadline <= now) {
            self.detect_deadline = None;
            // bfd.RemoteDiscr is forgotten after a Detection Time of silence
            // (section 6.8.1), so the next packets ask afresh.
            self.remote_discriminator = 0;
            self.remote_state = State::Down;
            if matches!(self.state, State::Init | State::Up) {
                self.transition(
                    State::Down,
                    Diag::ControlDetectionTimeExpired,
                    now,
                    &mut actions,
                );
            }
        }
        if self.next_tx <= now {
            if self.tx_interval().is_some() {
                actions.push(Action::Send(self.packet(false)));
            }
            self.schedule_tx(now);
        }
        actions
    }

    /// New configured timers; while Up this runs a Poll Sequence.
    pub fn set_timers(&mut self, timers: Timers, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.timers = timers;
        self.retarget(now, &mut actions);
        actions
    }

    /// Administratively down (section 6.8.16): the peer is told, and
    /// received packets change nothing until [`Session::admin_up`].
    pub fn admin_down(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state != State::AdminDown {
            self.transition(
                State::AdminDown,
                Diag::AdministrativelyDown,
                now,
                &mut actions,
            );
        }
        actions
    }

    pub fn admin_up(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state == State::AdminDown {
            self.transition(State::Down, Diag::None, now, &mut actions);
        }
        actions
    }
}

#[cfg(test)]
mod tests;

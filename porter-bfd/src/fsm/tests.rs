use super::*;

const MS: Duration = Duration::from_millis(1);

fn sent(actions: &[Action]) -> Vec<ControlPacket> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send(packet) => Some(packet.clone()),
            Action::StateChanged(_) => None,
        })
        .collect()
}

fn changes(actions: &[Action]) -> Vec<(State, State, Diag)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::StateChanged(change) => Some((change.from, change.to, change.diag)),
            Action::Send(_) => None,
        })
        .collect()
}

/// Two sessions joined by a lossless wire, driven in 1 ms steps.
struct Pair {
    now: Instant,
    a: Session,
    b: Session,
    /// Every state change of `a`, in order.
    a_changes: Vec<(State, State, Diag)>,
    /// Packets `a` sent, with the time.
    a_sent: Vec<(Instant, ControlPacket)>,
    /// When set, packets of `b` are lost.
    b_silent: bool,
}

impl Pair {
    fn new(a: Timers, b: Timers) -> Self {
        let now = Instant::now();
        Self {
            now,
            a: Session::new(a, 1, 7, now),
            b: Session::new(b, 2, 11, now),
            a_changes: Vec::new(),
            a_sent: Vec::new(),
            b_silent: false,
        }
    }

    fn deliver(&mut self, from_a: Vec<Action>, from_b: Vec<Action>) {
        let mut to_b: Vec<ControlPacket> = Vec::new();
        let mut to_a: Vec<ControlPacket> = Vec::new();
        self.record_a(&from_a);
        to_b.extend(sent(&from_a));
        if !self.b_silent {
            to_a.extend(sent(&from_b));
        }
        // Packets answered at once (Finals, state changes) go back and forth
        // within the same millisecond, as on a fast link.
        while !to_a.is_empty() || !to_b.is_empty() {
            let mut next_a = Vec::new();
            let mut next_b = Vec::new();
            for packet in to_b.drain(..) {
                let reply = self.b.receive(&packet, self.now);
                if !self.b_silent {
                    next_a.extend(sent(&reply));
                }
            }
            for packet in to_a.drain(..) {
                let reply = self.a.receive(&packet, self.now);
                self.record_a(&reply);
                next_b.extend(sent(&reply));
            }
            to_a = next_a;
            to_b = next_b;
        }
    }

    fn record_a(&mut self, actions: &[Action]) {
        self.a_changes.extend(changes(actions));
        self.a_sent
            .extend(sent(actions).into_iter().map(|packet| (self.now, packet)));
    }

    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += MS;
            let from_a = self.a.on_timer(self.now);
            let from_b = self.b.on_timer(self.now);
            self.deliver(from_a, from_b);
        }
    }

    fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(self.now - start < limit, "not done within {limit:?}");
            self.run(MS);
        }
        self.now - start
    }
}

#[test]
fn two_sessions_come_up_through_init_and_negotiate_the_configured_timers() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| {
        p.a.state() == State::Up && p.b.state() == State::Up
    });
    assert_eq!(
        pair.a_changes,
        vec![
            (State::Down, State::Init, Diag::None),
            (State::Init, State::Up, Diag::None)
        ]
    );
    // The Poll Sequence from 1 s to 300 ms completes on both sides.
    pair.run_until(Duration::from_secs(2), |p| !p.a.polling() && !p.b.polling());
    let negotiated = pair.a.negotiated();
    assert_eq!(negotiated.tx_interval, Some(300 * MS));
    assert_eq!(negotiated.detection_time, Some(900 * MS));
    assert_eq!(pair.b.negotiated().detection_time, Some(900 * MS));
}

#[test]
fn slow_start_advertises_one_second_until_up() {
    let timers = Timers {
        desired_min_tx: 50 * MS,
        required_min_rx: 50 * MS,
        detect_mult: 3,
    };
    let now = Instant::now();
    let mut session = Session::new(timers, 1, 3, now);
    let first = sent(&session.on_timer(now));
    assert_eq!(first.len(), 1, "a new session transmits at once");
    assert_eq!(first[0].state, State::Down);
    assert_eq!(first[0].desired_min_tx, SLOW_START_TX);
    assert_eq!(first[0].required_min_rx, 50 * MS);
    assert_eq!(first[0].your_discriminator, 0);
    // The slow interval also paces the packets: none again within 750 ms.
    assert!(session.next_deadline() >= now + 750 * MS);

    let mut pair = Pair::new(timers, timers);
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    pair.run_until(Duration::from_secs(2), |p| !p.a.polling());
    let (_, last) = pair.a_sent.last().expect("a sent packets").clone();
    assert_eq!(last.desired_min_tx, 50 * MS);
    let before_up: Vec<_> = pair
        .a_sent
        .iter()
        .filter(|(_, packet)| packet.state != State::Up)
        .collect();
    assert!(!before_up.is_empty());
    assert!(
        before_up
            .iter()
            .all(|(_, packet)| packet.desired_min_tx == SLOW_START_TX)
    );
}

#[test]
fn going_up_polls_until_the_final_and_the_poll_is_answered_at_once() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    // The first packet in Up carries the new interval with the Poll bit.
    let (_, poll) = pair
        .a_sent
        .iter()
        .find(|(_, packet)| packet.state == State::Up && packet.poll)
        .expect("a polled")
        .clone();
    assert_eq!(poll.desired_min_tx, 300 * MS);
    assert!(!poll.final_);

    // A poll from the peer is answered with a Final, never with both bits.
    let now = pair.now;
    let mut packet = pair.b.packet(false);
    packet.poll = true;
    let reply = sent(&pair.a.receive(&packet, now));
    assert_eq!(reply.len(), 1);
    assert!(reply[0].final_ && !reply[0].poll);
}

#[test]
fn silence_takes_the_session_down_after_the_detection_time() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    pair.run_until(Duration::from_secs(2), |p| !p.a.polling() && !p.b.polling());
    pair.run(Duration::from_secs(2));
    let last_heard = pair.now;
    pair.b_silent = true;
    let took = pair.run_until(Duration::from_secs(2), |p| p.a.state() == State::Down);
    assert_eq!(
        pair.a_changes.last(),
        Some(&(State::Up, State::Down, Diag::ControlDetectionTimeExpired))
    );
    // b's last packet arrived within one jittered interval before the
    // silence; detection fires 900 ms after it.
    assert!(took <= 900 * MS, "went down after {took:?}");
    assert!(took > 900 * MS - 300 * MS, "went down after {took:?}");
    assert_eq!(pair.a.remote_discriminator(), 0, "forgotten after silence");
    let _ = last_heard;
    // The Down packets ask afresh (Your Discriminator 0) at the slow rate.
    pair.a_sent.clear();
    pair.run(Duration::from_secs(3));
    assert!(
        pair.a_sent.len() <= 4,
        "{} packets in 3 s",
        pair.a_sent.len()
    );
    assert!(
        pair.a_sent
            .iter()
            .all(|(_, p)| p.your_discriminator == 0 && p.desired_min_tx == SLOW_START_TX)
    );
}

#[test]
fn the_session_recovers_when_the_peer_speaks_again() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    pair.b_silent = true;
    pair.run_until(Duration::from_secs(5), |p| p.a.state() == State::Down);
    pair.b_silent = false;
    pair.run_until(Duration::from_secs(10), |p| {
        p.a.state() == State::Up && p.b.state() == State::Up
    });
}

#[test]
fn the_peer_going_down_or_admin_down_is_neighbor_signaled() {
    for remote in [State::Down, State::AdminDown] {
        let mut pair = Pair::new(Timers::default(), Timers::default());
        pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
        let mut packet = pair.b.packet(false);
        packet.state = remote;
        let actions = pair.a.receive(&packet, pair.now);
        assert_eq!(
            changes(&actions),
            vec![(State::Up, State::Down, Diag::NeighborSignaledSessionDown)]
        );
        // The change is announced at once, with the diagnostic.
        let announce = sent(&actions);
        assert_eq!(announce[0].state, State::Down);
        assert_eq!(announce[0].diag, Diag::NeighborSignaledSessionDown);
    }
}

#[test]
fn admin_down_is_sent_and_received_packets_change_nothing() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    let actions = pair.a.admin_down(pair.now);
    assert_eq!(
        changes(&actions),
        vec![(State::Up, State::AdminDown, Diag::AdministrativelyDown)]
    );
    pair.deliver(actions, Vec::new());
    assert_eq!(pair.b.state(), State::Down);
    pair.run(Duration::from_secs(3));
    assert_eq!(pair.a.state(), State::AdminDown);
    assert_eq!(pair.b.state(), State::Down);
    let actions = pair.a.admin_up(pair.now);
    assert_eq!(
        changes(&actions),
        vec![(State::AdminDown, State::Down, Diag::None)]
    );
    pair.deliver(actions, Vec::new());
    pair.run_until(Duration::from_secs(5), |p| p.a.state() == State::Up);
}

#[test]
fn the_transmit_interval_is_the_larger_of_ours_and_the_peers_receive_interval() {
    let fast = Timers {
        desired_min_tx: 100 * MS,
        required_min_rx: 100 * MS,
        detect_mult: 3,
    };
    let slow = Timers {
        desired_min_tx: 500 * MS,
        required_min_rx: 400 * MS,
        detect_mult: 5,
    };
    let mut pair = Pair::new(fast, slow);
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    pair.run_until(Duration::from_secs(3), |p| !p.a.polling() && !p.b.polling());
    let a = pair.a.negotiated();
    // a sends at b's Required Min RX; b at its own Desired Min TX.
    assert_eq!(a.tx_interval, Some(400 * MS));
    assert_eq!(pair.b.negotiated().tx_interval, Some(500 * MS));
    // a's detection time: b's multiplier × max(a's RX 100, b's TX 500).
    assert_eq!(a.detection_time, Some(2500 * MS));
    // b's: a's multiplier × max(b's RX 400, a's TX 100).
    assert_eq!(pair.b.negotiated().detection_time, Some(1200 * MS));
}

#[test]
fn slower_tx_and_shorter_detection_wait_for_the_final() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    pair.run_until(Duration::from_secs(3), |p| !p.a.polling() && !p.b.polling());
    let slower = Timers {
        desired_min_tx: 600 * MS,
        required_min_rx: 300 * MS,
        detect_mult: 3,
    };
    let actions = pair.a.set_timers(slower, pair.now);
    let poll = sent(&actions);
    assert!(poll[0].poll && poll[0].desired_min_tx == 600 * MS);
    // Not yet: the peer has not acknowledged the slower rate.
    assert_eq!(pair.a.negotiated().tx_interval, Some(300 * MS));
    pair.deliver(actions, Vec::new());
    assert!(!pair.a.polling());
    assert_eq!(pair.a.negotiated().tx_interval, Some(600 * MS));
    // b now expects a's packets 3 × 600 ms apart at most.
    assert_eq!(pair.b.negotiated().detection_time, Some(1800 * MS));

    // A shorter receive interval keeps the old detection time until the Final.
    pair.b_silent = true;
    let faster_rx = Timers {
        required_min_rx: 100 * MS,
        ..slower
    };
    pair.a.set_timers(faster_rx, pair.now);
    assert!(pair.a.polling());
    assert_eq!(pair.a.negotiated().detection_time, Some(900 * MS));
}

#[test]
fn a_peer_that_wants_no_packets_gets_none() {
    let now = Instant::now();
    let mut session = Session::new(Timers::default(), 1, 5, now);
    let mut packet = session.packet(false);
    packet.my_discriminator = 9;
    packet.required_min_rx = Duration::ZERO;
    session.receive(&packet, now);
    // Only periodic packets are withheld; stay within the detection time,
    // whose expiry would be announced with one packet.
    let mut total = 0;
    for step in 1..2900 {
        total += sent(&session.on_timer(now + step * MS)).len();
    }
    assert_eq!(session.negotiated().tx_interval, None);
    assert_eq!(total, 0);
}

#[test]
fn jitter_stays_within_the_rfc_bounds() {
    for (mult, low, high) in [(3u8, 0.75, 1.0), (1, 0.75, 0.9)] {
        let timers = Timers {
            detect_mult: mult,
            ..Timers::default()
        };
        let mut session = Session::new(timers, 1, 42, Instant::now());
        let interval = Duration::from_millis(1000);
        let samples: Vec<f64> = (0..2000)
            .map(|_| session.jittered(interval).as_secs_f64())
            .collect();
        let min = samples.iter().cloned().fold(f64::MAX, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        assert!(min >= low && max < high, "mult {mult}: {min}..{max}");
        // Spread over the range, not stuck at one value.
        assert!(max - min > (high - low) * 0.8, "mult {mult}: {min}..{max}");
    }
}

#[test]
fn packets_carry_the_discriminators_and_no_echo() {
    let mut pair = Pair::new(Timers::default(), Timers::default());
    pair.run_until(Duration::from_secs(3), |p| p.a.state() == State::Up);
    let (_, last) = pair.a_sent.last().expect("sent").clone();
    assert_eq!(last.my_discriminator, 1);
    assert_eq!(last.your_discriminator, 2);
    assert_eq!(last.required_min_echo_rx, Duration::ZERO);
    assert!(!last.demand && !last.control_plane_independent);
    assert_eq!(last.detect_mult, 3);
}

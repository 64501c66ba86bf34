use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn candidates(eips: &[&str], nodes: &[&str]) -> BTreeMap<IpAddr, BTreeSet<String>> {
    eips.iter()
        .map(|eip| (ip(eip), nodes.iter().map(|n| n.to_string()).collect()))
        .collect()
}

fn heartbeats(nodes: &[&str], at: Duration) -> BTreeMap<String, Duration> {
    nodes.iter().map(|n| (n.to_string(), at)).collect()
}

fn lease(holder: &str, renewed: Duration) -> LeaseRecord {
    LeaseRecord {
        holder: holder.into(),
        renewed,
        duration: secs(2),
    }
}

#[test]
fn every_node_computes_the_same_leader_whatever_the_order() {
    let eip = ip("192.0.2.10");
    let forward = choose(eip, NODES, |_| true);
    let backward = choose(eip, NODES.iter().rev().copied(), |_| true);
    assert_eq!(forward, backward);
    assert!(forward.is_some());
    assert_eq!(choose(eip, [], |_| true), None);
}

#[test]
fn eips_spread_over_nodes_and_a_leaving_node_moves_only_its_own() {
    let nodes: Vec<String> = (0..4).map(|i| format!("node-{i}")).collect();
    let eips: Vec<IpAddr> = (0..400)
        .map(|i| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]))
        .collect();
    let leader = |eip: IpAddr, alive: &dyn Fn(&str) -> bool| {
        choose(eip, nodes.iter().map(String::as_str), alive).map(str::to_owned)
    };
    let before: Vec<Option<String>> = eips.iter().map(|&e| leader(e, &|_| true)).collect();
    for node in &nodes {
        let led = before.iter().filter(|l| l.as_ref() == Some(node)).count();
        // 100 expected each; a fair hash stays well within 60..140.
        assert!((60..140).contains(&led), "{node} leads {led} of 400");
    }
    let after: Vec<Option<String>> = eips
        .iter()
        .map(|&e| leader(e, &|n| n != "node-2"))
        .collect();
    for (old, new) in before.iter().zip(&after) {
        if old.as_deref() != Some("node-2") {
            assert_eq!(old, new, "an EIP not led by the leaving node moved");
        } else {
            assert_ne!(new.as_deref(), Some("node-2"));
        }
    }
}

#[test]
fn scores_are_stable_across_versions() {
    // Nodes of different agent versions must agree: pin the function (the
    // value was checked against an independent implementation of FNV-1a +
    // splitmix64).
    assert_eq!(score("n1", ip("192.0.2.10")), score("n1", ip("192.0.2.10")));
    assert_ne!(score("n1", ip("192.0.2.10")), score("n1", ip("192.0.2.11")));
    assert_ne!(score("ab", ip("::1")), score("a", ip("::1")));
    assert_eq!(score("n1", ip("192.0.2.10")), 0xf50c_2813_4b11_fabd);
}

/// The node that leads `eip` among NODES, and one that does not.
fn leader_and_other(eip: &str) -> (&'static str, &'static str) {
    let leader = choose(ip(eip), NODES, |_| true).expect("candidates");
    let other = NODES.iter().find(|&&n| n != leader).expect("three nodes");
    (leader, other)
}

#[test]
fn the_chosen_node_acquires_a_free_lease_then_answers_and_renews() {
    let eip = "192.0.2.10";
    let (leader, other) = leader_and_other(eip);
    let candidates = candidates(&[eip], &NODES);
    let beats = heartbeats(&NODES, secs(100));
    let mut leases = BTreeMap::new();
    let decide_at = |node, leases: &BTreeMap<IpAddr, LeaseRecord>| {
        decide(&ElectionInputs {
            node,
            candidates: &candidates,
            heartbeats: &beats,
            heartbeat_ttl: secs(2),
            leases,
            now: secs(100),
        })
    };
    let first = decide_at(leader, &leases);
    assert!(
        first.answer.is_empty(),
        "no answers before the lease is ours"
    );
    assert_eq!(first.writes.get(&ip(eip)), Some(&LeaseWrite::Acquire));
    assert_eq!(
        first.leaders.get(&ip(eip)).map(String::as_str),
        Some(leader)
    );

    leases.insert(ip(eip), lease(leader, secs(100)));
    let held = decide_at(leader, &leases);
    assert_eq!(held.answer, BTreeSet::from([ip(eip)]));
    assert_eq!(held.writes.get(&ip(eip)), Some(&LeaseWrite::Acquire));
    // The others agree on the leader and do nothing.
    let bystander = decide_at(other, &leases);
    assert!(bystander.answer.is_empty() && bystander.writes.is_empty());
    assert_eq!(bystander.leaders, held.leaders);
}

#[test]
fn a_dead_leader_is_replaced_only_after_its_lease_expires() {
    let eip = "192.0.2.10";
    let (leader, _) = leader_and_other(eip);
    let candidates = candidates(&[eip], &NODES);
    // The leader's heartbeat stopped at 100; the others beat on.
    let mut beats = heartbeats(&NODES, secs(103));
    beats.insert(leader.into(), secs(100));
    let leases = BTreeMap::from([(ip(eip), lease(leader, secs(100)))]);
    let successor = ranking(ip(eip), NODES)[1];
    let at = |now| {
        decide(&ElectionInputs {
            node: successor,
            candidates: &candidates,
            heartbeats: &beats,
            heartbeat_ttl: secs(1),
            leases: &leases,
            now,
        })
    };
    // Heartbeat dead, lease still valid (at 101): chosen, but must wait.
    let waiting = at(Duration::from_millis(101_500));
    assert_eq!(
        waiting.leaders.get(&ip(eip)).map(String::as_str),
        Some(successor)
    );
    assert!(waiting.answer.is_empty() && waiting.writes.is_empty());
    // Expired: take it.
    let taking = at(secs(102));
    assert_eq!(taking.writes.get(&ip(eip)), Some(&LeaseWrite::Acquire));
    assert!(taking.answer.is_empty());
}

#[test]
fn a_node_that_is_no_longer_chosen_releases_at_once_and_stops_answering() {
    let eip = "192.0.2.10";
    let (leader, other) = leader_and_other(eip);
    // The leader lost its local endpoints: no longer a candidate.
    let remaining: Vec<&str> = NODES.iter().copied().filter(|n| *n != leader).collect();
    let candidates = candidates(&[eip], &remaining);
    let beats = heartbeats(&NODES, secs(100));
    let leases = BTreeMap::from([(ip(eip), lease(leader, secs(100)))]);
    let decision = decide(&ElectionInputs {
        node: leader,
        candidates: &candidates,
        heartbeats: &beats,
        heartbeat_ttl: secs(2),
        leases: &leases,
        now: secs(100),
    });
    assert!(decision.answer.is_empty());
    assert_eq!(decision.writes.get(&ip(eip)), Some(&LeaseWrite::Release));
    assert_ne!(
        decision.leaders.get(&ip(eip)).map(String::as_str),
        Some(leader)
    );
    let _ = other;
}

#[test]
fn leases_of_eips_that_are_gone_are_released() {
    let eip = ip("192.0.2.10");
    let candidates = BTreeMap::new();
    let beats = BTreeMap::new();
    let leases = BTreeMap::from([(eip, lease("n1", secs(100)))]);
    let decision = decide(&ElectionInputs {
        node: "n1",
        candidates: &candidates,
        heartbeats: &beats,
        heartbeat_ttl: secs(2),
        leases: &leases,
        now: secs(101),
    });
    assert_eq!(decision.writes.get(&eip), Some(&LeaseWrite::Release));
    assert!(decision.leaders.is_empty());
}

#[test]
fn no_two_nodes_ever_answer_for_one_eip_at_the_same_time() {
    // Whatever the (possibly inconsistent) views of the nodes, only the
    // lease holder answers, and a lease has one holder.
    let eip = "192.0.2.10";
    for holder in NODES {
        let leases = BTreeMap::from([(ip(eip), lease(holder, secs(100)))]);
        let mut answering = Vec::new();
        for node in NODES {
            for view in [&NODES[..], &NODES[..1], &NODES[1..], &NODES[2..]] {
                let candidates = candidates(&[eip], view);
                let beats = heartbeats(view, secs(100));
                let decision = decide(&ElectionInputs {
                    node,
                    candidates: &candidates,
                    heartbeats: &beats,
                    heartbeat_ttl: secs(2),
                    leases: &leases,
                    now: secs(101),
                });
                if decision.answer.contains(&ip(eip)) {
                    answering.push(node);
                }
            }
        }
        answering.dedup();
        assert!(answering.iter().all(|n| *n == holder), "{answering:?}");
    }
}

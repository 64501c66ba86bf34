//! The text `porter-controller explain` prints: one block per address,
//! one line per node, then the peers. Each verdict starts with its reason
//! word (the one the `Announced` Events use), then says what it means.

use std::fmt::{self, Display, Formatter};

use porter_api::node_reachability::Reachability;

use super::{Address, BgpMode, Explanation, NodeLine, PeerLine, Sent, Standing};
use crate::announce::{Exclusion, Verdict};
use crate::ipam::PoolChoice;

impl Display for Explanation {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let service = &self.service;
        match &self.standing {
            Standing::NotFound => writeln!(f, "Service {service}: not found"),
            Standing::NotServed => writeln!(
                f,
                "Service {service}: not served by Porter: it must be `type: LoadBalancer` and opt in \
                 (annotation lb.kubesphere.io/v1alpha1: porter, or loadBalancerClass \
                 network.kubesphere.io/porter; another class is left alone)"
            ),
            Standing::Deleting => writeln!(
                f,
                "Service {service}: being deleted; Porter releases its address and removes its finalizer"
            ),
            Standing::NoAddress { why, published } => {
                writeln!(f, "Service {service}: no address: {why}")?;
                if !published.is_empty() {
                    let ips: Vec<String> = published.iter().map(ToString::to_string).collect();
                    writeln!(
                        f,
                        "  its status shows {}, which it cannot keep (see the AllocationFailed Event)",
                        ips.join(", ")
                    )?;
                }
                Ok(())
            }
            Standing::Served { local, addresses } => {
                let policy = if *local { "Local" } else { "Cluster" };
                writeln!(f, "Service {service} (externalTrafficPolicy: {policy})")?;
                writeln!(f, "BGP: {}", bgp(self.bgp))?;
                for address in addresses {
                    writeln!(f)?;
                    write_address(f, address, *local, self.bgp)?;
                }
                Ok(())
            }
        }
    }
}

fn bgp(mode: BgpMode) -> &'static str {
    match mode {
        BgpMode::Off => {
            "not configured (no BgpConf, BgpPeer or bgp-cfg): nothing is announced over BGP"
        }
        BgpMode::Controller => {
            "speakerMode controller: the leader controller announces every node's path"
        }
        BgpMode::Node => "speakerMode node: each node's agent announces its own path",
    }
}

fn write_address(f: &mut Formatter<'_>, a: &Address, local: bool, mode: BgpMode) -> fmt::Result {
    match &a.pool {
        Some((pool, choice)) => writeln!(f, "{} from pool {pool}: {}", a.ip, why_pool(choice))?,
        None => writeln!(f, "{} (in no pool in force)", a.ip)?,
    }
    if !a.shared_with.is_empty() {
        let with: Vec<String> = a.shared_with.iter().map(ToString::to_string).collect();
        writeln!(f, "  shared with {}", with.join(", "))?;
    }
    if a.layer2 {
        match &a.layer2_leader {
            Some(node) => writeln!(
                f,
                "  Layer 2: {node} answers ARP/NDP for it (holds its lease)"
            )?,
            None => writeln!(
                f,
                "  Layer 2: no node answers ARP/NDP for it (no candidate holds its lease)"
            )?,
        }
    }
    writeln!(f, "  nodes:")?;
    let width = a.nodes.iter().map(|n| n.node.len()).max().unwrap_or(0);
    for line in &a.nodes {
        let (word, text) = node_verdict(line, a, local, mode);
        writeln!(f, "    {:width$}  {word:17} {text}", line.node)?;
    }
    if mode != BgpMode::Off {
        writeln!(f, "  peers:")?;
        if a.peers.is_empty() {
            writeln!(f, "    none (no BgpPeer)")?;
        }
        for peer in &a.peers {
            write_peer(f, peer)?;
        }
    }
    Ok(())
}

fn why_pool(choice: &PoolChoice) -> String {
    match choice {
        PoolChoice::Requested => {
            "the Service requested this address (annotation eip.porter.kubesphere.io/v1alpha1 or spec.loadBalancerIP)".into()
        }
        PoolChoice::Shared { key, with } => {
            let with: Vec<String> = with.iter().map(ToString::to_string).collect();
            format!(
                "shared under allow-shared-ip key `{key}` with {}",
                with.join(", ")
            )
        }
        PoolChoice::Named => "the Service names it (annotation eip.porter.kubesphere.io/v1alpha2)".into(),
        PoolChoice::Reserved { priority } => format!(
            "reserved for the Service's namespace (spec.namespaces or namespaceSelector), which comes first; priority {priority}"
        ),
        PoolChoice::Default => {
            "the default pool (eip.porter.kubesphere.io/is-default-eip), used when no pool reserved for the namespace has an address".into()
        }
        PoolChoice::Open { priority } => format!(
            "open to every namespace, the first with a free address by priority ({priority}); no reserved or default pool had one"
        ),
    }
}

/// The reason word and the sentence after it.
fn node_verdict(line: &NodeLine, a: &Address, local: bool, mode: BgpMode) -> (String, String) {
    match &line.verdict {
        Verdict::Announced { hop, endpoints, .. } => {
            let mut text = format!("next hop {hop}, {endpoints} ready endpoint(s)");
            if mode == BgpMode::Controller {
                text.push_str(&format!("; liveness {}", liveness(line.liveness)));
            }
            if a.layer2 {
                let leads = a.layer2_leader.as_deref() == Some(line.node.as_str());
                text.push_str(if leads {
                    "; Layer 2 leader"
                } else {
                    "; Layer 2 candidate, not the leader"
                });
            }
            ("announced".into(), text)
        }
        Verdict::Excluded(why) => {
            let mut text = why.explain().to_string();
            match why {
                Exclusion::NoReadyEndpoint if local => text.push_str(
                    " (externalTrafficPolicy Local: only nodes running a ready pod of the Service serve it)",
                ),
                Exclusion::NoReadyEndpoint => text.push_str(
                    " (externalTrafficPolicy Cluster: announced from the nodes with a ready pod, which forward to the others)",
                ),
                Exclusion::DataplaneFrozen => {
                    if let Some(agent) = &line.dataplane {
                        text.push_str(&format!(": {agent}"));
                    }
                }
                Exclusion::LivenessWithdrawn => {
                    text.push_str(&format!(": {}", liveness(line.liveness)));
                }
                _ => {}
            }
            (why.word().into(), text)
        }
    }
}

fn liveness(state: Option<Reachability>) -> &'static str {
    match state {
        Some(state) => state.reason(),
        None => "not published (PorterNodeReachable unset)",
    }
}

fn write_peer(f: &mut Formatter<'_>, peer: &PeerLine) -> fmt::Result {
    write!(f, "    {} ({}): ", peer.name, peer.address)?;
    if peer.sessions.is_empty() {
        writeln!(f, "no session reported in its status")?;
    } else {
        let sessions: Vec<String> = peer
            .sessions
            .iter()
            .map(|s| {
                let error = s
                    .last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default();
                format!(
                    "{} {} ({} path(s) held){error}",
                    s.speaker, s.state, s.paths_announced
                )
            })
            .collect();
        writeln!(f, "session {}", sessions.join("; "))?;
    }
    for (node, sent) in &peer.paths {
        let text = match sent {
            Sent::Yes => "sent".to_string(),
            Sent::Skipped(skip) => format!("not sent: {} ({})", skip.word(), skip.explain()),
            Sent::SessionDown(Some(state)) => {
                format!("not sent: SessionDown (the session is {state}, not Established)")
            }
            Sent::SessionDown(None) => {
                "not sent: SessionDown (its speaker reports no session with this peer)".to_string()
            }
        };
        writeln!(f, "      path through {node}: {text}")?;
    }
    Ok(())
}

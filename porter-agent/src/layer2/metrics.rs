//! Layer 2 metrics: who leads each EIP, what this node answers for,
//! announcements sent and rounds that failed. (ARP/NDP requests answered are
//! data plane counters: `arp_answered` and `ndp_answered`.)
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct Layer2Metrics {
    leader: Family<Labels, Gauge>,
    answering: Gauge,
    gratuitous_sent: Counter,
    round_errors: Counter,
}

impl Layer2Metrics {
    /// Records a round's outcome: `leaders` replaces what was recorded.
    pub fn round(&self, leaders: &BTreeMap<IpAddr, String>, answering: &BTreeSet<IpAddr>) {
        self.leader.clear();
        for (eip, node) in leaders {
            self.leader
                .get_or_create(&vec![
                    ("eip".to_owned(), eip.to_string()),
                    ("node".to_owned(), node.clone()),
                ])
                .set(1);
        }
        self.answering.set(answering.len() as i64);
    }

    pub fn round_failed(&self) {
        self.round_errors.inc();
    }

    pub fn gratuitous_sent(&self, frames: u64) {
        self.gratuitous_sent.inc_by(frames);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "layer2_leader",
            "1 for the node that should lead each Layer 2 EIP, as this node sees it",
            self.leader.clone(),
        );
        registry.register(
            "layer2_answering",
            "Layer 2 EIPs this node holds the lease of and answers ARP/NDP for",
            self.answering.clone(),
        );
        registry.register(
            "layer2_gratuitous_sent",
            "Gratuitous ARPs and unsolicited neighbour advertisements sent on takeover",
            self.gratuitous_sent.clone(),
        );
        registry.register(
            "layer2_round_errors",
            "Layer 2 rounds that failed (lease store unreachable, map write failed); answers lapse with the lease",
            self.round_errors.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn leaders_are_exported_per_eip_and_replaced_each_round() {
        let metrics = Layer2Metrics::default();
        let eip: IpAddr = "172.30.0.100".parse().expect("address");
        metrics.round(
            &BTreeMap::from([(eip, "n1".to_owned())]),
            &BTreeSet::from([eip]),
        );
        metrics.round(&BTreeMap::from([(eip, "n2".to_owned())]), &BTreeSet::new());
        metrics.gratuitous_sent(5);
        let mut registry = Registry::with_prefix("porter_agent");
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("porter_agent_layer2_leader{eip=\"172.30.0.100\",node=\"n2\"} 1"),
            "{text}"
        );
        assert!(!text.contains("node=\"n1\""), "{text}");
        assert!(text.contains("porter_agent_layer2_answering 0"), "{text}");
        assert!(
            text.contains("porter_agent_layer2_gratuitous_sent_total 5"),
            "{text}"
        );
    }
}

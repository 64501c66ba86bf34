//! Which node announces each Layer 2 address: mirrored from the agents'
//! leases ([`Snapshot::layer2_holders`]) into `Eip.status.layer2Announcers`,
//! with a `Layer2Announcing` Event on the Services using an address when
//! its node changes. Pure; see docs/layer2.md for why the controller, not
//! the agents, writes this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::layer2::{Holders, PROTOCOL_LAYER2};
use porter_api::source::{Event, EventType, Regarding, Snapshot};
use porter_api::{EipStatus, Layer2Announcer, ObjectKey};

use crate::ipam::Ipam;

pub const REASON_LAYER2: &str = "Layer2Announcing";

/// What was last reported per address, so that each change is reported once.
#[derive(Debug, Default)]
pub struct Layer2Status {
    /// Address → its node (None: nobody answers). Absent: not known yet,
    /// read from the Eip status (what a previous leader reported).
    reported: HashMap<IpAddr, Option<String>>,
}

impl Layer2Status {
    /// A new leader reports afresh, from what the status says.
    pub fn forget(&mut self) {
        self.reported.clear();
    }

    /// Sets the announcers of every pool in `eip_status` (adding an entry
    /// for a pool whose announcers alone changed) and adds the Events of
    /// the addresses whose node changed. Returns how many Layer 2 addresses
    /// in use no node answers for.
    pub fn plan(
        &mut self,
        snap: &Snapshot,
        ipam: &Ipam,
        now: &Time,
        eip_status: &mut Vec<(String, Arc<EipStatus>)>,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut in_use = BTreeSet::new();
        let mut unanswered = 0;
        for eip in &snap.eips {
            let Some(name) = eip.metadata.name.as_deref() else {
                continue;
            };
            let prev = eip.status.as_ref();
            let prev_announcers = prev.map_or(&[][..], |s| &s.layer2_announcers[..]);
            let used = if eip.spec.protocol.as_deref() == Some(PROTOCOL_LAYER2) {
                ipam.used_in(name)
            } else {
                BTreeMap::new()
            };
            let desired = announcers(&used, &snap.layer2_holders, prev_announcers, now);
            for (&ip, users) in &used {
                in_use.insert(ip);
                let node = snap.layer2_holders.get(&ip).cloned();
                unanswered += usize::from(node.is_none());
                let last = self.reported.get(&ip).cloned().unwrap_or_else(|| {
                    prev_announcers
                        .iter()
                        .find(|a| a.address == ip.to_string())
                        .map(|a| a.node.clone())
                });
                if node != last {
                    events.extend(
                        users
                            .iter()
                            .map(|&user| change_event(user, ip, node.as_deref())),
                    );
                }
                self.reported.insert(ip, node);
            }
            let nodes = nodes_column(&desired);
            match eip_status.iter_mut().find(|(n, _)| n == name) {
                Some((_, status)) => {
                    // Copied only when it changes: the memo of the address
                    // plan shares it.
                    if status.layer2_announcers != desired || status.layer2_nodes != nodes {
                        let status = Arc::make_mut(status);
                        status.layer2_announcers = desired;
                        status.layer2_nodes = nodes;
                    }
                }
                None => {
                    // Only a pool the controller has written status for:
                    // the address plan writes the first one.
                    if let Some(prev) = prev
                        && (prev.layer2_announcers != desired || prev.layer2_nodes != nodes)
                    {
                        eip_status.push((
                            name.to_owned(),
                            Arc::new(EipStatus {
                                layer2_announcers: desired,
                                layer2_nodes: nodes,
                                ..prev.clone()
                            }),
                        ));
                    }
                }
            }
        }
        self.reported.retain(|ip, _| in_use.contains(ip));
        unanswered
    }
}

/// The announcer of each address in `used` that has one, keeping the
/// `since` of an unchanged one.
fn announcers<T>(
    used: &BTreeMap<IpAddr, T>,
    holders: &Holders,
    prev: &[Layer2Announcer],
    now: &Time,
) -> Vec<Layer2Announcer> {
    used.keys()
        .filter_map(|ip| {
            let node = holders.get(ip)?;
            let address = ip.to_string();
            let since = prev
                .iter()
                .find(|a| a.address == address && &a.node == node)
                .map_or_else(|| now.clone(), |a| a.since.clone());
            Some(Layer2Announcer {
                address,
                node: node.clone(),
                since,
            })
        })
        .collect()
}

fn nodes_column(announcers: &[Layer2Announcer]) -> String {
    let nodes: BTreeSet<&str> = announcers.iter().map(|a| a.node.as_str()).collect();
    nodes.into_iter().collect::<Vec<_>>().join(",")
}

fn change_event(service: &ObjectKey, ip: IpAddr, node: Option<&str>) -> Event {
    let what = if ip.is_ipv4() {
        "ARP"
    } else {
        "neighbour solicitations"
    };
    let (type_, message) = match node {
        Some(node) => (
            EventType::Normal,
            format!("node {node} now answers {what} for {ip}"),
        ),
        None => (
            EventType::Warning,
            format!(
                "no node answers {what} for {ip}: no node with a ready endpoint holds its lease"
            ),
        ),
    };
    Event {
        regarding: Regarding::Service(service.clone()),
        type_,
        reason: REASON_LAYER2,
        message,
    }
}

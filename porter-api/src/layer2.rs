//! Layer 2 leases as both binaries read them. The agents guard each Layer 2
//! EIP with one lease (docs/layer2.md) — a file under [`LEASE_DIR`] with the
//! dir source, a `coordination.k8s.io` Lease with kube — and the controller
//! reads who holds them to report it in the Eip status. The formats live
//! here so that writer and reader cannot drift apart.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// `Eip.spec.protocol` of a Layer 2 pool.
pub const PROTOCOL_LAYER2: &str = "layer2";
/// Where the leases live under a dir source's directory (shared by the nodes).
pub const LEASE_DIR: &str = "layer2-leases";
/// Default namespace of the agents' Leases (`kube`). Not Porter's own
/// namespace: the agents must create, update and delete Leases, and a Role
/// cannot limit `create` (nor names it does not know in advance) to some
/// Leases, so a Role there would reach the controller's leader-election
/// Lease too. In a namespace of their own, it reaches only theirs.
pub const LEASE_NAMESPACE: &str = "porter-layer2";
/// Label on every Lease the agents manage: `heartbeat` or `eip`.
pub const KIND_LABEL: &str = "porter.kubesphere.io/layer2";
/// On an EIP's Lease: the EIP (its name only encodes it).
pub const EIP_ANNOTATION: &str = "porter.kubesphere.io/eip";
/// On every Lease: the duration in ms (`leaseDurationSeconds` holds whole seconds only).
pub const DURATION_ANNOTATION: &str = "porter.kubesphere.io/lease-duration-ms";

/// A lease as stored. Times are durations since the Unix epoch, as every
/// node's clock reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub renewed: Duration,
    pub duration: Duration,
}

impl LeaseRecord {
    pub fn expires(&self) -> Duration {
        self.renewed.saturating_add(self.duration)
    }

    pub fn expired(&self, now: Duration) -> bool {
        now >= self.expires()
    }
}

/// What the nodes currently claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub heartbeats: BTreeMap<String, Duration>,
    pub leases: BTreeMap<IpAddr, LeaseRecord>,
}

/// EIP → the node holding its lease: the node that answers ARP/NDP for it.
pub type Holders = BTreeMap<IpAddr, String>;

impl LeaseRecord {
    /// Until when the holder is reported as the EIP's announcer: its lease
    /// plus one more lease. A successor takes the lease within a round of
    /// its expiry, so a failover shows as one change of node rather than
    /// "nobody" for a moment in between; only a lease that nobody takes
    /// over for a whole lease means nobody answers.
    pub fn reported_until(&self) -> Duration {
        self.expires().saturating_add(self.duration)
    }
}

/// The holders of `leases` as reported at `now` (see
/// [`LeaseRecord::reported_until`]).
pub fn holders(leases: &BTreeMap<IpAddr, LeaseRecord>, now: Duration) -> Holders {
    leases
        .iter()
        .filter(|(_, lease)| now < lease.reported_until())
        .map(|(&eip, lease)| (eip, lease.holder.clone()))
        .collect()
}

/// When the first reported holder stops being reported, unless renewed.
pub fn next_expiry(leases: &BTreeMap<IpAddr, LeaseRecord>, now: Duration) -> Option<Duration> {
    leases
        .values()
        .map(LeaseRecord::reported_until)
        .filter(|&at| at > now)
        .min()
}

/// Time since the Unix epoch, as leases record it (nodes' clocks are
/// assumed NTP-synchronised to well under a lease; see docs/layer2.md).
pub fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

// --- Files: `heartbeat-<node>` holds the renewal time in ms since the
// epoch; `lease-<eip>` holds `<holder> <renewed ms> <duration ms>`.

pub fn heartbeat_file(node: &str) -> String {
    format!("heartbeat-{node}")
}

pub fn lease_file(eip: IpAddr) -> String {
    // ':' is fine in Linux file names; keep the address readable.
    format!("lease-{eip}")
}

pub fn lease_file_text(holder: &str, renewed: Duration, duration: Duration) -> String {
    format!("{holder} {} {}", renewed.as_millis(), duration.as_millis())
}

pub fn parse_lease_file(text: &str) -> Option<LeaseRecord> {
    let mut fields = text.split_whitespace();
    let holder = fields.next()?.to_owned();
    let renewed = Duration::from_millis(fields.next()?.parse().ok()?);
    let duration = Duration::from_millis(fields.next()?.parse().ok()?);
    Some(LeaseRecord {
        holder,
        renewed,
        duration,
    })
}

/// Every heartbeat and lease file in `dir`. Unreadable or malformed files
/// (a crash mid-write cannot leave one, but an operator could) count as
/// absent; a missing directory means no leases yet.
pub fn read_lease_dir(dir: &Path) -> io::Result<LeaseView> {
    let mut view = LeaseView::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(view),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(node) = name.strip_prefix("heartbeat-") {
            if let Ok(ms) = text.trim().parse() {
                view.heartbeats
                    .insert(node.to_owned(), Duration::from_millis(ms));
            }
        } else if let Some(eip) = name.strip_prefix("lease-")
            && let Ok(eip) = eip.parse()
            && let Some(lease) = parse_lease_file(&text)
        {
            view.leases.insert(eip, lease);
        }
    }
    Ok(view)
}

// --- Kubernetes Leases: `porter-node-<node>` for heartbeats;
// `porter-l2-<a.b.c.d>` or `porter-l2-<32 hex digits>` (IPv6) for EIPs.

pub fn heartbeat_lease_name(node: &str) -> String {
    format!("porter-node-{node}")
}

pub fn eip_lease_name(eip: IpAddr) -> String {
    match eip {
        IpAddr::V4(ip) => format!("porter-l2-{ip}"),
        IpAddr::V6(ip) => format!("porter-l2-{:032x}", u128::from(ip)),
    }
}

pub fn from_micro_time(at: &MicroTime) -> Duration {
    Duration::from_micros(u64::try_from(at.0.as_microsecond()).unwrap_or(0))
}

/// The record a Lease holds; None when it has no holder (released).
pub fn lease_record(lease: &Lease) -> Option<LeaseRecord> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = from_micro_time(spec.renew_time.as_ref()?);
    let duration = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DURATION_ANNOTATION))
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            let seconds = spec.lease_duration_seconds?;
            Some(Duration::from_secs(u64::try_from(seconds).ok()?))
        })?;
    Some(LeaseRecord {
        holder,
        renewed,
        duration,
    })
}

/// The heartbeats and EIP leases among `leases`; others are ignored.
pub fn lease_view<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> LeaseView {
    let mut view = LeaseView::default();
    for lease in leases {
        let Some(record) = lease_record(lease) else {
            continue;
        };
        let labels = lease.metadata.labels.as_ref();
        match labels.and_then(|l| l.get(KIND_LABEL)).map(String::as_str) {
            Some("heartbeat") => {
                view.heartbeats.insert(record.holder, record.renewed);
            }
            Some("eip") => {
                let eip = lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(EIP_ANNOTATION))
                    .and_then(|eip| eip.parse().ok());
                if let Some(eip) = eip {
                    view.leases.insert(eip, record);
                }
            }
            _ => {}
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_holder_is_reported_until_a_successor_could_have_taken_over() {
        let lease = |holder: &str, renewed| LeaseRecord {
            holder: holder.into(),
            renewed: Duration::from_secs(renewed),
            duration: Duration::from_secs(1),
        };
        let leases = BTreeMap::from([
            (ip("192.0.2.1"), lease("n1", 100)),
            (ip("192.0.2.2"), lease("n2", 98)),
            (ip("2001:db8::1"), lease("n3", 100)),
        ]);
        // n1's lease ran out 0.5 s ago: still reported, nobody took over yet.
        let now = Duration::from_millis(101_500);
        assert_eq!(
            holders(&leases, now),
            BTreeMap::from([
                (ip("192.0.2.1"), "n1".to_owned()),
                (ip("2001:db8::1"), "n3".to_owned())
            ])
        );
        assert_eq!(next_expiry(&leases, now), Some(Duration::from_secs(102)));
        assert_eq!(next_expiry(&leases, Duration::from_secs(102)), None);
        assert!(holders(&leases, Duration::from_secs(102)).is_empty());
    }

    #[test]
    fn lease_files_round_trip_and_junk_counts_as_absent() {
        let dir = std::env::temp_dir().join(format!("porter-api-l2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            read_lease_dir(&dir).expect("missing dir"),
            LeaseView::default()
        );
        std::fs::create_dir_all(&dir).expect("dir");
        let eip = ip("192.0.2.10");
        let text = lease_file_text("n1", Duration::from_millis(1500), Duration::from_secs(1));
        std::fs::write(dir.join(lease_file(eip)), text).expect("write");
        std::fs::write(dir.join(heartbeat_file("n1")), "1500").expect("write");
        std::fs::write(dir.join("lease-192.0.2.11"), "n1 notanumber").expect("write");
        std::fs::write(dir.join("lease-not-an-ip"), "n1 1 1").expect("write");
        let view = read_lease_dir(&dir).expect("read");
        assert_eq!(
            view.leases,
            BTreeMap::from([(
                eip,
                LeaseRecord {
                    holder: "n1".into(),
                    renewed: Duration::from_millis(1500),
                    duration: Duration::from_secs(1),
                }
            )])
        );
        assert_eq!(
            view.heartbeats,
            BTreeMap::from([("n1".to_owned(), Duration::from_millis(1500))])
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

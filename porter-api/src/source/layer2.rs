//! Who answers ARP/NDP for each Layer 2 EIP, as the controller sees it: the
//! agents' leases (Kubernetes Leases with [`watch_kube`], the dir source's
//! lease files with [`watch_dir`]) turned into [`Holders`] and merged into
//! the snapshots by [`with_holders`].
//!
//! Only a change of holder publishes: leases are renewed four times a
//! second, which must not make the controller run a pass each time. A lease
//! that nobody takes over is a change too (nobody answers any more; see
//! [`crate::layer2::LeaseRecord::reported_until`]), so the watchers also
//! wake when the first reported holder would lapse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};

use super::kube::forbidden;
use super::{Snapshot, SnapshotReceiver};
use crate::health::Health;
use crate::layer2::{
    Holders, KIND_LABEL, LeaseView, holders, lease_view, next_expiry, read_lease_dir, wall_clock,
};

pub type HoldersReceiver = watch::Receiver<Arc<Holders>>;

/// The `/readyz` problem of a refused Lease watch.
const PROBLEM: &str = "watch Layer 2 Leases";

/// How long a watcher sleeps when no lease can expire.
const IDLE: Duration = Duration::from_secs(3600);

/// `snapshots` with [`Snapshot::layer2_holders`] filled from `holders`;
/// publishes when either changes.
pub fn with_holders(
    mut snapshots: SnapshotReceiver,
    mut holders: HoldersReceiver,
) -> SnapshotReceiver {
    fn merge(snap: &Snapshot, holders: &Arc<Holders>) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            layer2_holders: holders.clone(),
            ..snap.clone()
        })
    }
    let first = merge(&snapshots.borrow_and_update(), &holders.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                r = holders.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
            let next = merge(&snapshots.borrow_and_update(), &holders.borrow_and_update());
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    rx
}

/// Publishes `view`'s holders at `now` if they changed; returns when to
/// look again (when the first holder would lapse).
fn publish(tx: &watch::Sender<Arc<Holders>>, view: &LeaseView) -> Duration {
    let now = wall_clock();
    let next = holders(&view.leases, now);
    tx.send_if_modified(|current| {
        let changed = **current != next;
        if changed {
            *current = Arc::new(next);
        }
        changed
    });
    next_expiry(&view.leases, now).map_or(IDLE, |at| at.saturating_sub(now))
}

/// The lease files in `dir` (`<dir source>/layer2-leases`), read every `poll`.
pub fn watch_dir(dir: PathBuf, poll: Duration) -> HoldersReceiver {
    let (tx, rx) = watch::channel(Arc::new(Holders::new()));
    if let Some(view) = read_dir(&dir) {
        publish(&tx, &view);
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = tx.closed() => return,
            }
            if let Some(view) = read_dir(&dir) {
                publish(&tx, &view);
            }
        }
    });
    rx
}

/// The leases, or None (with a warning) when they cannot be read: the last
/// holders stand rather than flipping to "nobody".
fn read_dir(dir: &Path) -> Option<LeaseView> {
    read_lease_dir(dir)
        .inspect_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot read the layer 2 leases; keeping the last holders"))
        .ok()
}

/// The agents' EIP Leases in `namespace`, watched. Returns once they are
/// listed, so the first holders are complete (an empty first view would be
/// reported as every EIP losing its node). A refused watch (403) is reported
/// in `health`, naming the missing permission, until it succeeds.
pub async fn watch_kube(client: Client, namespace: &str, health: &Health) -> HoldersReceiver {
    let health = health.clone();
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{KIND_LABEL}=eip"));
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|lease: &mut Lease| lease.metadata.managed_fields = None)
        .reflect(writer);
    let (tx, rx) = watch::channel(Arc::new(Holders::new()));
    let (listed_tx, listed) = oneshot::channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed_tx = Some(listed_tx);
        let mut wake = IDLE;
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    None => return,
                    Some(Err(e)) => {
                        match forbidden(&e) {
                            Some(refusal) => {
                                let message = format!("cannot watch the Layer 2 Leases: {refusal}");
                                tracing::error!("{message}; grant it in the controller's Role, see docs/install.md; retrying with backoff");
                                health.set_problem(PROBLEM, Some(message));
                            }
                            None => tracing::warn!(error = %e, "watching the layer 2 Leases failed; retrying with backoff"),
                        }
                        continue;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        health.set_problem(PROBLEM, None);
                        if let Some(listed) = listed_tx.take() {
                            let _ = listed.send(());
                        }
                    }
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep(wake) => {}
                () = tx.closed() => return,
            }
            let leases = reader.state();
            wake = publish(&tx, &lease_view(leases.iter().map(Arc::as_ref)));
        }
    });
    // An error means the task ended before listing (the client went away).
    let _ = listed.await;
    rx
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use serde_json::json;

    use super::*;
    use crate::layer2::{lease_file, lease_file_text};
    use crate::testing::mock_client;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[tokio::test]
    async fn holders_come_from_valid_lease_files_and_change_when_a_lease_moves() {
        let dir = std::env::temp_dir().join(format!("porter-l2-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let now = wall_clock();
        let write = |eip: &str, holder: &str, renewed: Duration| {
            let text = lease_file_text(holder, renewed, Duration::from_secs(60));
            std::fs::write(dir.join(lease_file(ip(eip))), text).expect("write");
        };
        write("192.0.2.10", "n1", now);
        // Ran out long ago: nobody answers for it.
        write("192.0.2.11", "n2", now - Duration::from_secs(180));
        let mut rx = watch_dir(dir.clone(), Duration::from_millis(10));
        assert_eq!(
            **rx.borrow_and_update(),
            BTreeMap::from([(ip("192.0.2.10"), "n1".to_owned())])
        );
        write("192.0.2.10", "n3", now);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a new holder is published")
            .expect("watcher alive");
        assert_eq!(
            **rx.borrow(),
            BTreeMap::from([(ip("192.0.2.10"), "n3".to_owned())])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The mock API server lists one EIP Lease held by n2 and one released
    /// (no holder); watches get an empty stream.
    fn leases_reply(request: &crate::testing::Seen) -> serde_json::Value {
        if request.uri.contains("watch=true") {
            return serde_json::Value::Null;
        }
        let renewed = k8s_openapi::jiff::Timestamp::now().to_string();
        let lease = |name: &str, eip: &str, holder: Option<&str>| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": name, "namespace": "porter-system", "resourceVersion": "1",
                                "labels": {KIND_LABEL: "eip"},
                                "annotations": {crate::layer2::EIP_ANNOTATION: eip,
                                                crate::layer2::DURATION_ANNOTATION: "60000"}},
                   "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 60}})
        };
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
               "metadata": {"resourceVersion": "1"},
               "items": [lease("porter-l2-192.0.2.10", "192.0.2.10", Some("n2")),
                         lease("porter-l2-192.0.2.11", "192.0.2.11", None)]})
    }

    #[tokio::test]
    async fn holders_come_from_the_eip_leases_in_the_agents_namespace() {
        let (client, log) = mock_client(leases_reply);
        let rx = watch_kube(client, "porter-system", &Health::starting()).await;
        assert_eq!(
            **rx.borrow(),
            BTreeMap::from([(ip("192.0.2.10"), "n2".to_owned())])
        );
        let list = crate::testing::seen(&log)
            .into_iter()
            .next()
            .expect("the Leases were listed");
        assert!(
            list.uri
                .starts_with("/apis/coordination.k8s.io/v1/namespaces/porter-system/leases?"),
            "{}",
            list.uri
        );
        assert!(
            list.uri
                .contains("labelSelector=porter.kubesphere.io%2Flayer2%3Deip"),
            "only EIP leases: {}",
            list.uri
        );
    }
}

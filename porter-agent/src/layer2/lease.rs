//! Where heartbeats and per-EIP leases live. [`FileLeases`] keeps them as
//! files in a directory shared by the nodes (the dir source's manifest
//! directory, or any shared path) through porter-api's compare-and-set
//! [`FileLeaseDir`], so two nodes never both acquire one lease. A Kubernetes
//! implementation keeps them as `coordination.k8s.io` Leases and uses the
//! resourceVersion for the same compare-and-set.
use std::{
    future::{Future, ready},
    io,
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use porter_api::layer2::{heartbeat_file, lease_file, read_lease_dir};
use porter_api::lease::{FileLeaseDir, FileLeaseError};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "layer 2 lease store {path}: {source} (is the directory shared by the nodes and writable?)"
    )]
    File { path: PathBuf, source: io::Error },
    #[error(
        "layer 2 leases: the API server refused {what}: {source} \
         (does the agent's RBAC allow coordination.k8s.io leases?)"
    )]
    Api {
        what: String,
        source: Box<kube::Error>,
    },
}

pub use porter_api::layer2::LeaseView;

/// Heartbeats and per-EIP leases. Async, because the Kubernetes store talks
/// to the API server; the file store answers at once.
pub trait LeaseStore {
    fn read(&self) -> impl Future<Output = Result<LeaseView, LeaseError>> + Send;
    /// Renews `node`'s heartbeat at `now`.
    fn heartbeat(
        &self,
        node: &str,
        now: Duration,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Takes or renews `eip`'s lease if it is free, expired or `node`'s;
    /// true when `node` holds it afterwards.
    fn acquire(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send;
    /// Gives `eip`'s lease up if `node` holds it.
    fn release(
        &self,
        eip: IpAddr,
        node: &str,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
}

/// Leases as files: `heartbeat-<node>` holds the renewal time in ms since
/// the epoch; `lease-<eip>` holds `<holder> <renewed ms> <duration ms>`.
#[derive(Clone, Debug)]
pub struct FileLeases {
    store: FileLeaseDir,
}

impl From<FileLeaseError> for LeaseError {
    fn from(error: FileLeaseError) -> Self {
        LeaseError::File {
            path: error.path,
            source: error.source,
        }
    }
}

impl FileLeases {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LeaseError> {
        Ok(Self {
            store: FileLeaseDir::new(dir)?,
        })
    }

    fn read_now(&self) -> Result<LeaseView, LeaseError> {
        let dir = self.store.dir();
        read_lease_dir(dir).map_err(|source| LeaseError::File {
            path: dir.to_owned(),
            source,
        })
    }

    fn heartbeat_now(&self, node: &str, now: Duration) -> Result<(), LeaseError> {
        Ok(self
            .store
            .write(&heartbeat_file(node), &now.as_millis().to_string())?)
    }

    fn acquire_now(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> Result<bool, LeaseError> {
        Ok(self.store.acquire(&lease_file(eip), node, now, duration)?)
    }

    fn release_now(&self, eip: IpAddr, node: &str) -> Result<(), LeaseError> {
        Ok(self.store.release(&lease_file(eip), node)?)
    }
}

impl LeaseStore for FileLeases {
    fn read(&self) -> impl Future<Output = Result<LeaseView, LeaseError>> + Send {
        ready(self.read_now())
    }

    fn heartbeat(
        &self,
        node: &str,
        now: Duration,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        ready(self.heartbeat_now(node, now))
    }

    fn acquire(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send {
        ready(self.acquire_now(eip, node, now, duration))
    }

    fn release(
        &self,
        eip: IpAddr,
        node: &str,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        ready(self.release_now(eip, node))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, fs};

    use super::*;

    fn store(tag: &str) -> (FileLeases, PathBuf) {
        let dir = std::env::temp_dir().join(format!("porter-l2-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (FileLeases::new(&dir).expect("temp dir"), dir)
    }

    #[test]
    fn eip_leases_and_heartbeats_are_files_the_view_reads() {
        let (leases, dir) = store("cas");
        let eip: IpAddr = "192.0.2.10".parse().expect("address");
        let (t0, life) = (Duration::from_secs(100), Duration::from_secs(2));
        assert!(leases.acquire_now(eip, "n1", t0, life).expect("acquire"));
        assert!(!leases.acquire_now(eip, "n2", t0, life).expect("cas"));
        leases.heartbeat_now("n1", t0).expect("heartbeat");
        let view = leases.read_now().expect("read");
        assert_eq!(view.leases.get(&eip).map(|l| l.holder.as_str()), Some("n1"));
        assert_eq!(view.heartbeats, BTreeMap::from([("n1".to_owned(), t0)]));
        leases.release_now(eip, "n1").expect("release");
        assert!(leases.read_now().expect("read").leases.is_empty());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn malformed_files_count_as_absent() {
        let (leases, dir) = store("junk");
        fs::write(dir.join("lease-192.0.2.10"), "n1 notanumber").expect("write");
        fs::write(dir.join("heartbeat-n1"), "soon").expect("write");
        fs::write(dir.join("lease-not-an-ip"), "n1 1 1").expect("write");
        assert_eq!(leases.read_now().expect("read"), LeaseView::default());
        let _ = fs::remove_dir_all(dir);
    }
}

//! Where heartbeats and per-EIP leases live. [`FileLeases`] keeps them as
//! files in a directory shared by the nodes (the dir source's manifest
//! directory, or any shared path), with an exclusive `flock` around every
//! compare-and-set, so two nodes never both acquire one lease. A Kubernetes
//! implementation keeps them as `coordination.k8s.io` Leases and uses the
//! resourceVersion for the same compare-and-set.
use std::{
    fs::{self, File},
    future::{Future, ready},
    io::{self, Write},
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use porter_api::layer2::{
    LeaseRecord, heartbeat_file, lease_file, lease_file_text, parse_lease_file, read_lease_dir,
};

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
    dir: PathBuf,
}

impl FileLeases {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LeaseError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| LeaseError::File {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn error(&self, path: &Path) -> impl Fn(io::Error) -> LeaseError {
        let path = path.to_owned();
        move |source| LeaseError::File {
            path: path.clone(),
            source,
        }
    }

    fn lease_path(&self, eip: IpAddr) -> PathBuf {
        self.dir.join(lease_file(eip))
    }

    /// Holds the store's lock until dropped.
    fn lock(&self) -> Result<File, LeaseError> {
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.error(&path))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.error(&path)(io::Error::last_os_error()));
        }
        Ok(file)
    }

    /// Writes `text` to `path` atomically (a reader sees old or new, whole).
    fn write(&self, path: &Path, text: &str) -> Result<(), LeaseError> {
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let result = File::create(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&temporary, path));
        result.map_err(self.error(path))
    }

    fn read_lease(&self, eip: IpAddr) -> Result<Option<LeaseRecord>, LeaseError> {
        let path = self.lease_path(eip);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse_lease_file(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.error(&path)(err)),
        }
    }
}

impl FileLeases {
    fn read_now(&self) -> Result<LeaseView, LeaseError> {
        read_lease_dir(&self.dir).map_err(self.error(&self.dir))
    }

    fn heartbeat_now(&self, node: &str, now: Duration) -> Result<(), LeaseError> {
        let path = self.dir.join(heartbeat_file(node));
        self.write(&path, &now.as_millis().to_string())
    }

    fn acquire_now(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> Result<bool, LeaseError> {
        let _lock = self.lock()?;
        if let Some(current) = self.read_lease(eip)?
            && current.holder != node
            && !current.expired(now)
        {
            return Ok(false);
        }
        let text = lease_file_text(node, now, duration);
        self.write(&self.lease_path(eip), &text)?;
        Ok(true)
    }

    fn release_now(&self, eip: IpAddr, node: &str) -> Result<(), LeaseError> {
        let _lock = self.lock()?;
        if self
            .read_lease(eip)?
            .is_some_and(|lease| lease.holder == node)
        {
            let path = self.lease_path(eip);
            fs::remove_file(&path).map_err(self.error(&path))?;
        }
        Ok(())
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

/// The store an agent runs with: files for the dir source, Leases for kube.
pub enum Leases {
    File(FileLeases),
    Kube(Box<super::kube_lease::KubeLeases>),
}

impl LeaseStore for Leases {
    async fn read(&self) -> Result<LeaseView, LeaseError> {
        match self {
            Leases::File(store) => store.read().await,
            Leases::Kube(store) => store.read().await,
        }
    }

    async fn heartbeat(&self, node: &str, now: Duration) -> Result<(), LeaseError> {
        match self {
            Leases::File(store) => store.heartbeat(node, now).await,
            Leases::Kube(store) => store.heartbeat(node, now).await,
        }
    }

    async fn acquire(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> Result<bool, LeaseError> {
        match self {
            Leases::File(store) => store.acquire(eip, node, now, duration).await,
            Leases::Kube(store) => store.acquire(eip, node, now, duration).await,
        }
    }

    async fn release(&self, eip: IpAddr, node: &str) -> Result<(), LeaseError> {
        match self {
            Leases::File(store) => store.release(eip, node).await,
            Leases::Kube(store) => store.release(eip, node).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn store(tag: &str) -> (FileLeases, PathBuf) {
        let dir = std::env::temp_dir().join(format!("porter-l2-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (FileLeases::new(&dir).expect("temp dir"), dir)
    }

    #[test]
    fn a_lease_has_one_holder_until_it_expires_or_is_released() {
        let (leases, dir) = store("cas");
        let eip: IpAddr = "192.0.2.10".parse().expect("address");
        let (t0, life) = (Duration::from_secs(100), Duration::from_secs(2));
        assert!(leases.acquire_now(eip, "n1", t0, life).expect("acquire"));
        assert!(
            !leases
                .acquire_now(eip, "n2", t0 + Duration::from_secs(1), life)
                .expect("cas")
        );
        // Renewal by the holder moves the expiry.
        assert!(
            leases
                .acquire_now(eip, "n1", t0 + Duration::from_secs(1), life)
                .expect("renew")
        );
        assert!(
            !leases
                .acquire_now(eip, "n2", t0 + Duration::from_secs(2), life)
                .expect("cas")
        );
        // Expired: someone else may take it.
        assert!(
            leases
                .acquire_now(eip, "n2", t0 + Duration::from_secs(3), life)
                .expect("expired")
        );
        // Only the holder releases.
        leases
            .release_now(eip, "n1")
            .expect("release by non-holder");
        assert_eq!(
            leases
                .read_now()
                .expect("read")
                .leases
                .get(&eip)
                .map(|l| l.holder.as_str()),
            Some("n2")
        );
        leases.release_now(eip, "n2").expect("release");
        assert!(leases.read_now().expect("read").leases.is_empty());
        leases.heartbeat_now("n1", t0).expect("heartbeat");
        assert_eq!(
            leases.read_now().expect("read").heartbeats,
            BTreeMap::from([("n1".to_owned(), t0)])
        );
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

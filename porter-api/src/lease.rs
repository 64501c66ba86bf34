//! Compare-and-set leases, shared by the agents' Layer 2 leases and the
//! controller's leader election: a lease is taken or renewed only if it is
//! free, expired or already the caller's, so two contenders never both win.
//!
//! Two stores: [`FileLeaseDir`], a directory of files (the `dir:` source's,
//! shared by every process that contends) with an exclusive `flock` around
//! every compare-and-set; and `coordination.k8s.io` Leases
//! ([`try_acquire`]), where a create fails if the Lease exists and a replace
//! carries the resourceVersion that was read.
//!
//! Times are durations since the Unix epoch as the contenders' clocks read
//! them ([`crate::layer2::wall_clock`]): they are assumed NTP-synchronised
//! to well under a lease.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};

use crate::layer2::{DURATION_ANNOTATION, LeaseRecord, lease_file_text, parse_lease_file};

/// Under the `dir:` source's directory: the controller replicas' leader
/// lease (one file, named by `--lease-name`).
pub const CONTROLLER_LEASE_DIR: &str = "controller-leases";

/// A file of a [`FileLeaseDir`] could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("lease store {path}: {source}")]
pub struct FileLeaseError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Leases as files in one directory: each holds
/// `<holder> <renewed ms> <duration ms>` ([`lease_file_text`]).
#[derive(Clone, Debug)]
pub struct FileLeaseDir {
    dir: PathBuf,
}

impl FileLeaseDir {
    /// Creates the directory if needed.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, FileLeaseError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| FileLeaseError {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(path: &Path) -> impl Fn(io::Error) -> FileLeaseError {
        let path = path.to_owned();
        move |source| FileLeaseError {
            path: path.clone(),
            source,
        }
    }

    /// Holds the directory's lock until dropped.
    fn lock(&self) -> Result<File, FileLeaseError> {
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Self::error(&path))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Self::error(&path)(io::Error::last_os_error()));
        }
        Ok(file)
    }

    /// Writes `text` to file `name` atomically (a reader sees old or new,
    /// whole; a crash cannot leave half a file).
    pub fn write(&self, name: &str, text: &str) -> Result<(), FileLeaseError> {
        let path = self.dir.join(name);
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let result = File::create(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&temporary, &path));
        result.map_err(Self::error(&path))
    }

    /// Lease `name` as stored; None when absent or malformed.
    pub fn read(&self, name: &str) -> Result<Option<LeaseRecord>, FileLeaseError> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse_lease_file(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Self::error(&path)(err)),
        }
    }

    /// Takes or renews lease `name` if it is free, expired or `holder`'s;
    /// true when `holder` holds it afterwards.
    pub fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Duration,
        duration: Duration,
    ) -> Result<bool, FileLeaseError> {
        let _lock = self.lock()?;
        if let Some(current) = self.read(name)?
            && current.holder != holder
            && !current.expired(now)
        {
            return Ok(false);
        }
        self.write(name, &lease_file_text(holder, now, duration))?;
        Ok(true)
    }

    /// Gives lease `name` up if `holder` holds it.
    pub fn release(&self, name: &str, holder: &str) -> Result<(), FileLeaseError> {
        let _lock = self.lock()?;
        if self.read(name)?.is_some_and(|lease| lease.holder == holder) {
            let path = self.dir.join(name);
            fs::remove_file(&path).map_err(Self::error(&path))?;
        }
        Ok(())
    }
}

// --- coordination.k8s.io Leases.

/// 409 (lost a compare-and-set race) and 404 (gone meanwhile).
pub fn is_race(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}

pub fn micro_time(at: Duration) -> MicroTime {
    let micros = i64::try_from(at.as_micros()).unwrap_or(i64::MAX);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `lease` (or a new Lease named `name`) held by `holder` from `now` for
/// `duration`. The duration is kept in milliseconds in an annotation, since
/// `leaseDurationSeconds` only holds whole seconds (it is set too, rounded
/// up, for `kubectl` and other readers).
pub fn claimed(
    lease: Option<Lease>,
    name: &str,
    holder: &str,
    now: Duration,
    duration: Duration,
) -> Lease {
    let mut lease = lease.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            DURATION_ANNOTATION.to_owned(),
            duration.as_millis().to_string(),
        );
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        spec.acquire_time = Some(micro_time(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(holder.to_owned());
    spec.renew_time = Some(micro_time(now));
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_millis().div_ceil(1000)).unwrap_or(i32::MAX));
    lease
}

/// Creates `next` or replaces `current` with it (compare-and-set: `next`
/// carries the resourceVersion read with `current`); false when another
/// writer won the race.
pub async fn compare_and_set(
    api: &Api<Lease>,
    name: &str,
    current: Option<&Lease>,
    next: &Lease,
) -> Result<bool, kube::Error> {
    let result = match current {
        None => api.create(&PostParams::default(), next).await,
        Some(_) => api.replace(name, &PostParams::default(), next).await,
    };
    match result {
        Ok(_) => Ok(true),
        Err(err) if is_race(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Takes or renews Lease `name` if it is free, expired or `holder`'s, with
/// `decorate` adding the caller's labels and annotations; true when
/// `holder` holds it afterwards.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    holder: &str,
    now: Duration,
    duration: Duration,
    decorate: impl FnOnce(&mut Lease),
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    if let Some(existing) = current.as_ref().and_then(crate::layer2::lease_record)
        && existing.holder != holder
        && !existing.expired(now)
    {
        return Ok(false);
    }
    let mut next = claimed(current.clone(), name, holder, now, duration);
    decorate(&mut next);
    compare_and_set(api, name, current.as_ref(), &next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lease_has_one_holder_until_it_expires_or_is_released() {
        let dir = std::env::temp_dir().join(format!("porter-api-lease-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let leases = FileLeaseDir::new(&dir).expect("temp dir");
        let (t0, life) = (Duration::from_secs(100), Duration::from_secs(2));
        let at = |s| t0 + Duration::from_secs(s);
        assert!(leases.acquire("leader", "a", t0, life).expect("acquire"));
        assert!(!leases.acquire("leader", "b", at(1), life).expect("cas"));
        // Renewal by the holder moves the expiry.
        assert!(leases.acquire("leader", "a", at(1), life).expect("renew"));
        assert!(!leases.acquire("leader", "b", at(2), life).expect("cas"));
        // Expired: someone else may take it.
        assert!(leases.acquire("leader", "b", at(3), life).expect("expired"));
        // Only the holder releases.
        leases
            .release("leader", "a")
            .expect("release by non-holder");
        assert_eq!(
            leases.read("leader").expect("read").map(|l| l.holder),
            Some("b".to_owned())
        );
        leases.release("leader", "b").expect("release");
        assert_eq!(leases.read("leader").expect("read"), None);
        let _ = fs::remove_dir_all(dir);
    }
}

//! The lease the controller replicas elect their leader with, and the task
//! that keeps trying to take or renew it: the thin I/O around
//! [`crate::leadership::Election`].
//!
//! Two stores, both compare-and-set through [`porter_api::lease`]: a
//! `coordination.k8s.io` Lease (`kube` source) and a file beside the
//! manifests (`dir:` source), so that two controller processes sharing one
//! directory elect one leader the same way two pods do.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use porter_api::layer2::{lease_record, wall_clock};
use porter_api::lease::{FileLeaseDir, compare_and_set, try_acquire};
use tokio::sync::watch;

use crate::leadership::{Attempt, Election, Leadership, Role, StepDown, Timing, Transition};
use crate::metrics::Metrics;

/// One attempt to take or renew the lease at wall-clock `now` (since the
/// Unix epoch) for `duration`.
pub trait LeaderLease: Clone + Send + Sync + 'static {
    fn try_hold(&self, now: Duration, duration: Duration) -> impl Future<Output = Attempt> + Send;
    /// Gives the lease up if this replica holds it, so that another replica
    /// leads at once instead of once it expires.
    fn release(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Who holds the lease, for the log; the store's own words when unknown.
fn held_by(holder: Option<String>) -> Attempt {
    Attempt::HeldBy(holder.unwrap_or_else(|| "another replica".to_owned()))
}

/// The lease as file `name` in a [`FileLeaseDir`].
#[derive(Clone)]
pub struct FileLeaderLease {
    store: FileLeaseDir,
    name: String,
    identity: String,
}

impl FileLeaderLease {
    pub fn new(store: FileLeaseDir, name: &str, identity: &str) -> Self {
        Self {
            store,
            name: name.to_owned(),
            identity: identity.to_owned(),
        }
    }
}

impl FileLeaderLease {
    fn try_hold_now(&self, now: Duration, duration: Duration) -> Attempt {
        match self
            .store
            .acquire(&self.name, &self.identity, now, duration)
        {
            Ok(true) => Attempt::Held,
            Ok(false) => held_by(self.store.read(&self.name).ok().flatten().map(|l| l.holder)),
            Err(error) => Attempt::Failed(error.to_string()),
        }
    }
}

impl LeaderLease for FileLeaderLease {
    async fn try_hold(&self, now: Duration, duration: Duration) -> Attempt {
        // The lock may block (a hung shared file system, another process
        // holding it): off the runtime's threads, so that the attempt's
        // timeout fires and the BGP sessions keep their keepalives.
        let lease = self.clone();
        tokio::task::spawn_blocking(move || lease.try_hold_now(now, duration))
            .await
            .unwrap_or_else(|error| Attempt::Failed(format!("lease task failed: {error}")))
    }

    async fn release(&self) -> Result<(), String> {
        let lease = self.clone();
        tokio::task::spawn_blocking(move || lease.store.release(&lease.name, &lease.identity))
            .await
            .map_err(|error| format!("lease task failed: {error}"))?
            .map_err(|error| error.to_string())
    }
}

/// The lease as a `coordination.k8s.io` Lease.
#[derive(Clone)]
pub struct KubeLeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl KubeLeaderLease {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
        }
    }
}

impl LeaderLease for KubeLeaderLease {
    async fn try_hold(&self, now: Duration, duration: Duration) -> Attempt {
        let tried = try_acquire(&self.api, &self.name, &self.identity, now, duration, |_| {}).await;
        match tried {
            Ok(true) => Attempt::Held,
            Ok(false) => {
                let holder = self.api.get_opt(&self.name).await.ok().flatten();
                held_by(holder.as_ref().and_then(lease_record).map(|l| l.holder))
            }
            Err(error) => Attempt::Failed(format!(
                "Lease {}: {error} (is the API server reachable, and may this \
                 service account manage Leases?)",
                self.name
            )),
        }
    }

    async fn release(&self) -> Result<(), String> {
        let failed = |error: kube::Error| format!("Lease {}: {error}", self.name);
        let Some(current) = self.api.get_opt(&self.name).await.map_err(failed)? else {
            return Ok(());
        };
        if lease_record(&current).is_none_or(|l| l.holder != self.identity) {
            return Ok(());
        }
        // No holder: free for the next replica's attempt (client-go
        // releases the same way). Compare-and-set: a lease taken
        // meanwhile is left alone.
        let mut released = current.clone();
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
        }
        compare_and_set(&self.api, &self.name, Some(&current), &released)
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

/// Keeps trying to take or renew `lease` every `timing.retry`, and
/// publishes whether this replica may lead, and until when. Runs forever:
/// a replica that loses the lease stays up as a follower and tries again.
pub async fn elect<L: LeaderLease>(
    lease: L,
    timing: Timing,
    publish: watch::Sender<Leadership>,
    metrics: Arc<Metrics>,
) {
    let mut election = Election::new(timing);
    let publish = |election: &Election, now: Instant| {
        let leadership = election.leadership();
        metrics.set_leader(leadership.leads_at(now));
        // Only a change of role or term wakes the controller's loop; a
        // renewal just moves the deadline it reads at each pass.
        publish.send_if_modified(|published| {
            let roles = |l: &Leadership| (l.role_at(now), l.term_at(now));
            let changed = roles(published) != roles(&leadership);
            *published = leadership;
            changed
        });
    };
    let record = |transition: Option<Transition>| {
        if let Some(transition) = transition {
            report(&transition, timing);
            if let Transition::SteppedDown(why) = &transition {
                metrics.stepped_down(why);
            }
        }
    };
    loop {
        let started = Instant::now();
        // An attempt that hangs (an API server cut off mid-request, a
        // file system that blocks) must not keep the step-down waiting.
        let attempt =
            tokio::time::timeout(timing.margin, lease.try_hold(wall_clock(), timing.duration));
        tokio::pin!(attempt);
        let attempt = loop {
            tokio::select! {
                answered = &mut attempt => break answered.unwrap_or_else(|_| {
                    Attempt::Failed(format!("no answer within {:?}", timing.margin))
                }),
                () = until(election.leadership().deadline()) => {
                    let now = Instant::now();
                    let transition = election.tick(now);
                    record(transition);
                    publish(&election, now);
                }
            }
        };
        let now = Instant::now();
        if let Attempt::Failed(error) = &attempt {
            let leadership = election.leadership();
            match (leadership.role_at(now), leadership.deadline()) {
                (Role::Leader { .. }, Some(deadline)) => tracing::warn!(
                    %error,
                    steps_down_in = ?deadline - now,
                    "cannot renew the leader lease; leading on until the deadline"
                ),
                (Role::Standby { .. }, Some(deadline)) => tracing::warn!(
                    %error,
                    silent_in = ?deadline - now,
                    "cannot reach the leader election lease; announcing on as a standby until the deadline"
                ),
                _ => tracing::warn!(
                    %error,
                    retry_in = ?timing.retry,
                    "cannot reach the leader election lease; following until it can be taken"
                ),
            }
        }
        let transition = election.record(started, &attempt, now);
        record(transition);
        publish(&election, now);
        tokio::time::sleep_until(election.next_attempt(started).into()).await;
    }
}

/// Sleeps until `deadline`; without one, for as good as ever.
pub(crate) fn until(deadline: Option<Instant>) -> tokio::time::Sleep {
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    tokio::time::sleep_until(deadline.map_or_else(far, tokio::time::Instant::from_std))
}

/// Elects with `lease` and runs `work` (the controller's loop, reading
/// what `publish` says) until it ends or the process is asked to stop
/// (SIGTERM, as in a rollout, or SIGINT). On a stop, `work` goes first, and
/// with it the speaker, whose sessions close without a NOTIFICATION so the
/// routers keep the routes; then the lease is given up, so that another
/// replica leads at once rather than after the lease.
pub async fn run_elected<L: LeaderLease>(
    lease: L,
    timing: Timing,
    publish: watch::Sender<Leadership>,
    metrics: Arc<Metrics>,
    work: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let election = tokio::spawn(elect(lease.clone(), timing, publish, metrics));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopped = tokio::select! {
        () = work => false,
        _ = terminate.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
    };
    election.abort();
    if stopped {
        match tokio::time::timeout(timing.margin, lease.release()).await {
            Ok(Ok(())) => tracing::info!("stopping: leader lease given up"),
            Ok(Err(error)) => tracing::warn!(
                %error,
                "stopping: cannot give the leader lease up; another replica leads once it expires"
            ),
            Err(_) => tracing::warn!(
                "stopping: no answer giving the leader lease up; another replica leads once it expires"
            ),
        }
    }
    Ok(())
}

fn report(transition: &Transition, timing: Timing) {
    match transition {
        Transition::Elected => tracing::info!(
            lease = ?timing.duration,
            "elected leader: writing status and announcing"
        ),
        Transition::SteppedDown(StepDown::Expired { since_renewal }) => tracing::error!(
            ?since_renewal,
            lease = ?timing.duration,
            "leadership lost: no lease renewal succeeded in time; stepping down \
             (BGP sessions closed, routes kept by the routers' graceful restart, \
             writes stopped) and staying up as a follower"
        ),
        Transition::SteppedDown(StepDown::Taken(holder)) => tracing::error!(
            %holder,
            "leadership lost: another replica holds the lease; stepping down \
             (writes stopped) and announcing on as a standby"
        ),
        Transition::Silenced { since_answer } => tracing::error!(
            ?since_answer,
            lease = ?timing.duration,
            "no answer from the leader election lease in time: this standby's view may be \
             stale, so it stops announcing (BGP sessions closed, routes kept by the routers' \
             graceful restart) until the lease store answers again"
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests;

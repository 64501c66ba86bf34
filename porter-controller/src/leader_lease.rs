//! The lease the controller replicas elect their leader with, and the task
//! that keeps trying to take or renew it: the thin I/O around
//! [`crate::leadership::Election`].
//!
//! Two stores, both compare-and-set through [`porter_api::lease`]: a
//! `coordination.k8s.io` Lease (`kube` source) and a file beside the
//! manifests (`dir:` source), so that two controller processes sharing one
//! directory elect one leader the same way two pods do.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use porter_api::layer2::{lease_record, wall_clock};
use porter_api::lease::{FileLeaseDir, try_acquire};
use tokio::sync::watch;

use crate::leadership::{Attempt, Election, Leadership, StepDown, Timing, Transition};
use crate::metrics::Metrics;

/// One attempt to take or renew the lease at wall-clock `now` (since the
/// Unix epoch) for `duration`.
pub trait LeaderLease: Send + Sync {
    fn try_hold(&self, now: Duration, duration: Duration) -> impl Future<Output = Attempt> + Send;
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

impl LeaderLease for FileLeaderLease {
    async fn try_hold(&self, now: Duration, duration: Duration) -> Attempt {
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

/// The lease as a `coordination.k8s.io` Lease.
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
            Err(error) => Attempt::Failed(error.to_string()),
        }
    }
}

/// Keeps trying to take or renew `lease` every `timing.retry`, and
/// publishes whether this replica may lead, and until when. Runs forever:
/// a replica that loses the lease stays up as a follower and tries again.
pub async fn elect<L: LeaderLease>(
    lease: L,
    timing: Timing,
    publish: watch::Sender<Leadership>,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut election = Election::new(timing);
    loop {
        let started = Instant::now();
        // An attempt that hangs (an API server cut off mid-request) must not
        // keep the loop from noticing the deadline.
        let attempt = match tokio::time::timeout(
            timing.margin,
            lease.try_hold(wall_clock(), timing.duration),
        )
        .await
        {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed(format!("no answer within {:?}", timing.margin)),
        };
        let now = Instant::now();
        if let Attempt::Failed(error) = &attempt {
            match election.leadership().deadline() {
                Some(deadline) if now < deadline => tracing::warn!(
                    %error,
                    steps_down_in = ?deadline - now,
                    "cannot renew the leader lease; leading on until the deadline"
                ),
                _ => tracing::warn!(
                    %error,
                    retry_in = ?timing.retry,
                    "cannot reach the leader election lease (is the API server \
                     reachable, and may this service account manage Leases?); \
                     following until it can be taken"
                ),
            }
        }
        if let Some(transition) = election.record(started, &attempt, now) {
            report(&transition, timing);
            if let Transition::SteppedDown(why) = &transition {
                metrics.stepped_down(why);
            }
        }
        let leadership = election.leadership();
        metrics.set_leader(leadership.leads_at(now));
        // Only a change of term wakes the controller's loop; a renewal
        // just moves the deadline it reads at each pass.
        publish.send_if_modified(|published| {
            let changed = published.term_at(now) != leadership.term_at(now);
            *published = leadership;
            changed
        });
        tokio::time::sleep_until(election.next_attempt(started).into()).await;
    }
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
             (BGP sessions closed, writes stopped) and staying up as a follower"
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests;

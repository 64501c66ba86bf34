//! Heartbeats and per-EIP leases as `coordination.k8s.io/v1` Leases in the
//! agent's namespace. Every write is a compare-and-set: a create fails if
//! the Lease exists, a replace carries the resourceVersion that was read, so
//! two nodes racing for one EIP cannot both win.
//!
//! Names: `porter-node-<node>` for heartbeats; `porter-l2-<a.b.c.d>` or
//! `porter-l2-<32 hex digits>` (IPv6) for EIPs, with the EIP itself in an
//! annotation. Durations are kept in milliseconds in an annotation, since
//! `leaseDurationSeconds` only holds whole seconds (it is set too, rounded up,
//! for `kubectl`).
use std::{collections::BTreeMap, future::Future, net::IpAddr, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams, Preconditions},
};

use super::lease::{LeaseError, LeaseStore, LeaseView};

pub use porter_api::layer2::{
    DURATION_ANNOTATION, EIP_ANNOTATION, KIND_LABEL, eip_lease_name,
    heartbeat_lease_name as heartbeat_name,
};
use porter_api::layer2::{lease_record as record, lease_view};

#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
}

impl KubeLeases {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> LeaseError {
    move |source| LeaseError::Api {
        what,
        source: Box::new(source),
    }
}

/// 409 (lost a compare-and-set race) and 404 (gone meanwhile).
fn is_race(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}

fn to_time(at: Duration) -> MicroTime {
    let micros = i64::try_from(at.as_micros()).unwrap_or(i64::MAX);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `lease` (or a new Lease named `name`) held by `holder` from `now`.
fn held(
    lease: Option<Lease>,
    name: &str,
    kind: &str,
    eip: Option<IpAddr>,
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
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(KIND_LABEL.to_owned(), kind.to_owned());
    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        DURATION_ANNOTATION.to_owned(),
        duration.as_millis().to_string(),
    );
    if let Some(eip) = eip {
        annotations.insert(EIP_ANNOTATION.to_owned(), eip.to_string());
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        spec.acquire_time = Some(to_time(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(holder.to_owned());
    spec.renew_time = Some(to_time(now));
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_millis().div_ceil(1000)).unwrap_or(i32::MAX));
    lease
}

impl KubeLeases {
    /// Creates or replaces (compare-and-set) `name`; false when another
    /// writer won the race.
    async fn write(
        &self,
        name: &str,
        current: Option<Lease>,
        next: Lease,
    ) -> Result<bool, LeaseError> {
        let result = match current {
            None => self.api.create(&PostParams::default(), &next).await,
            // `next` carries the resourceVersion read with `current`.
            Some(_) => self.api.replace(name, &PostParams::default(), &next).await,
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) if is_race(&err) => Ok(false),
            Err(err) => Err(api_error(format!("Lease {name}"))(err)),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(name)
            .await
            .map_err(api_error(format!("Lease {name}")))
    }
}

impl LeaseStore for KubeLeases {
    async fn read(&self) -> Result<LeaseView, LeaseError> {
        let leases = self
            .api
            .list(&ListParams::default().labels(KIND_LABEL))
            .await
            .map_err(api_error("Leases".to_owned()))?;
        Ok(lease_view(&leases.items))
    }

    fn heartbeat(
        &self,
        node: &str,
        now: Duration,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        let name = heartbeat_name(node);
        let node = node.to_owned();
        async move {
            let current = self.get(&name).await?;
            // Only the time matters; the duration is informational.
            let next = held(
                current.clone(),
                &name,
                "heartbeat",
                None,
                &node,
                now,
                Duration::ZERO,
            );
            // A lost race means our own previous write landed: fine.
            self.write(&name, current, next).await.map(|_| ())
        }
    }

    fn acquire(
        &self,
        eip: IpAddr,
        node: &str,
        now: Duration,
        duration: Duration,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send {
        let name = eip_lease_name(eip);
        let node = node.to_owned();
        async move {
            let current = self.get(&name).await?;
            if let Some(existing) = current.as_ref().and_then(record)
                && existing.holder != node
                && !existing.expired(now)
            {
                return Ok(false);
            }
            let next = held(
                current.clone(),
                &name,
                "eip",
                Some(eip),
                &node,
                now,
                duration,
            );
            self.write(&name, current, next).await
        }
    }

    fn release(
        &self,
        eip: IpAddr,
        node: &str,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        let name = eip_lease_name(eip);
        let node = node.to_owned();
        async move {
            let Some(current) = self.get(&name).await? else {
                return Ok(());
            };
            if record(&current).is_none_or(|r| r.holder != node) {
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: current.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(err) if is_race(&err) => Ok(()),
                Err(err) => Err(api_error(format!("Lease {name}"))(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests;

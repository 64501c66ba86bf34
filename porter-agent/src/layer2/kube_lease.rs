//! Heartbeats and per-EIP leases as `coordination.k8s.io/v1` Leases in the
//! agent's namespace. Every write is porter-api's compare-and-set
//! ([`porter_api::lease`]), so two nodes racing for one EIP cannot both win.
//!
//! Names: `porter-node-<node>` for heartbeats; `porter-l2-<a.b.c.d>` or
//! `porter-l2-<32 hex digits>` (IPv6) for EIPs, with the EIP itself in an
//! annotation. Durations are kept in milliseconds in an annotation, since
//! `leaseDurationSeconds` only holds whole seconds (it is set too, rounded up,
//! for `kubectl`).
use std::{collections::BTreeMap, future::Future, net::IpAddr, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Preconditions},
};
use porter_api::lease::{claimed, compare_and_set, is_race, try_acquire};

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

/// Marks `lease` as the agents' (`kind`: heartbeat or eip), for the view.
fn labelled(lease: &mut Lease, kind: &str, eip: Option<IpAddr>) {
    lease
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(KIND_LABEL.to_owned(), kind.to_owned());
    if let Some(eip) = eip {
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(EIP_ANNOTATION.to_owned(), eip.to_string());
    }
}

impl KubeLeases {
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
            let mut next = claimed(current.clone(), &name, &node, now, Duration::ZERO);
            labelled(&mut next, "heartbeat", None);
            // A lost race means our own previous write landed: fine.
            compare_and_set(&self.api, &name, current.as_ref(), &next)
                .await
                .map(|_| ())
                .map_err(api_error(format!("Lease {name}")))
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
            try_acquire(&self.api, &name, &node, now, duration, |lease| {
                labelled(lease, "eip", Some(eip))
            })
            .await
            .map_err(api_error(format!("Lease {name}")))
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

//! `porter-controller uninstall`: takes Porter's marks off every Service, so
//! that none hangs in Terminating once the controller is gone. The
//! finalizer [`SERVICE_FINALIZER`] comes off every Service that has it, and
//! `status.loadBalancer.ingress` off every Service Porter served (its
//! addresses are no longer announced). Nothing else changes.
//!
//! A running controller would put both back at once, so this refuses to
//! run while one holds the leader-election Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::ObjectKey;
use crate::annotations::SERVICE_FINALIZER;
use crate::service::{ingress_ips, opted_in};

/// The field manager of uninstall's patches (not the controller's: these
/// remove what the controller set).
pub const FIELD_MANAGER: &str = "porter-uninstall";

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(
        "a controller still leads (Lease {lease} held by {holder}, renewed {ago:?} ago) and would put the finalizers back: scale it to zero first (kubectl -n porter-system scale deployment/porter-controller --replicas=0), or pass --force"
    )]
    ControllerRunning {
        lease: String,
        holder: String,
        ago: Duration,
    },
    #[error("cannot {what}: {source}")]
    Api {
        what: String,
        source: Box<kube::Error>,
    },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> UninstallError {
    let what = what.into();
    move |source| UninstallError::Api {
        what,
        source: Box::new(source),
    }
}

/// What uninstall does to one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub service: ObjectKey,
    /// The finalizers to keep, when Porter's is among them.
    pub finalizers: Option<Vec<String>>,
    /// The Service's resourceVersion: a finalizer list written over a
    /// newer one is refused (409) instead of dropping someone else's.
    pub resource_version: Option<String>,
    /// Porter served it and it has an address.
    pub clear_ingress: bool,
}

/// The cleanup `svc` needs, if any. Pure.
pub fn cleanup_of(svc: &Service) -> Option<Cleanup> {
    let all = svc.metadata.finalizers.clone().unwrap_or_default();
    let finalizers = all
        .iter()
        .any(|f| f == SERVICE_FINALIZER)
        .then(|| all.into_iter().filter(|f| f != SERVICE_FINALIZER).collect());
    let clear_ingress = opted_in(svc) && !ingress_ips(svc).is_empty();
    (finalizers.is_some() || clear_ingress).then(|| Cleanup {
        service: ObjectKey::of(&svc.metadata),
        finalizers,
        resource_version: svc.metadata.resource_version.clone(),
        clear_ingress,
    })
}

/// Refuses while the Lease `namespace/name` has a holder that renewed it
/// within its duration (`now`: the wall clock).
pub async fn check_no_leader(
    client: &Client,
    namespace: &str,
    name: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<(), UninstallError> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(api_error(format!("read the Lease {namespace}/{name}")))?;
    let Some(spec) = lease.and_then(|l| l.spec) else {
        return Ok(());
    };
    let holder = spec.holder_identity.unwrap_or_default();
    let (Some(renewed), Some(seconds)) = (spec.renew_time, spec.lease_duration_seconds) else {
        return Ok(());
    };
    let ago = Duration::try_from(now.duration_since(renewed.0)).unwrap_or_default();
    if holder.is_empty() || ago >= Duration::from_secs(u64::try_from(seconds).unwrap_or(0)) {
        return Ok(());
    }
    Err(UninstallError::ControllerRunning {
        lease: format!("{namespace}/{name}"),
        holder,
        ago,
    })
}

/// What was done; a Service that could not be patched does not stop the
/// others.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<Cleanup>,
    pub failed: Vec<(ObjectKey, String)>,
}

/// Lists every Service and applies [`cleanup_of`] to each.
pub async fn remove_finalizers(client: &Client) -> Result<Report, UninstallError> {
    let all: Api<Service> = Api::all(client.clone());
    let services = all
        .list(&ListParams::default())
        .await
        .map_err(api_error("list the Services"))?;
    let mut report = Report::default();
    for cleanup in services.items.iter().filter_map(cleanup_of) {
        match apply(client, &cleanup).await {
            Ok(()) => report.done.push(cleanup),
            Err(e) => report.failed.push((cleanup.service, e.to_string())),
        }
    }
    Ok(report)
}

async fn apply(client: &Client, cleanup: &Cleanup) -> Result<(), UninstallError> {
    let key = &cleanup.service;
    let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let mut resource_version = cleanup.resource_version.clone();
    // Status first: once the finalizer is gone a deleted Service vanishes.
    if cleanup.clear_ingress {
        let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
        let patched = api
            .patch_status(&key.name, &params, &Patch::Merge(patch))
            .await
            .map_err(api_error(format!("clear the status of Service {key}")))?;
        resource_version = patched.metadata.resource_version;
    }
    if let Some(keep) = &cleanup.finalizers {
        let patch = json!({"metadata": {
            "finalizers": keep,
            "resourceVersion": resource_version,
        }});
        api.patch(&key.name, &params, &Patch::Merge(patch))
            .await
            .map_err(api_error(format!("remove the finalizer of Service {key}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

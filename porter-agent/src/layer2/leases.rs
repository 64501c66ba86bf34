//! The lease store an agent runs with, chosen by its source: files for
//! `dir:`, `coordination.k8s.io` Leases for `kube`. (Apart from both
//! stores, so that neither depends on the other.)
use std::{net::IpAddr, time::Duration};

use super::{
    kube_lease::KubeLeases,
    lease::{FileLeases, LeaseError, LeaseStore, LeaseView},
};

/// The store an agent runs with: files for the dir source, Leases for kube.
pub enum Leases {
    File(FileLeases),
    Kube(Box<KubeLeases>),
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

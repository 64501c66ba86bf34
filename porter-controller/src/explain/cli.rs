//! `porter-controller explain`: reads the cluster once, from the same
//! source the controller reads (`--source kube` or `dir:PATH`), with the
//! agents' Layer 2 leases, and prints [`super::explain`]'s answer.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use porter_api::ObjectKey;
use porter_api::health::Health;
use porter_api::layer2::{LEASE_DIR, holders, read_lease_dir, wall_clock};
use porter_api::source::{Snapshot, SourceArg, dir, kube as kube_source, layer2};

use super::{Standing, explain};

/// The arguments of `porter-controller explain` (its help is the
/// subcommand's, in main.rs).
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The Service, as `namespace/name` (or `name` in `default`).
    #[arg(value_parser = parse_service)]
    pub service: ObjectKey,
}

fn parse_service(s: &str) -> Result<ObjectKey, String> {
    let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!("`{s}`: give the Service as namespace/name"));
    }
    Ok(ObjectKey::new(namespace, name))
}

/// Prints the explanation; an error when the Service does not exist.
pub async fn run(args: ExplainArgs, source: &SourceArg, layer2_namespace: &str) -> Result<()> {
    let snap = read(source, layer2_namespace).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let explanation = explain(&snap, &args.service, &now);
    print!("{explanation}");
    if explanation.standing == Standing::NotFound {
        bail!("no Service {}", args.service);
    }
    Ok(())
}

async fn read(source: &SourceArg, layer2_namespace: &str) -> Result<Snapshot> {
    match source {
        SourceArg::Dir(path) => read_dir(path),
        SourceArg::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the API server: set KUBECONFIG or run in a pod")?;
            let health = Health::starting();
            // Every watch lists before it returns: the snapshot is complete.
            let watch = kube_source::Watch {
                secret_namespaces: Vec::new(),
                health: health.clone(),
            };
            let (snapshots, _stores) = kube_source::start_watching(client.clone(), &watch).await;
            let holders = layer2::watch_kube(client, layer2_namespace, &health).await;
            let snap = snapshots.borrow().as_ref().clone();
            Ok(Snapshot {
                layer2_holders: holders.borrow().clone(),
                ..snap
            })
        }
    }
}

fn read_dir(path: &Path) -> Result<Snapshot> {
    let (snap, problems) =
        dir::load(path).with_context(|| format!("cannot read manifests in {}", path.display()))?;
    for problem in problems {
        eprintln!(
            "manifest skipped: {}: {}",
            problem.file.display(),
            problem.problem
        );
    }
    // No lease directory: no agent runs Layer 2, so nobody answers.
    let leases = read_lease_dir(&path.join(LEASE_DIR)).unwrap_or_default();
    Ok(Snapshot {
        layer2_holders: Arc::new(holders(&leases.leases, wall_clock())),
        ..snap
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_namespace_slash_name() {
        assert_eq!(parse_service("shop/web"), Ok(ObjectKey::new("shop", "web")));
        assert_eq!(parse_service("web"), Ok(ObjectKey::new("default", "web")));
        for bad in ["/web", "shop/", "a/b/c", ""] {
            assert!(parse_service(bad).is_err(), "{bad:?} accepted");
        }
    }
}

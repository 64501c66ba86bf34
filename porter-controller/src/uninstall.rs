//! `porter-controller uninstall`: the command line around
//! [`porter_api::uninstall`]. Run it after scaling the controller to zero
//! and before deleting Porter (docs/install.md, Uninstall).

use anyhow::{Context, Result, bail};

/// Removes Porter's finalizer from every Service (and the addresses it set
/// in the status of the Services it served), so that no Service hangs in
/// Terminating once the controller is gone. Uses KUBECONFIG or the
/// in-cluster config.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// Namespace of the controller's leader-election Lease.
    #[arg(long, default_value = "porter-system", env = "POD_NAMESPACE")]
    pub lease_namespace: String,
    /// The leader-election Lease: while a controller holds it, uninstall
    /// refuses to run (the controller would put the finalizers back).
    #[arg(long, default_value = "porter-controller")]
    pub lease_name: String,
    /// Run even while a controller holds the Lease.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: UninstallArgs) -> Result<()> {
    use porter_api::uninstall::{check_no_leader, remove_finalizers};
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the API server: set KUBECONFIG or run in a pod")?;
    if !args.force {
        let now = k8s_openapi::jiff::Timestamp::now();
        check_no_leader(&client, &args.lease_namespace, &args.lease_name, now).await?;
    }
    let report = remove_finalizers(&client).await?;
    for done in &report.done {
        let mut what = Vec::new();
        if done.finalizers.is_some() {
            what.push("finalizer removed");
        }
        if done.clear_ingress {
            what.push("addresses cleared from status");
        }
        println!("Service {}: {}", done.service, what.join(", "));
    }
    for (service, error) in &report.failed {
        eprintln!("Service {service}: {error}");
    }
    println!(
        "{} Service(s) cleaned up, {} failed",
        report.done.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        bail!("some Services still carry Porter's finalizer; run uninstall again");
    }
    Ok(())
}

//! `cargo xtask gen-crds`: renders the CRDs from porter-api's Rust types into
//! deploy/crds/, where porter-api's `crds_fresh` test checks they stay current.
use std::path::Path;

use anyhow::{Context, Result};

pub fn run() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, yaml) in porter_api::crd::crd_manifests()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

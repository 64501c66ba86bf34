//! `cargo xtask gen-crds`: renders the CRDs from porter-api's Rust types into
//! deploy/crds/, where porter-api's `crds_fresh` test checks they stay current,
//! and into the CRD block of deploy/porter.yaml (checked by `deploy_manifests`).
use std::path::Path;

use anyhow::{Context, Result, bail};

const BEGIN: &str = "# --- BEGIN CRDs: written by `cargo xtask gen-crds` from deploy/crds/ ---\n";
const END: &str = "# --- END CRDs ---\n";

pub fn run() -> Result<()> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = deploy.join("crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let manifests = porter_api::crd::crd_manifests()?;
    for (file, yaml) in &manifests {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    let bundle = deploy.join("porter.yaml");
    let text = std::fs::read_to_string(&bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?;
    let crds: Vec<&str> = manifests.iter().map(|(_, yaml)| yaml.as_str()).collect();
    std::fs::write(&bundle, replace_block(&text, &crds.join("---\n"))?)
        .with_context(|| format!("cannot write {}", bundle.display()))?;
    println!("{}", bundle.display());
    Ok(())
}

/// `text` with everything between the BEGIN and END markers replaced by `crds`.
fn replace_block(text: &str, crds: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!(
            "deploy/porter.yaml lacks the CRD markers `{}` and `{}`",
            BEGIN.trim(),
            END.trim()
        );
    };
    if end < begin {
        bail!("deploy/porter.yaml: the END CRDs marker comes before BEGIN");
    }
    let mut crds = crds.to_owned();
    if !crds.ends_with('\n') {
        crds.push('\n');
    }
    Ok(format!("{}{BEGIN}{crds}{}", &text[..begin], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_block_between_the_markers_changes() {
        let text = format!("head\n---\n{BEGIN}old\n{END}---\ntail\n");
        let out = replace_block(&text, "new").expect("markers present");
        assert_eq!(out, format!("head\n---\n{BEGIN}new\n{END}---\ntail\n"));
        assert!(replace_block("no markers", "x").is_err());
    }
}

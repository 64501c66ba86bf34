//! The CRD YAML under deploy/crds/ is generated from the Rust types; a change
//! to the types without `cargo xtask gen-crds` would ship CRDs that reject or
//! prune the new fields.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let manifests = porter_api::crd::crd_manifests().expect("CRDs render");
    let mut stale = Vec::new();
    for (file, yaml) in &manifests {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == *yaml => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{} unreadable: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "CRDs are stale, run `cargo xtask gen-crds`: {stale:?}"
    );
}

#[test]
fn eip_crd_serves_v1alpha1_and_stores_v1alpha2_with_printer_columns() {
    let crds = porter_api::crd::crds().expect("CRDs merge");
    let (_, eip) = crds
        .iter()
        .find(|(f, _)| *f == "eip.yaml")
        .expect("eip CRD present");
    assert_eq!(eip.spec.scope, "Cluster");
    assert_eq!(eip.spec.names.kind, "Eip");
    let versions: Vec<_> = eip
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert!(
        versions.contains(&("v1alpha1", true, false)),
        "{versions:?}"
    );
    assert!(versions.contains(&("v1alpha2", true, true)), "{versions:?}");
    let v2 = eip
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha2")
        .expect("v1alpha2");
    let columns: Vec<_> = v2
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "CIDR",
            "Usage",
            "Total",
            "Disabled",
            "Ready",
            "Announcers",
            "Age"
        ]
    );
    // One entry per address, merged by key under server-side apply.
    let schema = serde_json::to_value(&v2.schema).expect("schema");
    let announcers =
        &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["layer2Announcers"];
    assert_eq!(announcers["x-kubernetes-list-type"], "map", "{announcers}");
    assert_eq!(
        announcers["x-kubernetes-list-map-keys"],
        serde_json::json!(["address"])
    );
    assert!(
        v2.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
}

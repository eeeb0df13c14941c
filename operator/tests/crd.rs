//! The committed CRD (`crds/cloudifydataset.yaml`) must be what the code generates: it is what
//! clusters install, and the operator reads objects through the Rust types.

use cloudify_operator::crd::{REGENERATE, crd_yaml};

#[test]
fn committed_crd_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/cloudifydataset.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let generated = crd_yaml().expect("CRD serializes");
    assert!(
        committed == generated,
        "{} is out of date with crds/src/k8s.rs; regenerate it from the repository root with\n  {REGENERATE}",
        path.display()
    );
}

#[test]
fn crd_has_the_agreed_shape() {
    let crd: serde_yaml::Value = serde_yaml::from_str(&crd_yaml().expect("CRD")).expect("valid YAML");
    assert_eq!(
        crd["metadata"]["name"].as_str(),
        Some("cloudifydatasets.cloudify.io")
    );
    assert_eq!(crd["spec"]["scope"].as_str(), Some("Namespaced"));
    assert_eq!(crd["spec"]["names"]["shortNames"][0].as_str(), Some("cds"));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"].as_str(), Some("v1alpha1"));
    assert!(version["subresources"]["status"].is_mapping());
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "URL", "Replicas", "Compute", "Age"]);
    let text = crd_yaml().expect("CRD");
    assert!(text.contains("rule: self.min <= self.max"), "replicas CEL rule");
    // Kubernetes rejects `additionalProperties: false` in CRD schemas.
    assert!(!text.contains("additionalProperties: false"));
}

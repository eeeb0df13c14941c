//! The manifests in `examples/` are accepted by `cloudify-operator render` (the real binary),
//! so the documentation cannot drift from the API.

use std::path::Path;
use std::process::Command;

fn render(file: &str, extra: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let out = Command::new(env!("CARGO_BIN_EXE_cloudify-operator"))
        .arg("render")
        .arg("-f")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run cloudify-operator");
    assert!(
        out.status.success(),
        "render -f {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn cmip6_s3_example_renders() {
    let text = render("cmip6-s3.yaml", &[]);
    for kind in [
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    ] {
        assert!(
            text.contains(&format!("\nkind: {kind}\n")),
            "{kind} missing:\n{text}"
        );
    }
    assert!(text.contains("status.url https://data.example.org/datasets/tas_day_ACCESS-CM2_ssp585/zarr"));
    // The output is valid YAML, one document per object (plus the leading comment).
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML document"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 7); // two Services: <name> and <name>-status
}

#[test]
fn pvc_example_renders() {
    let text = render("pvc-dataset.yaml", &["--public-url", "https://data.example.org"]);
    assert!(text.contains("claimName: cmip6-archive"), "{text}");
    assert!(
        text.contains("status.url https://data.example.org/datasets/pr_Amon_MPI-ESM1-2-LR_historical/zarr")
    );
    assert!(!text.contains("kind: HorizontalPodAutoscaler"));
}

#[test]
fn compute_example_renders_the_worker_pool() {
    let text = render("compute-pool.yaml", &[]);
    for (kind, name) in [
        ("Service", "tas-amon-compute"),
        ("Deployment", "tas-amon-compute"),
        ("HorizontalPodAutoscaler", "tas-amon-compute"),
        ("PodDisruptionBudget", "tas-amon"),
    ] {
        assert!(
            text.split("---\n")
                .any(|doc| doc.contains(&format!("\nkind: {kind}\n"))
                    && doc.contains(&format!("\n  name: {name}\n"))),
            "{kind} {name} missing:\n{text}"
        );
    }
    assert!(
        text.contains("- http://tas-amon-compute.climate.svc:9000\n"),
        "{text}"
    );
    assert!(text.contains("- worker\n"), "{text}");
    // one worker at the minimum: no PodDisruptionBudget for the pool
    assert!(
        !text
            .split("---\n")
            .any(|doc| doc.contains("\nkind: PodDisruptionBudget\n") && doc.contains("tas-amon-compute")),
        "{text}"
    );
}

#[test]
fn crd_command_prints_the_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudify-operator"))
        .arg("crd")
        .output()
        .expect("run cloudify-operator");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: cloudifydatasets.cloudify.io"));
}

#[test]
fn invalid_file_fails_with_the_field_named() {
    let dir = std::env::temp_dir().join(format!("cloudify-operator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: cloudify.io/v1alpha1\nkind: CloudifyDataset\nmetadata: {name: Bad_Name}\n\
         spec: {dataset: {name: x, sources: [y]}}\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_cloudify-operator"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metadata.name"), "{stderr}");
}

//! Invalid specs are rejected with the field named: by the operator's validation (what
//! `render` and the reconciler run) and by the CRD's CEL rules (what the API server runs),
//! the latter evaluated client-side with kube's CEL support.

use cloudify_crds::k8s::CloudifyDataset;
use cloudify_operator::build::{BuildError, Settings};
use cloudify_operator::render::{self, RenderError};
use cloudify_operator::validate::{InvalidSpec, validate};

const VALID: &str = "\
apiVersion: cloudify.io/v1alpha1
kind: CloudifyDataset
metadata: {name: tas, namespace: climate}
spec:
  dataset: {name: tas, sources: [/data/tas.nc]}
";

fn cr(extra_spec: &str, name: &str) -> CloudifyDataset {
    let text = VALID.replace("name: tas, namespace", &format!("name: {name}, namespace"));
    let text = format!("{text}{extra_spec}");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn invalid(cr: &CloudifyDataset) -> InvalidSpec {
    validate(cr).expect_err("must be rejected")
}

/// Client-side evaluation of the CRD's CEL rules; returns the error text.
fn cel_error(cr: &CloudifyDataset) -> Option<String> {
    kube::core::cel::validate_cel(cr).err().map(|e| e.to_string())
}

#[test]
fn valid_spec_passes_both() {
    let cr = cr("", "tas");
    assert_eq!(validate(&cr), Ok(()));
    assert_eq!(cel_error(&cr), None);
}

#[test]
fn min_greater_than_max() {
    let cr = cr(
        "  replicas: {min: 5, max: 2}\n  resources: {requests: {cpu: 500m}}\n",
        "tas",
    );
    let err = invalid(&cr);
    assert!(err.names("spec.replicas.min"), "{err}");
    assert!(
        err.to_string()
            .contains("spec.replicas.min: 5 must not be greater"),
        "{err}"
    );
    let cel = cel_error(&cr).expect("CEL rejects min > max");
    assert!(
        cel.contains("replicas.min must not be greater than replicas.max"),
        "{cel}"
    );
}

#[test]
fn bad_names() {
    for name in ["Tas", "tas_daily", "1tas", "tas-"] {
        let cr = cr("", name);
        let err = invalid(&cr);
        assert!(err.names("metadata.name"), "{name}: {err}");
        let cel = cel_error(&cr).unwrap_or_else(|| panic!("CEL accepted metadata.name {name}"));
        assert!(cel.contains("metadata.name must be a DNS-1035 label"), "{cel}");
    }
    let bad_dataset = cr("", "tas");
    let mut bad_dataset = bad_dataset;
    bad_dataset.spec.dataset.name = "a/b".into();
    let err = invalid(&bad_dataset);
    assert!(err.names("spec.dataset.name"), "{err}");
}

#[test]
fn autoscaling_needs_a_cpu_request() {
    let cr = cr("  replicas: {min: 1, max: 4}\n", "tas");
    let err = invalid(&cr);
    assert!(err.names("spec.resources.requests.cpu"), "{err}");
    let cel = cel_error(&cr).expect("CEL rejects");
    assert!(cel.contains("resources.requests.cpu is required"), "{cel}");
}

#[test]
fn tls_needs_a_host() {
    let cr = cr("  ingress: {tlsSecret: cert}\n", "tas");
    assert!(invalid(&cr).names("spec.ingress.tlsSecret"));
    let cel = cel_error(&cr).expect("CEL rejects");
    assert!(cel.contains("ingress.tlsSecret needs ingress.host"), "{cel}");
}

#[test]
fn private_access_needs_a_token_secret() {
    let cr1 = cr("  access: {public: false}\n", "tas");
    let err = invalid(&cr1);
    assert!(err.names("spec.access.tokenSecret"), "{err}");
    assert!(
        cel_error(&cr1)
            .expect("CEL rejects")
            .contains("access.tokenSecret is required")
    );
    let ok = cr("  access: {public: false, tokenSecret: {name: readers}}\n", "tas");
    assert_eq!(validate(&ok), Ok(()));
    assert_eq!(cel_error(&ok), None);
    let bad = cr(
        "  access: {public: false, tokenSecret: {name: Readers_}}\n",
        "tas",
    );
    assert!(invalid(&bad).names("spec.access.tokenSecret.name"));
}

#[test]
fn dataset_access_is_set_through_spec_access() {
    let text = VALID.replace(
        "sources: [/data/tas.nc]}",
        "sources: [/data/tas.nc], access: {public: false, tokenFile: /etc/passwd}}",
    );
    let cr: CloudifyDataset = serde_yaml::from_str(&text).unwrap();
    assert!(invalid(&cr).names("spec.dataset.access"));
}

#[test]
fn every_error_is_reported_at_once() {
    let mut cr = cr(
        "  replicas: {min: 0, max: 1}\n  publicUrl: ftp://x\n  dataVolumes: [{claimName: Data, mountPath: /etc/cloudify}]\n",
        "tas",
    );
    cr.spec.ingress.host = Some("https://x.org".into());
    let err = invalid(&cr);
    for field in [
        "spec.replicas.min",
        "spec.publicUrl",
        "spec.dataVolumes[0].claimName",
        "spec.dataVolumes[0].mountPath",
        "spec.ingress.host",
    ] {
        assert!(err.names(field), "{field} missing in: {err}");
    }
}

#[test]
fn render_names_the_field_and_the_document() {
    let text = format!("{VALID}  replicas: {{min: 3, max: 2}}\n  resources: {{requests: {{cpu: 1}}}}\n");
    let err = render::render(&text, None, &Settings::default()).expect_err("invalid");
    assert!(
        matches!(
            err,
            RenderError::Build {
                index: 1,
                source: BuildError::Invalid(_)
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("spec.replicas.min"), "{err}");

    let text = format!("{VALID}  ingress: {{hostname: x.org}}\n");
    let err = render::render(&text, None, &Settings::default()).expect_err("unknown field");
    assert!(err.to_string().contains("hostname"), "{err}");

    let err = render::render("apiVersion: v1\nkind: ConfigMap\n", None, &Settings::default())
        .expect_err("not a dataset");
    assert!(err.to_string().contains("kind 'ConfigMap'"), "{err}");
}

#[test]
fn dataset_name_may_be_left_out() {
    // Defaults to metadata.name, for validation, render and the CEL rules alike.
    let text = VALID.replace("dataset: {name: tas, sources", "dataset: {sources");
    let cr: CloudifyDataset = serde_yaml::from_str(&text).expect("parses without the name");
    assert_eq!(cr.spec.dataset.name, "");
    assert_eq!(validate(&cr), Ok(()));
    assert_eq!(cel_error(&cr), None);
    let (_, parsed) = render::parse(&text).expect("parse").remove(0);
    assert_eq!(parsed.spec.dataset.name, "tas", "render resolves the default");
    let out = render::render(&text, None, &Settings::default()).expect("renders");
    assert!(
        out.contains("status.url http://tas.climate.svc:9000/datasets/tas/zarr"),
        "{out}"
    );
    assert!(
        out.contains("    - name: tas\n"),
        "the ConfigMap holds the name:\n{out}"
    );

    // A name that is given is still checked, and wins over metadata.name.
    let mut other = cr.clone();
    other.spec.dataset.name = "tas_day".into();
    assert_eq!(validate(&other), Ok(()));
    other.spec.dataset.name = "a b".into();
    assert!(invalid(&other).names("spec.dataset.name"));
    // Without metadata.name there is nothing to default to: both are named.
    let mut nameless = cr;
    nameless.metadata.name = None;
    let err = invalid(&nameless);
    assert!(
        err.names("metadata.name") && err.names("spec.dataset.name"),
        "{err}"
    );
}

#[test]
fn valid_compute_passes_both() {
    for spec in [
        "  compute: {}\n",
        "  compute: {replicas: {min: 2, max: 2}}\n",
        "  compute: {replicas: {min: 1, max: 4}, targetCpuUtilization: 100, resources: {requests: {cpu: 500m}}}\n",
        // off: nothing is built from it, so it is not held to the rules
        "  compute: {enabled: false, replicas: {min: 1, max: 4}}\n",
    ] {
        let cr = cr(spec, "tas");
        assert_eq!(validate(&cr), Ok(()), "{spec}");
        assert_eq!(cel_error(&cr), None, "{spec}");
    }
}

#[test]
fn compute_min_greater_than_max() {
    let cr = cr(
        "  compute: {replicas: {min: 4, max: 2}, resources: {requests: {cpu: 1}}}\n",
        "tas",
    );
    let err = invalid(&cr);
    assert!(
        err.to_string()
            .contains("spec.compute.replicas.min: 4 must not be greater than spec.compute.replicas.max (2)"),
        "{err}"
    );
    assert!(
        !err.names("spec.replicas.min"),
        "the server's range is fine: {err}"
    );
    let cel = cel_error(&cr).expect("CEL rejects min > max");
    assert!(
        cel.contains("replicas.min must not be greater than replicas.max"),
        "{cel}"
    );
}

#[test]
fn compute_needs_at_least_one_replica_when_enabled() {
    let err = invalid(&cr(
        "  compute: {replicas: {min: 0, max: 2}, resources: {requests: {cpu: 1}}}\n",
        "tas",
    ));
    assert!(err.names("spec.compute.replicas.min"), "{err}");
    assert!(err.to_string().contains("enabled: false"), "{err}");
    let err = invalid(&cr("  compute: {replicas: {min: 0, max: 0}}\n", "tas"));
    assert!(
        err.names("spec.compute.replicas.min") && err.names("spec.compute.replicas.max"),
        "{err}"
    );
}

#[test]
fn compute_utilization_is_a_percentage() {
    for t in [0, 101, -5, 1000] {
        let err = invalid(&cr(&format!("  compute: {{targetCpuUtilization: {t}}}\n"), "tas"));
        assert!(err.names("spec.compute.targetCpuUtilization"), "{t}: {err}");
        assert!(err.to_string().contains("between 1 and 100"), "{err}");
    }
}

#[test]
fn compute_autoscaling_needs_a_cpu_request() {
    let cr = cr("  compute: {replicas: {min: 1, max: 3}}\n", "tas");
    let err = invalid(&cr);
    assert!(err.names("spec.compute.resources.requests.cpu"), "{err}");
    // the server's own rule is not the one that fired
    assert!(!err.names("spec.resources.requests.cpu"), "{err}");
    let cel = cel_error(&cr).expect("CEL rejects");
    assert!(
        cel.contains("compute.resources.requests.cpu is required"),
        "{cel}"
    );
}

#[test]
fn compute_name_must_still_be_a_service_name() {
    // 55 characters + "-compute" = 63: fits; 56 does not
    let ok = "a".repeat(55);
    assert_eq!(validate(&cr("  compute: {}\n", &ok)), Ok(()));
    let long = "a".repeat(56);
    assert_eq!(
        validate(&cr("", &long)),
        Ok(()),
        "without compute the name is fine"
    );
    let err = invalid(&cr("  compute: {}\n", &long));
    assert!(err.names("metadata.name"), "{err}");
    assert!(err.to_string().contains("-compute"), "{err}");
}

#[test]
fn invalid_compute_is_a_build_error_naming_the_field() {
    let text = format!("{VALID}  compute: {{replicas: {{min: 3, max: 1}}}}\n");
    let err = render::render(&text, None, &Settings::default()).expect_err("invalid");
    assert!(err.to_string().contains("spec.compute.replicas.min"), "{err}");
}

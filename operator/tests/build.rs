//! Build functions against YAML fixtures: `fixtures/<case>/cr.yaml` in, `expected.yaml` (the
//! exact `render` output) out, plus targeted checks of what each case is about.
//!
//! After an intended change, regenerate with
//! `UPDATE_FIXTURES=1 cargo test -p cloudify-operator --test build` and review the diff.

use std::path::{Path, PathBuf};

use cloudify_crds::k8s::CloudifyDataset;
use cloudify_operator::build::{self, Desired, Settings};
use cloudify_operator::render;

fn settings() -> Settings {
    Settings {
        image: "registry.example.org/cloudify:test".into(),
        public_url: None,
        otel_env: Vec::new(),
    }
}

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders the case and compares it with `expected.yaml` (or rewrites it on request).
fn check_fixture(case: &str) {
    let dir = fixture_dir(case);
    let rendered = render::render(&read(&dir.join("cr.yaml")), None, &settings())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let expected_path = dir.join("expected.yaml");
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, mask_keys(&rendered)).expect("write fixture");
        return;
    }
    let expected = read(&expected_path);
    let rendered = mask_keys(&rendered);
    assert!(
        rendered == expected,
        "{case}: rendered objects differ from {}.\n\
         If the change is intended: UPDATE_FIXTURES=1 cargo test -p cloudify-operator --test build\n\
         --- rendered ---\n{rendered}",
        expected_path.display()
    );
}

/// The internal Secret's values are random on every render: fixtures hold `<random>`.
fn mask_keys(rendered: &str) -> String {
    rendered
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((k @ ("  compute-secret" | "  signing-key"), _)) => format!("{k}: <random>\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

fn desired(case: &str) -> (CloudifyDataset, Desired) {
    let text = read(&fixture_dir(case).join("cr.yaml"));
    let (_, mut cr) = render::parse(&text)
        .expect("parses")
        .into_iter()
        .next()
        .expect("one CR");
    cr.metadata.namespace.get_or_insert_with(|| "default".into());
    let desired = build::build(&cr, &settings()).expect("builds");
    (cr, desired)
}

fn args(d: &Desired) -> Vec<String> {
    let pod = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    pod.containers[0].args.clone().expect("args")
}

#[test]
fn fixtures_match() {
    for case in [
        "minimal",
        "autoscaled-no-ingress",
        "tls-annotations",
        "pvc-public-url",
        "default-name",
        "private",
        "compute-autoscaled",
        "compute-fixed",
    ] {
        check_fixture(case);
    }
}

#[test]
fn private_dataset_mounts_its_token_secret_as_the_token_file() {
    let (_, d) = desired("private");
    let config: cloudify_crds::ServeConfig =
        serde_yaml::from_str(&d.config_map.data.as_ref().expect("data")["cloudify.yaml"]).expect("config");
    let access = &config.datasets[0].access;
    assert!(!access.public);
    assert_eq!(access.token_file.as_deref(), Some("/etc/cloudify-access/sha256"));
    config.validate().expect("the server accepts the config");
    let pod = d
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "access")
        .expect("volume");
    let secret = vol.secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("embargoed-readers"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "sha256");
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "access")
        .expect("mount");
    assert_eq!(mount.mount_path, "/etc/cloudify-access");
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount would never see Secret updates"
    );
    assert_eq!(mount.read_only, Some(true));
    // a public dataset has neither
    let (_, d) = desired("minimal");
    let pod = d
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert!(pod.volumes.as_ref().unwrap().iter().all(|v| v.name != "access"));
}

#[test]
fn every_object_is_labelled_and_owned() {
    let (cr, d) = desired("autoscaled-no-ingress");
    let uid = cr.metadata.uid.clone().expect("fixture has a uid");
    let metas = [
        &d.config_map.metadata,
        &d.deployment.metadata,
        &d.service.metadata,
        &d.hpa.as_ref().expect("hpa").metadata,
        &d.pdb.as_ref().expect("pdb").metadata,
    ];
    for meta in metas {
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "cloudify");
        assert_eq!(labels["app.kubernetes.io/instance"], "pr-daily");
        assert_eq!(labels["app.kubernetes.io/component"], "server");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "cloudify-operator");
        let owners = meta.owner_references.as_ref().expect("owner");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid);
        assert_eq!(owners[0].kind, "CloudifyDataset");
        assert_eq!(owners[0].api_version, "cloudify.io/v1alpha1");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("climate"));
    }
}

#[test]
fn hpa_on_means_no_deployment_replicas() {
    let (_, d) = desired("autoscaled-no-ingress");
    assert_eq!(d.deployment.spec.as_ref().expect("spec").replicas, None);
    let hpa = d.hpa.as_ref().and_then(|h| h.spec.as_ref()).expect("hpa");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 8));
    assert_eq!(hpa.scale_target_ref.name, "pr-daily");
    assert!(d.ingress.is_none());
    assert!(args(&d).windows(2).any(|w| w == ["--stac-collection", "cmip6"]));
    // No ingress, no public URL anywhere: in-cluster address, and no --public-url.
    assert_eq!(d.url, "http://pr-daily.climate.svc:9000/datasets/pr_day/zarr");
    assert!(!args(&d).contains(&"--public-url".to_string()));
}

#[test]
fn hpa_off_means_fixed_replicas() {
    let (_, d) = desired("minimal");
    assert_eq!(d.deployment.spec.as_ref().expect("spec").replicas, Some(1));
    assert!(d.hpa.is_none());
    assert!(d.pdb.is_none(), "one replica: no PDB");
    let (_, d) = desired("tls-annotations");
    assert_eq!(d.deployment.spec.as_ref().expect("spec").replicas, Some(3));
    assert!(d.hpa.is_none());
    assert!(d.pdb.is_some());
}

#[test]
fn default_ingress_routes_the_dataset_prefix() {
    let (_, d) = desired("minimal");
    let spec = d.ingress.as_ref().and_then(|i| i.spec.as_ref()).expect("ingress");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.as_ref().expect("rules")[0];
    assert_eq!(rule.host, None);
    let path = &rule.http.as_ref().expect("http").paths[0];
    assert_eq!(path.path.as_deref(), Some("/datasets/tas"));
    assert_eq!(path.path_type, "Prefix");
    assert_eq!(path.backend.service.as_ref().expect("service").name, "tas");
    assert!(spec.tls.is_none());
}

#[test]
fn tls_host_and_annotations() {
    let (_, d) = desired("tls-annotations");
    let ingress = d.ingress.as_ref().expect("ingress");
    let annotations = ingress.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    let spec = ingress.spec.as_ref().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx-public"));
    let tls = &spec.tls.as_ref().expect("tls")[0];
    assert_eq!(tls.secret_name.as_deref(), Some("data-example-org-tls"));
    assert_eq!(tls.hosts, Some(vec!["data.example.org".to_string()]));
    assert_eq!(d.url, "https://data.example.org/datasets/tos.monthly/zarr");
    assert!(
        args(&d)
            .windows(2)
            .any(|w| w == ["--public-url", "https://data.example.org"])
    );
}

#[test]
fn public_url_wins_and_missing_uid_means_no_owner() {
    let (_, d) = desired("pvc-public-url");
    assert_eq!(d.url, "https://climate.example.org/datasets/era5-t2m/zarr");
    assert!(d.config_map.metadata.owner_references.is_none());
    let pod = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let claim = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .expect("pvc volume");
    assert_eq!(claim.claim_name, "era5-archive");
    assert_eq!(claim.read_only, Some(true), "data volumes are always read-only");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.org/cloudify:1.2.3")
    );
}

#[test]
fn operator_public_url_is_the_last_resort() {
    let (cr, _) = desired("minimal");
    let settings = Settings {
        public_url: Some("https://data.example.org/".into()),
        ..settings()
    };
    assert_eq!(
        build::dataset_url(&cr, &settings),
        "https://data.example.org/datasets/tas/zarr"
    );
}

#[test]
fn changed_config_changes_the_pod_template() {
    let (mut cr, d1) = desired("minimal");
    cr.spec.dataset.concat_dim = Some("ensemble".into());
    let d2 = build::build(&cr, &settings()).expect("builds");
    let hash = |d: &Desired| {
        d.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
    };
    assert_ne!(hash(&d1), hash(&d2));
    let config = &d2.config_map.data.as_ref().expect("data")["cloudify.yaml"];
    let parsed = cloudify_crds::ServeConfig::from_yaml(config).expect("the server can read it");
    assert_eq!(parsed.datasets, vec![cr.spec.dataset.clone()]);
}

#[test]
fn dataset_name_defaults_to_the_cr_name() {
    // The fixture has no spec.dataset.name: every object, the config file and the URL use
    // metadata.name, and a directly built (unresolved) CR gives the same objects.
    let (_, d) = desired("default-name");
    assert_eq!(d.url, "http://tas-daily.climate.svc:9000/datasets/tas-daily/zarr");
    let config = &d.config_map.data.as_ref().expect("data")["cloudify.yaml"];
    let parsed = cloudify_crds::ServeConfig::from_yaml(config).expect("the server can read it");
    assert_eq!(parsed.datasets[0].name, "tas-daily");
    let spec = d.ingress.as_ref().and_then(|i| i.spec.as_ref()).expect("ingress");
    let path = &spec.rules.as_ref().expect("rules")[0]
        .http
        .as_ref()
        .expect("http")
        .paths[0];
    assert_eq!(path.path.as_deref(), Some("/datasets/tas-daily"));
    let mut raw: CloudifyDataset =
        serde_yaml::from_str(&read(&fixture_dir("default-name").join("cr.yaml"))).expect("CR");
    assert_eq!(raw.spec.dataset.name, "");
    assert_eq!(
        build::dataset_url(&raw, &settings()),
        "http://tas-daily.climate.svc:9000/datasets/tas-daily/zarr"
    );
    raw.metadata.namespace.get_or_insert_with(|| "default".into());
    assert_eq!(build::build(&raw, &settings()).expect("builds"), d);
}

fn compute(d: &Desired) -> &build::Compute {
    d.compute.as_ref().expect("compute enabled in this fixture")
}

fn compute_pod(d: &Desired) -> &k8s_openapi::api::core::v1::PodSpec {
    compute(d)
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("worker pod spec")
}

#[test]
fn compute_objects_are_named_labelled_and_owned() {
    let (cr, d) = desired("compute-autoscaled");
    let uid = cr.metadata.uid.clone().expect("fixture has a uid");
    let c = compute(&d);
    let metas = [
        &c.deployment.metadata,
        &c.service.metadata,
        &c.hpa.as_ref().expect("compute hpa").metadata,
    ];
    for meta in metas {
        assert_eq!(meta.name.as_deref(), Some("tas-mon-compute"));
        assert_eq!(meta.namespace.as_deref(), Some("climate"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/component"], "compute");
        assert_eq!(labels["app.kubernetes.io/instance"], "tas-mon");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "cloudify-operator");
        let owners = meta.owner_references.as_ref().expect("owner");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid);
        assert_eq!(owners[0].controller, Some(true));
    }
    // the selectors keep servers and workers apart
    let worker_selector = c
        .service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert_eq!(worker_selector, build::compute_selector_labels("tas-mon"));
    let server_selector = d
        .service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert_eq!(server_selector["app.kubernetes.io/component"], "server");
    let template = &c.deployment.spec.as_ref().expect("spec").template;
    let pod_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    assert_eq!(pod_labels, build::compute_labels("tas-mon"));
    assert_eq!(
        c.deployment.spec.as_ref().expect("spec").selector.match_labels,
        Some(build::compute_selector_labels("tas-mon"))
    );
    let port = &c
        .service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .expect("ports")[0];
    assert_eq!(port.port, build::PORT);
}

#[test]
fn worker_runs_cloudify_worker_with_the_servers_config_and_volumes() {
    let (_, d) = desired("compute-autoscaled");
    let pod = compute_pod(&d);
    let worker = &pod.containers[0];
    assert_eq!(worker.name, "worker");
    assert_eq!(worker.command, Some(vec!["cloudify".to_string()]));
    let args = worker.args.clone().expect("args");
    assert_eq!(
        args,
        [
            "worker",
            "--config",
            "/etc/cloudify/cloudify.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--secret-file",
            "/etc/cloudify-internal/compute-secret"
        ]
    );
    assert_eq!(
        worker.image.as_deref(),
        Some("registry.example.org/cloudify:test")
    );
    // compute resources, not the server's
    let requests = worker
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(requests["cpu"].0, "1");
    // same volumes, mounts and hardening as the server pod
    let server = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("server pod");
    assert_eq!(pod.volumes, server.volumes);
    assert_eq!(worker.volume_mounts, server.containers[0].volume_mounts);
    assert!(
        worker
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/data/cmip6" && m.read_only == Some(true)),
        "{:?}",
        worker.volume_mounts
    );
    assert_eq!(worker.security_context, server.containers[0].security_context);
    assert_eq!(pod.security_context, server.security_context);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(worker.readiness_probe, server.containers[0].readiness_probe);
    // a config change rolls the workers too
    let hash = |dep: &k8s_openapi::api::apps::v1::Deployment| {
        dep.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .expect("annotations")[build::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(hash(&compute(&d).deployment), hash(&d.deployment));
}

#[test]
fn server_gets_compute_url_only_when_enabled() {
    let (_, d) = desired("compute-autoscaled");
    assert!(
        args(&d)
            .windows(2)
            .any(|w| w == ["--compute", "http://tas-mon-compute.climate.svc:9000"]),
        "{:?}",
        args(&d)
    );
    let (mut cr, d) = desired("compute-fixed");
    assert!(
        args(&d)
            .windows(2)
            .any(|w| w == ["--compute", "http://pr-day-compute.climate.svc:9000"])
    );
    // turned off: no compute objects and no --compute
    cr.spec.compute.as_mut().expect("compute").enabled = false;
    let d = build::build(&cr, &settings()).expect("builds");
    assert!(d.compute.is_none());
    assert!(!args(&d).contains(&"--compute".to_string()));
    let (_, d) = desired("minimal");
    assert!(d.compute.is_none());
    assert!(!args(&d).contains(&"--compute".to_string()));
}

#[test]
fn compute_hpa_and_pdb_follow_the_compute_range() {
    let (_, d) = desired("compute-autoscaled");
    let c = compute(&d);
    assert_eq!(
        c.deployment.spec.as_ref().expect("spec").replicas,
        None,
        "the HPA owns the count"
    );
    let hpa = c.hpa.as_ref().and_then(|h| h.spec.as_ref()).expect("compute hpa");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(1), 6));
    assert_eq!(hpa.scale_target_ref.name, "tas-mon-compute");
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    let target = hpa.metrics.as_ref().expect("metrics")[0]
        .resource
        .as_ref()
        .expect("cpu");
    assert_eq!(target.target.average_utilization, Some(80));
    assert!(c.pdb.is_none(), "min 1: no compute PDB");
    // the server is fixed at one replica here: its own HPA/PDB are independent of compute
    assert!(d.hpa.is_none() && d.pdb.is_none());

    let (_, d) = desired("compute-fixed");
    let c = compute(&d);
    assert_eq!(c.deployment.spec.as_ref().expect("spec").replicas, Some(3));
    assert!(c.hpa.is_none());
    let pdb = c.pdb.as_ref().expect("min 3: a compute PDB");
    assert_eq!(pdb.metadata.name.as_deref(), Some("pr-day-compute"));
    let spec = pdb.spec.as_ref().expect("pdb spec");
    assert_eq!(
        spec.selector.as_ref().and_then(|s| s.match_labels.clone()),
        Some(build::compute_selector_labels("pr-day"))
    );
    assert!(d.hpa.is_some() && d.pdb.is_some(), "server autoscaled 2..4");
    let server_hpa = d.hpa.as_ref().and_then(|h| h.spec.as_ref()).expect("hpa");
    assert_eq!(server_hpa.scale_target_ref.name, "pr-day");
    // default utilisation
    let (mut cr, _) = desired("compute-fixed");
    let compute_spec = cr.spec.compute.as_mut().expect("compute");
    compute_spec.replicas.max = 5;
    compute_spec.resources = serde_yaml::from_str("requests: {cpu: 250m}").expect("resources");
    let d = build::build(&cr, &settings()).expect("builds");
    let hpa = compute(&d)
        .hpa
        .as_ref()
        .and_then(|h| h.spec.as_ref())
        .expect("hpa");
    let target = hpa.metrics.as_ref().expect("metrics")[0]
        .resource
        .as_ref()
        .expect("cpu");
    assert_eq!(target.target.average_utilization, Some(70));
}

#[test]
fn render_prints_compute_objects_after_their_server_counterparts() {
    let text = render::render(
        &read(&fixture_dir("compute-fixed").join("cr.yaml")),
        None,
        &settings(),
    )
    .expect("renders");
    let names: Vec<(&str, &str)> = text
        .split("---\n")
        // the first piece is the `# CloudifyDataset ...` header comment
        .filter(|doc| doc.lines().any(|l| l.starts_with("kind: ")))
        .map(|doc| {
            let kind = doc.lines().find_map(|l| l.strip_prefix("kind: ")).expect("kind");
            let name = doc
                .lines()
                .find_map(|l| l.strip_prefix("  name: "))
                .expect("name");
            (kind, name)
        })
        .collect();
    assert_eq!(
        names,
        [
            ("Secret", "pr-day-internal"),
            ("ConfigMap", "pr-day"),
            ("Service", "pr-day"),
            ("Service", "pr-day-status"),
            ("Service", "pr-day-compute"),
            ("Deployment", "pr-day"),
            ("Deployment", "pr-day-compute"),
            ("HorizontalPodAutoscaler", "pr-day"),
            ("PodDisruptionBudget", "pr-day"),
            ("PodDisruptionBudget", "pr-day-compute"),
            ("Ingress", "pr-day"),
        ]
    );
}

fn pod_of(d: &k8s_openapi::api::apps::v1::Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

/// The `internal` volume and mount of a pod: (secret name, mount path, read-only).
fn internal_mount(pod: &k8s_openapi::api::core::v1::PodSpec) -> Option<(String, String, Option<bool>)> {
    let vol = pod.volumes.as_ref()?.iter().find(|v| v.name == "internal")?;
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()?
        .iter()
        .find(|m| m.name == "internal")?;
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees Secret updates"
    );
    Some((
        vol.secret.as_ref()?.secret_name.clone()?,
        mount.mount_path.clone(),
        mount.read_only,
    ))
}

#[test]
fn compute_gets_an_owned_internal_secret_mounted_into_server_and_workers() {
    let (cr, d) = desired("compute-autoscaled");
    let secret = d
        .internal_secret
        .as_ref()
        .expect("internal secret with compute on");
    assert_eq!(secret.metadata.name.as_deref(), Some("tas-mon-internal"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("climate"));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.metadata.labels, Some(build::labels("tas-mon")));
    let owner = &secret.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(Some(&owner.uid), cr.metadata.uid.as_ref());
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CloudifyDataset", Some(true))
    );
    assert!(
        secret.data.is_none(),
        "build is pure: the data comes from with_keys"
    );

    let expected = Some((
        "tas-mon-internal".to_string(),
        "/etc/cloudify-internal".to_string(),
        Some(true),
    ));
    assert_eq!(internal_mount(pod_of(&d.deployment)), expected);
    assert_eq!(internal_mount(pod_of(&compute(&d).deployment)), expected);
    assert!(
        args(&d)
            .windows(2)
            .any(|w| w == ["--compute-secret-file", "/etc/cloudify-internal/compute-secret"]),
        "{:?}",
        args(&d)
    );
    let worker_args = pod_of(&compute(&d).deployment).containers[0]
        .args
        .clone()
        .expect("args");
    assert!(
        worker_args
            .windows(2)
            .any(|w| w == ["--secret-file", "/etc/cloudify-internal/compute-secret"]),
        "{worker_args:?}"
    );

    // keys: two random 64-hex values; existing ones are kept
    let keys = build::internal::keys(None).expect("keys");
    let d = d.with_keys(keys.clone());
    let data = d
        .internal_secret
        .as_ref()
        .and_then(|s| s.data.clone())
        .expect("data");
    assert_eq!(data, keys);
    assert_eq!(data["compute-secret"].0.len(), 64);
    let again = build::internal::keys(d.internal_secret.as_ref()).expect("keys");
    assert_eq!(again, keys, "the controller keeps what the Secret holds");

    // compute off (public dataset): no Secret, no mount, no flags
    let (mut cr, _) = desired("compute-fixed");
    cr.spec.compute.as_mut().expect("compute").enabled = false;
    let d = build::build(&cr, &settings()).expect("builds");
    assert!(d.internal_secret.is_none());
    assert!(internal_mount(pod_of(&d.deployment)).is_none());
    assert!(!args(&d).iter().any(|a| a.contains("secret")));
    let (_, d) = desired("minimal");
    assert!(d.internal_secret.is_none() && internal_mount(pod_of(&d.deployment)).is_none());
}

#[test]
fn render_fills_the_internal_secret_with_fresh_keys() {
    let cr = read(&fixture_dir("compute-fixed").join("cr.yaml"));
    let a = render::render(&cr, None, &settings()).expect("renders");
    let b = render::render(&cr, None, &settings()).expect("renders");
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("  compute-secret: ")
                    .or_else(|| l.strip_prefix("  signing-key: "))
            })
            .map(str::to_string)
            .collect()
    };
    let (va, vb) = (values(&a), values(&b));
    assert_eq!(va.len(), 2, "{a}");
    // base64 of 64 hex digits
    assert!(va.iter().all(|v| v.len() == 88), "{va:?}");
    assert!(va.iter().zip(&vb).all(|(x, y)| x != y), "random, not a constant");
}

#[test]
fn private_datasets_get_a_signing_key_only_with_consent_to_register() {
    let (mut cr, d) = desired("private");
    let config = |d: &Desired| -> cloudify_crds::ServeConfig {
        serde_yaml::from_str(&d.config_map.data.as_ref().expect("data")["cloudify.yaml"]).expect("config")
    };
    // no consent: nothing beyond the token file
    assert!(d.internal_secret.is_none());
    assert_eq!(config(&d).datasets[0].access.signed_url_key_file, None);
    assert!(!cr.spec.registers_private());

    cr.spec.access.register = true;
    let d = build::build(&cr, &settings()).expect("builds");
    assert!(cr.spec.registers_private());
    let cfg = config(&d);
    cfg.validate().expect("the server accepts the config");
    let access = &cfg.datasets[0].access;
    assert_eq!(access.token_file.as_deref(), Some("/etc/cloudify-access/sha256"));
    assert_eq!(
        access.signed_url_key_file.as_deref(),
        Some("/etc/cloudify-internal/signing-key")
    );
    assert_eq!(
        d.internal_secret
            .as_ref()
            .and_then(|s| s.metadata.name.clone())
            .as_deref(),
        Some("embargoed-internal")
    );
    assert_eq!(
        internal_mount(pod_of(&d.deployment)).map(|m| m.1).as_deref(),
        Some("/etc/cloudify-internal")
    );
    // registration off in the catalog block: consent alone registers nothing
    cr.spec.catalog.register = false;
    let d = build::build(&cr, &settings()).expect("builds");
    assert!(d.internal_secret.is_none());
    assert_eq!(config(&d).datasets[0].access.signed_url_key_file, None);

    // consent on a public dataset is a mistake, named
    let (mut cr, _) = desired("minimal");
    cr.spec.access.register = true;
    let e = build::build(&cr, &settings()).expect_err("invalid").to_string();
    assert!(e.contains("spec.access.register"), "{e}");
}

/// The operator's OpenTelemetry settings reach the server and the worker containers, so a
/// request traced from the ingress continues in both; nothing is added when they are unset.
#[test]
fn otel_env_reaches_server_and_worker_pods() {
    let vars: std::collections::HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.obs:4318"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        // not passed: each process names itself; headers may hold a credential
        ("OTEL_SERVICE_NAME", "cloudify-operator"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer secret"),
        // empty means unset
        ("OTEL_SDK_DISABLED", ""),
    ]
    .into_iter()
    .collect();
    let otel = build::otel_env(|k| vars.get(k).map(|v| (*v).to_string()));
    assert_eq!(
        otel,
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                "http://collector.obs:4318".to_string()
            ),
            (
                "OTEL_TRACES_SAMPLER".to_string(),
                "parentbased_traceidratio".to_string()
            ),
            ("OTEL_TRACES_SAMPLER_ARG".to_string(), "0.1".to_string()),
        ]
    );
    let (cr, _) = desired("compute-autoscaled");
    let with = Settings {
        otel_env: otel.clone(),
        ..settings()
    };
    let d = build::build(&cr, &with).expect("builds");
    let env_of = |pod: &k8s_openapi::api::core::v1::PodSpec| -> Vec<(String, String)> {
        pod.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    };
    let server = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    for env in [env_of(server), env_of(compute_pod(&d))] {
        for kv in &otel {
            assert!(env.contains(kv), "{kv:?} missing from {env:?}");
        }
        assert!(
            !env.iter()
                .any(|(k, _)| k == "OTEL_EXPORTER_OTLP_HEADERS" || k == "OTEL_SERVICE_NAME")
        );
    }
    let (_, plain) = desired("compute-autoscaled");
    let plain_server = plain
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert!(!env_of(plain_server).iter().any(|(k, _)| k.starts_with("OTEL_")));
}

/// A dataset on tape opens only once its files are recalled (up to `indexWaitSeconds`), its
/// pods unready meanwhile: the progress deadline of its Deployments covers that wait plus
/// Kubernetes' default, so a running recall is not reported `ProgressDeadlineExceeded` (and
/// the CR `Degraded`) after ten minutes. Datasets not on tape keep the default.
#[test]
fn a_dataset_on_tape_gets_a_progress_deadline_past_its_recall() {
    let deadlines = |d: &Desired| {
        (
            d.deployment
                .spec
                .as_ref()
                .and_then(|s| s.progress_deadline_seconds),
            d.compute
                .as_ref()
                .and_then(|c| c.deployment.spec.as_ref())
                .and_then(|s| s.progress_deadline_seconds),
        )
    };
    let (mut cr, d) = desired("compute-fixed");
    assert_eq!(deadlines(&d), (None, None));
    let tape = |extra: &str| -> cloudify_crds::TapeSpec {
        serde_yaml::from_str(&format!(
            "{{stagingDir: /staging, driver: {{wlcg: {{endpoint: 'https://t.example/api/v1/tape', dataUrl: 'https://t.example'}}}}{extra}}}"
        ))
        .expect("tape")
    };
    cr.spec.dataset.sources = vec!["/arch/tas.nc".into()];
    cr.spec.dataset.storage = Some(cloudify_crds::StorageSpec {
        tape: Some(tape("")),
        ..Default::default()
    });
    let d = build::build(&cr, &settings()).expect("builds");
    assert_eq!(deadlines(&d), (Some(3600 + 600), Some(3600 + 600)));
    if let Some(s) = cr.spec.dataset.storage.as_mut() {
        s.tape = Some(tape(", indexWaitSeconds: 86400"));
    }
    let d = build::build(&cr, &settings()).expect("builds");
    assert_eq!(deadlines(&d), (Some(87_000), Some(87_000)));
    // in the rendered Deployment, where `kubectl rollout status` reads it
    let yaml = serde_yaml::to_string(&d.deployment).expect("yaml");
    assert!(yaml.contains("progressDeadlineSeconds: 87000"), "{yaml}");
}

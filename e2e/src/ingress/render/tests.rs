use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fixture {
    ingresses: Vec<Ingress>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    endpoint_slices: Vec<EndpointSlice>,
    #[serde(default)]
    tls_secrets: Vec<(String, String)>,
}

fn inputs(fixture: &str) -> Inputs {
    let f: Fixture = serde_yaml::from_str(fixture).expect("fixture parses");
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut inputs = Inputs {
        ingresses: f.ingresses,
        ..Inputs::default()
    };
    for s in f.services {
        inputs.services.insert(key(&s.metadata), s);
    }
    for slice in f.endpoint_slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .expect("slice has service label");
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        inputs
            .endpoint_slices
            .entry((ns, service))
            .or_default()
            .push(slice);
    }
    for (ns, name) in f.tls_secrets {
        let files = tls_paths(&PathBuf::from("/state"), &ns, &name);
        inputs.tls.insert((ns, name), files);
    }
    inputs
}

fn opts() -> RenderOptions {
    let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    RenderOptions {
        http: lo(8080),
        https: Some(lo(8443)),
        status: lo(8090),
        state_dir: PathBuf::from("/state"),
        user: None,
        generation: 7,
    }
}

/// The whole rendered config for the fixture, compared with the reviewed expected file
/// (regenerate with `CLOUDIFY_BLESS=1` and review the diff).
#[test]
fn datasets_fixture_renders_the_expected_config() {
    let rendered = render(&inputs(include_str!("../fixtures/datasets.yaml")), &opts());
    let expected_path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ingress/fixtures/datasets.conf");
    if std::env::var_os("CLOUDIFY_BLESS").is_some() {
        std::fs::write(expected_path, &rendered.config).expect("bless");
    }
    let expected = std::fs::read_to_string(expected_path).expect("expected config");
    assert_eq!(rendered.config, expected);
    assert_eq!(
        rendered.warnings,
        [
            "data/cmip6: service \"missing\" not found",
            "data/rewritten: invalid proxy-body-size \"1m; evil\" ignored",
            "data/later-duplicate: host \"\" path Prefix(\"/datasets/era5\") already served by data/era5",
            "data/later-duplicate: invalid path \"/x;return 200\" skipped",
        ]
    );
}

#[test]
fn class_is_taken_from_spec_or_annotation() {
    let i = inputs(include_str!("../fixtures/datasets.yaml"));
    let classes: Vec<bool> = i.ingresses.iter().map(is_nginx_class).collect();
    assert_eq!(classes, [true, true, true, true, false]);
}

#[test]
fn prefix_paths_match_whole_segments_and_unready_endpoints_are_left_out() {
    let config = render(&inputs(include_str!("../fixtures/datasets.yaml")), &opts()).config;
    assert!(config.contains("location = /datasets/era5 {"));
    assert!(config.contains("location /datasets/era5/ {"));
    assert!(
        !config.contains("location /datasets/era5 {"),
        "would match /datasets/era5x"
    );
    assert!(config.contains("server 127.0.0.1:41001 max_fails=0;"));
    assert!(config.contains("server 127.0.0.1:41002 max_fails=0;"));
    assert!(
        !config.contains("41003"),
        "not-ready endpoint must not get traffic"
    );
    assert!(!config.contains("/traefik"));
}

#[test]
fn no_ingresses_still_gives_a_serving_default_server() {
    let config = render(&Inputs::default(), &opts()).config;
    assert!(config.contains("listen 127.0.0.1:8080 default_server;"));
    assert!(config.contains("location / { return 404; }"));
    assert!(!config.contains("ssl"), "no TLS listener without TLS hosts");
}

#[test]
fn a_service_without_endpoints_answers_503() {
    let mut i = inputs(include_str!("../fixtures/datasets.yaml"));
    i.endpoint_slices.clear();
    let config = render(&i, &opts()).config;
    assert!(!config.contains("  upstream "));
    assert!(config.contains("return 503;"));
}

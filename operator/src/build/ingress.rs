//! The Ingress routing `/datasets/<dataset name>` to the dataset's Service.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::PORT_NAME;
use super::meta::Target;

/// The path prefix routed to a dataset by default: the server's own prefix for it, so many
/// datasets share one host with xpublish-style URLs and no rewriting is needed.
pub fn default_path(dataset_name: &str) -> String {
    format!("/datasets/{dataset_name}")
}

/// The Ingress, or `None` when `spec.ingress.enabled` is false.
pub(crate) fn ingress(target: &Target) -> Option<Ingress> {
    let spec = &target.cr.spec.ingress;
    if !spec.enabled {
        return None;
    }
    let mut metadata = target.meta();
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let path = spec
        .path
        .clone()
        .unwrap_or_else(|| default_path(&target.cr.spec.dataset.name));
    let rule = IngressRule {
        host: spec.host.clone(),
        http: Some(HTTPIngressRuleValue {
            paths: vec![HTTPIngressPath {
                path: Some(path),
                path_type: "Prefix".into(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: target.name.to_string(),
                        port: Some(ServiceBackendPort {
                            name: Some(PORT_NAME.into()),
                            number: None,
                        }),
                    }),
                    resource: None,
                },
            }],
        }),
    };
    let tls = spec.tls_secret.as_ref().map(|secret| {
        vec![IngressTLS {
            hosts: spec.host.clone().map(|h| vec![h]),
            secret_name: Some(secret.clone()),
        }]
    });
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(spec.class_name.clone()),
            rules: Some(vec![rule]),
            tls,
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

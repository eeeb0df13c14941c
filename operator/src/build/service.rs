//! The Service in front of the server pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Target, compute_selector_labels, selector_labels};
use super::{PORT, PORT_NAME};

/// A ClusterIP Service on the server's own port, so the in-cluster URL and the pods agree.
pub(crate) fn service(target: &Target) -> Service {
    Service {
        metadata: target.meta(),
        ..cluster_ip(selector_labels(target.name))
    }
}

/// The Service `<name>-compute` in front of the worker pods: the one URL the server's
/// `--compute` names; kube-proxy spreads the server's connections over the workers, and a
/// worker that is not ready (or gone) leaves the endpoints.
pub(crate) fn compute_service(target: &Target) -> Service {
    Service {
        metadata: target.compute_meta(),
        ..cluster_ip(compute_selector_labels(target.name))
    }
}

fn cluster_ip(selector: std::collections::BTreeMap<String, String>) -> Service {
    Service {
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

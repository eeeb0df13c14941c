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

/// The Service `<name>-status` over the same server pods, ready or not
/// (`publishNotReadyAddresses`), for the operator alone: it reads the server's `/status`
/// through it while no pod is ready, to tell an opening dataset (files being recalled from
/// tape) and one that failed to open from a plain unavailable one. The main Service cannot
/// serve for that: it lists only ready pods, so it has no endpoint exactly when the question
/// arises; and it cannot publish unready pods itself, or the ingress would send clients to
/// pods that answer 503. Reading pods directly would need pod permissions the operator does
/// not have. `None` when `<name>-status` is longer than a Service name may be (the CR
/// name is checked against the plain name only): the CR then shows the Deployment's view.
pub(crate) fn status_service(target: &Target) -> Option<Service> {
    let name = target.status_name();
    crate::validate::dns_1035_label(&name).ok()?;
    let mut service = cluster_ip(selector_labels(target.name));
    if let Some(spec) = service.spec.as_mut() {
        spec.publish_not_ready_addresses = Some(true);
    }
    Some(Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name),
            ..target.meta()
        },
        ..service
    })
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

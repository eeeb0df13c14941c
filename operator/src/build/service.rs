//! The Service in front of the server pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Target, selector_labels};
use super::{PORT, PORT_NAME};

/// A ClusterIP Service on the server's own port, so the in-cluster URL and the pods agree.
pub(crate) fn service(target: &Target) -> Service {
    Service {
        metadata: target.meta(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(target.name)),
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

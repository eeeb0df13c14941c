//! HorizontalPodAutoscaler and PodDisruptionBudget.

use cloudify_crds::k8s::DEFAULT_TARGET_CPU_UTILIZATION;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::Target;

/// An autoscaler on CPU utilisation when the replica range leaves room to scale.
///
/// Every chunk request is independent CPU work (decoding), so CPU is the load signal. With
/// `min == max` there is nothing to decide and the Deployment's own `replicas` is used.
pub(crate) fn hpa(target: &Target) -> Option<HorizontalPodAutoscaler> {
    let spec = &target.cr.spec;
    if !spec.replicas.autoscaled() {
        return None;
    }
    let utilization = spec
        .target_cpu_utilization
        .unwrap_or(DEFAULT_TARGET_CPU_UTILIZATION);
    Some(HorizontalPodAutoscaler {
        metadata: target.meta(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: target.name.to_string(),
            },
            min_replicas: Some(spec.replicas.min),
            max_replicas: spec.replicas.max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// A disruption budget allowing one server pod down at a time, when at least two run.
///
/// With a single replica a budget can only either block node drains forever
/// (`maxUnavailable: 0`) or protect nothing, so none is created; with two or more, voluntary
/// evictions (drains, upgrades) keep all but one pod serving.
pub(crate) fn pdb(target: &Target) -> Option<PodDisruptionBudget> {
    if target.cr.spec.replicas.min < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: target.meta(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(target.selector()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

//! HorizontalPodAutoscaler and PodDisruptionBudget.

use cloudify_crds::k8s::{ComputeSpec, DEFAULT_TARGET_CPU_UTILIZATION, Replicas};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::Target;

/// An autoscaler on CPU utilisation when the replica range leaves room to scale.
///
/// Every chunk request is independent CPU work (decoding), so CPU is the load signal. With
/// `min == max` there is nothing to decide and the Deployment's own `replicas` is used.
pub(crate) fn hpa(target: &Target) -> Option<HorizontalPodAutoscaler> {
    let spec = &target.cr.spec;
    autoscaler(target.meta(), &spec.replicas, spec.target_cpu_utilization)
}

/// The autoscaler of the worker pool `<name>-compute`, on CPU like the server's: a task is
/// pure CPU work (decode, reduce), so busy workers are the signal that more are needed.
pub(crate) fn compute_hpa(target: &Target, compute: &ComputeSpec) -> Option<HorizontalPodAutoscaler> {
    autoscaler(
        target.compute_meta(),
        &compute.replicas,
        compute.target_cpu_utilization,
    )
}

/// An HPA scaling the Deployment of the same name as `metadata`, when `replicas` leaves room.
fn autoscaler(
    metadata: ObjectMeta,
    replicas: &Replicas,
    utilization: Option<i32>,
) -> Option<HorizontalPodAutoscaler> {
    if !replicas.autoscaled() {
        return None;
    }
    let utilization = utilization.unwrap_or(DEFAULT_TARGET_CPU_UTILIZATION);
    let name = metadata.name.clone().unwrap_or_default();
    Some(HorizontalPodAutoscaler {
        metadata,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(replicas.min),
            max_replicas: replicas.max,
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
    budget(target.meta(), target.selector(), &target.cr.spec.replicas)
}

/// The disruption budget of the worker pool, for the same reason as the server's: a drain
/// takes one worker at a time, the others keep taking tasks (the server retries a task a
/// leaving worker dropped).
pub(crate) fn compute_pdb(target: &Target, compute: &ComputeSpec) -> Option<PodDisruptionBudget> {
    budget(
        target.compute_meta(),
        target.compute_selector(),
        &compute.replicas,
    )
}

fn budget(metadata: ObjectMeta, selector: LabelSelector, replicas: &Replicas) -> Option<PodDisruptionBudget> {
    if replicas.min < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

//! The HorizontalPodAutoscaler's arithmetic, driven by a load the tests set.
//!
//! Local processes have no meaningful CPU requests, so the load is an annotation on the HPA:
//! [`LOAD_ANNOTATION`] `e2e.cloudify.io/cpu-load: "250"` is the total CPU demand in percent of
//! one pod's request (250 = two and a half pods' worth), spread evenly over the ready pods.
//! The observed average utilisation is therefore `load / currentReplicas`, and the real HPA
//! formula `desired = ceil(current × observed / target)` becomes `ceil(load / target)` —
//! stable, as with real load that spreads over new pods. As in the real HPA: a 10 % tolerance
//! around the target, the result clamped to `[minReplicas, maxReplicas]`, and without a
//! metric (no annotation) no scaling beyond the clamp. Unlike it: no stabilisation windows or
//! rate limits, so tests see scaling at once.

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus, MetricStatus,
    MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Annotation with the total CPU load (see the module docs).
pub const LOAD_ANNOTATION: &str = "e2e.cloudify.io/cpu-load";
/// The real HPA's default tolerance.
const TOLERANCE: f64 = 0.1;

/// The decision for one HPA.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: i32,
    /// Average utilisation observed (percent), if there is a metric.
    pub observed: Option<i32>,
    pub target: i32,
    /// Why (for the ScalingActive/ScalingLimited conditions).
    pub limited: Option<&'static str>,
    pub error: Option<String>,
}

/// Target average CPU utilisation of the HPA's first CPU Resource metric (80 when none, the
/// autoscaling/v1 default).
pub fn target_utilization(hpa: &HorizontalPodAutoscaler) -> i32 {
    hpa.spec
        .as_ref()
        .and_then(|s| s.metrics.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|m| m.resource.as_ref())
        .find(|r| r.name == "cpu")
        .and_then(|r| r.target.average_utilization)
        .unwrap_or(80)
        .max(1)
}

/// Decides the replica count for `current` replicas.
pub fn decide(hpa: &HorizontalPodAutoscaler, current: i32) -> Decision {
    let spec = hpa.spec.as_ref();
    let min = spec.and_then(|s| s.min_replicas).unwrap_or(1).max(1);
    let max = spec.map_or(min, |s| s.max_replicas).max(min);
    let target = target_utilization(hpa);
    let raw = hpa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOAD_ANNOTATION));
    let (load, error) = match raw.map(|v| v.trim().parse::<u32>()) {
        None => (None, None),
        Some(Ok(v)) => (Some(v), None),
        Some(Err(_)) => (
            None,
            Some(format!(
                "annotation {LOAD_ANNOTATION} must be a whole number of percent, got {:?}",
                raw.map(String::as_str).unwrap_or("")
            )),
        ),
    };
    let current = current.max(0);
    let (mut desired, observed) = match load {
        None => (current, None),
        Some(load) if current == 0 => (i32::try_from(load.div_ceil(target as u32)).unwrap_or(max), None),
        Some(load) => {
            let observed = f64::from(load) / f64::from(current);
            let ratio = observed / f64::from(target);
            let desired = if (ratio - 1.0).abs() <= TOLERANCE {
                current
            } else {
                (f64::from(load) / f64::from(target)).ceil() as i32
            };
            (desired, Some(observed.round() as i32))
        }
    };
    let mut limited = None;
    if desired > max {
        desired = max;
        limited = Some("TooManyReplicas");
    } else if desired < min {
        desired = min;
        limited = Some("TooFewReplicas");
    }
    Decision {
        desired,
        observed,
        target,
        limited,
        error,
    }
}

/// The HPA status after a decision; `previous` keeps condition transition times.
pub fn status(
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    d: &Decision,
    now: Time,
) -> HorizontalPodAutoscalerStatus {
    let previous = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let transition = match previous.iter().find(|c| c.type_ == type_) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        HorizontalPodAutoscalerCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: transition,
        }
    };
    let active = match (&d.error, d.observed) {
        (Some(e), _) => condition("ScalingActive", false, "FailedGetResourceMetric", e.clone()),
        (None, None) => condition(
            "ScalingActive",
            false,
            "FailedGetResourceMetric",
            format!("no load reported: set the {LOAD_ANNOTATION} annotation"),
        ),
        (None, Some(_)) => condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)".into(),
        ),
    };
    let limited = match d.limited {
        Some(reason) => condition(
            "ScalingLimited",
            true,
            reason,
            format!(
                "the desired replica count is {} the allowed range",
                if reason == "TooManyReplicas" {
                    "more than"
                } else {
                    "less than"
                }
            ),
        ),
        None => condition(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range".into(),
        ),
    };
    let able = condition(
        "AbleToScale",
        true,
        if d.desired == current {
            "ReadyForNewScale"
        } else {
            "SucceededRescale"
        },
        if d.desired == current {
            "recommended size matches current size".into()
        } else {
            format!(
                "the HPA controller was able to update the target scale to {}",
                d.desired
            )
        },
    );
    HorizontalPodAutoscalerStatus {
        current_replicas: Some(current),
        desired_replicas: d.desired,
        current_metrics: d.observed.map(|u| {
            vec![MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: "cpu".into(),
                    current: MetricValueStatus {
                        average_utilization: Some(u),
                        ..MetricValueStatus::default()
                    },
                }),
                ..MetricStatus::default()
            }]
        }),
        conditions: Some(vec![able, active, limited]),
        observed_generation: hpa.metadata.generation,
        last_scale_time: if d.desired != current {
            Some(now)
        } else {
            hpa.status.as_ref().and_then(|s| s.last_scale_time.clone())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(load: Option<&str>) -> HorizontalPodAutoscaler {
        let annotations = load.map_or(String::new(), |l| {
            format!("annotations: {{{LOAD_ANNOTATION}: \"{l}\"}}")
        });
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: h, {annotations}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: d}}
  minReplicas: 1
  maxReplicas: 5
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]
"#
        ))
        .expect("hpa")
    }

    #[test]
    fn load_drives_replicas_like_the_real_formula() {
        // 250 % over 1 pod = 250 % average, target 80: ceil(1 × 250/80) = 4.
        let d = decide(&hpa(Some("250")), 1);
        assert_eq!((d.desired, d.observed, d.limited), (4, Some(250), None));
        // Stable once there: 250/4 = 62.5 % average, ceil(4 × 62.5/80) = 4.
        assert_eq!(decide(&hpa(Some("250")), 4).desired, 4);
        // Within 10 % of the target: no change (3 pods × 80 % = 240, 250/3 = 83 %).
        assert_eq!(decide(&hpa(Some("250")), 3).desired, 3);
        // Clamped to the range.
        let d = decide(&hpa(Some("1000")), 2);
        assert_eq!((d.desired, d.limited), (5, Some("TooManyReplicas")));
        let d = decide(&hpa(Some("0")), 3);
        assert_eq!((d.desired, d.limited), (1, Some("TooFewReplicas")));
    }

    #[test]
    fn without_a_metric_nothing_scales_and_status_says_why() {
        let h = hpa(None);
        let d = decide(&h, 2);
        assert_eq!((d.desired, d.observed), (2, None));
        let bad = decide(&hpa(Some("lots")), 2);
        assert_eq!(bad.desired, 2);
        assert!(bad.error.as_deref().unwrap_or("").contains("whole number"));
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let s = status(&h, 2, &d, now);
        let active = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "ScalingActive");
        assert_eq!(active.map(|c| c.status), Some("False".into()));
        assert_eq!((s.current_replicas, s.desired_replicas), (Some(2), 2));
    }

    #[test]
    fn status_reports_the_observed_metric() {
        let h = hpa(Some("250"));
        let d = decide(&h, 1);
        let s = status(&h, 1, &d, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let metric = s.current_metrics.unwrap_or_default();
        assert_eq!(
            metric[0]
                .resource
                .as_ref()
                .and_then(|r| r.current.average_utilization),
            Some(250)
        );
        assert_eq!(s.desired_replicas, 4);
        assert!(s.last_scale_time.is_some());
    }
}

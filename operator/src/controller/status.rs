//! `status` of a `CloudifyDataset`: pure functions from what the reconciler observed to the
//! conditions it writes.
//!
//! Pure so the rules (when is a dataset Ready, what does Degraded say) are unit-tested without
//! an API server, and deterministic: the same observation gives the same conditions, and a
//! condition's `lastTransitionTime` only moves when its `status` changes. That keeps status
//! patches (and the watch events they cause) to real changes.

use cloudify_crds::k8s::{CloudifyDatasetStatus, ConditionType};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// One condition as decided by the reconciler (without timestamps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: ConditionType,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(type_: ConditionType, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What the Deployment says about the rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Whether the Deployment controller has seen the Deployment's current spec.
    pub observed: bool,
    /// Replicas wanted (the HPA's choice when autoscaled).
    pub desired: i32,
    pub updated: i32,
    pub available: i32,
    /// All pods, old and new (more than `updated` while old pods still run).
    pub total: i32,
    /// Message of the Deployment's `Progressing=False, ProgressDeadlineExceeded` condition.
    pub deadline_exceeded: Option<String>,
}

impl Rollout {
    /// Reads a Deployment as returned by the API server (apply response or GET).
    pub fn of(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or(0);
        let observed = status.observed_generation.is_some_and(|g| g >= generation);
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let deadline_exceeded = status.conditions.as_ref().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
                .map(|c| {
                    c.message
                        .clone()
                        .unwrap_or_else(|| "progress deadline exceeded".into())
                })
        });
        Self {
            observed,
            desired,
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
            deadline_exceeded,
        }
    }

    /// Served: the Deployment controller has seen the current spec and at least one replica
    /// is available (available pods pass their `/readyz` readiness probe).
    pub fn ready(&self) -> bool {
        self.observed && self.available >= 1
    }

    /// The Ready, Progressing and Degraded conditions for a valid, applied spec.
    pub fn conditions(&self) -> [Cond; 3] {
        let ready = if self.ready() {
            Cond::new(
                ConditionType::Ready,
                true,
                "Available",
                format!("{} of {} replicas available", self.available, self.desired),
            )
        } else if !self.observed {
            Cond::new(
                ConditionType::Ready,
                false,
                "RolloutPending",
                "the Deployment controller has not yet observed the current spec",
            )
        } else {
            Cond::new(
                ConditionType::Ready,
                false,
                "Unavailable",
                format!("0 of {} replicas available", self.desired),
            )
        };
        let progressing = if let Some(m) = &self.deadline_exceeded {
            Cond::new(
                ConditionType::Progressing,
                false,
                "ProgressDeadlineExceeded",
                m.clone(),
            )
        } else if !self.observed
            || self.updated < self.desired
            || self.available < self.desired
            || self.total > self.updated
        {
            Cond::new(
                ConditionType::Progressing,
                true,
                "RollingOut",
                format!(
                    "{} of {} replicas updated, {} available",
                    self.updated, self.desired, self.available
                ),
            )
        } else {
            Cond::new(
                ConditionType::Progressing,
                false,
                "Complete",
                format!("all {} replicas updated and available", self.desired),
            )
        };
        let degraded = match &self.deadline_exceeded {
            Some(m) => Cond::new(
                ConditionType::Degraded,
                true,
                "ProgressDeadlineExceeded",
                m.clone(),
            ),
            None => Cond::new(
                ConditionType::Degraded,
                false,
                "Reconciled",
                "the spec is valid and applied",
            ),
        };
        [ready, progressing, degraded]
    }
}

/// Ready and Progressing when nothing could be applied (invalid spec): what the Deployment
/// left from an earlier, valid spec still serves, so it is reported as it is.
pub fn unapplied(existing: Option<&Rollout>) -> [Cond; 2] {
    match existing {
        Some(r) => {
            let [ready, _, _] = r.conditions();
            let progressing = Cond::new(
                ConditionType::Progressing,
                false,
                "InvalidSpec",
                "the current spec is invalid and was not applied",
            );
            [ready, progressing]
        }
        None => [
            Cond::new(
                ConditionType::Ready,
                false,
                "InvalidSpec",
                "the spec is invalid; nothing was applied",
            ),
            Cond::new(
                ConditionType::Progressing,
                false,
                "InvalidSpec",
                "the spec is invalid; nothing was applied",
            ),
        ],
    }
}

/// The condition list to write: `wanted` in [`ConditionType::ALL`] order, each keeping the
/// `lastTransitionTime` of the old condition of its type when the status did not change.
/// Old conditions of types not in `wanted` are kept as they are.
pub fn merge(old: &[Condition], wanted: &[Cond], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out = Vec::new();
    for t in ConditionType::ALL {
        let prev = old.iter().find(|c| c.type_ == t.as_str());
        let Some(w) = wanted.iter().find(|c| c.type_ == t) else {
            if let Some(p) = prev {
                out.push(p.clone());
            }
            continue;
        };
        let status = if w.status { "True" } else { "False" };
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: t.as_str().to_string(),
            status: status.to_string(),
            reason: w.reason.to_string(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out
}

/// The status condition of a type, if present.
pub fn find(status: Option<&CloudifyDatasetStatus>, t: ConditionType) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == t.as_str())
}

/// Whether the status has a condition of type `t` with status True.
pub fn is_true(status: Option<&CloudifyDatasetStatus>, t: ConditionType) -> bool {
    find(status, t).is_some_and(|c| c.status == "True")
}

/// The merge patch that writes `status` completely: absent optional fields are sent as
/// `null` so that values from an earlier reconcile (a `stacItem` since deregistered) are
/// removed rather than left behind.
pub fn patch(status: &CloudifyDatasetStatus) -> Value {
    json!({
        "status": {
            "observedGeneration": status.observed_generation,
            "conditions": status.conditions,
            "url": status.url,
            "stacItem": status.stac_item,
            "replicas": status.replicas,
            // null when compute is off: a merge patch must clear what an earlier pool left
            "computeReplicas": status.compute_replicas,
        }
    })
}

/// Condition types whose status changed from `old` to `new` (appeared, or flipped), with
/// their new condition: the transitions events are emitted for.
pub fn transitions<'a>(
    old: Option<&CloudifyDatasetStatus>,
    new: &'a CloudifyDatasetStatus,
) -> Vec<&'a Condition> {
    new.conditions
        .iter()
        .filter(|c| {
            let prev = old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_));
            prev.is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(generation: i64, observed: i64, replicas: i32, updated: i32, available: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn readiness_needs_an_observed_spec_and_an_available_replica() {
        let r = Rollout::of(&deployment(2, 2, 2, 2, 2));
        assert!(r.ready());
        let [ready, progressing, degraded] = r.conditions();
        assert_eq!((ready.status, ready.reason), (true, "Available"));
        assert_eq!(ready.message, "2 of 2 replicas available");
        assert_eq!((progressing.status, progressing.reason), (false, "Complete"));
        assert_eq!((degraded.status, degraded.reason), (false, "Reconciled"));

        let pending = Rollout::of(&deployment(3, 2, 2, 2, 2));
        assert!(!pending.ready());
        assert_eq!(pending.conditions()[0].reason, "RolloutPending");
        assert!(pending.conditions()[1].status);

        let none = Rollout::of(&deployment(1, 1, 2, 0, 0));
        assert!(!none.ready());
        assert_eq!(none.conditions()[0].reason, "Unavailable");

        let rolling = Rollout::of(&deployment(2, 2, 2, 1, 2));
        assert!(rolling.ready());
        assert_eq!(rolling.conditions()[1].reason, "RollingOut");
        assert_eq!(
            rolling.conditions()[1].message,
            "1 of 2 replicas updated, 2 available"
        );

        // A fresh Deployment without status is not ready.
        assert!(!Rollout::of(&Deployment::default()).ready());
    }

    #[test]
    fn progress_deadline_is_degraded() {
        let mut d = deployment(1, 1, 1, 1, 0);
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"tas-1\" has timed out progressing.".into()),
                ..DeploymentCondition::default()
            }]);
        }
        let [_, progressing, degraded] = Rollout::of(&d).conditions();
        assert_eq!(
            (progressing.status, progressing.reason),
            (false, "ProgressDeadlineExceeded")
        );
        assert_eq!(
            (degraded.status, degraded.reason),
            (true, "ProgressDeadlineExceeded")
        );
        assert!(degraded.message.contains("timed out"));
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0 = Timestamp::from_second(1_700_000_000).expect("time");
        let t1 = Timestamp::from_second(1_700_000_600).expect("time");
        let first = merge(
            &[],
            &[Cond::new(
                ConditionType::Ready,
                false,
                "Unavailable",
                "0 of 1 replicas available",
            )],
            Some(1),
            t0,
        );
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].last_transition_time, Time(t0));
        // Same status, other message: time kept.
        let same = merge(
            &first,
            &[Cond::new(ConditionType::Ready, false, "RolloutPending", "x")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].observed_generation, Some(2));
        // Flipped: time moves.
        let flipped = merge(
            &same,
            &[
                Cond::new(ConditionType::Registered, false, "WaitingForReady", "w"),
                Cond::new(
                    ConditionType::Ready,
                    true,
                    "Available",
                    "1 of 1 replicas available",
                ),
            ],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].type_, "Ready");
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[1].type_, "Registered");
        // Types not decided this time are kept unchanged.
        let kept = merge(&flipped, &[], Some(3), t1);
        assert_eq!(kept, flipped);
    }

    #[test]
    fn patch_clears_absent_fields() {
        let p = patch(&CloudifyDatasetStatus {
            observed_generation: Some(4),
            ..CloudifyDatasetStatus::default()
        });
        assert_eq!(p["status"]["observedGeneration"], 4);
        assert!(p["status"]["stacItem"].is_null());
        assert!(
            p["status"]
                .as_object()
                .is_some_and(|o| o.contains_key("stacItem") && o.contains_key("computeReplicas"))
        );
    }
}

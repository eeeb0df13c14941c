//! The Deployment controller's decisions as pure functions: pod-template hash, which pods to
//! create or delete for scaling and rolling updates, and the Deployment status.
//!
//! Pods are owned by the Deployment directly (no ReplicaSets); the `pod-template-hash` label
//! tells current pods from old ones, as it does for ReplicaSets. `RollingUpdate` honours
//! `maxSurge`/`maxUnavailable` (default 25 %/25 %, surge at least 1); `Recreate` deletes all old
//! pods before creating new ones.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

/// Label carrying the template hash, as on real ReplicaSet pods.
pub const HASH_LABEL: &str = "pod-template-hash";

/// What the controller needs to know about one owned pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub hash: String,
    pub ready: bool,
}

/// Pods to create (count, with the current template) and to delete (names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    pub create: usize,
    pub delete: Vec<String>,
}

/// Hash of the pod template (its JSON), in the alphabet Kubernetes uses for generated names.
pub fn template_hash(deployment: &Deployment) -> String {
    let template = deployment.spec.as_ref().map(|s| &s.template);
    template_hash_of_bytes(&serde_json::to_vec(&template).unwrap_or_default())
}

/// 10 characters of a SHA-256 of `bytes`, from the alphabet of generated names.
pub fn template_hash_of_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest
        .iter()
        .take(10)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `spec.replicas`, 1 when absent (the API default).
pub fn desired_replicas(deployment: &Deployment) -> usize {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize
}

fn scaled(value: Option<&IntOrString>, desired: usize, default_percent: usize, round_up: bool) -> usize {
    match value {
        Some(IntOrString::Int(n)) => (*n).max(0) as usize,
        Some(IntOrString::String(s)) => {
            let percent = s
                .trim_end_matches('%')
                .parse::<usize>()
                .unwrap_or(default_percent);
            percent_of(desired, percent, round_up)
        }
        None => percent_of(desired, default_percent, round_up),
    }
}

fn percent_of(desired: usize, percent: usize, round_up: bool) -> usize {
    let product = desired * percent;
    if round_up {
        product.div_ceil(100)
    } else {
        product / 100
    }
}

/// One step towards `desired` pods of template `hash`. Called again after every change, so
/// each step only does what is safe now (level-triggered, like the real controller).
pub fn plan(deployment: &Deployment, hash: &str, pods: &[PodView]) -> Actions {
    let desired = desired_replicas(deployment);
    let strategy = deployment.spec.as_ref().and_then(|s| s.strategy.as_ref());
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let mut surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), desired, 25, true);
    let unavailable = scaled(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        25,
        false,
    );
    if surge == 0 && unavailable == 0 {
        surge = 1;
    }

    let (mut new, mut old): (Vec<&PodView>, Vec<&PodView>) = pods.iter().partition(|p| p.hash == hash);
    // Not-ready first, then newest (name order is creation order within a hash only roughly,
    // but any choice is valid).
    new.sort_by_key(|p| (p.ready, std::cmp::Reverse(p.name.clone())));
    old.sort_by_key(|p| (p.ready, std::cmp::Reverse(p.name.clone())));
    let mut actions = Actions::default();

    if recreate {
        if !old.is_empty() {
            actions.delete = old.iter().map(|p| p.name.clone()).collect();
            return actions;
        }
        if new.len() < desired {
            actions.create = desired - new.len();
        } else {
            actions.delete = new[..new.len() - desired]
                .iter()
                .map(|p| p.name.clone())
                .collect();
        }
        return actions;
    }

    if new.len() > desired {
        actions
            .delete
            .extend(new[..new.len() - desired].iter().map(|p| p.name.clone()));
        new.drain(..new.len() - desired);
    }
    let total = new.len() + old.len();
    if new.len() < desired {
        let room = (desired + surge).saturating_sub(total);
        actions.create = (desired - new.len()).min(room);
    }
    // Old pods: unready ones serve nothing and go at once; ready ones only while enough
    // pods stay available.
    let min_available = desired.saturating_sub(unavailable);
    let mut available = new.iter().filter(|p| p.ready).count() + old.iter().filter(|p| p.ready).count();
    // Never keep more old pods than the scale-down needs when desired shrank.
    for p in &old {
        if !p.ready {
            actions.delete.push(p.name.clone());
        } else if available > min_available || desired == 0 {
            actions.delete.push(p.name.clone());
            available -= 1;
        }
    }
    actions
}

/// The Deployment status for the given pods; `previous` keeps condition transition times.
pub fn status(deployment: &Deployment, hash: &str, pods: &[PodView], now: Time) -> DeploymentStatus {
    let desired = desired_replicas(deployment);
    let updated = pods.iter().filter(|p| p.hash == hash).count();
    let ready = pods.iter().filter(|p| p.ready).count();
    let updated_ready = pods.iter().filter(|p| p.hash == hash && p.ready).count();
    let unavailable_allowed = deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(desired / 4, |v| scaled(Some(v), desired, 25, false));
    let previous = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let old = previous.iter().find(|c| c.type_ == type_);
        let transition = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: transition,
            last_update_time: Some(now.clone()),
        }
    };
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let available_ok = ready >= desired.saturating_sub(unavailable_allowed);
    let complete = updated == desired && updated_ready == desired && pods.len() == desired;
    let conditions = vec![
        if available_ok {
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("Deployment \"{name}\" has successfully progressed."),
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("Deployment \"{name}\" is progressing."),
            )
        },
    ];
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(count(pods.len())),
        updated_replicas: Some(count(updated)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(ready)),
        unavailable_replicas: Some(count(desired.saturating_sub(ready))),
        conditions: Some(conditions),
        ..DeploymentStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: Option<i32>, strategy: &str) -> Deployment {
        serde_yaml::from_str(&format!(
            "metadata: {{name: d, generation: 3}}\nspec:\n  replicas: {}\n  selector: {{matchLabels: {{a: b}}}}\n  template: {{metadata: {{labels: {{a: b}}}}}}\n  {strategy}",
            replicas.map_or("null".to_string(), |r| r.to_string())
        ))
        .expect("deployment")
    }

    fn pod(name: &str, hash: &str, ready: bool) -> PodView {
        PodView {
            name: name.into(),
            hash: hash.into(),
            ready,
        }
    }

    #[test]
    fn scales_from_nothing_and_defaults_to_one_replica() {
        assert_eq!(
            plan(&deployment(None, ""), "h", &[]),
            Actions {
                create: 1,
                delete: vec![]
            }
        );
        assert_eq!(plan(&deployment(Some(3), ""), "h", &[]).create, 3);
        let pods = [pod("a", "h", true), pod("b", "h", false), pod("c", "h", true)];
        assert_eq!(plan(&deployment(Some(1), ""), "h", &pods).delete, ["b", "c"]);
        assert_eq!(plan(&deployment(Some(0), ""), "h", &pods).delete.len(), 3);
    }

    #[test]
    fn rolling_update_surges_then_removes_old_pods_only_when_new_ones_are_ready() {
        let d = deployment(Some(1), "");
        let step1 = plan(&d, "new", &[pod("o", "old", true)]);
        assert_eq!(
            step1,
            Actions {
                create: 1,
                delete: vec![]
            }
        );
        let step2 = plan(&d, "new", &[pod("o", "old", true), pod("n", "new", false)]);
        assert_eq!(
            step2,
            Actions::default(),
            "keep the old pod until the new one is ready"
        );
        let step3 = plan(&d, "new", &[pod("o", "old", true), pod("n", "new", true)]);
        assert_eq!(
            step3,
            Actions {
                create: 0,
                delete: vec!["o".into()]
            }
        );
        // A broken old pod goes at once.
        let broken = plan(&d, "new", &[pod("o", "old", false), pod("n", "new", false)]);
        assert_eq!(broken.delete, ["o"]);
    }

    #[test]
    fn recreate_deletes_old_pods_first() {
        let d = deployment(Some(2), "strategy: {type: Recreate}");
        assert_eq!(
            plan(&d, "new", &[pod("o", "old", true)]),
            Actions {
                create: 0,
                delete: vec!["o".into()]
            }
        );
        assert_eq!(plan(&d, "new", &[]).create, 2);
    }

    #[test]
    fn status_reports_counts_and_conditions() {
        let d = deployment(Some(2), "");
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let s = status(
            &d,
            "h",
            &[pod("a", "h", true), pod("b", "old", true)],
            now.clone(),
        );
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (Some(2), Some(1), Some(2), Some(2), Some(3))
        );
        let conds = s.conditions.unwrap_or_default();
        assert_eq!(conds[0].type_, "Available");
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[1].reason.as_deref(), Some("ReplicaSetUpdated"));
        let done = status(&d, "h", &[pod("a", "h", true), pod("b", "h", true)], now.clone());
        assert_eq!(
            done.conditions.unwrap_or_default()[1].reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        let none = status(&d, "h", &[], now);
        assert_eq!(none.conditions.unwrap_or_default()[0].status, "False");
    }

    #[test]
    fn template_hash_changes_with_the_template_only() {
        let a = deployment(Some(1), "");
        let mut b = deployment(Some(5), "");
        assert_eq!(template_hash(&a), template_hash(&b));
        if let Some(spec) = b.spec.as_mut() {
            spec.template.metadata.get_or_insert_default().annotations =
                Some([("x".to_string(), "y".to_string())].into());
        }
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }
}

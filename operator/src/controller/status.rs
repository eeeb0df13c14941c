//! `status` of a `CloudifyDataset`: pure functions from what the reconciler observed to the
//! conditions it writes.
//!
//! Pure so the rules (when is a dataset Ready, what does Degraded say) are unit-tested without
//! an API server, and deterministic: the same observation gives the same conditions, and a
//! condition's `lastTransitionTime` only moves when its `status` changes. That keeps status
//! patches (and the watch events they cause) to real changes.

use std::time::Duration;

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

/// What the dataset's server says about the dataset in its `/status` (`cloudify serve`:
/// `{"datasets": [{"name", "state": "ready" | "opening" | "failed", ...}]}`), read by the
/// operator while the Deployment has no available replica: the Deployment only knows that the
/// pods are unready, the server knows why (a recall from tape still running, a broken file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerView {
    /// No answer, an answer that is not the expected JSON, or the dataset not listed: the
    /// operator knows no more than the Deployment tells it.
    Unknown,
    /// Opening in the background.
    Opening {
        /// What the opening waits for, in the server's words.
        waiting_for: String,
        /// The `Retry-After` its requests get (the recall's estimate when there is one).
        retry_after: Option<u64>,
    },
    /// The opening failed; the server's reason.
    Failed(String),
    /// Open and served (the pod's readiness has not caught up yet).
    Ready,
    /// Open and served, but the tape archive it recalls from fails the server's health
    /// checks (unreachable, refusing its token); the server's reason.
    TapeFailing(String),
}

impl ServerView {
    /// Reads the `/status` body for `dataset`; anything unexpected is [`ServerView::Unknown`],
    /// never an error: the server's answer must not break the reconcile.
    pub fn parse(dataset: &str, body: &[u8]) -> Self {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Self::Unknown;
        };
        let Some(entry) = doc.get("datasets").and_then(Value::as_array).and_then(|l| {
            l.iter()
                .find(|d| d.get("name").and_then(Value::as_str) == Some(dataset))
        }) else {
            return Self::Unknown;
        };
        let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
        match entry.get("state").and_then(Value::as_str) {
            Some("opening") => Self::Opening {
                waiting_for: text("waiting_for").unwrap_or_else(|| "opening its files".into()),
                retry_after: entry.get("retry_after_seconds").and_then(Value::as_u64),
            },
            Some("failed") => Self::Failed(text("error").unwrap_or_else(|| "no reason given".into())),
            Some("ready") => match entry.get("tape") {
                Some(t) if t.get("state").and_then(Value::as_str) == Some("failing") => Self::TapeFailing(
                    t.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_string(),
                ),
                _ => Self::Ready,
            },
            _ => Self::Unknown,
        }
    }

    /// When to look again: the server's own `Retry-After` while opening (within 5–60 s, so a
    /// long estimate still shows the opening fail in time, and a short one does not spin),
    /// a minute once failed (settled until the pod restarts), 10 s while unknown.
    pub fn poll(&self) -> Duration {
        Duration::from_secs(match self {
            Self::Opening { retry_after, .. } => retry_after.unwrap_or(10).clamp(5, 60),
            Self::Failed(_) => 60,
            Self::Unknown | Self::Ready | Self::TapeFailing(_) => 10,
        })
    }
}

/// How often the server's view of a served dataset on a tape archive is read: the archive's
/// health-check interval (`tape.healthCheckSeconds`, default 60) within 10 s–5 min, so the
/// CR follows an archive going away and coming back without polling every pod constantly.
pub fn tape_poll(health_check_seconds: Option<u64>) -> Duration {
    Duration::from_secs(health_check_seconds.unwrap_or(60).clamp(10, 300))
}

/// `Retry-After` in words, coarse on purpose: the message is part of the status, and a
/// message that changed every second (an estimate counting down) would patch the status, and
/// so reconcile again, every second.
fn expected_in(seconds: u64) -> String {
    match seconds {
        0..60 => "under a minute".into(),
        60..3600 => format!("about {} min", seconds.div_ceil(60)),
        _ => format!("about {} h", seconds.div_ceil(3600)),
    }
}

/// Ready, Progressing and Degraded of a valid, applied spec: the Deployment's view
/// ([`Rollout::conditions`]) with, while no replica is available, what the server says about
/// its dataset in place of the generic `Unavailable`:
///
/// - opening: `Ready=False, Opening`, naming what it waits for and when to expect it;
/// - failed: `Ready=False, OpenFailed` and `Degraded=True, OpenFailed` with the server's
///   reason (a pod that will not become ready by waiting);
/// - unknown (no answer, malformed): the reasons of the `previous` conditions if they came
///   from the server for this `generation` (an unanswered poll — a restarting pod, a timeout —
///   must not flip Degraded back and forth; the caller passes none once the server has been
///   silent for a while), else the Deployment's view.
///
/// An available replica always wins for Ready: the Deployment then says all there is. While
/// served, a tape archive failing the server's health checks is `Degraded=True,
/// TapeUnavailable` (unless the rollout is degraded itself): staged files are served, others
/// cannot be recalled. An unanswered read keeps it as for the opening.
pub fn with_server(
    rollout: &Rollout,
    server: &ServerView,
    dataset: &str,
    previous: &[Condition],
    generation: Option<i64>,
) -> [Cond; 3] {
    let [ready, progressing, degraded] = rollout.conditions();
    if rollout.ready() {
        if degraded.status {
            return [ready, progressing, degraded];
        }
        let degraded = match server {
            ServerView::TapeFailing(why) => Cond::new(
                ConditionType::Degraded,
                true,
                TAPE_UNAVAILABLE,
                format!(
                    "dataset '{dataset}': its tape archive fails the server's health checks ({why}); staged files are served, the others cannot be recalled until it answers"
                ),
            ),
            ServerView::Unknown => previous
                .iter()
                .find(|c| {
                    c.type_ == ConditionType::Degraded.as_str()
                        && c.reason == TAPE_UNAVAILABLE
                        && c.observed_generation == generation
                })
                .map_or(degraded, |c| {
                    Cond::new(
                        ConditionType::Degraded,
                        c.status == "True",
                        TAPE_UNAVAILABLE,
                        c.message.clone(),
                    )
                }),
            _ => degraded,
        };
        return [ready, progressing, degraded];
    }
    if !rollout.observed {
        return [ready, progressing, degraded];
    }
    match server {
        ServerView::Opening {
            waiting_for,
            retry_after,
        } => {
            let expected = retry_after.map_or(String::new(), |s| {
                format!("; expected in {} (the server's Retry-After)", expected_in(s))
            });
            let ready = Cond::new(
                ConditionType::Ready,
                false,
                OPENING,
                format!("dataset '{dataset}' is still opening on the server: {waiting_for}{expected}"),
            );
            [ready, progressing, degraded]
        }
        ServerView::Failed(why) => {
            let message = format!("dataset '{dataset}' could not be opened: {why}");
            [
                Cond::new(ConditionType::Ready, false, OPEN_FAILED, message.clone()),
                progressing,
                Cond::new(ConditionType::Degraded, true, OPEN_FAILED, message),
            ]
        }
        ServerView::Ready | ServerView::TapeFailing(_) => [ready, progressing, degraded],
        ServerView::Unknown => {
            let kept = |t: ConditionType, reason: &'static str| {
                previous
                    .iter()
                    .find(|c| {
                        c.type_ == t.as_str() && c.reason == reason && c.observed_generation == generation
                    })
                    .map(|c| Cond::new(t, c.status == "True", reason, c.message.clone()))
            };
            match (
                kept(ConditionType::Ready, OPENING),
                kept(ConditionType::Ready, OPEN_FAILED),
            ) {
                (Some(r), _) => [r, progressing, degraded],
                (None, Some(r)) => {
                    let d = kept(ConditionType::Degraded, OPEN_FAILED).unwrap_or(degraded);
                    [r, progressing, d]
                }
                (None, None) => [ready, progressing, degraded],
            }
        }
    }
}

/// Reason of `Ready=False` while the server still opens the dataset.
pub const OPENING: &str = "Opening";
/// Reason of `Ready=False` and `Degraded=True` when the server could not open the dataset.
pub const OPEN_FAILED: &str = "OpenFailed";
/// Reason of `Degraded=True` while a served dataset's tape archive fails its health checks.
pub const TAPE_UNAVAILABLE: &str = "TapeUnavailable";

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

    /// A Deployment of one unavailable replica whose rollout ran past its progress deadline.
    fn past_deadline(message: &str) -> Deployment {
        let mut d = deployment(1, 1, 1, 1, 0);
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some(message.into()),
                ..DeploymentCondition::default()
            }]);
        }
        d
    }

    #[test]
    fn progress_deadline_is_degraded() {
        let d = past_deadline("ReplicaSet \"tas-1\" has timed out progressing.");
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

    const TAPE: &[u8] = br#"{"datasets": [
        {"name": "other", "state": "ready", "files": 1, "not_served": []},
        {"name": "tas", "state": "opening", "since_seconds": 12,
         "waiting_for": "recalling its files from tape to index them", "retry_after_seconds": 150}
    ]}"#;

    fn unavailable() -> Rollout {
        Rollout::of(&deployment(1, 1, 1, 1, 0))
    }

    #[test]
    fn server_status_is_read_for_the_dataset_only() {
        assert_eq!(
            ServerView::parse("tas", TAPE),
            ServerView::Opening {
                waiting_for: "recalling its files from tape to index them".into(),
                retry_after: Some(150),
            }
        );
        assert_eq!(ServerView::parse("other", TAPE), ServerView::Ready);
        assert_eq!(ServerView::parse("absent", TAPE), ServerView::Unknown);
        let failed =
            br#"{"datasets": [{"name": "tas", "state": "failed", "error": "slk: command not found"}]}"#;
        assert_eq!(
            ServerView::parse("tas", failed),
            ServerView::Failed("slk: command not found".into())
        );
        // an older server without retry_after_seconds
        let old =
            br#"{"datasets": [{"name": "tas", "state": "opening", "waiting_for": "opening its files"}]}"#;
        assert!(matches!(
            ServerView::parse("tas", old),
            ServerView::Opening {
                retry_after: None,
                ..
            }
        ));
        // malformed: not JSON, the wrong shape, an unknown state
        for body in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            br#"{"datasets": {"tas": "opening"}}"#,
            br#"[{"name": "tas", "state": "opening"}]"#,
            br#"{"datasets": [{"name": "tas", "state": "exploded"}]}"#,
            br#"{"datasets": [{"name": "tas", "state": "opening", "retry_after_seconds": "soon"}"#,
        ] {
            assert_eq!(
                ServerView::parse("tas", body),
                ServerView::Unknown,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_opening_dataset_is_not_ready_with_reason_opening() {
        let r = unavailable();
        let view = ServerView::parse("tas", TAPE);
        let [ready, progressing, degraded] = with_server(&r, &view, "tas", &[], Some(1));
        assert_eq!((ready.status, ready.reason), (false, "Opening"));
        assert_eq!(
            ready.message,
            "dataset 'tas' is still opening on the server: recalling its files from tape to index \
             them; expected in about 3 min (the server's Retry-After)"
        );
        assert_eq!(progressing, r.conditions()[1]);
        assert_eq!((degraded.status, degraded.reason), (false, "Reconciled"));
        assert_eq!(view.poll(), Duration::from_secs(60));
        // no estimate: no promise; a short one is polled no faster than every 5 s
        let plain = ServerView::Opening {
            waiting_for: "opening its files".into(),
            retry_after: None,
        };
        let [ready, _, _] = with_server(&r, &plain, "tas", &[], Some(1));
        assert_eq!(
            ready.message,
            "dataset 'tas' is still opening on the server: opening its files"
        );
        let soon = ServerView::Opening {
            waiting_for: "x".into(),
            retry_after: Some(1),
        };
        assert!(
            with_server(&r, &soon, "tas", &[], Some(1))[0]
                .message
                .contains("under a minute")
        );
        assert_eq!(soon.poll(), Duration::from_secs(5));
        assert_eq!(expected_in(7200), "about 2 h");
    }

    #[test]
    fn a_failed_opening_is_degraded_with_the_servers_reason() {
        // even past the progress deadline the server's reason is the one to show
        let d = past_deadline("timed out");
        let view =
            ServerView::Failed("recall of /arch/t.nc not finished within indexWaitSeconds (3600 s)".into());
        for r in [unavailable(), Rollout::of(&d)] {
            let [ready, _, degraded] = with_server(&r, &view, "tas", &[], Some(1));
            assert_eq!((ready.status, ready.reason), (false, "OpenFailed"));
            assert_eq!((degraded.status, degraded.reason), (true, "OpenFailed"));
            assert_eq!(
                degraded.message,
                "dataset 'tas' could not be opened: recall of /arch/t.nc not finished within \
                 indexWaitSeconds (3600 s)"
            );
        }
        assert_eq!(view.poll(), Duration::from_secs(60));
    }

    #[test]
    fn an_available_replica_or_an_unobserved_spec_leaves_the_deployments_view() {
        let failed = ServerView::Failed("broken".into());
        let served = Rollout::of(&deployment(2, 2, 1, 1, 1));
        assert_eq!(
            with_server(&served, &failed, "tas", &[], Some(2)),
            served.conditions()
        );
        let pending = Rollout::of(&deployment(3, 2, 1, 1, 0));
        assert_eq!(
            with_server(&pending, &failed, "tas", &[], Some(3)),
            pending.conditions()
        );
        // the server says ready before the pod's readiness probe has: the Deployment's view
        let r = unavailable();
        assert_eq!(
            with_server(&r, &ServerView::Ready, "tas", &[], Some(1)),
            r.conditions()
        );
    }

    #[test]
    fn an_unreachable_server_keeps_what_was_known_for_this_generation() {
        let r = unavailable();
        let t0 = Timestamp::from_second(1_700_000_000).expect("time");
        // nothing known before: the Deployment's view
        let [ready, _, degraded] = with_server(&r, &ServerView::Unknown, "tas", &[], Some(1));
        assert_eq!((ready.reason, degraded.status), ("Unavailable", false));
        assert_eq!(ServerView::Unknown.poll(), Duration::from_secs(10));

        // failed before: still failed (no Degraded flapping on a poll that timed out)
        let failed = with_server(&r, &ServerView::Failed("broken".into()), "tas", &[], Some(1));
        let old = merge(&[], &failed, Some(1), t0);
        let again = with_server(&r, &ServerView::Unknown, "tas", &old, Some(1));
        assert_eq!(again, failed);
        assert_eq!(merge(&old, &again, Some(1), t0), old);

        // opening before: still opening, with the message last read
        let opening = with_server(&r, &ServerView::parse("tas", TAPE), "tas", &[], Some(1));
        let old = merge(&[], &opening, Some(1), t0);
        assert_eq!(
            with_server(&r, &ServerView::Unknown, "tas", &old, Some(1)),
            opening
        );

        // but not across a spec change: the new pods may open quite differently
        let [ready, _, degraded] = with_server(&r, &ServerView::Unknown, "tas", &old, Some(2));
        assert_eq!((ready.reason, degraded.reason), ("Unavailable", "Reconciled"));
    }

    const TAPE_FAILING: &[u8] = br#"{"datasets": [
        {"name": "tas", "state": "ready", "files": 3, "not_served": [],
         "tape": {"state": "failing", "error": "POST https://tape.example/api/v1/tape/archiveinfo: connection refused",
                  "since_seconds": 40, "checked_seconds_ago": 2}},
        {"name": "fine", "state": "ready", "files": 3, "not_served": [],
         "tape": {"state": "ok", "since_seconds": 40, "checked_seconds_ago": 2}}
    ]}"#;

    #[test]
    fn a_served_dataset_whose_tape_archive_fails_is_degraded_but_ready() {
        let view = ServerView::parse("tas", TAPE_FAILING);
        assert_eq!(
            view,
            ServerView::TapeFailing(
                "POST https://tape.example/api/v1/tape/archiveinfo: connection refused".into()
            )
        );
        assert_eq!(ServerView::parse("fine", TAPE_FAILING), ServerView::Ready);
        let served = Rollout::of(&deployment(2, 2, 1, 1, 1));
        let [ready, progressing, degraded] = with_server(&served, &view, "tas", &[], Some(2));
        assert_eq!((ready.status, ready.reason), (true, "Available"));
        assert_eq!(progressing, served.conditions()[1]);
        assert_eq!((degraded.status, degraded.reason), (true, TAPE_UNAVAILABLE));
        assert!(
            degraded.message.contains("connection refused")
                && degraded.message.contains("staged files are served"),
            "{}",
            degraded.message
        );
        // the archive answers again: Degraded clears
        assert_eq!(
            with_server(&served, &ServerView::Ready, "tas", &[], Some(2)),
            served.conditions()
        );
        // a rollout past its deadline says more than the archive: its Degraded stays
        let mut late = Rollout::of(&past_deadline("timed out"));
        late.available = 1;
        let [_, _, d] = with_server(&late, &view, "tas", &[], Some(2));
        assert_eq!(d.reason, "ProgressDeadlineExceeded");
    }

    #[test]
    fn an_unanswered_read_keeps_a_failing_archive_for_this_generation() {
        let served = Rollout::of(&deployment(2, 2, 1, 1, 1));
        let t0 = Timestamp::from_second(1_700_000_000).expect("time");
        let failing = with_server(
            &served,
            &ServerView::parse("tas", TAPE_FAILING),
            "tas",
            &[],
            Some(2),
        );
        let old = merge(&[], &failing, Some(2), t0);
        assert_eq!(
            with_server(&served, &ServerView::Unknown, "tas", &old, Some(2)),
            failing
        );
        // not across a spec change, nor once the silence lasted (the caller passes nothing)
        assert_eq!(
            with_server(&served, &ServerView::Unknown, "tas", &old, Some(3)),
            served.conditions()
        );
        assert_eq!(
            with_server(&served, &ServerView::Unknown, "tas", &[], Some(2)),
            served.conditions()
        );
    }

    #[test]
    fn a_served_tape_dataset_is_read_at_the_archive_checks_pace() {
        assert_eq!(tape_poll(None), Duration::from_secs(60));
        assert_eq!(tape_poll(Some(1)), Duration::from_secs(10));
        assert_eq!(tape_poll(Some(120)), Duration::from_secs(120));
        assert_eq!(tape_poll(Some(86_400)), Duration::from_secs(300));
    }
}

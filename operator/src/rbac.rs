//! The RBAC rules the operator needs, derived from what it does.
//!
//! The rules for owned objects come from [`OWNED`], the same list apply, prune and the
//! watches walk, so a new owned kind gets its permissions with it. The Helm chart writes the
//! rules out by hand in `charts/cloudify/templates/rbac.yaml` (with a comment per rule saying
//! why), and a test (`operator/tests/rbac.rs`) fails when the chart grants a permission that
//! is not listed here or misses one that is — least privilege, kept in step with the code.
//!
//! Two roles: [`operator_rules`] (a ClusterRole, or a Role in the watched namespace) and
//! [`lease_rules`] (a Role in the operator's own namespace, for leader election).

use std::collections::BTreeSet;

use cloudify_crds::k8s::CloudifyDataset;
use kube::Resource;

use crate::build::OWNED;

/// One RBAC rule: verbs on one resource of one API group, and why the operator needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group, `""` for the core group.
    pub api_group: String,
    /// Resource (plural), or `resource/subresource`.
    pub resource: String,
    /// The one object the rule is limited to, if any (`resourceNames`).
    pub resource_name: Option<String>,
    /// Verbs allowed.
    pub verbs: Vec<&'static str>,
    /// What the operator does with them.
    pub why: String,
}

impl Rule {
    fn new(api_group: &str, resource: &str, verbs: &[&'static str], why: &str) -> Self {
        Self {
            api_group: api_group.into(),
            resource: resource.into(),
            resource_name: None,
            verbs: verbs.to_vec(),
            why: why.into(),
        }
    }
}

/// A single permission: `(apiGroup, resource, verb, resourceName)`.
pub type Permission = (String, String, String, Option<String>);

/// Verbs the operator uses on every kind in [`OWNED`], and what for.
pub const OWNED_VERBS: [(&str, &str); 6] = [
    (
        "get",
        "read one object back (the Deployment, whose rollout an invalid spec still reports)",
    ),
    (
        "list",
        "the watch of owned objects starts with a list; prune lists them by label",
    ),
    (
        "watch",
        "a change to an owned object (deleted, status moved) reconciles its dataset",
    ),
    (
        "create",
        "server-side apply of an object that does not exist yet creates it",
    ),
    ("patch", "server-side apply"),
    ("delete", "prune deletes objects the spec no longer wants"),
];

/// The rules of the operator's ClusterRole (or Role in `--namespace`).
pub fn operator_rules() -> Vec<Rule> {
    let group = CloudifyDataset::group(&());
    let plural = CloudifyDataset::plural(&());
    let mut rules = vec![
        Rule::new(
            &group,
            &plural,
            &["get", "list", "watch", "patch"],
            "watch CloudifyDatasets (list+watch feed the controller, get re-reads one) and \
             patch them to add/remove the catalog-registration finalizer",
        ),
        Rule::new(
            &group,
            &format!("{plural}/status"),
            &["patch"],
            "report conditions, url and replicas in the status subresource",
        ),
        Rule::new(
            &group,
            &format!("{plural}/finalizers"),
            &["update"],
            "owner references with blockOwnerDeletion need update on the owner's finalizers \
             where the OwnerReferencesPermissionEnforcement admission plugin runs",
        ),
    ];
    let verbs: Vec<&'static str> = OWNED_VERBS.iter().map(|(verb, _)| *verb).collect();
    rules.extend(
        OWNED
            .iter()
            .map(|kind| Rule::new(kind.group, kind.plural, &verbs, kind.purpose)),
    );
    rules.push(Rule::new(
        "",
        "secrets",
        &["get", "create", "patch"],
        "read the catalog token Secrets that CloudifyDatasets name, and keep each dataset's \
         <name>-internal Secret (compute and signing keys); never list or watch, so no \
         Secret a dataset does not name can be read",
    ));
    rules.push(Rule::new(
        "events.k8s.io",
        "events",
        &["create", "patch"],
        "Kubernetes Events for dataset transitions (patch updates a repeated event's series)",
    ));
    rules
}

/// The rules of the leader-election Role for the Lease `lease` (in the operator's namespace).
pub fn lease_rules(lease: &str) -> Vec<Rule> {
    vec![
        Rule::new(
            "coordination.k8s.io",
            "leases",
            &["create"],
            "create the Lease on first start (create cannot be limited to a name)",
        ),
        Rule {
            resource_name: Some(lease.into()),
            ..Rule::new(
                "coordination.k8s.io",
                "leases",
                &["get", "update", "patch"],
                "read, renew and take over only the operator's own Lease",
            )
        },
    ]
}

/// Every single permission the rules grant, for comparing rule sets however they are grouped.
pub fn permissions(rules: &[Rule]) -> BTreeSet<Permission> {
    rules
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(|verb| {
                (
                    r.api_group.clone(),
                    r.resource.clone(),
                    (*verb).to_string(),
                    r.resource_name.clone(),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_owned_kind_gets_every_owned_verb() {
        let granted = permissions(&operator_rules());
        for kind in &OWNED {
            for (verb, _) in OWNED_VERBS {
                let p = (
                    kind.group.to_string(),
                    kind.plural.to_string(),
                    verb.to_string(),
                    None,
                );
                assert!(granted.contains(&p), "{p:?} missing");
            }
        }
    }

    #[test]
    fn no_wildcards() {
        for r in operator_rules().iter().chain(&lease_rules("l")) {
            assert!(!r.resource.contains('*') && !r.verbs.contains(&"*"), "{r:?}");
            assert!(!r.why.is_empty(), "{r:?}");
        }
    }
}

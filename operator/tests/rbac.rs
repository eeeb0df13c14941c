//! The Helm chart's RBAC (`charts/cloudify/templates/rbac.yaml`) against the rules the
//! operator derives from what it does ([`cloudify_operator::rbac`]): the chart must grant
//! exactly those permissions, no more (least privilege) and no less (or the operator fails
//! with 403 in a cluster). The chart's rules are written by hand, one commented rule per
//! reason; this test reads them without Helm (the rule blocks are plain YAML).

use std::collections::BTreeSet;
use std::path::Path;

use cloudify_operator::rbac::{Permission, lease_rules, operator_rules, permissions};
use serde_yaml::Value;

const TEMPLATE: &str = "charts/cloudify/templates/rbac.yaml";
/// Stands for the templated lease name in the chart's leader-election Role.
const LEASE: &str = "LEASE-NAME";

fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(TEMPLATE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between `start` and the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{TEMPLATE}: no `{start}`"))
        + start.len();
    let len = text[from..]
        .find(end)
        .unwrap_or_else(|| panic!("{TEMPLATE}: no `{end}` after `{start}`"));
    &text[from..from + len]
}

/// The permissions of a YAML list of rules.
fn chart_permissions(rules_yaml: &str) -> BTreeSet<Permission> {
    let rules: Vec<Value> = serde_yaml::from_str(rules_yaml)
        .unwrap_or_else(|e| panic!("{TEMPLATE}: rules do not parse: {e}\n{rules_yaml}"));
    assert!(!rules.is_empty(), "{TEMPLATE}: no rules in\n{rules_yaml}");
    let strings = |rule: &Value, key: &str| -> Vec<Option<String>> {
        match rule.get(key) {
            None => vec![None],
            Some(v) => v
                .as_sequence()
                .unwrap_or_else(|| panic!("{TEMPLATE}: {key} is not a list in {rule:?}"))
                .iter()
                .map(|s| {
                    Some(
                        s.as_str()
                            .unwrap_or_else(|| panic!("{TEMPLATE}: {key} item {s:?} is not a string"))
                            .to_string(),
                    )
                })
                .collect(),
        }
    };
    let mut out = BTreeSet::new();
    for rule in &rules {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                for verb in strings(rule, "verbs") {
                    for name in strings(rule, "resourceNames") {
                        let field = |v: &Option<String>, key: &str| {
                            v.clone()
                                .unwrap_or_else(|| panic!("{TEMPLATE}: rule without {key}: {rule:?}"))
                        };
                        out.insert((
                            field(&group, "apiGroups"),
                            field(&resource, "resources"),
                            field(&verb, "verbs"),
                            name,
                        ));
                    }
                }
            }
        }
    }
    out
}

fn assert_same(what: &str, chart: &BTreeSet<Permission>, code: &BTreeSet<Permission>) {
    let extra: Vec<_> = chart.difference(code).collect();
    let missing: Vec<_> = code.difference(chart).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: {TEMPLATE} disagrees with cloudify_operator::rbac.\n\
         granted by the chart but not needed by the operator: {extra:?}\n\
         needed by the operator but not granted by the chart: {missing:?}"
    );
}

#[test]
fn chart_grants_exactly_the_operator_rules() {
    let text = template();
    let block = between(&text, "{{- define \"cloudify.operatorRules\" -}}", "{{- end }}");
    assert_same(
        "operator (Cluster)Role",
        &chart_permissions(block),
        &permissions(&operator_rules()),
    );
}

#[test]
fn chart_grants_exactly_the_lease_rules() {
    let text = template();
    // The Role up to the `---` before its RoleBinding; its rules are the last field.
    let role = between(
        &text,
        "{{- if .Values.operator.leaderElection.enabled }}\n---\n",
        "\n---",
    );
    let rules = role
        .split_once("\nrules:\n")
        .unwrap_or_else(|| panic!("{TEMPLATE}: leader-election Role without rules"))
        .1;
    let rules = rules.replace("{{ include \"cloudify.leaseName\" . | quote }}", LEASE);
    assert_same(
        "leader-election Role",
        &chart_permissions(&rules),
        &permissions(&lease_rules(LEASE)),
    );
}

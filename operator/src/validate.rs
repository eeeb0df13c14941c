//! Validation of a `CloudifyDataset` before anything is built.
//!
//! The CRD schema (types, ranges, patterns, CEL rules) rejects most bad manifests at
//! admission. This step repeats those checks and adds what the schema cannot express, for two
//! reasons: `render` sees manifests that never went through an API server, and the operator
//! must not act on an object stored under an older, laxer schema. Every error names the field
//! (`spec.replicas.min`) the way `kubectl` does, and all errors are reported at once.

use std::collections::HashSet;

use cloudify_crds::SpecError;
use cloudify_crds::k8s::{CloudifyDataset, CloudifyDatasetSpec, ComputeSpec, Replicas};
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::layout::{ACCESS_DIR, CACHE_DIR, COMPUTE_SUFFIX, CONFIG_DIR, INTERNAL_DIR};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ingress.host`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A CR that cannot be served as written. The reconciler reports it as `Degraded` and waits
/// for the spec to change instead of retrying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid CloudifyDataset '{name}': {}", join(.errors))]
pub struct InvalidSpec {
    /// `metadata.name` of the CR (empty when missing).
    pub name: String,
    pub errors: Vec<FieldError>,
}

impl InvalidSpec {
    /// Whether some error is about `field` (or a field below it).
    pub fn names(&self, field: &str) -> bool {
        self.errors.iter().any(|e| {
            e.field == field
                || e.field
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks everything about `cr` that must hold before objects are built.
///
/// `spec.dataset.name` may be left out: it defaults to `metadata.name`, and is checked as
/// resolved (see [`CloudifyDataset::resolve_defaults`]).
pub fn validate(cr: &CloudifyDataset) -> Result<(), InvalidSpec> {
    if cr.spec.dataset.name.is_empty() && cr.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) {
        return validate(&cr.clone().resolved());
    }
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| errors.push(FieldError::new(field, message));

    match cr.metadata.name.as_deref() {
        None => fail("metadata.name", "required".into()),
        Some(name) => {
            if let Err(reason) = dns_1035_label(name) {
                fail(
                    "metadata.name",
                    format!("{reason}; it names the Service, which must be a DNS-1035 label"),
                );
            } else if cr.spec.compute_enabled().is_some()
                && let Err(reason) = dns_1035_label(&format!("{name}{COMPUTE_SUFFIX}"))
            {
                fail(
                    "metadata.name",
                    format!(
                        "{reason}: with spec.compute enabled it also names the Service \
                         '<name>{COMPUTE_SUFFIX}', which must be a DNS-1035 label"
                    ),
                );
            }
        }
    }
    if cr.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        fail("metadata.namespace", "required".into());
    }
    validate_spec(&cr.spec, &mut fail);

    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec {
            name: cr.metadata.name.clone().unwrap_or_default(),
            errors,
        })
    }
}

fn validate_spec(spec: &CloudifyDatasetSpec, fail: &mut impl FnMut(&str, String)) {
    if let Err(e) = spec.dataset.validate(0) {
        let (field, message) = match e {
            SpecError::Name { reason, .. } => (
                "spec.dataset.name".to_string(),
                if spec.dataset.name.is_empty() {
                    // only when metadata.name is missing too (reported on its own)
                    "required when metadata.name is not set (it defaults to metadata.name)".to_string()
                } else {
                    reason
                },
            ),
            SpecError::NoSources { .. } => (
                "spec.dataset.sources".to_string(),
                "at least one source is required".to_string(),
            ),
            SpecError::Source {
                source_index, reason, ..
            } => (format!("spec.dataset.sources[{source_index}]"), reason),
            SpecError::ConcatDim { .. } => ("spec.dataset.concatDim".to_string(), "must not be empty".into()),
            SpecError::Storage { field, reason, .. } => (format!("spec.dataset.storage.{field}"), reason),
            SpecError::Icechunk { reason, .. } => ("spec.dataset.icechunk".to_string(), reason),
            SpecError::Processing { field, reason, .. } => {
                (format!("spec.dataset.processing.{field}"), reason)
            }
            SpecError::Access { field, reason, .. } => (format!("spec.dataset.access.{field}"), reason),
            // A single dataset cannot collide with itself; kept for exhaustiveness.
            SpecError::Duplicate { name, .. } => (
                "spec.dataset.name".to_string(),
                format!("duplicate dataset name '{name}'"),
            ),
        };
        fail(&field, message);
    }

    if let Some(image) = &spec.image
        && (image.is_empty() || image.chars().any(char::is_whitespace))
    {
        fail("spec.image", format!("'{image}' is not an image reference"));
    }

    validate_pool(
        &Pool {
            at: "spec",
            replicas: &spec.replicas,
            target_cpu_utilization: spec.target_cpu_utilization,
            max_utilization: 1000,
            resources: spec.resources.as_ref(),
            zero_hint: "",
        },
        fail,
    );

    if let Some(compute) = spec.compute_enabled() {
        validate_compute(compute, fail);
    }

    let mut mount_paths = HashSet::new();
    for (i, v) in spec.data_volumes.iter().enumerate() {
        let field = format!("spec.dataVolumes[{i}]");
        if let Err(reason) = dns_1123_subdomain(&v.claim_name) {
            fail(&format!("{field}.claimName"), reason);
        }
        let path = v.mount_path.trim_end_matches('/');
        if !v.mount_path.starts_with('/') {
            fail(
                &format!("{field}.mountPath"),
                format!("'{}' must be absolute", v.mount_path),
            );
        } else if [CONFIG_DIR, CACHE_DIR, ACCESS_DIR, INTERNAL_DIR, "/tmp", ""]
            .iter()
            .any(|reserved| {
                path == *reserved || (!reserved.is_empty() && path.starts_with(&format!("{reserved}/")))
            })
        {
            fail(
                &format!("{field}.mountPath"),
                format!("'{}' is used by the server itself (or is the root)", v.mount_path),
            );
        } else if !mount_paths.insert(path) {
            fail(
                &format!("{field}.mountPath"),
                format!("'{}' is already used by another data volume", v.mount_path),
            );
        }
        if let Some(sub) = &v.sub_path
            && (sub.starts_with('/') || sub.split('/').any(|c| c == ".."))
        {
            fail(
                &format!("{field}.subPath"),
                format!("'{sub}' must be a relative path without '..'"),
            );
        }
    }

    if let Some(tape) = spec.dataset.storage.as_ref().and_then(|s| s.tape.as_ref()) {
        validate_tape(spec, tape, &mount_paths, fail);
    }

    let ingress = &spec.ingress;
    if let Some(host) = &ingress.host
        && let Err(reason) = host_name(host)
    {
        fail("spec.ingress.host", reason);
    }
    if let Some(path) = &ingress.path
        && !path.starts_with('/')
    {
        fail("spec.ingress.path", format!("'{path}' must start with '/'"));
    }
    if ingress.class_name.is_empty() {
        fail("spec.ingress.className", "must not be empty".into());
    }
    if ingress.tls_secret.is_some() && ingress.host.is_none() {
        fail(
            "spec.ingress.tlsSecret",
            "needs spec.ingress.host: a certificate is for a host name".into(),
        );
    }
    if let Some(secret) = &ingress.tls_secret
        && let Err(reason) = dns_1123_subdomain(secret)
    {
        fail("spec.ingress.tlsSecret", reason);
    }

    if let Some(u) = &spec.public_url
        && let Err(reason) = base_url(u)
    {
        fail("spec.publicUrl", reason);
    }
    let catalog = &spec.catalog;
    if let Some(u) = &catalog.url
        && let Err(reason) = base_url(u)
    {
        fail("spec.catalog.url", reason);
    }
    if matches!(&catalog.collection, Some(c) if c.trim().is_empty()) {
        fail("spec.catalog.collection", "must not be empty".into());
    }
    if let Some(secret) = &catalog.token_secret
        && let Err(reason) = dns_1123_subdomain(&secret.name)
    {
        fail("spec.catalog.tokenSecret.name", reason);
    }

    if !spec.access.public && spec.access.token_secret.is_none() {
        fail(
            "spec.access.tokenSecret",
            "required when spec.access.public is false".into(),
        );
    }
    if let Some(secret) = &spec.access.token_secret
        && let Err(reason) = dns_1123_subdomain(&secret.name)
    {
        fail("spec.access.tokenSecret.name", reason);
    }
    if spec.access.public && spec.access.register {
        fail(
            "spec.access.register",
            "is consent to register a private dataset; a public one is registered as spec.catalog.register says".into(),
        );
    }
    // The dataset's own access block names files of the pod, which only the operator lays
    // out: access is set through spec.access (the operator mounts the Secret).
    if spec.dataset.access != cloudify_crds::DatasetAccess::default() {
        fail(
            "spec.dataset.access",
            "set access through spec.access (tokenSecret), which the operator mounts into the server".into(),
        );
    }
}

/// A dataset on tape: its staging directory is where the operator mounts the staging volume
/// (`build::tape`), so it must be a path of its own; a persistent cache is one pod's.
fn validate_tape(
    spec: &CloudifyDatasetSpec,
    tape: &cloudify_crds::TapeSpec,
    data_mounts: &HashSet<&str>,
    fail: &mut impl FnMut(&str, String),
) {
    let field = "spec.dataset.storage.tape.stagingDir";
    let dir = tape.staging_dir.trim_end_matches('/');
    let under =
        |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"));
    if !tape.staging_dir.starts_with('/') {
        fail(field, format!("'{}' must be absolute", tape.staging_dir));
    } else if dir.is_empty()
        || [CONFIG_DIR, CACHE_DIR, ACCESS_DIR, "/tmp"]
            .iter()
            .any(|reserved| under(dir, reserved))
    {
        fail(
            field,
            format!(
                "'{}' is used by the server itself (or is the root)",
                tape.staging_dir
            ),
        );
    } else if data_mounts.iter().any(|m| under(dir, m)) {
        fail(
            field,
            format!("'{}' overlaps a data volume's mountPath", tape.staging_dir),
        );
    }
    if tape.cache.as_ref().is_some_and(|c| c.is_persistent()) && spec.replicas.max > 1 {
        fail(
            "spec.dataset.storage.tape.cache",
            format!(
                "a persistent staging cache is one pod's (ReadWriteOnce, one budget), but \
                 spec.replicas.max is {}: set it to 1, or drop storageClassName/persistent for an \
                 emptyDir per pod",
                spec.replicas.max
            ),
        );
    }
}

/// `spec.compute` when enabled (a disabled block is kept as written and not checked: nothing is
/// built from it).
fn validate_compute(compute: &ComputeSpec, fail: &mut impl FnMut(&str, String)) {
    validate_pool(
        &Pool {
            at: "spec.compute",
            replicas: &compute.replicas,
            target_cpu_utilization: compute.target_cpu_utilization,
            max_utilization: 100,
            resources: compute.resources.as_ref(),
            zero_hint: " when compute is enabled",
        },
        fail,
    );
}

/// An autoscaled pool of pods (the servers, or the compute workers) as its spec describes it.
struct Pool<'a> {
    /// Where its fields are (`spec`, `spec.compute`), for the messages.
    at: &'a str,
    replicas: &'a Replicas,
    target_cpu_utilization: Option<i32>,
    /// Largest utilisation target accepted (percent of the CPU request).
    max_utilization: i32,
    resources: Option<&'a ResourceRequirements>,
    /// Said after "must be at least 1" for `replicas.min`.
    zero_hint: &'a str,
}

/// The rules both pools follow: at least one replica, min <= max, a utilisation target in
/// range, and a CPU request whenever an autoscaler (whose target is relative to it) is made.
fn validate_pool(p: &Pool, fail: &mut impl FnMut(&str, String)) {
    let (at, replicas) = (p.at, p.replicas);
    if replicas.min < 1 {
        let off = if at == "spec" {
            String::new()
        } else {
            format!("; set {at}.enabled: false instead")
        };
        fail(
            &format!("{at}.replicas.min"),
            format!(
                "{} must be at least 1{} (an autoscaler cannot scale to zero{off})",
                replicas.min, p.zero_hint
            ),
        );
    }
    if replicas.max < 1 {
        fail(
            &format!("{at}.replicas.max"),
            format!("{} must be at least 1", replicas.max),
        );
    }
    if replicas.min > replicas.max {
        fail(
            &format!("{at}.replicas.min"),
            format!(
                "{} must not be greater than {at}.replicas.max ({})",
                replicas.min, replicas.max
            ),
        );
    }
    if let Some(t) = p.target_cpu_utilization
        && !(1..=p.max_utilization).contains(&t)
    {
        fail(
            &format!("{at}.targetCpuUtilization"),
            format!(
                "{t} must be between 1 and {} (percent of the CPU request)",
                p.max_utilization
            ),
        );
    }
    let cpu_request = p
        .resources
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key("cpu"));
    if replicas.autoscaled() && !cpu_request {
        fail(
            &format!("{at}.resources.requests.cpu"),
            format!(
                "required when {at}.replicas.max > {at}.replicas.min: the autoscaler's CPU \
                 utilisation is relative to the request"
            ),
        );
    }
}

/// A DNS-1035 label: what Service names must be.
pub(crate) fn dns_1035_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("'{s}' must be 1 to 63 characters"));
    }
    let first_letter = s.starts_with(|c: char| c.is_ascii_lowercase());
    let last_ok = s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if first_letter && last_ok && chars_ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' must consist of lowercase letters, digits and '-', start with a letter and \
             end with a letter or digit"
        ))
    }
}

/// A DNS-1123 subdomain: what names of ConfigMaps, Secrets and claims must be.
fn dns_1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("'{s}' must be 1 to 253 characters"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// An ingress host: a DNS name, optionally with a leading `*.` wildcard.
fn host_name(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    dns_1123_subdomain(name)
        .map_err(|_| format!("'{host}' must be a lowercase DNS name without scheme, port or path"))
}

/// An `http(s)` URL usable as a base: no query or fragment.
fn base_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{text}' must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{text}' has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{text}' must not have a query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_1035_label("tas-daily").is_ok());
        assert!(dns_1035_label("1tas").is_err());
        assert!(dns_1035_label("tas_daily").is_err());
        assert!(dns_1035_label(&"a".repeat(64)).is_err());
        assert!(dns_1123_subdomain("data.pvc-1").is_ok());
        assert!(dns_1123_subdomain("Data").is_err());
        assert!(host_name("*.example.org").is_ok());
        assert!(host_name("https://example.org").is_err());
        assert!(base_url("https://data.example.org/base").is_ok());
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("https://x/?a=1").is_err());
    }
}

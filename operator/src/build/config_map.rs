//! The ConfigMap holding the server's `--config` file.

use cloudify_crds::{DatasetAccess, ServeConfig};

use crate::layout::{ACCESS_DIR, INTERNAL_DIR, SIGNING_KEY_KEY};
use k8s_openapi::api::core::v1::ConfigMap;
use std::collections::BTreeMap;

use super::meta::Target;
use super::{BuildError, CONFIG_FILE};

/// `cloudify.yaml` with the CR's one dataset: the same file format as on-prem, so the server
/// needs no Kubernetes-specific code path.
pub(crate) fn config_map(target: &Target) -> Result<ConfigMap, BuildError> {
    let mut dataset = target.cr.spec.dataset.clone();
    if let Some(tape) = dataset.storage.as_mut().and_then(|s| s.tape.as_mut()) {
        // the budget that fits the volume mounted at stagingDir (`tape::volume`)
        tape.budget_bytes = super::tape::budget(tape);
    }
    let access = &target.cr.spec.access;
    if !access.public
        && let Some(secret) = &access.token_secret
    {
        // the Secret's key, mounted by the Deployment (`deployment::pod_spec`)
        dataset.access = DatasetAccess {
            public: false,
            token_file: Some(format!("{ACCESS_DIR}/{}", secret.key)),
            // with consent to register, the operator reads the item with URLs it signs
            signed_url_key_file: target
                .cr
                .spec
                .registers_private()
                .then(|| format!("{INTERNAL_DIR}/{SIGNING_KEY_KEY}")),
            ..DatasetAccess::default()
        };
    }
    let config = ServeConfig {
        datasets: vec![dataset],
    };
    let text = serde_yaml::to_string(&config).map_err(|source| BuildError::Config {
        name: target.name.to_string(),
        source,
    })?;
    Ok(ConfigMap {
        metadata: target.meta(),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), text)])),
        ..ConfigMap::default()
    })
}

//! `cloudify-operator render`: the objects the operator would apply for the CRs in a file.
//!
//! For GitOps review and `kubectl diff`: the output comes from the same [`build`] functions as
//! the reconciler's, so reviewing it is reviewing what will run.

use cloudify_crds::k8s::{API_GROUP_VERSION, CloudifyDataset};
use serde::Deserialize;

use crate::build::{self, BuildError, Settings};

/// Namespace for CRs that name none, as `kubectl apply` would do without `-n`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a file cannot be rendered. Messages name the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: {source}")]
    Parse {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(
        "document {index}: expected apiVersion {API_GROUP_VERSION}, kind CloudifyDataset; found \
         apiVersion '{api_version}', kind '{kind}'"
    )]
    NotADataset {
        index: usize,
        api_version: String,
        kind: String,
    },
    #[error("document {index}: {source}")]
    Build {
        index: usize,
        #[source]
        source: BuildError,
    },
    #[error("no CloudifyDataset in the input")]
    Empty,
}

/// Parses every `CloudifyDataset` in a (multi-document) YAML text. Documents are numbered
/// from 1 in errors; empty documents are skipped.
///
/// Two passes: the first reads each document as plain YAML to check its kind, the second
/// deserializes the typed object straight from the text, so that type errors carry the
/// field path and the line in the user's file.
pub fn parse(text: &str) -> Result<Vec<(usize, CloudifyDataset)>, RenderError> {
    let mut wanted = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|source| RenderError::Parse { index, source })?;
        if value.is_null() {
            wanted.push(false);
            continue;
        }
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if api_version != API_GROUP_VERSION || kind != "CloudifyDataset" {
            return Err(RenderError::NotADataset {
                index,
                api_version,
                kind,
            });
        }
        wanted.push(true);
    }
    let mut out = Vec::new();
    for ((i, doc), wanted) in serde_yaml::Deserializer::from_str(text).enumerate().zip(wanted) {
        if wanted {
            let index = i + 1;
            let cr =
                CloudifyDataset::deserialize(doc).map_err(|source| RenderError::Parse { index, source })?;
            // `spec.dataset.name` defaults to `metadata.name`, as in the reconciler.
            out.push((index, cr.resolved()));
        }
    }
    Ok(out)
}

/// Renders every CR of `text` as multi-document YAML, each CR's objects preceded by a comment
/// with its `status.url`. `namespace` fills CRs that name none.
pub fn render(text: &str, namespace: Option<&str>, settings: &Settings) -> Result<String, RenderError> {
    let crs = parse(text)?;
    if crs.is_empty() {
        return Err(RenderError::Empty);
    }
    let mut out = String::new();
    for (index, mut cr) in crs {
        if cr.metadata.namespace.is_none() {
            cr.metadata.namespace = Some(namespace.unwrap_or(DEFAULT_NAMESPACE).to_string());
        }
        // fresh keys for the internal Secret: applying a render again rotates them (server
        // and workers read the mounted files again); the reconciler keeps existing ones
        let keys = build::internal::keys(None).map_err(|e| RenderError::Build {
            index,
            source: e.into(),
        })?;
        let desired = build::build(&cr, settings)
            .map_err(|source| RenderError::Build { index, source })?
            .with_keys(keys);
        let yaml = desired
            .to_yaml()
            .map_err(|source| RenderError::Build { index, source })?;
        out.push_str(&format!(
            "# CloudifyDataset {}/{}: status.url {}\n",
            cr.metadata.namespace.as_deref().unwrap_or_default(),
            cr.metadata.name.as_deref().unwrap_or_default(),
            desired.url
        ));
        out.push_str(&yaml);
    }
    Ok(out)
}

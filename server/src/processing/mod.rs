//! Processing: datasets whose served values are computed from the sources on request
//! (`DatasetSpec.processing`): lossy BitRound, another served chunk grid, derived variables.
//!
//! Applied once when a dataset opens, as a transformation of the [`Dataset`] model: variables
//! whose values change become `Values::Derived` (computed per block through
//! [`crate::pipeline`]), a new chunk grid is a new `chunks` on the variable. Protocols do not
//! know processing exists: they read blocks from the pipeline as for any variable. Nothing a
//! spec or a request says is run as code: expressions are parsed and type-checked here, then
//! evaluated over blocks.

pub mod derived;
pub mod expr;

use crate::dataset::Dataset;
use cloudify_crds::ProcessingSpec;

/// Why processing cannot be applied to a dataset. Messages name the field (relative to
/// `processing`) and, for expressions, the character position.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    #[error("processing.{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// The dataset with `spec` applied.
pub fn apply(mut ds: Dataset, spec: &ProcessingSpec) -> Result<Dataset, ProcessingError> {
    derived::add(&mut ds, &spec.variables)?;
    if spec.bitround.is_some() || !spec.chunks.is_empty() {
        return Err(ProcessingError::Invalid {
            field: String::new(),
            reason: "processing is not implemented yet".into(),
        });
    }
    Ok(ds)
}

//! `processing.chunks`: another served chunk grid.
//!
//! Only `Variable.chunks` changes: the pipeline assembles any region from the stored chunks
//! it overlaps, and the Zarr layer re-encodes. Memory stays bounded by the served chunk:
//! `pipeline::read_block` decodes one stored chunk at a time straight into the output buffer
//! (`chunk::read::read_into`), so a `{time: 365, lat: 30, lon: 30}` chunk of daily data held
//! in `{1, 180, 360}` stored chunks reads 365 stored chunks but holds one of them at a time
//! plus the 365×30×30 answer.

use std::collections::BTreeMap;

use super::ProcessingError;
use crate::dataset::{Dataset, Variable};

/// Serves every variable having a dimension named in `chunks` in that chunk length along it
/// (clipped to the dimension's length; at least 1). A name that is no dimension of any
/// variable is an error naming `processing.chunks.<dim>`; a length of 0 too.
pub fn apply(ds: &mut Dataset, chunks: &BTreeMap<String, u64>) -> Result<(), ProcessingError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let vars: Vec<Variable> = ds
        .root
        .walk()
        .into_iter()
        .flat_map(|g| g.vars.iter().map(|v| (**v).clone()))
        .collect();
    for (dim, len) in chunks {
        if !vars.iter().any(|v| v.dims.contains(dim)) {
            return Err(ProcessingError::Invalid {
                field: format!("chunks.{dim}"),
                reason: format!("'{dim}' is not a dimension of dataset '{}'", ds.name),
            });
        }
        if *len == 0 {
            return Err(ProcessingError::Invalid {
                field: format!("chunks.{dim}"),
                reason: "a chunk length must be at least 1".into(),
            });
        }
    }
    for mut v in vars {
        let mut changed = false;
        for (i, d) in v.dims.iter().enumerate() {
            if let (Some(len), Some(n), Some(c)) = (chunks.get(d), v.shape.get(i), v.chunks.get_mut(i)) {
                let new = (*len).min(*n).max(1);
                changed |= *c != new;
                *c = new;
            }
        }
        if changed {
            let path = v.path.clone();
            ds.put_variable(v).map_err(|reason| ProcessingError::Invalid {
                field: "chunks".into(),
                reason: format!("{path}: {reason}"),
            })?;
        }
    }
    Ok(())
}

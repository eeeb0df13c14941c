//! Running units of work ([`Task`]): here ([`execute`], what a worker runs too) or on the
//! compute workers when an executor is installed ([`read_chunk`]; reductions send their
//! partials themselves).

use super::exec::{Locator, Output, Task, remote};
use crate::chunk::read::ReadError;
use crate::dataset::{Dataset, Values, Variable};
use crate::dtype::DType;
use crate::pipeline;

/// Runs `task` against `ds` (the dataset its locator names) in this process: the same code
/// the in-process path runs, so a worker's answer is the server's own.
pub fn execute(ds: &Dataset, task: &Task) -> Result<Output, ReadError> {
    let var = ds
        .variable(task.var())
        .ok_or_else(|| ReadError::Block(format!("dataset '{}' has no variable '{}'", ds.name, task.var())))?;
    match task {
        Task::Chunk { index, .. } => Ok(Output::Bytes(pipeline::read_chunk(var, index)?)),
        Task::Partial {
            start, count, slabs, ..
        } => {
            let reduced = match &var.values {
                Values::Derived(d) => d
                    .as_any()
                    .and_then(|a| a.downcast_ref::<super::reduce::Reduced>()),
                Values::Stored { .. } => None,
            }
            .ok_or_else(|| {
                ReadError::Block(format!(
                    "variable '{}' of dataset '{}' is not a reduction",
                    var.path, ds.name
                ))
            })?;
            Ok(Output::Partial(reduced.partial(start, count, slabs)?))
        }
    }
}

/// Whether a chunk of `var` is one unit of work for the compute workers: a computed chunk
/// (derived, BitRounded, rechunked), but not a reduction's (it sends its partials out
/// itself, spread over the workers: [`Task::Partial`]), not a constant's (the groups'
/// labels, already in memory) and not strings.
pub fn sends_chunks(var: &Variable) -> bool {
    use super::reduce::{Constant, Reduced};
    var.dtype != DType::Str
        && pipeline::is_computed(var)
        && match &var.values {
            Values::Derived(d) => d
                .as_any()
                .is_none_or(|a| !a.is::<Reduced>() && !a.is::<Constant>()),
            Values::Stored { .. } => true,
        }
}

/// The decoded bytes of chunk `index` of `var` (as `pipeline::read_chunk`), computed by a
/// compute worker when work is sent out and the chunk is one unit of work
/// ([`sends_chunks`]); `at` is how a worker finds the dataset (`None`: a dataset workers
/// cannot rebuild, computed here).
pub fn read_chunk(at: Option<&Locator>, var: &Variable, index: &[u64]) -> Result<Vec<u8>, ReadError> {
    let (Some(at), Some(remote)) = (at, remote()) else {
        return pipeline::read_chunk(var, index);
    };
    if !sends_chunks(var) {
        return pipeline::read_chunk(var, index);
    }
    let expected = crate::chunk::read::buffer_len(&var.chunks, var.dtype.size())?;
    let task = Task::Chunk {
        at: at.clone(),
        var: var.path.clone(),
        index: index.to_vec(),
    };
    match remote.run_all(vec![task])?.pop() {
        Some(Output::Bytes(b)) if b.len() == expected => Ok(b),
        _ => Err(ReadError::Compute {
            status: 502,
            message: format!(
                "a compute worker answered chunk {index:?} of '{}' with data that does not fit the chunk",
                var.path
            ),
            retry_after: None,
        }),
    }
}

//! Where a unit of processing work runs: in this process, or on the compute workers of
//! `cloudify serve --compute` (`cloudify worker`).
//!
//! A unit of work ([`Task`]) is either a computed chunk of a served variable (derived,
//! BitRounded, rechunked, reduced) or the partial accumulators of a reduction over a run of
//! source chunks ([`Task::Partial`]). Both are idempotent and name their dataset by what
//! any process loading the same configuration can rebuild ([`Locator`]), so a task can be
//! sent to any worker and retried on another.
//!
//! The executor is installed once per process ([`set_remote`]) by the layer that knows
//! about HTTP (`crate::compute`); this layer only knows the [`Executor`] trait, so the
//! computation itself ([`execute`]) is the same code in the server and in the worker.
//! Without an executor (the default) everything runs in-process, as it always did.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::reduce::accum::Acc;
use crate::chunk::read::ReadError;
use crate::dataset::{Dataset, Values, Variable};
use crate::dtype::DType;
use crate::pipeline;

/// Which dataset a task reads: one any process with the same configuration rebuilds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Locator {
    /// A configured dataset or one of its views (`{dataset}.{view}`), by id.
    Dataset(String),
    /// An ad-hoc groupby product of a configured dataset
    /// (`/datasets/{parent}/groupby/{var}/{coord}/{action}`).
    Product {
        /// The configured dataset reduced.
        parent: String,
        /// The variable reduced.
        var: String,
        /// The coordinate (or `<time>.<component>`) grouped by.
        coord: String,
        /// The reduction (`mean`, ...).
        action: String,
    },
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Dataset(id) => write!(f, "{id}"),
            Locator::Product {
                parent,
                var,
                coord,
                action,
            } => write!(f, "{parent}/groupby/{var}/{coord}/{action}"),
        }
    }
}

/// One unit of processing work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// The decoded little-endian bytes of one chunk of a variable (its served grid, edge
    /// chunks padded with fill): what `pipeline::read_chunk` gives.
    Chunk {
        /// The dataset.
        at: Locator,
        /// The variable's path.
        var: String,
        /// The chunk index.
        index: Vec<u64>,
    },
    /// The accumulators of the output region `[start, start+count)` of a reduced variable
    /// over the source rows of `slabs` only (each `[r0, r1)` along the reduced axis, in
    /// order): merged in order with the other runs' partials, they give the region.
    Partial {
        /// The dataset (a view or product).
        at: Locator,
        /// The reduced variable's path.
        var: String,
        /// The output region's start.
        start: Vec<u64>,
        /// The output region's shape.
        count: Vec<u64>,
        /// The runs of source rows, in axis order.
        slabs: Vec<(u64, u64)>,
    },
}

impl Task {
    /// The dataset the task reads.
    pub fn locator(&self) -> &Locator {
        match self {
            Task::Chunk { at, .. } | Task::Partial { at, .. } => at,
        }
    }

    /// The variable the task computes.
    pub fn var(&self) -> &str {
        match self {
            Task::Chunk { var, .. } | Task::Partial { var, .. } => var,
        }
    }
}

/// The result of a [`Task`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Decoded chunk bytes ([`Task::Chunk`]).
    Bytes(Vec<u8>),
    /// Partial accumulators ([`Task::Partial`]).
    Partial(Acc),
}

/// Runs tasks somewhere else (the compute workers). Tasks are idempotent: an implementation
/// may run one more than once (retries) but answers each exactly once, in order.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// The outputs of `tasks`, in their order, or the first failure (a task that cannot be
    /// run anywhere, or that failed on a worker reading the data).
    fn run_all(&self, tasks: Vec<Task>) -> Result<Vec<Output>, ReadError>;
}

static REMOTE: RwLock<Option<Arc<dyn Executor>>> = RwLock::new(None);

/// Sends processing work of this process to `exec` from now on (`None`: in-process again).
pub fn set_remote(exec: Option<Arc<dyn Executor>>) {
    *REMOTE.write().unwrap_or_else(std::sync::PoisonError::into_inner) = exec;
}

/// The remote executor, when work is sent out.
pub fn remote() -> Option<Arc<dyn Executor>> {
    REMOTE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

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
    let expected = crate::chunk::grid::numel(&var.chunks)
        .and_then(|n| n.checked_mul(var.dtype.size()))
        .ok_or_else(|| ReadError::TooLarge(var.chunks.clone()))?;
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

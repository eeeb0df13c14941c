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
//! computation itself (`super::dispatch::execute`) is the same code in the server and in
//! the worker. (The tasks' types are here, below the reductions that send them; what runs
//! them is in `super::dispatch`, above.)
//! Without an executor (the default) everything runs in-process, as it always did.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::reduce::accum::Partial;
use crate::chunk::read::ReadError;

/// Which dataset a task reads: one any process with the same configuration rebuilds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Locator {
    /// A configured dataset or one of its views (`{dataset}.{view}`), by id.
    Dataset(String),
    /// An ad-hoc groupby product of a configured dataset
    /// (`/datasets/{parent}/groupby/{var}/{coord}/{action}[/{select}]`).
    Product {
        /// The configured dataset reduced.
        parent: String,
        /// The variable reduced.
        var: String,
        /// The coordinate (or `<time>.<component>`) grouped by.
        coord: String,
        /// The reduction (`mean`, ...).
        action: String,
        /// The value-range selection as its canonical path segment
        /// (`super::select::Selection::segment`; empty: none), resolved again by the worker
        /// on the same coordinates, so it reduces the same region.
        select: String,
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
                select,
            } if select.is_empty() => write!(f, "{parent}/groupby/{var}/{coord}/{action}"),
            Locator::Product {
                parent,
                var,
                coord,
                action,
                select,
            } => write!(f, "{parent}/groupby/{var}/{coord}/{action}/{select}"),
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
    /// order), for the region's groups those rows belong to (not the others: they would
    /// be empty): merged in order with the other runs' partials, they give the region.
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
    /// Partial accumulators of the groups the task's rows belong to ([`Task::Partial`]).
    Partial(Partial),
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

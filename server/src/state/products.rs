//! Ad-hoc reductions (`/datasets/{id}/groupby/{var}/{coord}/{action}`): each product is a
//! dataset of its own, built on first request and kept in a small bounded map, so the
//! metadata of a product is rendered once while clients fetch its chunks.
//!
//! The URL's parts are looked up, never evaluated: `action` must be one of the reductions
//! ([`cloudify_crds::Reduce`]), `var` a variable and `coord` a coordinate of the dataset
//! (or `<time coordinate>.<component>`), else the request is refused naming the part. A
//! value-range selection ([`Selection`]) names dimensions of `var` and values of their
//! coordinates; the stretches it resolves to (not its text) are part of what identifies a
//! product, so that `time=2000-01/2000-12` and `time=2000-01-01/2000-12-31T00:00` are one
//! product with one ETag per key and one compute-cache entry per chunk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cloudify_crds::Reduce;

use super::Served;
use crate::processing::reduce::{self, Kind};
use crate::processing::select::{SelectError, Selection};

/// How many products are kept; the oldest is dropped for a new one (a dropped product is
/// rebuilt when asked for again: building reads only coordinates).
pub const MAX_PRODUCTS: usize = 32;

/// Why a product cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProductError {
    /// `action` is not one of the reductions.
    #[error("unknown action '{0}'; one of mean, sum, min, max, count, std, var, median, first, last")]
    Action(String),
    /// The variable or coordinate does not exist (`missing`) or cannot be used so.
    #[error("{0}")]
    Reduce(#[from] reduce::ReduceError),
    /// The value-range selection names no dimension of the variable, a value its
    /// coordinate cannot hold, or selects nothing.
    #[error("{0}")]
    Select(#[from] SelectError),
}

/// How a request names a product: dataset id, variable, coordinate, reduction, and the
/// selection's segment (empty: none) as [`Selection::segment`] writes it.
pub type ProductKey = (String, String, String, Reduce, String);

/// What identifies a product: its [`ProductKey`] with the selection's resolved stretches
/// (`(dimension, start, count)`) in place of the text.
type ResolvedKey = (String, String, String, Reduce, Vec<(String, u64, u64)>);

/// The products built so far, oldest first, each under the spelling it was asked for by
/// and what that resolved to. A product asked for by another spelling of the same
/// selection is kept again under that spelling (the same [`Served`]), so that its chunk
/// requests find it without resolving the selection (reading coordinates) each time.
#[derive(Debug, Default)]
pub struct Products(Mutex<VecDeque<(ProductKey, ResolvedKey, Arc<Served>)>>);

impl Products {
    /// The product of `parent` for (`var`, `coord`, `action`) over the region `sel`
    /// selects, built if it is not kept. Building reads coordinates (blocking I/O): call it
    /// on the worker pool.
    pub fn get(
        &self,
        parent: &Served,
        var: &str,
        coord: &str,
        action: &str,
        sel: &Selection,
    ) -> Result<Arc<Served>, ProductError> {
        let r = Reduce::parse(action).ok_or_else(|| ProductError::Action(action.to_string()))?;
        let segment = sel.segment();
        let key: ProductKey = (
            parent.ds.name.clone(),
            var.to_string(),
            coord.to_string(),
            r,
            segment.clone(),
        );
        if let Some(s) = self.find(|(k, _)| *k == key) {
            return Ok(s);
        }
        // an unknown variable is left to the reduction, which names it (404)
        let window = match parent.ds.variable(var).filter(|v| !v.path.contains('/')) {
            Some(v) if !sel.is_empty() => sel.resolve(&parent.ds, v)?,
            _ => crate::processing::select::Window::default(),
        };
        let resolved: ResolvedKey = (
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            r,
            window.dims.clone(),
        );
        if let Some(s) = self.find(|(_, k)| *k == resolved) {
            self.keep(key, resolved, s.clone());
            return Ok(s);
        }
        let id = format!("{}.groupby.{var}.{coord}.{action}", parent.ds.name);
        let at = crate::processing::exec::Locator::Product {
            parent: parent.ds.name.clone(),
            var: var.to_string(),
            coord: coord.to_string(),
            action: action.to_string(),
            select: segment,
        };
        let ds = reduce::build_at(
            &parent.ds,
            &id,
            &Kind::GroupBy {
                by: coord.to_string(),
            },
            r,
            &[var.to_string()],
            &at,
            &window,
        )?;
        let meta = crate::zarr::render(&ds);
        let refs = crate::kerchunk::build(&ds);
        let served = Arc::new(Served::new(ds, meta, refs, None));
        Ok(self.keep(key, resolved, served))
    }

    /// Keeps `served` under `key`, unless another request built the same product
    /// meanwhile: then that one is kept and returned, so that there is one.
    fn keep(&self, key: ProductKey, resolved: ResolvedKey, served: Arc<Served>) -> Arc<Served> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, s)) = map.iter().find(|(k, _, _)| *k == key) {
            return s.clone();
        }
        let served = map
            .iter()
            .find(|(_, r, _)| *r == resolved)
            .map_or(served, |(_, _, s)| s.clone());
        if map.len() >= MAX_PRODUCTS {
            map.pop_front();
        }
        map.push_back((key, resolved, served.clone()));
        served
    }

    fn find(&self, hit: impl Fn((&ProductKey, &ResolvedKey)) -> bool) -> Option<Arc<Served>> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .find(|(k, r, _)| hit((k, r)))
            .map(|(_, _, s)| s.clone())
    }

    /// How many products are kept.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |m| m.len())
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

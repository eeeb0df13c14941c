//! Ad-hoc reductions (`/datasets/{id}/groupby/{var}/{coord}/{action}`): each product is a
//! dataset of its own, built on first request and kept in a small bounded map, so the
//! metadata of a product is rendered once while clients fetch its chunks.
//!
//! The URL's parts are looked up, never evaluated: `action` must be one of the reductions
//! ([`cloudify_crds::Reduce`]), `var` a variable and `coord` a coordinate of the dataset
//! (or `<time coordinate>.<component>`), else the request is refused naming the part. A
//! value-range selection ([`Selection`]) names dimensions of `var` and values of their
//! coordinates; it is part of what identifies a product.

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

/// What identifies a product: dataset id, variable, coordinate, reduction, and the
/// selection's canonical segment (empty: none).
pub type ProductKey = (String, String, String, Reduce, String);

/// The products built so far, oldest first.
#[derive(Debug, Default)]
pub struct Products(Mutex<VecDeque<(ProductKey, Arc<Served>)>>);

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
        if let Some(s) = self.find(&key) {
            return Ok(s);
        }
        // an unknown variable is left to the reduction, which names it (404)
        let window = match parent.ds.variable(var).filter(|v| !v.path.contains('/')) {
            Some(v) if !sel.is_empty() => sel.resolve(&parent.ds, v)?,
            _ => crate::processing::select::Window::default(),
        };
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
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // another request may have built it meanwhile: keep one
        if let Some((_, s)) = map.iter().find(|(k, _)| *k == key) {
            return Ok(s.clone());
        }
        if map.len() >= MAX_PRODUCTS {
            map.pop_front();
        }
        map.push_back((key, served.clone()));
        Ok(served)
    }

    fn find(&self, key: &ProductKey) -> Option<Arc<Served>> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().find(|(k, _)| k == key).map(|(_, s)| s.clone())
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

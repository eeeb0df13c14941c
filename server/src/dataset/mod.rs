//! A served dataset: groups and variables, each variable stitched from pieces of files.

pub mod aggregate;
pub mod cftime;
pub mod summary;

use std::sync::Arc;

use crate::attrs::Attrs;

use crate::block::Block;
use crate::chunk::read::ReadError;
use crate::dtype::{DType, Scalar};
use crate::source::{FileVar, SourceFile};

/// One contiguous stretch of a variable along its concat axis, stored in one file.
#[derive(Clone, Debug)]
pub struct Piece {
    /// First index along the concat axis (0 when the variable is not concatenated).
    pub start: u64,
    /// The file's variable holding this stretch, and how to read it.
    pub data: FileVar,
}

/// A variable as clients see it.
#[derive(Clone, Debug)]
pub struct Variable {
    /// Variable name (last component of `path`), as in the source.
    pub name: String,
    /// Zarr path of the array, e.g. `tas` or `g1/sub/x`.
    pub path: String,
    /// Dimension names, outermost first; for Zarr v2 written as `_ARRAY_DIMENSIONS`.
    pub dims: Vec<String>,
    /// Length along each dimension (after aggregation: the sum of the pieces along the concat
    /// axis).
    pub shape: Vec<u64>,
    /// Element type of the values.
    pub dtype: DType,
    /// Attributes without `_FillValue` (kept separately below).
    pub attrs: Attrs,
    /// The `_FillValue` attribute, if the source has one.
    pub fill_attr: Option<Scalar>,
    /// Little-endian bytes of the value unwritten data reads as (`_FillValue`, else netCDF's
    /// default fill), used for never-written chunks and Zarr edge padding.
    pub fill: Vec<u8>,
    /// Served chunk shape.
    pub chunks: Vec<u64>,
    /// Where the values come from: pieces of files, or a computation.
    pub values: Values,
}

/// Where a variable's values come from.
///
/// Encodings, pass-through and other protocol decisions are not made here: every protocol
/// reads regions through `crate::pipeline` and decides for itself (Zarr's in `crate::zarr`).
#[derive(Clone, Debug)]
pub enum Values {
    /// Stitched from pieces of source files, stacked along `concat_axis` (one piece when
    /// `None`).
    Stored {
        /// Index of the dimension the pieces are stacked along; `None` when there is one piece.
        concat_axis: Option<usize>,
        /// The pieces in order along the concat axis, each starting where the previous one ends.
        pieces: Vec<Piece>,
    },
    /// Computed on request from other variables (processing: derived variables, rechunked
    /// grids, reductions).
    Derived(Arc<dyn Derive>),
}

/// A variable computed on request. Implementations hold what they read (other variables,
/// parameters) and are parsed and checked when the dataset is opened; nothing here runs
/// code a request or a config supplies.
pub trait Derive: Send + Sync + std::fmt::Debug {
    /// The values of the region `[start, start+count)`: a block of shape `count` with the
    /// variable's element type.
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError>;

    /// Checks that the files the region is computed from are still the versions indexed,
    /// without computing it (before `304 Not Modified`).
    fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError>;

    /// About how many bytes of source data reading the region reads (stored, compressed
    /// sizes of the source chunks it touches, summed over every read it makes), without
    /// reading anything: what `--max-source-bytes` is checked against before a computed
    /// chunk is computed. Constants read nothing (0).
    fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64;

    /// What the computation is, including what it reads (recursively, down to the stored
    /// variables): part of the ETag and cache key of computed chunks, so that another
    /// pipeline over the same files never answers with this one's bytes.
    fn describe(&self) -> String;

    /// The computation as [`std::any::Any`], for the layer that built it to recognise its
    /// own kinds behind the trait object (a reduction's partial work, sent to compute
    /// workers); `None` for computations nobody needs to recognise.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

impl Variable {
    /// True when some of the variable's stored bytes are in a tape archive (read through
    /// its staging cache): catalogs and reference builders must not read it, or describing
    /// the dataset would recall files.
    pub fn on_tape(&self) -> bool {
        let tape = |f: &crate::source::SourceFile| f.remote.as_ref().is_some_and(|r| r.store.tape.is_some());
        self.pieces().iter().any(|p| {
            tape(&p.data.file)
                || matches!(&p.data.layout, crate::source::Layout::Listed { table, .. }
                    if table.remote.iter().flatten().any(|f| tape(f)))
        })
    }

    /// The stored pieces (none for a derived variable).
    pub fn pieces(&self) -> &[Piece] {
        match &self.values {
            Values::Stored { pieces, .. } => pieces,
            Values::Derived(_) => &[],
        }
    }

    /// Axis along which the stored pieces are stacked.
    pub fn concat_axis(&self) -> Option<usize> {
        match &self.values {
            Values::Stored { concat_axis, .. } => *concat_axis,
            Values::Derived(_) => None,
        }
    }

    /// Whether the values are computed rather than stored.
    pub fn is_derived(&self) -> bool {
        matches!(self.values, Values::Derived(_))
    }
}

/// A group of variables (the root group has path "").
#[derive(Debug, Default)]
pub struct Group {
    /// Zarr path of the group: `""` for the root, e.g. `g1/sub` below it.
    pub path: String,
    /// Group attributes, as in the source.
    pub attrs: Attrs,
    /// Dimensions defined in this group: name and length.
    pub dims: Vec<(String, u64)>,
    /// Names of the unlimited (record) dimensions among `dims`, as the source declares them
    /// (OPeNDAP tells clients, so `ncdump` shows `UNLIMITED` as for the file).
    pub unlimited: Vec<String>,
    /// The group's variables.
    pub vars: Vec<Arc<Variable>>,
    /// Child groups.
    pub groups: Vec<Group>,
}

impl Group {
    /// All groups below and including this one, depth first.
    pub fn walk(&self) -> Vec<&Group> {
        let mut out = vec![self];
        for g in &self.groups {
            out.extend(g.walk());
        }
        out
    }
}

/// An opened dataset.
#[derive(Debug)]
pub struct Dataset {
    /// Dataset id, as in `/datasets/{id}`.
    pub name: String,
    /// The configuration the dataset was opened from (sources, options).
    pub spec: cloudify_crds::DatasetSpec,
    /// The root group, holding all variables and subgroups.
    pub root: Group,
    /// The source files the dataset reads; their identities make up `fingerprint`.
    pub files: Vec<Arc<SourceFile>>,
    /// Hash of the sources' identities (path, size, mtime) and the server version: the
    /// basis of ETags, so a changed file changes every ETag.
    pub fingerprint: u64,
    /// Variables that could not be served, with the reason (shown in summaries and logs).
    pub skipped: Vec<(String, String)>,
    /// Zarr path → variable: every chunk request looks its variable up (several times while
    /// its key is parsed), so this is a map rather than a walk over the groups.
    pub by_path: std::collections::HashMap<String, Arc<Variable>>,
    /// Whether any source is an object-store object: decides per request which pool reads
    /// run on, so it is computed once here rather than by scanning `files` (thousands in
    /// large aggregations) on every chunk request.
    pub remote: bool,
}

impl Dataset {
    /// Looks up an array by its Zarr path.
    pub fn variable(&self, path: &str) -> Option<&Arc<Variable>> {
        self.by_path.get(path)
    }

    /// Looks up a group by its Zarr path.
    pub fn group(&self, path: &str) -> Option<&Group> {
        self.root.walk().into_iter().find(|g| g.path == path)
    }

    /// Puts `v` into the group its path names (the part before the last `/`; the root for a
    /// plain name), replacing a variable of the same path or adding it after the others,
    /// and keeps the path index in step. `Err` names a group that does not exist.
    pub fn put_variable(&mut self, v: Variable) -> Result<Arc<Variable>, String> {
        let group_path = v.path.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        fn find<'a>(g: &'a mut Group, path: &str) -> Option<&'a mut Group> {
            if g.path == path {
                return Some(g);
            }
            g.groups.iter_mut().find_map(|s| find(s, path))
        }
        let v = Arc::new(v);
        let g = find(&mut self.root, &group_path).ok_or_else(|| format!("no group '{group_path}'"))?;
        match g.vars.iter_mut().find(|x| x.path == v.path) {
            Some(slot) => *slot = v.clone(),
            None => g.vars.push(v.clone()),
        }
        self.by_path.insert(v.path.clone(), v.clone());
        Ok(v)
    }
}

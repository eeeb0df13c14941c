//! Processing: datasets whose served values are computed from the sources on request
//! (`DatasetSpec.processing`): lossy BitRound, another served chunk grid, derived variables.
//!
//! Applied once when a dataset opens, as a transformation of the [`Dataset`] model: variables
//! whose values change become `Values::Derived` (computed per block through
//! [`crate::pipeline`]), a new chunk grid is a new `chunks` on the variable. Protocols do not
//! know processing exists: they read blocks from the pipeline as for any variable. Nothing a
//! spec or a request says is run as code: expressions are parsed and type-checked here, then
//! evaluated over blocks.

pub mod bitround;
pub mod curvilinear;
pub mod derived;
pub mod dispatch;
pub mod exec;
pub mod expr;
pub mod histogram;
pub mod plot;
pub mod rechunk;
pub mod reduce;
pub mod select;
pub mod tiles;

use crate::dataset::Dataset;
use cloudify_crds::ProcessingSpec;

/// Why processing cannot be applied to a dataset. Messages name the field (relative to
/// `processing`) and, for expressions, the character position.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// A setting that does not fit the dataset (unknown variable or dimension, a type that
    /// cannot be rounded, an expression that does not parse or type-check).
    #[error("processing.{field}: {reason}")]
    Invalid {
        /// The field, relative to `processing` (`bitround.variables.tas`, `variables.x.expr`).
        field: String,
        /// Why, with the character position for expressions.
        reason: String,
    },
}

/// The dataset with `spec` applied, in this order:
/// 1. rechunking (`chunks`): only the served grid changes, so every later step is served in
///    the new grid (a rounded variable is a computed one whose chunks are already set);
/// 2. BitRound (`bitround`): variables become computed from their stored selves;
/// 3. derived variables (`variables`): computed from the served (rechunked, rounded)
///    variables, which is what a client computing them from the served data would get.
pub fn apply(mut ds: Dataset, spec: &ProcessingSpec) -> Result<Dataset, ProcessingError> {
    rechunk::apply(&mut ds, &spec.chunks)?;
    if let Some(b) = &spec.bitround {
        bitround::apply(&mut ds, b)?;
    }
    derived::add(&mut ds, &spec.variables)?;
    Ok(ds)
}

/// The views of `spec` (`processing.views`) over the processed dataset `ds`, each a
/// dataset of its own with id `{dataset}.{view}`. An unusable view is an error naming the
/// view and its field (`views.monthly.resample.dim: ...`), so the dataset fails to open as
/// for any other processing error.
pub fn views(ds: &Dataset, spec: &ProcessingSpec) -> Result<Vec<Dataset>, ProcessingError> {
    let mut out = Vec::new();
    for (name, v) in &spec.views {
        let (kind, reduce) = match (&v.groupby, &v.resample) {
            (Some(g), None) => (reduce::Kind::GroupBy { by: g.by.clone() }, g.reduce),
            (None, Some(r)) => (
                reduce::Kind::Resample {
                    dim: r.dim.clone().unwrap_or_else(|| "time".into()),
                    freq: r.time,
                },
                r.reduce,
            ),
            _ => {
                return Err(ProcessingError::Invalid {
                    field: format!("views.{name}"),
                    reason: "set exactly one of groupby and resample".into(),
                });
            }
        };
        let id = format!("{}.{name}", ds.name);
        let view =
            reduce::build(ds, &id, &kind, reduce, &v.variables).map_err(|e| ProcessingError::Invalid {
                field: format!("views.{name}.{}", e.field),
                reason: format!("{} (dataset '{}', view '{name}')", e.reason, ds.name),
            })?;
        out.push(view);
    }
    Ok(out)
}

/// The dataset `id` of a product computed from `parent` (a view, a groupby or histogram
/// product) whose root holds `vars`: dimensions in order of first use, the parent's global
/// attributes plus `provenance_attr = what`, the parent's spec renamed, without processing
/// and titled after `what`. Its fingerprint (the cache and ETag key of every chunk) is the
/// parent's with `what` and `key` (what else tells two products of the same computation
/// apart: selected ranges, variable paths).
pub(crate) fn product_dataset(
    parent: &Dataset,
    id: &str,
    provenance_attr: &str,
    what: &str,
    vars: Vec<std::sync::Arc<crate::dataset::Variable>>,
    key: impl std::hash::Hash,
) -> Dataset {
    use std::hash::{Hash, Hasher};
    let mut dims: Vec<(String, u64)> = Vec::new();
    for v in &vars {
        for (d, n) in v.dims.iter().zip(&v.shape) {
            if !dims.iter().any(|(x, _)| x == d) {
                dims.push((d.clone(), *n));
            }
        }
    }
    let mut attrs = parent.root.attrs.clone();
    attrs.insert(provenance_attr, crate::attrs::AttrValue::Str(what.to_string()));
    let mut spec = parent.spec.clone();
    spec.name = id.to_string();
    spec.processing = None;
    spec.title = Some(format!(
        "{} — {what}",
        parent.spec.title.as_deref().unwrap_or(&parent.name)
    ));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.fingerprint.hash(&mut h);
    what.hash(&mut h);
    key.hash(&mut h);
    let by_path = vars.iter().map(|v| (v.path.clone(), v.clone())).collect();
    Dataset {
        name: id.to_string(),
        spec,
        root: crate::dataset::Group {
            path: String::new(),
            attrs,
            // the parent's record dimension stays one where the product keeps it
            unlimited: parent
                .root
                .unlimited
                .iter()
                .filter(|u| dims.iter().any(|(d, _)| d == *u))
                .cloned()
                .collect(),
            dims,
            vars,
            groups: Vec::new(),
        },
        files: parent.files.clone(),
        fingerprint: h.finish(),
        skipped: Vec::new(),
        by_path,
        remote: parent.remote,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::codec::bitround::round_f32_bits;
    use crate::open::file::open_file;
    use crate::pipeline::{read_chunk, read_region};
    use crate::source::SourceFile;
    use cloudify_crds::BitRoundSpec;

    /// `tas(time, lat)` float32 with a 1e20 fill, `pr` float64, `lat` float32 coordinate,
    /// `n` int32; stored chunks `{1, 8}`.
    fn write(path: &Path) -> Vec<f32> {
        let mut f = netcdf::create(path).expect("create");
        f.add_dimension("time", 6).expect("dim");
        f.add_dimension("lat", 8).expect("dim");
        let mut tas: Vec<f32> = (0..48).map(|i| 250.0 + i as f32 * 0.123_456_7).collect();
        tas[5] = 1e20;
        {
            let mut v = f.add_variable::<f32>("tas", &["time", "lat"]).expect("var");
            v.set_chunking(&[1, 8]).expect("chunking");
            v.set_fill_value(1e20f32).expect("fill");
            v.put_values(&tas, ..).expect("put");
        }
        {
            let mut v = f.add_variable::<f64>("pr", &["time", "lat"]).expect("var");
            let vals: Vec<f64> = (0..48).map(|i| f64::from(i) * 1.0e-5 / 3.0).collect();
            v.put_values(&vals, ..).expect("put");
        }
        {
            let mut v = f.add_variable::<f32>("lat", &["lat"]).expect("var");
            let vals: Vec<f32> = (0..8).map(|i| i as f32 * 1.1).collect();
            v.put_values(&vals, ..).expect("put");
        }
        let mut v = f.add_variable::<i32>("n", &["lat"]).expect("var");
        v.put_values(&[1i32; 8], ..).expect("put");
        tas
    }

    fn open(path: &Path) -> Dataset {
        let file = Arc::new(SourceFile::stat(path.to_path_buf()).expect("stat"));
        let idx = open_file(file).expect("index");
        let spec = cloudify_crds::DatasetSpec::new("t", vec![path.display().to_string()]);
        crate::dataset::aggregate::build(&spec, vec![idx]).expect("dataset")
    }

    fn spec(keepbits: Option<u32>, vars: &[(&str, u32)], chunks: &[(&str, u64)]) -> ProcessingSpec {
        ProcessingSpec {
            bitround: Some(BitRoundSpec {
                keepbits,
                variables: vars.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            }),
            chunks: chunks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    fn field(e: ProcessingError) -> String {
        let ProcessingError::Invalid { field, .. } = e;
        field
    }

    #[test]
    fn rounds_floats_but_not_coordinates_nor_fill_and_rechunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        let tas = write(&p);
        let ds = apply(
            open(&p),
            &spec(Some(7), &[("pr", 3)], &[("time", 4), ("lat", 100)]),
        )
        .expect("apply");
        let v = ds.variable("tas").expect("tas");
        assert!(v.is_derived());
        assert_eq!(v.chunks, vec![4, 8]);
        assert_eq!(
            v.attrs.get(bitround::PROVENANCE_ATTR),
            Some(&crate::attrs::AttrValue::Ints(vec![7]))
        );
        let got: Vec<f32> = read_region(v, &[0, 0], &[6, 8])
            .expect("read")
            .values()
            .expect("f32");
        let mut want: Vec<u32> = tas.iter().map(|x| x.to_bits()).collect();
        round_f32_bits(&mut want, 7).expect("round");
        want[5] = 1e20f32.to_bits();
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        // an edge chunk of the new grid: 2 rows of data, 2 of fill
        let edge = read_chunk(v, &[1, 0]).expect("chunk");
        assert_eq!(edge.len(), 4 * 8 * 4);
        assert_eq!(&edge[..4], &want[32].to_le_bytes());
        assert_eq!(&edge[16 * 4..16 * 4 + 4], &1e20f32.to_le_bytes());
        assert_eq!(
            ds.variable("pr")
                .expect("pr")
                .attrs
                .get(bitround::PROVENANCE_ATTR),
            Some(&crate::attrs::AttrValue::Ints(vec![3]))
        );
        let lat = ds.variable("lat").expect("lat");
        assert!(!lat.is_derived(), "a coordinate is not rounded");
        assert_eq!(lat.chunks, vec![8], "clipped to the dimension length");
        assert!(!ds.variable("n").expect("n").is_derived());
    }

    #[test]
    fn bad_input_names_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        write(&p);
        let cases: [(ProcessingSpec, &str); 6] = [
            (spec(None, &[("nope", 3)], &[]), "bitround.variables.nope"),
            (spec(None, &[("n", 3)], &[]), "bitround.variables.n"),
            (spec(None, &[("tas", 24)], &[]), "bitround.variables.tas"),
            (spec(Some(30), &[], &[]), "bitround.keepbits"),
            (spec(None, &[], &[("depth", 3)]), "chunks.depth"),
            (spec(None, &[], &[("time", 0)]), "chunks.time"),
        ];
        for (s, want) in cases {
            let e = apply(open(&p), &s).expect_err(want);
            assert_eq!(field(e), want);
        }
        // float64 accepts up to 52 when it is the only one named
        assert!(apply(open(&p), &spec(None, &[("pr", 52)], &[])).is_ok());
        // derived variables come after rounding: an expression error names its variable
        let derived = ProcessingSpec {
            variables: [(
                "x".to_string(),
                cloudify_crds::DerivedVariable {
                    expr: "tas +".into(),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let e = apply(open(&p), &derived).expect_err("derived");
        assert_eq!(field(e), "variables.x.expr");
    }
}

//! `processing.bitround`: served values rounded as numcodecs `BitRound` (see
//! [`crate::codec::bitround`]), as DKRZ's cloudify serves lossy data: ordinary float values
//! whose low mantissa bits are zero, compressed by the standard compressor; no client codec.
//!
//! Which variables: with `keepbits`, every float32/float64 variable that is not a
//! coordinate, plus those `variables` names (which override `keepbits`, and may name a
//! coordinate on purpose). A **coordinate** is a variable whose name is a dimension name
//! (of any variable of the dataset), or one named in another variable's `coordinates` or
//! `bounds` attribute (CF auxiliary coordinates and cell bounds): rounding those would
//! change labels, not data.
//!
//! Fill values: an element whose bit pattern is the served fill value (`_FillValue`, else
//! the default fill the metadata declares) or a `missing_value` is left exactly as it is.
//! numcodecs rounds whatever it is given (1e20 as float32 becomes 100000002004087734272 at
//! keepbits 12, no longer the fill), but DKRZ/xarray users never see that: xarray masks the
//! fill before rounding and writes `_FillValue` back when encoding. So the served raw values
//! are `where(raw == fill, fill, BitRound(k).encode(raw))`.

use std::sync::Arc;

use super::ProcessingError;
use crate::attrs::AttrValue;
use crate::block::{Block, BlockData};
use crate::chunk::read::ReadError;
use crate::codec::bitround::{F32_MANTISSA_BITS, F64_MANTISSA_BITS, round_f32_le, round_f64_le};
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline;
use cloudify_crds::BitRoundSpec;

/// The attribute added to a rounded variable, saying how it was rounded.
pub const PROVENANCE_ATTR: &str = "cloudify_bitround_keepbits";

/// A variable served rounded: reads its stored self and rounds.
#[derive(Debug)]
struct BitRounded {
    stored: Arc<Variable>,
    keepbits: u32,
    /// Bit patterns left unrounded (fill values), widened to u64.
    keep: Vec<u64>,
}

impl Derive for BitRounded {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let block = pipeline::read_region(&self.stored, start, count)?;
        let dtype = block.dtype();
        let shape = block.shape().to_vec();
        let BlockData::Bytes(mut bytes) = block.into_data() else {
            return Err(ReadError::Block("BitRound of a string block".into()));
        };
        let rounded = match dtype {
            DType::F32 => {
                let keep: Vec<u32> = self.keep.iter().map(|k| *k as u32).collect();
                round_f32_le(&mut bytes, self.keepbits, &keep)
            }
            DType::F64 => round_f64_le(&mut bytes, self.keepbits, &self.keep),
            other => return Err(ReadError::Block(format!("BitRound of {other:?} values"))),
        };
        rounded.map_err(|e| ReadError::Block(e.to_string()))?;
        Block::from_bytes(dtype, shape, bytes).map_err(|e| ReadError::Block(e.to_string()))
    }

    fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
        pipeline::check_region_sources(&self.stored, start, count)
    }

    fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64 {
        pipeline::estimate_region_bytes(&self.stored, start, count)
    }

    fn describe(&self) -> String {
        format!(
            "bitround(keepbits={}, keep={:?}, {})",
            self.keepbits,
            self.keep,
            pipeline::describe(&self.stored)
        )
    }
}

/// Mantissa bits of a float type (`None` for anything else).
fn mantissa_bits(dtype: DType) -> Option<u32> {
    match dtype {
        DType::F32 => Some(F32_MANTISSA_BITS),
        DType::F64 => Some(F64_MANTISSA_BITS),
        _ => None,
    }
}

/// Names of the dataset's coordinates (see the module documentation).
fn coordinates(vars: &[Arc<Variable>]) -> std::collections::HashSet<String> {
    let mut out: std::collections::HashSet<String> =
        vars.iter().flat_map(|v| v.dims.iter().cloned()).collect();
    for v in vars {
        for attr in ["coordinates", "bounds"] {
            if let Some(s) = v.attrs.get_str(attr) {
                out.extend(s.split_whitespace().map(str::to_string));
            }
        }
    }
    out
}

/// Bit patterns of `v`'s fill values (little-endian element bytes as an integer).
fn fill_patterns(v: &Variable) -> Vec<u64> {
    let as_int = |b: &[u8]| {
        let mut a = [0u8; 8];
        let n = b.len().min(8);
        a[..n].copy_from_slice(&b[..n]);
        u64::from_le_bytes(a)
    };
    let mut out = vec![as_int(&v.fill)];
    if let Some(f) = v.fill_attr {
        out.push(as_int(&f.to_le_bytes(v.dtype)));
    }
    let missing: Vec<Scalar> = match v.attrs.get("missing_value") {
        Some(a @ (AttrValue::Floats(_) | AttrValue::Floats32(_))) => a
            .floats()
            .unwrap_or_default()
            .into_iter()
            .map(Scalar::Float)
            .collect(),
        Some(AttrValue::Ints(x)) => x.iter().map(|i| Scalar::Int(*i)).collect(),
        Some(AttrValue::UInts(x)) => x.iter().map(|i| Scalar::UInt(*i)).collect(),
        _ => Vec::new(),
    };
    out.extend(missing.into_iter().map(|s| as_int(&s.to_le_bytes(v.dtype))));
    out.sort_unstable();
    out.dedup();
    out
}

/// Serves the variables `spec` selects rounded. Errors name the field:
/// `bitround.variables.<name>` for an unknown or non-float variable or keepbits above its
/// type's mantissa, `bitround.keepbits` for keepbits above float32's when it applies to a
/// float32 variable.
pub fn apply(ds: &mut Dataset, spec: &BitRoundSpec) -> Result<(), ProcessingError> {
    let vars: Vec<Arc<Variable>> = ds
        .root
        .walk()
        .into_iter()
        .flat_map(|g| g.vars.iter().cloned())
        .collect();
    let invalid = |field: String, reason: String| ProcessingError::Invalid { field, reason };
    let mut chosen: Vec<(Arc<Variable>, u32, String)> = Vec::new();
    for (name, k) in &spec.variables {
        let field = format!("bitround.variables.{name}");
        let Some(v) = vars.iter().find(|v| &v.path == name) else {
            return Err(invalid(
                field,
                format!("no variable '{name}' in dataset '{}'", ds.name),
            ));
        };
        let Some(max) = mantissa_bits(v.dtype) else {
            return Err(invalid(
                field,
                format!(
                    "'{name}' is {:?}; BitRound applies to float32 and float64",
                    v.dtype
                ),
            ));
        };
        if *k > max {
            return Err(invalid(
                field,
                format!(
                    "keepbits {k} is more than the {max} mantissa bits of '{name}' ({:?})",
                    v.dtype
                ),
            ));
        }
        chosen.push((v.clone(), *k, field));
    }
    if let Some(k) = spec.keepbits {
        let coords = coordinates(&vars);
        for v in &vars {
            let Some(max) = mantissa_bits(v.dtype) else {
                continue;
            };
            if coords.contains(&v.name) || spec.variables.contains_key(&v.path) {
                continue;
            }
            if k > max {
                return Err(invalid(
                    "bitround.keepbits".into(),
                    format!(
                        "keepbits {k} is more than the {max} mantissa bits of '{}' ({:?})",
                        v.path, v.dtype
                    ),
                ));
            }
            chosen.push((v.clone(), k, "bitround.keepbits".into()));
        }
    }
    for (v, keepbits, field) in chosen {
        if v.is_derived() {
            return Err(invalid(field, format!("'{}' is already computed", v.path)));
        }
        let mut served = (*v).clone();
        served
            .attrs
            .insert(PROVENANCE_ATTR, AttrValue::Ints(vec![i64::from(keepbits)]));
        served.values = Values::Derived(Arc::new(BitRounded {
            keep: fill_patterns(&v),
            stored: v,
            keepbits,
        }));
        ds.put_variable(served).map_err(|reason| invalid(field, reason))?;
    }
    Ok(())
}

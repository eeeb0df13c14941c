//! Derived variables (`processing.variables`): a variable computed per block from an
//! expression over the dataset's stored variables ([`super::expr`]).
//!
//! Semantics, as a user computing the same with xarray + NumPy 2 would get:
//! - inputs are decoded as `xr.open_dataset` does by default (`mask_and_scale`):
//!   `_FillValue` and `missing_value` become NaN, then `scale_factor`/`add_offset` are
//!   applied. Float inputs keep their type; a masked integer becomes float32 when it has at
//!   most 16 bits, else float64 (`dtypes.maybe_promote`); a packed variable gets xarray's
//!   `_choose_float_dtype`: float32 when `scale_factor` and `add_offset` are both float32 (and
//!   the stored type is not a 32-bit integer) or only a float32 `scale_factor` is given, else
//!   float64. Like xarray, values are cast to that type first, then masked, then scaled and
//!   offset in that type. Integer inputs without mask or packing are computed as float64
//!   (NumPy would keep integer arithmetic; results agree for values below 2^53 except `//`,
//!   `%` and overflow).
//! - types follow NEP 50: literals are weak (`float32 - 273.15` is float32), comparisons
//!   are booleans, served as `bool` (`|b1`).
//! - every input has the same dimensions (names and lengths) as the others, or none (a
//!   scalar, broadcast); the result has those dimensions, the first input's chunks, and
//!   NaN as `_FillValue` (floats; booleans have no fill).
//! - attributes: the spec's, plus `cloudify_expression` (the expression as written).
//!
//! Derived variables read stored variables only (not each other): no order, no cycles.
//! They have no stored bytes, so `/kerchunk` leaves them out.

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudify_crds::DerivedVariable;

use super::ProcessingError;
use super::expr::{self, Col, Ty, Typed};
use crate::attrs::{AttrValue, Attrs};
use crate::block::Block;
use crate::chunk::read::ReadError;
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline;

/// How one input is decoded before evaluation (also what reductions read: `super::reduce`).
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) var: Arc<Variable>,
    /// Values equal to these (compared in the stored type, as f64) become NaN.
    missing: Vec<f64>,
    scale: Option<f64>,
    offset: Option<f64>,
    /// Decoded type (F32 or F64).
    pub(crate) ty: Ty,
}

impl Input {
    pub(crate) fn new(var: Arc<Variable>) -> Result<Self, String> {
        let num = |k: &str| var.attrs.get(k).and_then(AttrValue::first_f64);
        let mut missing: Vec<f64> = Vec::new();
        if let Some(f) = var.fill_attr {
            missing.push(match f {
                Scalar::Int(v) => v as f64,
                Scalar::UInt(v) => v as f64,
                Scalar::Float(v) => v,
            });
        }
        match var.attrs.get("missing_value") {
            Some(AttrValue::Ints(v)) => missing.extend(v.iter().map(|x| *x as f64)),
            Some(AttrValue::UInts(v)) => missing.extend(v.iter().map(|x| *x as f64)),
            Some(a) => missing.extend(a.floats().unwrap_or_default()),
            None => {}
        }
        let (scale, offset) = (num("scale_factor"), num("add_offset"));
        let ty = if scale.is_some() || offset.is_some() {
            packed_type(&var)
        } else {
            match var.dtype {
                DType::F32 => Ty::F32,
                DType::F64 => Ty::F64,
                DType::I8 | DType::U8 | DType::I16 | DType::U16 if !missing.is_empty() => Ty::F32,
                d if d.is_int() => Ty::F64,
                d => return Err(format!("variable '{}' has type {d:?}, not a number", var.name)),
            }
        };
        if !(var.dtype.is_int() || matches!(var.dtype, DType::F32 | DType::F64)) {
            return Err(format!(
                "variable '{}' has type {:?}, not a number",
                var.name, var.dtype
            ));
        }
        Ok(Input {
            var,
            missing,
            scale,
            offset,
            ty,
        })
    }

    /// True when xarray keeps the stored integers (an integer type with no fill value, no
    /// `missing_value`, no packing): NumPy then reduces them as integers.
    pub(crate) fn is_plain_int(&self) -> bool {
        self.missing.is_empty() && self.scale.is_none() && self.offset.is_none() && self.var.dtype.is_int()
    }

    /// The region's stored integers, exactly (for [`Input::is_plain_int`] inputs).
    pub(crate) fn read_ints(&self, start: &[u64], count: &[u64]) -> Result<Vec<i128>, ReadError> {
        let b = pipeline::read_region(&self.var, start, count)?;
        Ok(match self.var.dtype {
            DType::I8 => values::<i8>(&b)?.into_iter().map(i128::from).collect(),
            DType::U8 => values::<u8>(&b)?.into_iter().map(i128::from).collect(),
            DType::I16 => values::<i16>(&b)?.into_iter().map(i128::from).collect(),
            DType::U16 => values::<u16>(&b)?.into_iter().map(i128::from).collect(),
            DType::I32 => values::<i32>(&b)?.into_iter().map(i128::from).collect(),
            DType::U32 => values::<u32>(&b)?.into_iter().map(i128::from).collect(),
            DType::I64 => values::<i64>(&b)?.into_iter().map(i128::from).collect(),
            DType::U64 => values::<u64>(&b)?.into_iter().map(i128::from).collect(),
            d => return Err(ReadError::Block(format!("{d:?} is not an integer"))),
        })
    }

    /// The input and how it is decoded, for [`Derive::describe`].
    pub(crate) fn describe(&self) -> String {
        format!(
            "decode(missing={:?}, scale={:?}, offset={:?}, {:?}, {})",
            self.missing,
            self.scale,
            self.offset,
            self.ty,
            pipeline::describe(&self.var)
        )
    }

    /// The region's values, decoded as xarray does: cast to the decoded type, values equal to
    /// a fill value (compared in that type) become NaN, then `*= scale_factor` and
    /// `+= add_offset` in that type (float32 arithmetic for float32 packing, bit for bit).
    pub(crate) fn read(&self, start: &[u64], count: &[u64]) -> Result<Col, ReadError> {
        let b = pipeline::read_region(&self.var, start, count)?;
        if self.ty == Ty::F32 {
            #[allow(clippy::cast_possible_truncation)]
            let mut v: Vec<f32> = match self.var.dtype {
                DType::F32 => values::<f32>(&b)?,
                DType::F64 => values::<f64>(&b)?.into_iter().map(|x| x as f32).collect(),
                DType::I8 => values::<i8>(&b)?.into_iter().map(f32::from).collect(),
                DType::U8 => values::<u8>(&b)?.into_iter().map(f32::from).collect(),
                DType::I16 => values::<i16>(&b)?.into_iter().map(f32::from).collect(),
                DType::U16 => values::<u16>(&b)?.into_iter().map(f32::from).collect(),
                DType::I32 => values::<i32>(&b)?.into_iter().map(|x| x as f32).collect(),
                DType::U32 => values::<u32>(&b)?.into_iter().map(|x| x as f32).collect(),
                DType::I64 => values::<i64>(&b)?.into_iter().map(|x| x as f32).collect(),
                DType::U64 => values::<u64>(&b)?.into_iter().map(|x| x as f32).collect(),
                d => return Err(ReadError::Block(format!("{d:?} is not a number"))),
            };
            #[allow(clippy::cast_possible_truncation)]
            let miss: Vec<f32> = self.missing.iter().map(|m| *m as f32).collect();
            if !miss.is_empty() {
                v.iter_mut()
                    .filter(|x| miss.contains(x))
                    .for_each(|x| *x = f32::NAN);
            }
            // float32 decoding only happens for float32 attributes, so these casts are exact
            #[allow(clippy::cast_possible_truncation)]
            if let Some(s) = self.scale.map(|s| s as f32) {
                v.iter_mut().for_each(|x| *x *= s);
            }
            #[allow(clippy::cast_possible_truncation)]
            if let Some(o) = self.offset.map(|o| o as f32) {
                v.iter_mut().for_each(|x| *x += o);
            }
            return Ok(Col::F32(v));
        }
        let mut out: Vec<f64> = match self.var.dtype {
            DType::F32 => values::<f32>(&b)?.into_iter().map(f64::from).collect(),
            DType::F64 => values::<f64>(&b)?,
            DType::I8 => values::<i8>(&b)?.into_iter().map(f64::from).collect(),
            DType::U8 => values::<u8>(&b)?.into_iter().map(f64::from).collect(),
            DType::I16 => values::<i16>(&b)?.into_iter().map(f64::from).collect(),
            DType::U16 => values::<u16>(&b)?.into_iter().map(f64::from).collect(),
            DType::I32 => values::<i32>(&b)?.into_iter().map(f64::from).collect(),
            DType::U32 => values::<u32>(&b)?.into_iter().map(f64::from).collect(),
            DType::I64 => values::<i64>(&b)?.into_iter().map(|x| x as f64).collect(),
            DType::U64 => values::<u64>(&b)?.into_iter().map(|x| x as f64).collect(),
            d => return Err(ReadError::Block(format!("{d:?} is not a number"))),
        };
        if !self.missing.is_empty() {
            out.iter_mut()
                .filter(|x| self.missing.contains(x))
                .for_each(|x| *x = f64::NAN);
        }
        if let Some(s) = self.scale {
            out.iter_mut().for_each(|x| *x *= s);
        }
        if let Some(o) = self.offset {
            out.iter_mut().for_each(|x| *x += o);
        }
        Ok(Col::F64(out))
    }
}

/// xarray's `_choose_float_dtype` for a packed variable (one with `scale_factor` or
/// `add_offset`): the attributes' float type when both are the same float type (float64 for
/// 32-bit integers, "due to precision issues"), or when only a float `scale_factor` is given;
/// float64 whenever there is an `add_offset` otherwise. An integer `scale_factor` alone (where
/// xarray would keep an integer type) is decoded as float64.
fn packed_type(var: &Variable) -> Ty {
    let width = |k: &str| match var.attrs.get(k) {
        None => None,
        Some(a) if a.is_f32() => Some(Some(Ty::F32)),
        Some(AttrValue::Floats(_)) => Some(Some(Ty::F64)),
        Some(_) => Some(None),
    };
    match (width("scale_factor"), width("add_offset")) {
        (Some(Some(s)), Some(Some(o))) if s == o => {
            if matches!(var.dtype, DType::I32 | DType::U32) {
                Ty::F64
            } else {
                s
            }
        }
        (Some(Some(s)), None) => s,
        _ => Ty::F64,
    }
}

fn values<T: crate::block::Element>(b: &Block) -> Result<Vec<T>, ReadError> {
    b.values::<T>().map_err(|e| ReadError::Block(e.to_string()))
}

/// A derived variable's computation.
#[derive(Debug)]
pub struct Computed {
    typed: Typed,
    inputs: Vec<Input>,
}

impl Derive for Computed {
    fn read(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let mut cols = Vec::with_capacity(self.inputs.len());
        for i in &self.inputs {
            // a 0-d input is read whole and broadcast
            cols.push(if i.var.shape.is_empty() {
                i.read(&[], &[])?
            } else {
                i.read(start, count)?
            });
        }
        let n: usize = count.iter().map(|c| *c as usize).product();
        let out = expr::eval(&self.typed, &cols);
        let shape = count.to_vec();
        let block = match out {
            Col::F32(v) => Block::from_values(shape, &broadcast(v, n)),
            Col::F64(v) => Block::from_values(shape, &broadcast(v, n)),
            Col::Bool(v) => {
                let bytes: Vec<u8> = broadcast(v, n).into_iter().map(u8::from).collect();
                Block::from_bytes(DType::Bool, shape, bytes)
            }
        };
        block.map_err(|e| ReadError::Block(e.to_string()))
    }

    fn check_sources(&self, start: &[u64], count: &[u64]) -> Result<(), ReadError> {
        for i in &self.inputs {
            if i.var.shape.is_empty() {
                pipeline::check_region_sources(&i.var, &[], &[])?;
            } else {
                pipeline::check_region_sources(&i.var, start, count)?;
            }
        }
        Ok(())
    }
    fn estimate_bytes(&self, start: &[u64], count: &[u64]) -> u64 {
        self.inputs.iter().fold(0u64, |a, i| {
            let b = if i.var.shape.is_empty() {
                pipeline::estimate_region_bytes(&i.var, &[], &[])
            } else {
                pipeline::estimate_region_bytes(&i.var, start, count)
            };
            a.saturating_add(b)
        })
    }

    fn describe(&self) -> String {
        let inputs: Vec<String> = self.inputs.iter().map(Input::describe).collect();
        format!("expr({:?}; {})", self.typed, inputs.join("; "))
    }
}

fn broadcast<T: Copy>(v: Vec<T>, n: usize) -> Vec<T> {
    if v.len() == 1 && n != 1 { vec![v[0]; n] } else { v }
}

fn invalid(name: &str, what: &str, reason: impl Into<String>) -> ProcessingError {
    ProcessingError::Invalid {
        field: format!("variables.{name}.{what}"),
        reason: reason.into(),
    }
}

/// Adds the derived variables `vars` to `ds`, each parsed, type-checked against the stored
/// variables of the root group and their dimensions checked.
pub fn add(ds: &mut Dataset, vars: &BTreeMap<String, DerivedVariable>) -> Result<(), ProcessingError> {
    let mut built = Vec::new();
    for (name, spec) in vars {
        if ds.variable(name).is_some() {
            return Err(invalid(
                name,
                "expr",
                format!("'{name}' is already a variable of the dataset"),
            ));
        }
        let e = expr::parse(&spec.expr).map_err(|e| invalid(name, "expr", e.to_string()))?;
        let mut types = BTreeMap::new();
        let mut inputs = Vec::new();
        for (v, pos) in var_positions(&e) {
            let Some(var) = ds.variable(&v).cloned() else {
                let why = if vars.contains_key(&v) {
                    format!("'{v}' is a derived variable; derived variables read stored variables only")
                } else {
                    format!("unknown variable '{v}'")
                };
                return Err(invalid(name, "expr", format!("at character {pos}: {why}")));
            };
            let input =
                Input::new(var).map_err(|m| invalid(name, "expr", format!("at character {pos}: {m}")))?;
            types.insert(v.clone(), input.ty);
            inputs.push(input);
        }
        let typed = expr::check(e, &types).map_err(|e| invalid(name, "expr", e.to_string()))?;
        // dims: every non-scalar input like the first non-scalar one
        let Some(first) = inputs.iter().find(|i| !i.var.shape.is_empty()) else {
            return Err(invalid(
                name,
                "expr",
                "every variable it reads is a scalar; nothing to serve",
            ));
        };
        let first = first.var.clone();
        for i in &inputs {
            let v = &i.var;
            if !v.shape.is_empty() && (v.dims != first.dims || v.shape != first.shape) {
                return Err(invalid(
                    name,
                    "expr",
                    format!(
                        "'{}' has dimensions {} but '{}' has {}: inputs must have the same dimensions",
                        first.name,
                        dims(&first),
                        v.name,
                        dims(v)
                    ),
                ));
            }
        }
        let ty = typed.ty.strong();
        let (dtype, fill, fill_attr) = match ty {
            Ty::F32 => (
                DType::F32,
                f32::NAN.to_le_bytes().to_vec(),
                Some(Scalar::Float(f64::NAN)),
            ),
            Ty::Bool => (DType::Bool, vec![0u8], None),
            _ => (
                DType::F64,
                f64::NAN.to_le_bytes().to_vec(),
                Some(Scalar::Float(f64::NAN)),
            ),
        };
        let mut attrs = Attrs::default();
        for (k, v) in &spec.attrs {
            attrs.insert(k, AttrValue::Str(v.clone()));
        }
        attrs.insert("cloudify_expression", AttrValue::Str(spec.expr.clone()));
        // order inputs as the evaluator expects
        let ordered: Vec<Input> = typed
            .inputs
            .iter()
            .filter_map(|n| inputs.iter().find(|i| &i.var.name == n).cloned())
            .collect();
        built.push(Variable {
            name: name.clone(),
            path: name.clone(),
            dims: first.dims.clone(),
            shape: first.shape.clone(),
            dtype,
            attrs,
            fill_attr,
            fill,
            chunks: first.chunks.clone(),
            values: Values::Derived(Arc::new(Computed {
                typed,
                inputs: ordered,
            })),
        });
    }
    for v in built {
        let name = v.name.clone();
        ds.put_variable(v).map_err(|m| invalid(&name, "expr", m))?;
    }
    Ok(())
}

fn dims(v: &Variable) -> String {
    let d: Vec<String> = v
        .dims
        .iter()
        .zip(&v.shape)
        .map(|(d, n)| format!("{d}: {n}"))
        .collect();
    format!("({})", d.join(", "))
}

/// Each variable name and the position of its first use.
fn var_positions(e: &expr::Expr) -> Vec<(String, usize)> {
    fn walk(e: &expr::Expr, out: &mut Vec<(String, usize)>) {
        match e {
            expr::Expr::Num { .. } => {}
            expr::Expr::Var { name, pos } => {
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.clone(), *pos));
                }
            }
            expr::Expr::Unary { arg, .. } => walk(arg, out),
            expr::Expr::Binary { lhs, rhs, .. } => {
                walk(lhs, out);
                walk(rhs, out);
            }
            expr::Expr::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

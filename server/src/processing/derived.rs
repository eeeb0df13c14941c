//! Derived variables (`processing.variables`): a variable computed per block from an
//! expression over the dataset's stored variables ([`super::expr`]).
//!
//! Semantics, as a user computing the same with xarray + NumPy 2 would get:
//! - inputs are decoded as `xr.open_dataset` does by default (`mask_and_scale`):
//!   `_FillValue` and `missing_value` become NaN, then `scale_factor`/`add_offset` are
//!   applied. Float inputs keep their type; a masked integer becomes float32 when it has at
//!   most 16 bits, else float64 (`dtypes.maybe_promote`); a packed variable becomes float64
//!   (xarray's `_choose_float_dtype` picks float32 only for float32 `scale_factor`/
//!   `add_offset` attributes; the index keeps attribute values as float64, so float64 is
//!   what we can promise — a documented difference for float32-packed data). Integer inputs
//!   without mask or packing are computed as float64 (NumPy would keep integer arithmetic;
//!   results agree for values below 2^53 except `//`, `%` and overflow).
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
        if let Some(AttrValue::Floats(v)) = var.attrs.get("missing_value") {
            missing.extend(v);
        } else if let Some(AttrValue::Ints(v)) = var.attrs.get("missing_value") {
            missing.extend(v.iter().map(|x| *x as f64));
        } else if let Some(AttrValue::UInts(v)) = var.attrs.get("missing_value") {
            missing.extend(v.iter().map(|x| *x as f64));
        }
        let (scale, offset) = (num("scale_factor"), num("add_offset"));
        let ty = match var.dtype {
            _ if scale.is_some() || offset.is_some() => Ty::F64,
            DType::F32 => Ty::F32,
            DType::F64 => Ty::F64,
            DType::I8 | DType::U8 | DType::I16 | DType::U16 if !missing.is_empty() => Ty::F32,
            d if d.is_int() => Ty::F64,
            d => return Err(format!("variable '{}' has type {d:?}, not a number", var.name)),
        };
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

    /// The region's values, decoded.
    pub(crate) fn read(&self, start: &[u64], count: &[u64]) -> Result<Col, ReadError> {
        let b = pipeline::read_region(&self.var, start, count)?;
        let raw: Vec<f64> = match self.var.dtype {
            DType::F32 => {
                let v = values::<f32>(&b)?;
                if self.ty == Ty::F32 {
                    let miss: Vec<f32> = self.missing.iter().map(|m| *m as f32).collect();
                    return Ok(Col::F32(
                        v.into_iter()
                            .map(|x| if miss.contains(&x) { f32::NAN } else { x })
                            .collect(),
                    ));
                }
                v.into_iter().map(f64::from).collect()
            }
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
        let mut out: Vec<f64> = raw
            .into_iter()
            .map(|x| if self.missing.contains(&x) { f64::NAN } else { x })
            .collect();
        if let Some(s) = self.scale {
            out.iter_mut().for_each(|x| *x *= s);
        }
        if let Some(o) = self.offset {
            out.iter_mut().for_each(|x| *x += o);
        }
        Ok(if self.ty == Ty::F32 {
            #[allow(clippy::cast_possible_truncation)]
            Col::F32(out.into_iter().map(|x| x as f32).collect())
        } else {
            Col::F64(out)
        })
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

//! Derived variables (`processing.variables`): a variable computed per block from an
//! expression over the dataset's stored variables ([`super::expr`]).
//!
//! Semantics, as a user computing the same with xarray + NumPy 2 would get:
//! - inputs are decoded as `xr.open_dataset` does by default (`mask_and_scale`): an
//!   integer with `_Unsigned = "true"` (`"false"`) is read as the unsigned (signed) type of
//!   its width, its `_FillValue` converted likewise (but not `missing_value`, as xarray);
//!   `_FillValue` and `missing_value` become NaN, then `scale_factor`/`add_offset` are
//!   applied. Float inputs keep their type; a masked integer becomes float32 when it has at
//!   most 16 bits, else float64 (`dtypes.maybe_promote`); a packed variable gets xarray's
//!   `_choose_float_dtype`: float32 when `scale_factor` and `add_offset` are both float32 (and
//!   the stored type is not a 32-bit integer) or only a float32 `scale_factor` is given, else
//!   float64. Like xarray, values are cast to that type first, then masked, then scaled and
//!   offset in that type. Integer inputs without mask or packing stay integers in xarray:
//!   an expression is accepted only where NumPy 2 leaves integer types at once for float64
//!   (`n / 2`, `n * 1.5`, `sqrt(n32)`, comparisons of integers up to 32 bits), which
//!   cloudify computes exactly so; integer arithmetic (`n + 1`, `n // 2`, `-n`, `abs(n)`),
//!   float16 results (`sqrt(int8)`) and float32 ones from small integers (`n16 + f32`) are
//!   refused at open naming the position ([`numpy_ints`]).
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
use crate::block::{Block, BlockData};
use crate::chunk::read::ReadError;
use crate::dataset::{Dataset, Derive, Values, Variable};
use crate::dtype::{DType, Scalar};
use crate::pipeline;

/// How one input is decoded before evaluation (also what reductions read: `super::reduce`).
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) var: Arc<Variable>,
    /// The integer type `_Unsigned` makes of the stored one (same width, bits reinterpreted).
    view: Option<DType>,
    /// Values equal to these become NaN, compared as f64 after the cast to the decoded type
    /// (NumPy compares a float32 array with a float64 `missing_value` in float64).
    missing: Vec<f64>,
    scale: Option<f64>,
    offset: Option<f64>,
    /// Decoded type (F32 or F64).
    pub(crate) ty: Ty,
}

impl Input {
    pub(crate) fn new(var: Arc<Variable>) -> Result<Self, String> {
        let num = |k: &str| var.attrs.get(k).and_then(AttrValue::first_f64);
        let view = unsigned_view(&var);
        let dtype = view.unwrap_or(var.dtype);
        let mut missing: Vec<f64> = Vec::new();
        if let Some(f) = var.fill_attr {
            missing.push(match (f, view) {
                // xarray converts the fill value with the data: its bits in the new type
                #[allow(clippy::cast_sign_loss)]
                (Scalar::Int(v), Some(d)) => view_int(v as u64, d),
                (Scalar::UInt(v), Some(d)) => view_int(v, d),
                (Scalar::Int(v), None) => v as f64,
                (Scalar::UInt(v), None) => v as f64,
                // a float32 variable's fill is a float32 (netCDF and Zarr store it so)
                #[allow(clippy::cast_possible_truncation)]
                (Scalar::Float(v), _) if var.dtype == DType::F32 => f64::from(v as f32),
                (Scalar::Float(v), _) => v,
            });
        }
        match var.attrs.get("missing_value") {
            Some(AttrValue::Ints(v)) => missing.extend(v.iter().map(|x| *x as f64)),
            Some(AttrValue::UInts(v)) => missing.extend(v.iter().map(|x| *x as f64)),
            Some(a) => missing.extend(a.floats().unwrap_or_default()),
            None => {}
        }
        // a value equal to an earlier one (a `missing_value` equal to the `_FillValue`) or NaN
        // (never equal to anything) masks nothing more
        let mut distinct: Vec<f64> = Vec::with_capacity(missing.len());
        for m in missing {
            if !m.is_nan() && !distinct.contains(&m) {
                distinct.push(m);
            }
        }
        let missing = distinct;
        let (scale, offset) = (num("scale_factor"), num("add_offset"));
        let ty = if scale.is_some() || offset.is_some() {
            packed_type(&var)
        } else {
            match dtype {
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
            view,
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

    /// The type xarray reads before masking and scaling: the stored one, or the one
    /// `_Unsigned` makes of it.
    pub(crate) fn dtype(&self) -> DType {
        self.view.unwrap_or(self.var.dtype)
    }

    /// The region as stored, with `_Unsigned` applied (the bits in the viewed type).
    fn read_raw(&self, start: &[u64], count: &[u64]) -> Result<Block, ReadError> {
        let b = pipeline::read_region(&self.var, start, count)?;
        let Some(d) = self.view else {
            return Ok(b);
        };
        let shape = b.shape().to_vec();
        match b.into_data() {
            BlockData::Bytes(bytes) => {
                Block::from_bytes(d, shape, bytes).map_err(|e| ReadError::Block(e.to_string()))
            }
            BlockData::Strings(_) => Err(ReadError::Block("strings are not integers".into())),
        }
    }

    /// The region's stored integers, exactly (for [`Input::is_plain_int`] inputs).
    pub(crate) fn read_ints(&self, start: &[u64], count: &[u64]) -> Result<Vec<i128>, ReadError> {
        let b = self.read_raw(start, count)?;
        Ok(match self.dtype() {
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
        let b = self.read_raw(start, count)?;
        if b.dtype() != self.dtype() {
            return Err(ReadError::Block(format!(
                "variable '{}' read as {:?}, expected {:?}",
                self.var.name,
                b.dtype(),
                self.dtype()
            )));
        }
        let bytes = b
            .bytes()
            .ok_or_else(|| ReadError::Block("strings are not numbers".into()))?;
        if self.ty == Ty::F32 {
            // f64::from(x) == m exactly when m is a float32 and x == m as f32: missing values
            // float32 cannot hold never match, the others compare in float32
            #[allow(clippy::cast_possible_truncation)]
            let missing: Vec<f32> = self
                .missing
                .iter()
                .filter(|m| f64::from(**m as f32) == **m)
                .map(|m| *m as f32)
                .collect();
            // float32 decoding only happens for float32 attributes, so these casts are exact
            #[allow(clippy::cast_possible_truncation)]
            let (scale, offset) = (self.scale.map(|s| s as f32), self.offset.map(|o| o as f32));
            let d = Decode {
                missing: &missing,
                scale,
                offset,
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let v: Vec<f32> = match self.dtype() {
                DType::F32 => d.run(bytes, |x: f32| x),
                DType::F64 => d.run(bytes, |x: f64| x as f32),
                DType::I8 => d.run::<i8>(bytes, f32::from),
                DType::U8 => d.run::<u8>(bytes, f32::from),
                DType::I16 => d.run::<i16>(bytes, f32::from),
                DType::U16 => d.run::<u16>(bytes, f32::from),
                DType::I32 => d.run(bytes, |x: i32| x as f32),
                DType::U32 => d.run(bytes, |x: u32| x as f32),
                DType::I64 => d.run(bytes, |x: i64| x as f32),
                DType::U64 => d.run(bytes, |x: u64| x as f32),
                dt => return Err(ReadError::Block(format!("{dt:?} is not a number"))),
            };
            return Ok(Col::F32(v));
        }
        let d = Decode {
            missing: &self.missing,
            scale: self.scale,
            offset: self.offset,
        };
        #[allow(clippy::cast_precision_loss)]
        let v: Vec<f64> = match self.dtype() {
            DType::F32 => d.run::<f32>(bytes, f64::from),
            DType::F64 => d.run(bytes, |x: f64| x),
            DType::I8 => d.run::<i8>(bytes, f64::from),
            DType::U8 => d.run::<u8>(bytes, f64::from),
            DType::I16 => d.run::<i16>(bytes, f64::from),
            DType::U16 => d.run::<u16>(bytes, f64::from),
            DType::I32 => d.run::<i32>(bytes, f64::from),
            DType::U32 => d.run::<u32>(bytes, f64::from),
            DType::I64 => d.run(bytes, |x: i64| x as f64),
            DType::U64 => d.run(bytes, |x: u64| x as f64),
            dt => return Err(ReadError::Block(format!("{dt:?} is not a number"))),
        };
        Ok(Col::F64(v))
    }
}

/// xarray's decoding of one value, in the decoded type `F`: cast, values equal to a
/// missing value become NaN, then `*= scale_factor`, then `+= add_offset` (the order and
/// precision of xarray's separate array passes, so the results are bit for bit theirs).
/// The hot loop of every reduction: a `_FillValue` equal to its `missing_value` (as CMIP
/// data has) is one masking pass, not two ([`Input::new`] keeps distinct values only).
struct Decode<'a, F> {
    missing: &'a [F],
    scale: Option<F>,
    offset: Option<F>,
}

impl<F> Decode<'_, F>
where
    F: Copy + PartialEq + std::ops::Mul<Output = F> + std::ops::Add<Output = F> + Nan,
{
    fn run<T: crate::block::Element>(&self, bytes: &[u8], cast: impl Fn(T) -> F) -> Vec<F> {
        // separate passes, each a branch-free loop the compiler vectorises (one loop doing
        // all steps per value measured 4x slower)
        let mut v: Vec<F> = T::map_le(bytes, cast);
        for m in self.missing {
            let m = *m;
            v.iter_mut().for_each(|x| *x = if *x == m { F::NAN } else { *x });
        }
        if let Some(s) = self.scale {
            v.iter_mut().for_each(|x| *x = *x * s);
        }
        if let Some(o) = self.offset {
            v.iter_mut().for_each(|x| *x = *x + o);
        }
        v
    }
}

/// The NaN of a decoded float type.
trait Nan {
    const NAN: Self;
}
impl Nan for f32 {
    const NAN: Self = f32::NAN;
}
impl Nan for f64 {
    const NAN: Self = f64::NAN;
}

/// The type xarray reads an integer variable as when it has `_Unsigned` (its CF mask
/// coder): `"true"` on a signed type gives the unsigned type of that width, `"false"` on an
/// unsigned one the signed type; anything else (floats, other values) changes nothing.
fn unsigned_view(var: &Variable) -> Option<DType> {
    let u = var.attrs.get_str("_Unsigned")?;
    match (u, var.dtype) {
        ("true", DType::I8) => Some(DType::U8),
        ("true", DType::I16) => Some(DType::U16),
        ("true", DType::I32) => Some(DType::U32),
        ("true", DType::I64) => Some(DType::U64),
        ("false", DType::U8) => Some(DType::I8),
        ("false", DType::U16) => Some(DType::I16),
        ("false", DType::U32) => Some(DType::I32),
        ("false", DType::U64) => Some(DType::I64),
        _ => None,
    }
}

/// The integer whose low bits are `bits`, read as `d` (xarray converts the `_FillValue` of an
/// `_Unsigned` variable by a view: int8 -1 is uint8 255).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]
fn view_int(bits: u64, d: DType) -> f64 {
    match d {
        DType::U8 => f64::from(bits as u8),
        DType::U16 => f64::from(bits as u16),
        DType::U32 => f64::from(bits as u32),
        DType::I8 => f64::from(bits as u8 as i8),
        DType::I16 => f64::from(bits as u16 as i16),
        DType::I32 => f64::from(bits as u32 as i32),
        DType::I64 => bits as i64 as f64,
        _ => bits as f64,
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
        let ints: BTreeMap<String, DType> = inputs
            .iter()
            .filter(|i| i.is_plain_int())
            .map(|i| (i.var.name.clone(), i.dtype()))
            .collect();
        let typed = expr::check(e, &types).map_err(|e| invalid(name, "expr", e.to_string()))?;
        numpy_ints(&typed.expr, &spec.expr, &ints, &types).map_err(|m| invalid(name, "expr", m))?;
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

/// How [`numpy_ints`] judges one node: position, NumPy's type, what it is, its operands.
type CheckFn<'a> = dyn Fn(usize, Np, &str, &[Np]) -> Result<Np, String> + 'a;

/// NumPy 2's type of a node where some inputs stay integers, for [`numpy_ints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Np {
    Bool,
    /// An integer array of this type.
    Int(DType),
    /// A Python `int` literal (weak: takes the array's type).
    WeakInt,
    /// A Python `float` literal (weak; an integer array with it is float64).
    WeakFloat,
    F16,
    F32,
    F64,
}

fn int_bits(d: DType) -> usize {
    d.size() * 8
}

/// The float type NumPy's float-only ufuncs (`sqrt`, `exp`, `hypot`...) compute an integer in:
/// the smallest that holds it exactly (int8 float16, int16 float32, wider float64).
fn float_of(t: Np) -> Np {
    match t {
        Np::Int(d) if int_bits(d) <= 8 => Np::F16,
        Np::Int(d) if int_bits(d) <= 16 => Np::F32,
        Np::Int(_) => Np::F64,
        Np::WeakInt => Np::WeakFloat,
        t => t,
    }
}

/// NEP 50 promotion of two numeric operands.
fn np_promote(a: Np, b: Np) -> Np {
    use self::Np::{F16, F32, F64, Int, WeakFloat, WeakInt};
    match (a, b) {
        (Int(x), Int(y)) => int_promote(x, y),
        (Int(x), WeakInt) | (WeakInt, Int(x)) => Int(x),
        (Int(_), WeakFloat) | (WeakFloat, Int(_)) => F64,
        (Int(_), f) | (f, Int(_)) => np_promote(float_of(a.max_int(b)), f),
        (WeakInt, WeakInt) => WeakInt,
        (WeakInt | WeakFloat, WeakInt | WeakFloat) => WeakFloat,
        (F64, _) | (_, F64) => F64,
        (F32, _) | (_, F32) => F32,
        (F16, _) | (_, F16) => F16,
        _ => F64,
    }
}

/// NumPy's promotion of two integer types: the wider of one signedness; a signed type
/// wider than the unsigned one wins, else the signed type twice the unsigned width (and
/// float64 for uint64 with a signed type).
fn int_promote(a: DType, b: DType) -> Np {
    let signed = |d: DType| matches!(d, DType::I8 | DType::I16 | DType::I32 | DType::I64);
    if signed(a) == signed(b) {
        return Np::Int(if a.size() >= b.size() { a } else { b });
    }
    let (u, s) = if signed(a) { (b, a) } else { (a, b) };
    if s.size() > u.size() {
        return Np::Int(s);
    }
    match u {
        DType::U8 => Np::Int(DType::I16),
        DType::U16 => Np::Int(DType::I32),
        DType::U32 => Np::Int(DType::I64),
        _ => Np::F64,
    }
}

impl Np {
    /// The integer of a pair, for promotion with a float.
    fn max_int(self, other: Np) -> Np {
        if matches!(self, Np::Int(_)) { self } else { other }
    }
}

/// Refuses expressions whose NumPy 2 evaluation keeps integer arithmetic or lands in a
/// float type other than the one cloudify computes in, when some input stays an integer
/// (`ints`: names of [`Input::is_plain_int`] inputs and their types). cloudify evaluates in
/// floating point only; it reads such integers as float64, which gives NumPy's values
/// exactly where NumPy itself converts them to float64 first. `src` is the expression as
/// written (an integer literal `2` and a float `2.0` differ here).
fn numpy_ints(
    e: &expr::Expr,
    src: &str,
    ints: &BTreeMap<String, DType>,
    floats: &BTreeMap<String, Ty>,
) -> Result<Np, String> {
    use expr::{BinOp, Expr, Func, UnOp};
    let chars: Vec<char> = src.chars().collect();
    let refuse = |pos: usize, t: Np, what: &str| -> String {
        let ty = match t {
            Np::Int(d) => format!("an integer ({})", d.numpy_name()),
            _ => "float16".to_string(),
        };
        format!(
            "at character {pos}: NumPy computes {what} as {ty}; cloudify computes integers in float64 only, so write it so that NumPy would too (e.g. multiply the integer variable by 1.0 first)"
        )
    };
    let check = |pos: usize, t: Np, what: &str, operands: &[Np]| -> Result<Np, String> {
        match t {
            Np::Int(_) | Np::F16 => Err(refuse(pos, t, what)),
            // an integer of at most 16 bits with float32 stays float32 in NumPy
            Np::F32 if operands.iter().any(|o| matches!(o, Np::Int(_))) => Err(format!(
                "at character {pos}: NumPy computes {what} of a small integer in float32; cloudify reads integers as float64 (multiply the integer variable by 1.0 first to compute in float64 as NumPy would then)"
            )),
            t => Ok(t),
        }
    };
    fn go(
        e: &Expr,
        chars: &[char],
        ints: &BTreeMap<String, DType>,
        floats: &BTreeMap<String, Ty>,
        check: &CheckFn,
    ) -> Result<Np, String> {
        let sub = |x: &Expr| go(x, chars, ints, floats, check);
        Ok(match e {
            Expr::Num { pos, .. } => {
                let lit: String = chars
                    .get(*pos..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '.')
                    .collect();
                if lit.chars().all(|c| c.is_ascii_digit()) {
                    Np::WeakInt
                } else {
                    Np::WeakFloat
                }
            }
            Expr::Var { name, .. } => match (ints.get(name), floats.get(name)) {
                (Some(d), _) => Np::Int(*d),
                (None, Some(Ty::F32)) => Np::F32,
                _ => Np::F64,
            },
            Expr::Unary { op, arg, pos } => {
                let t = sub(arg)?;
                match op {
                    UnOp::Not => Np::Bool,
                    UnOp::Neg => check(*pos, t, "the negation", &[t])?,
                    UnOp::Plus => t,
                }
            }
            Expr::Binary { op, lhs, rhs, pos } => {
                let (a, b) = (sub(lhs)?, sub(rhs)?);
                let sym = format!("'{}'", op.symbol());
                match op {
                    BinOp::And | BinOp::Or => Np::Bool,
                    o if o.is_cmp() => {
                        // integers compare exactly in NumPy, in float64 here: the same up to 2^53
                        let wide = |t: Np| matches!(t, Np::Int(d) if int_bits(d) == 64);
                        let exact = |t: Np| matches!(t, Np::Int(_) | Np::WeakInt);
                        if (wide(a) && exact(b)) || (wide(b) && exact(a)) {
                            return Err(format!(
                                "at character {pos}: NumPy compares 64-bit integers exactly, cloudify in float64 (equal only below 2^53); compare with a float (e.g. 3.0) instead"
                            ));
                        }
                        Np::Bool
                    }
                    BinOp::Div => {
                        let (fa, fb) = match (a, b) {
                            (Np::Int(_) | Np::WeakInt, Np::Int(_) | Np::WeakInt) => (Np::F64, Np::F64),
                            _ => (a, b),
                        };
                        check(*pos, np_promote(fa, fb), &sym, &[a, b])?
                    }
                    _ => check(*pos, np_promote(a, b), &sym, &[a, b])?,
                }
            }
            Expr::Call { func, args, pos } => {
                let ts = args.iter().map(sub).collect::<Result<Vec<_>, _>>()?;
                let name = func.name();
                match func {
                    Func::IsNan => Np::Bool,
                    Func::Sqrt | Func::Exp | Func::Log | Func::Log10 => {
                        let t = float_of(ts[0]);
                        check(*pos, if t == Np::WeakFloat { Np::F64 } else { t }, name, &ts)?
                    }
                    Func::Hypot => {
                        let t = np_promote(float_of(ts[0]), float_of(ts[1]));
                        check(*pos, if t == Np::WeakFloat { Np::F64 } else { t }, name, &ts)?
                    }
                    Func::Where => {
                        let t = np_promote(ts[1], ts[2]);
                        let t = match t {
                            Np::WeakInt => Np::Int(DType::I64),
                            Np::WeakFloat => Np::F64,
                            t => t,
                        };
                        check(*pos, t, name, &ts)?
                    }
                    Func::Abs => check(*pos, ts[0], name, &ts)?,
                    _ => {
                        let t = ts.iter().skip(1).fold(ts[0], |a, b| np_promote(a, *b));
                        check(*pos, t, name, &ts)?
                    }
                }
            }
        })
    }
    go(e, &chars, ints, floats, &check)
}

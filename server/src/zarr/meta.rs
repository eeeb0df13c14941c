//! Zarr metadata documents as serde types: one writer per document kind, shared by the
//! `/zarr` and `/kerchunk` renderers.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::dataset::Variable;
use crate::dtype::{DType, fill_json};

/// A Zarr v2 `.zarray`.
#[derive(Clone, Debug, Serialize)]
pub struct ArrayV2 {
    /// Always 2.
    pub zarr_format: u8,
    /// Length along each dimension.
    pub shape: Vec<u64>,
    /// Chunk shape (edge chunks are padded to it).
    pub chunks: Vec<u64>,
    /// numpy type string (`<f4`, `|S1`, `|O`...).
    pub dtype: String,
    /// numcodecs compressor, or null.
    pub compressor: Value,
    /// Value of never-written elements: the variable's `_FillValue`; null for text types and
    /// variables without one.
    pub fill_value: Value,
    /// Always `C` (row-major): the server serves C-ordered chunks.
    pub order: &'static str,
    /// numcodecs filters, or null.
    pub filters: Value,
    /// Always `.` (`tas/0.1.2`).
    pub dimension_separator: &'static str,
}

impl ArrayV2 {
    /// The `.zarray` of `v` with the given chunk shape, numpy type and codecs; its
    /// `fill_value` is the variable's `_FillValue` (null without one).
    pub fn of(v: &Variable, chunks: &[u64], dtype: String, compressor: Value, filters: Value) -> Self {
        Self {
            zarr_format: 2,
            shape: v.shape.clone(),
            chunks: chunks.to_vec(),
            dtype,
            compressor,
            fill_value: v2_fill(v),
            order: "C",
            filters,
            dimension_separator: ".",
        }
    }

    /// The document.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The v2 `fill_value` of a variable: its `_FillValue` (text types and variables without
/// one: null; Zarr v2 bools are JSON booleans).
pub fn v2_fill(v: &Variable) -> Value {
    match (v.dtype, v.fill_attr) {
        (DType::Str | DType::Char, _) | (_, None) => Value::Null,
        (DType::Bool, Some(s)) => Value::Bool(s.as_f64() != 0.0),
        (dt, Some(s)) => fill_json(s, dt),
    }
}

/// A JSON document held as text (a declaration copied verbatim from a source) as a value;
/// text that is not JSON becomes null.
pub fn json_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Attributes rendered by [`crate::attrs::Attrs::to_json`] (its own writer keeps netCDF's
/// types and xarray's spellings), embedded in a document as they are.
pub fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).unwrap_or_else(|_| empty_object())
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

/// A Zarr v3 array `zarr.json`.
#[derive(Debug, Serialize)]
pub struct ArrayV3 {
    /// Always 3.
    pub zarr_format: u8,
    /// Always `array`.
    pub node_type: &'static str,
    /// Length along each dimension.
    pub shape: Vec<u64>,
    /// Zarr v3 data type (`float32`, or an extension type's object).
    pub data_type: Value,
    /// A `regular` grid with the chunk shape.
    pub chunk_grid: Value,
    /// The `default` encoding with `/` separators (`c/0/1`).
    pub chunk_key_encoding: Value,
    /// Value of never-written elements (Zarr v3 requires one; the variable's `_FillValue`, else
    /// netCDF's default).
    pub fill_value: Value,
    /// The codec chain, bytes-to-bytes codecs last, as the chunks are encoded.
    pub codecs: Vec<Value>,
    /// The variable's attributes, pre-rendered JSON.
    pub attributes: Box<RawValue>,
    /// Dimension names, as `_ARRAY_DIMENSIONS` in v2 (what xarray reads).
    pub dimension_names: Vec<String>,
}

impl ArrayV3 {
    /// A regular chunk grid with `/`-separated keys (`c/0/1`).
    pub fn new(
        shape: Vec<u64>,
        data_type: Value,
        chunk_shape: &[u64],
        fill_value: Value,
        codecs: Vec<Value>,
        attributes: Box<RawValue>,
        dimension_names: Vec<String>,
    ) -> Self {
        Self {
            zarr_format: 3,
            node_type: "array",
            shape,
            data_type,
            chunk_grid: serde_json::json!({"name": "regular", "configuration": {"chunk_shape": chunk_shape}}),
            chunk_key_encoding: serde_json::json!({"name": "default", "configuration": {"separator": "/"}}),
            fill_value,
            codecs,
            attributes,
            dimension_names,
        }
    }
}

/// A Zarr v3 group `zarr.json`, with inline consolidated metadata of everything below it
/// (zarr-python's form) or without.
#[derive(Debug, Serialize)]
pub struct GroupV3 {
    /// Always 3.
    pub zarr_format: u8,
    /// Always `group`.
    pub node_type: &'static str,
    /// The group's attributes, pre-rendered JSON.
    pub attributes: Box<RawValue>,
    /// Metadata of everything below the group, inline (zarr-python's consolidated form); `None`:
    /// not consolidated, omitted from the JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consolidated_metadata: Option<Consolidated>,
}

/// Inline consolidated metadata of a v3 group: relative path → document.
#[derive(Debug, Serialize)]
pub struct Consolidated {
    /// Always `inline`.
    pub kind: &'static str,
    /// Always false: readers that ignore consolidated metadata still read the store correctly.
    pub must_understand: bool,
    /// Every document below the group, by path relative to it.
    pub metadata: Entries,
}

impl GroupV3 {
    /// A group document with `attributes`; `consolidated` lists the documents below it, if any.
    pub fn new(attributes: Box<RawValue>, consolidated: Option<Entries>) -> Self {
        Self {
            zarr_format: 3,
            node_type: "group",
            attributes,
            consolidated_metadata: consolidated.map(|metadata| Consolidated {
                kind: "inline",
                must_understand: false,
                metadata,
            }),
        }
    }
}

/// Zarr v2 `.zmetadata` (consolidated metadata): key → document.
#[derive(Debug, Serialize)]
pub struct ConsolidatedV2 {
    /// Always 1.
    pub zarr_consolidated_format: u8,
    /// Every metadata document of the store, by key (`.zgroup`, `tas/.zarray`, `tas/.zattrs`, ...).
    pub metadata: Entries,
}

/// Any metadata document as JSON text.
pub fn to_json<T: Serialize>(doc: &T) -> String {
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string(doc).unwrap_or_default()
}

/// Documents by key, serialized as a JSON object in this order.
#[derive(Debug, Default)]
pub struct Entries(pub Vec<(String, Box<RawValue>)>);

impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

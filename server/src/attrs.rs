//! netCDF attributes and their JSON form.
//!
//! netCDF attributes are typed arrays; JSON has numbers, strings and lists. We follow what
//! xarray's netCDF backend shows users: one-element arrays become scalars, text becomes a
//! string. Non-finite floats are written as the bare tokens `NaN`/`Infinity` that Python's
//! `json` module (and therefore zarr-python and xarray) reads back as floats.

use std::fmt::Write as _;

/// One attribute value.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AttrValue {
    /// Text (a netCDF `char` array or a single `string`); written as a JSON string.
    Str(String),
    /// netCDF-4 `string` array; one element is written as a scalar string, more as a list.
    Strs(Vec<String>),
    /// Signed integers of any width, widened to i64; one element is written as a scalar.
    Ints(Vec<i64>),
    /// Unsigned integers of any width, widened to u64 (so u64 values above `i64::MAX` survive).
    UInts(Vec<u64>),
    /// float64 attributes (and floats of formats that do not say their width, e.g. JSON).
    /// Persisted as IEEE bits so NaN and infinities survive the index cache.
    Floats(#[serde(with = "float_bits")] Vec<f64>),
    /// float32 attributes, kept at their width because xarray decodes packed data to float32
    /// only when `scale_factor`/`add_offset` are float32 (`_choose_float_dtype`). Written to
    /// JSON widened exactly, as numpy does. Persisted as IEEE bits, like [`AttrValue::Floats`].
    Floats32(#[serde(with = "float32_bits")] Vec<f32>),
}

mod float32_bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Ok(Vec::<u32>::deserialize(d)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }
}

mod float_bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(f64::from_bits)
            .collect())
    }
}

impl AttrValue {
    /// First element as f64, if numeric.
    pub fn first_f64(&self) -> Option<f64> {
        match self {
            AttrValue::Ints(v) => v.first().map(|x| *x as f64),
            AttrValue::UInts(v) => v.first().map(|x| *x as f64),
            AttrValue::Floats(v) => v.first().copied(),
            AttrValue::Floats32(v) => v.first().map(|x| f64::from(*x)),
            _ => None,
        }
    }

    /// The values as f64 (float32 widened exactly), if this is a float attribute of either width.
    pub fn floats(&self) -> Option<Vec<f64>> {
        match self {
            AttrValue::Floats(v) => Some(v.clone()),
            AttrValue::Floats32(v) => Some(v.iter().map(|x| f64::from(*x)).collect()),
            _ => None,
        }
    }

    /// True for a float32 attribute ([`AttrValue::Floats32`]).
    pub fn is_f32(&self) -> bool {
        matches!(self, AttrValue::Floats32(_))
    }

    /// Text value, if a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Strs(v) if v.len() == 1 => v.first().map(String::as_str),
            _ => None,
        }
    }

    /// Writes the JSON form (see module docs).
    pub fn write_json(&self, out: &mut String) {
        fn list<T>(out: &mut String, v: &[T], f: impl Fn(&mut String, &T)) {
            if v.len() == 1 {
                f(out, &v[0]);
                return;
            }
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                f(out, x);
            }
            out.push(']');
        }
        match self {
            AttrValue::Str(s) => write_json_str(out, s),
            AttrValue::Strs(v) => list(out, v, |o, s| write_json_str(o, s)),
            AttrValue::Ints(v) => list(out, v, |o, x| {
                let _ = write!(o, "{x}");
            }),
            AttrValue::UInts(v) => list(out, v, |o, x| {
                let _ = write!(o, "{x}");
            }),
            AttrValue::Floats(v) => list(out, v, |o, x| write_json_f64(o, *x)),
            AttrValue::Floats32(v) => list(out, v, |o, x| write_json_f64(o, f64::from(*x))),
        }
    }

    /// Plain-text rendering for summaries.
    pub fn display(&self) -> String {
        let mut s = String::new();
        match self {
            AttrValue::Str(v) => s.push_str(v),
            _ => self.write_json(&mut s),
        }
        s
    }
}

/// Writes a JSON string literal.
pub fn write_json_str(out: &mut String, s: &str) {
    // serde_json's escaping is correct for every code point; reuse it.
    out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
}

/// Writes a float the way Python's `json.dumps` would, including non-finite values.
pub fn write_json_f64(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x == f64::INFINITY {
        out.push_str("Infinity");
    } else if x == f64::NEG_INFINITY {
        out.push_str("-Infinity");
    } else if x == 0.0 || (1e-5..1e16).contains(&x.abs()) {
        // shortest round-trip decimal; keep a float a float ("1.0", not "1")
        let start = out.len();
        let _ = write!(out, "{x}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    } else {
        // exponent form for very large/small magnitudes, e.g. "1e20" (valid JSON)
        let _ = write!(out, "{x:e}");
    }
}

/// Ordered attributes of a variable or group.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attrs(pub Vec<(String, AttrValue)>);

impl Attrs {
    /// The value of the attribute `name`, if present (names are case-sensitive, as in netCDF).
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The attribute `name` as text, if it is text (or a one-element string array); `None` if
    /// absent or not text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(AttrValue::as_str)
    }

    /// Removes the attribute `name` and returns its value; `None` if it was not there.
    pub fn remove(&mut self, name: &str) -> Option<AttrValue> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    /// Sets the attribute `name`, replacing a value in place (keeping its position) or appending a
    /// new one.
    pub fn insert(&mut self, name: &str, value: AttrValue) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// JSON object text. `extra` entries (already JSON) are appended, e.g. `_ARRAY_DIMENSIONS`.
    pub fn to_json(&self, skip: &[&str], extra: &[(&str, String)]) -> String {
        let mut out = String::from("{");
        let mut first = true;
        for (k, v) in &self.0 {
            if skip.contains(&k.as_str()) {
                continue;
            }
            if !first {
                out.push_str(", ");
            }
            first = false;
            write_json_str(&mut out, k);
            out.push_str(": ");
            v.write_json(&mut out);
        }
        for (k, v) in extra {
            if !first {
                out.push_str(", ");
            }
            first = false;
            write_json_str(&mut out, k);
            out.push_str(": ");
            out.push_str(v);
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let a = Attrs(vec![
            ("units".into(), AttrValue::Str("K \"kelvin\"".into())),
            ("scale".into(), AttrValue::Floats(vec![0.5])),
            ("range".into(), AttrValue::Ints(vec![-1, 2])),
            ("miss".into(), AttrValue::Floats(vec![f64::NAN])),
            ("big".into(), AttrValue::Floats(vec![1e20])),
            ("one".into(), AttrValue::Floats(vec![1.0])),
            ("f32".into(), AttrValue::Floats32(vec![0.1, 1e20])),
        ]);
        let s = a.to_json(&[], &[("_ARRAY_DIMENSIONS", "[\"x\"]".into())]);
        assert_eq!(
            s,
            r#"{"units": "K \"kelvin\"", "scale": 0.5, "range": [-1, 2], "miss": NaN, "big": 1e20, "one": 1.0, "f32": [0.10000000149011612, 1.0000000200408773e20], "_ARRAY_DIMENSIONS": ["x"]}"#
        );
    }

    #[test]
    fn float32_survives_the_index_cache_at_its_width() {
        let a = AttrValue::Floats32(vec![0.1, f32::NAN, -0.0]);
        let back: AttrValue = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let AttrValue::Floats32(v) = back else {
            panic!("width lost: {back:?}")
        };
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            [0.1f32.to_bits(), f32::NAN.to_bits(), (-0.0f32).to_bits()]
        );
    }
}

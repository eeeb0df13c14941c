//! Zarr v3 codec chains decoded with `zarrs`.
//!
//! Our own pipeline ([`super::decode_hdf5`]) undoes the codecs HDF5 and numcodecs write
//! (zlib, gzip, zstd, blosc, shuffle). Zarr v3 stores may use codecs it does not know —
//! `crc32c`, `transpose`, `bitround`, nested `sharding_indexed` — and rather than
//! reimplementing each we hand such chunks to the reference Rust implementation. A chain is
//! described by a small JSON spec (data type, fill value, chunk shape, codecs: exactly the
//! v3 metadata fields the chain needs) so it can live in a [`crate::source::Filter`], which
//! is plain data that the index cache persists.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;
use zarrs::array::{
    ArrayToBytesCodecTraits, CodecChain, CodecOptions, DataType, FillValue, FillValueMetadata,
};
use zarrs::metadata::v3::MetadataV3;

use super::CodecError;

/// A parsed chain with what decoding one chunk needs.
pub struct Chain {
    chain: CodecChain,
    shape: Vec<NonZeroU64>,
    data_type: DataType,
    fill: FillValue,
}

/// The JSON spec of a chain (see the module docs).
pub fn spec(data_type: &Value, fill_value: &Value, chunk_shape: &[u64], codecs: &Value) -> String {
    serde_json::json!({
        "data_type": data_type,
        "fill_value": fill_value,
        "chunk_shape": chunk_shape,
        "codecs": codecs,
    })
    .to_string()
}

/// Why a spec cannot be turned into a chain. `Unsupported` names a codec `zarrs` does not
/// know (or that this build leaves out), so `/zarr` can answer 501 naming it.
#[derive(Debug, PartialEq)]
pub enum ChainError {
    /// A codec id `zarrs` does not know (or this build leaves out); `/zarr` answers 501 naming it.
    Unsupported(String),
    /// The codec spec is not valid JSON codec metadata, or a codec's configuration is
    /// rejected; the message says which.
    Invalid(String),
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Unsupported(c) => write!(f, "codec '{c}' is not supported"),
            ChainError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Parses a spec. Used at open time (to reject bad metadata early) and, cached, when decoding.
pub fn parse(spec: &str) -> Result<Chain, ChainError> {
    let v: Value = serde_json::from_str(spec).map_err(|e| ChainError::Invalid(format!("codec spec: {e}")))?;
    let codecs: Vec<MetadataV3> = serde_json::from_value(v.get("codecs").cloned().unwrap_or(Value::Null))
        .map_err(|e| ChainError::Invalid(format!("'codecs' is not a list of codec metadata: {e}")))?;
    let dt_meta: MetadataV3 = serde_json::from_value(v.get("data_type").cloned().unwrap_or(Value::Null))
        .map_err(|e| ChainError::Invalid(format!("'data_type': {e}")))?;
    let data_type = DataType::from_metadata(&dt_meta)
        .map_err(|e| ChainError::Invalid(format!("data type {}: {e}", dt_meta.name())))?;
    let fv_meta: FillValueMetadata =
        serde_json::from_value(v.get("fill_value").cloned().unwrap_or(Value::Null))
            .map_err(|e| ChainError::Invalid(format!("'fill_value': {e}")))?;
    let fill = data_type
        .fill_value_v3(&fv_meta)
        .map_err(|e| ChainError::Invalid(format!("fill_value {fv_meta:?}: {e}")))?;
    let shape = v
        .get("chunk_shape")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().and_then(NonZeroU64::new))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ChainError::Invalid("chunk shape is not a list of positive integers".into()))?;
    // Name the first codec zarrs does not know, rather than the chain's generic error.
    for c in &codecs {
        match zarrs::array::Codec::from_metadata(c) {
            Ok(_) => {}
            Err(zarrs::plugin::PluginCreateError::Unsupported(_)) if c.must_understand() => {
                return Err(ChainError::Unsupported(c.name().to_string()));
            }
            Err(zarrs::plugin::PluginCreateError::Unsupported(_)) => {}
            Err(e) => return Err(ChainError::Invalid(format!("codec '{}': {e}", c.name()))),
        }
    }
    let chain =
        CodecChain::from_metadata(&codecs).map_err(|e| ChainError::Invalid(format!("codecs: {e}")))?;
    Ok(Chain {
        chain,
        shape,
        data_type,
        fill,
    })
}

static CHAINS: LazyLock<Mutex<HashMap<String, Arc<Chain>>>> = LazyLock::new(Default::default);

fn cached(spec: &str) -> Result<Arc<Chain>, CodecError> {
    if let Some(c) = CHAINS.lock().ok().and_then(|m| m.get(spec).cloned()) {
        return Ok(c);
    }
    let chain = Arc::new(parse(spec).map_err(|e| match e {
        ChainError::Unsupported(c) => CodecError::Unsupported(c),
        ChainError::Invalid(m) => CodecError::Zarr(m),
    })?);
    if let Ok(mut m) = CHAINS.lock() {
        // Specs are per array; a server holds few distinct ones. Bound it anyway.
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(spec.to_string(), chain.clone());
    }
    Ok(chain)
}

impl Chain {
    /// Encoded size of a chunk when every chunk has the same one (shard indexes).
    pub fn fixed_encoded_size(&self) -> Option<u64> {
        match self
            .chain
            .encoded_representation(&self.shape, &self.data_type, &self.fill)
            .ok()?
        {
            zarrs::array::BytesRepresentation::FixedSize(n) => Some(n),
            _ => None,
        }
    }

    /// Encodes one chunk of little-endian elements (tests build stores with it).
    #[cfg(test)]
    pub fn encode(&self, raw: Vec<u8>) -> Vec<u8> {
        self.chain
            .encode(
                zarrs::array::ArrayBytes::new_flen(raw),
                &self.shape,
                &self.data_type,
                &self.fill,
                &CodecOptions::default(),
            )
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default()
    }

    /// Decodes one chunk into native-endian (little-endian here) element bytes.
    pub fn decode(&self, raw: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        let out = self
            .chain
            .decode(
                std::borrow::Cow::Owned(raw),
                &self.shape,
                &self.data_type,
                &self.fill,
                &CodecOptions::default(),
            )
            .map_err(|e| CodecError::Zarr(e.to_string()))?;
        let fixed = out
            .into_fixed()
            .map_err(|e| CodecError::Zarr(format!("variable-length data: {e}")))?;
        Ok(fixed.into_owned())
    }
}

/// Decodes one chunk with the chain of `spec`; exactly `expected` bytes or an error.
pub fn decode(spec: &str, raw: Vec<u8>, expected: usize) -> Result<Vec<u8>, CodecError> {
    let out = cached(spec)?.decode(raw)?;
    if out.len() != expected {
        return Err(CodecError::Size {
            got: out.len(),
            expected,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_crc32c_and_transpose_and_names_unknown_codecs() {
        // 2x3 uint16 stored transposed (F order), little-endian, with a crc32c checksum.
        let codecs = json!([
            {"name": "transpose", "configuration": {"order": [1, 0]}},
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "crc32c"}
        ]);
        let s = spec(&json!("uint16"), &json!(0), &[2, 3], &codecs);
        let chain = parse(&s).unwrap();
        // encode with zarrs to get the stored form of [[1,2,3],[4,5,6]]
        let vals: Vec<u8> = [1u16, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let enc = chain
            .chain
            .encode(
                zarrs::array::ArrayBytes::new_flen(vals.clone()),
                &chain.shape,
                &chain.data_type,
                &chain.fill,
                &CodecOptions::default(),
            )
            .unwrap()
            .into_owned();
        // stored order is column-major
        assert_eq!(&enc[..4], &[1, 0, 4, 0]);
        assert_eq!(decode(&s, enc.clone(), 12).unwrap(), vals);
        // a flipped bit fails the checksum
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert!(matches!(decode(&s, bad, 12), Err(CodecError::Zarr(_))));
        // a truncated chunk is an error, not a panic
        assert!(decode(&s, enc[..3].to_vec(), 12).is_err());
        let unknown = spec(
            &json!("uint16"),
            &json!(0),
            &[2, 3],
            &json!([{"name": "bytes"}, {"name": "frobnicate"}]),
        );
        assert_eq!(
            parse(&unknown).err(),
            Some(ChainError::Unsupported("frobnicate".into()))
        );
        assert!(matches!(decode(&unknown, vec![], 12), Err(CodecError::Unsupported(c)) if c == "frobnicate"));
        // the fixed size of a shard index: 16 bytes per inner chunk + crc32c
        let idx = spec(
            &json!("uint64"),
            &json!(0),
            &[4, 2],
            &json!([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]),
        );
        assert_eq!(parse(&idx).unwrap().fixed_encoded_size(), Some(4 * 16 + 4));
    }
}

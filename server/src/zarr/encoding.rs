//! How each variable's chunks are encoded on `/zarr`: the source's own bytes when they can
//! pass through unchanged, else decoded and re-encoded.
//!
//! A protocol decision, made here from what the dataset layer says about the variable
//! (its served chunking, its pieces' layouts), not stored on the variable.

use crate::codec::{Encoding, ZSTD_LEVEL, numcodecs};
use crate::dataset::aggregate::pieces_tile;
use crate::dataset::{Piece, Values, Variable};
use crate::dtype::{DType, Endian};
use crate::source::Layout;

/// The Zarr encodings of one variable.
#[derive(Clone, Debug, PartialEq)]
pub struct ZarrEncoding {
    /// Encoding of Zarr v2 chunks. When it is the source's own pipeline, stored chunks are
    /// served byte-for-byte.
    pub v2: Encoding,
    /// Encoding of Zarr v3 chunks: Blosc around the stored zlib stream when passing
    /// through, else zstd.
    pub v3: Encoding,
    /// True when every served chunk is exactly one stored chunk with the `v2` encoding.
    pub passthrough: bool,
}

/// Encoding of chunks that are decoded on the server (numeric types: Blosc zstd+shuffle).
pub fn transcode_encoding(dtype: DType) -> Encoding {
    match dtype {
        DType::Char | DType::Str | DType::Bytes(_) | DType::Unicode(_) => Encoding::Zstd(ZSTD_LEVEL),
        dt => Encoding::BloscZstd {
            level: ZSTD_LEVEL,
            typesize: dt.size(),
        },
    }
}

/// The source's zlib pipeline of a piece as a Zarr encoding, if it has one Zarr can name
/// (little-endian elements: Zarr clients get little-endian data).
fn stored_pipeline(p: &Piece) -> Option<Encoding> {
    match p.data.layout.chunking() {
        Some((_, filters)) if p.data.endian == Endian::Little => numcodecs::passthrough_encoding(filters),
        _ => None,
    }
}

/// The encodings of `v`. Pass-through when every piece is chunked like the served grid
/// with the same zlib pipeline; computed variables are always encoded here.
pub fn choose(v: &Variable) -> ZarrEncoding {
    let passthrough_enc = match &v.values {
        Values::Stored { concat_axis, pieces } => pieces.first().and_then(|first| {
            let source_chunks = first.data.layout.chunking().map(|(c, _)| c.clone())?;
            let enc = stored_pipeline(first)?;
            let eligible = source_chunks == v.chunks
                && pieces_tile(pieces, *concat_axis, &source_chunks)
                && !matches!(v.dtype, DType::Char | DType::Str)
                && !v.dtype.is_fixed_text();
            let all_same = pieces.iter().all(|p| {
                stored_pipeline(p).as_ref() == Some(&enc) || matches!(p.data.layout, Layout::Unallocated)
            });
            (eligible && all_same).then_some(enc)
        }),
        Values::Derived(_) => None,
    };
    let v3 = match &passthrough_enc {
        Some(Encoding::ShuffleZlib { shuffle, level }) => Encoding::BloscZlib {
            shuffle: *shuffle,
            level: *level,
            typesize: v.dtype.size(),
        },
        _ => transcode_encoding(v.dtype),
    };
    ZarrEncoding {
        passthrough: passthrough_enc.is_some(),
        v2: passthrough_enc.unwrap_or_else(|| transcode_encoding(v.dtype)),
        v3,
    }
}

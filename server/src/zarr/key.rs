//! HTTP key → (variable, chunk index). Pure parsing; the dataset only answers "is this a
//! variable path".
//!
//! Keys come from the network and may be arbitrarily long (up to what hyper accepts, 64 KiB),
//! so the work per key is linear in its length: only prefixes that can be variable paths are
//! looked up ([`KeyLimits::max_depth`]), each as a slice of the key, and keys longer than any
//! chunk key of the dataset are refused before any lookup ([`KeyLimits::max_len`]).

/// Which chunk-key spelling a request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Zarr v2: indices joined by `.` after the array path (`tas/0.1.2`); a 0-d array's chunk is
    /// `0`.
    V2,
    /// Zarr v3 default encoding: `c` then indices joined by `/` (`tas/c/0/1/2`); a 0-d array's
    /// chunk is `c`.
    V3,
}

/// A parsed chunk request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkKey {
    /// Zarr path of the array (`tas`, `g1/sub/x`), a variable of the dataset.
    pub var: String,
    /// Chunk index, one entry per dimension (empty for a 0-d array); not yet checked against the
    /// grid.
    pub index: Vec<u64>,
    /// Which spelling the key used, so the answer is encoded for that Zarr version.
    pub format: Format,
}

/// Why a key is not a chunk key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No variable matches the key: 404.
    #[error("{0}")]
    NotFound(String),
    /// A variable matches but the rest is malformed, or the key cannot be a chunk key of
    /// this dataset at all (too long): 400.
    #[error("{0}")]
    BadRequest(String),
}

/// Digits of the largest chunk index (`u64::MAX` has 20) plus its separator.
const INDEX_LEN: usize = 21;

/// Bounds of the chunk keys of one dataset, derived from its variables: what makes parsing
/// linear in the key length whatever a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Most `/`-separated segments of any variable path: longer prefixes of a key cannot name
    /// a variable, so they are never looked up.
    pub max_depth: usize,
    /// Length of the longest possible chunk key (longest path, `/c/`, the largest rank's
    /// worth of 20-digit indices); a longer key is refused without parsing it.
    pub max_len: usize,
}

impl KeyLimits {
    /// Limits for variables given as `(path, rank)`.
    pub fn of<'a>(vars: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut l = Self {
            max_depth: 0,
            max_len: 0,
        };
        for (path, rank) in vars {
            l.max_depth = l.max_depth.max(path.split('/').count());
            // `path/c/i/j/k` (v3) is the longest spelling; rank 0 is `path/c` or `path/0`.
            l.max_len = l.max_len.max(path.len() + 3 + rank.max(1) * INDEX_LEN);
        }
        l
    }
}

fn parse_indices<'a>(
    parts: impl Iterator<Item = &'a str>,
    key: &str,
    var: &str,
) -> Result<Vec<u64>, KeyError> {
    parts
        .map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(KeyError::BadRequest(format!(
                    "malformed chunk key '{key}' for variable '{var}': '{p}' is not a chunk index"
                )));
            }
            p.parse::<u64>().map_err(|_| {
                KeyError::BadRequest(format!(
                    "malformed chunk key '{key}' for variable '{var}': index '{p}' is too large"
                ))
            })
        })
        .collect()
}

/// Parses `key` (relative to the Zarr root) as a chunk key. `rank_of(path)` returns the
/// number of dimensions of the variable at `path`, or `None` if there is none. The longest
/// prefix of `key` that is a variable decides; `rank_of` is asked about at most
/// `limits.max_depth` prefixes, each a slice of `key`, so the work is linear in its length.
pub fn parse_chunk_key(
    key: &str,
    limits: KeyLimits,
    rank_of: impl Fn(&str) -> Option<usize>,
) -> Result<ChunkKey, KeyError> {
    if key.len() > limits.max_len {
        return Err(KeyError::BadRequest(format!(
            "malformed chunk key: {} bytes long, longer than any chunk key of this dataset (at most {}) (key starts '{}')",
            key.len(),
            limits.max_len,
            head(key, 64)
        )));
    }
    // Byte offset of each `/` separating segments: segment k starts after seps[k - 1].
    let seps: Vec<usize> = key.match_indices('/').map(|(i, _)| i).collect();
    for k in (1..=seps.len().min(limits.max_depth)).rev() {
        let var = &key[..seps[k - 1]];
        let Some(rank) = rank_of(var) else { continue };
        let rest = &key[seps[k - 1] + 1..];
        let (index, format) = if let Some(v3) = rest
            .strip_prefix('c')
            .filter(|r| r.is_empty() || r.starts_with('/'))
        {
            let idx = match v3.strip_prefix('/') {
                Some(parts) => parse_indices(parts.split('/'), key, var)?,
                None => Vec::new(),
            };
            (idx, Format::V3)
        } else if !rest.contains('/') {
            let idx = parse_indices(rest.split('.'), key, var)?;
            // v2 spells the single chunk of a 0-d array "0"
            if rank == 0 && idx == [0] {
                (Vec::new(), Format::V2)
            } else {
                (idx, Format::V2)
            }
        } else {
            return Err(KeyError::BadRequest(format!(
                "malformed chunk key '{key}' for variable '{var}': expected '{var}/i.j.k' (Zarr v2) or '{var}/c/i/j/k' (Zarr v3)"
            )));
        };
        if index.len() != rank {
            return Err(KeyError::BadRequest(format!(
                "malformed chunk key '{key}': {} indices given but variable '{var}' has {rank} dimensions",
                index.len()
            )));
        }
        return Ok(ChunkKey {
            var: var.to_string(),
            index,
            format,
        });
    }
    Err(KeyError::NotFound(format!(
        "no such key '{key}': no variable or metadata document by that name"
    )))
}

/// The key a Zarr client asks for chunk `index` of the array at `var` in `format`: the
/// inverse of [`parse_chunk_key`] (the server computes chunks ahead under the keys clients
/// will request, `http::zarr`).
pub fn chunk_key(var: &str, index: &[u64], format: Format) -> String {
    let join = |sep: &str| index.iter().map(u64::to_string).collect::<Vec<_>>().join(sep);
    match (format, index.is_empty()) {
        (Format::V3, true) => format!("{var}/c"),
        (Format::V3, false) => format!("{var}/c/{}", join("/")),
        (Format::V2, true) => format!("{var}/0"),
        (Format::V2, false) => format!("{var}/{}", join(".")),
    }
}

/// The first `n` bytes of `s` (at a character boundary), for messages about huge keys.
fn head(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_keys_parse_back_to_their_chunk() {
        let limits = KeyLimits::of([("tas", 3), ("g1/sub/x", 1), ("s", 0)]);
        for (var, index) in [("tas", vec![0, 12, 3]), ("g1/sub/x", vec![7]), ("s", vec![])] {
            for format in [Format::V2, Format::V3] {
                let key = chunk_key(var, &index, format);
                let parsed = parse_chunk_key(&key, limits, rank).expect(&key);
                assert_eq!(
                    (parsed.var.as_str(), parsed.index, parsed.format),
                    (var, index.clone(), format)
                );
            }
        }
        assert_eq!(chunk_key("tas", &[0, 1, 2], Format::V2), "tas/0.1.2");
        assert_eq!(chunk_key("tas", &[0, 1, 2], Format::V3), "tas/c/0/1/2");
        assert_eq!(chunk_key("s", &[], Format::V3), "s/c");
        assert_eq!(chunk_key("s", &[], Format::V2), "s/0");
    }

    fn rank(p: &str) -> Option<usize> {
        match p {
            "tas" => Some(3),
            "g1/sub/x" => Some(1),
            "s" => Some(0),
            _ => None,
        }
    }

    fn limits() -> KeyLimits {
        KeyLimits::of([("tas", 3), ("g1/sub/x", 1), ("s", 0)])
    }

    #[test]
    fn v2_and_v3_keys() {
        assert_eq!(
            parse_chunk_key("tas/1.2.3", limits(), rank).unwrap(),
            ChunkKey {
                var: "tas".into(),
                index: vec![1, 2, 3],
                format: Format::V2
            }
        );
        assert_eq!(
            parse_chunk_key("tas/c/1/2/3", limits(), rank).unwrap(),
            ChunkKey {
                var: "tas".into(),
                index: vec![1, 2, 3],
                format: Format::V3
            }
        );
        assert_eq!(
            parse_chunk_key("g1/sub/x/c/4", limits(), rank).unwrap().index,
            vec![4]
        );
        assert_eq!(
            parse_chunk_key("s/0", limits(), rank).unwrap().index,
            Vec::<u64>::new()
        );
        assert_eq!(
            parse_chunk_key("s/c", limits(), rank).unwrap().index,
            Vec::<u64>::new()
        );
    }

    #[test]
    fn bad_keys() {
        assert!(
            matches!(parse_chunk_key("tas/0.x.0", limits(), rank), Err(KeyError::BadRequest(m)) if m.contains("'x'"))
        );
        assert!(
            matches!(parse_chunk_key("tas/0.0", limits(), rank), Err(KeyError::BadRequest(m)) if m.contains("3 dimensions"))
        );
        assert!(matches!(
            parse_chunk_key("tas/c/0/0/0/0", limits(), rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/a/b", limits(), rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("nope/0.0", limits(), rank),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            parse_chunk_key("../etc/passwd", limits(), rank),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/-1.0.0", limits(), rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/99999999999999999999999.0.0", limits(), rank),
            Err(KeyError::BadRequest(_))
        ));
    }

    #[test]
    fn limits_follow_the_variables() {
        let l = limits();
        assert_eq!(l.max_depth, 3);
        assert_eq!(l.max_len, 3 + 3 + 3 * INDEX_LEN);
        // the longest valid key fits
        let longest = format!("tas/c/{m}/{m}/{m}", m = u64::MAX);
        assert!(longest.len() <= l.max_len);
        assert_eq!(
            parse_chunk_key(&longest, l, rank).unwrap().index,
            vec![u64::MAX; 3]
        );
    }

    /// A key longer than any chunk key is refused before a single variable lookup.
    #[test]
    fn overlong_keys_are_refused_unparsed() {
        let calls = std::cell::Cell::new(0usize);
        let key = format!("tas/c{}", "/0".repeat(32 * 1024));
        let r = parse_chunk_key(&key, limits(), |p| {
            calls.set(calls.get() + 1);
            rank(p)
        });
        assert!(
            matches!(&r, Err(KeyError::BadRequest(m)) if m.contains("longer than any chunk key") && m.len() < 300),
            "{r:?}"
        );
        assert_eq!(calls.get(), 0);
    }

    /// Regression (keys cost time quadratic in their length): however long the key and
    /// however many segments it has, at most `max_depth` prefixes are looked up and the bytes
    /// handed to the lookup are at most `max_depth` times the key length (the old loop joined
    /// and looked up every prefix: about n²/2 bytes for n bytes of key).
    #[test]
    fn parsing_work_is_linear_in_the_key() {
        let unbounded = KeyLimits {
            max_depth: 3,
            max_len: usize::MAX,
        };
        for key in [
            format!("tas/c{}", "/0".repeat(32 * 1024)),
            format!("tas{}", "/x".repeat(32 * 1024)),
            format!("{}0", "nope/".repeat(13 * 1024)),
            format!("g1/sub/x/c{}", "/c".repeat(32 * 1024)),
        ] {
            let calls = std::cell::Cell::new(0usize);
            let bytes = std::cell::Cell::new(0usize);
            let r = parse_chunk_key(&key, unbounded, |p| {
                calls.set(calls.get() + 1);
                bytes.set(bytes.get() + p.len());
                rank(p)
            });
            assert!(r.is_err(), "{}", &key[..20]);
            assert!(calls.get() <= unbounded.max_depth, "{} lookups", calls.get());
            assert!(
                bytes.get() <= unbounded.max_depth * key.len(),
                "{} bytes looked up",
                bytes.get()
            );
        }
        // the answers are those of the longest-prefix rule
        let key = format!("tas{}", "/x".repeat(32 * 1024));
        assert!(
            matches!(parse_chunk_key(&key, unbounded, rank), Err(KeyError::BadRequest(m)) if m.contains("variable 'tas'"))
        );
        let key = format!("{}0", "nope/".repeat(13 * 1024));
        assert!(matches!(
            parse_chunk_key(&key, unbounded, rank),
            Err(KeyError::NotFound(_))
        ));
    }
}

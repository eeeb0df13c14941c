//! HTTP key → (variable, chunk index). Pure parsing; the dataset only answers "is this a
//! variable path".

/// Which chunk-key spelling a request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V2,
    V3,
}

/// A parsed chunk request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkKey {
    pub var: String,
    pub index: Vec<u64>,
    pub format: Format,
}

/// Why a key is not a chunk key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No variable matches the key: 404.
    #[error("{0}")]
    NotFound(String),
    /// A variable matches but the rest is malformed: 400.
    #[error("{0}")]
    BadRequest(String),
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
/// number of dimensions of the variable at `path`, or `None` if there is none.
pub fn parse_chunk_key(key: &str, rank_of: impl Fn(&str) -> Option<usize>) -> Result<ChunkKey, KeyError> {
    let segs: Vec<&str> = key.split('/').collect();
    for k in (1..segs.len()).rev() {
        let var = segs[..k].join("/");
        let Some(rank) = rank_of(&var) else { continue };
        let rest = &segs[k..];
        let (index, format) = if rest[0] == "c" {
            let idx = parse_indices(rest[1..].iter().copied(), key, &var)?;
            (idx, Format::V3)
        } else if rest.len() == 1 {
            let idx = parse_indices(rest[0].split('.'), key, &var)?;
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
        return Ok(ChunkKey { var, index, format });
    }
    Err(KeyError::NotFound(format!(
        "no such key '{key}': no variable or metadata document by that name"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(p: &str) -> Option<usize> {
        match p {
            "tas" => Some(3),
            "g1/sub/x" => Some(1),
            "s" => Some(0),
            _ => None,
        }
    }

    #[test]
    fn v2_and_v3_keys() {
        assert_eq!(
            parse_chunk_key("tas/1.2.3", rank).unwrap(),
            ChunkKey {
                var: "tas".into(),
                index: vec![1, 2, 3],
                format: Format::V2
            }
        );
        assert_eq!(
            parse_chunk_key("tas/c/1/2/3", rank).unwrap(),
            ChunkKey {
                var: "tas".into(),
                index: vec![1, 2, 3],
                format: Format::V3
            }
        );
        assert_eq!(parse_chunk_key("g1/sub/x/c/4", rank).unwrap().index, vec![4]);
        assert_eq!(parse_chunk_key("s/0", rank).unwrap().index, Vec::<u64>::new());
        assert_eq!(parse_chunk_key("s/c", rank).unwrap().index, Vec::<u64>::new());
    }

    #[test]
    fn bad_keys() {
        assert!(
            matches!(parse_chunk_key("tas/0.x.0", rank), Err(KeyError::BadRequest(m)) if m.contains("'x'"))
        );
        assert!(
            matches!(parse_chunk_key("tas/0.0", rank), Err(KeyError::BadRequest(m)) if m.contains("3 dimensions"))
        );
        assert!(matches!(
            parse_chunk_key("tas/c/0/0/0/0", rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/a/b", rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("nope/0.0", rank),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            parse_chunk_key("../etc/passwd", rank),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/-1.0.0", rank),
            Err(KeyError::BadRequest(_))
        ));
        assert!(matches!(
            parse_chunk_key("tas/99999999999999999999999.0.0", rank),
            Err(KeyError::BadRequest(_))
        ));
    }
}

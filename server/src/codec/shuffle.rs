//! Byte shuffle (HDF5 filter 2, numcodecs `shuffle`, Blosc's byte shuffle).

/// HDF5/numcodecs/Blosc byte shuffle: byte j of element i goes to position j*n + i;
/// trailing bytes that do not fill an element are copied unchanged.
pub fn shuffle(src: &[u8], elem: usize) -> Vec<u8> {
    shuffle_any(src, elem)
}

/// Inverse of [`shuffle`].
pub fn unshuffle(src: &[u8], elem: usize) -> Vec<u8> {
    unshuffle_any(src, elem)
}

fn shuffle_any(src: &[u8], elem: usize) -> Vec<u8> {
    let n = src.len() / elem.max(1);
    if elem <= 1 || n <= 1 {
        return src.to_vec();
    }
    let mut out = vec![0u8; src.len()];
    for j in 0..elem {
        let plane = &mut out[j * n..(j + 1) * n];
        for (i, b) in plane.iter_mut().enumerate() {
            *b = src[i * elem + j];
        }
    }
    out[n * elem..].copy_from_slice(&src[n * elem..]);
    out
}

fn unshuffle_any(src: &[u8], elem: usize) -> Vec<u8> {
    let n = src.len() / elem.max(1);
    if elem <= 1 || n <= 1 {
        return src.to_vec();
    }
    let mut out = vec![0u8; src.len()];
    for j in 0..elem {
        let plane = &src[j * n..(j + 1) * n];
        for (i, b) in plane.iter().enumerate() {
            out[i * elem + j] = *b;
        }
    }
    out[n * elem..].copy_from_slice(&src[n * elem..]);
    out
}

/// numcodecs id.
pub const ID: &str = "shuffle";

/// numcodecs configuration of a shuffle of `elementsize`-byte elements.
pub fn numcodecs(elementsize: usize) -> serde_json::Value {
    serde_json::json!({"id": ID, "elementsize": elementsize})
}

/// The element size of a numcodecs `shuffle` configuration (numcodecs' default 4).
pub fn elementsize_of(config: &serde_json::Value) -> usize {
    config
        .get("elementsize")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(4)
        .max(1) as usize
}

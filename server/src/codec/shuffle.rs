//! Byte shuffle (HDF5 filter 2, numcodecs `shuffle`, Blosc's byte shuffle).

/// HDF5/numcodecs/Blosc byte shuffle: byte j of element i goes to position j*n + i;
/// trailing bytes that do not fill an element are copied unchanged.
pub fn shuffle(src: &[u8], elem: usize) -> Vec<u8> {
    shuffle_any(src, elem)
}

/// Inverse of [`shuffle`]. Every HDF5 read of a shuffled chunk comes here, so the common
/// widths (float32/int32 and float64/int64) have a loop writing whole elements in order
/// (the compiler vectorises it) instead of one strided byte at a time.
pub fn unshuffle(src: &[u8], elem: usize) -> Vec<u8> {
    match elem {
        4 => unshuffle_n::<4>(src),
        8 => unshuffle_n::<8>(src),
        _ => unshuffle_any(src, elem),
    }
}

fn unshuffle_n<const E: usize>(src: &[u8]) -> Vec<u8> {
    let n = src.len() / E;
    if n <= 1 {
        return src.to_vec();
    }
    let planes: [&[u8]; E] = std::array::from_fn(|j| &src[j * n..(j + 1) * n]);
    let mut out = vec![0u8; src.len()];
    for (i, o) in out[..n * E].chunks_exact_mut(E).enumerate() {
        for (j, b) in o.iter_mut().enumerate() {
            *b = planes[j][i];
        }
    }
    out[n * E..].copy_from_slice(&src[n * E..]);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffle_inverts_shuffle_for_every_width_and_tail() {
        for elem in [1usize, 2, 3, 4, 8, 16] {
            for len in [0usize, 1, 3, 4, 7, 8, 9, 64, 1001] {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let sh = shuffle(&src, elem);
                assert_eq!(unshuffle(&sh, elem), src, "elem {elem} len {len}");
                assert_eq!(unshuffle_any(&sh, elem), src, "elem {elem} len {len}");
            }
        }
    }
}

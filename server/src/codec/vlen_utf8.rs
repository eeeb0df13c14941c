//! numcodecs/Zarr `vlen-utf8`: variable-length strings.

/// numcodecs/Zarr `vlen-utf8`: u32 count, then for each item u32 length + UTF-8 bytes.
pub fn vlen_utf8(items: &[String]) -> Vec<u8> {
    let total: usize = items.iter().map(|s| s.len() + 4).sum();
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for s in items {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// numcodecs and Zarr v3 name.
pub const ID: &str = "vlen-utf8";

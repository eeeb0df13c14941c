//! Chunk grid arithmetic and N-d copies. Pure functions, no I/O.

/// Number of chunks along each dimension.
pub fn grid_shape(shape: &[u64], chunks: &[u64]) -> Vec<u64> {
    shape
        .iter()
        .zip(chunks)
        .map(|(s, c)| if *c == 0 { 0 } else { s.div_ceil(*c) })
        .collect()
}

/// Product of a shape as usize, or None on overflow.
pub fn numel(shape: &[u64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1u64, |acc, x| acc.checked_mul(*x))
        .and_then(|n| usize::try_from(n).ok())
}

/// Row-major linear index of `idx` in `grid`.
pub fn linear(idx: &[u64], grid: &[u64]) -> u64 {
    idx.iter().zip(grid).fold(0, |acc, (i, g)| acc * g + i)
}

/// A "sensible" chunk shape for data stored without chunks: about `target` bytes per chunk,
/// keeping the trailing (fastest-varying) dimensions whole, as a reader slicing time steps
/// of a map expects.
pub fn default_chunks(shape: &[u64], elem: usize, target: u64) -> Vec<u64> {
    let mut budget = (target / elem.max(1) as u64).max(1);
    let mut out = vec![1u64; shape.len()];
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        if n <= budget {
            out[d] = n;
            budget /= n;
        } else {
            out[d] = budget.max(1);
            budget = 1;
        }
    }
    out
}

/// Calls `f(src, dst, len)` for each innermost run of a `count`-shaped block of `src` (shape
/// `src_shape`) at `src_start` and its place in `dst` (shape `dst_shape`) at `dst_start`:
/// offsets and length in elements, runs in C order. One run of one element for rank 0,
/// none when the block is empty. Trailing dimensions the block spans whole in both arrays
/// are one run with the dimension before them (a whole chunk of a map is one run, not one
/// per row: fewer, longer copies).
fn for_each_run(
    src_shape: &[u64],
    src_start: &[u64],
    dst_shape: &[u64],
    dst_start: &[u64],
    count: &[u64],
    mut f: impl FnMut(usize, usize, usize),
) {
    let rank = count.len();
    if count.contains(&0) {
        return;
    }
    let strides = |shape: &[u64]| {
        let mut s = vec![1u64; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let ss = strides(src_shape);
    let ds = strides(dst_shape);
    // `m`: the first dimension of the run; every dimension after it is whole in both arrays
    let mut m = rank.saturating_sub(1);
    while m > 0 && count[m] == src_shape[m] && count[m] == dst_shape[m] {
        m -= 1;
    }
    let run = count[m.min(rank)..].iter().product::<u64>() as usize;
    let mut idx = vec![0u64; m];
    loop {
        let mut so = 0u64;
        let mut doff = 0u64;
        for d in 0..rank.min(m + 1) {
            let i = if d < m { idx[d] } else { 0 };
            so += (src_start[d] + i) * ss[d];
            doff += (dst_start[d] + i) * ds[d];
        }
        f(so as usize, doff as usize, run);
        // odometer over the dimensions before the run's
        let mut d = m;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < count[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Element i of `out` (4 bytes each) is byte i of each plane, in order: the inner loop of
/// an unshuffle (`codec::shuffle`) and of [`copy_block_planes`].
pub fn interleave4([p0, p1, p2, p3]: [&[u8]; 4], out: &mut [u8]) {
    for ((((o, a), b), c), d) in out.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3) {
        o.copy_from_slice(&[*a, *b, *c, *d]);
    }
}

/// Element i of `out` (8 bytes each) is byte i of each plane, in order.
pub fn interleave8([p0, p1, p2, p3, p4, p5, p6, p7]: [&[u8]; 8], out: &mut [u8]) {
    for ((((((((o, a), b), c), d), e), f), g), h) in out
        .chunks_exact_mut(8)
        .zip(p0)
        .zip(p1)
        .zip(p2)
        .zip(p3)
        .zip(p4)
        .zip(p5)
        .zip(p6)
        .zip(p7)
    {
        o.copy_from_slice(&[*a, *b, *c, *d, *e, *f, *g, *h]);
    }
}

/// Interleaves the byte planes `plane(0..elem)` into `out` (element `i` is byte `i` of
/// each plane, in order) with [`interleave4`] or [`interleave8`]; `false` (nothing
/// written) for other element sizes, which the caller handles.
pub fn interleave_planes<'a>(elem: usize, plane: impl Fn(usize) -> &'a [u8], out: &mut [u8]) -> bool {
    match elem {
        4 => interleave4([plane(0), plane(1), plane(2), plane(3)], out),
        8 => interleave8(
            [
                plane(0),
                plane(1),
                plane(2),
                plane(3),
                plane(4),
                plane(5),
                plane(6),
                plane(7),
            ],
            out,
        ),
        _ => return false,
    }
    true
}

/// [`copy_block`] from a chunk whose bytes are still shuffled (`planes`: byte `b` of element
/// `i` at `b * n + i`, `n` the chunk's elements), unshuffling only the elements copied, and
/// reversing each element's bytes when `swap` (big-endian storage).
#[allow(clippy::too_many_arguments)]
pub fn copy_block_planes(
    planes: &[u8],
    src_shape: &[u64],
    src_start: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_start: &[u64],
    count: &[u64],
    elem: usize,
    swap: bool,
) {
    let n = planes.len() / elem.max(1);
    if n == 0 {
        return;
    }
    for_each_run(
        src_shape,
        src_start,
        dst_shape,
        dst_start,
        count,
        |so, doff, run| {
            let out = &mut dst[doff * elem..(doff + run) * elem];
            // byte `b` of the run's elements, read from plane `b` (or its mirror when swapping)
            let plane = |b: usize| {
                let from = if swap { elem - 1 - b } else { b };
                &planes[from * n + so..from * n + so + run]
            };
            // Interleaved straight into `dst`: through a small buffer in the first-level
            // cache and a `memcpy` out was slower (a whole-variable answer, profiled).
            if !interleave_planes(elem, plane, out) {
                for k in 0..run {
                    for (b, o) in out[k * elem..(k + 1) * elem].iter_mut().enumerate() {
                        *o = plane(b)[k];
                    }
                }
            }
        },
    );
}

/// [`copy_block`] reversing each element's bytes: little-endian values (a decoded chunk
/// kept by the cache) copied into a big-endian answer (OPeNDAP's XDR) in one pass.
#[allow(clippy::too_many_arguments)]
pub fn copy_block_swapped(
    src: &[u8],
    src_shape: &[u64],
    src_start: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_start: &[u64],
    count: &[u64],
    elem: usize,
) {
    for_each_run(
        src_shape,
        src_start,
        dst_shape,
        dst_start,
        count,
        |so, doff, run| {
            let (so, doff, len) = (so * elem, doff * elem, run * elem);
            swap_copy(&src[so..so + len], &mut dst[doff..doff + len], elem);
        },
    );
}

/// `dst` = `src` with each `elem`-byte element's bytes reversed (same lengths); one loop per
/// common width, which the compiler vectorises.
pub fn swap_copy(src: &[u8], dst: &mut [u8], elem: usize) {
    match elem {
        2 => {
            for (d, s) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src.as_chunks::<2>().0) {
                *d = u16::from_ne_bytes(*s).swap_bytes().to_ne_bytes();
            }
        }
        4 => {
            for (d, s) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src.as_chunks::<4>().0) {
                *d = u32::from_ne_bytes(*s).swap_bytes().to_ne_bytes();
            }
        }
        8 => {
            for (d, s) in dst.as_chunks_mut::<8>().0.iter_mut().zip(src.as_chunks::<8>().0) {
                *d = u64::from_ne_bytes(*s).swap_bytes().to_ne_bytes();
            }
        }
        _ => {
            dst.copy_from_slice(src);
            if elem > 1 {
                for e in dst.chunks_exact_mut(elem) {
                    e.reverse();
                }
            }
        }
    }
}

/// Copies a `count`-shaped block from `src` (C-ordered, shape `src_shape`) at `src_start` to
/// `dst` (shape `dst_shape`) at `dst_start`. Elements are `elem` bytes. Callers guarantee the
/// block lies inside both arrays (checked in debug builds; out-of-range slices would panic,
/// so every caller derives the block from an intersection).
#[allow(clippy::too_many_arguments)] // a strided memcpy: both arrays' shape and offset, the count
pub fn copy_block(
    src: &[u8],
    src_shape: &[u64],
    src_start: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_start: &[u64],
    count: &[u64],
    elem: usize,
) {
    for_each_run(
        src_shape,
        src_start,
        dst_shape,
        dst_start,
        count,
        |so, doff, run| {
            let (so, doff, len) = (so * elem, doff * elem, run * elem);
            dst[doff..doff + len].copy_from_slice(&src[so..so + len]);
        },
    );
}

/// Swaps the byte order of every element in place.
pub fn byteswap(buf: &mut [u8], elem: usize) {
    // one loop per common width (vectorised), as in [`swap_copy`]
    match elem {
        0 | 1 => {}
        2 => {
            for e in buf.as_chunks_mut::<2>().0 {
                *e = u16::from_ne_bytes(*e).swap_bytes().to_ne_bytes();
            }
        }
        4 => {
            for e in buf.as_chunks_mut::<4>().0 {
                *e = u32::from_ne_bytes(*e).swap_bytes().to_ne_bytes();
            }
        }
        8 => {
            for e in buf.as_chunks_mut::<8>().0 {
                *e = u64::from_ne_bytes(*e).swap_bytes().to_ne_bytes();
            }
        }
        _ => {
            for e in buf.chunks_exact_mut(elem) {
                e.reverse();
            }
        }
    }
}

/// Fills `buf` with repetitions of the element `fill`.
pub fn fill_with(buf: &mut [u8], fill: &[u8]) {
    if fill.is_empty() || fill.iter().all(|b| *b == 0) {
        buf.fill(0);
        return;
    }
    for e in buf.chunks_exact_mut(fill.len()) {
        e.copy_from_slice(fill);
    }
}

/// Intersection of `[a0, a0+an)` and `[b0, b0+bn)` as (start, len), if not empty.
pub fn intersect(a0: u64, an: u64, b0: u64, bn: u64) -> Option<(u64, u64)> {
    let s = a0.max(b0);
    let e = (a0 + an).min(b0 + bn);
    if e > s { Some((s, e - s)) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copying from shuffled planes equals unshuffling the chunk and copying, for float32
    /// and float64 blocks of every shape here, with and without the byte swap.
    #[test]
    fn copy_from_planes_equals_unshuffle_then_copy() {
        let shape = [3u64, 5, 7];
        for elem in [4usize, 8] {
            let data: Vec<u8> = (0..105 * elem).map(|i| (i * 31 % 251) as u8).collect();
            let planes = crate::codec::shuffle(&data, elem);
            for (start, count) in [
                ([0, 0, 0], [3, 5, 7]),
                ([1, 2, 3], [1, 1, 1]),
                ([2, 1, 0], [1, 3, 7]),
                ([0, 4, 6], [3, 1, 1]),
            ] {
                let dshape = [4u64, 6, 8];
                let dstart = [1u64, 0, 1];
                for swap in [false, true] {
                    let mut want = vec![0u8; 4 * 6 * 8 * elem];
                    let mut src = data.clone();
                    if swap {
                        byteswap(&mut src, elem);
                    }
                    copy_block(&src, &shape, &start, &mut want, &dshape, &dstart, &count, elem);
                    let mut got = vec![0u8; want.len()];
                    copy_block_planes(
                        &planes, &shape, &start, &mut got, &dshape, &dstart, &count, elem, swap,
                    );
                    assert_eq!(
                        got, want,
                        "elem {elem} start {start:?} count {count:?} swap {swap}"
                    );
                }
            }
        }
    }

    /// Element by element: the reference the run-wise copies are checked against.
    #[allow(clippy::too_many_arguments)]
    fn naive_copy(
        src: &[u8],
        src_shape: &[u64],
        src_start: &[u64],
        dst: &mut [u8],
        dst_shape: &[u64],
        dst_start: &[u64],
        count: &[u64],
        elem: usize,
    ) {
        let n = numel(count).unwrap_or(0);
        for k in 0..n as u64 {
            // the k-th index of the block, in C order
            let mut rest = k;
            let mut idx = vec![0u64; count.len()];
            for d in (0..count.len()).rev() {
                idx[d] = rest % count[d];
                rest /= count[d];
            }
            let at = |start: &[u64], shape: &[u64]| {
                let i: Vec<u64> = idx.iter().zip(start).map(|(a, b)| a + b).collect();
                linear(&i, shape) as usize * elem
            };
            let (s, d) = (at(src_start, src_shape), at(dst_start, dst_shape));
            dst[d..d + elem].copy_from_slice(&src[s..s + elem]);
        }
    }

    /// Blocks whose trailing dimensions are whole in both arrays are copied as one run
    /// (a whole chunk into an answer of whole maps): plain, swapped and from shuffled
    /// planes, every copy equals the element-by-element one, for 1- to 8-byte elements.
    #[test]
    fn merged_runs_and_swapped_copies_equal_element_copies() {
        let shape = [3u64, 5, 7];
        for elem in [1usize, 2, 3, 4, 8] {
            let data: Vec<u8> = (0..105 * elem).map(|i| (i * 37 % 253) as u8).collect();
            let planes = crate::codec::shuffle(&data, elem);
            let mut swapped = data.clone();
            byteswap(&mut swapped, elem);
            for (start, count, dshape, dstart) in [
                ([0u64, 0, 0], [3u64, 5, 7], [3u64, 5, 7], [0u64, 0, 0]),
                ([1, 0, 0], [2, 5, 7], [4, 5, 7], [2, 0, 0]),
                ([2, 0, 0], [1, 5, 7], [9, 5, 7], [8, 0, 0]),
                ([0, 2, 0], [3, 2, 7], [3, 3, 7], [0, 1, 0]),
                ([1, 1, 2], [2, 3, 4], [2, 3, 4], [0, 0, 0]),
            ] {
                let len = numel(&dshape).unwrap_or(0) * elem;
                let mut want = vec![0u8; len];
                naive_copy(&data, &shape, &start, &mut want, &dshape, &dstart, &count, elem);
                let mut got = vec![0u8; len];
                copy_block(&data, &shape, &start, &mut got, &dshape, &dstart, &count, elem);
                assert_eq!(got, want, "copy elem {elem} {start:?} {count:?}");
                let mut got = vec![0u8; len];
                copy_block_planes(
                    &planes, &shape, &start, &mut got, &dshape, &dstart, &count, elem, false,
                );
                assert_eq!(got, want, "planes elem {elem} {start:?} {count:?}");
                let mut want_swapped = vec![0u8; len];
                naive_copy(
                    &swapped,
                    &shape,
                    &start,
                    &mut want_swapped,
                    &dshape,
                    &dstart,
                    &count,
                    elem,
                );
                let mut got = vec![0u8; len];
                copy_block_swapped(&data, &shape, &start, &mut got, &dshape, &dstart, &count, elem);
                assert_eq!(got, want_swapped, "swapped elem {elem} {start:?} {count:?}");
                let mut got = vec![0u8; len];
                copy_block_planes(
                    &planes, &shape, &start, &mut got, &dshape, &dstart, &count, elem, true,
                );
                assert_eq!(
                    got, want_swapped,
                    "swapped planes elem {elem} {start:?} {count:?}"
                );
            }
            let mut back = swapped.clone();
            byteswap(&mut back, elem);
            assert_eq!(back, data, "byteswap twice, elem {elem}");
            let mut out = vec![0u8; data.len()];
            swap_copy(&data, &mut out, elem);
            assert_eq!(out, swapped, "swap_copy elem {elem}");
        }
    }

    #[test]
    fn grid_math() {
        assert_eq!(grid_shape(&[10, 7], &[3, 7]), vec![4, 1]);
        assert_eq!(grid_shape(&[0, 7], &[1, 7]), vec![0, 1]);
        assert_eq!(linear(&[1, 2], &[4, 3]), 5);
        assert_eq!(numel(&[]), Some(1));
        assert_eq!(numel(&[u64::MAX, 2]), None);
        assert_eq!(intersect(0, 10, 5, 10), Some((5, 5)));
        assert_eq!(intersect(0, 5, 5, 10), None);
        assert_eq!(intersect(10, 5, 0, 3), None);
    }

    #[test]
    fn default_chunking_keeps_trailing_dims() {
        assert_eq!(default_chunks(&[365, 360, 720], 4, 4 << 20), vec![4, 360, 720]);
        assert_eq!(default_chunks(&[10], 8, 4 << 20), vec![10]);
        assert_eq!(default_chunks(&[2, 4000, 4000], 4, 4 << 20), vec![1, 262, 4000]);
        assert_eq!(default_chunks(&[], 4, 4 << 20), Vec::<u64>::new());
        assert_eq!(default_chunks(&[0, 5], 4, 4 << 20), vec![1, 5]);
    }

    #[test]
    fn copy_block_2d() {
        // src 3x4 with values 0..12, copy the 2x2 block at (1,1) into a 2x3 dst at (0,1)
        let src: Vec<u8> = (0..12).collect();
        let mut dst = vec![0u8; 6];
        copy_block(&src, &[3, 4], &[1, 1], &mut dst, &[2, 3], &[0, 1], &[2, 2], 1);
        assert_eq!(dst, vec![0, 5, 6, 0, 9, 10]);
        // scalar
        let mut d = vec![0u8; 4];
        copy_block(&[1, 2, 3, 4], &[], &[], &mut d, &[], &[], &[], 4);
        assert_eq!(d, vec![1, 2, 3, 4]);
    }

    #[test]
    fn swap_and_fill() {
        let mut b = vec![1, 2, 3, 4];
        byteswap(&mut b, 2);
        assert_eq!(b, vec![2, 1, 4, 3]);
        let mut f = vec![0u8; 6];
        fill_with(&mut f, &[7, 8]);
        assert_eq!(f, vec![7, 8, 7, 8, 7, 8]);
    }
}

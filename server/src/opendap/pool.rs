//! Reused buffers for the values of streamed OPeNDAP answers.
//!
//! A `.dods` or `.dap` answer is sent in pieces of about [`super::PIECE_BYTES`]; a whole
//! variable is dozens of them. A fresh piece buffer must be zeroed before the values are
//! read into it (safe Rust hands out initialised memory only), and that pass over every
//! answer byte was a twentieth of a whole-variable answer's CPU, profiled. The buffer of a
//! piece that has been sent is kept here instead, and the next piece is read into it: its
//! old bytes are overwritten, nothing is zeroed. At most [`KEPT`] buffers are kept (the
//! pieces one answer has in flight: two being read, one being sent), so what an idle server
//! holds is bounded by `KEPT` pieces.

use std::sync::Mutex;

use super::{DapError, PIECE_BYTES};

/// Most buffers kept.
const KEPT: usize = 3;

/// Smallest buffer worth keeping: below it, zeroing costs less than the lock.
const MIN_KEPT_BYTES: usize = 1 << 20;

/// Largest buffer kept: a piece is at most about [`PIECE_BYTES`] (one row of a wide
/// variable may exceed it; such a buffer is not kept).
const MAX_KEPT_BYTES: usize = 2 * PIECE_BYTES as usize;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of exactly `len` bytes, reused when one is kept (its old bytes left in place:
/// the caller overwrites all of them), else new and zeroed. Allocated fallibly: a failed
/// allocation is an error (413, too large), not an abort.
pub fn take(len: usize) -> Result<Vec<u8>, DapError> {
    if len >= MIN_KEPT_BYTES {
        let reused = POOL.lock().ok().and_then(|mut p| {
            // the smallest kept buffer that holds `len` without growing
            let best = p
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)?;
            Some(p.swap_remove(best))
        });
        if let Some(mut buf) = reused {
            if buf.len() >= len {
                buf.truncate(len);
            } else {
                buf.resize(len, 0);
            }
            return Ok(buf);
        }
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| too_large(len))?;
    buf.resize(len, 0);
    Ok(buf)
}

fn too_large(len: usize) -> DapError {
    DapError {
        status: 413,
        message: format!("answer piece of {len} bytes cannot be held in memory; select less"),
    }
}

/// Keeps `buf` for a later [`take`] if it is piece-sized and fewer than [`KEPT`] are kept.
pub fn give_back(buf: Vec<u8>) {
    if !(MIN_KEPT_BYTES..=MAX_KEPT_BYTES).contains(&buf.capacity()) {
        return;
    }
    if let Ok(mut p) = POOL.lock()
        && p.len() < KEPT
    {
        p.push(buf);
    }
}

/// A piece's bytes that go back to the pool when dropped (when the HTTP layer has sent
/// them): hand it to `bytes::Bytes::from_owner`.
#[derive(Debug)]
pub struct Recycled(pub Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept buffer comes back at the length asked for, shorter or longer than before;
    /// small and huge buffers are not kept; the pool never holds more than `KEPT`.
    #[test]
    fn buffers_are_reused_at_the_length_asked_for() {
        let len = 2 * MIN_KEPT_BYTES;
        let mut a = take(len).unwrap_or_default();
        assert_eq!(a.len(), len);
        a.fill(7);
        let cap = a.capacity();
        drop(Recycled(a));
        let b = take(len - 5).unwrap_or_default();
        assert_eq!(b.len(), len - 5);
        // tests run in parallel and share the pool: reused or not, the length is right
        if b.capacity() == cap {
            assert!(b.iter().all(|x| *x == 7));
        }
        let c = take(len - 1).unwrap_or_default();
        assert_eq!(c.len(), len - 1);
        drop(Recycled(b));
        let d = take(len).unwrap_or_default();
        assert_eq!(d.len(), len);
        give_back(vec![0; 16]);
        for _ in 0..KEPT + 2 {
            give_back(Vec::with_capacity(MIN_KEPT_BYTES));
        }
        assert!(
            POOL.lock()
                .map(|p| p.len() <= KEPT && p.iter().all(|b| b.capacity() >= MIN_KEPT_BYTES))
                .unwrap_or(false)
        );
        assert!(take(usize::MAX / 2).is_err());
    }
}

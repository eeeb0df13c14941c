//! Reading a source file's bytes: `pread` for local files, ranged GETs for objects.
//!
//! Every read names the file, offset and length it failed at. Local reads check that the
//! file is still the version it was indexed as (see [`check_unchanged`]): serving reads bytes
//! at offsets an index recorded, and a rewritten file holds other bytes there.
//!
//! Who reads is explicit: functions above this layer take a [`RangeRead`], which is
//! [`Direct`] when serving and the indexing reader of an object while it is being indexed
//! (so bytes it fetched for the index are not fetched again).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::RemoteError;
use super::file::SourceFile;

/// Bytes of a source file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ByteError {
    /// Reading the file failed.
    #[error("{path}: read of {len} bytes at offset {offset} failed: {source}")]
    Io {
        /// The file, for messages.
        path: PathBuf,
        /// Byte offset the read started at.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is shorter than the bytes its index refers to.
    #[error("{path}: file ends before byte {end} (truncated file?)")]
    Truncated {
        /// The file, for messages.
        path: PathBuf,
        /// Byte position (exclusive) the read needed to reach.
        end: u64,
    },
    /// A length that does not fit this machine's address space (from a corrupt index).
    #[error("chunk of {0:?} elements is too large")]
    TooLarge(Vec<u64>),
    /// An object-store read failed (missing or changed object, denied, store down, timeout).
    #[error("{0}")]
    Remote(#[from] RemoteError),
    /// A local source file is not the version that was indexed: its chunks would be read at
    /// stale offsets (and served under the old ETag), so nothing is read from it.
    #[error("{path}: file changed since it was indexed ({what}); restart the server to re-index it")]
    Changed {
        /// The file, for messages.
        path: PathBuf,
        /// What differs from the indexed identity (device/inode, size, mtime, ctime).
        what: String,
    },
}

/// Reads byte ranges of source files. Implemented by [`Direct`] and by readers that keep
/// or count what they fetch (the indexing reader of an object, `source::remote`).
pub trait RangeRead: Sync {
    /// Reads several `(offset, len)` ranges of one source, in order.
    fn read_many(&self, file: &SourceFile, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, ByteError>;

    /// Reads `len` bytes at `offset` of a source.
    fn read_at(&self, file: &SourceFile, offset: u64, len: u64) -> Result<Vec<u8>, ByteError> {
        Ok(self.read_many(file, &[(offset, len)])?.pop().unwrap_or_default())
    }

    /// Finds out that the ranges can be read now, keeping none of their bytes: a check
    /// before an answer that cannot report a failure once it has started. Reads them and
    /// drops the bytes unless the reader knows a cheaper way ([`Direct`]: see
    /// [`check_readable`]).
    fn check_readable(&self, file: &SourceFile, ranges: &[(u64, u64)]) -> Result<(), ByteError> {
        for (offset, len) in ranges {
            drop(self.read_at(file, *offset, *len)?);
        }
        Ok(())
    }
}

/// Reads straight from the file or store: `pread` (checked against the indexed identity)
/// for local files; for objects one call that merges nearby ranges into fewer requests and
/// runs them in parallel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

/// Bytes of source data read by this process (local files and objects), for the compute
/// worker's `cloudify_worker_bytes_read_total`.
pub static BYTES_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_read<T: AsRef<[u8]>>(r: Result<Vec<T>, ByteError>) -> Result<Vec<T>, ByteError> {
    if let Ok(v) = &r {
        let n: u64 = v.iter().map(|b| b.as_ref().len() as u64).sum();
        BYTES_READ.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

impl RangeRead for Direct {
    fn read_many(&self, file: &SourceFile, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, ByteError> {
        match &file.remote {
            None => ranges
                .iter()
                .map(|(o, n)| pread_checked(&file.path, Some(file), *o, *n))
                .collect(),
            Some(_) if ranges.is_empty() => Ok(Vec::new()),
            // local reads are counted by `pread_checked`, objects here
            Some(obj) => count_read(Ok(super::read_ranges(file, obj, ranges)?
                .into_iter()
                .map(|b| b.to_vec())
                .collect())),
        }
    }

    fn read_at(&self, file: &SourceFile, offset: u64, len: u64) -> Result<Vec<u8>, ByteError> {
        match &file.remote {
            None => pread_checked(&file.path, Some(file), offset, len),
            Some(_) => Ok(self.read_many(file, &[(offset, len)])?.pop().unwrap_or_default()),
        }
    }

    fn check_readable(&self, file: &SourceFile, ranges: &[(u64, u64)]) -> Result<(), ByteError> {
        match &file.remote {
            None => check_readable(file, ranges),
            Some(_) => self.read_many(file, ranges).map(drop),
        }
    }
}

/// Finds out that byte ranges of a local file can be read now, without copying them: each
/// range goes through the page cache to `/dev/null` (`sendfile`), so a storage that cannot
/// answer (a disk error, a parallel file system's unavailable object server) fails here
/// with the error a read would get, and the pages are then cached for the read that
/// follows. Copying the bytes out instead (a `pread` whose buffer is dropped) was a tenth of
/// a whole-variable OPeNDAP answer's CPU, profiled. The file is checked to be the version
/// indexed, as [`pread`]s are; where `sendfile` cannot be used (no `/dev/null`, a file
/// system without it, not Linux) the ranges are read and dropped.
pub fn check_readable(file: &SourceFile, ranges: &[(u64, u64)]) -> Result<(), ByteError> {
    let path = &file.path;
    let io = |offset, len, source| ByteError::Io {
        path: path.clone(),
        offset,
        len,
        source,
    };
    let f = std::fs::File::open(path).map_err(|e| io(0, 0, e))?;
    let size = f.metadata().map_err(|e| io(0, 0, e))?.len();
    let mut result = Ok(());
    for &(offset, len) in ranges {
        if offset.checked_add(len).is_none_or(|end| end > size) {
            result = Err(ByteError::Truncated {
                path: path.clone(),
                end: offset.saturating_add(len),
            });
            break;
        }
        if let Err(e) = discard_range(&f, offset, len) {
            result = match e {
                Discard::Unsupported => pread_checked(path, None, offset, len).map(drop),
                Discard::Short => Err(ByteError::Truncated {
                    path: path.clone(),
                    end: offset + len,
                }),
                Discard::Io(e) => Err(io(offset, len, e)),
            };
            if result.is_err() {
                break;
            }
        }
    }
    // as in `pread_checked`: a changed file is named as changed, whatever else failed
    if file.inode.is_some() {
        let meta = f.metadata().map_err(|e| io(0, 0, e))?;
        if let Some(what) = file.local_change(&meta) {
            return Err(ByteError::Changed {
                path: path.clone(),
                what,
            });
        }
    }
    result
}

/// Why [`discard_range`] did not send a whole range.
enum Discard {
    /// `sendfile` is not available for this file (or `/dev/null` is missing).
    Unsupported,
    /// The file ended first.
    Short,
    /// The read failed.
    Io(std::io::Error),
}

/// Sends `len` bytes of `f` at `offset` to `/dev/null`.
#[cfg(target_os = "linux")]
fn discard_range(f: &std::fs::File, offset: u64, len: u64) -> Result<(), Discard> {
    static NULL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let null = NULL
        .get_or_init(|| std::fs::OpenOptions::new().write(true).open("/dev/null").ok())
        .as_ref()
        .ok_or(Discard::Unsupported)?;
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::sendfile(null, f, Some(&mut at), want) {
            Ok(0) => return Err(Discard::Short),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            // no splice for this file system, or nothing was sent yet by this call
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP)
                if at == offset =>
            {
                return Err(Discard::Unsupported);
            }
            Err(e) => return Err(Discard::Io(e.into())),
        }
    }
    BYTES_READ.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn discard_range(_: &std::fs::File, _: u64, _: u64) -> Result<(), Discard> {
    Err(Discard::Unsupported)
}

/// [`Direct::read_at`]: `len` bytes at `offset` of a source.
pub fn read_at(file: &SourceFile, offset: u64, len: u64) -> Result<Vec<u8>, ByteError> {
    Direct.read_at(file, offset, len)
}

/// Reads `len` bytes at `offset`; a short read means the file was truncated.
///
/// The file is opened per call (its own descriptor, so seeking is not shared between
/// threads) and read with `read_to_end` into an uninitialised buffer: pass-through chunks are
/// hundreds of KB, and zero-filling a buffer first was a third memory pass on the hottest path.
pub fn pread(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ByteError> {
    pread_checked(path, None, offset, len)
}

/// [`pread`], then, when `ident` is the identity the file was indexed with, an `fstat` of
/// the descriptor the bytes came from, compared with it: a file touched, rewritten in place
/// or replaced (`mv`) since is [`ByteError::Changed`] instead of bytes decoded with a stale
/// index. Checking after the read covers a write racing with it (a write updates the
/// mtime/ctime before its data can be read), and a changed file is reported as such even
/// when it is now too short. One system call per read, on a descriptor already open.
fn pread_checked(
    path: &Path,
    ident: Option<&SourceFile>,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ByteError> {
    let io = |source| ByteError::Io {
        path: path.to_path_buf(),
        offset,
        len,
        source,
    };
    let n = usize::try_from(len).map_err(|_| ByteError::TooLarge(vec![len]))?;
    let truncated = || ByteError::Truncated {
        path: path.to_path_buf(),
        end: offset.saturating_add(len),
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    // The range comes from references and indexes (input): one past the end of the file is
    // refused before the buffer is allocated, or a bogus size of 2^45 bytes would abort the
    // process on allocation failure (found by fuzzing, server/fuzz kerchunk_parquet).
    let size = f.metadata().map_err(io)?.len();
    let read = if offset.checked_add(len).is_none_or(|end| end > size) {
        None
    } else {
        Some((|| {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::with_capacity(n);
            (&mut f).take(len).read_to_end(&mut buf)?;
            Ok(buf)
        })())
    };
    // A changed file is named as changed, even when the change made the range fall past its end.
    if let Some(ident) = ident.filter(|i| i.inode.is_some()) {
        let meta = f.metadata().map_err(io)?;
        if let Some(what) = ident.local_change(&meta) {
            return Err(ByteError::Changed {
                path: path.to_path_buf(),
                what,
            });
        }
    }
    let Some(read) = read else {
        return Err(truncated());
    };
    let buf = read.map_err(io)?;
    if buf.len() < n {
        return Err(truncated());
    }
    BYTES_READ.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(buf)
}

/// `Ok` when `file` is not a local file with a recorded [`super::file::Inode`], or is
/// still the version indexed (one `stat`); else [`ByteError::Changed`].
pub fn check_unchanged(file: &SourceFile) -> Result<(), ByteError> {
    if file.inode.is_none() || file.remote.is_some() {
        return Ok(());
    }
    let meta = std::fs::metadata(&file.path).map_err(|source| ByteError::Io {
        path: file.path.clone(),
        offset: 0,
        len: 0,
        source,
    })?;
    match file.local_change(&meta) {
        Some(what) => Err(ByteError::Changed {
            path: file.path.clone(),
            what,
        }),
        None => Ok(()),
    }
}

/// Reads the whole of a chunk file, local or an object.
pub fn read_source_whole(file: &SourceFile) -> Result<Vec<u8>, ByteError> {
    match &file.remote {
        None => read_file(&file.path),
        Some(obj) => Ok(super::read_whole(file, obj)?.to_vec()),
    }
}

/// Reads the whole of a local chunk file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ByteError> {
    std::fs::read(path).map_err(|source| ByteError::Io {
        path: path.to_path_buf(),
        offset: 0,
        len: 0,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_refused_before_allocating() {
        // found by fuzzing (server/fuzz `kerchunk_parquet`): a reference of 2^45 bytes into a
        // small file made pread allocate its buffer first and abort the process
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.bin");
        std::fs::write(&p, [7u8; 16]).unwrap();
        assert_eq!(pread(&p, 8, 8).unwrap(), vec![7u8; 8]);
        for (offset, len) in [(0, 1u64 << 45), (8, 9), (u64::MAX, 2), (17, 0)] {
            let e = pread(&p, offset, len).unwrap_err();
            assert!(matches!(e, ByteError::Truncated { .. }), "{offset}+{len}: {e}");
            assert!(e.to_string().contains("data.bin"), "{e}");
        }
        assert_eq!(pread(&p, 16, 0).unwrap(), Vec::<u8>::new());
    }

    /// The readability check without copying: ranges inside the file pass (any number,
    /// any size, the empty one too), a range past its end is a truncated file naming it, a
    /// file changed since it was indexed is refused as a read refuses it, and a file gone is
    /// an I/O error (not "readable").
    #[test]
    fn ranges_are_checked_readable_without_reading_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.bin");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let file = SourceFile::stat(p.clone()).unwrap();
        let n = bytes.len() as u64;
        check_readable(&file, &[(0, n), (5, 1), (n, 0), (n - 7, 7), (1 << 20, 1 << 20)]).unwrap();
        Direct.check_readable(&file, &[(0, n)]).unwrap();
        for (offset, len) in [(n - 3, 4), (n + 1, 0), (u64::MAX, 2)] {
            let e = check_readable(&file, &[(0, 10), (offset, len)]).unwrap_err();
            assert!(matches!(e, ByteError::Truncated { .. }), "{offset}+{len}: {e}");
            assert!(e.to_string().contains("data.bin"), "{e}");
        }
        // changed since indexed (its ctime moves): refused, naming the change
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&p, &bytes).unwrap();
        let e = check_readable(&file, &[(0, 10)]).unwrap_err();
        assert!(matches!(e, ByteError::Changed { .. }), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = check_readable(&file, &[(0, 10)]).unwrap_err();
        assert!(matches!(e, ByteError::Io { .. }), "{e}");
    }
}

//! Stored chunks of local files known to decode: what lets a read that only has to find out
//! whether data *can* be read skip decoding it again.
//!
//! Why: an OPeNDAP `.dods` answer of up to 1 GiB is read through once before its headers
//! (`crate::opendap::MAX_CHECKED_BYTES`: netCDF-C takes a body cut short as data, so a chunk
//! that cannot be decoded must be found before anything is sent), and then again while it is
//! streamed — two decodes of every chunk, most of such an answer's CPU. Whether a stored
//! chunk decodes is fixed by its bytes, and its bytes by where they are in which version of
//! which file: once a chunk of a file version has decoded, the check only has to find its
//! bytes readable and the file still that version (one `stat`), as a decoded-cache hit does.
//!
//! What is noted: every successful decode of a stored chunk of an HDF5-chunked variable in a
//! local file whose version is checked on read (indexed with its inode; see
//! [`crate::storage::read::check_unchanged`]), keyed as the decoded cache keys it. Objects
//! are not noted (a changed object is not seen without a request). The set holds 128-bit
//! hashes of the keys, at most [`MAX_ENTRIES`] (about 5 MB), and is emptied when full: a
//! chunk forgotten is decoded by the next check, as before it was known.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{LazyLock, Mutex};

use crate::storage::SourceFile;

/// Most chunks remembered (16 bytes each, about 5 MB with the table's overhead): a quarter
/// of a million stored chunks, a quarter of a terabyte of 1 MiB chunks.
pub const MAX_ENTRIES: usize = 1 << 18;

struct Set {
    /// Two independently seeded hashers: a key is remembered by both hashes, so two keys
    /// are confused only with probability 2^-128 per pair.
    hashers: (RandomState, RandomState),
    seen: Mutex<HashSet<u128>>,
}

static SET: LazyLock<Set> = LazyLock::new(|| Set {
    hashers: (RandomState::new(), RandomState::new()),
    seen: Mutex::new(HashSet::new()),
});

/// A stored chunk: its file's identity as indexed (path, size, mtime, inode, ctime) and its
/// byte range and decoded length in it, as the decoded cache keys it.
#[derive(Clone, Copy, Debug, Hash)]
pub struct At<'a> {
    /// The file, as indexed.
    pub file: &'a SourceFile,
    /// Byte offset of the stored chunk.
    pub offset: u64,
    /// Stored (encoded) length.
    pub stored_len: u64,
    /// Decoded length.
    pub decoded_len: usize,
}

impl At<'_> {
    /// Whether chunks of this file are noted: a local file whose version a read checks
    /// (indexed with its inode), not an object, a copy or a reference set.
    fn noted(&self) -> bool {
        self.file.inode.is_some() && self.file.remote.is_none()
    }

    fn id(&self) -> u128 {
        let (a, b) = &SET.hashers;
        (u128::from(a.hash_one(self)) << 64) | u128::from(b.hash_one(self))
    }
}

fn lock() -> std::sync::MutexGuard<'static, HashSet<u128>> {
    // a panic while holding the lock leaves a valid set (one insert or clear)
    SET.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Notes that the stored chunk `at` decoded (nothing for files that are not noted).
pub fn note(at: At<'_>) {
    if !at.noted() {
        return;
    }
    let h = at.id();
    let mut s = lock();
    if s.len() >= MAX_ENTRIES && !s.contains(&h) {
        s.clear();
    }
    s.insert(h);
}

/// Whether the stored chunk `at` has decoded before (never for files that are not noted).
pub fn known(at: At<'_>) -> bool {
    at.noted() && lock().contains(&at.id())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::storage::file::Inode;

    fn file(ctime_ns: i64) -> SourceFile {
        let mut f = SourceFile::local(PathBuf::from("/data/verified-test.nc"), 100, 7);
        f.inode = Some(Inode {
            dev: 1,
            ino: 2,
            ctime_ns,
        });
        f
    }

    /// A chunk is known only once noted, only for the file version it was read from, and
    /// files whose version is not checked on read are never noted.
    #[test]
    fn known_per_chunk_and_file_version() {
        let at = |file: &SourceFile, offset: u64| -> bool {
            known(At {
                file,
                offset,
                stored_len: 20,
                decoded_len: 80,
            })
        };
        let v1 = file(1);
        assert!(!at(&v1, 10));
        note(At {
            file: &v1,
            offset: 10,
            stored_len: 20,
            decoded_len: 80,
        });
        assert!(at(&v1, 10));
        assert!(!at(&file(2), 10), "another ctime is another version");
        assert!(!at(&v1, 30), "another chunk");
        let mut copy = file(1);
        copy.inode = None;
        note(At {
            file: &copy,
            offset: 10,
            stored_len: 20,
            decoded_len: 80,
        });
        assert!(
            !at(&copy, 10),
            "a file whose version is not checked is never noted"
        );
    }
}

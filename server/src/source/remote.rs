//! Indexing object-store sources with ranged reads instead of a download.
//!
//! A netCDF file's metadata is a small part of it (the netCDF-3 header; the HDF5 object
//! headers, heaps and chunk indexes), so an object is indexed by reading just those byte
//! ranges: the netCDF-3 header parser and the native HDF5 reader read through a
//! [`RangedObject`], and the values of the small variables the index keeps are then fetched
//! with one coalesced call. Only when the native reader declines a netCDF-4 file (or is
//! switched off) does the caller download the object for libnetcdf.
//!
//! Every request is conditional on the ETag the object was listed with, so an object
//! replaced while it is being indexed fails as changed instead of being indexed from two
//! versions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hdf5_reader::storage::{BlockCacheStorage, DynStorage, RangeRequestStorage};

use super::{SourceError, SourceFile, SourceGroup, SourceIndex, native};
use crate::storage::read::{ByteError, Direct, RangeRead};
use crate::storage::{Fetched, RemoteError, RemoteObject};

/// Block size of the HDF5 metadata reads. The native reader asks for many pieces of tens of
/// bytes; each block missing from the cache costs a round trip (tens of ms to an object
/// store), so blocks are large. Measured (moto, `cloudify index`): a 64 MB file of 365
/// appended daily chunks needs 9 requests with 64 KiB blocks and 8 with 256 KiB, 512 KiB or
/// 1 MiB (0.6, 2, 4, 8 MB read); a 40 MB file with 60 chunked variables 4 requests with
/// 64 KiB, 1 from 256 KiB up. 256 KiB is the smallest block that gives the fewest requests.
pub const HDF5_BLOCK: usize = 256 << 10;

/// Blocks the HDF5 metadata cache holds (8 MiB), per file being indexed.
const HDF5_BLOCKS: usize = 32;

/// The first read of an object: its signature, the netCDF-3 header, the HDF5 superblock and
/// (libnetcdf writes metadata first) usually all of the metadata. Two HDF5 blocks, kept, so
/// those blocks cost no further request; and a small file (CMIP6 samples: 30-440 kB) is
/// indexed with this one request.
const HEAD: u64 = 2 * HDF5_BLOCK as u64;

/// Ranges at most this far apart are read with one request while indexing. Small (unlike
/// the 1 MiB `object_store` default used when serving): a netCDF-3 time coordinate has one
/// value per record, records apart, and merging those gaps would read every record whole.
const INDEX_COALESCE: u64 = 64 << 10;

/// Fetched bytes kept for later reads of the same ranges, per object being indexed; past
/// this, reads go to the store again (memory stays bounded for odd files).
const KEEP_BYTES: u64 = 32 << 20;

/// An object read with ranged requests while it is indexed. Keeps what it fetched (up to
/// [`KEEP_BYTES`]) so that the same bytes are read once: the first block of an HDF5 file is
/// the netCDF-3/HDF5 sniffing read, and small variables' values often sit in blocks the
/// metadata reads already fetched. Counts requests and bytes for the log.
pub struct RangedObject {
    file: Arc<SourceFile>,
    obj: Arc<RemoteObject>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Fetched ranges by offset.
    kept: BTreeMap<u64, Bytes>,
    kept_bytes: u64,
    fetched: Fetched,
    /// The first store error met by a reader that can only report I/O errors as text (the
    /// HDF5 reader): reported as itself (missing, changed, denied...) instead of as a file
    /// the reader does not support.
    error: Option<RemoteError>,
}

impl RangedObject {
    /// Wraps `obj` (whose identity `file` records) for indexing, with nothing fetched yet.
    pub fn new(file: Arc<SourceFile>, obj: Arc<RemoteObject>) -> Self {
        Self {
            file,
            obj,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while it was held.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes `[offset, offset+len)` if a kept range holds them (an empty range needs none:
    /// stores refuse empty ranges).
    fn kept(&self, offset: u64, len: u64) -> Option<Bytes> {
        if len == 0 {
            return Some(Bytes::new());
        }
        let st = self.state();
        let (start, b) = st.kept.range(..=offset).next_back()?;
        let from = usize::try_from(offset - start).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        (to <= b.len()).then(|| b.slice(from..to))
    }

    /// Reads `(offset, len)` ranges: those within kept bytes from memory, the others with
    /// one coalesced call.
    pub fn read(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, RemoteError> {
        let mut out: Vec<Option<Bytes>> = ranges.iter().map(|&(o, n)| self.kept(o, n)).collect();
        let missing: Vec<(u64, u64)> = ranges
            .iter()
            .zip(&out)
            .filter(|(_, b)| b.is_none())
            .map(|(r, _)| *r)
            .collect();
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let (got, fetched) =
            crate::storage::read_ranges_coalesced(&self.file, &self.obj, &missing, INDEX_COALESCE)?;
        {
            let mut st = self.state();
            st.fetched.requests += fetched.requests;
            st.fetched.bytes += fetched.bytes;
            for (&(o, _), b) in missing.iter().zip(&got) {
                if st.kept_bytes + b.len() as u64 <= KEEP_BYTES {
                    st.kept_bytes += b.len() as u64;
                    st.kept.insert(o, b.clone());
                }
            }
        }
        let mut got = got.into_iter();
        for slot in out.iter_mut().filter(|b| b.is_none()) {
            *slot = got.next();
        }
        if out.iter().any(Option::is_none) {
            return Err(RemoteError::Other {
                url: self.url(),
                reason: "the store answered fewer ranges than asked for".into(),
            });
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// One range, as owned bytes.
    fn read_one(&self, offset: u64, len: u64) -> Result<Bytes, RemoteError> {
        self.read(&[(offset, len)])?
            .pop()
            .ok_or_else(|| RemoteError::Other {
                url: self.url(),
                reason: "the store answered no bytes".into(),
            })
    }

    /// Requests made and bytes transferred so far.
    pub fn fetched(&self) -> Fetched {
        self.state().fetched
    }

    fn stash(&self, e: RemoteError) {
        let mut st = self.state();
        if st.error.is_none() {
            st.error = Some(e);
        }
    }

    fn take_error(&self) -> Option<RemoteError> {
        self.state().error.take()
    }

    fn url(&self) -> String {
        self.file.path.display().to_string()
    }

    /// The object as `hdf5-reader` storage: ranged reads in [`HDF5_BLOCK`]s through its block
    /// cache. A store error is kept (see [`State::error`]) and handed to the reader as I/O.
    fn hdf5_storage(self: &Arc<Self>) -> DynStorage {
        let me = self.clone();
        let ranged = RangeRequestStorage::new(self.file.size, move |offset, len| {
            me.read_one(offset, len as u64).map(|b| b.to_vec()).map_err(|e| {
                let io = std::io::Error::other(e.to_string());
                me.stash(e);
                hdf5_reader::error::Error::Io(io)
            })
        });
        Arc::new(BlockCacheStorage::new(Arc::new(ranged), HDF5_BLOCK, HDF5_BLOCKS))
    }
}

/// What indexing an object with ranged reads came to.
pub enum Ranged {
    /// Indexed, small variables inlined.
    Indexed {
        /// The file's index.
        idx: SourceIndex,
        /// Ranged requests and bytes it took, for the log.
        fetched: Fetched,
    },
    /// The native HDF5 reader declined the file (or is switched off): the caller indexes a
    /// downloaded copy with the library instead.
    Fallback {
        /// Why the native reader declined, for the log.
        reason: String,
        /// Ranged requests and bytes spent before declining.
        fetched: Fetched,
    },
}

/// The HDF5 signature (at 0, or after a user block at 512, 1024, 2048, ...).
const HDF5_SIG: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// Indexes the object `file` (listed with its size and ETag) with ranged reads; `inline`
/// reads the small variables' values into the index (this layer only parses formats).
pub fn index(
    file: &Arc<SourceFile>,
    obj: &Arc<RemoteObject>,
    inline: Inliner<'_>,
) -> Result<Ranged, SourceError> {
    let ro = Arc::new(RangedObject::new(file.clone(), obj.clone()));
    let not_netcdf = || SourceError::NotNetcdf {
        path: file.path.clone(),
    };
    let head_len = HEAD.min(file.size);
    if head_len < 4 {
        return Err(not_netcdf());
    }
    let head = ro.read_one(0, head_len)?;
    if &head[..3] == b"CDF" && matches!(head[3], 1 | 2 | 5) {
        let read_prefix = |n: u64| -> Result<Vec<u8>, SourceError> { Ok(ro.read_one(0, n)?.to_vec()) };
        let mut idx = super::classic::open_nc3_with(file.clone(), &read_prefix)?;
        inline_small(&ro, &mut idx.root, inline)?;
        return Ok(Ranged::Indexed {
            idx,
            fetched: ro.fetched(),
        });
    }
    if !head.starts_with(&HDF5_SIG) {
        // A user block moves the signature; the library reads such files.
        let mut off = 512u64;
        while off + 8 <= file.size {
            let sig = match head.get(off as usize..off as usize + 8) {
                Some(s) => Bytes::copy_from_slice(s),
                None => ro.read_one(off, 8)?,
            };
            if sig.as_ref() == HDF5_SIG {
                return Ok(Ranged::Fallback {
                    reason: "HDF5 user block".into(),
                    fetched: ro.fetched(),
                });
            }
            off *= 2;
        }
        return Err(not_netcdf());
    }
    if !native::enabled() {
        return Ok(Ranged::Fallback {
            reason: "the native HDF5 reader is switched off (CLOUDIFY_HDF5_READER=library)".into(),
            fetched: ro.fetched(),
        });
    }
    let mut idx = match native::open_storage(file, ro.hdf5_storage()) {
        Ok(idx) => idx,
        Err(why) => {
            if let Some(e) = ro.take_error() {
                return Err(e.into());
            }
            return match why {
                // libhdf5 would refuse the copy too: not worth downloading.
                native::Declined::Truncated { .. } => Err(SourceError::Malformed {
                    path: file.path.clone(),
                    message: format!("{why} (truncated or incompletely uploaded object?)"),
                }),
                native::Declined::Unsupported(u) => Ok(Ranged::Fallback {
                    reason: u.0,
                    fetched: ro.fetched(),
                }),
            };
        }
    };
    inline_small(&ro, &mut idx.root, inline)?;
    Ok(Ranged::Indexed {
        idx,
        fetched: ro.fetched(),
    })
}

/// Reads small variables' values into the index through `inline` (`open::file::inline_small`
/// for local files), all their byte ranges first with one coalesced call rather than a
/// request or more per variable; `inline` then reads them through `ro`, from kept bytes.
fn inline_small(ro: &RangedObject, root: &mut SourceGroup, inline: Inliner<'_>) -> Result<(), SourceError> {
    let mut ranges = Vec::new();
    super::small_var_ranges(root, &mut ranges);
    if !ranges.is_empty() {
        ro.read(&ranges)?;
    }
    inline(ro, root)
}

/// Reads the small variables' values of an index through a reader (see [`index`]).
pub type Inliner<'a> = &'a dyn Fn(&dyn RangeRead, &mut SourceGroup) -> Result<(), SourceError>;

/// Reads of the object being indexed go through its kept bytes; reads of any other file
/// (never made while indexing one object) straight to its store or disk.
impl RangeRead for RangedObject {
    fn read_many(&self, file: &SourceFile, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, ByteError> {
        if file.path == self.file.path && file.etag == self.file.etag {
            Ok(self.read(ranges)?.into_iter().map(|b| b.to_vec()).collect())
        } else {
            Direct.read_many(file, ranges)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use std::time::Duration;

    /// An in-memory store holding `body` as `k`, and the listed source file for it.
    fn object(body: Vec<u8>) -> (Arc<SourceFile>, Arc<RemoteObject>) {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let m = mem.clone();
        let meta = crate::storage::block_on(async move {
            m.put(&ObjPath::from("k"), PutPayload::from(body))
                .await
                .expect("put");
            m.head(&ObjPath::from("k")).await.expect("head")
        })
        .expect("runtime");
        let store = Arc::new(Store::new("mem://b", mem, Duration::from_secs(5)));
        let file = crate::storage::source_file("mem://b/k".into(), &meta, &store);
        let obj = file.remote.clone().expect("remote");
        (Arc::new(file), obj)
    }

    #[test]
    fn kept_ranges_are_not_fetched_again() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (file, obj) = object(body.clone());
        let ro = RangedObject::new(file, obj);
        let got = ro.read(&[(0, 1000), (150_000, 10)]).expect("read");
        assert_eq!(got[0].as_ref(), &body[..1000]);
        assert_eq!(got[1].as_ref(), &body[150_000..150_010]);
        // far apart: two requests
        assert_eq!(ro.fetched().requests, 2);
        let got = ro.read(&[(10, 20), (150_002, 3)]).expect("read");
        assert_eq!(got[0].as_ref(), &body[10..30]);
        assert_eq!(got[1].as_ref(), &body[150_002..150_005]);
        assert_eq!(ro.fetched().requests, 2, "served from kept bytes");
        // partly outside a kept range: fetched; empty ranges cost nothing
        ro.read(&[(990, 20), (5000, 0)]).expect("read");
        assert_eq!(ro.fetched().requests, 3);
        assert_eq!(ro.fetched().bytes, 1000 + 10 + 20);
    }

    #[test]
    fn nc3_is_indexed_from_its_header_and_small_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        {
            let mut f = netcdf::create_with(&p, netcdf::Options::_64BIT_OFFSET).expect("create");
            f.add_unlimited_dimension("time").expect("dim");
            f.add_dimension("x", 400_000).expect("dim");
            f.add_variable::<f64>("time", &["time"]).expect("var");
            f.add_variable::<f32>("big", &["time", "x"]).expect("var");
            f.enddef().expect("enddef"); // netCDF-3 files are written in data mode
            let mut t = f.variable_mut("time").expect("time");
            t.put_values(&[0.0, 1.0, 2.0, 3.0], 0..4).expect("put");
            let mut v = f.variable_mut("big").expect("big");
            let vals: Vec<f32> = (0..4 * 400_000).map(|i| i as f32).collect();
            v.put_values(&vals, (0..4, 0..400_000)).expect("put");
        }
        let body = std::fs::read(&p).expect("read");
        let size = body.len() as u64;
        let (file, obj) = object(body);
        let Ranged::Indexed { idx, fetched } =
            index(&file, &obj, &crate::open::file::inline_small).expect("index")
        else {
            panic!("netCDF-3 never falls back");
        };
        let local =
            crate::open::file::open_file(Arc::new(SourceFile::stat(p).expect("stat"))).expect("local");
        let json = |i: &SourceIndex| {
            let mut v = serde_json::to_value(&i.root).expect("json");
            strip_files(&mut v);
            v
        };
        assert_eq!(json(&idx), json(&local));
        // The head (with the first time value), then the other three, records 1.6 MB apart:
        // no record is read whole.
        assert!(fetched.bytes < size / 4, "{fetched:?} of {size}");
        assert!(fetched.requests <= 5, "{fetched:?}");
    }

    #[test]
    fn nc4_is_indexed_natively_and_errors_name_the_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.nc");
        {
            let mut f = netcdf::create(&p).expect("create");
            f.add_dimension("x", 1_000_000).expect("dim");
            f.add_dimension("y", 10).expect("dim");
            let mut y = f.add_variable::<i32>("y", &["y"]).expect("var");
            y.put_values(&(0..10).collect::<Vec<i32>>(), ..).expect("put");
            let mut v = f.add_variable::<f32>("big", &["x"]).expect("var");
            let vals: Vec<f32> = (0..1_000_000).map(|i| (i % 977) as f32).collect();
            v.put_values(&vals, ..).expect("put");
        }
        let body = std::fs::read(&p).expect("read");
        let size = body.len() as u64;
        let (file, obj) = object(body.clone());
        let Ranged::Indexed { idx, fetched } =
            index(&file, &obj, &crate::open::file::inline_small).expect("index")
        else {
            panic!("a plain netCDF-4 file is read natively");
        };
        let local =
            crate::open::file::open_file(Arc::new(SourceFile::stat(p).expect("stat"))).expect("local");
        assert_eq!(idx.root.vars.len(), local.root.vars.len());
        assert!(
            fetched.bytes < size / 4 && fetched.requests <= 3,
            "{fetched:?} of {size}"
        );
        assert!(matches!(
            idx.root
                .vars
                .iter()
                .find(|v| v.name == "y")
                .map(|v| &v.data.layout),
            Some(super::super::Layout::Memory(_))
        ));

        // Cut short: reported naming the URL, nothing downloaded.
        let (file, obj) = object(body[..body.len() / 2].to_vec());
        let err = index(&file, &obj, &crate::open::file::inline_small)
            .err()
            .expect("truncated");
        assert!(
            err.to_string().contains("mem://b/k") && err.to_string().contains("truncated"),
            "{err}"
        );
        // Replaced after listing: the ETag no longer matches.
        let (file, obj) = object(body);
        let stale = Arc::new(SourceFile {
            etag: Some("\"stale\"".into()),
            ..(*file).clone()
        });
        let err = index(&stale, &obj, &crate::open::file::inline_small)
            .err()
            .expect("changed");
        assert!(
            matches!(err, SourceError::Remote(RemoteError::Changed { .. })),
            "{err}"
        );
        // Gone since it was listed: the store's answer, naming the URL.
        let gone = Arc::new(RemoteObject {
            store: obj.store.clone(),
            location: ObjPath::from("gone"),
        });
        let gone_file = Arc::new(SourceFile {
            path: "mem://b/gone".into(),
            remote: Some(gone.clone()),
            ..(*file).clone()
        });
        let err = index(&gone_file, &gone, &crate::open::file::inline_small)
            .err()
            .expect("missing");
        assert!(
            matches!(err, SourceError::Remote(RemoteError::NotFound { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("mem://b/gone"), "{err}");
        // Not netCDF at all.
        let (file, obj) = object(vec![7u8; 5000]);
        assert!(matches!(
            index(&file, &obj, &crate::open::file::inline_small),
            Err(SourceError::NotNetcdf { .. })
        ));
    }

    /// Drops the `file` entries (the remote and the local index point at different files).
    fn strip_files(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("file");
                m.values_mut().for_each(strip_files);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip_files),
            _ => {}
        }
    }
}

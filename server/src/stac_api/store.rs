//! The `cloudify catalog` store: STAC collections and items in a local directory, held in
//! memory for search.
//!
//! Layout: `DIR/collections/<collection>/collection.json` and
//! `DIR/collections/<collection>/items/<item>.json` (ids percent-encoded into file names).
//! One file per document keeps every write small and independent.
//!
//! Crash safety: a document is written to a temporary file in the same directory, fsynced,
//! renamed over the target and the directory fsynced — a reader (or a restart after a crash)
//! sees the old or the new document, never half of one. The in-memory state changes only
//! after the disk write succeeded, so a failed or rejected request changes nothing. Deleting
//! a collection renames its directory away first (atomic) and then removes it; leftovers of
//! an interrupted delete or write are cleaned at start-up.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};
use stac::{Collection, Item};

/// Why a store operation failed. `Invalid` and the not-found/conflict variants are the
/// client's fault (4xx); `Io` is ours (5xx).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A document or id the store refuses; the message names the field (400).
    #[error("{0}")]
    Invalid(String),
    /// The collection named in the URL or the item does not exist (404).
    #[error("no collection '{0}'")]
    NoCollection(String),
    /// No such item in an existing collection (404).
    #[error("no item '{item}' in collection '{collection}'")]
    NoItem {
        /// The collection searched.
        collection: String,
        /// The item id asked for.
        item: String,
    },
    /// A create (POST) of an id that exists: replacing needs PUT, so nothing is overwritten
    /// by accident (409).
    #[error("collection '{0}' already exists")]
    CollectionExists(String),
    /// As [`StoreError::CollectionExists`], for an item (409).
    #[error("item '{item}' already exists in collection '{collection}'")]
    ItemExists {
        /// The collection it is in.
        collection: String,
        /// The existing item's id.
        item: String,
    },
    /// The disk failed; the path names the file, and the in-memory state is unchanged (500).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory being written, read or removed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes an id as one safe file-name component (reversible).
pub fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_id`].
pub fn decode_id(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically and durably (temp file + fsync + rename + dir fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Invalid(format!("{}: no parent directory", path.display())))?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Longest percent-encoded id ([`encode_id`]): a file name of at most 255 bytes with ".json".
pub const MAX_ENCODED_ID: usize = 250;

/// Checks a collection or item id (`what` names where it came from in messages).
///
/// '/', '?', '#' and '%' would change the meaning of the URL path of the collection or item
/// (its links), and so would `.` and `..` as a path segment (clients resolve them away);
/// control characters have no place in a URL or a file name.
pub fn check_id(what: &str, id: &str) -> Result<(), StoreError> {
    if id.is_empty()
        || id.chars().count() > 256
        || id == "."
        || id == ".."
        || id
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '?' | '#' | '%'))
    {
        return Err(StoreError::Invalid(format!(
            "{what}: {id:?} is not a valid id: 1-256 characters without '/', '?', '#', '%' or \
             control characters, and not '.' or '..'"
        )));
    }
    // The id is a file name of the store (percent-encoded, plus ".json"): file systems take
    // at most 255 bytes, and an I/O error would be a 500 for the client's mistake.
    let encoded = encode_id(id).len();
    if encoded > MAX_ENCODED_ID {
        return Err(StoreError::Invalid(format!(
            "{what}: {id:?} is not a valid id: {encoded} bytes once percent-encoded as a file \
             name, more than the {MAX_ENCODED_ID} accepted"
        )));
    }
    Ok(())
}

/// Documents checked for what STAC requires, with messages naming the field.
fn check_common(v: &Value, kind: &str, expected_type: &str) -> Result<String, StoreError> {
    let o = v
        .as_object()
        .ok_or_else(|| StoreError::Invalid(format!("{kind} must be a JSON object")))?;
    match o.get("type").and_then(Value::as_str) {
        Some(t) if t == expected_type => {}
        Some(t) => {
            return Err(StoreError::Invalid(format!(
                "type: must be \"{expected_type}\", not \"{t}\""
            )));
        }
        None => {
            return Err(StoreError::Invalid(format!(
                "type: missing (must be \"{expected_type}\")"
            )));
        }
    }
    let id = o
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Invalid("id: missing or not a string".into()))?;
    check_id("id", id)?;
    if let Some(l) = o.get("links")
        && !l.is_array()
    {
        return Err(StoreError::Invalid("links: must be an array".into()));
    }
    Ok(id.to_string())
}

/// Links the API sets itself; stored copies would be stale (they point at the registrant).
const API_LINKS: [&str; 5] = ["self", "root", "parent", "collection", "items"];

fn strip_api_links(v: &mut Value) {
    if let Some(Value::Array(links)) = v.get_mut("links") {
        links.retain(|l| {
            !l.get("rel")
                .and_then(Value::as_str)
                .is_some_and(|r| API_LINKS.contains(&r))
        });
    }
}

/// Validates an item for `collection` (sets `collection` when absent).
pub fn validate_item(mut v: Value, collection: &str) -> Result<Item, StoreError> {
    check_common(&v, "item", "Feature")?;
    match v.get("collection") {
        None | Some(Value::Null) => {
            v["collection"] = Value::String(collection.to_string());
        }
        Some(Value::String(c)) if c == collection => {}
        Some(other) => {
            return Err(StoreError::Invalid(format!(
                "collection: item says {other} but is sent to collection '{collection}'"
            )));
        }
    }
    let props = v
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| StoreError::Invalid("properties: missing or not an object".into()))?;
    match props.get("datetime") {
        Some(Value::String(_)) => {}
        Some(Value::Null) => {
            for k in ["start_datetime", "end_datetime"] {
                if !props.get(k).is_some_and(Value::is_string) {
                    return Err(StoreError::Invalid(format!(
                        "properties.{k}: required when properties.datetime is null"
                    )));
                }
            }
        }
        Some(_) => {
            return Err(StoreError::Invalid(
                "properties.datetime: must be a string or null".into(),
            ));
        }
        None => {
            return Err(StoreError::Invalid(
                "properties.datetime: missing (string or null)".into(),
            ));
        }
    }
    if v.get("geometry").is_none() {
        return Err(StoreError::Invalid(
            "geometry: missing (a GeoJSON geometry or null)".into(),
        ));
    }
    if !v.get("geometry").is_some_and(Value::is_null) && v.get("bbox").is_none() {
        return Err(StoreError::Invalid(
            "bbox: required when geometry is not null".into(),
        ));
    }
    if v.get("assets").is_some_and(|a| !a.is_object()) {
        return Err(StoreError::Invalid("assets: must be an object".into()));
    }
    strip_api_links(&mut v);
    serde_json::from_value::<Item>(v).map_err(|e| StoreError::Invalid(format!("invalid item: {e}")))
}

/// Validates a collection.
pub fn validate_collection(mut v: Value) -> Result<Collection, StoreError> {
    check_common(&v, "collection", "Collection")?;
    for k in ["description", "license"] {
        if !v.get(k).is_some_and(Value::is_string) {
            return Err(StoreError::Invalid(format!("{k}: missing or not a string")));
        }
    }
    let ext = v
        .get("extent")
        .ok_or_else(|| StoreError::Invalid("extent: missing".into()))?;
    if !ext.pointer("/spatial/bbox").is_some_and(Value::is_array) {
        return Err(StoreError::Invalid(
            "extent.spatial.bbox: missing or not an array".into(),
        ));
    }
    if !ext.pointer("/temporal/interval").is_some_and(Value::is_array) {
        return Err(StoreError::Invalid(
            "extent.temporal.interval: missing or not an array".into(),
        ));
    }
    strip_api_links(&mut v);
    serde_json::from_value::<Collection>(v)
        .map_err(|e| StoreError::Invalid(format!("invalid collection: {e}")))
}

/// JSON merge patch (RFC 7396).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[derive(Debug, Default)]
struct Data {
    collections: BTreeMap<String, Collection>,
    /// Items by collection, then id (ordered: stable paging).
    items: BTreeMap<String, BTreeMap<String, Item>>,
}

/// The store. Reads are lock-shared and in memory; writes are serialised.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    data: RwLock<Data>,
    /// Serialises writers so disk and memory change in the same order.
    write: std::sync::Mutex<()>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other("store lock poisoned by an earlier panic"),
    }
}

impl Store {
    fn coll_dir(&self, c: &str) -> PathBuf {
        self.dir.join("collections").join(encode_id(c))
    }
    fn item_path(&self, c: &str, i: &str) -> PathBuf {
        self.coll_dir(c)
            .join("items")
            .join(format!("{}.json", encode_id(i)))
    }

    /// Opens (creating) the store directory and loads every document.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
        let root = dir.join("collections");
        fs::create_dir_all(&root).map_err(io(&root))?;
        let mut data = Data::default();
        for entry in fs::read_dir(&root).map_err(io(&root))? {
            let entry = entry.map_err(io(&root))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".trash-") || name.starts_with(".tmp-") {
                // an interrupted delete or write: finish it
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                continue;
            }
            let cpath = path.join("collection.json");
            let Some(cid) = decode_id(&name) else {
                tracing::warn!(path = %path.display(), "skipping: not an encoded collection id");
                continue;
            };
            let coll: Collection = match fs::read(&cpath)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(path = %cpath.display(), "skipping collection: {e}");
                    continue;
                }
            };
            let mut items = BTreeMap::new();
            let idir = path.join("items");
            if let Ok(rd) = fs::read_dir(&idir) {
                for e in rd.flatten() {
                    let p = e.path();
                    let fname = e.file_name().to_string_lossy().to_string();
                    if fname.starts_with(".tmp-") {
                        let _ = fs::remove_file(&p);
                        continue;
                    }
                    match fs::read(&p)
                        .map_err(|e| e.to_string())
                        .and_then(|b| serde_json::from_slice::<Item>(&b).map_err(|e| e.to_string()))
                    {
                        Ok(it) => {
                            items.insert(it.id.clone(), it);
                        }
                        Err(e) => tracing::error!(path = %p.display(), "skipping item: {e}"),
                    }
                }
            }
            data.items.insert(cid.clone(), items);
            data.collections.insert(cid, coll);
        }
        tracing::info!(
            dir = %dir.display(),
            collections = data.collections.len(),
            items = data.items.values().map(BTreeMap::len).sum::<usize>(),
            "catalog store loaded"
        );
        Ok(Arc::new(Store {
            dir: dir.to_path_buf(),
            data: RwLock::new(data),
            write: std::sync::Mutex::new(()),
        }))
    }

    /// Every collection, in id order (copies: no lock is held while answering).
    pub fn collections(&self) -> Vec<Collection> {
        self.data
            .read()
            .map(|d| d.collections.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One collection, if it exists.
    pub fn collection(&self, id: &str) -> Option<Collection> {
        self.data.read().ok().and_then(|d| d.collections.get(id).cloned())
    }

    /// Item `i` of collection `c`, if both exist.
    pub fn item(&self, c: &str, i: &str) -> Option<Item> {
        self.data
            .read()
            .ok()
            .and_then(|d| d.items.get(c).and_then(|m| m.get(i)).cloned())
    }

    /// Items matching `pred`, in (collection, id) order, restricted to `collections` when
    /// not empty. Returns the page `[skip, skip+limit)` and whether more follow.
    pub fn find(
        &self,
        collections: &[String],
        mut pred: impl FnMut(&Item) -> Result<bool, String>,
        skip: usize,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), String> {
        let d = self.data.read().map_err(|_| "store lock poisoned".to_string())?;
        let mut out = Vec::new();
        let mut seen = 0usize;
        for (cid, items) in &d.items {
            if !collections.is_empty() && !collections.contains(cid) {
                continue;
            }
            for it in items.values() {
                if !pred(it)? {
                    continue;
                }
                if seen >= skip {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(it.clone());
                }
                seen += 1;
            }
        }
        Ok((out, false))
    }

    /// Creates (`create`: 409 when it exists) or replaces (`!create`: 404 when missing) a
    /// collection; `upsert` does either.
    pub fn put_collection(&self, c: Collection, mode: Mode) -> Result<Collection, StoreError> {
        let _w = self.write.lock().map_err(poisoned)?;
        let exists = self.collection(&c.id).is_some();
        match (mode, exists) {
            (Mode::Create, true) => return Err(StoreError::CollectionExists(c.id)),
            (Mode::Replace, false) => return Err(StoreError::NoCollection(c.id)),
            _ => {}
        }
        let bytes = serde_json::to_vec_pretty(&c).map_err(|e| StoreError::Invalid(e.to_string()))?;
        write_atomic(&self.coll_dir(&c.id).join("collection.json"), &bytes)?;
        let mut d = self.data.write().map_err(poisoned)?;
        d.items.entry(c.id.clone()).or_default();
        d.collections.insert(c.id.clone(), c.clone());
        Ok(c)
    }

    /// Deletes a collection and its items.
    pub fn delete_collection(&self, id: &str) -> Result<(), StoreError> {
        let _w = self.write.lock().map_err(poisoned)?;
        if self.collection(id).is_none() {
            return Err(StoreError::NoCollection(id.to_string()));
        }
        let dir = self.coll_dir(id);
        let trash = self.dir.join("collections").join(format!(
            ".trash-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&dir, &trash).map_err(io(&dir))?;
        sync_dir(&self.dir.join("collections"))?;
        {
            let mut d = self.data.write().map_err(poisoned)?;
            d.collections.remove(id);
            d.items.remove(id);
        }
        if let Err(e) = fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), "could not remove deleted collection (removed at next start): {e}");
        }
        Ok(())
    }

    /// Creates, replaces or upserts an item (as [`Store::put_collection`]) in the collection
    /// its `collection` field names, which must exist: items are never orphans.
    pub fn put_item(&self, it: Item, mode: Mode) -> Result<Item, StoreError> {
        let _w = self.write.lock().map_err(poisoned)?;
        let cid = it.collection.clone().unwrap_or_default();
        if self.collection(&cid).is_none() {
            return Err(StoreError::NoCollection(cid));
        }
        let exists = self.item(&cid, &it.id).is_some();
        match (mode, exists) {
            (Mode::Create, true) => {
                return Err(StoreError::ItemExists {
                    collection: cid,
                    item: it.id,
                });
            }
            (Mode::Replace, false) => {
                return Err(StoreError::NoItem {
                    collection: cid,
                    item: it.id,
                });
            }
            _ => {}
        }
        let bytes = serde_json::to_vec_pretty(&it).map_err(|e| StoreError::Invalid(e.to_string()))?;
        write_atomic(&self.item_path(&cid, &it.id), &bytes)?;
        let mut d = self.data.write().map_err(poisoned)?;
        d.items.entry(cid).or_default().insert(it.id.clone(), it.clone());
        Ok(it)
    }

    /// Deletes one item (404 when absent); the directory is synced, so it stays deleted after
    /// a crash.
    pub fn delete_item(&self, c: &str, i: &str) -> Result<(), StoreError> {
        let _w = self.write.lock().map_err(poisoned)?;
        if self.item(c, i).is_none() {
            return Err(StoreError::NoItem {
                collection: c.to_string(),
                item: i.to_string(),
            });
        }
        let p = self.item_path(c, i);
        fs::remove_file(&p).map_err(io(&p))?;
        if let Some(parent) = p.parent() {
            sync_dir(parent)?;
        }
        let mut d = self.data.write().map_err(poisoned)?;
        if let Some(m) = d.items.get_mut(c) {
            m.remove(i);
        }
        Ok(())
    }
}

/// How a write treats an existing document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// POST: must not exist (409).
    Create,
    /// PUT/PATCH: must exist (404).
    Replace,
    /// Either (internal use).
    Upsert,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn coll(id: &str) -> Value {
        json!({"type": "Collection", "stac_version": "1.1.0", "id": id, "description": "d", "license": "other",
               "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[null, null]]}}, "links": []})
    }
    fn item(id: &str) -> Value {
        json!({"type": "Feature", "stac_version": "1.1.0", "id": id, "geometry": null,
               "properties": {"datetime": "2000-01-01T00:00:00Z"}, "links": [{"rel": "self", "href": "http://x"}], "assets": {}})
    }

    #[test]
    fn ids_encode_reversibly() {
        for id in ["tas", "a b/c", ".hidden", "ü%x", "CMIP6.ScenarioMIP.x"] {
            let e = encode_id(id);
            assert!(!e.contains('/') && !e.starts_with('.'), "{e}");
            assert_eq!(decode_id(&e).as_deref(), Some(id));
        }
    }

    #[test]
    fn validation_names_fields() {
        let e = validate_item(json!({"type": "Feature", "id": "x"}), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("properties"), "{e}");
        let mut it = item("x");
        it["properties"]["datetime"] = Value::Null;
        let e = validate_item(it, "c").unwrap_err().to_string();
        assert!(e.contains("start_datetime"), "{e}");
        let mut it = item("x");
        it["collection"] = json!("other");
        assert!(
            validate_item(it, "c")
                .unwrap_err()
                .to_string()
                .contains("collection")
        );
        let e =
            validate_collection(json!({"type": "Collection", "id": "c", "description": "d"})).unwrap_err();
        assert!(e.to_string().contains("license"), "{e}");
        let it = validate_item(item("x"), "c").unwrap();
        assert_eq!(it.collection.as_deref(), Some("c"));
        assert!(it.links.is_empty(), "API links are dropped");
    }

    #[test]
    fn survives_restart_and_rejects_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_collection(validate_collection(coll("c 1ü")).unwrap(), Mode::Create)
                .unwrap();
            assert!(matches!(
                s.put_collection(validate_collection(coll("c 1ü")).unwrap(), Mode::Create),
                Err(StoreError::CollectionExists(_))
            ));
            s.put_item(validate_item(item("a"), "c 1ü").unwrap(), Mode::Create)
                .unwrap();
            s.put_item(validate_item(item("b"), "c 1ü").unwrap(), Mode::Create)
                .unwrap();
            assert!(matches!(
                s.put_item(validate_item(item("a"), "c 1ü").unwrap(), Mode::Create),
                Err(StoreError::ItemExists { .. })
            ));
            assert!(matches!(
                s.put_item(validate_item(item("z"), "nope").unwrap(), Mode::Create),
                Err(StoreError::NoCollection(_))
            ));
            s.delete_item("c 1ü", "b").unwrap();
            // a leftover temp file of a crashed write is ignored and cleaned
            fs::write(s.coll_dir("c 1ü").join("items").join(".tmp-1-1"), b"{\"half").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(s.collection("c 1ü").is_some());
        assert!(s.item("c 1ü", "a").is_some());
        assert!(s.item("c 1ü", "b").is_none());
        let (page, more) = s.find(&[], |_| Ok(true), 0, 10).unwrap();
        assert_eq!((page.len(), more), (1, false));
        s.delete_collection("c 1ü").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.collections().is_empty());
    }

    #[test]
    fn merge_patch_rfc7396() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}

//! `cloudify stac export`: a static STAC catalog (for S3 or GitHub Pages hosting).
//!
//! Layout: `catalog.json` → `collection.json` → `items/<id>.json`, linked with relative
//! hrefs so the tree can be moved anywhere; assets keep absolute URLs of the data server
//! (`--public-url`), which is where the data is.

use std::path::Path;

use serde_json::{Value, json};

use super::describe::Description;
use super::item;
use crate::stac_api::store::{encode_id, write_atomic};

/// Writes the static catalog; returns the number of items.
pub fn export(
    ds: &[&Description],
    out: &Path,
    public_url: &str,
    collection_id: &str,
) -> anyhow::Result<usize> {
    let base = public_url.trim_end_matches('/');
    let file = |id: &str| format!("{}.json", encode_id(id));
    let mut coll = item::collection(
        collection_id,
        "cloudify datasets",
        ds,
        "./collection.json",
        |id| format!("./items/{}", file(id)),
    );
    if let Some(Value::Array(links)) = coll.get_mut("links") {
        // self-contained catalog: no absolute self links, relative root/parent
        links.retain(|l| l["rel"] != "root" && l["rel"] != "self");
        links.push(json!({"rel": "root", "href": "./catalog.json", "type": "application/json"}));
        links.push(json!({"rel": "parent", "href": "./catalog.json", "type": "application/json"}));
    }
    let catalog = json!({
        "type": "Catalog",
        "stac_version": item::STAC_VERSION,
        "id": format!("{collection_id}-catalog"),
        "description": "Datasets served as Zarr by cloudify",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": "./collection.json", "type": "application/json"},
        ],
    });
    for d in ds {
        let mut it = item::item(d, base, collection_id);
        it["links"] = json!([
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "alternate", "href": format!("{base}/datasets/{}/", d.id), "type": "text/html"},
        ]);
        write_atomic(
            &out.join("items").join(file(&d.id)),
            serde_json::to_string_pretty(&it)?.as_bytes(),
        )?;
    }
    write_atomic(
        &out.join("collection.json"),
        serde_json::to_string_pretty(&coll)?.as_bytes(),
    )?;
    write_atomic(
        &out.join("catalog.json"),
        serde_json::to_string_pretty(&catalog)?.as_bytes(),
    )?;
    Ok(ds.len())
}

//! intake catalogs (YAML, intake-xarray `zarr` driver) pointing at the served Zarr stores.
//!
//! `intake.open_catalog(url)` lists the datasets and `cat[name].to_dask()` opens one with
//! `xarray.open_dataset(urlpath, engine="zarr", consolidated=True, zarr_format=2)`: v2 is
//! used because its consolidated `.zmetadata` is one request for every xarray version.

use serde_json::{Map, Value, json};

use super::describe::Description;

fn source(d: &Description, base: &str) -> Value {
    let mut meta = Map::new();
    if let Some(t) = &d.title {
        meta.insert("title".into(), json!(t));
    }
    if let Some(l) = &d.license {
        meta.insert("license".into(), json!(l));
    }
    if let Some(b) = d.bbox {
        meta.insert("bbox".into(), json!(b));
    }
    if let Some((s, e)) = &d.time {
        meta.insert("start_datetime".into(), json!(s));
        meta.insert("end_datetime".into(), json!(e));
    }
    meta.insert(
        "variables".into(),
        json!(d.vars.iter().map(|v| &v.name).collect::<Vec<_>>()),
    );
    if !d.views.is_empty() {
        // each view is a source of its own; its parent lists them
        meta.insert(
            "views".into(),
            json!(d.views.iter().map(|(id, _)| id).collect::<Vec<_>>()),
        );
    }
    meta.insert(
        "stac".into(),
        json!(format!("{base}{}", super::item::item_path(&d.id))),
    );
    json!({
        "description": d.description.as_deref().or(d.title.as_deref()).unwrap_or(&d.id),
        "driver": "zarr",
        "args": {
            "urlpath": format!("{base}/datasets/{}/zarr", d.id),
            "consolidated": true,
            "zarr_format": 2,
        },
        "metadata": meta,
    })
}

/// An intake catalog of the given datasets as YAML text.
pub fn catalog_yaml(title: &str, ds: &[&Description], base: &str) -> String {
    let sources: Map<String, Value> = ds.iter().map(|d| (d.id.clone(), source(d, base))).collect();
    let doc = json!({
        "description": title,
        "metadata": {"version": 1, "source": "cloudify", "url": base},
        "sources": sources,
    });
    // serde_yaml cannot fail on a JSON value built from strings and numbers; fall back to
    // JSON (which YAML parsers accept) rather than panic.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_lists_sources_with_zarr_driver() {
        let d = Description {
            id: "tas".into(),
            title: Some("T".into()),
            ..Default::default()
        };
        let y = catalog_yaml("all", &[&d], "http://h:9");
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        let s = &v["sources"]["tas"];
        assert_eq!(s["driver"].as_str(), Some("zarr"));
        assert_eq!(
            s["args"]["urlpath"].as_str(),
            Some("http://h:9/datasets/tas/zarr")
        );
        assert_eq!(s["args"]["consolidated"].as_bool(), Some(true));
        assert_eq!(v["metadata"]["version"].as_u64(), Some(1));
    }
}

//! STAC 1.1 Items and Collections from dataset descriptions (pure functions).
//!
//! Assets point at the served Zarr stores. Both Zarr versions are offered as separate
//! assets with the `application/vnd+zarr` media type (the one xpystac recognises) and the
//! exact `xarray.open_dataset` arguments (xarray-assets extension), so
//! `xr.open_dataset(item.assets["zarr-v3"])` works without knowing anything about cloudify.

use serde_json::{Map, Value, json};

use super::describe::Description;

/// The STAC version every document declares (validators pick their schemas by it).
pub const STAC_VERSION: &str = "1.1.0";
/// The datacube extension: dimensions and variables, so clients know the cube unopened.
pub const DATACUBE_EXT: &str = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json";
/// The xarray-assets extension: the `xarray.open_dataset` arguments of each asset.
pub const XARRAY_EXT: &str = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json";
/// The Zarr assets' media type, the one xpystac recognises.
pub const ZARR_MEDIA_TYPE: &str = "application/vnd+zarr";

/// Where the served documents live, relative to the public base URL.
pub fn item_path(id: &str) -> String {
    format!("/datasets/{id}/stac")
}
/// Where the collection of all served datasets lives, relative to the public base URL.
pub const COLLECTION_PATH: &str = "/stac-collection-all.json";

/// `[west, south, east, north]` as a GeoJSON geometry; an area across the antimeridian
/// becomes two polygons (RFC 7946 §3.1.9).
pub fn bbox_geometry(b: [f64; 4]) -> Value {
    let [w, s, e, n] = b;
    let poly = |w: f64, e: f64| json!([[[w, s], [e, s], [e, n], [w, n], [w, s]]]);
    if w > e {
        json!({"type": "MultiPolygon", "coordinates": [poly(w, 180.0), poly(-180.0, e)]})
    } else if w == e && s == n {
        json!({"type": "Point", "coordinates": [w, s]})
    } else {
        json!({"type": "Polygon", "coordinates": poly(w, e)})
    }
}

/// The Zarr assets (v2 and v3) and the kerchunk references of a dataset.
pub fn assets(id: &str, base: &str) -> Value {
    let zarr = format!("{base}/datasets/{id}/zarr");
    let store = |v: u8| {
        json!({
            "href": zarr,
            "type": ZARR_MEDIA_TYPE,
            "title": format!("Zarr v{v} store"),
            "roles": ["data", "zarr"],
            "xarray:open_kwargs": {"engine": "zarr", "consolidated": true, "zarr_format": v},
        })
    };
    json!({
        "zarr-v2": store(2),
        "zarr-v3": store(3),
        "zmetadata": {
            "href": format!("{zarr}/.zmetadata"),
            "type": "application/json",
            "title": "Consolidated Zarr v2 metadata",
            "roles": ["metadata"],
        },
        "references": {
            "href": format!("{base}/datasets/{id}/kerchunk.json"),
            "type": "application/json",
            "title": "Kerchunk references to the source files' chunks",
            "roles": ["references"],
        },
    })
}

fn common_props(d: &Description, props: &mut Map<String, Value>) {
    if let Some(t) = &d.title {
        props.insert("title".into(), json!(t));
    }
    if let Some(t) = &d.description {
        props.insert("description".into(), json!(t));
    }
    if let Some(l) = &d.license {
        props.insert("license".into(), json!(l));
    }
    if !d.keywords.is_empty() {
        props.insert("keywords".into(), json!(d.keywords));
    }
    if !d.providers.is_empty() {
        props.insert("providers".into(), json!(d.providers));
    }
}

/// The STAC Item of one dataset. `base` is the public base URL (no trailing slash).
pub fn item(d: &Description, base: &str, collection: &str) -> Value {
    let mut props = Map::new();
    match &d.time {
        Some((start, end)) => {
            props.insert("datetime".into(), Value::Null);
            props.insert("start_datetime".into(), json!(start));
            props.insert("end_datetime".into(), json!(end));
        }
        None => {
            props.insert("datetime".into(), json!(d.fallback_datetime));
        }
    }
    common_props(d, &mut props);
    props.insert(
        "cube:dimensions".into(),
        Value::Object(d.dims.iter().map(|c| (c.name.clone(), c.json.clone())).collect()),
    );
    props.insert(
        "cube:variables".into(),
        Value::Object(d.vars.iter().map(|c| (c.name.clone(), c.json.clone())).collect()),
    );
    for (k, v) in &d.extra {
        props.insert(k.clone(), v.clone());
    }
    let mut item = json!({
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [DATACUBE_EXT, XARRAY_EXT],
        "id": d.id,
        "geometry": d.bbox.map_or(Value::Null, bbox_geometry),
        "properties": props,
        "links": [
            {"rel": "self", "href": format!("{base}{}", item_path(&d.id)), "type": "application/geo+json"},
            {"rel": "collection", "href": format!("{base}{COLLECTION_PATH}"), "type": "application/json"},
            {"rel": "parent", "href": format!("{base}{COLLECTION_PATH}"), "type": "application/json"},
            {"rel": "root", "href": format!("{base}{COLLECTION_PATH}"), "type": "application/json"},
            {"rel": "alternate", "href": format!("{base}/datasets/{}/", d.id), "type": "text/html", "title": "Dataset summary"},
        ],
        "assets": assets(&d.id, base),
        "collection": collection,
    });
    // views: the reduced datasets computed from this one (the seed's `processed` asset), one
    // asset per view, each also an item of its own
    for (id, view) in &d.views {
        item["assets"][format!("processed-{view}")] = json!({
            "href": format!("{base}/datasets/{id}/zarr"),
            "type": ZARR_MEDIA_TYPE,
            "title": format!("View '{view}': computed from this dataset on request (Zarr v3)"),
            "roles": ["data", "zarr", "processed"],
            "xarray:open_kwargs": {"engine": "zarr", "consolidated": true, "zarr_format": 3},
        });
        if let Some(links) = item["links"].as_array_mut() {
            links.push(json!({"rel": "related", "href": format!("{base}{}", item_path(id)), "type": "application/geo+json", "title": format!("View '{view}'")}));
        }
    }
    if let Some(links) = item["links"].as_array_mut() {
        links.extend(product_links(d, base));
    }
    // a preview: the map (PNG) of the first data variable with two or more dimensions
    if let Some(v) = d
        .vars
        .iter()
        .find(|v| v.json["type"] == "data" && v.json["dimensions"].as_array().is_some_and(|a| a.len() >= 2))
    {
        item["assets"]["thumbnail"] = json!({
            "href": format!("{base}/datasets/{}/plot/{}/map/viridis", d.id, enc(&v.name)),
            "type": "image/png",
            "title": format!("Map of '{}' (first step of leading dimensions)", v.name),
            "roles": ["thumbnail", "overview"],
        });
    }
    if let Some(b) = d.bbox {
        item["bbox"] = json!(b);
    }
    item
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Links to the products a person or a map client uses without reading the whole store: the
/// OGC API EDR queries (`crate::http::edr`, point series and polygon extraction) and, for
/// each data variable on a lat/lon grid, its map tiles (`crate::http::tiles`): a TileJSON
/// document (`rel: tilejson`), the XYZ URL template (`rel: xyz`, as the STAC web-map-links
/// extension spells them) and the browser map page (`rel: preview`). Only variables whose
/// dimensions include the x and y spatial dimensions (1-D lat/lon coordinates, what tiles and
/// EDR select on) get them: on other grids the links would only lead to a 400.
fn product_links(d: &Description, base: &str) -> Vec<Value> {
    let axis_dims = |axis: &str| -> Vec<&str> {
        d.dims
            .iter()
            .filter(|c| c.json["type"] == "spatial" && c.json["axis"] == axis)
            .map(|c| c.name.as_str())
            .collect()
    };
    let (xs, ys) = (axis_dims("x"), axis_dims("y"));
    let on_grid: Vec<&str> = d
        .vars
        .iter()
        .filter(|v| {
            let dims: Vec<&str> = v.json["dimensions"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            v.json["type"] == "data"
                && dims.iter().any(|n| xs.contains(n))
                && dims.iter().any(|n| ys.contains(n))
        })
        .map(|v| v.name.as_str())
        .collect();
    if on_grid.is_empty() {
        return Vec::new();
    }
    let ds = format!("{base}/datasets/{}", d.id);
    let mut out = vec![
        json!({"rel": "data", "href": format!("{ds}/edr/position"), "type": "application/prs.coverage+json",
               "title": "OGC API EDR position query: ?coords=POINT(lon lat)&parameter-name=VAR&datetime=a/b&f=cf_covjson|csv|nc (nearest cell)"}),
        json!({"rel": "data", "href": format!("{ds}/edr/area"), "type": "application/prs.coverage+json",
               "title": "OGC API EDR area query: ?coords=POLYGON((lon lat, ...))&parameter-name=VAR&datetime=a/b&f=cf_covjson|csv|nc"}),
    ];
    for name in on_grid {
        let q = format!("variables={}", enc(name));
        out.push(
            json!({"rel": "tilejson", "href": format!("{ds}/tiles/WebMercatorQuad/tilejson.json?{q}"),
                        "type": "application/json", "title": format!("Map tiles of '{name}' (TileJSON)")}),
        );
        out.push(
            json!({"rel": "xyz", "href": format!("{ds}/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}.png?{q}"),
                        "type": "image/png", "title": format!("Map tiles of '{name}' (XYZ, Web Mercator)")}),
        );
        out.push(json!({"rel": "preview", "href": format!("{ds}/map?{q}"),
                        "type": "text/html", "title": format!("Map viewer of '{name}' (time slider)")}));
    }
    out
}

/// Union of bboxes (antimeridian-crossing ones widen to the full circle, which is safe).
fn union_bbox(ds: &[&Description]) -> [f64; 4] {
    let mut out: Option<[f64; 4]> = None;
    for b in ds.iter().filter_map(|d| d.bbox) {
        let b = if b[0] > b[2] {
            [-180.0, b[1], 180.0, b[3]]
        } else {
            b
        };
        out = Some(match out {
            None => b,
            Some(o) => [o[0].min(b[0]), o[1].min(b[1]), o[2].max(b[2]), o[3].max(b[3])],
        });
    }
    out.unwrap_or([-180.0, -90.0, 180.0, 90.0])
}

fn union_time(ds: &[&Description]) -> [Value; 2] {
    let starts = ds
        .iter()
        .map(|d| d.time.as_ref().map_or(&d.fallback_datetime, |t| &t.0));
    let ends = ds
        .iter()
        .map(|d| d.time.as_ref().map_or(&d.fallback_datetime, |t| &t.1));
    // RFC 3339 UTC strings of equal shape sort chronologically.
    [
        starts.min().map_or(Value::Null, |s| json!(s)),
        ends.max().map_or(Value::Null, |s| json!(s)),
    ]
}

/// The Collection of the given datasets. `item_href` gives each item's link target.
pub fn collection(
    id: &str,
    title: &str,
    ds: &[&Description],
    self_href: &str,
    item_href: impl Fn(&str) -> String,
) -> Value {
    let licenses: std::collections::BTreeSet<&str> = ds.iter().filter_map(|d| d.license.as_deref()).collect();
    let license = match licenses.len() {
        0 => "other".to_string(),
        1 => licenses.iter().next().map_or("other", |s| s).to_string(),
        _ => "various".to_string(),
    };
    let mut keywords: Vec<&String> = ds.iter().flat_map(|d| d.keywords.iter()).collect();
    keywords.sort();
    keywords.dedup();
    let mut links = vec![
        json!({"rel": "self", "href": self_href, "type": "application/json"}),
        json!({"rel": "root", "href": self_href, "type": "application/json"}),
    ];
    for d in ds {
        links.push(json!({"rel": "item", "href": item_href(&d.id), "type": "application/geo+json", "title": d.title.as_deref().unwrap_or(&d.id)}));
    }
    let variables: std::collections::BTreeSet<&str> = ds
        .iter()
        .flat_map(|d| d.vars.iter().map(|v| v.name.as_str()))
        .collect();
    let mut c = json!({
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": id,
        "title": title,
        "description": format!("{title}: {} dataset(s) served as Zarr by cloudify", ds.len()),
        "license": license,
        "extent": {
            "spatial": {"bbox": [union_bbox(ds)]},
            "temporal": {"interval": [union_time(ds)]},
        },
        "links": links,
        "summaries": {"cube:variables": variables.into_iter().collect::<Vec<_>>()},
    });
    if !keywords.is_empty() {
        c["keywords"] = json!(keywords);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::describe::{CubeDim, CubeVar};

    pub(crate) fn sample() -> Description {
        Description {
            id: "tas".into(),
            title: Some("Air temperature".into()),
            license: Some("CC-BY-4.0".into()),
            keywords: vec!["climate".into()],
            providers: vec![json!({"name": "ACME", "roles": ["producer"]})],
            bbox: Some([-180.0, -89.0, 180.0, 89.0]),
            time: Some(("2000-01-01T00:00:00Z".into(), "2001-12-31T00:00:00Z".into())),
            fallback_datetime: "2020-01-01T00:00:00Z".into(),
            dims: vec![CubeDim {
                name: "lon".into(),
                json: json!({"type": "spatial", "axis": "x", "extent": [1.0, 359.0]}),
            }],
            vars: vec![CubeVar {
                name: "tas".into(),
                json: json!({"type": "data", "dimensions": ["time", "lat", "lon"], "unit": "K"}),
            }],
            ..Default::default()
        }
    }

    /// The item links the EDR queries and each gridded data variable's tiles, TileJSON and map
    /// page; a dataset without 1-D lat/lon dimensions gets none of them.
    #[test]
    fn product_links_of_item() {
        let mut d = sample();
        d.dims.push(CubeDim {
            name: "lat".into(),
            json: json!({"type": "spatial", "axis": "y", "extent": [-89.0, 89.0]}),
        });
        let it = item(&d, "http://h:1", "c");
        let links = it["links"].as_array().unwrap();
        let href = |rel: &str| -> Vec<&str> {
            links
                .iter()
                .filter(|l| l["rel"] == rel)
                .filter_map(|l| l["href"].as_str())
                .collect()
        };
        assert_eq!(
            href("data"),
            [
                "http://h:1/datasets/tas/edr/position",
                "http://h:1/datasets/tas/edr/area"
            ]
        );
        assert_eq!(
            href("tilejson"),
            ["http://h:1/datasets/tas/tiles/WebMercatorQuad/tilejson.json?variables=tas"]
        );
        assert_eq!(
            href("xyz"),
            ["http://h:1/datasets/tas/tiles/WebMercatorQuad/{z}/{y}/{x}.png?variables=tas"]
        );
        assert_eq!(href("preview"), ["http://h:1/datasets/tas/map?variables=tas"]);
        // `sample()` has no y dimension: 'tas' is not on a lat/lon grid there (curvilinear)
        let it = item(&sample(), "http://h:1", "c");
        assert!(
            it["links"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| !["data", "tilejson", "xyz", "preview"].contains(&l["rel"].as_str().unwrap_or("")))
        );
    }

    #[test]
    fn item_shape() {
        let it = item(&sample(), "http://h:1", "cloudify");
        assert_eq!(it["type"], "Feature");
        assert_eq!(it["stac_version"], "1.1.0");
        assert_eq!(it["id"], "tas");
        assert_eq!(it["collection"], "cloudify");
        assert_eq!(it["bbox"], json!([-180.0, -89.0, 180.0, 89.0]));
        assert_eq!(it["geometry"]["type"], "Polygon");
        assert!(it["properties"]["datetime"].is_null());
        assert_eq!(it["properties"]["start_datetime"], "2000-01-01T00:00:00Z");
        assert_eq!(it["properties"]["license"], "CC-BY-4.0");
        assert_eq!(it["properties"]["cube:variables"]["tas"]["unit"], "K");
        assert_eq!(it["properties"]["cube:dimensions"]["lon"]["axis"], "x");
        let a = &it["assets"]["zarr-v3"];
        assert_eq!(a["href"], "http://h:1/datasets/tas/zarr");
        assert_eq!(a["type"], ZARR_MEDIA_TYPE);
        assert_eq!(a["xarray:open_kwargs"]["zarr_format"], 3);
        assert_eq!(it["assets"]["zarr-v2"]["xarray:open_kwargs"]["zarr_format"], 2);
        assert_eq!(it["links"][0]["href"], "http://h:1/datasets/tas/stac");
        assert!(
            it["assets"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("processed"))
        );
        let mut d = sample();
        d.views = vec![("tas.monthly".into(), "monthly".into())];
        let it = item(&d, "http://h:1", "c");
        let a = &it["assets"]["processed-monthly"];
        assert_eq!(a["href"], "http://h:1/datasets/tas.monthly/zarr");
        assert!(a["roles"].as_array().unwrap().contains(&json!("processed")));
        assert!(
            it["stac_extensions"]
                .as_array()
                .unwrap()
                .contains(&json!(DATACUBE_EXT))
        );
    }

    #[test]
    fn item_without_time_or_coords() {
        let mut d = sample();
        d.time = None;
        d.bbox = None;
        let it = item(&d, "http://h", "c");
        assert_eq!(it["properties"]["datetime"], "2020-01-01T00:00:00Z");
        assert!(it["geometry"].is_null());
        assert!(it.get("bbox").is_none());
    }

    #[test]
    fn antimeridian_geometry() {
        let g = bbox_geometry([160.0, -10.0, -160.0, 10.0]);
        assert_eq!(g["type"], "MultiPolygon");
        assert_eq!(g["coordinates"][0][0][1], json!([180.0, -10.0]));
        assert_eq!(g["coordinates"][1][0][0], json!([-180.0, -10.0]));
    }

    #[test]
    fn collection_shape() {
        let a = sample();
        let mut b = sample();
        b.id = "pr".into();
        b.bbox = Some([160.0, -10.0, -160.0, 10.0]);
        b.time = Some(("1990-01-01T00:00:00Z".into(), "1995-01-01T00:00:00Z".into()));
        let c = collection("cloudify", "All", &[&a, &b], "http://h/c.json", |id| {
            format!("http://h/{id}")
        });
        assert_eq!(c["type"], "Collection");
        assert_eq!(c["license"], "CC-BY-4.0");
        assert_eq!(
            c["extent"]["temporal"]["interval"][0],
            json!(["1990-01-01T00:00:00Z", "2001-12-31T00:00:00Z"])
        );
        assert_eq!(
            c["extent"]["spatial"]["bbox"][0],
            json!([-180.0, -89.0, 180.0, 89.0])
        );
        let items: Vec<&Value> = c["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["rel"] == "item")
            .collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["href"], "http://h/pr");
    }
}

//! `/openapi.json` and `/docs`.
//!
//! The route table is small and stable, so the document is written out here rather than
//! derived through a macro framework; tests check every listed route exists, every path
//! parameter is declared, and schemathesis checks the server answers as documented
//! (`e2e/pytests/test_openapi_contract.py`).

use axum::Json;
use axum::response::Html;
use serde_json::{Value, json};

/// A decimal number as the routes parse it (Rust's `f64` syntax without `inf`/`nan`, which
/// they refuse): the pattern of every numeric pair and list in query strings, so that a
/// client (and schemathesis) can tell a malformed value from one that does not fit.
macro_rules! number {
    () => {
        r"[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?"
    };
}
/// `lo,hi`: colorscalerange, a histogram's range.
const NUMBER_PAIR: &str = concat!("^", number!(), ",", number!(), "$");
/// A histogram's bins: a count, or edges `e0,e1,...`.
const BINS: &str = concat!("^[0-9]+$|^", number!(), "(,", number!(), ")+$");
/// DAP4 media types (DMR, data, error document).
const DAP4_DMR: &str = "application/vnd.opendap.dap4.dataset-metadata+xml";
const DAP4_DATA: &str = "application/vnd.opendap.dap4.data";
const DAP4_ERROR: &str = "application/vnd.opendap.dap4.error+xml";

/// What a route answers besides 200 and the errors every route may give (414, 431).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No parameters.
    Plain,
    /// `/readyz`: 200 or 503 with the same body.
    Ready,
    /// A dataset route (`{id}`): 400 invalid id, 404 unknown dataset, 503 dataset failed or
    /// still opening.
    Dataset,
    /// A key or file of a dataset read in parts: HEAD, `Range`/`If-Range`/`If-None-Match`,
    /// 206, 304, 416, and the errors of reading sources.
    Ranged,
    /// OPeNDAP: errors are DAP2 `Error { ... }` documents (text/plain), which DAP clients
    /// parse, not the JSON error of the other routes.
    Dap,
    /// `/auth/check`: 204 allowed, 401/403/503 as the data route would answer, 400 without
    /// `X-Original-URI`.
    AuthCheck,
}

/// (path, summary, tag, content types of the 200 answer, kind). Every route of the router
/// (the `{*key}` wildcards spelled `{key}`), checked by a test.
pub const ROUTES: &[(&str, &str, &str, &[&str], Kind)] = &[
    (
        "/",
        "Service information",
        "meta",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/datasets",
        "Ids of the datasets being served, those still opening included (private datasets only for callers whose credentials may read them)",
        "meta",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/status",
        "Every configured dataset with its state: ready, failed (`error`: why) or opening (`since_seconds`, `waiting_for`, `retry_after_seconds`: a dataset that opens in the background while the server already serves); a ready dataset on a health-checked tape archive has `tape` (`state` ok or failing, `error`, `since_seconds`, `checked_seconds_ago`)",
        "meta",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/datasets/{id}",
        "Summary of a dataset (text, or HTML when asked for)",
        "dataset",
        &["text/plain", "text/html"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/",
        "Summary of a dataset (text, or HTML when asked for)",
        "dataset",
        &["text/plain", "text/html"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/keys",
        "Variable names of a dataset",
        "dataset",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/dict",
        "xarray Dataset.to_dict(data=False)",
        "dataset",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/info",
        "Dimensions, variables and attributes (ncdump-like)",
        "dataset",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/zarr",
        "Zarr root: lists the arrays",
        "zarr",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/zarr/",
        "Zarr root: lists the arrays",
        "zarr",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/zarr/{key}",
        "Zarr v2 (.zmetadata, .zgroup, .zattrs, {var}/.zarray, {var}/0.0.0) and v3 (zarr.json, {var}/zarr.json, {var}/c/0/0/0) keys: metadata documents (JSON) and chunks (bytes)",
        "zarr",
        &["application/json", "application/octet-stream"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/kerchunk/{key}",
        "Zarr v2 whose chunks are the stored bytes, unchanged (source codecs and byte order)",
        "zarr",
        &["application/json", "application/octet-stream"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/kerchunk.json",
        "The dataset's chunk references (kerchunk/fsspec JSON v1)",
        "zarr",
        &["application/json"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/kerchunk.parq/{path}",
        "The same references as a kerchunk Parquet directory (.zmetadata, {var}/refs.{n}.parq), from the index cache; 503 while they are written or when the cache cannot hold them (the message says why)",
        "zarr",
        &["application/octet-stream"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/groupby/{var}/{coord}/{action}",
        "Ad-hoc reduction (xarray `ds[var].groupby(coord).<action>()`): a JSON summary of the product, its Zarr URL and `estimated_source_bytes` (about how many bytes of source data computing all of it reads); a small HTML page with links when Accept names text/html. `coord` is a 1-D coordinate or `<time>.month|season|year|dayofyear|hour`; `action` one of mean, sum, min, max, count, std, var, median, first, last (else 400); an unknown variable or coordinate is 404. Query parameters select value ranges first, as ds.sel(dim=slice(from, to)).groupby(coord).<action>(): '{dim}=from/to' (inclusive, coordinate units; ISO dates in the dataset's calendar for time; a descending coordinate from the larger value to the smaller); the product then reads only the selected region and its `zarr` URL carries the selection as a path segment. A selection that names no dimension of the variable, cannot be parsed or selects nothing is 400 naming the parameter",
        "processing",
        &["application/json", "text/html"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/groupby/{var}/{coord}/{action}/zarr/{key}",
        "The ad-hoc reduction as Zarr v2 and v3 (keys as under /datasets/{id}/zarr/), computed from the sources per chunk",
        "processing",
        &["application/json", "application/octet-stream"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/groupby/{var}/{coord}/{action}/{selection}/zarr/{key}",
        "The ad-hoc reduction of a value-range selection as Zarr v2 and v3 (keys as under /datasets/{id}/zarr/): `selection` is the summary's query as one path segment, 'dim=from,to' joined by '&', as the summary's `zarr` URL gives it (Zarr clients append keys to a path and drop a query string). 400 names a selection that is malformed, names no dimension of the variable, cannot be parsed or selects nothing",
        "processing",
        &["application/json", "application/octet-stream"],
        Kind::Ranged,
    ),
    (
        "/datasets/{id}/histogram/{var}",
        "Histogram of a variable, as xhistogram.xarray.histogram(ds[var], bins=..., range=..., dim=..., density=...) computes it (JSON: bin_edges, counts or density nested by the kept dimensions, their coordinates, and the URL of the same product as Zarr). Bins are [l, r) except the last, [l, r]; NaN, masked (_FillValue/missing_value) and out-of-range values are dropped. Other query parameters select a value range of a dimension first, as ds[var].sel(dim=slice(from, to)): '{dim}=from/to' (inclusive, coordinate units; ISO dates in the dataset's calendar for time). 400 names a bad parameter (bins, range, dim, density, a selection that is unknown, unparseable or empty, more than 10000 bins, more than 1000000 values in a JSON answer); 404 an unknown variable",
        "processing",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/histogram/{var}/{params}/zarr/{key}",
        "The histogram as Zarr v2 and v3 (keys as under /datasets/{id}/zarr/): `histogram_{var}` (int64 counts, or float64 density) over the kept dimensions and `{var}_bin` (bin centres); `params` is the histogram route's query string as one path segment (value ranges written from,to), as its JSON answer's `zarr` URL gives it",
        "processing",
        &["application/json", "application/octet-stream"],
        Kind::Ranged,
    ),
    // products people look at (issue 16): plots
    (
        "/datasets/{id}/plot/{var}/{kind}/{cmap}",
        "PNG plot of a whole variable (see the route with a selection): it must already have the kind's number of dimensions longer than 1",
        "products",
        &["image/png"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/plot/{var}/{kind}/{cmap}/{selection}",
        "PNG plot of a selection of a variable, rendered with matplotlib's colour tables (Normalize(vmin, vmax), 256 entries; NaN and masked cells transparent): 'map' (2-D field, north up, colour bar, title, units), 'line' (1-D series) or 'animation' (APNG, one map per step of the first selected dimension, at most 500 frames). `selection` is coord/lo_hi pairs: a time dimension by index with Python slice semantics ('0_12', '-12_-1'; '-12_0' = the last twelve), other coordinates by value, inclusive ('lat/-30_30'); longitude ranges across the axis' seam are wrapped ('lon/-30_30' on 0..360). Colour range: colorscalerange, else valid_min/valid_max, else the 2nd/98th percentiles. A curvilinear field (2-D latitude/longitude in its coordinates attribute) is drawn on a lon/lat canvas: each pixel centre shows the cell nearest on the sphere, transparent beyond the largest distance from that cell to its row/column neighbours. Headers: X-Colorscale-Range (vmin,vmax), X-Map-Layout (x,y,pixels per cell of the field's top-left cell), X-Frames, and for a curvilinear field X-Map-Lonlat (west,north,step,width,height: pixel (i, j) of the map area is centred on west+(i+0.5)*step, north-(j+0.5)*step). 400 names the bad part (unknown kind or colormap with the allowed names, a coordinate that is not a dimension, an empty or malformed range, the wrong number of dimensions); 404 an unknown variable; 413 more than 4000000 cells or more source bytes than --max-source-bytes",
        "products",
        &["image/png"],
        Kind::Dataset,
    ),
    // map tiles (issue 16 part 2): Web-Mercator tiles, TileJSON, a map page
    (
        "/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}.png",
        "A Web-Mercator (EPSG:3857, OGC WebMercatorQuad / XYZ numbering, row 0 north) PNG tile of one variable on a rectilinear lat/lon grid, or a curvilinear one (2-D latitude/longitude: the plot route's nearest-cell-on-the-sphere rule) (xpublish-tiles' parameters): each pixel centre is projected to lon/lat and shows the nearest grid cell (a global longitude axis wraps round its seam; 0..360 and -180..180 axes, either latitude order), coloured with matplotlib's colour tables as the plot route does; pixels outside the data's extent (half a cell beyond its ends), NaN and masked cells are transparent. Only the grid cells the tile touches are read, one step of every other dimension. Dimensions other than lat/lon are selected by query parameters named after them, '[method::]value' with method nearest (default), exact, pad/ffill or backfill/bfill: a CF time axis takes an ISO date YYYY-MM[-DD[Thh[:mm[:ss]]]] or an index (negatives count from the end), other coordinates a value, dimensions without a coordinate an index; unselected dimensions show their first step. Colour range: colorscalerange, else valid_min/valid_max, else the 2nd/98th percentiles of the whole field at that step (the TileJSON template carries an explicit range). Header X-Colorscale-Range. 404: zoom outside 0..=24, x/y outside 0..2^z, an unknown variable; 400: a malformed or unknown parameter, colormap, selection method or value (the message names the allowed ones); 413: width/height above 2048 or more source bytes than --max-source-bytes",
        "tiles",
        &["image/png"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/tiles/WebMercatorQuad/tilejson.json",
        "TileJSON 3.0.0 of the tiles for the same query: `tiles` (URL template with the query and an explicit colorscalerange), `bounds` (the data's extent, latitudes clipped to Web Mercator's ±85.0511), `minzoom` 0, `maxzoom` 24, `center`, and `colorscalerange`",
        "tiles",
        &["application/json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/map",
        "An HTML map page of one variable's tiles (variables=..., default the first variable on a lat/lon grid; the tile query parameters apply) with a slider over its first other dimension (time). The JS map library (Leaflet) is loaded from --map-js-url; cloudify serves no third-party code",
        "tiles",
        &["text/html"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/{file}",
        "OPeNDAP DAP2 over the dataset (views included): `opendap` (HTML form), `opendap.dds`, `opendap.das`, `opendap.dods` (XDR data, streamed with Content-Length), `opendap.ascii` and `opendap.html`; and OPeNDAP DAP4: `opendap.dmr` (or `opendap.dmr.xml`, the DMR) and `opendap.dap` (chunked little-endian data with the DMR, streamed), whose query has `dap4.ce` (`;`-separated variables with `[start:stride:stop]` slices, e.g. `/tas[0:1:9][0][0];/lat`) and `dap4.checksum=true` (a CRC32 after each variable); DAP4 errors are `<Error httpcode>` XML documents with the same statuses. The DAP2 query string is a DAP2 constraint expression: variables, `Grid.member`, hyperslabs `[i]`, `[start:stop]`, `[start:stride:stop]` (inclusive stop), comma-separated, e.g. `tas[0:1:9][0][0],lat`. Errors are DAP2 `Error { code; message; }` documents with Content-Description: dods-error and the HTTP status: 400 a malformed constraint or index out of range, 404 an unknown dataset, variable or response, 413 a request above the size cap (16 GiB for .dods, 512 MiB for .ascii), 422 an int64 value outside DAP2's Int32 range, 500 a source that cannot be read, 503 a dataset that failed to open",
        "opendap",
        &[
            "text/plain",
            "application/octet-stream",
            "text/html",
            DAP4_DMR,
            DAP4_DATA,
        ],
        Kind::Dap,
    ),
    (
        "/datasets/{id}/edr/position",
        "OGC API EDR position query (xpublish-edr's parameters): the time series of the grid cell nearest to a WKT POINT(lon lat), as xarray's ds[params].sel(lon=lon, lat=lat, method=\"nearest\") selects it (ties to the larger coordinate; a longitude is wrapped into the dataset's 0..360 or -180..180 convention; farther than half a cell outside the grid is 400; 1-D longitude/latitude coordinates only, curvilinear grids are 400). datetime: an instant (the nearest step) or an interval a/b with '..' for an open end, partial ISO dates in the time axis' CF calendar as .sel(time=slice(a, b)); z: one value (nearest) or a/b; other dimensions by name the same way. f: cf_covjson (CoverageJSON, default), csv, nc (netCDF-3 64-bit offset). Values decoded as xarray decodes them (masked values null/NaN/empty). X-Cloudify-Source-Bytes: the source bytes read (the chunks holding the point)",
        "edr",
        &[
            "application/prs.coverage+json",
            "text/csv",
            "application/x-netcdf",
        ],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/edr/area",
        "OGC API EDR area query: the grid cells whose centres fall inside a WKT POLYGON((lon lat, ...)) (even-odd rule over its rings; a centre on the boundary may go either way), with the position query's datetime, z, parameter-name and f. CoverageJSON (a Grid) and netCDF hold the bounding grid of those cells with the others null/NaN, CSV one row per inside cell",
        "edr",
        &[
            "application/prs.coverage+json",
            "text/csv",
            "application/x-netcdf",
        ],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/stac",
        "STAC 1.1 Item of the dataset (datacube and xarray-assets extensions)",
        "catalog",
        &["application/geo+json"],
        Kind::Dataset,
    ),
    (
        "/datasets/{id}/catalog.yaml",
        "intake catalog of the dataset (intake-xarray zarr driver)",
        "catalog",
        &["application/yaml"],
        Kind::Dataset,
    ),
    (
        "/stac-collection-all.json",
        "STAC Collection of every served dataset (private ones only for callers who may read them)",
        "catalog",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/intake.yaml",
        "intake catalog of every served dataset (private ones only for callers who may read them)",
        "catalog",
        &["application/yaml"],
        Kind::Plain,
    ),
    (
        "/versions",
        "Versions of the server and its libraries",
        "meta",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/openapi.json",
        "This document",
        "meta",
        &["application/json"],
        Kind::Plain,
    ),
    (
        "/docs",
        "API documentation page",
        "meta",
        &["text/html"],
        Kind::Plain,
    ),
    ("/healthz", "Liveness", "ops", &["text/plain"], Kind::Plain),
    (
        "/readyz",
        "Readiness: 200 when at least one dataset serves; 503 with the reason while none does (none configured, every one failed to open or is still opening) and while the server shuts down (SIGTERM: connections drain)",
        "ops",
        &["application/json"],
        Kind::Ready,
    ),
    (
        "/metrics",
        "Prometheus metrics",
        "ops",
        &["text/plain"],
        Kind::Plain,
    ),
    (
        "/datasets/{id}/locality",
        "Tape-archived dataset: each file online (staged) or on tape (queued, recalling, failed, nearline) with its recall job, the recall queue and the staging cache; `?variables=a,b` for the files of some variables; a dataset not on tape answers `onTape: false` and no files. POST /datasets/{id}/stage starts recalls (202)",
        "dataset",
        &["application/json"],
        Kind::Dataset,
    ),
    // access control
    (
        "/auth/check",
        "For nginx auth_request / ingress-nginx auth-url: may the request in X-Original-URI (with this request's Authorization header, or the URI's signed-URL parameters) read? 204 if so (also for public datasets and non-dataset paths); else the 401/403/503 the data route would answer",
        "access",
        &[],
        Kind::AuthCheck,
    ),
];

/// `POST /datasets/{id}/stage` (the one route that is not a GET): recalls a tape-archived
/// dataset's files ahead of reading.
fn stage_operation() -> Value {
    let mut op = operation(
        "/datasets/{id}/stage",
        "Tape-archived dataset: start recalling its files (or those of `?variables=a,b`) without waiting (a dataset not on tape: nothing to do); 202 with the status URL (Location: /datasets/{id}/locality)",
        "dataset",
        &["application/json"],
        Kind::Dataset,
    );
    op["operationId"] = json!("post_datasets_id_stage");
    if let Some(r) = op["responses"].as_object_mut() {
        let ok = r.remove("200");
        if let Some(mut ok) = ok {
            ok["description"] = json!("Recall started; `status` (and Location) is the locality URL");
            ok["headers"] =
                json!({"Location": {"description": "The dataset's /locality", "schema": {"type": "string"}}});
            r.insert("202".into(), ok);
        }
        r.insert(
            "400".into(),
            error_response("Invalid dataset id, or an unknown variable in `variables`"),
        );
    }
    if let Some(p) = op["parameters"].as_array_mut() {
        p.push(variables_param());
    }
    op
}

/// `?variables=a,b` of the tape routes.
fn variables_param() -> Value {
    json!({"name": "variables", "in": "query", "required": false, "schema": {"type": "string"},
           "description": "Comma-separated variable paths: only the files they read"})
}

fn error_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn header_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/headers/{name}")})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
}

fn header_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "schema": {"type": "string"}, "description": description})
}

/// The operation (GET, and HEAD for ranged routes) of one route.
fn operation(path: &str, summary: &str, tag: &str, ctypes: &[&str], kind: Kind) -> Value {
    let mut params = Vec::new();
    if path.contains("{id}") {
        // the rule of configured names (cloudify_crds::validate_name); others are 400
        params.push(json!({"name": "id", "in": "path", "required": true,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"},
            "description": "Dataset id: up to 128 letters, digits, '-', '_' and '.', not starting with '.'; anything else is 400"}));
    }
    for (name, what) in [
        ("var", "Variable to reduce"),
        (
            "coord",
            "Coordinate to group by: a 1-D coordinate, or '<time>.month|season|year|dayofyear|hour'",
        ),
        (
            "action",
            "Reduction: mean, sum, min, max, count, std, var, median, first or last",
        ),
    ] {
        if path.contains(&format!("{{{name}}}")) {
            let mut p = path_param(name, what);
            if name == "var" && path.contains("/histogram/") {
                p["description"] = json!("Variable to histogram");
                p["example"] = json!("tas");
            }
            if name == "action" {
                // any other action is 400: the schema says which are valid (schemathesis
                // checks that a schema-valid request is not rejected)
                p["schema"] = json!({"type": "string", "enum": ["mean", "sum", "min", "max", "count", "std", "var", "median", "first", "last"]});
            }
            params.push(p);
        }
    }
    if path.contains("{params}") {
        let mut p = path_param(
            "params",
            "The histogram's parameters as one path segment: the query string of /datasets/{id}/histogram/{var}, e.g. 'bins=10&range=200,300&dim=time'; percent-decoded once, as a path: '+' is a plus here ('bins=0,1e+2,1e+3'), unlike in a query string",
        );
        p["example"] = json!("bins=10&range=250,300&dim=time");
        params.push(p);
    }
    if path.contains("/groupby/") && path.contains("{selection}") {
        let mut p = path_param(
            "selection",
            "Value ranges as one path segment: 'dim=from,to' joined by '&' (inclusive, as ds.sel(dim=slice(from, to))), e.g. 'lat=-30,30&time=2000-01-01,2000-12-31'",
        );
        p["example"] = json!("time=2000-01-01,2000-06-30");
        p["schema"] =
            json!({"type": "string", "pattern": "^[^=&/]+=[^=&,/]+,[^=&,/]+(&[^=&/]+=[^=&,/]+,[^=&,/]+)*$"});
        params.push(p);
    }
    if path.ends_with("/groupby/{var}/{coord}/{action}") || path.ends_with("/histogram/{var}") {
        // any other query parameter is a value range of a dimension: an exploded form object
        params.push(json!({"name": "selection", "in": "query", "required": false,
            "style": "form", "explode": true,
            "schema": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[^/,]+[/,][^/,]+$"}},
            "example": {"time": "2000-01-01/2000-06-30"},
            "description": "Value ranges selected before computing, one parameter per dimension: '{dim}=from/to' (or from,to), inclusive, as ds.sel(dim=slice(from, to)); coordinate units, ISO dates YYYY[-MM[-DD[Thh[:mm[:ss]]]]] in the dataset's calendar for time; a descending coordinate is selected from the larger value to the smaller, as xarray does"}));
    }
    if path.ends_with("/histogram/{var}") {
        params.push(json!({"name": "bins", "in": "query", "required": true,
            "schema": {"type": "string", "pattern": BINS},
            "example": "10",
            "description": "A bin count (1..10000, with range) or strictly increasing edges 'e0,e1,...' (float64)"}));
        params.push(json!({"name": "range", "in": "query", "required": false,
            "schema": {"type": "string", "pattern": NUMBER_PAIR},
            "example": "250,300",
            "description": "'lo,hi' of a bin count (required with it, refused with edges): numpy.histogram_bin_edges' equal bins (float32 for float32 data)"}));
        params.push(json!({"name": "dim", "in": "query", "required": false,
            "schema": {"type": "string"}, "example": "time",
            "description": "Comma-separated dimensions to reduce (default: all); the others are kept"}));
        params.push(json!({"name": "density", "in": "query", "required": false,
            "schema": {"type": "boolean"}, "example": false,
            "description": "Answer counts / (total × bin width) per kept cell instead of counts"}));
    }
    if path.contains("/plot/") {
        // the plot route's own parameters (issue 16)
        if let Some(p) = params.iter_mut().find(|p| p["name"] == "var") {
            p["description"] = json!("Variable to plot");
        }
        let mut kind = path_param("kind", "map, line or animation");
        kind["schema"] = json!({"type": "string", "enum": crate::processing::plot::KINDS});
        params.push(kind);
        let mut cmap = path_param("cmap", "matplotlib colormap name ('_r' reversed)");
        cmap["schema"] = json!({"type": "string", "enum": crate::render::names()});
        params.push(cmap);
        if path.contains("{selection}") {
            let mut p = path_param(
                "selection",
                "coord/lo_hi pairs, may contain '/': 'time/0_1/lat/-30_30/lon/-30_30'",
            );
            p["example"] = json!("time/0_1");
            p["schema"] = json!({"type": "string",
                "pattern": "^[A-Za-z0-9_.-]+/-?[0-9.]+_-?[0-9.]+(/[A-Za-z0-9_.-]+/-?[0-9.]+_-?[0-9.]+)*$"});
            params.push(p);
        }
        params.push(
            json!({"name": "colorscalerange", "in": "query", "required": false,
            "schema": {"type": "string", "pattern": NUMBER_PAIR},
            "example": "250,300",
            "description": "'vmin,vmax' of the colour bar (vmin <= vmax)"}),
        );
    }
    if path.contains("/tiles/") || path.ends_with("/map") {
        // the tile routes' own parameters (issue 16 part 2)
        for (name, what) in [
            ("z", "Zoom level 0..=24"),
            ("y", "Tile row 0..2^z (0 at the north)"),
            ("x", "Tile column 0..2^z (0 at 180°W)"),
        ] {
            if path.contains(&format!("{{{name}}}")) {
                let mut p = path_param(name, what);
                p["schema"] = json!({"type": "integer", "minimum": 0});
                p["example"] = json!(0);
                params.push(p);
            }
        }
        params.push(
            json!({"name": "variables", "in": "query", "required": !path.ends_with("/map"),
            "schema": {"type": "string"}, "example": "tas",
            "description": "The variable to draw (one)"}),
        );
        params.push(json!({"name": "style", "in": "query", "required": false,
            "schema": {"type": "string", "enum": crate::render::names().iter().map(|n| format!("raster/{n}")).collect::<Vec<_>>()},
            "example": "raster/viridis",
            "description": "raster/{matplotlib colormap name} ('_r' reversed); default raster/viridis"}));
        params.push(
            json!({"name": "colorscalerange", "in": "query", "required": false,
            "schema": {"type": "string", "pattern": NUMBER_PAIR},
            "example": "250,300",
            "description": "'vmin,vmax' of the colour scale (vmin <= vmax)"}),
        );
        for side in ["width", "height"] {
            params.push(json!({"name": side, "in": "query", "required": false,
                "schema": {"type": "integer", "minimum": 1},
                "description": format!("Tile {side} in pixels (default 256); more than {} is 413", crate::processing::tiles::MAX_SIDE)}));
        }
        params.push(json!({"name": "time", "in": "query", "required": false,
            "schema": {"type": "string"}, "example": "0",
            "description": "A dimension selector (any dimension other than lat/lon, by its name): '[method::]value', method nearest (default), exact, pad, ffill, backfill or bfill; an ISO date or an index on a CF time axis"}));
    }
    if path.contains("/edr/") {
        let (geom, example) = if path.ends_with("/position") {
            (
                "A WKT point 'POINT(lon lat)' (longitude, latitude in degrees; CRS84)",
                "POINT(11 47)",
            )
        } else {
            (
                "A WKT polygon 'POLYGON((lon lat, lon lat, ...))', rings closed (last point = first), holes as further rings",
                "POLYGON((0 40, 20 40, 20 60, 0 60, 0 40))",
            )
        };
        params.push(json!({"name": "coords", "in": "query", "required": true,
            "schema": {"type": "string"}, "example": example, "description": geom}));
        params.push(json!({"name": "parameter-name", "in": "query", "required": false,
            "schema": {"type": "string"}, "example": "tas",
            "description": "Comma-separated variables (default: every variable on the longitude/latitude grid); an unknown one is 400 naming the allowed ones"}));
        params.push(json!({"name": "datetime", "in": "query", "required": false,
            "schema": {"type": "string"}, "example": "2000-01/2000-06",
            "description": "An instant (the nearest time step) or an interval 'a/b' ('..' for an open end): ISO dates YYYY[-MM[-DD[Thh[:mm[:ss]]]]][Z] in the time axis' CF calendar, partial dates covering their whole period"}));
        params.push(json!({"name": "z", "in": "query", "required": false,
            "schema": {"type": "string"},
            "description": "The vertical level nearest to a value, or a value range 'a/b'"}));
        params.push(json!({"name": "f", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["cf_covjson", "csv", "nc"]},
            "description": "Output format: cf_covjson (CoverageJSON, default), csv, nc (netCDF-3)"}));
        params.push(json!({"name": "crs", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["EPSG:4326", "CRS84", "OGC:CRS84"]},
            "description": "Coordinate reference system of coords: longitude/latitude only"}));
        params.push(json!({"name": "method", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["nearest"]},
            "description": "Selection method: nearest (the only one)"}));
    }
    if path.contains("{key}") {
        params.push(path_param("key", "Zarr key, may contain '/'"));
    }
    if path.contains("{file}") {
        let mut p = path_param(
            "file",
            "The DAP2 response: 'opendap' or 'opendap.<dds|das|dods|ascii|asc|html>'; DAP4: 'opendap.<dmr|dmr.xml|dap>'",
        );
        p["schema"] = json!({"type": "string", "enum": ["opendap", "opendap.dds", "opendap.das", "opendap.dods", "opendap.ascii", "opendap.asc", "opendap.html", "opendap.dmr", "opendap.dmr.xml", "opendap.dap"]});
        p["example"] = json!("opendap.dds");
        params.push(p);
        params.push(json!({"name": "dap4.ce", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "DAP4 only (.dmr, .dap): variables with optional [start:stride:stop] slices, ';'-separated, e.g. /tas[0:1:9][0][0];/lat"}));
        params.push(json!({"name": "dap4.checksum", "in": "query", "required": false, "schema": {"type": "string", "enum": ["true", "false"]},
            "description": "DAP4 .dap only: true sends each variable's CRC32 after its data"}));
    }
    if path.contains("{path}") {
        params.push(path_param(
            "path",
            "File of the Parquet reference directory: '.zmetadata' or '{var}/refs.{n}.parq'; may contain '/'",
        ));
    }
    let content: serde_json::Map<String, Value> =
        ctypes.iter().map(|c| ((*c).to_string(), json!({}))).collect();
    let mut ok = json!({"description": "OK", "content": content});
    let mut responses = serde_json::Map::new();
    if kind == Kind::Ranged {
        ok["headers"] = json!({"ETag": header_ref("ETag"), "Accept-Ranges": header_ref("Accept-Ranges"), "Cache-Control": header_ref("Cache-Control")});
        params.push(header_param(
            "Range",
            "One byte range ('bytes=0-99', 'bytes=100-', 'bytes=-10'): 206 with that part. Malformed values and several ranges are ignored (200 with the whole answer)",
        ));
        params.push(header_param(
            "If-Range",
            "The ETag the client holds: the range applies only while it is current",
        ));
        params.push(header_param(
            "If-None-Match",
            "ETags the client holds (weak comparison): 304 when one is current",
        ));
        let content: serde_json::Map<String, Value> =
            ctypes.iter().map(|c| ((*c).to_string(), json!({}))).collect();
        responses.insert(
            "206".into(),
            json!({"description": "The requested byte range", "content": content,
                   "headers": {"Content-Range": header_ref("Content-Range"), "ETag": header_ref("ETag"), "Accept-Ranges": header_ref("Accept-Ranges")}}),
        );
        responses.insert(
            "304".into(),
            json!({"description": "Not modified (If-None-Match)", "headers": {"ETag": header_ref("ETag")}}),
        );
    }
    if kind == Kind::AuthCheck {
        params.push(json!({"name": "X-Original-URI", "in": "header", "required": true,
            "schema": {"type": "string", "minLength": 1, "example": "/datasets/tas/zarr/.zmetadata"},
            "description": "The original request target (nginx: proxy_set_header X-Original-URI $request_uri)"}));
        responses.insert("204".into(), json!({"description": "The request may read"}));
        responses.insert(
            "400".into(),
            error_response("X-Original-URI is missing or not a request target"),
        );
    } else {
        responses.insert("200".into(), ok);
    }
    if matches!(kind, Kind::Dataset | Kind::Ranged | Kind::AuthCheck | Kind::Dap) {
        responses.insert(
            "401".into(),
            json!({"description": "The dataset is private and the request carries no credentials, or invalid ones (malformed, expired, wrong issuer or audience, unknown key, alg none, bad signature, tampered or expired signed URL); the message and the challenge's error_description say which, never repeating the token",
                   "headers": {"WWW-Authenticate": header_ref("WWW-Authenticate")},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        responses.insert(
            "403".into(),
            json!({"description": "Valid credentials that do not grant this dataset (a token of another dataset, a JWT without a granting group or scope)",
                   "headers": {"WWW-Authenticate": header_ref("WWW-Authenticate")},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        responses.insert(
            "503".into(),
            error_response("The dataset failed to open, or is still opening (Retry-After; the body's `dataset` and `state` say which), or (private datasets) the identity provider's keys cannot be fetched to check a JWT; the message says which"),
        );
    }
    match kind {
        Kind::Plain | Kind::AuthCheck => {}
        Kind::Dap => {
            for (code, what) in [
                ("400", "Malformed constraint, index out of range or stride 0"),
                ("404", "Unknown dataset, variable or DAP2 response"),
                (
                    "413",
                    "The request selects more than the size cap; select a hyperslab",
                ),
                (
                    "422",
                    "An int64/uint64 value outside DAP2's 32-bit range (read it through Zarr)",
                ),
                ("500", "A source could not be read"),
                (
                    "503",
                    "The dataset failed to open, or is still opening (with Retry-After); the message says which",
                ),
            ] {
                responses.insert(
                    code.into(),
                    json!({"description": format!("DAP2 error document (DAP4: XML error document): {what}"),
                           "content": {"text/plain": {"schema": {"type": "string"}}}}),
                );
                responses[code]["content"][DAP4_ERROR] = json!({"schema": {"type": "string"}});
            }
            // a `{file}` that is no DAP2 response at all is the JSON 404 of any unknown route
            responses["404"]["description"] = json!(
                "DAP2 error document (text/plain): unknown dataset, variable or DAP2 response; a file that is not 'opendap[.ext]' is the JSON 404 of an unknown route"
            );
            responses["404"]["content"]["application/json"] =
                json!({"schema": {"$ref": "#/components/schemas/Error"}});
            // the access layer's 503 (a private dataset's identity provider unreachable) is
            // JSON, as its 401/403 are
            responses["503"]["content"]["application/json"] =
                json!({"schema": {"$ref": "#/components/schemas/Error"}});
        }
        Kind::Ready => {
            responses.insert(
                "200".into(),
                json!({"description": "At least one dataset serves", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}),
            );
            responses.insert(
                "503".into(),
                json!({"description": "No dataset serves, or the server is shutting down (`reason` says which)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}),
            );
        }
        Kind::Dataset | Kind::Ranged => {
            responses.insert(
                "400".into(),
                error_response(if kind == Kind::Ranged {
                    "Invalid dataset id, malformed key or chunk index out of range"
                } else {
                    "Invalid dataset id"
                }),
            );
            responses.insert(
                "404".into(),
                error_response("Unknown dataset, variable or key (a Zarr client reads a missing chunk as the fill value)"),
            );
            responses.insert(
                "503".into(),
                error_response(if kind == Kind::Ranged {
                    "The dataset failed to open or is still opening (Retry-After; the body's `dataset` and `state` say which), or a tape-archived file is still being recalled (Retry-After: the archive's estimate; the body's `state` and `job` say where the recall is) or the staging cache is full of files being read; the message says which"
                } else {
                    "The dataset failed to open, or is still opening (Retry-After; the body's `dataset` and `state` say which), or (private datasets) the identity provider's keys cannot be fetched to check a JWT; the message says which"
                }),
            );
            responses.insert(
                "500".into(),
                error_response("The dataset could not be read (truncated file, bad checksum)"),
            );
        }
    }
    if path.contains("/plot/") {
        responses.insert(
            "413".into(),
            error_response("The image would hold more than 4000000 cells or 500 frames, or read more source data than --max-source-bytes"),
        );
    }
    if path.contains("/tiles/") || path.ends_with("/map") {
        responses.insert(
            "400".into(),
            error_response("Invalid dataset id, or a malformed or unknown parameter, colormap, selection method or value (the message names the allowed ones)"),
        );
        responses.insert(
            "413".into(),
            error_response(
                "width/height above 2048, or the tile would read more source data than --max-source-bytes",
            ),
        );
    }
    if path.contains("/edr/") {
        responses.insert(
            "400".into(),
            error_response("Invalid dataset id, or a query parameter that is malformed or does not fit the dataset (WKT, unknown parameter, a point outside the grid, an empty or unparseable datetime, a selection of nothing); the message names it and the allowed values"),
        );
        responses.insert(
            "413".into(),
            error_response("The selection would read more source data than --max-source-bytes allows, or hold more than 5000000 values"),
        );
    }
    if kind == Kind::Ranged {
        responses.insert(
            "413".into(),
            error_response("A computed chunk would read more source data than --max-source-bytes allows; the message names the estimate and the limit"),
        );
        responses.insert(
            "416".into(),
            json!({"description": "The range selects no byte of the answer",
                   "headers": {"Content-Range": header_ref("Content-Range")},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        responses.insert(
            "501".into(),
            error_response("The source uses a codec this server cannot decode (the message names it)"),
        );
        responses.insert(
            "502".into(),
            error_response("The object store holding the source failed or the object changed, or the recall of a tape-archived file failed (the message names the file and the archive's reason; retried after Retry-After)"),
        );
        responses.insert(
            "504".into(),
            error_response("The object store holding the source did not answer in time"),
        );
    }
    responses.insert("414".into(), json!({"$ref": "#/components/responses/UriTooLong"}));
    responses.insert(
        "431".into(),
        json!({"$ref": "#/components/responses/HeadersTooLarge"}),
    );
    // unique per path: `/datasets/{id}` and `/datasets/{id}/` are two routes
    let mut op_id = String::from("get");
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        op_id.push('_');
        op_id.push_str(&seg.replace(['{', '}'], "").replace(['.', '-'], "_"));
    }
    if path.ends_with('/') {
        op_id.push_str(if path.len() == 1 { "_root" } else { "_index" });
    }
    let mut op = json!({"summary": summary, "tags": [tag], "operationId": op_id, "parameters": params, "responses": responses});
    if matches!(kind, Kind::Dataset | Kind::Ranged) {
        // public datasets need nothing; private ones one of these
        op["security"] = json!([{}, {"bearer": []}, {"signedUrl": [], "signedUrlExpiry": []}]);
    }
    op
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (path, summary, tag, ctypes, kind) in ROUTES {
        let op = operation(path, summary, tag, ctypes, *kind);
        let mut item = serde_json::Map::new();
        let head = (*kind == Kind::Ranged).then(|| {
            let mut head = op.clone();
            head["operationId"] = json!(
                op["operationId"]
                    .as_str()
                    .unwrap_or_default()
                    .replacen("get", "head", 1)
            );
            head
        });
        item.insert("get".into(), op);
        if let Some(head) = head {
            item.insert("head".into(), head);
        }
        paths.insert((*path).to_string(), Value::Object(item));
    }
    if let Some(Value::Object(item)) = paths.get_mut("/datasets/{id}/locality")
        && let Some(p) = item.get_mut("get").and_then(|g| g["parameters"].as_array_mut())
    {
        p.push(variables_param());
    }
    paths.insert("/datasets/{id}/stage".into(), json!({"post": stage_operation()}));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "cloudify", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Earth-System-Model output as Zarr v2 and v3 over HTTP (xpublish-compatible). Every error is JSON {\"error\": \"...\"} naming the problem."},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Readiness": {"type": "object", "required": ["ready", "failed", "opening"], "properties": {"ready": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0}, "opening": {"type": "integer", "minimum": 0, "description": "Datasets still opening in the background"}, "reason": {"type": "string", "description": "Why the server is not ready (503 only)"}}},
            },
            "headers": {
                "ETag": {"description": "Derived from the dataset's sources and the key", "schema": {"type": "string"}},
                "Accept-Ranges": {"description": "Always 'bytes'", "schema": {"type": "string", "enum": ["bytes"]}},
                "Content-Range": {"description": "'bytes first-last/length' (206) or 'bytes */length' (416)", "schema": {"type": "string", "pattern": "^bytes ([0-9]+-[0-9]+|\\*)/[0-9]+$"}},
                "Cache-Control": {"description": "How long the answer may be cached ('private' on every answer of a private dataset)", "schema": {"type": "string"}},
                "WWW-Authenticate": {"description": "RFC 6750 challenge: 'Bearer realm=\"cloudify\"', with error=\"invalid_token\" or \"insufficient_scope\" and an error_description when credentials were sent", "schema": {"type": "string"}},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A static token of the dataset (its SHA-256 listed in access.tokenFile) or a JWT of the dataset's OIDC issuer (access.oidc) whose groups/scope claim grants the dataset"},
                "signedUrl": {"type": "apiKey", "in": "query", "name": "signature", "description": "Signed URL: hex HMAC-SHA256(key of access.signedUrlKeyFile, \"{dataset}\\n{expires}\"), with the expiry in `expires`"},
                "signedUrlExpiry": {"type": "apiKey", "in": "query", "name": "expires", "description": "Unix time (seconds) until which the signed URL grants the dataset"},
            },
            "responses": {
                "UriTooLong": {"description": "The request target is longer than the server accepts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "HeadersTooLarge": {"description": "The request headers are larger than the server accepts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        },
    })
}

/// `/openapi.json`: the OpenAPI 3.1 description of the HTTP API, built in (no file to ship).
pub async fn spec() -> Json<Value> {
    Json(document())
}

/// A self-contained page (no CDN: HPC nodes often have no internet access).
pub async fn docs() -> Html<String> {
    let mut rows = String::new();
    for (path, summary, tag, ..) in ROUTES {
        rows.push_str(&format!(
            "<tr><td><code>GET {path}</code></td><td>{tag}</td><td>{}</td></tr>",
            summary.replace('<', "&lt;")
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cloudify API</title><style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 12px;border-bottom:1px solid #ddd}}</style></head><body><h1>cloudify API</h1><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p><table>{rows}</table></body></html>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `{name}` of every path is a declared path parameter, and every operation documents
    /// its errors with the error schema.
    #[test]
    fn parameters_and_errors_are_declared() {
        let doc = document();
        for (path, ..) in ROUTES {
            let item = &doc["paths"][*path];
            for (method, op) in item.as_object().unwrap() {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let wanted: Vec<&str> = path
                    .split('{')
                    .skip(1)
                    .map(|s| s.split('}').next().unwrap())
                    .collect();
                assert_eq!(declared, wanted, "{method} {path}");
                let responses = op["responses"].as_object().unwrap();
                let ok = if *path == "/auth/check" { "204" } else { "200" };
                for code in [ok, "414", "431"] {
                    assert!(responses.contains_key(code), "{method} {path}: no {code}");
                }
                if path.contains("{file}") {
                    for code in ["400", "404", "503"] {
                        assert!(
                            responses[code]["content"]["text/plain"].is_object(),
                            "{method} {path} {code}: DAP errors are text documents"
                        );
                    }
                    for code in ["401", "403"] {
                        assert!(responses.contains_key(code), "{method} {path}: no {code}");
                    }
                } else if path.contains("{id}") {
                    for code in ["400", "401", "403", "404", "503"] {
                        assert_eq!(
                            responses[code]["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }
}

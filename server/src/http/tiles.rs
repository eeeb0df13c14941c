//! Map tiles of a dataset ([`crate::processing::tiles`]), their TileJSON and a map page:
//!
//! - `/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}.png?variables=tas&style=raster/viridis&colorscalerange=lo,hi&time=2000-01-16&width=256&height=256`
//!   (xpublish-tiles' parameters; any other dimension `dim=method::value`);
//! - `/datasets/{id}/tiles/WebMercatorQuad/tilejson.json?<the same query>` (TileJSON 3.0.0);
//! - `/datasets/{id}/map?variables=tas`: an HTML page with a Leaflet map and a time slider;
//!   Leaflet is loaded from `--map-js-url` (no third-party code is served from here).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use serde_json::json;

use super::error::ApiError;
use super::zarr::served;
use crate::processing::plot::{self, PlotError};
use crate::processing::tiles::{self, DimSel, MAX_SIDE, MAX_ZOOM};
use crate::state::AppState;

/// The query parameters a tile request may carry besides dimension selectors.
const PARAMS: &[&str] = &["variables", "style", "colorscalerange", "width", "height"];

fn tile_error(id: &str, e: PlotError) -> ApiError {
    super::plot::product_error(format_args!("dataset '{id}', tiles"), e)
}

/// A parsed tile query.
struct TileQuery {
    var: String,
    cmap: String,
    range: Option<(f64, f64)>,
    dims: Vec<DimSel>,
    width: u32,
    height: u32,
}

/// Parses the query; `var_default` is used when `variables` is absent (the map page).
fn parse_query(id: &str, raw: Option<&str>, var_default: Option<String>) -> Result<TileQuery, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("dataset '{id}', tiles: {m}"));
    let mut var = None;
    let mut cmap = "viridis".to_string();
    let mut range = None;
    let mut dims = Vec::new();
    let (mut width, mut height) = (256u32, 256u32);
    let mut too_large: Option<String> = None;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "variables" => {
                if v.contains(',') {
                    return Err(bad(format!("variables='{v}': a raster tile shows one variable")));
                }
                var = Some(v.to_string());
            }
            "style" => {
                cmap = v
                    .strip_prefix("raster/")
                    .ok_or_else(|| {
                        bad(format!(
                            "style='{v}': the only style is raster/{{colormap}} (e.g. raster/viridis)"
                        ))
                    })?
                    .to_string();
            }
            "colorscalerange" => {
                range = Some(plot::parse_range(&v).map_err(|e| tile_error(id, e))?);
            }
            "width" | "height" => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("{k}='{v}': expected a positive number of pixels")))?;
                if n > MAX_SIDE {
                    // answered once every parameter is known to be well-formed: a malformed
                    // one is the client's mistake to fix first (400), whatever the order
                    too_large.get_or_insert(format!(
                        "dataset '{id}', tiles: {k}={n} is more than {MAX_SIDE} pixels"
                    ));
                }
                if k == "width" {
                    width = n;
                } else {
                    height = n;
                }
            }
            d => dims.push(tiles::parse_dim(d, &v).map_err(|e| tile_error(id, e))?),
        }
    }
    if let Some(m) = too_large {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m));
    }
    let var = var
        .or(var_default)
        .ok_or_else(|| bad("missing 'variables' (the variable to draw, e.g. variables=tas)".into()))?;
    Ok(TileQuery {
        var,
        cmap,
        range,
        dims,
        width,
        height,
    })
}

/// Checks the variable first (404 naming the variables), then that every query key other
/// than [`PARAMS`] is a selectable dimension (400 naming them).
fn check(ds: &crate::dataset::Dataset, id: &str, q: &TileQuery) -> Result<(), ApiError> {
    let v = plot::variable(ds, &q.var).map_err(|e| tile_error(id, e))?;
    if crate::render::colormap(&q.cmap).is_none() {
        return Err(tile_error(
            id,
            PlotError::Bad(format!(
                "unknown colormap '{}' in style=raster/{}; allowed (matplotlib's names, _r reversed): {}",
                q.cmap,
                q.cmap,
                crate::render::names().join(", ")
            )),
        ));
    }
    let (ya, xa) = tiles::spatial(ds, v).map_err(|e| tile_error(id, e))?.dims();
    for d in &q.dims {
        let ok = v
            .dims
            .iter()
            .enumerate()
            .any(|(i, n)| *n == d.dim && i != ya && i != xa);
        if !ok {
            let mut allowed: Vec<String> = PARAMS.iter().map(|s| (*s).to_string()).collect();
            allowed.extend(
                v.dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != ya && *i != xa)
                    .map(|(_, n)| format!("{n} (dimension: [method::]value)")),
            );
            return Err(ApiError::bad_request(format!(
                "dataset '{id}', tiles: unknown query parameter '{}'; allowed: {}",
                d.dim,
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// `/datasets/{id}/tiles/WebMercatorQuad/{z}/{y}/{x}.png`.
pub async fn tile(
    State(state): State<Arc<AppState>>,
    Path((id, z, y, xpng)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = served(&state, &id)?;
    let not_found = |m: String| ApiError::new(StatusCode::NOT_FOUND, format!("dataset '{id}', tiles: {m}"));
    let z: u32 = z
        .parse()
        .ok()
        .filter(|z| *z <= MAX_ZOOM)
        .ok_or_else(|| not_found(format!("zoom '{z}' is outside 0..={MAX_ZOOM}")))?;
    let n = 1u64 << z;
    let idx = |s: &str, what: &str| -> Result<u32, ApiError> {
        s.parse::<u64>()
            .ok()
            .filter(|v| *v < n)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| not_found(format!("{what} '{s}' is outside 0..{n} at zoom {z}")))
    };
    let xs = xpng
        .strip_suffix(".png")
        .ok_or_else(|| not_found(format!("'{xpng}': tiles are {{x}}.png")))?;
    let (x, y) = (idx(xs, "column x")?, idx(&y, "row y")?);
    let q = parse_query(&id, raw.as_deref(), None)?;
    check(&parent.ds, &id, &q)?;
    let req = tiles::Request {
        var: q.var,
        cmap: q.cmap,
        range: q.range,
        dims: q.dims,
        z,
        x,
        y,
        width: q.width,
        height: q.height,
    };
    let limit = state.max_source_bytes;
    let ds = parent.clone();
    let id2 = id.clone();
    let t = state
        .run_for(&parent.ds, move || tiles::build(&ds.ds, &req, limit))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dataset '{id2}': tile failed (bug; see server log)"),
            )
        })?
        .map_err(|e| tile_error(&id, e))?;
    let mut r = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
        t.png,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{:?},{:?}", t.range.0, t.range.1)) {
        r.headers_mut().insert("x-colorscale-range", v);
    }
    Ok(r)
}

/// The public base URL of this request (`Host`, `X-Forwarded-Host`/`-Proto`).
fn base(headers: &HeaderMap) -> String {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(',').next().unwrap_or("").trim().to_string())
            .filter(|s| !s.is_empty() && !s.contains(['/', ' ', '"', '<', '>']))
    };
    let host = h("x-forwarded-host")
        .or_else(|| h("host"))
        .unwrap_or_else(|| "localhost".to_string());
    let scheme = h("x-forwarded-proto")
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| "http".to_string());
    format!("{scheme}://{host}")
}

/// The query of the tiles URL template: the request's, with the colour range made explicit
/// (so that every tile of a map uses one range and reads only its own cells).
fn template_query(q: &TileQuery, range: (f64, f64)) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("variables", &q.var);
    s.append_pair("style", &format!("raster/{}", q.cmap));
    s.append_pair("colorscalerange", &format!("{:?},{:?}", range.0, range.1));
    if q.width != 256 {
        s.append_pair("width", &q.width.to_string());
    }
    if q.height != 256 {
        s.append_pair("height", &q.height.to_string());
    }
    for d in &q.dims {
        s.append_pair(&d.dim, &format!("{}::{}", d.method, d.value));
    }
    s.finish()
}

/// `/datasets/{id}/tiles/WebMercatorQuad/tilejson.json`: TileJSON 3.0.0 for the query.
pub async fn tilejson(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = served(&state, &id)?;
    let q = parse_query(&id, raw.as_deref(), None)?;
    check(&parent.ds, &id, &q)?;
    let limit = state.max_source_bytes;
    let ds = parent.clone();
    let (var, dims, range) = (q.var.clone(), q.dims.clone(), q.range);
    let bounds_range = state
        .run_for(&parent.ds, move || -> Result<_, PlotError> {
            let v = plot::variable(&ds.ds, &var)?;
            let bounds = match tiles::spatial(&ds.ds, v)? {
                tiles::Grid::Rect(_, _, ay, ax) => (
                    extent(&ay.vals, false, ax.global),
                    extent(&ax.vals, true, ax.global),
                ),
                tiles::Grid::Curv(c) => {
                    let (w, s, e, n) = crate::processing::curvilinear::index_all(&c, limit)?.extent();
                    // TileJSON bounds stay within -180..180: a grid across the date line
                    // is bounded by the whole circle
                    let lon = if e > 180.0 { (-180.0, 180.0) } else { (w, e) };
                    ((s, n), lon)
                }
            };
            let r = tiles::field_range(&ds.ds, &var, &dims, range, limit)?;
            Ok((bounds.0, bounds.1, r))
        })
        .await
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "tilejson failed (bug)"))?
        .map_err(|e| tile_error(&id, e))?;
    let ((s, n), (w, e), r) = bounds_range;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let url = format!(
        "{}/datasets/{}/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}.png?{}",
        base(&headers),
        enc(&id),
        template_query(&q, r)
    );
    Ok(Json(json!({
        "tilejson": "3.0.0",
        "name": format!("{id}: {}", q.var),
        "scheme": "xyz",
        "tiles": [url],
        "minzoom": 0,
        "maxzoom": MAX_ZOOM,
        "bounds": [w, s.max(-tiles::MAX_LAT), e, n.min(tiles::MAX_LAT)],
        "center": [(w + e) / 2.0, ((s + n) / 2.0).clamp(-tiles::MAX_LAT, tiles::MAX_LAT), 0],
        "colorscalerange": [r.0, r.1],
    }))
    .into_response())
}

/// An axis' extent in degrees (half a step beyond its ends); longitudes in −180..180, the
/// whole globe for a global axis.
fn extent(vals: &[f64], lon: bool, global: bool) -> (f64, f64) {
    if lon && global {
        return (-180.0, 180.0);
    }
    let n = vals.len();
    let (a, b) = (vals[0].min(vals[n - 1]), vals[0].max(vals[n - 1]));
    let h = if n > 1 {
        (vals[1] - vals[0]).abs() / 2.0
    } else {
        0.5
    };
    let (a, b) = (a - h, b + h);
    if !lon {
        return (a.max(-90.0), b.min(90.0));
    }
    if b > 180.0 && a >= 180.0 {
        (a - 360.0, b - 360.0)
    } else if b > 180.0 {
        (-180.0, 180.0)
    } else {
        (a.max(-180.0), b.min(180.0))
    }
}

/// `/datasets/{id}/map`: a Leaflet map of one variable's tiles with a slider over its first
/// non-spatial dimension (time).
pub async fn map_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = served(&state, &id)?;
    let ds = &parent.ds;
    // default: the first variable on a lat/lon grid
    let first = ds
        .root
        .vars
        .iter()
        .find(|v| !v.dims.contains(&v.name) && tiles::spatial(ds, v).is_ok())
        .map(|v| v.name.clone());
    let q = parse_query(&id, raw.as_deref(), first)?;
    check(ds, &id, &q)?;
    let v = plot::variable(ds, &q.var).map_err(|e| tile_error(&id, e))?;
    let (ya, xa) = tiles::spatial(ds, v).map_err(|e| tile_error(&id, e))?.dims();
    let slider_dim = v
        .dims
        .iter()
        .enumerate()
        .find(|(i, _)| *i != ya && *i != xa)
        .map(|(i, d)| (d.clone(), v.shape[i]));
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let js = state.map_js_url.clone();
    let css = match js.strip_suffix(".js") {
        Some(s) => format!("{s}.css"),
        None => String::new(),
    };
    let (sdim, steps) = slider_dim.clone().unwrap_or_default();
    let cfg = json!({
        "tilejson": format!("tiles/WebMercatorQuad/tilejson.json?{}", raw.clone().unwrap_or_else(|| format!("variables={}", q.var))),
        "dim": sdim,
        "steps": steps,
    });
    let slider = match &slider_dim {
        Some((d, n)) => format!(
            "<label>{} <input id=\"step\" type=\"range\" min=\"0\" max=\"{}\" value=\"0\"> <span id=\"steplabel\">0</span></label>",
            esc(d),
            n.saturating_sub(1)
        ),
        None => String::new(),
    };
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{css}">
<script src="{js}"></script>
<style>html,body{{margin:0;height:100%}}#map{{height:calc(100% - 3em)}}#bar{{height:3em;padding:0 1em;display:flex;align-items:center;gap:1em;font-family:sans-serif}}</style>
</head><body><div id="bar"><b>{title}</b> {slider} <span id="range"></span></div><div id="map"></div>
<script id="cfg" type="application/json">{cfg}</script>
<script>
const cfg = JSON.parse(document.getElementById('cfg').textContent);
const map = L.map('map', {{worldCopyJump: true}}).setView([0, 0], 1);
let layer = null, base = null;
function show(step) {{
  let url = base;
  if (cfg.dim) {{ url += '&' + encodeURIComponent(cfg.dim) + '=' + step; document.getElementById('steplabel').textContent = step; }}
  if (layer) {{ layer.setUrl(url); }} else {{ layer = L.tileLayer(url, {{maxZoom: 24, opacity: 1}}).addTo(map); }}
  window.currentTileUrl = url;
}}
fetch(cfg.tilejson).then(r => r.json()).then(tj => {{
  base = tj.tiles[0];
  if (cfg.dim) {{ base = base.replace(new RegExp('&' + encodeURIComponent(cfg.dim) + '=[^&]*'), ''); }}
  document.getElementById('range').textContent = 'colour range ' + tj.colorscalerange.join(' .. ');
  const b = tj.bounds; map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
  show(0);
  const s = document.getElementById('step');
  if (s) s.addEventListener('input', () => show(s.value));
}});
</script></body></html>"#,
        title = esc(&format!("{id}: {}", q.var)),
        css = esc(&css),
        js = esc(&js),
        slider = slider,
        cfg = cfg.to_string().replace('<', "\\u003c"),
    );
    let mut r = Html(page).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

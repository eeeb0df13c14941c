//! `cloudify catalog`: a STAC API (core, collections, ogcapi-features, item-search with
//! CQL2 filter, Transactions) over the crash-safe [`Store`].
//!
//! Reused from the `stac`/`stac-server` crates: the STAC types and their (de)serialisation,
//! search parameter parsing and validation (`GetSearch`/`Search::valid`), item matching on
//! bbox/datetime/ids/collections (`Search::matches`), CQL2 evaluation (`cql2`), and
//! `stac_server::Api`, which builds the landing page, conformance, collection/item links and
//! next/prev paging links for any [`stac_server::Backend`]. stac-server's own router is not
//! used: it has no Transactions routes, answers errors as plain text and has no persistent
//! backend; our handlers wrap the same `Api` calls with JSON errors, a bearer token on
//! writes and a body limit.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_core::Stream;
use serde_json::{Map, Value, json};
use stac::api::{
    CollectionsClient, Filter, GetItems, GetSearch, ItemCollection, Items, ItemsClient, Search,
    StreamItemsClient, TransactionClient, stream_pages,
};
use stac::{Collection, Item};
use stac_server::{Api, Backend};

use super::store::{Mode, Store, StoreError, check_id, merge_patch, validate_collection, validate_item};
use crate::http::error::{ApiError, ErrorShape};
use crate::http::middleware::{Limits, json_errors_as, limits_as};

/// Conformance classes added to what `stac_server::Api` declares.
const TRANSACTION_CLASSES: [&str; 3] = [
    "https://api.stacspec.org/v1.0.0/ogcapi-features/extensions/transaction",
    "https://api.stacspec.org/v1.0.0/collections/extensions/transaction",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/simpletx",
];
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 10_000;

/// The store as a `stac_server` backend.
#[derive(Clone, Debug)]
pub struct FileBackend(pub Arc<Store>);

fn backend_err(m: impl Into<String>) -> stac_server::Error {
    stac_server::Error::MemoryBackend(m.into())
}

pub use super::filter::{compile_filter, filter_matches};

impl ItemsClient for FileBackend {
    type Error = stac_server::Error;

    async fn search(&self, search: Search) -> Result<ItemCollection, Self::Error> {
        let filter = search
            .items
            .filter
            .as_ref()
            .map(compile_filter)
            .transpose()
            .map_err(|e| backend_err(e.to_string()))?;
        let mut plain = search.clone();
        plain.items.filter = None;
        let skip = search
            .items
            .additional_fields
            .get("skip")
            .and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(0) as usize;
        let limit = search
            .items
            .limit
            .map_or(DEFAULT_LIMIT, |l| l as usize)
            .clamp(1, MAX_LIMIT);
        let (page, more) = self
            .0
            .find(
                &search.collections,
                |it| {
                    let base = plain.matches(it).map_err(|e| e.to_string())?;
                    match (&filter, base) {
                        (Some(f), true) => {
                            let v = serde_json::to_value(it).map_err(|e| e.to_string())?;
                            Ok(filter_matches(f, &v))
                        }
                        _ => Ok(base),
                    }
                },
                skip,
                limit,
            )
            .map_err(backend_err)?;
        let n = page.len();
        let items = page
            .into_iter()
            .map(stac::api::Item::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut ic = ItemCollection::new(items)?;
        ic.number_returned = Some(n as u64);
        if more {
            let mut next = Map::new();
            next.insert("skip".into(), json!(skip + limit));
            ic.next = Some(next);
        }
        if skip > 0 {
            let mut prev = Map::new();
            prev.insert("skip".into(), json!(skip.saturating_sub(limit)));
            ic.prev = Some(prev);
        }
        Ok(ic)
    }

    async fn item(&self, collection_id: &str, item_id: &str) -> Result<Option<Item>, Self::Error> {
        Ok(self.0.item(collection_id, item_id))
    }
}

impl CollectionsClient for FileBackend {
    type Error = stac_server::Error;
    async fn collections(&self) -> Result<Vec<Collection>, Self::Error> {
        Ok(self.0.collections())
    }
    async fn collection(&self, id: &str) -> Result<Option<Collection>, Self::Error> {
        Ok(self.0.collection(id))
    }
}

impl TransactionClient for FileBackend {
    type Error = stac_server::Error;
    async fn add_collection(&mut self, c: Collection) -> Result<(), Self::Error> {
        self.0
            .put_collection(c, Mode::Upsert)
            .map(|_| ())
            .map_err(|e| backend_err(e.to_string()))
    }
    async fn add_item(&mut self, item: Item) -> Result<(), Self::Error> {
        self.0
            .put_item(item, Mode::Upsert)
            .map(|_| ())
            .map_err(|e| backend_err(e.to_string()))
    }
}

impl StreamItemsClient for FileBackend {
    type Error = stac_server::Error;
    async fn search_stream(
        &self,
        search: Search,
    ) -> Result<impl Stream<Item = Result<stac::api::Item, Self::Error>> + Send, Self::Error> {
        let page = ItemsClient::search(self, search.clone()).await?;
        Ok(stream_pages(self.clone(), search, page))
    }
}

impl Backend for FileBackend {
    fn has_item_search(&self) -> bool {
        true
    }
    fn has_filter(&self) -> bool {
        true
    }
}

/// An error of this service: the one HTTP error type, in the STAC API's shape
/// `{"code": "NotFound", "description": message}`.
fn err(status: StatusCode, m: impl Into<String>) -> ApiError {
    ApiError::new(status, m).shape(ErrorShape::Stac)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let s = match &e {
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::NoCollection(_) | StoreError::NoItem { .. } => StatusCode::NOT_FOUND,
            StoreError::CollectionExists(_) | StoreError::ItemExists { .. } => StatusCode::CONFLICT,
            StoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        err(s, e.to_string())
    }
}

impl From<stac_server::Error> for ApiError {
    fn from(e: stac_server::Error) -> Self {
        err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, m)
}

/// Settings and state of the catalog service.
#[derive(Clone, Debug)]
pub struct CatalogApp {
    /// stac-server's API over the store: landing page, conformance, links and paging.
    pub api: Api<FileBackend>,
    /// The store itself, for transactions and existence checks `Api` has no call for.
    pub store: Arc<Store>,
    /// Bearer token for transactions; `None` refuses every write.
    pub token: Option<Arc<str>>,
}

type St = State<CatalogApp>;

fn geojson(v: impl serde::Serialize) -> Response {
    match serde_json::to_string(&v) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/geo+json")], s).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn jsonr(v: impl serde::Serialize) -> Response {
    match serde_json::to_string(&v) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Constant-time comparison: the token check must not leak how many bytes matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(app: &CatalogApp, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.token else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "transactions are disabled: start `cloudify catalog` with --token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match given {
        // the challenge names the scheme a client must use (RFC 6750)
        None => Err(err(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required for transactions",
        )
        .challenge("Bearer")),
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(err(StatusCode::FORBIDDEN, "invalid bearer token")),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))
}

/// Runs a blocking store write (fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

async fn landing(State(app): St) -> Result<Response, ApiError> {
    let root = app.api.root().await?;
    let mut v =
        serde_json::to_value(root).map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(Value::Array(c)) = v.get_mut("conformsTo") {
        c.extend(TRANSACTION_CLASSES.iter().map(|s| json!(s)));
    }
    Ok(jsonr(v))
}

async fn conformance(State(app): St) -> Response {
    let mut c = app.api.conformance();
    c.conforms_to
        .extend(TRANSACTION_CLASSES.iter().map(std::string::ToString::to_string));
    jsonr(c)
}

async fn service_desc(State(app): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.oai.openapi+json;version=3.0",
        )],
        super::openapi::document(app.api.root.as_str()).to_string(),
    )
        .into_response()
}

async fn service_doc() -> Response {
    axum::response::Html(
        "<!doctype html><title>cloudify catalog</title><h1>cloudify catalog</h1>\
         <p>A STAC API. See <a href=\"api\">the OpenAPI document</a>, <a href=\"collections\">collections</a>, \
         <a href=\"search\">search</a>.</p>",
    )
    .into_response()
}

async fn queryables(State(app): St) -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        app.api.queryables().to_string(),
    )
        .into_response()
}

async fn list_collections(State(app): St) -> Result<Response, ApiError> {
    Ok(jsonr(app.api.collections().await?))
}

/// Checks ids taken from the URL path as ids in documents are checked: `..`, `.` or an id with
/// `/` or control characters can never name a stored collection or item, and a request for
/// one is a client mistake (400), not a search for something absent.
fn path_cid(cid: &str) -> Result<(), ApiError> {
    check_id("collectionId", cid).map_err(ApiError::from)
}

fn path_ids(cid: &str, iid: &str) -> Result<(), ApiError> {
    path_cid(cid)?;
    check_id("featureId", iid).map_err(ApiError::from)
}

async fn get_collection(State(app): St, Path(cid): Path<String>) -> Result<Response, ApiError> {
    path_cid(&cid)?;
    let c = app
        .api
        .collection(&cid)
        .await?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")))?;
    Ok(jsonr(c))
}

async fn get_items(
    State(app): St,
    Path(cid): Path<String>,
    Query(q): Query<GetItems>,
) -> Result<Response, ApiError> {
    path_cid(&cid)?;
    let lang = q.filter_lang.clone();
    let items = Items::try_from(q).map_err(|e| bad(format!("invalid query: {e}")))?;
    check_datetime(&items)?;
    let mut items = items.valid().map_err(|e| bad(format!("invalid query: {e}")))?;
    apply_get_filter_lang(lang.as_deref(), &mut items)?;
    if let Some(f) = &items.filter {
        compile_filter(f).map_err(|e| bad(e.to_string()))?;
    }
    if app.store.collection(&cid).is_none() {
        return Err(err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")));
    }
    // The items of a collection are a search restricted to it; `Api::items` is not used
    // because of its GET paging links (see `get_paging_links`).
    let mut search = Search::from(items);
    search.collections = vec![cid.clone()];
    let mut ic = app.api.search(search, Method::POST).await?;
    let items_url = format!("{}collections/{cid}/items", app.api.root);
    get_paging_links(&mut ic, &items_url, true)?;
    ic.links.retain(|l| l.rel != "self" && l.rel != "collection");
    ic.links.push(stac::Link::self_(items_url.as_str()).geojson());
    ic.links
        .push(stac::Link::collection(format!("{}collections/{cid}", app.api.root).as_str()).json());
    Ok(geojson(ic))
}

/// Turns the POST paging links of `Api::search` (whose `body` is the next page's search)
/// into GET links to `base` carrying that search as query parameters.
///
/// stac-server 0.5.9 builds GET paging links by URL-encoding the `Search` itself, which
/// fails (a 500 "unsupported value") as soon as the search has a bbox, ids, collections,
/// intersects or a cql2-json filter; stac's `GetSearch`/`GetItems` conversions spell each
/// of those as a string.
fn get_paging_links(ic: &mut ItemCollection, base: &str, items_only: bool) -> Result<(), ApiError> {
    let internal = |e: stac::Error| err(StatusCode::INTERNAL_SERVER_ERROR, format!("paging link: {e}"));
    for link in &mut ic.links {
        if link.rel != "next" && link.rel != "prev" {
            continue;
        }
        let Some(body) = link.body.take() else {
            continue;
        };
        let mut search: Search = serde_json::from_value(Value::Object(body))
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("paging link: {e}")))?;
        if let Some(f) = search.items.filter.take() {
            search.items.filter = Some(f.into_cql2_text().map_err(internal)?);
        }
        let params = if items_only {
            serde_json::to_value(GetItems::try_from(search.items).map_err(internal)?)
        } else {
            serde_json::to_value(GetSearch::try_from(search).map_err(internal)?)
        }
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("paging link: {e}")))?;
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Value::Object(m) = params {
            for (k, v) in m {
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        query.append_pair(&k, &s);
                    }
                    other => {
                        query.append_pair(&k, &other.to_string());
                    }
                }
            }
        }
        link.href = format!("{base}?{}", query.finish());
        link.method = Some("GET".into());
    }
    Ok(())
}

async fn get_item(State(app): St, Path((cid, iid)): Path<(String, String)>) -> Result<Response, ApiError> {
    path_ids(&cid, &iid)?;
    if app.store.collection(&cid).is_none() {
        return Err(err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")));
    }
    let it = app.api.item(&cid, &iid).await?.ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            format!("no item '{iid}' in collection '{cid}'"),
        )
    })?;
    Ok(geojson(it))
}

/// The `datetime` parameter, checked as matching will read it (`stac::datetime::parse`):
/// `Items::valid` lets `..` and an empty value through, which then failed every item's
/// match — a 500 for a client's mistake.
fn check_datetime(items: &Items) -> Result<(), ApiError> {
    if let Some(dt) = items.datetime.as_deref() {
        stac::datetime::parse(dt).map_err(|e| {
            bad(format!(
                "datetime: {dt:?} is neither an RFC 3339 datetime nor an interval start/end \
                 ('..' for an open end, not both): {e}"
            ))
        })?;
    }
    Ok(())
}

async fn run_search(app: &CatalogApp, search: Search, method: Method) -> Result<Response, ApiError> {
    check_datetime(&search.items)?;
    let search = search.valid().map_err(|e| bad(e.to_string()))?;
    if let Some(f) = &search.items.filter {
        compile_filter(f).map_err(|e| bad(e.to_string()))?;
    }
    if search.items.query.is_some() {
        return Err(bad(
            "query: the query extension is not supported; use filter (CQL2)",
        ));
    }
    // `intersects` is evaluated per item by stac's `geo` feature; a geometry it cannot use
    // is the client's error, found here on an item without geometry rather than as a 500
    // during the search.
    if search.intersects.is_some() {
        search
            .intersects_matches(&Item::new("probe"))
            .map_err(|e| bad(format!("intersects: {e}")))?;
    }
    // Paging links are made for POST and rewritten for GET (see `get_paging_links`).
    let mut ic = app.api.search(search, Method::POST).await?;
    if method == Method::GET {
        get_paging_links(&mut ic, &format!("{}search", app.api.root), false)?;
    }
    Ok(geojson(ic))
}

/// GET `filter-lang`: stac's conversion of GET parameters reads every filter as cql2-text.
fn apply_get_filter_lang(lang: Option<&str>, items: &mut Items) -> Result<(), ApiError> {
    match (lang, items.filter.take()) {
        (None | Some("cql2-text"), f) => items.filter = f,
        (Some("cql2-json"), Some(Filter::Cql2Text(text))) => {
            let m: Map<String, Value> = serde_json::from_str(&text)
                .map_err(|e| bad(format!("filter: not a cql2-json object: {e}")))?;
            items.filter = Some(Filter::Cql2Json(m));
        }
        (Some("cql2-json"), f) => items.filter = f,
        (Some(other), _) => {
            return Err(bad(format!(
                "filter-lang: '{other}' is not supported (cql2-text, cql2-json)"
            )));
        }
    }
    Ok(())
}

/// POST `filter` without `filter-lang`: cql2-json, the default of the Filter extension for
/// POST (cql2-text for a string). Without this, stac's `Search` would not see the filter at
/// all and the search would silently return everything.
fn default_filter_lang(v: &mut Value) {
    if let Some(o) = v.as_object_mut()
        && o.contains_key("filter")
        && !o.contains_key("filter-lang")
    {
        let lang = if o.get("filter").is_some_and(Value::is_string) {
            "cql2-text"
        } else {
            "cql2-json"
        };
        o.insert("filter-lang".into(), json!(lang));
    }
}

async fn get_search(State(app): St, Query(q): Query<GetSearch>) -> Result<Response, ApiError> {
    let lang = q.items.filter_lang.clone();
    let mut search = Search::try_from(q).map_err(|e| bad(e.to_string()))?;
    apply_get_filter_lang(lang.as_deref(), &mut search.items)?;
    run_search(&app, search, Method::GET).await
}

async fn post_search(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let mut v = if body.is_empty() {
        json!({})
    } else {
        parse_json(&body)?
    };
    // stac's `Search` would drop a filter that is neither (and search everything)
    if let Some(f) = v.get("filter")
        && !f.is_object()
        && !f.is_string()
    {
        return Err(bad(format!(
            "filter: must be a cql2-json object or a cql2-text string, not {f}"
        )));
    }
    // the OpenAPI document's enum; without a filter stac's `Search` would ignore any value
    if let Some(lang) = v.get("filter-lang")
        && !matches!(lang.as_str(), Some("cql2-text" | "cql2-json"))
    {
        return Err(bad(format!(
            "filter-lang: {lang} is not supported (cql2-text, cql2-json)"
        )));
    }
    default_filter_lang(&mut v);
    let search: Search = serde_json::from_value(v).map_err(|e| bad(format!("invalid search: {e}")))?;
    run_search(&app, search, Method::POST).await
}

// ---- transactions ---------------------------------------------------------------------

fn created(location: String, body: impl serde::Serialize, geo: bool) -> Response {
    let mut r = if geo { geojson(body) } else { jsonr(body) };
    *r.status_mut() = StatusCode::CREATED;
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn post_collection(State(app): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let c = validate_collection(parse_json(&body)?)?;
    let store = app.store.clone();
    let c = blocking(move || store.put_collection(c, Mode::Create)).await?;
    let loc = format!("{}collections/{}", app.api.root, c.id);
    Ok(created(loc, c, false))
}

async fn put_collection(
    State(app): St,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_cid(&cid)?;
    let v = parse_json(&body)?;
    write_collection(app, cid, v).await
}

async fn write_collection(app: CatalogApp, cid: String, v: Value) -> Result<Response, ApiError> {
    let c = validate_collection(v)?;
    if c.id != cid {
        return Err(bad(format!(
            "id: '{}' does not match the URL's collection '{cid}'",
            c.id
        )));
    }
    let store = app.store.clone();
    let c = blocking(move || store.put_collection(c, Mode::Replace)).await?;
    Ok(jsonr(c))
}

async fn patch_collection(
    State(app): St,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_cid(&cid)?;
    let patch = parse_json(&body)?;
    let current = app
        .store
        .collection(&cid)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")))?;
    let mut v = serde_json::to_value(current).map_err(|e| bad(e.to_string()))?;
    merge_patch(&mut v, &patch);
    write_collection(app, cid, v).await
}

async fn delete_collection(
    State(app): St,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_cid(&cid)?;
    let store = app.store.clone();
    blocking(move || store.delete_collection(&cid)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn post_item(
    State(app): St,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_cid(&cid)?;
    let v = parse_json(&body)?;
    if v.get("type").and_then(Value::as_str) == Some("FeatureCollection") {
        return Err(bad(
            "type: FeatureCollection bodies are not supported; POST one item at a time",
        ));
    }
    if app.store.collection(&cid).is_none() {
        return Err(err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")));
    }
    let it = validate_item(v, &cid)?;
    let store = app.store.clone();
    let it = blocking(move || store.put_item(it, Mode::Create)).await?;
    let loc = format!("{}collections/{cid}/items/{}", app.api.root, it.id);
    Ok(created(loc, it, true))
}

async fn write_item(app: CatalogApp, cid: String, iid: String, v: Value) -> Result<Response, ApiError> {
    if app.store.collection(&cid).is_none() {
        return Err(err(StatusCode::NOT_FOUND, format!("no collection '{cid}'")));
    }
    let it = validate_item(v, &cid)?;
    if it.id != iid {
        return Err(bad(format!(
            "id: '{}' does not match the URL's item '{iid}'",
            it.id
        )));
    }
    let store = app.store.clone();
    let it = blocking(move || store.put_item(it, Mode::Replace)).await?;
    Ok(geojson(it))
}

async fn put_item(
    State(app): St,
    Path((cid, iid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_ids(&cid, &iid)?;
    let v = parse_json(&body)?;
    write_item(app, cid, iid, v).await
}

async fn patch_item(
    State(app): St,
    Path((cid, iid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_ids(&cid, &iid)?;
    let patch = parse_json(&body)?;
    let current = app.store.item(&cid, &iid).ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            format!("no item '{iid}' in collection '{cid}'"),
        )
    })?;
    let mut v = serde_json::to_value(current).map_err(|e| bad(e.to_string()))?;
    merge_patch(&mut v, &patch);
    write_item(app, cid, iid, v).await
}

async fn delete_item(
    State(app): St,
    Path((cid, iid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    path_ids(&cid, &iid)?;
    let store = app.store.clone();
    blocking(move || store.delete_item(&cid, &iid)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    err(StatusCode::NOT_FOUND, format!("no route for '{}'", uri.path()))
}

/// Builds the catalog service. `root` is its public URL (ends with `/`).
pub fn router(
    store: Arc<Store>,
    root: &str,
    token: Option<String>,
    max_body: usize,
) -> anyhow::Result<Router> {
    let api = Api::new(FileBackend(store.clone()), root)?
        .id("cloudify-catalog")
        .description("STAC catalog of datasets served by cloudify");
    let app = CatalogApp {
        api,
        store,
        token: token.map(Arc::from),
    };
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any);
    Ok(Router::new()
        .route("/", get(landing))
        .route("/conformance", get(conformance))
        .route("/api", get(service_desc))
        .route("/api.html", get(service_doc))
        .route("/queryables", get(queryables))
        .route("/healthz", get(|| async { "ok" }))
        .route("/collections", get(list_collections).post(post_collection))
        .route(
            "/collections/{cid}",
            get(get_collection)
                .put(put_collection)
                .patch(patch_collection)
                .delete(delete_collection),
        )
        .route("/collections/{cid}/items", get(get_items).post(post_item))
        .route(
            "/collections/{cid}/items/{iid}",
            get(get_item).put(put_item).patch(patch_item).delete(delete_item),
        )
        .route("/search", get(get_search).post(post_search))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            ErrorShape::Stac,
            json_errors_as,
        ))
        // the data server's 414/431 guards (with a target limit for GET searches), answered
        // before routing, in the STAC shape
        .layer(axum::middleware::from_fn_with_state(
            Limits {
                shape: ErrorShape::Stac,
                max_uri: super::MAX_URI_BYTES,
            },
            limits_as,
        ))
        .layer(cors)
        .layer(axum::middleware::from_fn(crate::http::middleware::trace))
        .with_state(app))
}

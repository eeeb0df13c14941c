//! Access control on the HTTP surface: one layer in front of every route that checks the
//! credentials of requests for a private dataset (`/datasets/{id}` and everything below it:
//! Zarr v2/v3, kerchunk, Parquet references, groupby/histogram products, OPeNDAP, STAC item
//! and intake entries; views are datasets of their own with their parent's policy), and
//! `/auth/check` for nginx `auth_request`.
//!
//! Answers follow RFC 6750: 401 with `WWW-Authenticate: Bearer realm="cloudify"` without
//! credentials, with `error="invalid_token"` and a description for bad ones, 403
//! (`insufficient_scope`) for valid credentials without the right. Never 404 on a chunk path
//! of a dataset that exists: zarr clients read 404 as "fill value". A 401 also offers
//! `Basic realm="cloudify"`: clients that only send user and password (`.netrc`, netCDF-C's
//! OPeNDAP client) present the token as the password, the user name is ignored. The listings (`/`,
//! `/datasets`, `/stac-collection-all.json`, `/intake.yaml`) get the [`Readable`] set of the
//! caller and leave out every private dataset not in it. Tokens are never logged.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::access::signed::SignedQuery;
use crate::access::{Credentials, Decision};
use crate::state::AppState;

/// Header nginx's `auth_request` sends the original request target in (`proxy_set_header
/// X-Original-URI $request_uri;`).
pub const ORIGINAL_URI: &str = "x-original-uri";

/// Routes that list datasets and therefore filter private ones by caller.
const LISTINGS: &[&str] = &["/", "/datasets", "/stac-collection-all.json", "/intake.yaml"];

/// The private datasets the caller of a listing may read (request extension set by
/// [`enforce`]); a handler without it lists public datasets only.
#[derive(Clone, Debug, Default)]
pub struct Readable(Arc<HashSet<String>>);

impl Readable {
    /// Whether dataset `id` is listed for this caller.
    pub fn lists(&self, state: &AppState, id: &str) -> bool {
        !state.access.is_private(id) || self.0.contains(id)
    }
}

/// Whether `id` is listed for a caller whose [`Readable`] set is `r` (`None`: anonymous).
pub fn listed(state: &AppState, r: Option<&Readable>, id: &str) -> bool {
    match r {
        Some(r) => r.lists(state, id),
        None => !state.access.is_private(id),
    }
}

/// The credentials of a request: its `Authorization` header and signed-URL parameters.
pub fn credentials(headers: &HeaderMap, query: Option<&str>) -> Credentials {
    let mut c = Credentials::default();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default().trim();
        match v.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                c.bearer = Some(token.trim().to_string());
            }
            // HTTP Basic with the token as password (user name ignored): what clients that
            // only know `.netrc` or user/password settings send — netCDF-C's OPeNDAP client,
            // NCO, Panoply, curl --netrc
            Some((scheme, creds)) if scheme.eq_ignore_ascii_case("basic") => match basic_password(creds) {
                Some(token) => c.bearer = Some(token),
                None => c.other_scheme = true,
            },
            _ => c.other_scheme = true,
        }
    }
    let (mut expires, mut signature) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = Some(v.to_string()),
            Some(("signature", v)) => signature = Some(v.to_string()),
            _ => {}
        }
    }
    if expires.is_some() || signature.is_some() {
        c.signed = Some(SignedQuery {
            expires: expires.unwrap_or_default(),
            signature: signature.unwrap_or_default(),
        });
    }
    c
}

/// The password of HTTP Basic credentials (`base64(user:password)`), if it is not empty.
fn basic_password(creds: &str) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, password) = text.split_once(':')?;
    let password = password.trim();
    (!password.is_empty()).then(|| password.to_string())
}

/// The dataset id a request path addresses (`/datasets/{id}` or below), percent-decoded as
/// the router decodes it, so that `/datasets/priv%61te/...` is checked as `private`.
pub fn dataset_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/datasets/")?;
    let seg = rest.split('/').next().unwrap_or_default();
    if seg.is_empty() {
        return None;
    }
    Some(percent_decode(seg))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The answer refusing a request, or `None` if `d` allows it.
pub fn refusal(id: &str, d: Decision) -> Option<Response> {
    let quote = |s: &str| s.replace(['"', '\\'], "'");
    let (status, challenge, message) = match d {
        Decision::Allow => return None,
        Decision::Missing => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="cloudify""#.to_string(),
            format!("dataset '{id}' requires a bearer token (Authorization: Bearer ...) or a signed URL"),
        ),
        Decision::Invalid(why) => (
            StatusCode::UNAUTHORIZED,
            format!(
                r#"Bearer realm="cloudify", error="invalid_token", error_description="{}""#,
                quote(&why)
            ),
            format!("dataset '{id}': {why}"),
        ),
        Decision::Forbidden(why) => (
            StatusCode::FORBIDDEN,
            format!(
                r#"Bearer realm="cloudify", error="insufficient_scope", error_description="{}""#,
                quote(&why)
            ),
            why,
        ),
        Decision::Unavailable(why) => {
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("dataset '{id}': access cannot be checked now: {why}"),
            )
            .quiet()
            .retry_after(5)
            .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Some(r);
        }
    };
    let mut r = ApiError::new(status, message).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if status == StatusCode::UNAUTHORIZED {
        // clients that authenticate only when challenged (curl's "any" auth, as netCDF-C
        // sets it) need a scheme they know: Basic, with the token as password
        r.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="cloudify""#),
        );
    }
    Some(r)
}

/// The layer: checks requests for private datasets, hands listings their [`Readable`] set,
/// and drops the signed-URL parameters before the routes see the query (OPeNDAP reads the
/// query as its constraint).
pub async fn enforce(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if !state.access.any_private() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if let Some(id) = dataset_of(path)
        && state.access.is_private(&id)
    {
        let creds = credentials(req.headers(), req.uri().query());
        let signed = creds.signed.is_some();
        if let Some(r) = refusal(&id, state.access.check(&id, &creds).await) {
            return r;
        }
        if signed && let Some(uri) = without_signature(req.uri()) {
            *req.uri_mut() = uri;
        }
        // private answers must not be kept by shared caches
        let mut r = next.run(req).await;
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        return r;
    }
    if LISTINGS.contains(&path) {
        let creds = credentials(req.headers(), None);
        let mut ids = HashSet::new();
        if creds.bearer.is_some() {
            for id in state.access.private_ids() {
                if state.access.check(id, &creds).await == Decision::Allow {
                    ids.insert(id.to_string());
                }
            }
        }
        req.extensions_mut().insert(Readable(Arc::new(ids)));
    }
    next.run(req).await
}

/// `uri` without `expires`/`signature` query parameters.
fn without_signature(uri: &Uri) -> Option<Uri> {
    let q = uri.query()?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| !matches!(p.split_once('=').map(|(k, _)| k), Some("expires" | "signature")))
        .collect();
    let pq = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).ok()
}

/// `/auth/check`: nginx `auth_request` (or ingress-nginx `auth-url`) asks whether the
/// request in `X-Original-URI`, with this request's `Authorization`, may read: 204 if so,
/// else the 401/403/503 the data route would answer.
pub async fn check(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(original) = headers.get(ORIGINAL_URI).and_then(|v| v.to_str().ok()) else {
        return ApiError::bad_request(
            "/auth/check needs the X-Original-URI header (nginx: proxy_set_header X-Original-URI $request_uri)",
        )
        .into_response();
    };
    let Ok(uri) = original.parse::<Uri>() else {
        return ApiError::bad_request("X-Original-URI is not a request target").into_response();
    };
    if let Some(id) = dataset_of(uri.path())
        && state.access.is_private(&id)
    {
        let creds = credentials(&headers, uri.query());
        if let Some(r) = refusal(&id, state.access.check(&id, &creds).await) {
            return r;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_ids_are_decoded_like_the_router() {
        assert_eq!(
            dataset_of("/datasets/priv%61te/zarr/.zmetadata").as_deref(),
            Some("private")
        );
        assert_eq!(dataset_of("/datasets/a").as_deref(), Some("a"));
        assert_eq!(dataset_of("/datasets/"), None);
        assert_eq!(dataset_of("/datasets"), None);
        assert_eq!(dataset_of("/status"), None);
    }

    #[test]
    fn credentials_and_signature_stripping() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        let c = credentials(&h, Some("tas[0]&expires=5&signature=ff"));
        assert_eq!(c.bearer.as_deref(), Some("abc"));
        assert_eq!(
            c.signed,
            Some(SignedQuery {
                expires: "5".into(),
                signature: "ff".into()
            })
        );
        // Basic: the password is the token ("x:y", "user:tok en ", "nopassword:", "nocolon")
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        assert_eq!(credentials(&h, None).bearer.as_deref(), Some("y"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic dXNlcjp0b2sgZW4g"),
        );
        assert_eq!(credentials(&h, None).bearer.as_deref(), Some("tok en"));
        for bad in [
            "Basic bm9wYXNzd29yZDo=",
            "Basic bm9jb2xvbg==",
            "Basic !!!",
            "Digest x",
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            let c = credentials(&h, None);
            assert!(c.other_scheme && c.bearer.is_none(), "{bad}");
        }
        let u: Uri = "/datasets/a/opendap.dods?tas[0]&expires=5&signature=ff"
            .parse()
            .unwrap();
        assert_eq!(
            without_signature(&u).unwrap().to_string(),
            "/datasets/a/opendap.dods?tas[0]"
        );
        let u: Uri = "/datasets/a/zarr/.zattrs?expires=5&signature=ff".parse().unwrap();
        assert_eq!(
            without_signature(&u).unwrap().to_string(),
            "/datasets/a/zarr/.zattrs"
        );
    }

    #[test]
    fn refusals_carry_rfc6750_challenges() {
        let r = refusal("d", Decision::Missing).unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="cloudify""#
        );
        let r = refusal("d", Decision::Invalid("the token has \"expired\"".into())).unwrap();
        let c = r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            c.contains(r#"error="invalid_token""#) && c.contains("'expired'"),
            "{c}"
        );
        assert_eq!(
            refusal("d", Decision::Forbidden("no".into())).unwrap().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            refusal("d", Decision::Unavailable("x".into())).unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(refusal("d", Decision::Allow).is_none());
    }
}

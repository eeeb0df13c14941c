//! Registering items in a `cloudify catalog` (or any STAC API with the Transactions
//! extension) — feature `catalog-client`. Used by `cloudify serve --register` and by the
//! Kubernetes operator; it lives here rather than in the server so that the operator can use
//! it without linking netCDF/HDF5.
//!
//! Writes are upserts (POST, then PUT on 409) so registering again after a restart or a
//! change is harmless; deletes treat 404 as done.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// Why a catalog request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an answer (connection, TLS, timeout).
    #[error("{url}: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// What the HTTP client said.
        source: reqwest::Error,
    },
    /// The catalog answered with an error status.
    #[error("{method} {url}: {status}: {body}")]
    Status {
        /// `GET`, `POST`, `PUT` or `DELETE`.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The status answered.
        status: StatusCode,
        /// The body answered (the catalog's error message).
        body: String,
    },
    /// The configured catalog URL is not `http(s)://`.
    #[error("invalid catalog URL '{0}'")]
    Url(String),
}

impl ClientError {
    /// Errors worth retrying: the catalog is down or overloaded, not rejecting our data.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } => true,
            ClientError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ClientError::Url(_) => false,
        }
    }
}

/// Collection of items when none is configured (`cloudify serve --stac-collection` default).
pub const DEFAULT_COLLECTION: &str = "cloudify";

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The token file.
        path: String,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token (only whitespace).
    #[error("token file {0} is empty")]
    Empty(String),
}

/// A client of one STAC API with a bearer token.
#[derive(Clone, Debug)]
pub struct CatalogClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl CatalogClient {
    /// A client of the STAC API at `base` (`http(s)://`), sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Url(base.to_string()));
        }
        // rustls with ring, as the server uses: no aws-lc / OpenSSL to build.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Http {
                url: base.to_string(),
                source: e,
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<StatusCode, ClientError> {
        let url = format!("{}{path}", self.base);
        // A client span; the STAC API's request span is its child through `traceparent`.
        // The token is a header, never a span field. DEBUG: nothing with traces off.
        let span = tracing::debug_span!(
            "stac.request",
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
        );
        let mut trace_headers = reqwest::header::HeaderMap::new();
        span.in_scope(|| cloudify_telemetry::inject(&mut trace_headers));
        let mut rb = self.http.request(method.clone(), &url).headers(trace_headers);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = tracing::Instrument::instrument(rb.send(), span)
            .await
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        let status = r.status();
        if status.is_success() || status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
            return Ok(status);
        }
        let body = r.text().await.unwrap_or_default();
        Err(ClientError::Status {
            method: match method {
                reqwest::Method::POST => "POST",
                reqwest::Method::PUT => "PUT",
                reqwest::Method::DELETE => "DELETE",
                _ => "GET",
            },
            url,
            status,
            body: body.chars().take(500).collect(),
        })
    }

    fn check(status: StatusCode, method: &'static str, url: String) -> Result<(), ClientError> {
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status {
                method,
                url,
                status,
                body: String::new(),
            })
        }
    }

    /// Creates or replaces a collection.
    pub async fn upsert_collection(&self, c: &Value) -> Result<(), ClientError> {
        let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
        let s = self.send(reqwest::Method::POST, "/collections", Some(c)).await?;
        if s == StatusCode::CONFLICT {
            let p = format!("/collections/{}", seg(id));
            let s = self.send(reqwest::Method::PUT, &p, Some(c)).await?;
            return Self::check(s, "PUT", p);
        }
        Self::check(s, "POST", "/collections".into())
    }

    /// Creates a collection unless one with its id exists (which is left as it is: other
    /// servers may share it, and replacing it would replace their extent with ours).
    pub async fn ensure_collection(&self, c: &Value) -> Result<(), ClientError> {
        let s = self.send(reqwest::Method::POST, "/collections", Some(c)).await?;
        if s == StatusCode::CONFLICT {
            return Ok(());
        }
        Self::check(s, "POST", "/collections".into())
    }

    /// URL of an item of this catalog (see [`item_url`]).
    pub fn item_url(&self, collection: &str, id: &str) -> String {
        item_url(&self.base, collection, id)
    }

    /// The catalog's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Creates or replaces an item of `collection`.
    pub async fn upsert_item(&self, collection: &str, item: &Value) -> Result<(), ClientError> {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let p = format!("/collections/{}/items", seg(collection));
        let s = self.send(reqwest::Method::POST, &p, Some(item)).await?;
        if s == StatusCode::CONFLICT {
            let p = format!("{p}/{}", seg(id));
            let s = self.send(reqwest::Method::PUT, &p, Some(item)).await?;
            return Self::check(s, "PUT", p);
        }
        Self::check(s, "POST", p)
    }

    /// Deletes an item (absent counts as deleted).
    pub async fn delete_item(&self, collection: &str, id: &str) -> Result<(), ClientError> {
        let p = format!("/collections/{}/items/{}", seg(collection), seg(id));
        self.send(reqwest::Method::DELETE, &p, None).await.map(|_| ())
    }

    /// Registers a collection and its items, retrying transient failures with exponential
    /// backoff (1 s doubling to 60 s) for at most `patience`. Rejections (4xx) are not
    /// retried: sending the same document again cannot succeed.
    pub async fn register(
        &self,
        collection: &Value,
        items: &[Value],
        patience: Duration,
    ) -> Result<(), ClientError> {
        let cid = collection
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let start = std::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            let attempt = async {
                self.upsert_collection(collection).await?;
                for it in items {
                    self.upsert_item(&cid, it).await?;
                }
                Ok::<(), ClientError>(())
            }
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && start.elapsed() + delay < patience => {
                    tracing::warn!(catalog = %self.base, "registration failed, retrying in {}s: {e}", delay.as_secs());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the given items of `collection` (the collection itself stays: other servers
    /// may share it).
    pub async fn deregister(&self, collection: &str, ids: &[String]) -> Result<(), ClientError> {
        for id in ids {
            self.delete_item(collection, id).await?;
        }
        Ok(())
    }
}

/// Reads a token file (first line, trimmed). Empty files are an error: an empty token would
/// silently disable authentication on one side.
pub fn read_token(path: &std::path::Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    Ok(t)
}

/// URL of an item in a STAC API: `<base>/collections/<collection>/items/<id>` with both ids
/// percent-encoded. What the operator records in `status.stacItem`.
pub fn item_url(base: &str, collection: &str, id: &str) -> String {
    format!(
        "{}/collections/{}/items/{}",
        base.trim_end_matches('/'),
        seg(collection),
        seg(id)
    )
}

/// The inverse of [`item_url`]: `(base, collection, id)`, or `None` when `url` is not an item
/// URL. Lets the operator deregister exactly the item it recorded, even after the spec (and so
/// the catalog or collection it would register in now) changed.
pub fn parse_item_url(url: &str) -> Option<(String, String, String)> {
    let (base, rest) = url.rsplit_once("/collections/")?;
    let (collection, id) = rest.split_once("/items/")?;
    if base.is_empty() || collection.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((base.to_string(), decode(collection)?, decode(id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_urls_round_trip() {
        let u = item_url("http://cat:8080/", "my coll", "tas+daily/x");
        assert_eq!(u, "http://cat:8080/collections/my%20coll/items/tas%2Bdaily%2Fx");
        assert_eq!(
            parse_item_url(&u),
            Some(("http://cat:8080".into(), "my coll".into(), "tas+daily/x".into()))
        );
        assert_eq!(parse_item_url("http://cat/collections/c"), None);
        assert_eq!(parse_item_url("http://cat/items/x"), None);
    }

    #[test]
    fn transient_errors() {
        assert!(!ClientError::Url("x".into()).is_transient());
        let status = |s: u16| ClientError::Status {
            method: "POST",
            url: "u".into(),
            status: StatusCode::from_u16(s).expect("status"),
            body: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(403).is_transient());
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("cloudify-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("t");
        std::fs::write(&p, "  abc \nsecond\n").expect("write");
        assert_eq!(read_token(&p).expect("token"), "abc");
        std::fs::write(&p, "\n").expect("write");
        assert!(matches!(read_token(&p), Err(TokenError::Empty(_))));
        assert!(matches!(
            read_token(&dir.join("missing")),
            Err(TokenError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

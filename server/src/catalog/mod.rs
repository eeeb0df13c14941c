//! Catalogs: how users *find* the served data.
//!
//! * `describe` works out a dataset's extent, time range and datacube description from the
//!   dataset itself (coordinates are read once and cached);
//! * `item` and `intake` turn that into a STAC 1.1 Item/Collection and intake catalogs —
//!   pure functions of the description and the public base URL;
//! * `routes` serves them from `cloudify serve`, `export` writes a static catalog;
//! * `client` registers a server's items in a `cloudify catalog` STAC API (also used by the
//!   Kubernetes operator); that service itself is [`crate::stac_api`], a process of its own
//!   that reads no dataset;
//! * `cli` holds the `cloudify catalog` and `cloudify stac` subcommands.

/// The `serve` catalog flags and the `cloudify catalog` / `cloudify stac` subcommands.
pub mod cli;
/// The STAC Transactions client, shared with the operator (in `cloudify-crds` so the operator
/// does not link netCDF).
pub use cloudify_crds::catalog_client as client;
/// A dataset's extent, time range and datacube description, read from the dataset.
pub mod describe;
/// `cloudify stac export`: a static catalog for hosting without a server.
pub mod export;
/// intake catalogs (YAML) of the served datasets.
pub mod intake;
/// STAC Items and Collections from descriptions.
pub mod item;
/// The catalog routes of `cloudify serve`.
pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::attrs::AttrValue;

/// Why catalog metadata could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A coordinate (named by path) that is not numbers, so no extent can be read from it.
    #[error("{0}: not a numeric variable")]
    NotNumeric(String),
    /// A coordinate too large to read whole just to describe it (the dataset still serves).
    #[error("{0}: too large to read for catalog metadata")]
    TooLarge(String),
    /// A time axis whose CF units or values cannot be decoded; the item falls back to
    /// another datetime instead of failing.
    #[error("time axis {0}")]
    Time(String),
    /// A coordinate whose values are on tape: describing a dataset never recalls files.
    #[error("{0}: on tape (not read for catalog metadata; inline it in the references)")]
    OnTape(String),
    /// Reading a coordinate's values failed.
    #[error(transparent)]
    Read(#[from] crate::chunk::read::ReadError),
}

/// Attribute value as plain JSON (non-finite floats as strings).
pub fn json_attr(v: &AttrValue) -> Value {
    crate::dataset::summary::attr_json(v)
}

/// How to spell the server's public base URL in catalog documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PublicUrl {
    /// `--public-url`: what clients use behind an ingress or proxy.
    Fixed(String),
    /// From each request's `Host` (or `X-Forwarded-Host`/`-Proto`) header; `https` is the
    /// scheme when the server itself terminates TLS.
    #[default]
    FromRequest,
    /// As `FromRequest`, with `https` as the default scheme.
    FromRequestTls,
}

impl PublicUrl {
    /// The base URL (no trailing slash) for a request with these headers.
    pub fn base(&self, headers: &axum::http::HeaderMap) -> String {
        let tls = match self {
            PublicUrl::Fixed(u) => return u.trim_end_matches('/').to_string(),
            PublicUrl::FromRequest => false,
            PublicUrl::FromRequestTls => true,
        };
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
            .unwrap_or_else(|| if tls { "https" } else { "http" }.to_string());
        format!("{scheme}://{host}")
    }
}

/// Catalog settings of a running `cloudify serve` and the descriptions computed so far.
///
/// Added to the router as an `Extension`; handlers fall back to defaults without it, so a
/// router built without catalog settings (tests, embedding) still answers.
#[derive(Debug, Default)]
pub struct CatalogCtx {
    /// How links and asset hrefs spell this server's address.
    pub public_url: PublicUrl,
    /// Id of the collection of this server's items (`--stac-collection`).
    pub collection_id: Option<String>,
    /// Descriptions by dataset name: reading coordinates is I/O, done once per dataset.
    cache: Mutex<HashMap<String, Arc<describe::Description>>>,
}

/// Default collection id when none is configured.
pub const DEFAULT_COLLECTION: &str = client::DEFAULT_COLLECTION;

impl CatalogCtx {
    /// Settings from the command line, with no description computed yet.
    pub fn new(public_url: PublicUrl, collection_id: Option<String>) -> Self {
        Self {
            public_url,
            collection_id,
            cache: Mutex::default(),
        }
    }

    /// The collection id items link to: configured, else [`DEFAULT_COLLECTION`].
    pub fn collection(&self) -> &str {
        self.collection_id.as_deref().unwrap_or(DEFAULT_COLLECTION)
    }

    /// The cached description of a dataset, computing it with `f` the first time.
    pub fn description(
        &self,
        name: &str,
        f: impl FnOnce() -> describe::Description,
    ) -> Arc<describe::Description> {
        if let Some(d) = self.cache.lock().ok().and_then(|c| c.get(name).cloned()) {
            return d;
        }
        let d = Arc::new(f());
        for w in &d.warnings {
            tracing::warn!(dataset = %name, "catalog metadata: {w}");
        }
        if let Ok(mut c) = self.cache.lock() {
            c.insert(name.to_string(), d.clone());
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn public_url_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", "example.org:9000".parse().unwrap());
        assert_eq!(PublicUrl::FromRequest.base(&h), "http://example.org:9000");
        assert_eq!(PublicUrl::FromRequestTls.base(&h), "https://example.org:9000");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "data.example.org".parse().unwrap());
        assert_eq!(PublicUrl::FromRequest.base(&h), "https://data.example.org");
        assert_eq!(
            PublicUrl::Fixed("https://x.org/cloudify/".into()).base(&h),
            "https://x.org/cloudify"
        );
        let mut bad = HeaderMap::new();
        bad.insert("host", "evil.org/path".parse().unwrap());
        assert_eq!(PublicUrl::FromRequest.base(&bad), "http://localhost");
    }
}

//! Store configuration: a `DatasetSpec.storage` (and its credentials file) to a [`Store`],
//! the same way for every store kind.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use cloudify_crds::StorageSpec;
use object_store::ClientConfigKey;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;

use super::{ObjectUrl, Store, StoreKind};

/// Defaults of [`StorageSpec`]'s tunables.
const DEFAULT_CONCURRENCY: u32 = 32;
const DEFAULT_TIMEOUT_S: u64 = 30;
const DEFAULT_RETRIES: u32 = 10;
const DEFAULT_RETRY_TIMEOUT_S: u64 = 60;

/// Reads `(key, value)` pairs from a credentials file: one JSON object of strings, or
/// `key=value` lines (`#` comments, optional `export ` and quotes, as in env files).
/// Errors name the file and line, never a value.
pub fn read_credentials_file(path: &FsPath) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| format!("credentials file {}: invalid JSON: {e}", path.display()))?;
        return map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Bool(b) => Ok((k, b.to_string())),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                _ => Err(format!(
                    "credentials file {}: '{k}' must be a string",
                    path.display()
                )),
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "credentials file {} line {}: expected key=value",
                path.display(),
                i + 1
            ));
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

/// Options from the credentials file, then `options` (which win), keys lower-cased.
fn collect_options(spec: &StorageSpec) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Some(f) = &spec.credentials_file {
        out.extend(read_credentials_file(FsPath::new(f))?);
    }
    out.extend(spec.options.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(out
        .into_iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v))
        .collect())
}

fn parse_key<K: std::str::FromStr>(kind: &str, key: &str) -> Result<K, String> {
    key.parse().map_err(|_| format!("unknown {kind} option '{key}'"))
}

/// An `object_store` builder as configured here: client settings and options by key, then
/// built. One implementation per store kind; [`build_store`] does the rest once for all.
trait Builder: Sized {
    /// The builder's configuration keys (`AmazonS3ConfigKey`, ...).
    type Key: std::str::FromStr;
    /// Its name in messages about unknown options.
    const KIND: &'static str;
    fn client_key(k: ClientConfigKey) -> Self::Key;
    fn config(self, k: Self::Key, v: String) -> Self;
    fn finish(self) -> object_store::Result<Arc<dyn ObjectStore>>;
}

macro_rules! builder {
    ($b:ty, $key:ty, $kind:literal, $client:expr) => {
        impl Builder for $b {
            type Key = $key;
            const KIND: &'static str = $kind;
            fn client_key(k: ClientConfigKey) -> Self::Key {
                $client(k)
            }
            fn config(self, k: Self::Key, v: String) -> Self {
                self.with_config(k, v)
            }
            fn finish(self) -> object_store::Result<Arc<dyn ObjectStore>> {
                // With traces on, each HTTP request of the store carries the W3C
                // `traceparent` of its object-store span; off, the default client as before.
                let b = if cloudify_telemetry::enabled() {
                    self.with_http_connector(TracedConnector)
                } else {
                    self
                };
                Ok(Arc::new(b.build()?))
            }
        }
    };
}

builder!(
    AmazonS3Builder,
    AmazonS3ConfigKey,
    "S3",
    AmazonS3ConfigKey::Client
);
builder!(
    GoogleCloudStorageBuilder,
    GoogleConfigKey,
    "GCS",
    GoogleConfigKey::Client
);
builder!(
    MicrosoftAzureBuilder,
    AzureConfigKey,
    "Azure",
    AzureConfigKey::Client
);
builder!(
    HttpBuilder,
    ClientConfigKey,
    "HTTP client",
    std::convert::identity
);

/// `b` with the client settings, then the options (credentials file, then `options`) by key.
fn configured<B: Builder>(
    mut b: B,
    client: &[(ClientConfigKey, String)],
    opts: Vec<(String, String)>,
) -> Result<B, String> {
    for (k, v) in client {
        b = b.config(B::client_key(*k), v.clone());
    }
    for (k, v) in opts {
        b = b.config(parse_key::<B::Key>(B::KIND, &k)?, v);
    }
    Ok(b)
}

/// Builds the store serving `url`'s bucket/container/host. Environment variables are read
/// first (as `object_store`'s `from_env` builders do), then the spec overrides them.
pub fn build_store(url: &ObjectUrl, spec: Option<&StorageSpec>) -> Result<Arc<Store>, String> {
    // reqwest is built without a bundled TLS provider: use ring, as the server's TLS does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let default = StorageSpec::default();
    let spec = spec.unwrap_or(&default);
    let timeout = Duration::from_secs(spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_S));
    let retry_timeout = Duration::from_secs(spec.retry_timeout_seconds.unwrap_or(DEFAULT_RETRY_TIMEOUT_S));
    // Client settings go in as configuration keys, on top of what `from_env` read (a whole
    // `ClientOptions` would reset e.g. `AWS_ALLOW_HTTP`).
    let mut client = vec![
        (ClientConfigKey::Timeout, format!("{}s", timeout.as_secs())),
        (
            ClientConfigKey::ConnectTimeout,
            format!("{}s", timeout.as_secs().min(10)),
        ),
    ];
    if spec.allow_http {
        client.push((ClientConfigKey::AllowHttp, "true".to_string()));
    }
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: spec.max_retries.unwrap_or(DEFAULT_RETRIES) as usize,
        retry_timeout,
    };
    let opts = collect_options(spec)?;
    let limit = spec.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1) as usize;
    let base = url.base.clone();
    let built = match url.kind {
        StoreKind::S3 => {
            let mut b = configured(
                AmazonS3Builder::from_env().with_url(base).with_retry(retry),
                &client,
                opts,
            )?;
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(r) = &spec.region {
                b = b.with_region(r.clone());
            }
            if spec.allow_http {
                b = b.with_allow_http(true);
            }
            if spec.anonymous {
                b = b.with_skip_signature(true);
            }
            b.finish()
        }
        StoreKind::Gcs => {
            if spec.endpoint.is_some() || spec.region.is_some() {
                return Err(format!(
                    "{}: storage.endpoint/region are not used for gs:// (set options.google_base_url)",
                    url.base
                ));
            }
            let mut b = configured(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(base)
                    .with_retry(retry),
                &client,
                opts,
            )?;
            if spec.anonymous {
                b = b.with_skip_signature(true);
            }
            b.finish()
        }
        StoreKind::Azure => {
            let mut b = configured(
                MicrosoftAzureBuilder::from_env().with_url(base).with_retry(retry),
                &client,
                opts,
            )?;
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if spec.allow_http {
                b = b.with_allow_http(true);
            }
            if spec.anonymous {
                b = b.with_skip_signature(true);
            }
            b.finish()
        }
        StoreKind::Http => {
            configured(HttpBuilder::new().with_url(base).with_retry(retry), &client, opts)?.finish()
        }
    };
    let inner = built.map_err(|e| format!("cannot configure {}: {e}", url.base))?;
    // One concurrency limit per store, whatever its kind.
    let inner: Arc<dyn ObjectStore> = Arc::new(object_store::limit::LimitStore::new(inner, limit));
    Ok(Arc::new(Store {
        base: url.base.clone(),
        inner,
        op_timeout: retry_timeout + timeout,
        tape: None,
    }))
}

/// `object_store`'s default reqwest client with the current span's W3C `traceparent` added to
/// every request (only installed when traces are on), so that an object store or an HTTP
/// server that traces joins the request's trace.
#[derive(Debug)]
struct TracedConnector;

impl object_store::client::HttpConnector for TracedConnector {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let inner = object_store::client::HttpConnector::connect(
            &object_store::client::ReqwestConnector::default(),
            options,
        )?;
        Ok(object_store::client::HttpClient::new(TracedClient(inner)))
    }
}

#[derive(Debug)]
struct TracedClient(object_store::client::HttpClient);

/// `HttpService` is an `async_trait`; this is its expansion (the crate is not a dependency).
impl object_store::client::HttpService for TracedClient {
    fn call<'life0, 'async_trait>(
        &'life0 self,
        mut req: object_store::client::HttpRequest,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<object_store::client::HttpResponse, object_store::client::HttpError>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        cloudify_telemetry::inject(req.headers_mut());
        Box::pin(self.0.execute(req))
    }
}

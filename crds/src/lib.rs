//! API types shared by every cloudify component.
//!
//! [`DatasetSpec`] is the one description of a dataset: it is an entry of the on-prem
//! `cloudify serve --config` file *and* the `spec.dataset` of the `CloudifyDataset` custom
//! resource (module `k8s`, behind the cargo feature `k8s` so the server does not compile
//! kube). Keeping one type means a dataset that works on a laptop works in the cluster, and
//! the CRD schema is generated from the same code that parses the config file.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "catalog-client")]
pub mod catalog_client;
#[cfg(feature = "k8s")]
pub mod k8s;

/// One dataset: where its files are and how they combine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = name_required)]
pub struct DatasetSpec {
    /// Dataset id, used in URLs (`/datasets/{name}/zarr`). Letters, digits, `-`, `_`, `.`.
    /// Required in a `cloudify serve --config` file; in a `CloudifyDataset` it defaults to the
    /// resource's `metadata.name`.
    // The schema pattern mirrors `validate_name` so the CRD rejects bad names at admission.
    // `serde(default)` lets a CloudifyDataset leave the name out (the operator fills it from
    // `metadata.name`, see `k8s::CloudifyDataset::resolve_defaults`); a config file without it
    // still fails, in `validate` ("required"), and the schema keeps it required
    // (`name_required` on the struct) except where the CRD's `spec.dataset` drops that.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"))]
    pub name: String,
    /// Source files: paths, `file://` URLs or glob patterns, or object URLs
    /// (`s3://bucket/prefix/*.nc`, `gs://`, `az://`/`abfs://`, `https://`/`http://`).
    /// Globs over object stores list the prefix up to the first wildcard; plain HTTP
    /// servers cannot be listed, so `http(s)://` sources are explicit URLs. All matches are
    /// aggregated into one dataset.
    #[schemars(length(min = 1))]
    pub sources: Vec<String>,
    /// Format of the sources. `auto` (the default) decides per dataset: paths ending in
    /// `.json`, `.parquet` or `.parq` are kerchunk references, directories holding an Icechunk
    /// repository (`repo` and `snapshots/`) are Icechunk, directories with `zarr.json`,
    /// `.zgroup`/`.zarray` (or ending in `.zarr`) are Zarr stores, everything else is read as
    /// netCDF/HDF5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    /// Directories that chunk references (kerchunk sources, virtual chunks of Icechunk
    /// repositories) may point into, besides the directory holding the reference file (the
    /// repository) itself. A reference anywhere else is refused when the dataset opens, so a
    /// reference file cannot expose arbitrary server files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_roots: Vec<String>,
    /// Which version of an Icechunk repository to serve (Icechunk sources only): one of
    /// `branch`, `tag` or `snapshot`; default: the tip of branch `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icechunk: Option<IcechunkVersion>,
    /// How to reach object-store sources (endpoint, credentials, retries). Ignored for local
    /// files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Dimension along which multiple files are concatenated. Default: the unlimited
    /// dimension of the first file, else `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat_dim: Option<String>,
    /// Human-readable title (defaults to the `title` global attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Longer description (defaults to the `summary`/`comment` global attributes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Licence for catalogs (SPDX id such as `CC-BY-4.0`; defaults to the `license` global
    /// attribute). STAC collections must state one, and model output often has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Catalog keywords (default: the `keywords` global attribute, split at `,`/`;`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Organisations behind the data, as STAC providers (default: the `institution`
    /// global attribute as producer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<Provider>,
    /// Server-side processing: what is served is computed from the sources when a chunk is
    /// requested (lossy BitRound, another chunk grid, derived variables). The sources are
    /// never changed; `/kerchunk` keeps serving them as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<ProcessingSpec>,
    /// Who may read the dataset (default: anyone). Views of a dataset share its access.
    #[serde(default, skip_serializing_if = "DatasetAccess::is_public")]
    pub access: DatasetAccess,
}

/// Who may read a dataset. `public: false` needs at least one way in: static tokens, OIDC
/// JWTs or signed URLs (any of them grants reading).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetAccess {
    /// Anyone who reaches the URL may read (default).
    #[serde(default = "access_public")]
    pub public: bool,
    /// File of accepted bearer tokens, as the lowercase hex SHA-256 of each token, one a line
    /// (`#` starts a comment). Only hashes are stored, so the file (a mounted Secret) never
    /// holds a usable token; it is read again when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// OpenID Connect: JWTs of this issuer are accepted when a claim grants this dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcAccess>,
    /// File holding the secret key of signed URLs (`?expires=<unix seconds>&signature=<hex
    /// HMAC-SHA256>`), for clients that cannot send headers. Trailing whitespace is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_url_key_file: Option<String>,
}

fn access_public() -> bool {
    true
}

impl Default for DatasetAccess {
    fn default() -> Self {
        Self {
            public: true,
            token_file: None,
            oidc: None,
            signed_url_key_file: None,
        }
    }
}

impl DatasetAccess {
    /// Whether anyone may read (the default, left out when serialising).
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// Why these settings cannot be used: the field (relative to `access`) and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let methods = self.token_file.is_some() || self.oidc.is_some() || self.signed_url_key_file.is_some();
        if self.public && methods {
            return Err((
                "public".into(),
                "is true, but credentials are configured: set public: false to require them".into(),
            ));
        }
        if !self.public && !methods {
            return Err((
                "public".into(),
                "is false, but no way in is configured: set tokenFile, oidc or signedUrlKeyFile".into(),
            ));
        }
        for (field, v) in [
            ("tokenFile", &self.token_file),
            ("signedUrlKeyFile", &self.signed_url_key_file),
        ] {
            if v.as_deref().is_some_and(|f| f.trim().is_empty()) {
                return Err((field.into(), "must not be empty".into()));
            }
        }
        if let Some(o) = &self.oidc {
            if !(o.issuer.starts_with("https://") || o.issuer.starts_with("http://")) {
                return Err((
                    "oidc.issuer".into(),
                    format!("'{}' is not an http(s) URL", o.issuer),
                ));
            }
            if o.audience.trim().is_empty() {
                return Err(("oidc.audience".into(), "must not be empty".into()));
            }
            if o.claim.trim().is_empty() {
                return Err(("oidc.claim".into(), "must not be empty".into()));
            }
            if o.grants.is_empty() {
                return Err((
                    "oidc.grants".into(),
                    "name at least one claim value (group or scope) that may read this dataset".into(),
                ));
            }
            if o.algorithms.is_empty() {
                return Err(("oidc.algorithms".into(), "name at least one algorithm".into()));
            }
            for a in &o.algorithms {
                if !OIDC_ALGORITHMS.contains(&a.as_str()) {
                    return Err((
                        "oidc.algorithms".into(),
                        format!("'{a}' is not accepted; one of {}", OIDC_ALGORITHMS.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Signature algorithms an OIDC-protected dataset may accept: asymmetric ones only (a
/// shared-secret HS256 token would need the issuer's secret here; `none` is never accepted).
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// JWTs of one OpenID Connect issuer, and which of their claim values grant reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcAccess {
    /// The issuer URL: must equal the token's `iss`; its keys are found through
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The token's `aud` must contain this.
    pub audience: String,
    /// Claim holding groups or scopes: a list of strings, or one string of space-separated
    /// values (`scope`). Default `groups`.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// Claim values any one of which grants reading this dataset.
    pub grants: Vec<String>,
    /// Accepted signature algorithms (default RS256 and ES256).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_claim() -> String {
    "groups".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

/// Processing of a dataset's variables, applied per served chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessingSpec {
    /// Lossy compression as numcodecs `BitRound`: float mantissas rounded (ties to even) to
    /// `keepbits` bits, served as ordinary values that compress better. No client codec is
    /// needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitround: Option<BitRoundSpec>,
    /// The served chunk grid: chunk length per dimension name (e.g. `{time: 365, lat: 30,
    /// lon: 30}` for time series). Dimensions not named keep their chunking.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chunks: std::collections::BTreeMap<String, u64>,
    /// Variables computed from others by an expression, by name (e.g. `tas_degC: {expr:
    /// "tas - 273.15", attrs: {units: degC}}`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub variables: std::collections::BTreeMap<String, DerivedVariable>,
    /// Reduced datasets derived from this one, by name, each served as a dataset of its own
    /// with id `{dataset}.{view}` (e.g. `monthly: {resample: {time: month, reduce: mean}}`,
    /// `climatology: {groupby: {by: time.month, reduce: mean}, variables: [tas]}`). Views
    /// reduce the served variables (after `chunks`, `bitround` and `variables`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub views: std::collections::BTreeMap<String, ViewSpec>,
}

/// A reduced dataset: exactly one of `groupby` and `resample`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ViewSpec {
    /// Group along a coordinate and reduce each group (`xarray`'s `ds.groupby(by)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupby: Option<GroupBySpec>,
    /// Reduce the time axis over calendar periods (`xarray`'s `ds.resample(time=...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample: Option<ResampleSpec>,
    /// The variables reduced; default: every numeric data variable along the reduced
    /// dimension (coordinates and their bounds excluded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<String>,
}

/// `groupby`: the key, and how each group is reduced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupBySpec {
    /// `time.month`, `time.season`, `time.year`, `time.dayofyear`, `time.hour` (any CF time
    /// coordinate in place of `time`), or the name of a 1-D coordinate.
    #[schemars(length(min = 1))]
    pub by: String,
    /// The reduction of each group.
    pub reduce: Reduce,
}

/// `resample`: the period length of the time axis, and how each period is reduced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResampleSpec {
    /// The period: `hour`, `day`, `month`, `season` (quarters starting in December, as
    /// pandas' `QS-DEC`) or `year`; labels are the periods' starts.
    pub time: Frequency,
    /// The reduction of each period.
    pub reduce: Reduce,
    /// The time dimension (default `time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<String>,
}

/// A reduction, with xarray's semantics (NaN skipped, `std`/`var` with `ddof=0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(
    missing_docs,
    reason = "the names say it: xarray's reductions of the same name"
)]
pub enum Reduce {
    #[default]
    Mean,
    Sum,
    Min,
    Max,
    Count,
    Std,
    Var,
    Median,
    First,
    Last,
}

impl Reduce {
    /// Every reduction, in the order documented.
    pub const ALL: [Reduce; 10] = [
        Reduce::Mean,
        Reduce::Sum,
        Reduce::Min,
        Reduce::Max,
        Reduce::Count,
        Reduce::Std,
        Reduce::Var,
        Reduce::Median,
        Reduce::First,
        Reduce::Last,
    ];

    /// The name, as written in specs and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reduce::Mean => "mean",
            Reduce::Sum => "sum",
            Reduce::Min => "min",
            Reduce::Max => "max",
            Reduce::Count => "count",
            Reduce::Std => "std",
            Reduce::Var => "var",
            Reduce::Median => "median",
            Reduce::First => "first",
            Reduce::Last => "last",
        }
    }

    /// The reduction of that name (`None` for anything else).
    pub fn parse(s: &str) -> Option<Reduce> {
        Reduce::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A resampling period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs, reason = "the names say it")]
pub enum Frequency {
    Hour,
    Day,
    #[default]
    Month,
    Season,
    Year,
}

impl Frequency {
    /// The name, as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Frequency::Hour => "hour",
            Frequency::Day => "day",
            Frequency::Month => "month",
            Frequency::Season => "season",
            Frequency::Year => "year",
        }
    }
}

impl ProcessingSpec {
    /// Checks what can be checked without the data (names, ranges); the rest (variables
    /// exist, expressions type-check) is checked when the dataset opens. `Err((field,
    /// reason))`, the field relative to `processing`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(b) = &self.bitround {
            if let Some(k) = b.keepbits
                && k > 52
            {
                return Err((
                    "bitround.keepbits".into(),
                    format!("{k} is more than the 52 mantissa bits of float64"),
                ));
            }
            for (v, k) in &b.variables {
                if *k > 52 {
                    return Err((
                        format!("bitround.variables.{v}"),
                        format!("{k} is more than the 52 mantissa bits of float64"),
                    ));
                }
            }
        }
        for (dim, n) in &self.chunks {
            if *n == 0 {
                return Err((format!("chunks.{dim}"), "must be at least 1".into()));
            }
        }
        for (name, v) in &self.variables {
            if let Err(reason) = validate_name(name) {
                return Err((format!("variables.{name}"), reason));
            }
            if v.expr.trim().is_empty() {
                return Err((format!("variables.{name}.expr"), "must not be empty".into()));
            }
        }
        for (name, v) in &self.views {
            if let Err(reason) = validate_name(name) {
                return Err((format!("views.{name}"), reason));
            }
            match (&v.groupby, &v.resample) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err((
                        format!("views.{name}"),
                        "set exactly one of groupby and resample".into(),
                    ));
                }
                (Some(g), None) if g.by.trim().is_empty() => {
                    return Err((format!("views.{name}.groupby.by"), "must not be empty".into()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Which float variables are rounded, and to how many mantissa bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BitRoundSpec {
    /// Mantissa bits kept in every float variable that is not a coordinate (float32: 0-23,
    /// float64: 0-52).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 52))]
    pub keepbits: Option<u32>,
    /// Mantissa bits kept per variable name (overrides `keepbits`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub variables: std::collections::BTreeMap<String, u32>,
}

/// A variable computed from others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DerivedVariable {
    /// The expression (arithmetic, comparisons, `where`, `sqrt`, `abs`, `exp`, `log`,
    /// `hypot`, `min`, `max`, `clip`, constants) over the dataset's variables. Parsed and
    /// type-checked when the dataset opens; never run as code.
    #[schemars(length(min = 1))]
    pub expr: String,
    /// Text attributes of the result (`units`, `long_name`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attrs: std::collections::BTreeMap<String, String>,
}

/// Lists `name` as required in the schema of [`DatasetSpec`]: its serde default (for the CRD,
/// where it defaults to `metadata.name`) would otherwise make it optional for every user of
/// the schema, while a config file must name each dataset.
fn name_required(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        let required = obj
            .entry("required")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(r) = required
            && !r.iter().any(|f| f == "name")
        {
            r.insert(0, "name".into());
        }
    }
}

/// How the sources of a dataset are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Decide from the path (see [`DatasetSpec::format`]).
    #[default]
    Auto,
    /// netCDF-3, netCDF-4 or HDF5 files.
    Netcdf,
    /// Zarr v2 or v3 stores (local directories).
    Zarr,
    /// kerchunk/fsspec references: JSON (v0 or v1) files or Parquet reference directories.
    Kerchunk,
    /// Icechunk repositories (local directories), regular or with virtual chunks.
    Icechunk,
}

/// A version of an Icechunk repository: a branch tip, a tag or a snapshot id. At most one
/// field may be set, since a repository is served as of exactly one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcechunkVersion {
    /// Branch whose tip is served (read when the dataset opens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag naming the snapshot to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Snapshot id (20 characters, Crockford base32, as `repo.ancestry()` prints them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Access to the object store holding a dataset's sources.
///
/// Credentials come, in increasing priority, from the environment (`AWS_*`, `GOOGLE_*`,
/// `AZURE_*`, as the `object_store` crate reads them), from `credentialsFile`, and from
/// `options`. Secrets belong in the file (in Kubernetes: a mounted Secret), not in the config,
/// which is shown in catalogs and logs; values are never logged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Endpoint of an S3-compatible service (MinIO, Ceph, moto...) or of an Azure/GCS
    /// emulator, e.g. `http://127.0.0.1:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Public data: send unsigned requests and look for no credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
    /// Allow plain `http://` endpoints (test services, private networks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    /// File with credentials and further options: `key=value` lines or one JSON object, keys
    /// as in `options` (e.g. `aws_access_key_id`, `aws_secret_access_key`,
    /// `azure_storage_account_key`, `google_service_account_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Further `object_store` configuration keys (e.g. `aws_virtual_hosted_style_request`,
    /// `azure_storage_account_name`), case-insensitive. Unknown keys are rejected.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
    /// Requests in flight to this store at most (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
    /// Timeout of one HTTP request in seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
    /// Retries of a failed request (5xx, throttling, connection errors; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Time after which a request is no longer retried, in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retry_timeout_seconds: Option<u64>,
    /// The sources' data files are in a tape archive: reference targets that are plain
    /// paths are archive paths, recalled by `tape.driver` into `tape.stagingDir` and read
    /// from there. Metadata comes from the reference files (no recall to open a dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape: Option<TapeSpec>,
}

/// A tape archive (StrongLink `slk`, dCache/CTA through the WLCG Tape REST API) the data
/// files are recalled from. Defaults follow DKRZ's limits for `slk recall`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapeSpec {
    /// How files are recalled.
    pub driver: TapeDriver,
    /// Directory recalled files are kept in, mirroring their archive paths (an emptyDir or
    /// PVC in Kubernetes). Files are written under a temporary name and renamed when complete.
    #[schemars(length(min = 1))]
    pub staging_dir: String,
    /// Bytes the staging directory may hold; least recently used files that are not being
    /// read are evicted to make room (default 100 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub budget_bytes: Option<u64>,
    /// How long a request for a nearline file waits for its recall before it is answered
    /// 503 with `Retry-After` (default 20 s; at most 55, below the ingress' 60 s timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 55))]
    pub wait_seconds: Option<u64>,
    /// Requests for files are collected this long and recalled together, per tape
    /// (default 500 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window_ms: Option<u64>,
    /// Tapes one recall job may span at most (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tapes_per_job: Option<u32>,
    /// Recall jobs running at once at most (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel_jobs: Option<u32>,
    /// How often a running job's status is asked for, in milliseconds (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub poll_ms: Option<u64>,
    /// `Retry-After` when the driver gives no estimate of its own, in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retry_after_seconds: Option<u64>,
    /// First wait before a failed recall is tried again, in seconds; doubled per failure up
    /// to an hour (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_backoff_seconds: Option<u64>,
    /// How often the archive is asked whether it answers, in seconds (default 60; the WLCG
    /// driver asks `archiveinfo` for one of the dataset's files, so the endpoint, the token
    /// and the path mapping are all checked). An archive that does not answer is reported
    /// in `/status` (`tape.state: failing`) and on the CloudifyDataset (`Degraded=True,
    /// TapeUnavailable`) while staged files are still served; a failed recall asks again at
    /// once. The command driver's programs are checked when the dataset opens instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub health_check_seconds: Option<u64>,
    /// Files one recall job (one WLCG stage request, one `slk recall`) names at most
    /// (default 1000). Files without tape information (the WLCG API gives none: the site
    /// orders one request's files by tape itself) are batched into requests of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_files_per_job: Option<u32>,
    /// netCDF sources on tape without an index yet (none in the index cache): how long
    /// opening the dataset waits for their recall before the dataset is reported failed,
    /// naming the job (default 3600 s). The server does not wait for it: it serves at once,
    /// the dataset is `opening` meanwhile (its requests answer 503 with `Retry-After`). The
    /// recall goes on; the index is built from the staged copies and kept in the index cache,
    /// so later starts need no recall to open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_seconds: Option<u64>,
    /// Kubernetes only (the operator; the server ignores it): the volume mounted at
    /// `stagingDir`. Absent: an `emptyDir` without a size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<TapeCacheVolume>,
}

/// The staging cache's volume in Kubernetes. An `emptyDir` with `sizeLimit: size` (each pod
/// its own cache, lost with the pod), or with `storageClassName` or `persistent: true` a
/// PersistentVolumeClaim `<name>-tape-cache` of that size, owned by the CloudifyDataset (staged
/// files survive pod restarts; one pod only, `replicas.max: 1`: processes do not share a
/// budget). Unless `budgetBytes` is set, the budget is 90% of `size` (room for the file being
/// written under its temporary name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapeCacheVolume {
    /// Size as a Kubernetes quantity, e.g. `500Gi`.
    #[schemars(length(min = 1))]
    pub size: String,
    /// Storage class of the PersistentVolumeClaim (implies `persistent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// A PersistentVolumeClaim (of the cluster's default storage class unless
    /// `storageClassName` names one) instead of an `emptyDir`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
}

impl TapeCacheVolume {
    /// True when the cache is a PersistentVolumeClaim rather than an `emptyDir`.
    pub fn is_persistent(&self) -> bool {
        self.persistent || self.storage_class_name.is_some()
    }
}

/// Bytes of a Kubernetes quantity (`500Gi`, `1.5T`, `100M`, `2e9`, `1048576`); `None` when it
/// is not one (or is fractional bytes, negative, or overflows).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let (num, factor) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let bytes = num.parse::<f64>().ok()? * factor;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// How files are recalled from tape: exactly one of `command` and `wlcg`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapeDriver {
    /// Recall by running commands (`slk`, `slk_helpers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<TapeCommandDriver>,
    /// Recall through the WLCG Tape REST API (dCache, CTA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wlcg: Option<TapeWlcgDriver>,
}

/// Commands run for a recall, as argument lists (no shell). Placeholders: `{files}` (one
/// argument per archive path), `{file}`, `{job}`, `{dest}` (the staging path of `{file}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapeCommandDriver {
    /// Starts a recall of `{files}`; its output holds the job id (e.g.
    /// `[slk, recall, {files}]`).
    #[schemars(length(min = 1))]
    pub recall: Vec<String>,
    /// Regular expression whose first group is the job id in the recall's output
    /// (default: the first run of digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id_regex: Option<String>,
    /// Prints the state of `{job}` (e.g. `[slk_helpers, job_status, {job}]`): output
    /// containing `SUCCESSFUL`/`COMPLETED` is done, `FAILED`/`ABORTED` failed, anything else
    /// is still running.
    #[schemars(length(min = 1))]
    pub status: Vec<String>,
    /// Regular expression whose first group is the job's estimated seconds to completion in
    /// the status output (then used as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_regex: Option<String>,
    /// Copies the recalled `{file}` to `{dest}` (e.g. `[slk, retrieve, {file}, {dest}]`).
    #[schemars(length(min = 1))]
    pub retrieve: Vec<String>,
    /// Prints the tape of each of `{files}`, one `path tape` pair per line (e.g.
    /// `[slk_helpers, group_files_by_tape, {files}]`); without it every file is its own group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tape_of: Vec<String>,
    /// Seconds one command may run (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
}

/// A WLCG Tape REST API endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapeWlcgDriver {
    /// The API's base URL, e.g. `https://dcache.example.org:3880/api/v1/tape`.
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// Where staged files are read from: this URL followed by the archive path (WebDAV
    /// door), e.g. `https://dcache.example.org:2880`.
    #[schemars(length(min = 1))]
    pub data_url: String,
    /// File holding the bearer token (re-read for every request: tokens are rotated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// How long the site keeps a staged file on disk for us (the stage request's
    /// `diskLifetime`), in seconds. Each file is released as soon as its copy is in the
    /// staging cache, so the pin only matters until then. Absent: the site's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pin_lifetime_seconds: Option<u64>,
}

/// A STAC provider: who produced, processed or hosts the data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    /// Organisation name, as catalogs show it.
    pub name: String,
    /// What the organisation did with the data, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Any of `licensor`, `producer`, `processor`, `host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Home page of the organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Why a [`DatasetSpec`] is not acceptable. Messages name the field: `index` is the
/// dataset's position in the config (0 in a `CloudifyDataset`), `name` its name.
#[derive(Debug, thiserror::Error, PartialEq)]
#[allow(missing_docs, reason = "variant fields: index, name and reason, as above")]
pub enum SpecError {
    /// The dataset name is missing or not a usable id.
    #[error("datasets[{index}].name: {reason}")]
    Name { index: usize, reason: String },
    /// `sources` is empty.
    #[error("datasets[{index}].sources: at least one source is required (dataset '{name}')")]
    NoSources { index: usize, name: String },
    /// One source (`source_index`) is unusable.
    #[error("datasets[{index}].sources[{source_index}]: {reason} (dataset '{name}')")]
    Source {
        index: usize,
        source_index: usize,
        name: String,
        reason: String,
    },
    /// Two datasets of one config share a name (their URLs would collide).
    #[error("datasets[{index}].name: duplicate dataset name '{name}'")]
    Duplicate { index: usize, name: String },
    /// `concatDim` is set but empty.
    #[error("datasets[{index}].concatDim: must not be empty (dataset '{name}')")]
    ConcatDim { index: usize, name: String },
    /// The Icechunk version is ambiguous, empty, or given for sources that are not Icechunk.
    #[error("datasets[{index}].icechunk: {reason} (dataset '{name}')")]
    Icechunk {
        index: usize,
        name: String,
        reason: String,
    },
    /// A `storage` setting is out of range (`field` names it).
    #[error("datasets[{index}].storage.{field}: {reason} (dataset '{name}')")]
    Storage {
        index: usize,
        name: String,
        field: &'static str,
        reason: String,
    },
    /// An `access` setting is unusable (`field` is relative to `access`).
    #[error("datasets[{index}].access.{field}: {reason} (dataset '{name}')")]
    Access {
        index: usize,
        name: String,
        field: String,
        reason: String,
    },
    /// A `processing` setting is unusable (`field` is relative to `processing`).
    #[error("datasets[{index}].processing.{field}: {reason} (dataset '{name}')")]
    Processing {
        index: usize,
        name: String,
        field: String,
        reason: String,
    },
}

/// Checks a dataset name is usable as one URL path segment.
///
/// The name lands in URLs, file names of caches and Kubernetes object names, so it is kept to
/// a conservative alphabet instead of being escaped everywhere.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required: a dataset id of letters, digits, '-', '_' and '.'".into());
    }
    if name.len() > 128 {
        return Err(format!("'{name}' is longer than 128 characters"));
    }
    if name.starts_with('.') {
        return Err(format!("'{name}' must not start with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "'{name}' contains '{c}'; allowed are letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl DatasetSpec {
    /// A spec with just a name and sources; everything else defaults.
    pub fn new(name: impl Into<String>, sources: Vec<String>) -> Self {
        Self {
            name: name.into(),
            sources,
            ..Self::default()
        }
    }

    /// Validates one spec; `index` is its position in the config, used in messages.
    pub fn validate(&self, index: usize) -> Result<(), SpecError> {
        validate_name(&self.name).map_err(|reason| SpecError::Name { index, reason })?;
        if self.sources.is_empty() {
            return Err(SpecError::NoSources {
                index,
                name: self.name.clone(),
            });
        }
        for (source_index, s) in self.sources.iter().enumerate() {
            if s.trim().is_empty() {
                return Err(SpecError::Source {
                    index,
                    source_index,
                    name: self.name.clone(),
                    reason: "must not be empty".into(),
                });
            }
        }
        if matches!(&self.concat_dim, Some(d) if d.is_empty()) {
            return Err(SpecError::ConcatDim {
                index,
                name: self.name.clone(),
            });
        }
        if let Some(v) = &self.icechunk {
            let set = [&v.branch, &v.tag, &v.snapshot];
            let err = |reason: &str| SpecError::Icechunk {
                index,
                name: self.name.clone(),
                reason: reason.into(),
            };
            if set.iter().filter(|f| f.is_some()).count() > 1 {
                return Err(err("set at most one of branch, tag and snapshot"));
            }
            if set.iter().any(|f| f.as_deref().is_some_and(str::is_empty)) {
                return Err(err("branch, tag and snapshot must not be empty"));
            }
            if !matches!(
                self.format,
                None | Some(SourceFormat::Auto | SourceFormat::Icechunk)
            ) {
                return Err(err(
                    "only Icechunk sources have versions; drop `icechunk` or set format: icechunk",
                ));
            }
        }
        if let Some(st) = &self.storage {
            let err = |field: &'static str, reason: &str| SpecError::Storage {
                index,
                name: self.name.clone(),
                field,
                reason: reason.into(),
            };
            if st.max_concurrency == Some(0) {
                return Err(err("maxConcurrency", "must be at least 1"));
            }
            if st.timeout_seconds == Some(0) {
                return Err(err("timeoutSeconds", "must be at least 1"));
            }
            if st.retry_timeout_seconds == Some(0) {
                return Err(err("retryTimeoutSeconds", "must be at least 1"));
            }
            if st.endpoint.as_deref().is_some_and(|e| !e.contains("://")) {
                return Err(err("endpoint", "must be a URL such as http://host:9000"));
            }
            if let Some(t) = &st.tape {
                match (&t.driver.command, &t.driver.wlcg) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(err("tape.driver", "set exactly one of command and wlcg"));
                    }
                    (Some(c), None)
                        if c.recall.is_empty() || c.status.is_empty() || c.retrieve.is_empty() =>
                    {
                        return Err(err(
                            "tape.driver.command",
                            "recall, status and retrieve must each name a command",
                        ));
                    }
                    (None, Some(w)) if !w.endpoint.contains("://") || !w.data_url.contains("://") => {
                        return Err(err("tape.driver.wlcg", "endpoint and dataUrl must be URLs"));
                    }
                    _ => {}
                }
                if t.staging_dir.is_empty() {
                    return Err(err("tape.stagingDir", "must name a directory"));
                }
                if t.wait_seconds.is_some_and(|w| w > 55) {
                    return Err(err(
                        "tape.waitSeconds",
                        "must be at most 55 (below the ingress' 60 s timeout)",
                    ));
                }
                if t.budget_bytes == Some(0)
                    || t.max_tapes_per_job == Some(0)
                    || t.max_parallel_jobs == Some(0)
                    || t.max_files_per_job == Some(0)
                {
                    return Err(err(
                        "tape",
                        "budgetBytes, maxTapesPerJob, maxParallelJobs and maxFilesPerJob must be at least 1",
                    ));
                }
                if t.driver
                    .wlcg
                    .as_ref()
                    .is_some_and(|w| w.pin_lifetime_seconds == Some(0))
                {
                    return Err(err("tape.driver.wlcg.pinLifetimeSeconds", "must be at least 1"));
                }
                if let Some(c) = &t.cache {
                    let Some(size) = quantity_bytes(&c.size) else {
                        return Err(err(
                            "tape.cache.size",
                            "must be a Kubernetes quantity of at least one byte, e.g. 500Gi",
                        ));
                    };
                    if t.budget_bytes.is_some_and(|b| b > size) {
                        return Err(err(
                            "tape.budgetBytes",
                            "is larger than tape.cache.size: the staging volume would fill up before the budget evicts",
                        ));
                    }
                    if c.storage_class_name.as_deref().is_some_and(str::is_empty) {
                        return Err(err("tape.cache.storageClassName", "must not be empty"));
                    }
                }
            }
        }
        self.access
            .validate()
            .map_err(|(field, reason)| SpecError::Access {
                index,
                name: self.name.clone(),
                field,
                reason,
            })?;
        if let Some(p) = &self.processing {
            p.validate().map_err(|(field, reason)| SpecError::Processing {
                index,
                name: self.name.clone(),
                field,
                reason,
            })?;
        }
        Ok(())
    }
}

/// The on-prem configuration file of `cloudify serve --config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeConfig {
    /// The datasets to serve.
    pub datasets: Vec<DatasetSpec>,
}

impl ServeConfig {
    /// Parses a YAML (or JSON) config and validates every dataset.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: ServeConfig = serde_yaml::from_str(text).map_err(ConfigError::Parse)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Validates every dataset and that names are unique.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.datasets.iter().enumerate() {
            d.validate(i)?;
            if !seen.insert(d.name.clone()) {
                return Err(SpecError::Duplicate {
                    index: i,
                    name: d.name.clone(),
                });
            }
            // each view is served as the dataset `{name}.{view}`: that id must be free too
            for view in d.processing.iter().flat_map(|p| p.views.keys()) {
                let id = format!("{}.{view}", d.name);
                if !seen.insert(id.clone()) {
                    return Err(SpecError::Duplicate { index: i, name: id });
                }
            }
        }
        Ok(())
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML/JSON of the config's shape (the parser names line and column).
    #[error("{0}")]
    Parse(serde_yaml::Error),
    /// Well-formed, but a dataset spec is not acceptable.
    #[error(transparent)]
    Spec(#[from] SpecError),
}

#[cfg(test)]
mod tests {

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        assert_eq!(quantity_bytes("500Gi"), Some(500 << 30));
        assert_eq!(quantity_bytes("1.5T"), Some(1_500_000_000_000));
        assert_eq!(quantity_bytes("100M"), Some(100_000_000));
        assert_eq!(quantity_bytes("2e9"), Some(2_000_000_000));
        assert_eq!(quantity_bytes("1048576"), Some(1 << 20));
        assert_eq!(quantity_bytes("1Ei"), Some(1 << 60));
        assert_eq!(quantity_bytes("1E"), Some(1_000_000_000_000_000_000));
        for bad in ["", "Gi", "lots", "-5Gi", "10GB", "0", "0.5", "1e400"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn parses_minimal_config() {
        let cfg =
            ServeConfig::from_yaml("datasets: [{name: tas, sources: [\"/data/tas_*.nc\"]}]").expect("valid");
        assert_eq!(cfg.datasets[0].name, "tas");
        assert_eq!(cfg.datasets[0].sources, vec!["/data/tas_*.nc"]);
        assert_eq!(cfg.datasets[0].concat_dim, None);
    }

    #[test]
    fn access_defaults_public_and_needs_a_way_in_when_private() {
        let cfg = ServeConfig::from_yaml("datasets: [{name: a, sources: [x]}]").expect("valid");
        assert!(cfg.datasets[0].access.public);
        let ok = ServeConfig::from_yaml(
            "datasets: [{name: a, sources: [x], access: {public: false, tokenFile: /t, \
             oidc: {issuer: 'https://id.example', audience: cloudify, grants: [cmip]}}}]",
        )
        .expect("valid");
        let o = ok.datasets[0].access.oidc.as_ref().expect("oidc");
        assert_eq!(o.claim, "groups");
        assert_eq!(o.algorithms, vec!["RS256", "ES256"]);
        for (yaml, needle) in [
            ("{public: false}", "access.public: is false"),
            ("{tokenFile: /t}", "access.public: is true"),
            ("{public: false, tokenFile: ' '}", "access.tokenFile"),
            (
                "{public: false, oidc: {issuer: 'https://i', audience: a, grants: [g], algorithms: [none]}}",
                "'none' is not accepted",
            ),
            (
                "{public: false, oidc: {issuer: 'https://i', audience: a, grants: [g], algorithms: [HS256]}}",
                "'HS256' is not accepted",
            ),
            (
                "{public: false, oidc: {issuer: 'https://i', audience: a, grants: []}}",
                "access.oidc.grants",
            ),
            (
                "{public: false, oidc: {issuer: 'ftp://i', audience: a, grants: [g]}}",
                "access.oidc.issuer",
            ),
            ("{public: false, token: x}", "unknown field"),
        ] {
            let err =
                ServeConfig::from_yaml(&format!("datasets: [{{name: a, sources: [x], access: {yaml}}}]"))
                    .unwrap_err();
            assert!(err.to_string().contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn catalog_fields_are_optional_and_parsed() {
        let cfg = ServeConfig::from_yaml(
            "datasets: [{name: a, sources: [x], license: CC-BY-4.0, keywords: [climate], \
             providers: [{name: DKRZ, roles: [host], url: 'https://dkrz.de'}]}]",
        )
        .expect("valid");
        let d = &cfg.datasets[0];
        assert_eq!(d.license.as_deref(), Some("CC-BY-4.0"));
        assert_eq!(d.keywords, vec!["climate"]);
        assert_eq!(d.providers[0].roles, vec!["host"]);
        let err =
            ServeConfig::from_yaml("datasets: [{name: a, sources: [x], providers: [{name: x, role: host}]}]")
                .unwrap_err();
        assert!(err.to_string().contains("role"), "{err}");
    }

    #[test]
    fn format_and_reference_roots() {
        let cfg = ServeConfig::from_yaml(
            "datasets: [{name: a, sources: [r.json], format: kerchunk, referenceRoots: [/data]}]",
        )
        .expect("valid");
        assert_eq!(cfg.datasets[0].format, Some(SourceFormat::Kerchunk));
        assert_eq!(cfg.datasets[0].reference_roots, vec!["/data"]);
        let err = ServeConfig::from_yaml("datasets: [{name: a, sources: [x], format: grib}]").unwrap_err();
        assert!(err.to_string().contains("grib"), "{err}");
    }

    #[test]
    fn icechunk_version_parses_and_validates() {
        let cfg = ServeConfig::from_yaml(
            "datasets:\n- name: r\n  sources: [/data/r]\n  format: icechunk\n  icechunk: {tag: v1}\n",
        )
        .unwrap();
        let d = &cfg.datasets[0];
        assert_eq!(d.format, Some(SourceFormat::Icechunk));
        assert_eq!(d.icechunk.as_ref().unwrap().tag.as_deref(), Some("v1"));
        let both = "datasets:\n- name: r\n  sources: [/data/r]\n  icechunk: {tag: v1, branch: main}\n";
        let e = ServeConfig::from_yaml(both).unwrap_err().to_string();
        assert!(
            e.contains("datasets[0].icechunk") && e.contains("at most one"),
            "{e}"
        );
        let wrong = "datasets:\n- name: r\n  sources: [/data/r]\n  format: zarr\n  icechunk: {branch: dev}\n";
        let e = ServeConfig::from_yaml(wrong).unwrap_err().to_string();
        assert!(e.contains("only Icechunk sources"), "{e}");
        let unknown = "datasets:\n- name: r\n  sources: [/data/r]\n  icechunk: {commit: x}\n";
        let e = ServeConfig::from_yaml(unknown).unwrap_err().to_string();
        assert!(e.contains("commit"), "{e}");
    }

    #[test]
    fn schema_keeps_the_name_required() {
        // `name` has a serde default only so that a CloudifyDataset may leave it out; the
        // schema of a config file still requires it.
        let schema = schemars::schema_for!(ServeConfig);
        let text = serde_json::to_string(&schema).expect("schema serializes");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let required = &v["$defs"]["DatasetSpec"]["required"];
        assert!(
            required.as_array().is_some_and(|r| r.iter().any(|f| f == "name")),
            "{required}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = ServeConfig::from_yaml("datasets: [{name: a, sources: [x], concat: time}]")
            .expect_err("unknown field");
        assert!(err.to_string().contains("concat"), "{err}");
    }

    #[test]
    fn tape_storage_parses_and_is_validated() {
        let ok = "datasets: [{name: a, sources: [r.json], storage: {tape: {stagingDir: /tmp/s, budgetBytes: 1000, \
                  driver: {command: {recall: [slk, recall, '{files}'], status: [slk_helpers, job_status, '{job}'], \
                  retrieve: [slk, retrieve, '{file}', '{dest}']}}}}}]";
        let cfg = ServeConfig::from_yaml(ok).expect("valid");
        let t = cfg.datasets[0]
            .storage
            .as_ref()
            .and_then(|s| s.tape.as_ref())
            .expect("tape");
        assert_eq!(t.budget_bytes, Some(1000));
        let both = ok.replace(
            "driver: {",
            "driver: {wlcg: {endpoint: 'http://h/api', dataUrl: 'http://h'}, ",
        );
        let e = ServeConfig::from_yaml(&both).unwrap_err().to_string();
        assert!(
            e.contains("storage.tape.driver") && e.contains("exactly one"),
            "{e}"
        );
        let long = ok.replace("budgetBytes: 1000", "waitSeconds: 90");
        let e = ServeConfig::from_yaml(&long).unwrap_err().to_string();
        assert!(e.contains("tape.waitSeconds"), "{e}");
        let typo = ok.replace("budgetBytes", "budget");
        assert!(ServeConfig::from_yaml(&typo).is_err());
    }

    #[test]
    fn storage_options_parse_and_validate() {
        let cfg = ServeConfig::from_yaml(
            "datasets: [{name: a, sources: ['s3://b/x/*.nc'], storage: {endpoint: 'http://127.0.0.1:9000', \
             region: us-east-1, allowHttp: true, credentialsFile: /run/secrets/s3, \
             options: {aws_virtual_hosted_style_request: 'false'}, maxConcurrency: 8}}]",
        )
        .expect("valid");
        let st = cfg.datasets[0].storage.as_ref().expect("storage");
        assert!(st.allow_http && !st.anonymous);
        assert_eq!(st.credentials_file.as_deref(), Some("/run/secrets/s3"));
        assert_eq!(st.max_concurrency, Some(8));
        assert_eq!(st.options.len(), 1);
        let err =
            ServeConfig::from_yaml("datasets: [{name: a, sources: [x], storage: {endpont: y}}]").unwrap_err();
        assert!(err.to_string().contains("endpont"), "{err}");
        let err = ServeConfig::from_yaml("datasets: [{name: a, sources: [x], storage: {maxConcurrency: 0}}]")
            .unwrap_err();
        assert!(
            err.to_string().contains("datasets[0].storage.maxConcurrency"),
            "{err}"
        );
        let err =
            ServeConfig::from_yaml("datasets: [{name: a, sources: [x], storage: {endpoint: 'host:9000'}}]")
                .unwrap_err();
        assert!(err.to_string().contains("storage.endpoint"), "{err}");
    }

    #[test]
    fn bad_names_and_duplicates() {
        let err = ServeConfig::from_yaml("datasets: [{name: 'a/b', sources: [x]}]").unwrap_err();
        assert!(err.to_string().contains("datasets[0].name"), "{err}");
        let err = ServeConfig::from_yaml("datasets: [{name: a, sources: [x]}, {name: a, sources: [y]}]")
            .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        // the name may be left out of a CloudifyDataset only, never out of a config file
        let err = ServeConfig::from_yaml("datasets: [{sources: [x]}]").unwrap_err();
        assert!(err.to_string().starts_with("datasets[0].name: required"), "{err}");
        let err = ServeConfig::from_yaml("datasets: [{name: '', sources: [x]}]").unwrap_err();
        assert!(err.to_string().contains("datasets[0].name: required"), "{err}");
        let err = ServeConfig::from_yaml("datasets: [{name: a, sources: []}]").unwrap_err();
        assert!(err.to_string().contains("datasets[0].sources"), "{err}");
        assert!(validate_name("..").is_err());
        assert!(validate_name("ok-name_1.v2").is_ok());
    }
}

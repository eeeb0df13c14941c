//! Who may read which dataset: the per-dataset access settings of the config
//! (`DatasetSpec::access`) turned into checks of one request's credentials.
//!
//! Three ways in, any of which grants a private dataset: a static bearer token whose SHA-256
//! is listed in the dataset's token file ([`tokens`]), a JWT of the dataset's OpenID Connect
//! issuer carrying a granting group or scope ([`oidc`]), or a URL signed with the dataset's
//! key ([`signed`]). The decision names what is wrong in words that never repeat a token or a
//! secret; `http::auth` turns it into 401/403/503 and applies it to every route of the
//! dataset. Below `state` (which holds the [`Access`] registry), above nothing of the crate.

pub mod oidc;
pub mod signed;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use cloudify_crds::{DatasetAccess, DatasetSpec};

/// Why access settings cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A token or key file cannot be read.
    #[error("dataset '{dataset}': access.{field} '{path}': {source}")]
    File {
        /// The dataset.
        dataset: String,
        /// `tokenFile` or `signedUrlKeyFile`.
        field: &'static str,
        /// The configured path.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A line of a token file is not a SHA-256 hex digest.
    #[error(
        "dataset '{dataset}': access.tokenFile '{path}' line {line}: not a SHA-256 hex digest (64 hex digits)"
    )]
    TokenLine {
        /// The dataset.
        dataset: String,
        /// The configured path.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// The HTTP client for OIDC discovery cannot be built.
    #[error("OIDC client: {0}")]
    Client(String),
}

/// The credentials one request carries.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// The `Authorization: Bearer` token, if any (never logged).
    pub bearer: Option<String>,
    /// `Authorization` was present but not a bearer token.
    pub other_scheme: bool,
    /// `expires` and `signature` query parameters of a signed URL.
    pub signed: Option<signed::SignedQuery>,
}

/// The outcome of checking one request against one private dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Readable.
    Allow,
    /// No credentials at all: 401 with a bare challenge.
    Missing,
    /// Credentials that are not valid (malformed, expired, wrong issuer, ...): 401 with
    /// `error="invalid_token"` and this description (no secrets in it).
    Invalid(String),
    /// Valid credentials without the right to this dataset: 403.
    Forbidden(String),
    /// The check cannot be made now (the issuer's keys are unreachable): 503.
    Unavailable(String),
}

/// One private dataset's ways in.
#[derive(Debug)]
pub struct Policy {
    /// Hashes of accepted static tokens.
    pub tokens: Option<tokens::TokenFile>,
    /// The OIDC issuer and what its tokens must say.
    pub oidc: Option<(Arc<oidc::Issuer>, cloudify_crds::OidcAccess)>,
    /// Key of signed URLs.
    pub signing: Option<signed::SigningKey>,
}

/// Access settings of every served dataset: only private ones are listed; anything absent
/// (public datasets, unknown ids) is open.
#[derive(Debug, Default)]
pub struct Access {
    private: HashMap<String, Arc<Policy>>,
}

impl Access {
    /// Reads the token and key files of every private dataset; views (`{name}.{view}`) get
    /// their dataset's policy. Issuers are shared between datasets naming the same URL.
    pub fn from_specs(specs: &[DatasetSpec]) -> Result<Self, AccessError> {
        let mut issuers: HashMap<String, Arc<oidc::Issuer>> = HashMap::new();
        let mut private = HashMap::new();
        for spec in specs {
            let a: &DatasetAccess = &spec.access;
            if a.public {
                continue;
            }
            let tokens = a
                .token_file
                .as_deref()
                .map(|p| tokens::TokenFile::open(&spec.name, p))
                .transpose()?;
            let signing = a
                .signed_url_key_file
                .as_deref()
                .map(|p| signed::SigningKey::open(&spec.name, p))
                .transpose()?;
            let oidc = match &a.oidc {
                Some(o) => {
                    let issuer = match issuers.get(&o.issuer) {
                        Some(i) => i.clone(),
                        None => {
                            let i = Arc::new(oidc::Issuer::new(&o.issuer)?);
                            issuers.insert(o.issuer.clone(), i.clone());
                            i
                        }
                    };
                    Some((issuer, o.clone()))
                }
                None => None,
            };
            let policy = Arc::new(Policy {
                tokens,
                oidc,
                signing,
            });
            private.insert(spec.name.clone(), policy.clone());
            for view in spec.processing.iter().flat_map(|p| p.views.keys()) {
                private.insert(format!("{}.{view}", spec.name), policy.clone());
            }
        }
        Ok(Self { private })
    }

    /// Whether any dataset is private (listings need no checks otherwise).
    pub fn any_private(&self) -> bool {
        !self.private.is_empty()
    }

    /// Whether dataset `id` needs credentials.
    pub fn is_private(&self, id: &str) -> bool {
        self.private.contains_key(id)
    }

    /// The private datasets' ids.
    pub fn private_ids(&self) -> impl Iterator<Item = &str> {
        self.private.keys().map(String::as_str)
    }

    /// Checks `creds` against dataset `id` (open if it is not private).
    pub async fn check(&self, id: &str, creds: &Credentials) -> Decision {
        let Some(p) = self.private.get(id) else {
            return Decision::Allow;
        };
        if let Some(q) = &creds.signed {
            return match &p.signing {
                Some(key) => match key.verify(id, q, signed::now()) {
                    Ok(()) => Decision::Allow,
                    Err(why) => Decision::Invalid(why.to_string()),
                },
                None => Decision::Invalid("this dataset does not accept signed URLs".into()),
            };
        }
        let Some(token) = creds.bearer.as_deref() else {
            return if creds.other_scheme {
                Decision::Invalid(
                    "only Bearer authorization (or Basic with the token as password) is accepted".into(),
                )
            } else {
                Decision::Missing
            };
        };
        let looks_jwt = token.split('.').count() == 3;
        if let Some(t) = &p.tokens
            && t.contains(token)
        {
            return Decision::Allow;
        }
        if looks_jwt && let Some((issuer, spec)) = &p.oidc {
            return match issuer.verify(token, spec).await {
                Ok(claims) => {
                    if oidc::grants(&claims, spec) {
                        Decision::Allow
                    } else {
                        Decision::Forbidden(format!(
                            "the token's '{}' claim grants no access to dataset '{id}'",
                            spec.claim
                        ))
                    }
                }
                Err(e) if e.is_unavailable() => Decision::Unavailable(e.to_string()),
                Err(e) => Decision::Invalid(e.to_string()),
            };
        }
        // A static token of another dataset is a valid credential without this right.
        let elsewhere = self
            .private
            .iter()
            .any(|(other, q)| other != id && q.tokens.as_ref().is_some_and(|t| t.contains(token)));
        if elsewhere {
            Decision::Forbidden(format!("the token grants no access to dataset '{id}'"))
        } else if looks_jwt && p.oidc.is_none() {
            Decision::Invalid("this dataset does not accept JWTs".into())
        } else {
            Decision::Invalid("the token is not recognised".into())
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The bytes of hex text, `None` unless it is an even number of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

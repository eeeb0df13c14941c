//! OpenID Connect JWTs: the issuer's keys found by discovery
//! (`{issuer}/.well-known/openid-configuration` → `jwks_uri`), cached, fetched again when a
//! token names a key id the cache does not hold (key rotation) — at most every
//! [`MIN_REFRESH`], so random key ids cannot make the server hammer the issuer — and after
//! [`MAX_AGE`]. Tokens are checked for signature (an allow-list of asymmetric algorithms;
//! `alg: none` is refused before anything else), `iss`, `aud`, `exp` and `nbf`.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use super::AccessError;
use cloudify_crds::OidcAccess;

/// Shortest time between two fetches of the key set.
pub const MIN_REFRESH: Duration = Duration::from_secs(2);
/// Keys are fetched again after this long even if every token's key id is known.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Why a JWT is refused; the texts name the problem without repeating the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: not a JWT")]
    Malformed,
    /// `alg: none`.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// An algorithm outside the dataset's allow-list.
    #[error("the token's algorithm {0} is not accepted")]
    AlgNotAllowed(String),
    /// The algorithm is allowed but not the one of the key the token names.
    #[error("the token's algorithm does not match its signing key")]
    KeyMismatch,
    /// The key id is not in the issuer's key set.
    #[error("the token's signing key (kid) is not one of the issuer's keys")]
    UnknownKid,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the dataset's issuer.
    #[error("the token's issuer is not accepted for this dataset")]
    WrongIssuer,
    /// `aud` does not name this service.
    #[error("the token's audience is not accepted for this dataset")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is missing.
    #[error("the token lacks the required claim '{0}'")]
    MissingClaim(String),
    /// The issuer's keys cannot be fetched now.
    #[error("the identity provider's keys cannot be fetched now: {0}")]
    Unavailable(String),
}

impl JwtError {
    /// Whether this is the server's problem (503), not the token's (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, JwtError::Unavailable(_))
    }
}

#[derive(Debug, Default)]
struct Cache {
    keys: Option<JwkSet>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// One OIDC issuer and its cached keys.
#[derive(Debug)]
pub struct Issuer {
    url: String,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Cache>,
}

impl Issuer {
    /// An issuer at `url` (nothing is fetched until the first token arrives).
    pub fn new(url: &str) -> Result<Self, AccessError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AccessError::Client(e.to_string()))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            client,
            cache: Default::default(),
        })
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let r = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        r.json().await.map_err(|e| format!("{url}: {e}"))
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let conf = self
            .get_json(&format!("{}/.well-known/openid-configuration", self.url))
            .await?;
        let jwks_uri = conf
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document names no jwks_uri")?
            .to_string();
        let set = self.get_json(&jwks_uri).await?;
        serde_json::from_value(set).map_err(|e| format!("{jwks_uri}: not a JWK set: {e}"))
    }

    /// The decoding key of `kid` (`None`: the only key of the set), fetching the set again
    /// if it is stale or lacks `kid`.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, JwtError> {
        fn find(set: &JwkSet, kid: Option<&str>) -> Option<jsonwebtoken::jwk::Jwk> {
            match kid {
                Some(k) => set.find(k).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        }
        let mut c = self.cache.lock().await;
        let fresh = c.fetched.is_some_and(|t| t.elapsed() < MAX_AGE);
        let known = c.keys.as_ref().and_then(|s| find(s, kid));
        let may_fetch = c.attempted.is_none_or(|t| t.elapsed() >= MIN_REFRESH);
        let jwk = match known {
            Some(k) if fresh || !may_fetch => k,
            _ if !may_fetch => return Err(JwtError::UnknownKid),
            stale => {
                c.attempted = Some(Instant::now());
                match self.fetch().await {
                    Ok(set) => {
                        c.fetched = Some(Instant::now());
                        let k = find(&set, kid);
                        c.keys = Some(set);
                        k.ok_or(JwtError::UnknownKid)?
                    }
                    // stale keys still verify while the issuer is unreachable
                    Err(why) => match stale {
                        Some(k) => k,
                        None => {
                            tracing::warn!(issuer = %self.url, "cannot fetch the issuer's keys: {why}");
                            return Err(JwtError::Unavailable(
                                "the issuer or its key set is unreachable".into(),
                            ));
                        }
                    },
                }
            }
        };
        DecodingKey::from_jwk(&jwk)
            .map_err(|_| JwtError::Unavailable("the issuer's key set holds an unusable key".into()))
    }

    /// Verifies `token` for a dataset with settings `spec`; the claims if it is valid.
    pub async fn verify(&self, token: &str, spec: &OidcAccess) -> Result<Value, JwtError> {
        let alg = header_alg(token)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        if !spec.algorithms.iter().any(|a| a == &alg) {
            return Err(JwtError::AlgNotAllowed(crate_safe(&alg)));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let key = self.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[spec.issuer.trim_end_matches('/'), spec.issuer.as_str()]);
        v.set_audience(&[spec.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        match jsonwebtoken::decode::<Value>(token, &key, &v) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
                ErrorKind::InvalidAudience => JwtError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(crate_safe(c)),
                ErrorKind::InvalidAlgorithm => JwtError::KeyMismatch,
                _ => JwtError::Malformed,
            }),
        }
    }
}

/// `s` if it is a short plain word, else a placeholder: header fields come from the
/// request and are echoed in messages only when harmless.
fn crate_safe(s: &str) -> String {
    if s.len() <= 16
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        "(unprintable)".into()
    }
}

/// The `alg` of a JWT's header, read before any library parsing so that `none` is refused
/// by name.
fn header_alg(token: &str) -> Result<String, JwtError> {
    let head = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    v.get("alg")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(JwtError::Malformed)
}

/// Whether `claims` carry one of `spec.grants` in `spec.claim`: a list of strings, or one
/// string of space-separated values (OAuth `scope`).
pub fn grants(claims: &Value, spec: &OidcAccess) -> bool {
    let has = |v: &str| spec.grants.iter().any(|g| g == v);
    match claims.get(&spec.claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).any(has),
        Some(Value::String(s)) => s.split_whitespace().any(has),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> OidcAccess {
        serde_json::from_value(
            json!({"issuer": "https://id", "audience": "a", "grants": ["cmip", "read:tas"]}),
        )
        .unwrap()
    }

    #[test]
    fn grants_from_lists_and_scope_strings() {
        let mut s = spec();
        assert!(grants(&json!({"groups": ["x", "cmip"]}), &s));
        assert!(!grants(&json!({"groups": ["x"]}), &s));
        assert!(!grants(&json!({"groups": "x cmipp"}), &s));
        assert!(!grants(&json!({}), &s));
        s.claim = "scope".into();
        assert!(grants(&json!({"scope": "openid read:tas"}), &s));
        assert!(!grants(&json!({"groups": ["cmip"]}), &s));
    }

    #[test]
    fn header_alg_refuses_none_and_garbage() {
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(json!({"sub": "x"})));
        assert_eq!(header_alg(&none).unwrap(), "none");
        assert_eq!(header_alg("abc.def.ghi"), Err(JwtError::Malformed));
        assert_eq!(header_alg(""), Err(JwtError::Malformed));
        assert_eq!(crate_safe("RS256"), "RS256");
        assert_eq!(crate_safe("<script>"), "(unprintable)");
    }

    #[tokio::test]
    async fn unreachable_issuer_is_unavailable_and_none_is_refused_first() {
        // port 9 (discard) on localhost: connection refused
        let i = Issuer::new("http://127.0.0.1:9").unwrap();
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let t = format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "RS256", "kid": "k"})),
            b64(json!({}))
        );
        assert!(i.verify(&t, &spec()).await.unwrap_err().is_unavailable());
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(json!({})));
        assert_eq!(i.verify(&none, &spec()).await, Err(JwtError::AlgNone));
        let hs = format!("{}.{}.c2ln", b64(json!({"alg": "HS256"})), b64(json!({})));
        assert_eq!(
            i.verify(&hs, &spec()).await,
            Err(JwtError::AlgNotAllowed("HS256".into()))
        );
    }
}

//! Signed URLs, for clients that cannot send headers: `?expires=<unix seconds>&signature=<hex
//! HMAC-SHA256(key, "{dataset}\n{expires}")>` grants reading the dataset until `expires`.
//! The signature covers the dataset, not one path, because Zarr clients derive every chunk
//! URL from one base; the expiry bounds what a leaked URL can do.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

use super::AccessError;

/// The signed-URL parameters of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    /// `expires`, as given.
    pub expires: String,
    /// `signature`, as given.
    pub signature: String,
}

/// Why a signed URL is refused (never repeating the signature or the key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedError {
    /// `expires` is not a number of seconds.
    #[error("the signed URL's 'expires' is not a Unix time in seconds")]
    BadExpiry,
    /// The expiry has passed.
    #[error("the signed URL has expired")]
    Expired,
    /// The signature is not hex or does not verify.
    #[error("the signed URL's signature does not verify")]
    BadSignature,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A dataset's signing key.
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A key of these bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Reads the key file (trailing whitespace dropped).
    pub fn open(dataset: &str, path: &str) -> Result<Self, AccessError> {
        let bytes = std::fs::read(path).map_err(|source| AccessError::File {
            dataset: dataset.into(),
            field: "signedUrlKeyFile",
            path: path.into(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if end == 0 {
            return Err(AccessError::File {
                dataset: dataset.into(),
                field: "signedUrlKeyFile",
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the key file is empty"),
            });
        }
        Ok(Self::new(&bytes[..end]))
    }

    /// The signature of `dataset` until `expires` (hex), as a signer computes it.
    pub fn sign(&self, dataset: &str, expires: u64) -> String {
        super::hex(hmac::sign(&self.0, format!("{dataset}\n{expires}").as_bytes()).as_ref())
    }

    /// Checks a signed URL at time `now` (constant-time signature comparison).
    pub fn verify(&self, dataset: &str, q: &SignedQuery, now: u64) -> Result<(), SignedError> {
        let expires: u64 = q.expires.parse().map_err(|_| SignedError::BadExpiry)?;
        let sig = super::unhex(&q.signature.to_ascii_lowercase()).ok_or(SignedError::BadSignature)?;
        hmac::verify(&self.0, format!("{dataset}\n{expires}").as_bytes(), &sig)
            .map_err(|_| SignedError::BadSignature)?;
        if expires <= now {
            return Err(SignedError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_untampered_unexpired_urls() {
        let k = SigningKey::new(b"secret");
        let q = |e: &str, s: &str| SignedQuery {
            expires: e.into(),
            signature: s.into(),
        };
        let sig = k.sign("tas", 2000);
        assert_eq!(k.verify("tas", &q("2000", &sig), 1999), Ok(()));
        assert_eq!(k.verify("tas", &q("2000", &sig), 2000), Err(SignedError::Expired));
        assert_eq!(
            k.verify("tas", &q("2001", &sig), 1000),
            Err(SignedError::BadSignature)
        );
        assert_eq!(
            k.verify("pr", &q("2000", &sig), 1000),
            Err(SignedError::BadSignature)
        );
        assert_eq!(k.verify("tas", &q("x", &sig), 1000), Err(SignedError::BadExpiry));
        assert_eq!(
            k.verify("tas", &q("2000", "zz"), 1000),
            Err(SignedError::BadSignature)
        );
        assert_eq!(
            k.verify("tas", &q("2000", &sig[..10]), 1000),
            Err(SignedError::BadSignature)
        );
        // the value Python's hmac computes (README recipe)
        assert_eq!(
            SigningKey::new(b"k").sign("d", 1),
            "105d6d728e922368b52291f17c8950cd12b8b1f676c758e81cdfbb536d94a5a5"
        );
    }
}

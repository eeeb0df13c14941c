//! The Secret `<name>-internal`: credentials between the operator's own objects, which no
//! CR author writes and no reader ever sees.
//!
//! - `compute-secret`: sent by the server with every task (`serve --compute-secret-file`) and
//!   required by the workers (`worker --secret-file`), so that nothing else in the cluster
//!   can make a worker read data;
//! - `signing-key`: the private dataset's `access.signedUrlKeyFile`, with which the operator
//!   signs the URL it reads the STAC item from when the CR consents to registration.
//!
//! [`build`](super::build) stays pure: it yields the Secret without data, and the caller
//! fills it with [`keys`] — the controller from the existing Secret (values are kept; only
//! missing keys are generated, so pods never see them change), `render` freshly generated.
//! The Secret is not in [`super::OWNED`]: the operator never lists or watches Secrets, it
//! reads, applies and deletes this one by name.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use ring::rand::{SecureRandom, SystemRandom};

use super::meta::Target;
use crate::layout::{COMPUTE_SECRET_KEY, SIGNING_KEY_KEY};

/// Every key of the Secret.
pub const KEYS: [&str; 2] = [COMPUTE_SECRET_KEY, SIGNING_KEY_KEY];

/// Why keys cannot be generated.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a random key: the system's random source failed")]
pub struct RandomError;

/// The Secret, without data, when the spec needs it: a compute pool, or a private dataset
/// the CR consents to register.
pub(crate) fn secret(target: &Target) -> Option<Secret> {
    let spec = &target.cr.spec;
    if spec.compute_enabled().is_none() && !spec.registers_private() {
        return None;
    }
    Some(Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(target.internal_name()),
            ..target.meta()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// The Secret's data: each key's value from `existing` when it holds a usable one (at least
/// 32 bytes), else 32 random bytes as 64 hex digits.
pub fn keys(existing: Option<&Secret>) -> Result<BTreeMap<String, ByteString>, RandomError> {
    let rng = SystemRandom::new();
    let mut out = BTreeMap::new();
    for key in KEYS {
        let kept = existing
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .filter(|v| v.0.trim_ascii().len() >= 32);
        let value = match kept {
            Some(v) => v.clone(),
            None => {
                let mut bytes = [0u8; 32];
                rng.fill(&mut bytes).map_err(|_| RandomError)?;
                ByteString(
                    bytes
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        .into_bytes(),
                )
            }
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// The hex HMAC-SHA256 signature of dataset `dataset` until `expires` under `key`, as the
/// server's `access::signed` checks it (`{dataset}\n{expires}`).
pub fn sign(key: &[u8], dataset: &str, expires: u64) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.trim_ascii_end());
    ring::hmac::sign(&k, format!("{dataset}\n{expires}").as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_when_usable_and_generated_otherwise() {
        let fresh = keys(None).expect("keys");
        assert_eq!(
            fresh.keys().map(String::as_str).collect::<Vec<_>>(),
            ["compute-secret", "signing-key"]
        );
        for v in fresh.values() {
            assert_eq!(v.0.len(), 64);
            assert!(v.0.iter().all(u8::is_ascii_hexdigit));
        }
        assert_ne!(fresh["compute-secret"], fresh["signing-key"]);
        assert_ne!(keys(None).expect("keys"), fresh, "random, not a constant");
        let mut data = fresh.clone();
        data.insert("signing-key".into(), ByteString(b"short".to_vec()));
        let existing = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let again = keys(Some(&existing)).expect("keys");
        assert_eq!(again["compute-secret"], fresh["compute-secret"]);
        assert_eq!(again["signing-key"].0.len(), 64);
    }

    #[test]
    fn signatures_are_the_servers() {
        // the value cloudify-server's access::signed test pins for key "k", dataset "d", 1
        assert_eq!(
            sign(b"k\n", "d", 1),
            "105d6d728e922368b52291f17c8950cd12b8b1f676c758e81cdfbb536d94a5a5"
        );
    }
}

//! The credential between a server and its compute workers: a shared secret in a file (on
//! Kubernetes, a Secret the operator creates and mounts into both Deployments).
//!
//! A worker executes whatever task it is sent and reads any source its config names, so
//! only the server may send tasks: the server sends `Authorization: Bearer <secret>` with
//! every task and the worker compares it in constant time (SHA-256 of both sides, so the
//! comparison does not even leak the length) and answers 401 otherwise. The secret is never
//! logged. The file is looked at again at most once a second and read again when its
//! modification time or size changed, so a rotated Secret applies without a restart; a file
//! that becomes unreadable or empty keeps the last good secret (logged).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How often the file's metadata is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Fewest bytes a secret may have: a short one could be guessed by trying.
pub const MIN_LEN: usize = 16;

/// Why a secret file cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("compute secret file '{path}': {source}")]
    Read {
        /// The configured path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds too little to be a secret.
    #[error(
        "compute secret file '{path}': holds {len} bytes after trimming whitespace; at least {MIN_LEN} are needed (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        /// The configured path.
        path: String,
        /// Bytes found.
        len: usize,
    },
}

/// The shared secret, as read from its file.
pub struct SharedSecret {
    path: PathBuf,
    state: Mutex<Loaded>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecret")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct Loaded {
    /// The secret as sent (trimmed file content).
    value: String,
    /// Its SHA-256, what presented secrets are compared with.
    digest: [u8; 32],
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

fn read(path: &Path) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| SecretError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8(text).map_err(|_| SecretError::Read {
        path: shown.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    let value = text.trim();
    // a header value cannot hold control characters
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(SecretError::Read {
            path: shown,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "holds control characters (one line of text expected)",
            ),
        });
    }
    if value.len() < MIN_LEN {
        return Err(SecretError::TooShort {
            path: shown,
            len: value.len(),
        });
    }
    Ok(value.to_string())
}

impl SharedSecret {
    /// Reads the file now (an unusable file stops start-up).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SecretError> {
        let path = path.into();
        let st = stamp(&path).ok();
        let value = read(&path)?;
        Ok(Self {
            state: Mutex::new(Loaded {
                digest: Sha256::digest(value.as_bytes()).into(),
                value,
                stamp: st,
                checked: Instant::now(),
            }),
            path,
        })
    }

    /// The `Authorization` header value the server sends.
    pub fn header(&self) -> String {
        match self.state.lock() {
            Ok(mut st) => {
                self.reload_if_changed(&mut st);
                format!("Bearer {}", st.value)
            }
            Err(_) => String::new(),
        }
    }

    /// Whether the `Authorization` header value `presented` carries the secret (constant
    /// time in the secret's content).
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        let Some(token) = presented.and_then(|p| {
            let (scheme, rest) = p.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        }) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        self.reload_if_changed(&mut st);
        st.digest.ct_eq(&digest).into()
    }

    fn reload_if_changed(&self, st: &mut Loaded) {
        if st.checked.elapsed() < RECHECK {
            return;
        }
        st.checked = Instant::now();
        let now = stamp(&self.path).ok();
        if now.is_none() || now == st.stamp {
            if now.is_none() && st.stamp.is_some() {
                tracing::warn!(path = %self.path.display(), "compute secret file unreadable; keeping the secret read before");
                st.stamp = None;
            }
            return;
        }
        match read(&self.path) {
            Ok(v) => {
                if v != st.value {
                    tracing::info!(path = %self.path.display(), "compute secret file changed; using the new secret");
                }
                st.digest = Sha256::digest(v.as_bytes()).into();
                st.value = v;
                st.stamp = now;
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the secret read before");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_secret_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let s = SharedSecret::open(&p).unwrap();
        assert_eq!(s.header(), "Bearer 0123456789abcdef0123");
        assert!(s.accepts(Some(b"Bearer 0123456789abcdef0123")));
        assert!(s.accepts(Some(b"bearer 0123456789abcdef0123 ")));
        assert!(!s.accepts(Some(b"Bearer 0123456789abcdef012")));
        assert!(!s.accepts(Some(b"Basic 0123456789abcdef0123")));
        assert!(!s.accepts(Some(b"Bearer")));
        assert!(!s.accepts(Some(b"")));
        assert!(!s.accepts(None));
        // rotated: the new secret applies, the old one no longer does
        std::fs::write(&p, "fedcba9876543210fedcba").unwrap();
        s.state.lock().unwrap().checked -= RECHECK * 2;
        s.state.lock().unwrap().stamp = None; // mtime granularity
        assert!(s.accepts(Some(b"Bearer fedcba9876543210fedcba")));
        assert!(!s.accepts(Some(b"Bearer 0123456789abcdef0123")));
        // an unusable new version keeps the last good secret
        std::fs::write(&p, "short").unwrap();
        s.state.lock().unwrap().checked -= RECHECK * 2;
        s.state.lock().unwrap().stamp = None;
        assert!(s.accepts(Some(b"Bearer fedcba9876543210fedcba")));
    }

    #[test]
    fn unusable_files_are_refused_without_repeating_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "  tiny-secret \n").unwrap();
        let e = SharedSecret::open(&p).unwrap_err().to_string();
        assert!(e.contains("at least 16") && !e.contains("tiny-secret"), "{e}");
        std::fs::write(&p, "0123456789abcdef\n0123456789abcdef").unwrap();
        let e = SharedSecret::open(&p).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        let e = SharedSecret::open(dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent"), "{e}");
    }
}

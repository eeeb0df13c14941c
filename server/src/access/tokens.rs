//! Static bearer tokens: a file of their SHA-256 digests (one hex digest a line), so the
//! file (typically a mounted Kubernetes Secret) holds nothing a reader could present. The
//! file is checked for changes at most once a second and read again when its modification
//! time or size changed; a file that becomes unreadable keeps the last good set (logged).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AccessError;

/// How often the file's metadata is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// The accepted token digests of one dataset.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    dataset: String,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    digests: Vec<[u8; 32]>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn stamp(path: &std::path::Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

/// Parses a token file: blank lines and `#` comments skipped; every other line one digest.
pub fn parse(dataset: &str, path: &str, text: &str) -> Result<Vec<[u8; 32]>, AccessError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or_default().trim();
        if l.is_empty() {
            continue;
        }
        let digest = super::unhex(&l.to_ascii_lowercase())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| AccessError::TokenLine {
                dataset: dataset.into(),
                path: path.into(),
                line: i + 1,
            })?;
        out.push(digest);
    }
    Ok(out)
}

impl TokenFile {
    /// Reads the file now (a file that cannot be read or parsed stops start-up).
    pub fn open(dataset: &str, path: &str) -> Result<Self, AccessError> {
        let io = |source| AccessError::File {
            dataset: dataset.into(),
            field: "tokenFile",
            path: path.into(),
            source,
        };
        let st = stamp(path.as_ref()).map_err(io)?;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let digests = parse(dataset, path, &text)?;
        Ok(Self {
            path: path.into(),
            dataset: dataset.into(),
            state: Mutex::new(Loaded {
                digests,
                stamp: Some(st),
                checked: Instant::now(),
            }),
        })
    }

    /// Whether `token`'s digest is listed (compared in constant time with every entry).
    pub fn contains(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        self.reload_if_changed(&mut st);
        listed(&st.digests, &digest)
    }

    fn reload_if_changed(&self, st: &mut Loaded) {
        if st.checked.elapsed() < RECHECK {
            return;
        }
        st.checked = Instant::now();
        let now = stamp(&self.path).ok();
        if now.is_none() || now == st.stamp {
            if now.is_none() && st.stamp.is_some() {
                tracing::warn!(dataset = %self.dataset, path = %self.path.display(), "token file unreadable; keeping the tokens read before");
                st.stamp = None;
            }
            return;
        }
        let path = self.path.display().to_string();
        match std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse(&self.dataset, &path, &t).map_err(|e| e.to_string()))
        {
            Ok(d) => {
                tracing::info!(dataset = %self.dataset, tokens = d.len(), "token file read again");
                st.digests = d;
                st.stamp = now;
            }
            Err(why) => {
                tracing::warn!(dataset = %self.dataset, "token file changed but cannot be used ({why}); keeping the tokens read before");
            }
        }
    }
}

/// Whether `digest` is one of `digests`, in a time that depends only on how many there are:
/// every entry is compared (no early exit), each comparison is branch-free over 64-bit words,
/// and only the difference goes through `subtle`'s constant-time test. Why not `ct_eq` on
/// the byte arrays: `subtle` puts an optimisation barrier on every byte, ~40 ns an entry —
/// 4 µs a request for a 100-token file, 2 % of a pass-through chunk's server CPU
/// (`examples/access_timing.rs`); this is about 3 ns an entry.
fn listed(digests: &[[u8; 32]], digest: &[u8; 32]) -> bool {
    fn words(d: &[u8; 32]) -> [u64; 4] {
        std::array::from_fn(|i| u64::from_le_bytes(std::array::from_fn(|j| d[8 * i + j])))
    }
    let t = words(digest);
    digests
        .iter()
        .fold(subtle::Choice::from(0), |acc, d| {
            let d = words(d);
            let diff = (d[0] ^ t[0]) | (d[1] ^ t[1]) | (d[2] ^ t[2]) | (d[3] ^ t[3]);
            acc | diff.ct_eq(&0)
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_hex(t: &str) -> String {
        super::super::hex(&Sha256::digest(t.as_bytes()))
    }

    #[test]
    fn only_an_exact_digest_is_listed() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert!(listed(&[a, b], &b));
        assert!(listed(&[a, b], &a));
        assert!(!listed(&[], &a));
        // one bit off in each word, and at both ends, is not a match
        for byte in [0, 7, 8, 15, 16, 23, 24, 31] {
            let mut near = b;
            near[byte] ^= 0x80;
            assert!(!listed(&[a, b], &near), "byte {byte}");
        }
    }

    #[test]
    fn parses_digests_and_rejects_other_lines() {
        let text = format!(
            "# readers\n{}\n\n{}  # ci\n",
            digest_hex("a"),
            digest_hex("b").to_uppercase()
        );
        assert_eq!(parse("d", "f", &text).unwrap().len(), 2);
        let err = parse("d", "f", &format!("{}\nplain-token\n", digest_hex("a"))).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(
            !err.to_string().contains("plain-token"),
            "the line's text is not repeated: {err}"
        );
    }

    #[test]
    fn contains_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, digest_hex("first")).unwrap();
        let f = TokenFile::open("d", p.to_str().unwrap()).unwrap();
        assert!(f.contains("first"));
        assert!(!f.contains("second"));
        assert!(!f.contains(""));
        std::fs::write(&p, format!("{}\n{}\n", digest_hex("second"), digest_hex("third"))).unwrap();
        f.state.lock().unwrap().checked -= RECHECK * 2;
        f.state.lock().unwrap().stamp = None; // mtime granularity: force the comparison to differ
        assert!(f.contains("second"));
        assert!(!f.contains("first"));
        // an unusable new version keeps the last good set
        std::fs::write(&p, "garbage\n").unwrap();
        f.state.lock().unwrap().checked -= RECHECK * 2;
        f.state.lock().unwrap().stamp = None;
        assert!(f.contains("third"));
    }
}

//! Byte ranges (RFC 9110 §14) on the chunk and metadata routes.
//!
//! netCDF-C's Zarr reader, GDAL and fsspec's HTTP files ask for parts of a key with `Range`.
//! tower-http answers ranges only for files on disk (`ServeFile`), and there as 416 for several
//! ranges and for a malformed header; our bodies are in memory already (a chunk is encoded
//! whole), so this layer cuts the range out of the handler's complete answer:
//!
//! * one satisfiable range → 206 with `Content-Range: bytes first-last/len`;
//! * no satisfiable range → 416 with `Content-Range: bytes */len` and a JSON error;
//! * a malformed `Range`, another unit than `bytes`, or several ranges → the full body (200):
//!   RFC 9110 lets a server ignore `Range`, and a multipart answer would cost a copy of the
//!   chunk to save little (clients of chunked formats ask for one range);
//! * `If-Range` with the current ETag (strong comparison) → the range, anything else (an old
//!   ETag, a date: we send no `Last-Modified`) → the full body;
//! * `If-None-Match` is decided by the handler first (304), as RFC 9110 §13.2.2 orders them.
//!
//! Every 200/206/304/416 answer of these routes says `Accept-Ranges: bytes`. HEAD gets the same
//! status and headers as GET (axum drops the body afterwards).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Bodies larger than this are never buffered to cut a range (they do not occur: chunks are
/// bounded well below, see `chunk::read`); such an answer goes out whole.
const MAX_BUFFERED: usize = 1 << 30;

/// A syntactically valid `Range: bytes=...` with one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last` (inclusive).
    From {
        /// Position of the first byte asked for, from 0.
        first: u64,
        /// Position of the last byte asked for (inclusive); `None` for "to the end".
        last: Option<u64>,
    },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// A well-formed `Range: bytes=...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// A single range, answered with 206 if it selects bytes of the body.
    One(ByteRange),
    /// Several ranges: valid, answered with the full body.
    Several,
}

/// What to answer for a `Range` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the full body (no, malformed or multiple ranges).
    Full,
    /// 206 with these inclusive byte positions.
    Partial {
        /// Position of the first byte sent, from 0.
        first: u64,
        /// Position of the last byte sent (inclusive), at most the body length minus 1.
        last: u64,
    },
    /// 416: no byte of the body is selected.
    Unsatisfiable,
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a `Range` header value. `None` for anything that is not a well-formed single
/// `bytes` range (to be ignored); RFC 9110's grammar allows spaces around commas and a
/// case-insensitive unit.
pub fn parse(value: &str) -> Option<Ranges> {
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let specs: Vec<&str> = set.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut parsed = Vec::with_capacity(specs.len().min(2));
    for spec in &specs {
        let (a, b) = spec.split_once('-')?;
        let r = if a.is_empty() {
            ByteRange::Suffix(digits(b)?)
        } else {
            let first = digits(a)?;
            let last = if b.is_empty() { None } else { Some(digits(b)?) };
            if last.is_some_and(|l| l < first) {
                return None; // invalid range-spec: the header is ignored
            }
            ByteRange::From { first, last }
        };
        parsed.push(r);
    }
    match parsed.as_slice() {
        [one] => Some(Ranges::One(*one)),
        [] => None,
        _ => Some(Ranges::Several),
    }
}

/// Decides the answer for `Range: value` on a body of `len` bytes.
pub fn decide(value: &str, len: u64) -> Decision {
    let Some(Ranges::One(r)) = parse(value) else {
        return Decision::Full;
    };
    if len == 0 {
        return Decision::Unsatisfiable;
    }
    match r {
        ByteRange::From { first, .. } if first >= len => Decision::Unsatisfiable,
        ByteRange::From { first, last } => Decision::Partial {
            first,
            last: last.map_or(len - 1, |l| l.min(len - 1)),
        },
        ByteRange::Suffix(0) => Decision::Unsatisfiable,
        ByteRange::Suffix(n) => Decision::Partial {
            first: len - n.min(len),
            last: len - 1,
        },
    }
}

/// `If-Range` holds: the header names the response's current ETag (strong comparison: a
/// weak tag never matches, RFC 9110 §13.1.5). A date never holds, as no `Last-Modified` is
/// sent.
fn if_range_holds(if_range: Option<&HeaderValue>, etag: Option<&HeaderValue>) -> bool {
    match if_range {
        None => true,
        Some(v) => {
            let v = v.as_bytes();
            !v.starts_with(b"W/")
                && etag.is_some_and(|e| !e.as_bytes().starts_with(b"W/") && e.as_bytes() == v)
        }
    }
}

fn accept_ranges(h: &mut HeaderMap) {
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// The middleware (`route_layer` on the chunk and metadata routes).
pub async fn ranges(req: Request, next: Next) -> Response {
    let range = req.headers().get(header::RANGE).cloned();
    let if_range = req.headers().get(header::IF_RANGE).cloned();
    let mut resp = next.run(req).await;
    if !(resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED) {
        return resp;
    }
    accept_ranges(resp.headers_mut());
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let Some(range) = range.as_ref().and_then(|v| v.to_str().ok()) else {
        return resp;
    };
    if !if_range_holds(if_range.as_ref(), resp.headers().get(header::ETAG)) {
        return resp;
    }
    if !matches!(parse(range), Some(Ranges::One(_))) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BUFFERED).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the answer to cut range '{range}' from it: {e}"),
            )
            .into_response();
        }
    };
    let len = bytes.len() as u64;
    parts.headers.remove(header::CONTENT_LENGTH);
    match decide(range, len) {
        Decision::Full => Response::from_parts(parts, Body::from(bytes)),
        Decision::Partial { first, last } => {
            parts.status = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                parts.headers.insert(header::CONTENT_RANGE, v);
            }
            // first <= last < len, both fit in usize since len does
            let body = bytes.slice(first as usize..=last as usize);
            Response::from_parts(parts, Body::from(body))
        }
        Decision::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range '{range}' selects no byte of this {len}-byte answer"),
            )
            .into_response();
            let h = r.headers_mut();
            accept_ranges(h);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            for name in [header::ETAG, header::CACHE_CONTROL] {
                if let Some(v) = parts.headers.get(&name) {
                    h.insert(name, v.clone());
                }
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &str, len: u64) -> Decision {
        decide(v, len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(d("bytes=0-3", 10), Decision::Partial { first: 0, last: 3 });
        assert_eq!(d("bytes=4-", 10), Decision::Partial { first: 4, last: 9 });
        assert_eq!(d("bytes=4-100", 10), Decision::Partial { first: 4, last: 9 });
        assert_eq!(d("bytes=-3", 10), Decision::Partial { first: 7, last: 9 });
        assert_eq!(d("bytes=-30", 10), Decision::Partial { first: 0, last: 9 });
        assert_eq!(d("bytes=9-9", 10), Decision::Partial { first: 9, last: 9 });
        assert_eq!(d("Bytes = 2-3 ", 10), Decision::Partial { first: 2, last: 3 });
        assert_eq!(d("bytes=0-3,", 10), Decision::Partial { first: 0, last: 3 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(d("bytes=10-", 10), Decision::Unsatisfiable);
        assert_eq!(d("bytes=10-20", 10), Decision::Unsatisfiable);
        assert_eq!(d("bytes=-0", 10), Decision::Unsatisfiable);
        assert_eq!(d("bytes=0-0", 0), Decision::Unsatisfiable);
        assert_eq!(d("bytes=-5", 0), Decision::Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=x-3",
            "bytes=3-1",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=0x10-",
            "items=0-3",
            "bytes=99999999999999999999999-",
            // several ranges: the full body
            "bytes=0-1,4-5",
            "bytes=0-1, -1",
        ] {
            assert_eq!(d(v, 10), Decision::Full, "{v:?}");
        }
    }

    #[test]
    fn if_range_is_a_strong_etag_match() {
        let tag = HeaderValue::from_static("\"abc\"");
        assert!(if_range_holds(None, Some(&tag)));
        assert!(if_range_holds(Some(&tag), Some(&tag)));
        assert!(!if_range_holds(
            Some(&HeaderValue::from_static("\"old\"")),
            Some(&tag)
        ));
        assert!(!if_range_holds(
            Some(&HeaderValue::from_static("W/\"abc\"")),
            Some(&tag)
        ));
        assert!(!if_range_holds(
            Some(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(&tag)
        ));
        assert!(!if_range_holds(Some(&tag), None));
    }
}

//! HTTP errors: a status and a JSON body naming the problem.
//!
//! One error type for both services: `cloudify serve` answers `{"error": message}`, the
//! `cloudify catalog` STAC API the OGC API shape `{"code": ..., "description": message}`.
//! Only the spelling of the body differs ([`ErrorShape`]); status, logging and headers are
//! decided in one place, so the two services cannot drift apart in how they fail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How an error body is spelled. Each protocol prescribes its own; the shape is chosen by
/// the service (router), never by the error's cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": message}`: the data server's routes (what xpublish-style clients read).
    #[default]
    Plain,
    /// `{"code": "NotFound", "description": message}`: the STAC API / OGC API Features
    /// exception shape, with `code` the status's reason phrase without spaces.
    Stac,
}

impl ErrorShape {
    /// The JSON body answering `status` with `message` in this shape.
    pub fn body(self, status: StatusCode, message: &str) -> Value {
        match self {
            ErrorShape::Plain => json!({ "error": message }),
            ErrorShape::Stac => {
                let code = status.canonical_reason().unwrap_or("Error").replace(' ', "");
                json!({"code": code, "description": message})
            }
        }
    }
}

/// An error answered to the client as JSON naming the problem: `{"error": message}` by
/// default, or in another protocol's shape ([`ApiError::shape`]).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status answered: 4xx for a bad request, 5xx for a server-side failure.
    pub status: StatusCode,
    /// What went wrong, in words that name the problem (the dataset, variable, key or file); the
    /// `error` field of the body.
    pub message: String,
    /// Server errors are logged when answered, unless the condition was logged once where it
    /// arose and would otherwise be logged again for every request (see [`ApiError::quiet`]).
    pub quiet: bool,
    /// `Retry-After` seconds, for 503s that will pass.
    pub retry_after: Option<u64>,
    /// How the body is spelled: [`ErrorShape::Plain`] unless the service prescribes another.
    pub shape: ErrorShape,
    /// `WWW-Authenticate` challenge of a 401, telling the client which credentials to send.
    pub challenge: Option<&'static str>,
    /// Further members of the body beside the message (a tape file's state and recall job).
    pub detail: Option<Box<Value>>,
}

impl ApiError {
    /// An error with `status` and `message`, logged if it is a server error, without `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            quiet: false,
            retry_after: None,
            shape: ErrorShape::Plain,
            challenge: None,
            detail: None,
        }
    }
    /// The same error with its message prefixed by where it happened (`dataset 'x', key 'y'`),
    /// keeping status, `Retry-After` and detail.
    #[must_use]
    pub fn context(mut self, prefix: impl std::fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
    /// The status, `Retry-After` and detail a tape error answers with, when `e` is one: 503
    /// while the file is still on tape or the staging cache is full, 502 when its recall
    /// failed. Never 404 (a zarr client would read fill values), never 2xx without data.
    fn with_tape(mut self, e: &crate::storage::read::ByteError) -> Self {
        use crate::storage::{RemoteError, read::ByteError};
        if let ByteError::Remote(RemoteError::Tape(t)) = e {
            self.status = if t.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            self.retry_after = Some(t.retry_after());
            self.detail = Some(Box::new(t.detail()));
            // counted and logged where it arose, not once per waiting request
            self.quiet = true;
        }
        self
    }
    /// Adds the members of `detail` (a JSON object) to the body, beside the message.
    #[must_use]
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }
    /// Not logged when answered: the cause was logged once already.
    #[must_use]
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }
    /// Adds `Retry-After: secs`.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// Answered in `shape` (the service's error body) instead of `{"error": ...}`.
    #[must_use]
    pub fn shape(mut self, shape: ErrorShape) -> Self {
        self.shape = shape;
        self
    }
    /// Adds `WWW-Authenticate: scheme` (for a 401).
    #[must_use]
    pub fn challenge(mut self, scheme: &'static str) -> Self {
        self.challenge = Some(scheme);
        self
    }
    /// 404 Not Found with `m`: no such dataset, variable, key or route.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    /// 400 Bad Request with `m`: the request itself is malformed.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && !self.quiet {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        let mut body = self.shape.body(self.status, &self.message);
        if let (Some(Value::Object(extra)), Value::Object(b)) = (self.detail.map(|d| *d), &mut body) {
            for (k, v) in extra {
                b.entry(k).or_insert(v);
            }
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(scheme) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        r
    }
}

impl From<crate::chunk::read::ReadError> for ApiError {
    fn from(e: crate::chunk::read::ReadError) -> Self {
        use crate::chunk::read::ReadError as R;
        if let R::Compute {
            status,
            message,
            retry_after,
        } = &e
        {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut err = ApiError::new(status, message.clone());
            err.retry_after = *retry_after;
            return err;
        }
        let status = match &e {
            R::OutOfRange { .. } => StatusCode::BAD_REQUEST,
            R::Compute { .. } => StatusCode::BAD_GATEWAY,
            R::TooLarge(_) | R::Block(_) | R::BadReference { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            R::Codec {
                source: crate::codec::CodecError::Unsupported(_),
                ..
            } => StatusCode::NOT_IMPLEMENTED,
            R::Codec { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            R::Bytes(b) => byte_status(b),
        };
        let api = ApiError::new(status, e.to_string());
        match &e {
            R::Bytes(b) => api.with_tape(b),
            _ => api,
        }
    }
}

impl From<crate::storage::read::ByteError> for ApiError {
    fn from(e: crate::storage::read::ByteError) -> Self {
        ApiError::new(byte_status(&e), e.to_string()).with_tape(&e)
    }
}

/// Status of a source read that failed below the codecs.
fn byte_status(e: &crate::storage::read::ByteError) -> StatusCode {
    use crate::storage::read::ByteError as B;
    match e {
        B::Io { .. } | B::Truncated { .. } | B::TooLarge(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // A local file changed under the server: never 404 (a zarr client would read it
        // as fill value), never its new bytes through the old index.
        B::Changed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // The dataset's store failed (the request was fine): a gateway error that names
        // the object, including a vanished object — the dataset is broken, not the key.
        B::Remote(r) if r.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        B::Remote(_) => StatusCode::BAD_GATEWAY,
    }
}

impl From<crate::zarr::key::KeyError> for ApiError {
    fn from(e: crate::zarr::key::KeyError) -> Self {
        use crate::zarr::key::KeyError as K;
        match e {
            K::NotFound(m) => ApiError::not_found(m),
            K::BadRequest(m) => ApiError::bad_request(m),
        }
    }
}

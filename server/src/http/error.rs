//! HTTP errors: a status and a JSON body naming the problem.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to the client as `{"error": message}`.
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
}

impl ApiError {
    /// An error with `status` and `message`, logged if it is a server error, without `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            quiet: false,
            retry_after: None,
        }
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
        let mut r = (self.status, Json(serde_json::json!({"error": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        r
    }
}

impl From<crate::chunk::read::ReadError> for ApiError {
    fn from(e: crate::chunk::read::ReadError) -> Self {
        use crate::chunk::read::ReadError as R;
        let status = match &e {
            R::OutOfRange { .. } => StatusCode::BAD_REQUEST,
            R::TooLarge(_) | R::Block(_) | R::BadReference { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            R::Codec {
                source: crate::codec::CodecError::Unsupported(_),
                ..
            } => StatusCode::NOT_IMPLEMENTED,
            R::Codec { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            R::Bytes(b) => byte_status(b),
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::storage::read::ByteError> for ApiError {
    fn from(e: crate::storage::read::ByteError) -> Self {
        ApiError::new(byte_status(&e), e.to_string())
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

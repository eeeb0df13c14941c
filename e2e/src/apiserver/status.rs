//! `Status` objects: the error body every kube-apiserver failure carries. Clients (kubectl's
//! error printer, kube-rs's `Error::Api`) read `reason`, `code` and `details`, so these must
//! match what the real server sends for the same failure.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// One field-level cause of an `Invalid` (422) error.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// Message without the field path, as the real server words it.
    pub message: String,
    /// Field path such as `spec.replicas.min`.
    pub field: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {}", render_value(value), detail.as_ref()),
            field: field.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }
}

/// How the real server renders a bad value inside an Invalid message (`Invalid value: 0: ...`).
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

/// An API failure, turned into an HTTP response carrying a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// Qualified resource as the server prints it: `configmaps` or `deployments.apps`.
    fn qualified(group: &str, plural: &str) -> String {
        if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{} {name:?} not found", Self::qualified(group, plural)),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{} {name:?} already exists", Self::qualified(group, plural)),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    /// Optimistic-concurrency failure (stale `resourceVersion`).
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                Self::qualified(group, plural)
            ),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    /// 422 Invalid, worded like the real server:
    /// `CloudifyDataset.cloudify.io "x" is invalid: spec.a: Invalid value: ...`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let rendered: Vec<String> = causes
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    if c.field.is_empty() { "<nil>" } else { &c.field },
                    c.message
                )
            })
            .collect();
        let list = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{qualified_kind} {name:?} is invalid: {list}"),
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes_json})),
        }
    }

    /// The `Status` object of this failure.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code.as_u16(), self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

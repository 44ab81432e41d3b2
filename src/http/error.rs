//! One error type for every handler: the status code, a stable snake_case code and one human
//! sentence, as `{"error": {"code": "…", "message": "…"}}`. Internal detail is logged, never sent.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::{CacheError, LoadError};
use crate::store::StoreError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Every error answer: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Body<'a> {
    error: Inner<'a>,
}
/// The error body, for the OpenAPI document.
pub(crate) type ErrorBody = Body<'static>;

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub(crate) struct Inner<'a> {
    /// A stable snake_case code, e.g. `invalid_phone`, `lead_not_found`, `version_mismatch`.
    #[schema(example = "invalid_phone")]
    code: &'a str,
    /// One human sentence.
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The primary database is unavailable and no cached answer could be served.",
        )
    }
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "An internal error occurred.",
        )
    }

    /// The JSON body bytes.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"code":"internal_error","message":"An internal error occurred."}}"#
                .to_vec()
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not_found", "No such resource."),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::PreconditionFailed { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                format!(
                    "The resource has moved on to version {current}; fetch it again and retry."
                ),
            ),
            StoreError::Invalid(m) => ApiError::unprocessable("invalid_value", m),
            StoreError::Unavailable(cause) => {
                tracing::warn!(request_id = %super::request_id(), error = %cause, "postgres unavailable");
                ApiError::unavailable()
            }
            StoreError::Other(cause) => {
                tracing::error!(request_id = %super::request_id(), error = %cause, "postgres error");
                ApiError::internal()
            }
            StoreError::Encode(cause) => {
                tracing::error!(request_id = %super::request_id(), error = %cause, "response encoding failed");
                ApiError::internal()
            }
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Load(LoadError::Unavailable(cause)) => {
                tracing::warn!(request_id = %super::request_id(), error = %cause, "postgres unavailable");
                ApiError::unavailable()
            }
            CacheError::Load(LoadError::Failed(cause)) => {
                tracing::error!(request_id = %super::request_id(), error = %cause, "load failed");
                ApiError::internal()
            }
            CacheError::Deadline => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "The primary database did not answer in time and nothing servable is cached; retry shortly.",
            ),
            other => {
                // Cache-tier failures fall back to Postgres inside the cache; reaching here means
                // a flight was lost, which a retry by the client resolves.
                tracing::error!(request_id = %super::request_id(), error = %other, "cache failure");
                ApiError::unavailable()
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                ApiError::unprocessable("invalid_body", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => unsupported_media_type(
                "Send the body as JSON with `Content-Type: application/json`.",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

/// 415 with the JSON shape.
pub(crate) fn unsupported_media_type(message: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

/// 413 with the JSON shape.
pub(crate) fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The request body is larger than the limit.",
    )
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

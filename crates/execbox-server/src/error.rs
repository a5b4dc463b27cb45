//! The one error type of the HTTP layer: a status, a stable code, a human message, and
//! optionally the output seen so far. Internal detail goes to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use execbox_proto::{ErrorBody, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// Stable code and message.
    pub error: ErrorBody,
    /// What the script printed before it failed (script failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// What the script wrote to stderr (script failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The run's id (script failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (boxed: errors travel in `Result`s on every path).
    pub body: Box<ErrorResponse>,
    /// `Retry-After` seconds (429, 503).
    pub retry_after: Option<u64>,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (quota answers).
    pub rate_limit: Option<(u64, u64, u64)>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorResponse {
                error: ErrorBody::new(code, message),
                stdout: None,
                stderr: None,
                id: None,
            }),
            retry_after: None,
            rate_limit: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for an unknown (or not visible) run.
    pub fn run_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RunNotFound,
            format!("no run with id {id:?}"),
        )
    }

    /// 500: logs `detail`, tells the client only that it was our fault.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "execbox failed to handle this request; the cause is in the server log",
        )
    }

    /// 429 with `Retry-After`.
    pub fn too_many(code: ErrorCode, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after = Some(retry_after);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(*self.body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some((limit, remaining, reset)) = self.rate_limit {
            let h = r.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(limit));
            h.insert("ratelimit-remaining", HeaderValue::from(remaining));
            h.insert("ratelimit-reset", HeaderValue::from(reset));
        }
        r
    }
}

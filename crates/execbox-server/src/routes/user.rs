//! `GET /v1/user` (seed 000): who is calling, from the token's claims.

use axum::Extension;

use crate::auth::{Caller, Claims};
use crate::error::{ApiError, ErrorResponse};

/// The caller's identity.
#[utoipa::path(
    get,
    path = "/v1/user",
    responses(
        (status = 200, description = "the token's claims", body = Claims),
        (status = 401, description = "missing or invalid token", body = ErrorResponse),
    ),
    security(("bearer" = [])),
    tag = "v1"
)]
pub async fn user(Extension(caller): Extension<Caller>) -> Result<axum::Json<Claims>, ApiError> {
    caller.claims.map(axum::Json).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            execbox_proto::ErrorCode::AuthDisabled,
            "authentication is disabled on this server (--insecure-no-auth): there is no caller",
        )
    })
}

//! `POST /execute`: seed 004's contract. The script's `main()` return value is the result;
//! prints are stdout. Failures of the script are 4xx with a stable code and the output seen.

use axum::extract::State;
use axum::Extension;

use crate::auth::Caller;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use execbox_proto::RunStatus;

use crate::api::{ExecuteRequest, ExecuteResponse};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Json, RunRoom};
use crate::runner;
use crate::state::AppState;
use crate::validate;

/// Run a script and return `main()`'s value.
#[utoipa::path(
    post,
    path = "/execute",
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "main() returned JSON", body = ExecuteResponse),
        (status = 400, description = "malformed request", body = ErrorResponse),
        (status = 413, description = "script or body too large", body = ErrorResponse),
        (status = 422, description = "the script failed: no_main, main_not_callable, exception, result_not_json, syntax_error, timeout, memory_limit, output_limit, …", body = ErrorResponse),
        (status = 429, description = "queue full; see Retry-After", body = ErrorResponse),
        (status = 503, description = "the sandbox is not ready (not_ready), or the shared state store is unreachable (state_unavailable); see Retry-After", body = ErrorResponse),
        (status = 500, description = "execbox failed", body = ErrorResponse),
    ),
    tag = "seed"
)]
pub async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunRoom(room): RunRoom,
    Json(req): Json<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let run = validate::script(&state, req.script)?;
    let submitted = runner::submit(&state, run, caller.user, Some(room)).await?;
    let rec = runner::wait(submitted).await?;
    let step = rec.run.clone().unwrap_or_default();
    if rec.status == RunStatus::Ok {
        let body = ExecuteResponse {
            result: rec.result.unwrap_or(serde_json::Value::Null),
            stdout: step.stdout,
        };
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    let status = match rec.status {
        RunStatus::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        RunStatus::Cancelled => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let error = rec.error.unwrap_or_else(|| {
        execbox_proto::ErrorBody::new(rec.status.error_code(), "the script did not complete")
    });
    Err(ApiError {
        status,
        body: Box::new(ErrorResponse {
            error,
            stdout: Some(step.stdout),
            stderr: Some(step.stderr),
            id: Some(rec.id),
        }),
        retry_after: None,
        rate_limit: None,
    })
}

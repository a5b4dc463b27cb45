//! Runs as programs: seed 003's `/run-json/`, `/run-file/` and `/status/{id}`, and the general
//! `/v1/runs` API.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use execbox_proto::ErrorCode;
use execbox_proto::RunRecord;

use crate::admission::Room;
use crate::api::{Accepted, CreateRunRequest, RunCodeRequest, RuntimeInfo, WaitQuery};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Json, RunRoom};
use crate::runner::{self, RunRequest, Submitted};
use crate::state::AppState;
use crate::validate;

async fn start(
    state: &AppState,
    caller: Caller,
    (req, room): (RunRequest, Room),
    wait: bool,
    status_prefix: &str,
) -> Result<Response, ApiError> {
    let submitted = runner::submit(state, req, caller.user, Some(room)).await?;
    respond(submitted, wait, status_prefix).await
}

/// The answer to a submitted run: its record when `wait`, else 202 with where to poll.
async fn respond(
    submitted: Submitted,
    wait: bool,
    status_prefix: &str,
) -> Result<Response, ApiError> {
    if wait {
        let rec = runner::wait(submitted).await?;
        return Ok((StatusCode::OK, axum::Json(rec)).into_response());
    }
    let url = format!("{status_prefix}{}", submitted.id);
    let body = Accepted {
        id: submitted.id,
        status: execbox_proto::RunStatus::Queued,
        status_url: url.clone(),
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, url)],
        axum::Json(body),
    )
        .into_response())
}

fn query(
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<bool, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e.body_text()))?;
    Ok(q.wait.unwrap_or(true))
}

/// Run JSON `{"code": ...}` as a program.
#[utoipa::path(
    post,
    path = "/run-json/",
    request_body = RunCodeRequest,
    params(WaitQuery),
    responses(
        (status = 200, description = "the run's record (whatever its status)", body = RunRecord),
        (status = 202, description = "accepted (wait=false)", body = Accepted),
        (status = 400, description = "malformed request", body = ErrorResponse),
        (status = 413, description = "too large", body = ErrorResponse),
        (status = 429, description = "queue full; see Retry-After", body = ErrorResponse),
        (status = 503, description = "the sandbox is not ready (not_ready), or the shared state store is unreachable (state_unavailable); see Retry-After", body = ErrorResponse),
    ),
    tag = "seed"
)]
pub async fn run_json(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    RunRoom(room): RunRoom,
    Json(req): Json<RunCodeRequest>,
) -> Result<Response, ApiError> {
    let wait = query(q)?;
    let run = validate::program(&state, req.code, req.stdin, req.args)?;
    start(&state, caller, (run, room), wait, "/status/").await
}

/// Run an uploaded `.py` file (multipart, one file field) as a program.
#[utoipa::path(
    post,
    path = "/run-file/",
    request_body(content_type = "multipart/form-data", description = "one field holding a .py file"),
    params(WaitQuery),
    responses(
        (status = 200, description = "the run's record", body = RunRecord),
        (status = 202, description = "accepted (wait=false)", body = Accepted),
        (status = 400, description = "not one .py file, or not UTF-8", body = ErrorResponse),
        (status = 413, description = "too large", body = ErrorResponse),
        (status = 429, description = "queue full", body = ErrorResponse),
        (status = 503, description = "the sandbox is not ready (not_ready), or the shared state store is unreachable (state_unavailable); see Retry-After", body = ErrorResponse),
    ),
    tag = "seed"
)]
pub async fn run_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    RunRoom(room): RunRoom,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let wait = query(q)?;
    let mut mp = multipart.map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidMultipart,
            format!("expected multipart/form-data: {}", e.body_text()),
        )
    })?;
    let mut code: Option<String> = None;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        let Some(file_name) = field.file_name().map(str::to_owned) else {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidMultipart,
                "every part must be a file upload (with a filename)",
            ));
        };
        if code.is_some() {
            return Err(ApiError::bad_request(
                ErrorCode::TooManyFiles,
                "upload exactly one .py file",
            ));
        }
        if !file_name.ends_with(".py") {
            return Err(ApiError::bad_request(
                ErrorCode::NotPython,
                format!("{file_name:?} is not a .py file"),
            ));
        }
        let bytes = field.bytes().await.map_err(multipart_error)?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidUtf8, "the file is not valid UTF-8")
        })?;
        code = Some(text);
    }
    let code = code
        .ok_or_else(|| ApiError::bad_request(ErrorCode::NoFiles, "upload exactly one .py file"))?;
    let run = validate::program(&state, code, None, None)?;
    start(&state, caller, (run, room), wait, "/status/").await
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the upload is too large",
        )
    } else {
        ApiError::bad_request(ErrorCode::InvalidMultipart, e.body_text())
    }
}

/// A run's record: queued, running, or finished.
#[utoipa::path(
    get,
    path = "/status/{id}",
    params(("id" = String, Path, description = "run id")),
    responses(
        (status = 200, description = "the record", body = RunRecord),
        (status = 404, description = "unknown or expired id", body = ErrorResponse),
        (status = 503, description = "the shared state store is unreachable (state_unavailable)", body = ErrorResponse),
    ),
    tag = "seed"
)]
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<RunRecord>, ApiError> {
    state
        .store
        .get(&id, caller.user.as_deref())
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::run_not_found(&id))
}

/// Start a run (general form).
#[utoipa::path(
    post,
    path = "/v1/runs",
    request_body = CreateRunRequest,
    responses(
        (status = 200, description = "the run's record (wait=true)", body = RunRecord),
        (status = 202, description = "accepted (wait=false)", body = Accepted),
        (status = 400, description = "malformed request, unknown language or version, limit above maximum", body = ErrorResponse),
        (status = 413, description = "too large", body = ErrorResponse),
        (status = 429, description = "queue full; see Retry-After", body = ErrorResponse),
        (status = 503, description = "the sandbox is not ready (not_ready), or the shared state store is unreachable (state_unavailable); see Retry-After", body = ErrorResponse),
    ),
    tag = "v1"
)]
pub async fn create_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunRoom(room): RunRoom,
    Json(req): Json<CreateRunRequest>,
) -> Result<Response, ApiError> {
    let wait = req.wait.unwrap_or(true);
    let mut run = validate::run_request(&state, req)?;
    // Its events can be followed with GET /v1/runs/{id}/events.
    run.live = true;
    start(&state, caller, (run, room), wait, "/v1/runs/").await
}

/// A run's record.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    params(("id" = String, Path, description = "run id")),
    responses(
        (status = 200, description = "the record", body = RunRecord),
        (status = 404, description = "unknown or expired id", body = ErrorResponse),
        (status = 503, description = "the shared state store is unreachable (state_unavailable)", body = ErrorResponse),
    ),
    tag = "v1"
)]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<RunRecord>, ApiError> {
    status(State(state), caller, Path(id)).await
}

/// Cancel a queued or running run (kills its jail). Answers with the record as it is now;
/// poll it to see `cancelled`.
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    params(("id" = String, Path, description = "run id")),
    responses(
        (status = 202, description = "cancellation requested", body = RunRecord),
        (status = 200, description = "the run had already finished", body = RunRecord),
        (status = 404, description = "unknown or expired id", body = ErrorResponse),
        (status = 503, description = "the shared state store is unreachable (state_unavailable)", body = ErrorResponse),
    ),
    tag = "v1"
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = state
        .store
        .cancel(&id, caller.user.as_deref())
        .await?
        .ok_or_else(|| ApiError::run_not_found(&id))?;
    let code = if rec.status.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, axum::Json(rec)).into_response())
}

/// The runtimes this server offers.
#[utoipa::path(
    get,
    path = "/v1/runtimes",
    responses((status = 200, description = "available runtimes (none until the sandbox has started)", body = [RuntimeInfo])),
    tag = "v1"
)]
pub async fn runtimes(State(state): State<AppState>) -> axum::Json<Vec<RuntimeInfo>> {
    axum::Json(state.sandbox.status().runtimes.clone())
}

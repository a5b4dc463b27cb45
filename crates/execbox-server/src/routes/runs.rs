//! Runs as programs: seed 003's `/run-json/`, `/run-file/` and `/status/{id}`, and the general
//! `/v1/runs` API.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use execbox_proto::runtime::select;
use execbox_proto::ErrorCode;
use execbox_proto::RunRecord;
use execbox_proto::{Mode, SelectError, SourceFile};

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
    let submitted = runner::submit_in(state, req, caller.user, Some(room))?;
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

fn program(
    state: &AppState,
    code: String,
    stdin: Option<String>,
    args: Option<Vec<String>>,
) -> Result<RunRequest, ApiError> {
    validate::source("code", &code, state.cfg.max_source_bytes)?;
    let limits = state.cfg.spawner.default_limits;
    Ok(RunRequest {
        mode: Mode::Program,
        files: vec![SourceFile {
            name: "main.py".into(),
            content: code,
        }],
        stdin: validate::stdin(stdin, &limits)?,
        args: validate::args(args)?,
        limits,
        runtime: None,
    })
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
    let run = program(&state, req.code, req.stdin, req.args)?;
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
    let run = program(&state, code, None, None)?;
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
    let submitted = submit_run(&state, &caller, req, Some(room))?;
    respond(submitted, wait, "/v1/runs/").await
}

/// Start a run of the general form for `caller`: validation, then [`runner::submit`] (per-user
/// concurrency and CPU quotas, readiness, admission, and their metrics). This is the one path
/// by which both `POST /v1/runs` and a WebSocket `run` message start a run; the request-rate
/// quota is charged before, per HTTP request or WebSocket message
/// ([`crate::auth::charge_request`]). An HTTP request brings the `room` it waited for before
/// its body was read ([`RunRoom`]); a WebSocket message has none and is admitted or refused at
/// once.
pub fn submit_run(
    state: &AppState,
    caller: &Caller,
    req: CreateRunRequest,
    room: Option<Room>,
) -> Result<Submitted, ApiError> {
    let run = run_request(state, req)?;
    runner::submit_in(state, run, caller.user.clone(), room)
}

/// Validate a `/v1/runs` body.
fn run_request(state: &AppState, req: CreateRunRequest) -> Result<RunRequest, ApiError> {
    // The runtimes are the spawner's (its hello); before the first one nothing runs anyway.
    let status = state.spawner.status();
    if status.runtimes.is_empty() {
        runner::ready(state)?;
    }
    let runtime = select(&status.runtimes, &req.language, req.version.as_deref())
        .map_err(select_error)?
        .clone();
    let unnamed_entry = req.files.first().is_some_and(|f| f.name.is_none());
    let limits = validate::limits(
        req.limits,
        state.cfg.spawner.default_limits,
        &state.cfg.max_limits,
    )?;
    let mode = req.mode.unwrap_or(Mode::Program);
    if !runtime.modes.contains(&mode) {
        return Err(ApiError::bad_request(
            ErrorCode::NotPython,
            format!(
                "{} {} does not support mode {}; it supports {:?}",
                runtime.language,
                runtime.version,
                mode.as_str(),
                runtime.modes
            ),
        ));
    }
    let mut files = validate::files(req.files, state.cfg.max_source_bytes)?;
    if let (true, Some(first)) = (unnamed_entry, files.first_mut()) {
        first.name.clone_from(&runtime.entry);
    }
    Ok(RunRequest {
        mode,
        files,
        stdin: validate::stdin(req.stdin, &limits)?,
        args: validate::args(req.args)?,
        limits,
        runtime: Some(runtime.to_ref()),
    })
}

/// A selection failure as a 400 naming what exists.
fn select_error(e: SelectError) -> ApiError {
    let code = match e {
        SelectError::UnknownLanguage { .. } => ErrorCode::UnknownLanguage,
        SelectError::InvalidVersion { .. } => ErrorCode::InvalidVersion,
        SelectError::NoMatchingVersion { .. } => ErrorCode::NoMatchingVersion,
    };
    ApiError::bad_request(code, e.to_string())
}

/// A run's record.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    params(("id" = String, Path, description = "run id")),
    responses(
        (status = 200, description = "the record", body = RunRecord),
        (status = 404, description = "unknown or expired id", body = ErrorResponse),
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
    axum::Json(state.spawner.status().runtimes.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_errors_are_400s_with_their_codes() {
        let all = [RuntimeInfo {
            language: "python".into(),
            version: "3.11.2".into(),
            aliases: vec!["py".into()],
            compiled: false,
            modes: vec![Mode::Program, Mode::Main],
            packages: vec![],
            entry: "main.py".into(),
        }];
        for ok in ["3", "3.11", "3.11.2", ">=3.10", "*", "latest", "^3"] {
            assert!(select(&all, "py", Some(ok)).is_ok(), "{ok}");
        }
        let code = |l: &str, v: &str| {
            select(&all, l, Some(v))
                .map_err(select_error)
                .unwrap_err()
                .body
                .error
                .code
        };
        assert_eq!(code("python", "3.12"), "no_matching_version");
        assert_eq!(code("python", "2"), "no_matching_version");
        assert_eq!(code("python", "not a version"), "invalid_version");
        assert_eq!(code("cobol", "*"), "unknown_language");
    }
}

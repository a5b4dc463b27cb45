//! From a validated request to a finished run: admission, the run store, the spawner.

use execbox_proto::spawner::RunOrder;
use execbox_proto::ErrorCode;
use execbox_proto::{
    new_run_id, now_rfc3339, ErrorBody, Limits, Mode, RunRecord, RunStatus, RuntimeRef, SourceFile,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::admission::{Room, Ticket};
use crate::error::ApiError;
use crate::quota::RunSlot;
use crate::state::AppState;

/// A validated run request.
#[derive(Debug)]
pub struct RunRequest {
    /// Main-function contract or program.
    pub mode: Mode,
    /// Files, entry point first.
    pub files: Vec<SourceFile>,
    /// Standard input.
    pub stdin: String,
    /// Program arguments.
    pub args: Vec<String>,
    /// Limits, within the maxima.
    pub limits: Limits,
    /// The selected runtime; `None` is the default Python (`/execute`, `/run-json/`).
    pub runtime: Option<RuntimeRef>,
}

/// A run that was accepted.
#[derive(Debug)]
pub struct Submitted {
    /// Run id.
    pub id: String,
    /// Yields the final record.
    pub done: oneshot::Receiver<RunRecord>,
    /// Cancels the run.
    pub cancel: CancellationToken,
}

/// A record the server writes itself (queued, cancelled before it started, internal error),
/// naming the runtime as the spawner last reported it.
fn record(state: &AppState, id: &str, created_at: String, status: RunStatus) -> RunRecord {
    let sp = state.spawner.status();
    let (language, version) = sp.runtime().unwrap_or(("python", ""));
    RunRecord {
        id: id.to_owned(),
        language: language.to_owned(),
        version: version.to_owned(),
        status,
        degraded: false,
        missing_layers: vec![],
        error: None,
        compile: None,
        run: None,
        result: None,
        created_at,
        finished_at: None,
        timings_us: vec![],
    }
}

/// Admit the run (or 429), store it as queued and start driving it.
pub fn submit(
    state: &AppState,
    req: RunRequest,
    owner: Option<String>,
) -> Result<Submitted, ApiError> {
    submit_in(state, req, owner, None)
}

/// [`submit`] for a request that already waited for `room` before its body was read
/// ([`crate::extract::RunRoom`]).
pub fn submit_in(
    state: &AppState,
    req: RunRequest,
    owner: Option<String>,
    room: Option<Room>,
) -> Result<Submitted, ApiError> {
    let user_slot = match &owner {
        Some(u) => match state.quotas.start_run(u) {
            Ok(s) => Some(s),
            Err(e) => {
                state.metrics.reject(e.body.error.code);
                return Err(e);
            }
        },
        None => None,
    };
    ready(state)?;
    let user = owner.as_deref().unwrap_or("");
    let ticket = match room {
        Some(room) => state.admission.try_enter_with(user, room),
        None => state.admission.try_enter(user),
    };
    let Some(ticket) = ticket else {
        return Err(queue_full(state));
    };
    let id = new_run_id();
    let created_at = now_rfc3339();
    let cancel = CancellationToken::new();
    let mut queued = record(state, &id, created_at.clone(), RunStatus::Queued);
    if let Some(rt) = &req.runtime {
        queued.language.clone_from(&rt.language);
        queued.version.clone_from(&rt.version);
    }
    state.store.insert(queued, owner.clone(), cancel.clone());
    let order = RunOrder {
        id: id.clone(),
        created_at,
        mode: req.mode,
        files: req.files,
        stdin: req.stdin,
        args: req.args,
        limits: req.limits,
        runtime: req.runtime,
    };
    let (tx, done) = oneshot::channel();
    let quota = QuotaHold {
        owner,
        _slot: user_slot,
    };
    tokio::spawn(drive(
        state.clone(),
        ticket,
        quota,
        order,
        cancel.clone(),
        tx,
    ));
    Ok(Submitted { id, done, cancel })
}

/// 503 unless the spawner is up and passed its canary.
pub fn ready(state: &AppState) -> Result<(), ApiError> {
    let sp = state.spawner.status();
    if sp.up && sp.canary_ok {
        return Ok(());
    }
    state.metrics.reject(ErrorCode::NotReady);
    Err(ApiError {
        retry_after: Some(2),
        ..ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "the sandbox is starting or restarting; retry shortly",
        )
    })
}

/// 429 `queue_full`, counted.
pub fn queue_full(state: &AppState) -> ApiError {
    state.metrics.reject(ErrorCode::QueueFull);
    ApiError::too_many(
        ErrorCode::QueueFull,
        "too many runs are running or queued; retry shortly",
        1,
    )
}

/// The user's concurrent-run place, held for the run's life, and whom to charge its CPU to.
struct QuotaHold {
    owner: Option<String>,
    _slot: Option<RunSlot>,
}

async fn drive(
    state: AppState,
    ticket: Ticket,
    quota: QuotaHold,
    order: RunOrder,
    cancel: CancellationToken,
    done: oneshot::Sender<RunRecord>,
) {
    let id = order.id.clone();
    let created_at = order.created_at.clone();
    let permit = tokio::select! {
        p = ticket.acquire() => p,
        _ = cancel.cancelled() => {
            let mut r = record(&state, &id, created_at, RunStatus::Cancelled);
            r.error = Some(ErrorBody::new(ErrorCode::Cancelled, "the run was cancelled before it started"));
            r.finished_at = Some(now_rfc3339());
            conclude(&state, r, done);
            return;
        }
    };
    // Backstop: a run always ends within its wall-clock limit plus teardown; if no record
    // comes well after that, something inside execbox failed. Conclude it rather than hold
    // its slot forever.
    let backstop = std::time::Duration::from_millis(order.limits.wall_time_ms)
        + std::time::Duration::from_secs(60);
    let mut rx = state.spawner.run(order).await;
    let result = tokio::select! {
        r = &mut rx => r,
        _ = cancel.cancelled() => {
            state.spawner.cancel(&id).await;
            match tokio::time::timeout(backstop, rx).await {
                Ok(r) => r,
                Err(_) => Ok(Err("no record after cancel".into())),
            }
        }
        _ = tokio::time::sleep(backstop) => {
            state.spawner.cancel(&id).await;
            Ok(Err("no record from the spawner within the backstop".into()))
        }
    };
    let rec = match result {
        Ok(Ok(r)) => r,
        Ok(Err(detail)) => {
            tracing::error!(run = %id, %detail, "run failed inside execbox");
            internal_error(&state, &id, created_at)
        }
        Err(_) => {
            tracing::error!(run = %id, "spawner dropped the run");
            internal_error(&state, &id, created_at)
        }
    };
    drop(permit);
    drop(ticket);
    if let (Some(user), Some(run)) = (&quota.owner, &rec.run) {
        state.quotas.charge_cpu(user, run.cpu_time_ms);
    }
    drop(quota);
    conclude(&state, rec, done);
}

fn internal_error(state: &AppState, id: &str, created_at: String) -> RunRecord {
    let mut r = record(state, id, created_at, RunStatus::InternalError);
    r.error = Some(ErrorBody::new(
        ErrorCode::InternalError,
        "execbox failed to run this; the cause is in the server log",
    ));
    r.finished_at = Some(now_rfc3339());
    r
}

fn conclude(state: &AppState, rec: RunRecord, done: oneshot::Sender<RunRecord>) {
    state.metrics.run_finished(
        rec.status,
        &rec.language,
        rec.run.as_ref().map(|r| r.wall_time_ms / 1000.0),
    );
    tracing::info!(run = %rec.id, status = rec.status.as_str(), "run finished");
    state.store.finish(rec.clone());
    let _ = done.send(rec);
}

/// Wait for a submitted run's final record. If the caller goes away first (the client
/// disconnected and the handler future was dropped), the run is cancelled: nobody will read
/// its result, and it must not hold a slot that others are queueing for.
pub async fn wait(s: Submitted) -> Result<RunRecord, ApiError> {
    let guard = s.cancel.drop_guard();
    let r = s
        .done
        .await
        .map_err(|_| ApiError::internal(format!("run {} ended without a record", s.id)));
    guard.disarm();
    r
}

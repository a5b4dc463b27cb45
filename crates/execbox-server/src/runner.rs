//! From a validated request to a finished run: admission, the run store, the spawner.

use execbox_proto::spawner::RunOrder;
use execbox_proto::ErrorCode;
use execbox_proto::{
    new_run_id, now_rfc3339, Compare, ErrorBody, Limits, Mode, RunRecord, RunStatus, RuntimeRef,
    SourceFile, TestCase,
};
use std::time::Duration;

use std::sync::Arc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::admission::{Permit, Room, Ticket};
use crate::error::ApiError;
use crate::live::{LiveLog, LiveMessage};
use crate::quota::{self, RunQuota};
use crate::sandbox::LiveEvent;
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
    /// Test cases (validated; empty: one run with `stdin` and `args`).
    pub cases: Vec<TestCase>,
    /// How cases' stdout is compared.
    pub compare: Compare,
    /// Stream its stages and output into a [`LiveLog`] (`/v1/runs`, the WebSocket).
    pub live: bool,
    /// Keep its stdin open for the client (a live WebSocket run without cases).
    pub interactive: bool,
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
    /// Its events, for a live run.
    pub live: Option<Arc<LiveLog>>,
}

/// A record the server writes itself (queued, cancelled before it started, internal error),
/// naming the run's runtime, or for a run without one (`/execute`) the default runtime as the
/// sandbox last reported it.
fn record(
    state: &AppState,
    (id, created_at): (&str, &str),
    runtime: Option<&RuntimeRef>,
    status: RunStatus,
) -> RunRecord {
    if let Some(rt) = runtime {
        return RunRecord::new(id, &rt.language, &rt.version, status, created_at);
    }
    let sp = state.sandbox.status();
    let (language, version) = sp.runtime().unwrap_or(("python", ""));
    RunRecord::new(id, language, version, status, created_at)
}

/// A final record the server writes itself for `order`: `status` with `code` and `message`.
fn final_record(
    state: &AppState,
    order: (&str, &str, Option<&RuntimeRef>),
    status: RunStatus,
    code: ErrorCode,
    message: &str,
) -> RunRecord {
    let (id, created_at, runtime) = order;
    let mut r = record(state, (id, created_at), runtime, status);
    r.error = Some(ErrorBody::new(code, message));
    r.finished_at = Some(now_rfc3339());
    r
}

/// Submit a validated run for `owner`: its user's quotas (or 429), readiness (or 503), a
/// place in admission (or 429), then it is stored as queued (or 503 `state_unavailable` when
/// the shared store cannot take it) and driven to its end in a task of its own. An HTTP
/// request brings the `room` it waited for before its body was read
/// ([`crate::extract::RunRoom`]); a WebSocket message has none and is admitted or refused at
/// once.
pub async fn submit(
    state: &AppState,
    req: RunRequest,
    owner: Option<String>,
    room: Option<Room>,
) -> Result<Submitted, ApiError> {
    let id = new_run_id();
    let quota = quota::reserve_run(state, owner.as_deref(), &id).await?;
    ready(state)?;
    let ticket = admit(state, owner.as_deref().unwrap_or(""), room)?;
    let live = req.live.then(|| {
        // Stages: a compile, then one run per case.
        let stages = req.cases.len().max(1) + 1;
        let log = Arc::new(LiveLog::new(LiveLog::bound_for(&req.limits, stages)));
        (log, owner.clone())
    });
    let (order, cancel) = enqueue(state, id, req, owner).await?;
    let id = order.id.clone();
    let live = live.map(|(log, owner)| {
        log.push(LiveMessage::Accepted { id: id.clone() });
        state.live.insert(&id, owner, log.clone());
        log
    });
    let (tx, done) = oneshot::channel();
    tokio::spawn(drive(
        state.clone(),
        ticket,
        quota,
        (order, live.clone()),
        cancel.clone(),
        tx,
    ));
    Ok(Submitted {
        id,
        done,
        cancel,
        live,
    })
}

/// 503 unless the sandbox is up and passed its canary.
pub fn ready(state: &AppState) -> Result<(), ApiError> {
    if state.sandbox.status().ready() {
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

/// A place among the running and queued runs (in the `room` waited for, if any), or 429.
fn admit(state: &AppState, user: &str, room: Option<Room>) -> Result<Ticket, ApiError> {
    let ticket = match room {
        Some(room) => state.admission.try_enter_with(user, room),
        None => state.admission.try_enter(user),
    };
    ticket.ok_or_else(|| queue_full(state))
}

/// Store the run as queued with its cancellation token, and make its order.
async fn enqueue(
    state: &AppState,
    id: String,
    req: RunRequest,
    owner: Option<String>,
) -> Result<(RunOrder, CancellationToken), ApiError> {
    let created_at = now_rfc3339();
    let cancel = CancellationToken::new();
    let queued = record(
        state,
        (&id, &created_at),
        req.runtime.as_ref(),
        RunStatus::Queued,
    );
    state.store.insert(queued, owner, cancel.clone()).await?;
    let order = RunOrder {
        id,
        created_at,
        mode: req.mode,
        files: req.files,
        stdin: req.stdin,
        args: req.args,
        limits: req.limits,
        runtime: req.runtime,
        cases: req.cases,
        compare: req.compare,
        live: req.live,
        interactive: req.interactive,
    };
    Ok((order, cancel))
}

/// A run's life after admission: wait for a slot, execute in the sandbox, settle the quotas,
/// conclude. The ticket and the permit are given back before the record is published, so
/// the next run may start as this one's caller reads its result.
async fn drive(
    state: AppState,
    mut ticket: Ticket,
    quota: RunQuota,
    (order, live): (RunOrder, Option<Arc<LiveLog>>),
    cancel: CancellationToken,
    done: oneshot::Sender<RunRecord>,
) {
    let rec = match acquire_slot(&mut ticket, &cancel).await {
        Some(permit) => {
            let rec = execute(&state, order, live.clone(), &cancel).await;
            drop(permit);
            rec
        }
        None => final_record(
            &state,
            (&order.id, &order.created_at, order.runtime.as_ref()),
            RunStatus::Cancelled,
            ErrorCode::Cancelled,
            "the run was cancelled before it started",
        ),
    };
    drop(ticket);
    quota.settle(&rec).await;
    if let Some(log) = live {
        log.push(LiveMessage::Exit {
            record: Box::new(rec.clone()),
        });
        // Completed logs beyond the caps go now, not at the next periodic collection.
        let cfg = &state.cfg;
        state
            .live
            .gc(cfg.retention, cfg.max_stored_runs, cfg.max_stored_bytes);
    }
    conclude(&state, rec, done).await;
}

/// Wait for an execution slot; `None` when the run is cancelled first.
async fn acquire_slot(ticket: &mut Ticket, cancel: &CancellationToken) -> Option<Permit> {
    tokio::select! {
        p = ticket.acquire() => Some(p),
        _ = cancel.cancelled() => None,
    }
}

/// Send the order to the sandbox and wait for its record. A cancel is passed on (the sandbox
/// still answers with the record). Backstop: a run always ends within its stages' wall-clock
/// limits (a compile within the operator's maximum, then each case) plus teardown; if no
/// record comes well after that, something inside execbox failed: conclude it as an internal
/// error rather than hold its slot forever.
async fn execute(
    state: &AppState,
    order: RunOrder,
    live: Option<Arc<LiveLog>>,
    cancel: &CancellationToken,
) -> RunRecord {
    let runs = order.cases.len().max(1) as u64;
    let backstop = Duration::from_millis(order.limits.wall_time_ms.saturating_mul(runs))
        + Duration::from_millis(state.cfg.max_limits.wall_time_ms)
        + Duration::from_secs(60 + 2 * runs);
    let (id, created_at) = (order.id.clone(), order.created_at.clone());
    let runtime = order.runtime.clone();
    let store = state.store.clone();
    let started = id.clone();
    let on_started = Box::new(move || store.set_running(&started));
    let mut rx = match live {
        Some(log) => {
            let input = log.clone();
            let on_event = Box::new(move |e: LiveEvent| {
                log.push(match e {
                    LiveEvent::Stage { stage, case } => LiveMessage::Stage { stage, case },
                    LiveEvent::Output {
                        stream,
                        data,
                        truncated,
                    } => LiveMessage::output(stream, data, truncated),
                })
            });
            let rx = state.sandbox.run_live(order, on_started, on_event);
            // Stdin sent while the run was queued follows its order.
            input.open_stdin(|data, eof| state.sandbox.stdin(&id, data, eof));
            rx
        }
        None => state.sandbox.run(order, on_started),
    };
    let result = tokio::select! {
        r = &mut rx => r,
        _ = cancel.cancelled() => {
            state.sandbox.cancel(&id);
            match tokio::time::timeout(backstop, rx).await {
                Ok(r) => r,
                Err(_) => Ok(Err("no record after cancel".into())),
            }
        }
        _ = tokio::time::sleep(backstop) => {
            state.sandbox.cancel(&id);
            Ok(Err("no record from the spawner within the backstop".into()))
        }
    };
    let detail = match result {
        Ok(Ok(r)) => return r,
        Ok(Err(detail)) => detail,
        Err(_) => "the sandbox dropped the run".to_owned(),
    };
    tracing::error!(run = %id, %detail, "run failed inside execbox");
    final_record(
        state,
        (&id, &created_at, runtime.as_ref()),
        RunStatus::InternalError,
        ErrorCode::InternalError,
        "execbox failed to run this; the cause is in the server log",
    )
}

/// Publish the final record: metrics, log, store, and the waiting caller.
async fn conclude(state: &AppState, rec: RunRecord, done: oneshot::Sender<RunRecord>) {
    state.metrics.run_finished(
        rec.status,
        &rec.language,
        rec.run.as_ref().map(|r| r.wall_time_ms / 1000.0),
    );
    tracing::info!(run = %rec.id, status = rec.status.as_str(), "run finished");
    state.store.finish(rec.clone()).await;
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

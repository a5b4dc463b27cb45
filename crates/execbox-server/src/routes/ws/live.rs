//! One `execbox.v2` session after authentication: runs one after another, each streamed from
//! its [`LiveLog`] as the client reads (`docs/live-protocol.md`).
//!
//! Memory: the socket is written by a task of its own fed through a queue of
//! [`WRITE_QUEUE`] messages; the session takes the next event from the run's log only when
//! the queue has room, so a client that reads slowly (or never) only leaves its cursor
//! behind in the log, which is bounded by the run's output caps. Client messages are read
//! all the while (a `cancel` or `signal` is never stuck behind unsent output).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::StatusCode;
use execbox_proto::ErrorCode;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::live_protocol::{check_stdin, parse, signal, LiveClientMessage, MAX_SIGNALS};
use super::protocol::{ServerMessage, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_POLICY, CLOSE_TOO_LARGE};
use super::session::{is_too_large, too_large};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::live::{LiveLog, LiveMessage};
use crate::quota::charge_request;
use crate::runner;
use crate::state::AppState;
use crate::validate;

/// Messages queued for the socket's writer.
pub const WRITE_QUEUE: usize = 4;

/// How long the writer may take to flush the last messages and the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The session's current run.
struct Active {
    id: String,
    log: Arc<LiveLog>,
    /// The next event of the log to send.
    cursor: usize,
    cancel: CancellationToken,
    /// Dropping the session cancels the run.
    guard: DropGuard,
    /// Stdin still open for `stdin` messages.
    stdin_open: bool,
    /// Stdin bytes taken so far, and the run's limit.
    stdin_used: u64,
    stdin_max: u64,
    signals: usize,
}

/// What woke the session.
enum Wake<'a> {
    Message(Option<Result<Message, axum::Error>>),
    /// Room in the queue and the next event (`None`: the log ended).
    Event(
        Result<mpsc::Permit<'a, Message>, mpsc::error::SendError<()>>,
        Option<Arc<LiveMessage>>,
    ),
    Idle,
    ShuttingDown,
}

fn text(v: &impl serde::Serialize) -> Message {
    // These types hold strings, numbers and JSON values: serialising cannot fail.
    Message::Text(serde_json::to_string(v).unwrap_or_default().into())
}

/// The socket went away.
struct Gone;

/// Queue a reply or a close. A client that leaves the queue full for [`CLOSE_GRACE`] (it
/// stopped reading but still sends) is treated as gone.
async fn send(tx: &mpsc::Sender<Message>, m: Message) -> Result<(), Gone> {
    match tokio::time::timeout(CLOSE_GRACE, tx.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

/// An `error` message, then a close frame with `code` and the error's code as reason.
async fn close_with(tx: &mpsc::Sender<Message>, code: u16, e: &ApiError) {
    if send(tx, text(&ServerMessage::from(e))).await.is_ok() {
        let frame = CloseFrame {
            code,
            reason: e.body.error.code.as_str().into(),
        };
        let _ = send(tx, Message::Close(Some(frame))).await;
    }
}

/// Serve the session until it ends; the socket is closed by then.
pub(super) async fn serve(state: &AppState, socket: WebSocket, caller: &Caller) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let mut writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut active = None;
    let _ = session(state, &mut stream, &tx, caller, &mut active).await;
    // Cancel the run (if any) now, not when the writer is done.
    drop(active);
    drop(tx);
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn wake<'a>(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &'a mpsc::Sender<Message>,
    active: &Option<Active>,
    (idle_deadline, idle_len): (Instant, Duration),
    shutdown: &CancellationToken,
) -> Wake<'a> {
    // The idle timer runs when no run is going, or once the run is over and only its events
    // are still unsent (a client that stopped reading does not hold the socket forever).
    // Counted from the end of the run when it ends during this wait (not from the last event
    // sent, which for a quiet program may be long before: its `exit` must not race a close).
    let idle = async {
        match active {
            Some(a) if !a.log.is_done() => {
                a.log.done().await;
                tokio::time::sleep(idle_len).await
            }
            _ => tokio::time::sleep_until(idle_deadline).await,
        }
    };
    let next = async {
        match active {
            Some(a) => {
                let permit = tx.reserve().await;
                (permit, a.log.next(a.cursor).await)
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        m = stream.next() => Wake::Message(m),
        (permit, e) = next => Wake::Event(permit, e),
        _ = idle => Wake::Idle,
        _ = shutdown.cancelled(), if active.is_none() => Wake::ShuttingDown,
    }
}

async fn session(
    state: &AppState,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &mpsc::Sender<Message>,
    caller: &Caller,
    active: &mut Option<Active>,
) -> Result<(), Gone> {
    let idle = state.cfg.ws_idle;
    let mut idle_deadline = Instant::now() + idle;
    loop {
        let idling = (idle_deadline, idle);
        let msg = match wake(stream, tx, active, idling, &state.shutdown).await {
            Wake::ShuttingDown => {
                let e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ShuttingDown,
                    "the server is shutting down; reconnect to another instance",
                );
                close_with(tx, CLOSE_GOING_AWAY, &e).await;
                return Ok(());
            }
            Wake::Idle => {
                let e = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::IdleTimeout,
                    format!("no message and no run for {} s", idle.as_secs()),
                );
                close_with(tx, CLOSE_IDLE, &e).await;
                return Ok(());
            }
            Wake::Event(Err(_), _) => return Err(Gone),
            Wake::Event(Ok(permit), event) => {
                idle_deadline = Instant::now() + idle;
                let Some(event) = event else {
                    // The log ended without an exit event: cannot happen; end the run here.
                    take_done(active);
                    continue;
                };
                permit.send(text(&*event));
                if let Some(a) = active.as_mut() {
                    a.cursor += 1;
                }
                if matches!(*event, LiveMessage::Exit { .. }) {
                    take_done(active);
                }
                continue;
            }
            Wake::Message(None) | Wake::Message(Some(Ok(Message::Close(_)))) => return Err(Gone),
            Wake::Message(Some(Err(e))) => {
                if is_too_large(e) {
                    close_with(tx, CLOSE_TOO_LARGE, &too_large(state.cfg.max_body_bytes)).await;
                }
                return Err(Gone);
            }
            Wake::Message(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Wake::Message(Some(Ok(m))) => m,
        };
        idle_deadline = Instant::now() + idle;
        // Every client message is a request for the rate quota, as in execbox.v1.
        if let Err(e) = charge_request(state, caller).await {
            send(tx, text(&ServerMessage::from(&e))).await?;
            continue;
        }
        let parsed = match &msg {
            Message::Text(t) => parse(t.as_str()),
            _ => Err(ApiError::bad_request(
                ErrorCode::InvalidMessage,
                "send text messages holding JSON",
            )),
        };
        let reply = match parsed {
            Err(e) => Err(e),
            Ok(LiveClientMessage::Auth { .. }) => Err(ApiError::bad_request(
                ErrorCode::AlreadyAuthenticated,
                "this session is already authenticated",
            )),
            Ok(LiveClientMessage::Run {
                request,
                close_stdin,
            }) => {
                if let Some(auth) = &state.auth {
                    if let Err(e) = auth.check_expiry(caller) {
                        close_with(tx, CLOSE_POLICY, &e).await;
                        return Ok(());
                    }
                }
                start(state, caller, request, close_stdin, active).await
            }
            Ok(LiveClientMessage::Cancel) => current(active).map(|a| a.cancel.cancel()),
            Ok(LiveClientMessage::Stdin { data, eof }) => {
                current(active).and_then(|a| stdin(state, a, data, eof))
            }
            Ok(LiveClientMessage::Signal { signal: name }) => signal(&name).and_then(|sig| {
                let a = current(active)?;
                if a.signals >= MAX_SIGNALS {
                    return Err(ApiError::bad_request(
                        ErrorCode::TooManySignals,
                        format!("at most {MAX_SIGNALS} signals per run"),
                    ));
                }
                a.signals += 1;
                state.sandbox.signal(&a.id, sig);
                Ok(())
            }),
        };
        if let Err(e) = reply {
            send(tx, text(&ServerMessage::from(&e))).await?;
        }
    }
}

/// The run is over and its last event sent.
fn take_done(active: &mut Option<Active>) {
    if let Some(a) = active.take() {
        a.guard.disarm();
    }
}

/// The current run, or `no_run`.
fn current(active: &mut Option<Active>) -> Result<&mut Active, ApiError> {
    active
        .as_mut()
        .ok_or_else(|| ApiError::bad_request(ErrorCode::NoRun, "no run is in progress"))
}

/// Validate and submit a run; its events follow from its log (the first is `accepted`).
async fn start(
    state: &AppState,
    caller: &Caller,
    request: crate::api::CreateRunRequest,
    close_stdin: bool,
    active: &mut Option<Active>,
) -> Result<(), ApiError> {
    if active.is_some() {
        return Err(ApiError::bad_request(
            ErrorCode::Busy,
            "one run at a time; send {\"type\": \"cancel\"} to stop it",
        ));
    }
    let mut run = validate::run_request(state, request)?;
    run.live = true;
    run.interactive = !close_stdin && run.cases.is_empty();
    let (stdin_open, stdin_used, stdin_max) = (
        run.interactive,
        run.stdin.len() as u64,
        run.limits.stdin_bytes,
    );
    let s = runner::submit(state, run, caller.user.clone(), None).await?;
    let Some(log) = s.live else {
        return Err(ApiError::internal("a live run without its log"));
    };
    *active = Some(Active {
        id: s.id,
        log,
        cursor: 0,
        guard: s.cancel.clone().drop_guard(),
        cancel: s.cancel,
        stdin_open,
        stdin_used,
        stdin_max,
        signals: 0,
    });
    Ok(())
}

/// A `stdin` message for the current run.
fn stdin(state: &AppState, a: &mut Active, data: String, eof: bool) -> Result<(), ApiError> {
    if !a.stdin_open {
        return Err(ApiError::bad_request(
            ErrorCode::StdinClosed,
            "this run's stdin is closed (after eof, with close_stdin, or for a run with cases)",
        ));
    }
    check_stdin(data.len(), a.stdin_used, a.stdin_max)?;
    a.stdin_used += data.len() as u64;
    a.stdin_open = !eof;
    let id = &a.id;
    a.log
        .stdin(data, eof, |data, eof| state.sandbox.stdin(id, data, eof));
    Ok(())
}

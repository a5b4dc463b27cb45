//! One WebSocket session: authentication by the first message (when needed), then messages
//! and at most one active run, until the client leaves, the session idles out or the token
//! has expired. The rules are in the parent module's docs.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::StatusCode;
use execbox_proto::ErrorCode;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::protocol::{
    parse_client, parse_pre_auth, ClientMessage, ServerMessage, CLOSE_GOING_AWAY, CLOSE_IDLE,
    CLOSE_POLICY, CLOSE_TOO_LARGE, PRE_AUTH_MAX_BYTES,
};
use super::slots::WsSlot;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::quota::charge_request;
use crate::runner;
use crate::state::AppState;
use crate::validate;
use execbox_proto::RunRecord;

/// The session's run; dropping it (the socket went away) cancels the run.
struct ActiveRun {
    done: oneshot::Receiver<RunRecord>,
    cancel: CancellationToken,
    guard: DropGuard,
}

/// What woke the session up.
enum Event {
    Message(Option<Result<Message, axum::Error>>),
    Finished(Result<Box<RunRecord>, oneshot::error::RecvError>),
    Idle,
    ShuttingDown,
}

/// The client left (or the connection failed): nothing more can be sent.
struct Gone;

async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> Result<(), Gone> {
    let text = serde_json::to_string(msg).map_err(|e| {
        tracing::error!(%e, "serialising a WebSocket message");
        Gone
    })?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| Gone)
}

/// Send `e` as an `error` message, then close with `code` and `e`'s code as the reason.
async fn close_with(socket: &mut WebSocket, code: u16, e: &ApiError) {
    if send(socket, &ServerMessage::from(e)).await.is_ok() {
        let frame = CloseFrame {
            code,
            reason: e.body.error.code.as_str().into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
}

pub(super) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::MessageTooLarge,
        format!("messages may be at most {limit} bytes here"),
    )
}

/// Whether a receive error is the transport refusing an over-long message.
pub(super) fn is_too_large(e: axum::Error) -> bool {
    use tungstenite::error::{CapacityError, Error};
    matches!(
        e.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(CapacityError::MessageTooLong { .. }))
    )
}

/// Entry point after the upgrade; `live` selects the `execbox.v2` session
/// ([`super::live`]).
pub(super) async fn run(
    state: AppState,
    mut socket: WebSocket,
    caller: Option<Caller>,
    mut slot: WsSlot,
    live: bool,
) {
    let caller = match caller {
        Some(c) => c,
        None => match authenticate(&state, &mut socket, &mut slot).await {
            Some(c) => c,
            None => return,
        },
    };
    let ready = ServerMessage::Ready {
        user_id: caller.user.clone(),
        idle_timeout_secs: state.cfg.ws_idle.as_secs(),
        max_message_bytes: state.cfg.max_body_bytes,
    };
    if send(&mut socket, &ready).await.is_ok() {
        if live {
            super::live::serve(&state, socket, &caller).await;
        } else {
            let _ = serve(&state, &mut socket, &caller).await;
        }
    }
    drop(slot);
}

/// The first message must authenticate, within the auth timeout and [`PRE_AUTH_MAX_BYTES`].
async fn authenticate(
    state: &AppState,
    socket: &mut WebSocket,
    slot: &mut WsSlot,
) -> Option<Caller> {
    let auth = state.auth.as_ref()?;
    let deadline = Instant::now() + state.cfg.ws_auth_timeout;
    let text = loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                let e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::AuthTimeout,
                    "no {\"type\": \"auth\"} message in time",
                );
                close_with(socket, CLOSE_POLICY, &e).await;
                return None;
            }
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                if is_too_large(e) {
                    close_with(socket, CLOSE_TOO_LARGE, &too_large(PRE_AUTH_MAX_BYTES)).await;
                }
                return None;
            }
            Ok(None) => return None,
        };
        // The length is checked before anything is parsed.
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if len > PRE_AUTH_MAX_BYTES {
            close_with(socket, CLOSE_TOO_LARGE, &too_large(PRE_AUTH_MAX_BYTES)).await;
            return None;
        }
        break match msg {
            Message::Text(t) => t,
            _ => Default::default(), // binary: answered as missing_token
        };
    };
    let checked = parse_pre_auth(text.as_str()).and_then(|token| {
        auth.verify(&token)
            .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken, why))
    });
    let caller = match checked {
        Ok(c) => c,
        Err(e) => {
            close_with(socket, CLOSE_POLICY, &e).await;
            return None;
        }
    };
    // The auth message is this session's "request": the rate quota, then the user's cap.
    let bound = charge_request(state, &caller)
        .await
        .and_then(|()| match &caller.user {
            Some(u) => slot.bind_user(u).map_err(|e| {
                state.metrics.reject(ErrorCode::TooManyWebsockets);
                ApiError::from(e)
            }),
            None => Ok(()),
        });
    if let Err(e) = bound {
        close_with(socket, CLOSE_POLICY, &e).await;
        return None;
    }
    Some(caller)
}

async fn next_event(
    socket: &mut WebSocket,
    active: &mut Option<ActiveRun>,
    idle_deadline: Instant,
    shutdown: &CancellationToken,
) -> Event {
    let idle_armed = active.is_none();
    let finished = async {
        match active {
            Some(run) => (&mut run.done).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        m = socket.recv() => Event::Message(m),
        r = finished => Event::Finished(r.map(Box::new)),
        _ = tokio::time::sleep_until(idle_deadline), if idle_armed => Event::Idle,
        _ = shutdown.cancelled(), if idle_armed => Event::ShuttingDown,
    }
}

/// Messages and runs until the session ends.
async fn serve(state: &AppState, socket: &mut WebSocket, caller: &Caller) -> Result<(), Gone> {
    let idle = state.cfg.ws_idle;
    let mut idle_deadline = Instant::now() + idle;
    let mut active: Option<ActiveRun> = None;
    loop {
        let msg = match next_event(socket, &mut active, idle_deadline, &state.shutdown).await {
            Event::ShuttingDown => {
                let e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ShuttingDown,
                    "the server is shutting down; reconnect to another instance",
                );
                close_with(socket, CLOSE_GOING_AWAY, &e).await;
                return Ok(());
            }
            Event::Idle => {
                let e = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::IdleTimeout,
                    format!("no message and no run for {} s", idle.as_secs()),
                );
                close_with(socket, CLOSE_IDLE, &e).await;
                return Ok(());
            }
            Event::Finished(r) => {
                if let Some(run) = active.take() {
                    run.guard.disarm();
                }
                idle_deadline = Instant::now() + idle;
                let msg = match r {
                    Ok(record) => ServerMessage::Finished { record },
                    Err(_) => (&ApiError::internal("run ended without a record")).into(),
                };
                send(socket, &msg).await?;
                continue;
            }
            Event::Message(None) | Event::Message(Some(Ok(Message::Close(_)))) => return Err(Gone),
            Event::Message(Some(Err(e))) => {
                if is_too_large(e) {
                    close_with(
                        socket,
                        CLOSE_TOO_LARGE,
                        &too_large(state.cfg.max_body_bytes),
                    )
                    .await;
                }
                return Err(Gone);
            }
            Event::Message(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Event::Message(Some(Ok(m))) => m,
        };
        idle_deadline = Instant::now() + idle;
        // Every client message is a request for the rate quota, a run active or not.
        if let Err(e) = charge_request(state, caller).await {
            send(socket, &(&e).into()).await?;
            continue;
        }
        let parsed = match &msg {
            Message::Text(t) => parse_client(t.as_str()),
            _ => Err(ApiError::bad_request(
                ErrorCode::InvalidMessage,
                "send text messages holding JSON",
            )),
        };
        let reply = match parsed {
            Err(e) => Some(e),
            Ok(ClientMessage::Auth { .. }) => Some(ApiError::bad_request(
                ErrorCode::AlreadyAuthenticated,
                "this session is already authenticated",
            )),
            Ok(ClientMessage::Cancel) => match &active {
                Some(run) => {
                    run.cancel.cancel();
                    None
                }
                None => Some(ApiError::bad_request(
                    ErrorCode::NoRun,
                    "no run is in progress",
                )),
            },
            Ok(ClientMessage::Run { request }) => {
                if let Some(auth) = &state.auth {
                    if let Err(e) = auth.check_expiry(caller) {
                        close_with(socket, CLOSE_POLICY, &e).await;
                        return Ok(());
                    }
                }
                if active.is_some() {
                    Some(ApiError::bad_request(
                        ErrorCode::Busy,
                        "one run at a time; send {\"type\": \"cancel\"} to stop it",
                    ))
                } else {
                    let submitted = match validate::run_request(state, request) {
                        Ok(run) => runner::submit(state, run, caller.user.clone(), None).await,
                        Err(e) => Err(e),
                    };
                    match submitted {
                        Ok(s) => {
                            active = Some(ActiveRun {
                                done: s.done,
                                guard: s.cancel.clone().drop_guard(),
                                cancel: s.cancel,
                            });
                            send(socket, &ServerMessage::Accepted { id: s.id }).await?;
                            None
                        }
                        Err(e) => Some(e),
                    }
                }
            }
        };
        if let Some(e) = reply {
            send(socket, &(&e).into()).await?;
        }
    }
}

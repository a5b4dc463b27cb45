//! `GET /v1/ws`: runs over a WebSocket, for browsers, which cannot set an `Authorization`
//! header on a WebSocket. The token may come in that header, in `Sec-WebSocket-Protocol`
//! (offer `execbox.v1` and `bearer.<jwt>`; the server answers `execbox.v1`), or in the first
//! message: `{"type": "auth", "token": "<jwt>"}`.
//!
//! Then, one run at a time: `{"type": "run", "request": <the /v1/runs body>}` →
//! `{"type": "accepted", "id"}` … `{"type": "finished", "record": <run record>}`;
//! `{"type": "cancel"}` kills the current run. Errors: `{"type": "error", "error": {code,
//! message}}`. Output is delivered with the record (not streamed yet).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::{json, Value};

use crate::api::CreateRunRequest;
use crate::auth::{bearer, unauthorized, Caller};
use crate::error::ApiError;
use crate::routes::runs::run_request;
use crate::runner;
use crate::state::AppState;

/// How long an unauthenticated socket may take to send its `auth` message.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
const PROTOCOL: &str = "execbox.v1";

/// Upgrade to a WebSocket session.
#[utoipa::path(
    get,
    path = "/v1/ws",
    responses(
        (status = 101, description = "WebSocket session (see the module docs for messages)"),
        (status = 401, description = "a token was sent in a header and is invalid"),
    ),
    tag = "v1"
)]
pub async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned);
    let from_protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("bearer."))
                .map(str::to_owned)
        });
    let caller = match (&state.auth, from_header.or(from_protocol)) {
        (None, _) => Some(Caller {
            user: None,
            claims: None,
        }),
        (Some(auth), Some(token)) => match auth.verify(&token) {
            Ok(c) => Some(c),
            Err(why) => return unauthorized("invalid_token", why),
        },
        (Some(_), None) => None, // must authenticate with its first message
    };
    upgrade
        .protocols([PROTOCOL])
        .max_message_size(state.cfg.max_body_bytes)
        .on_upgrade(move |socket| session(state, socket, caller))
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn send_error(socket: &mut WebSocket, e: &ApiError) -> bool {
    send(socket, json!({"type": "error", "error": e.body.error})).await
}

/// The next text message as JSON; `None` when the socket closed.
async fn next_json(socket: &mut WebSocket) -> Option<Result<Value, ApiError>> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str::<Value>(t.as_str()).map_err(|e| {
                    ApiError::bad_request("invalid_json", format!("message is not JSON: {e}"))
                }))
            }
            Ok(Message::Binary(_)) => {
                return Some(Err(ApiError::bad_request(
                    "invalid_message",
                    "send text messages holding JSON",
                )))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {} // ping/pong
        }
    }
}

async fn authenticate(state: &AppState, socket: &mut WebSocket) -> Option<Caller> {
    let auth = state.auth.as_ref()?;
    let first = tokio::time::timeout(AUTH_TIMEOUT, next_json(socket)).await;
    let token = match first {
        Ok(Some(Ok(v))) if v["type"] == "auth" => v["token"].as_str().map(str::to_owned),
        Ok(None) => return None,
        _ => None,
    };
    let result = match token {
        Some(t) => auth.verify(&t).map_err(|why| {
            ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "invalid_token", why)
        }),
        None => Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "missing_token",
            "authenticate first: {\"type\": \"auth\", \"token\": \"<jwt>\"}",
        )),
    };
    match result {
        Ok(c) => Some(c),
        Err(e) => {
            send_error(socket, &e).await;
            let _ = socket.send(Message::Close(None)).await;
            None
        }
    }
}

async fn session(state: AppState, mut socket: WebSocket, caller: Option<Caller>) {
    let caller = match caller {
        Some(c) => c,
        None => match authenticate(&state, &mut socket).await {
            Some(c) => c,
            None => return,
        },
    };
    if !send(
        &mut socket,
        json!({"type": "ready", "user_id": caller.user}),
    )
    .await
    {
        return;
    }
    while let Some(msg) = next_json(&mut socket).await {
        let v = match msg {
            Ok(v) => v,
            Err(e) => {
                if !send_error(&mut socket, &e).await {
                    return;
                }
                continue;
            }
        };
        if let Some(u) = &caller.user {
            if let Err(e) = state.quotas.check_rate(u) {
                send_error(&mut socket, &e).await;
                continue;
            }
        }
        match v["type"].as_str() {
            Some("run") => {
                if !run(&state, &mut socket, &caller, v["request"].clone()).await {
                    return;
                }
            }
            Some("cancel") => {
                let e = ApiError::bad_request("no_run", "no run is in progress");
                send_error(&mut socket, &e).await;
            }
            _ => {
                let e = ApiError::bad_request(
                    "invalid_message",
                    "expected {\"type\": \"run\", \"request\": {…}} or {\"type\": \"cancel\"}",
                );
                send_error(&mut socket, &e).await;
            }
        }
    }
}

/// One run; false when the socket is gone.
async fn run(state: &AppState, socket: &mut WebSocket, caller: &Caller, request: Value) -> bool {
    let submitted = serde_path_to_error::deserialize::<_, CreateRunRequest>(request)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("request.{e}")))
        .and_then(|req| run_request(state, req))
        .and_then(|r| runner::submit(state, r, caller.user.clone()));
    let mut s = match submitted {
        Ok(s) => s,
        Err(e) => return send_error(socket, &e).await,
    };
    if !send(socket, json!({"type": "accepted", "id": s.id})).await {
        s.cancel.cancel();
        return false;
    }
    loop {
        tokio::select! {
            done = &mut s.done => {
                return match done {
                    Ok(rec) => send(socket, json!({"type": "finished", "record": rec})).await,
                    Err(_) => send_error(socket, &ApiError::internal("run ended without a record")).await,
                };
            }
            msg = next_json(socket) => match msg {
                None => {
                    s.cancel.cancel(); // nobody will read the result
                    return false;
                }
                Some(Ok(v)) if v["type"] == "cancel" => s.cancel.cancel(),
                Some(_) => {
                    let e = ApiError::bad_request("busy", "one run at a time; send {\"type\": \"cancel\"} to stop it");
                    if !send_error(socket, &e).await {
                        s.cancel.cancel();
                        return false;
                    }
                }
            },
        }
    }
}

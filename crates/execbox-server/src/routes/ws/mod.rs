//! `GET /v1/ws`: runs over a WebSocket, for browsers, which cannot set an `Authorization`
//! header on a WebSocket.
//!
//! # Before the upgrade (plain HTTP answers, nothing is upgraded)
//!
//! 0. Not a WebSocket handshake: axum's status (400, 405 or 426) with code `not_a_websocket`.
//! 1. `Origin`: a request that carries one (a browser) must come from an allowed origin
//!    ([`crate::origin`]; `--allowed-origins`), else 403 `origin_not_allowed`.
//! 2. A token in `Authorization: Bearer` or in `Sec-WebSocket-Protocol` (offer `execbox.v1` and
//!    `bearer.<jwt>`; the server answers `execbox.v1`) is checked now: invalid → 401
//!    `invalid_token`; it costs one request of the user's rate quota (429 `rate_quota`).
//! 3. Caps: more than `--max-websockets` open → 503 `too_many_websockets`; more than
//!    `--max-websockets-per-user` for this user → 429 `too_many_websockets`.
//!
//! # Authentication by the first message
//!
//! Without a token in the headers, the first message must be `{"type": "auth", "token": …}`,
//! at most 4 KiB ([`protocol::PRE_AUTH_MAX_BYTES`], checked before it is parsed, into a typed
//! message), within `--ws-auth-timeout-secs` (10 s). It counts against the total cap, then
//! against its user's once the token checks out.
//!
//! # Two protocols, chosen by subprotocol
//!
//! A client that offers `execbox.v2` gets the live protocol ([`live_protocol`], the session in
//! `live.rs`, specified in `docs/live-protocol.md`): output streamed as it is printed,
//! `stdin`, `signal`. Any other client (offering `execbox.v1`, or no subprotocol) gets
//! `execbox.v1`, described below and unchanged. Authentication, caps, quotas and close codes
//! are the same for both.
//!
//! # Messages of `execbox.v1` (JSON text, tagged by `type`; [`protocol`])
//!
//! Client → server: `auth` (above), `run` (`{"type": "run", "request": <the POST /v1/runs
//! body>}`, one run at a time), `cancel` (kills the current run).
//! Server → client: `ready` (`user_id`, `idle_timeout_secs`, `max_message_bytes`), `accepted`
//! (`id`), `finished` (`record`: the run record), `error` (`error: {code, message}`,
//! `retry_after` on quota errors). Output arrives with the record (not streamed yet).
//!
//! Every client message (text or binary, also while a run is active) costs one request of the
//! user's rate quota, as an HTTP request does; over it, the message is answered with `error`
//! `rate_quota` and dropped ([`crate::quota::charge_request`]). A `run` goes through
//! [`crate::validate::run_request`] and [`crate::runner::submit`], the same functions as
//! `POST /v1/runs` (validation, per-user quotas, admission, metrics), after the token's `exp`
//! is checked again. Error codes of the session itself: `invalid_json`,
//! `invalid_message`, `invalid_field`, `busy` (a run is active), `no_run` (cancel without one),
//! `already_authenticated`, plus those of `POST /v1/runs`.
//!
//! # Close codes (each close is preceded by an `error` message with the same code as reason)
//!
//! | code | reason | when |
//! |---|---|---|
//! | 1000 | `idle_timeout` | no client message and no active run for `--ws-idle-secs` (60 s) |
//! | 1001 | `shutting_down` | the server is shutting down (SIGTERM); sent once the active run, if any, has finished |
//! | 1008 | `missing_token`, `invalid_token` | first message is not a valid `auth` |
//! | 1008 | `auth_timeout` | no first message within `--ws-auth-timeout-secs` |
//! | 1008 | `rate_quota`, `too_many_websockets` | at first-message authentication: the user is over its rate quota or WebSocket cap |
//! | 1008 | `token_expired` | a `run` after the token's `exp` (plus `--jwt-leeway-secs`) |
//! | 1009 | `message_too_large` | a message before authentication above 4 KiB, or any above `--max-body-bytes` |
//!
//! Closing the socket cancels its active run.

mod live;
pub mod live_protocol;
pub mod protocol;
mod session;
pub mod slots;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use execbox_proto::ErrorCode;

use crate::auth::{bearer, unauthorized, Caller};
use crate::error::{ApiError, ErrorResponse};
use crate::origin;
use crate::quota::charge_request;
use crate::state::AppState;

const PROTOCOL: &str = "execbox.v1";

fn reject(state: &AppState, e: ApiError) -> Response {
    state.metrics.reject(e.body.error.code);
    e.into_response()
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned);
    from_header.or_else(|| {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix("bearer."))
                    .map(str::to_owned)
            })
    })
}

/// Upgrade to a WebSocket session.
#[utoipa::path(
    get,
    path = "/v1/ws",
    responses(
        (status = 101, description = "WebSocket session. Subprotocol `execbox.v1` (or none): messages `ClientMessage` and `ServerMessage`. Subprotocol `execbox.v2` (live runs, docs/live-protocol.md): client messages `LiveClientMessage`, server messages `LiveMessage` plus `ready` and `error` of `ServerMessage`. Close codes in the README and docs/live-protocol.md"),
        (status = 400, description = "`not_a_websocket`: not a WebSocket handshake (also 405, 426)", body = ErrorResponse),
        (status = 401, description = "a token was sent in a header and is invalid", body = ErrorResponse),
        (status = 403, description = "`origin_not_allowed`: the Origin header is not allowed", body = ErrorResponse),
        (status = 429, description = "`rate_quota`, or `too_many_websockets` for this user; see Retry-After", body = ErrorResponse),
        (status = 503, description = "`too_many_websockets` in total; see Retry-After", body = ErrorResponse),
    ),
    tag = "v1"
)]
pub async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rej) => {
            let e = ApiError::new(rej.status(), ErrorCode::NotAWebsocket, rej.body_text());
            return e.into_response();
        }
    };
    let header_str = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !origin::allowed(
        &state.cfg.allowed_origins,
        header_str(header::ORIGIN),
        header_str(header::HOST),
    ) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::OriginNotAllowed,
            "this Origin may not open a WebSocket here (see --allowed-origins)",
        );
        return reject(&state, e);
    }
    let caller = match (&state.auth, header_token(&headers)) {
        (None, _) => Some(Caller::anonymous()),
        (Some(auth), Some(token)) => match auth.verify(&token) {
            Ok(c) => Some(c),
            Err(why) => return unauthorized(ErrorCode::InvalidToken, why),
        },
        (Some(_), None) => None, // must authenticate with its first message
    };
    if let Some(c) = &caller {
        if let Err(e) = charge_request(&state, c).await {
            return e.into_response();
        }
    }
    let user = caller.as_ref().and_then(|c| c.user.as_deref());
    let slot = match state.websockets.try_open(user) {
        Ok(s) => s,
        Err(e) => return reject(&state, e.into()),
    };
    let max = state.cfg.max_body_bytes;
    // A client that offers execbox.v2 gets the live protocol; any other, execbox.v1.
    let upgrade = upgrade.protocols([live_protocol::PROTOCOL_V2, PROTOCOL]);
    let live = upgrade
        .selected_protocol()
        .is_some_and(|p| p == live_protocol::PROTOCOL_V2);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(state, socket, caller, slot, live))
}

//! `GET /v1/runs/{id}/events`: a live run's events as Server-Sent Events, for clients without
//! a WebSocket (`docs/live-protocol.md`). Each event's name is its `type`, its data the same
//! JSON as the `execbox.v2` WebSocket message, its id its index in the run's log; a client
//! that reconnects with `Last-Event-ID: N` gets the events after N, for as long as the run is
//! retained. The stream ends after `exit`. Readers hold a cursor into the run's shared log,
//! never a copy (see [`crate::live`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use execbox_proto::ErrorCode;
use futures_util::Stream;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::live::{LiveLog, LiveMessage};
use crate::state::AppState;

/// The index after which to resume, from `Last-Event-ID`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidLastEventId,
                "Last-Event-ID must be the id of an event of this stream (a decimal number)",
            )
        })
}

fn sse_event(index: usize, msg: &LiveMessage) -> Event {
    let ev = Event::default().id(index.to_string()).event(msg.kind());
    // A LiveMessage is strings, numbers and a record: serialising it cannot fail.
    ev.json_data(msg)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}

/// The events of `log` from index `from` to its `exit`.
fn events_from(log: Arc<LiveLog>, from: usize) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((log, from), |(log, i)| async move {
        let msg = log.next(i).await?;
        Some((Ok(sse_event(i, &msg)), (log, i + 1)))
    })
}

/// A live run's events (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    params(
        ("id" = String, Path, description = "run id (of a run started with POST /v1/runs or the execbox.v2 WebSocket)"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: events `accepted`, `stage`, `stdout`, `stderr`, then `exit` (the record), each `data` a `LiveMessage` and `id` its index; the stream ends after `exit`", body = LiveMessage, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_last_event_id`", body = ErrorResponse),
        (status = 404, description = "`run_not_found`: unknown or expired id, or a run without events (`/execute`, `/run-json/`, `/run-file/`, `execbox.v1` WebSocket runs)", body = ErrorResponse),
    ),
    tag = "v1"
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = last_event_id(&headers)?;
    let log = state
        .live
        .get(&id, caller.user.as_deref())
        .ok_or_else(|| ApiError::run_not_found(&id))?;
    let from = after.map_or(0, |n| n.saturating_add(1));
    Ok(Sse::new(events_from(log, from)).keep_alive(KeepAlive::default()))
}

//! Extractors whose rejections use the common error format.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use execbox_proto::ErrorCode;
use serde::de::DeserializeOwned;

use crate::admission::Room;
use crate::error::ApiError;
use crate::runner;
use crate::state::AppState;
use crate::validate;

/// Taken before a run request's body is read (put it before the body extractor): the sandbox
/// is ready (else 503 `not_ready`), and running + queued have a free place, waited for up to
/// `queue_wait` (else 429 `queue_full`). So a refusal under overload costs neither reading nor
/// parsing a body, and a client retrying at once is held instead of answered thousands of times
/// a second. The place itself is taken once the body is valid ([`runner::submit`]).
#[derive(Debug)]
pub struct RunRoom(pub Room);

impl FromRequestParts<AppState> for RunRoom {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        runner::ready(state)?;
        match state.admission.wait_for_room(state.cfg.queue_wait).await {
            Some(room) => Ok(Self(room)),
            None => Err(runner::queue_full(state)),
        }
    }
}

/// `axum::Json`, but a malformed body answers with [`ApiError`]: 413 when too large, 415 when
/// not `application/json`, 400 when not a JSON object, 400 naming the field otherwise.
///
/// The body must be a JSON object: serde's derived structs would also accept a positional
/// array (`["print(1)"]`), which is never what a client meant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rej) => return Err(json_rejection(rej)),
        };
        if !value.is_object() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidBody,
                "the body must be a JSON object",
            ));
        }
        // serde_path_to_error names the field that failed (`script: invalid type: …`).
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(validate::invalid_field)
    }
}

/// Map axum's JSON rejections onto stable codes.
pub fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field and what was expected.
            ApiError::bad_request(ErrorCode::InvalidField, e.body_text())
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the body as application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                "the request body is larger than the server accepts",
            )
        }
        other => ApiError::bad_request(ErrorCode::InvalidBody, other.body_text()),
    }
}

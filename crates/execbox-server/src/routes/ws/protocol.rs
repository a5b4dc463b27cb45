//! The messages of `/v1/ws` (JSON text messages tagged by `type`) and its close codes.

use execbox_proto::ErrorCode;
use execbox_proto::{ErrorBody, RunRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::CreateRunRequest;
use crate::error::ApiError;
use crate::validate;

/// Largest message before authentication, bytes (a token is well under 1 KiB).
pub const PRE_AUTH_MAX_BYTES: usize = 4096;

/// Close code: the server ended an idle session (`idle_timeout`).
pub const CLOSE_IDLE: u16 = 1000;
/// Close code (policy violation): no, bad or expired token, no `auth` in time, or the user's
/// WebSocket cap (`missing_token`, `invalid_token`, `auth_timeout`, `token_expired`,
/// `rate_quota`, `too_many_websockets`).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: the server is shutting down (`shutting_down`; sent once no run is active).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a message before authentication larger than [`PRE_AUTH_MAX_BYTES`], or any
/// message larger than `--max-body-bytes` (`message_too_large`).
pub const CLOSE_TOO_LARGE: u16 = 1009;

/// A message from the client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Authenticate (first message, when no token came in the headers).
    Auth {
        /// The HS256 JWT.
        #[allow(
            dead_code,
            reason = "part of the message and its schema; a second auth is refused unread"
        )]
        token: String,
    },
    /// Start a run: the body of `POST /v1/runs` (its `wait` is ignored: the result always
    /// follows as `finished`).
    Run {
        /// The run.
        request: CreateRunRequest,
    },
    /// Cancel the current run.
    Cancel,
}

/// The only message accepted before authentication.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PreAuthMessage {
    /// `{"type": "auth", "token": "<jwt>"}`.
    Auth {
        /// The token.
        token: String,
    },
    /// Anything else with a `type`.
    #[serde(other)]
    Other,
}

/// A message from the server.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Authenticated; runs may be sent.
    Ready {
        /// The caller (null without authentication).
        user_id: Option<String>,
        /// Seconds without a client message and without a run after which the session is
        /// closed (code 1000, `idle_timeout`).
        idle_timeout_secs: u64,
        /// Largest message the server reads, bytes.
        max_message_bytes: usize,
    },
    /// The run was admitted.
    Accepted {
        /// Run id (also readable with `GET /v1/runs/{id}`).
        id: String,
    },
    /// The run ended.
    Finished {
        /// Its record.
        record: Box<RunRecord>,
    },
    /// A request was refused, or the session is about to be closed.
    Error {
        /// Stable code and message, as in HTTP error bodies.
        error: ErrorBody,
        /// Seconds to wait before retrying (quota and capacity errors).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

impl From<&ApiError> for ServerMessage {
    fn from(e: &ApiError) -> Self {
        ServerMessage::Error {
            error: e.body.error.clone(),
            retry_after: e.retry_after,
        }
    }
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RunBody {
    request: CreateRunRequest,
}

fn invalid_message() -> ApiError {
    ApiError::bad_request(
        ErrorCode::InvalidMessage,
        "expected {\"type\": \"run\", \"request\": {…}} or {\"type\": \"cancel\"}",
    )
}

/// Parse a client's text message. Errors: `invalid_json` (not JSON), `invalid_message` (no or
/// unknown `type`), `invalid_field` (a `run` whose request is malformed, naming the field).
pub fn parse_client(text: &str) -> Result<ClientMessage, ApiError> {
    let err = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    if err.is_syntax() || err.is_eof() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("message is not JSON: {err}"),
        ));
    }
    match serde_json::from_str::<Tag>(text).ok().and_then(|t| t.kind) {
        // Parse again with the path tracked, to name the field that is wrong.
        Some(kind) if kind == "run" => {
            let de = &mut serde_json::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, RunBody>(de) {
                Ok(body) => Ok(ClientMessage::Run {
                    request: body.request,
                }),
                Err(e) => Err(validate::invalid_field(e)),
            }
        }
        Some(kind) if kind == "auth" || kind == "cancel" => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            err.to_string(),
        )),
        _ => Err(invalid_message()),
    }
}

/// Parse the first message of an unauthenticated socket (at most [`PRE_AUTH_MAX_BYTES`]): the
/// token, or `missing_token`.
pub fn parse_pre_auth(text: &str) -> Result<String, ApiError> {
    match serde_json::from_str::<PreAuthMessage>(text) {
        Ok(PreAuthMessage::Auth { token }) => Ok(token),
        _ => Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            ErrorCode::MissingToken,
            "authenticate first: {\"type\": \"auth\", \"token\": \"<jwt>\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<ClientMessage, ApiError>) -> ErrorCode {
        r.unwrap_err().body.error.code
    }

    #[test]
    fn client_messages_parse_into_the_enum() {
        assert!(matches!(
            parse_client(r#"{"type":"cancel"}"#),
            Ok(ClientMessage::Cancel)
        ));
        assert!(matches!(
            parse_client(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientMessage::Auth { token }) if token == "t"
        ));
        let run = parse_client(
            r#"{"type":"run","request":{"language":"python","files":[{"content":"1"}]}}"#,
        );
        assert!(matches!(run, Ok(ClientMessage::Run { request }) if request.files.len() == 1));
    }

    #[test]
    fn malformed_messages_get_stable_codes() {
        assert_eq!(code(parse_client("{")), "invalid_json");
        assert_eq!(code(parse_client("[1]")), "invalid_message");
        assert_eq!(code(parse_client("{}")), "invalid_message");
        assert_eq!(code(parse_client(r#"{"type":"exec"}"#)), "invalid_message");
        assert_eq!(code(parse_client(r#"{"type":7}"#)), "invalid_message");
        assert_eq!(code(parse_client(r#"{"type":"auth"}"#)), "invalid_field");
        let e = parse_client(
            r#"{"type":"run","request":{"language":"python","files":[{"content":1}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.body.error.code, "invalid_field");
        assert!(
            e.body.error.message.contains("request.files[0].content"),
            "{}",
            e.body.error.message
        );
        let e = parse_client(r#"{"type":"run","request":{"language":"python","files":[],"x":1}}"#)
            .unwrap_err();
        assert!(
            e.body.error.message.contains('x'),
            "{}",
            e.body.error.message
        );
    }

    #[test]
    fn before_authentication_only_auth_is_understood() {
        assert_eq!(
            parse_pre_auth(r#"{"type":"auth","token":"t"}"#).unwrap(),
            "t"
        );
        for other in [
            r#"{"type":"run","request":{}}"#,
            "{}",
            "nope",
            r#"{"type":"auth"}"#,
        ] {
            assert_eq!(
                parse_pre_auth(other).unwrap_err().body.error.code,
                "missing_token"
            );
        }
    }

    #[test]
    fn server_messages_are_tagged() {
        let e = ApiError::too_many(ErrorCode::RateQuota, "slow down", 2);
        let v = serde_json::to_value(ServerMessage::from(&e)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["code"], "rate_quota");
        assert_eq!(v["retry_after"], 2);
        let v = serde_json::to_value(ServerMessage::Accepted { id: "x".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"type": "accepted", "id": "x"}));
    }
}

//! The client messages of `execbox.v2`, the live protocol of `/v1/ws`
//! (`docs/live-protocol.md`). The server's messages are `ready` and `error` as in
//! `execbox.v1` ([`super::protocol::ServerMessage`]) and the run's events
//! ([`crate::live::LiveMessage`]).

use execbox_proto::live::{LiveSignal, MAX_STDIN_MESSAGE_BYTES};
use execbox_proto::ErrorCode;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::CreateRunRequest;
use crate::error::ApiError;
use crate::validate;

/// The subprotocol that selects the live protocol.
pub const PROTOCOL_V2: &str = "execbox.v2";

/// Most signals a client may send to one run.
pub const MAX_SIGNALS: usize = 64;

/// A message from an `execbox.v2` client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LiveClientMessage {
    /// Authenticate (first message, when no token came in the headers).
    Auth {
        /// The HS256 JWT.
        #[allow(
            dead_code,
            reason = "part of the message and its schema; a second auth is refused unread"
        )]
        token: String,
    },
    /// Start a run: the body of `POST /v1/runs` (its `wait` is ignored). Its stdin (the
    /// request's `stdin`, then `stdin` messages) stays open until a `stdin` message with
    /// `eof`, unless `close_stdin` is set or the run has cases.
    Run {
        /// The run.
        request: CreateRunRequest,
        /// Close stdin after the request's `stdin` (a program that reads to EOF then needs no
        /// `stdin` message).
        #[serde(default)]
        close_stdin: bool,
    },
    /// Text for the running program's stdin (at most 64 KiB a message; the run's whole
    /// stdin within its `stdin_bytes` limit); `eof` closes stdin after it.
    Stdin {
        /// The text.
        #[serde(default)]
        data: String,
        /// Close stdin after `data`.
        #[serde(default)]
        eof: bool,
    },
    /// Send a signal to the running program: `INT`, `TERM`, `KILL`, `QUIT`, `USR1` or `USR2`
    /// (`SIG` prefix optional).
    Signal {
        /// The signal's name.
        signal: String,
    },
    /// Cancel the current run (it ends `cancelled`).
    Cancel,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Parse a client's text message. Errors: `invalid_json` (not JSON), `invalid_message` (no or
/// unknown `type`), `invalid_field` (a known message with a wrong field, named).
pub fn parse(text: &str) -> Result<LiveClientMessage, ApiError> {
    let err = match serde_json::from_str::<LiveClientMessage>(text) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    if err.is_syntax() || err.is_eof() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("message is not JSON: {err}"),
        ));
    }
    let known = ["auth", "run", "stdin", "signal", "cancel"];
    match serde_json::from_str::<Tag>(text).ok().and_then(|t| t.kind) {
        Some(kind) if known.contains(&kind.as_str()) => {
            // Parse again with the path tracked, to name the field that is wrong.
            let de = &mut serde_json::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, LiveClientMessage>(de) {
                Ok(m) => Ok(m),
                Err(e) => Err(validate::invalid_field(e)),
            }
        }
        _ => Err(ApiError::bad_request(
            ErrorCode::InvalidMessage,
            "expected a message of type run, stdin, signal or cancel",
        )),
    }
}

/// The signal named `name`, or `invalid_signal`.
pub fn signal(name: &str) -> Result<LiveSignal, ApiError> {
    LiveSignal::parse(name).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidSignal,
            format!("{name:?} is not one of INT, TERM, KILL, QUIT, USR1, USR2"),
        )
    })
}

/// `stdin_too_large` unless `len` more bytes fit one message and the run's stdin limit
/// (`used` of `max` taken).
pub fn check_stdin(len: usize, used: u64, max: u64) -> Result<(), ApiError> {
    let too_large = |m: String| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::StdinTooLarge,
            m,
        )
    };
    if len > MAX_STDIN_MESSAGE_BYTES {
        return Err(too_large(format!(
            "a stdin message holds at most {MAX_STDIN_MESSAGE_BYTES} bytes; this one {len}"
        )));
    }
    if used.saturating_add(len as u64) > max {
        return Err(too_large(format!(
            "the run's stdin may total {max} bytes (its stdin_bytes limit); {used} were sent"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text).unwrap_err().body.error.code
    }

    #[test]
    fn messages_parse_and_errors_are_typed() {
        assert!(matches!(
            parse(r#"{"type":"stdin","data":"1\n"}"#),
            Ok(LiveClientMessage::Stdin { data, eof: false }) if data == "1\n"
        ));
        assert!(matches!(
            parse(r#"{"type":"stdin","eof":true}"#),
            Ok(LiveClientMessage::Stdin { eof: true, .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"signal","signal":"INT"}"#),
            Ok(LiveClientMessage::Signal { signal }) if signal == "INT"
        ));
        assert!(matches!(
            parse(
                r#"{"type":"run","close_stdin":true,"request":{"language":"python","files":[{"content":"1"}]}}"#
            ),
            Ok(LiveClientMessage::Run {
                close_stdin: true,
                ..
            })
        ));
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"exec"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code("[1]"), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"stdin","data":1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"type":"signal"}"#), ErrorCode::InvalidField);
        assert_eq!(
            code(r#"{"type":"stdin","data":"a","x":1}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn signals_and_stdin_are_bounded() {
        assert_eq!(signal("SIGINT").unwrap(), LiveSignal::Int);
        assert_eq!(
            signal("STOP").unwrap_err().body.error.code,
            ErrorCode::InvalidSignal
        );
        assert!(check_stdin(10, 0, 10).is_ok());
        let e = check_stdin(1, 10, 10).unwrap_err();
        assert_eq!(e.body.error.code, ErrorCode::StdinTooLarge);
        let e = check_stdin(MAX_STDIN_MESSAGE_BYTES + 1, 0, u64::MAX).unwrap_err();
        assert_eq!(e.body.error.code, ErrorCode::StdinTooLarge);
    }
}

//! Every error code execbox answers with: one enum, one string form per code, used by the
//! server's error responses, the WebSocket protocol, run records and metrics labels.
//!
//! A code is stable once published: clients branch on it. New codes may be added; the JSON
//! form is the snake_case name.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable, machine-readable error code (`error.code` in every error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // ---- request
    /// The body is not valid JSON.
    InvalidJson,
    /// The body does not match the endpoint's schema.
    InvalidBody,
    /// A field has the wrong type or value; the message names it.
    InvalidField,
    /// A query parameter is malformed.
    InvalidQuery,
    /// A multipart upload is malformed.
    InvalidMultipart,
    /// The content type is not one the endpoint takes.
    UnsupportedMediaType,
    /// The body is over `--max-body-bytes`.
    BodyTooLarge,
    /// The source files together are over the source limit.
    SourceTooLarge,
    /// Standard input is over its limit.
    StdinTooLarge,
    /// The source is empty.
    EmptySource,
    /// The source contains a NUL byte.
    NulInSource,
    /// An uploaded file is not valid UTF-8.
    InvalidUtf8,
    /// A run names no files.
    NoFiles,
    /// A run has more files than allowed.
    TooManyFiles,
    /// A file name has `/`, `..`, a control character or is too long.
    InvalidFileName,
    /// Two files have the same name.
    DuplicateFileName,
    /// A file name execbox uses itself (`out`, the output folder; `.execbox-*`).
    ReservedFileName,
    /// More test cases than allowed.
    TooManyCases,
    /// Test cases are malformed (given with top-level `stdin`/`args`, or in `main` mode).
    InvalidCases,
    /// Program arguments are malformed (NUL, too long).
    InvalidArgs,
    /// More program arguments than allowed.
    TooManyArgs,
    /// A limit is above the operator's maximum or invalid; the message names the maximum.
    InvalidLimit,
    /// No runtime offers this language.
    UnknownLanguage,
    /// The version selector is not a semver requirement.
    InvalidVersion,
    /// No installed version matches the selector.
    NoMatchingVersion,
    /// The endpoint runs Python only.
    NotPython,
    // ---- auth
    /// No bearer token was sent.
    MissingToken,
    /// The token is malformed, badly signed, not yet valid or expired.
    InvalidToken,
    /// The session's token expired (WebSocket).
    TokenExpired,
    /// The server runs without authentication, so there are no claims.
    AuthDisabled,
    /// The `Origin` header is not on the allow-list.
    OriginNotAllowed,
    // ---- quota
    /// The user's request-rate quota is used up.
    RateQuota,
    /// The user has as many runs queued or running as allowed.
    ConcurrencyQuota,
    /// The user's CPU-seconds for the window are used up.
    CpuQuota,
    /// Every running and queued place is taken.
    QueueFull,
    /// Too many WebSockets open, for the user or in total.
    TooManyWebsockets,
    // ---- service
    /// The sandbox is not ready (starting, or its spawner is restarting).
    NotReady,
    /// The shared state store (Redis, with `--redis-url`) is unreachable; retry shortly.
    StateUnavailable,
    /// No such endpoint.
    NotFound,
    /// The endpoint does not take this method.
    MethodNotAllowed,
    /// No run with this id (or not this user's).
    RunNotFound,
    /// execbox failed; the cause is in the server log.
    InternalError,
    // ---- websocket
    /// A plain request to the WebSocket endpoint.
    NotAWebsocket,
    /// A WebSocket message is not one the protocol knows.
    InvalidMessage,
    /// A WebSocket message is over its limit.
    MessageTooLarge,
    /// No `auth` message in time.
    AuthTimeout,
    /// A second `auth` message.
    AlreadyAuthenticated,
    /// A run is already going on this socket.
    Busy,
    /// Nothing to cancel or signal.
    NoRun,
    /// The socket was idle too long.
    IdleTimeout,
    /// The server is shutting down.
    ShuttingDown,
    // ---- live runs
    /// A signal off the allow-list (INT, TERM, KILL, QUIT, USR1, USR2).
    InvalidSignal,
    /// More signals for one run than allowed.
    TooManySignals,
    /// Stdin after it was closed, or for a run that does not keep it open.
    StdinClosed,
    /// A `Last-Event-ID` that is not an event id (a decimal number).
    InvalidLastEventId,
    // ---- run
    /// The script does not parse.
    SyntaxError,
    /// The script defines no `main()`.
    NoMain,
    /// `main` is not callable.
    MainNotCallable,
    /// The script raised; the traceback is in stderr.
    Exception,
    /// `main()` returned something JSON cannot hold (NaN, sets, too deep, …).
    ResultNotJson,
    /// The script called `sys.exit()` in main mode.
    SystemExit,
    /// The run exceeded its wall-clock limit.
    Timeout,
    /// The run exceeded its CPU-time limit.
    CpuTimeLimit,
    /// The run exceeded its memory limit.
    MemoryLimit,
    /// The run wrote more than its output limit.
    OutputLimit,
    /// The process was killed by a signal.
    KilledBySignal,
    /// The program exited with a non-zero code.
    NonzeroExit,
    /// The process exited before `main()` returned.
    NoResult,
    /// Something other than the harness wrote the result channel (fd 3).
    ResultChannelCorrupt,
    /// The run failed in a way no other code describes.
    RuntimeError,
    /// The program did not compile; the compiler's output is in the compile step.
    CompileError,
    /// The run wrote more files, or more bytes of files, under `/work/out` than allowed.
    OutputFilesLimit,
    /// Something under `/work/out` is not a plain file with a valid name (a subfolder, a
    /// link, a name with a control character).
    InvalidOutputFile,
    /// The run was cancelled.
    Cancelled,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidField,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidMultipart,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BodyTooLarge,
        ErrorCode::SourceTooLarge,
        ErrorCode::StdinTooLarge,
        ErrorCode::EmptySource,
        ErrorCode::NulInSource,
        ErrorCode::InvalidUtf8,
        ErrorCode::NoFiles,
        ErrorCode::TooManyFiles,
        ErrorCode::InvalidFileName,
        ErrorCode::DuplicateFileName,
        ErrorCode::ReservedFileName,
        ErrorCode::TooManyCases,
        ErrorCode::InvalidCases,
        ErrorCode::InvalidArgs,
        ErrorCode::TooManyArgs,
        ErrorCode::InvalidLimit,
        ErrorCode::UnknownLanguage,
        ErrorCode::InvalidVersion,
        ErrorCode::NoMatchingVersion,
        ErrorCode::NotPython,
        ErrorCode::MissingToken,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::AuthDisabled,
        ErrorCode::OriginNotAllowed,
        ErrorCode::RateQuota,
        ErrorCode::ConcurrencyQuota,
        ErrorCode::CpuQuota,
        ErrorCode::QueueFull,
        ErrorCode::TooManyWebsockets,
        ErrorCode::NotReady,
        ErrorCode::StateUnavailable,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RunNotFound,
        ErrorCode::InternalError,
        ErrorCode::NotAWebsocket,
        ErrorCode::InvalidMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::AuthTimeout,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::Busy,
        ErrorCode::NoRun,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidSignal,
        ErrorCode::TooManySignals,
        ErrorCode::StdinClosed,
        ErrorCode::InvalidLastEventId,
        ErrorCode::SyntaxError,
        ErrorCode::NoMain,
        ErrorCode::MainNotCallable,
        ErrorCode::Exception,
        ErrorCode::ResultNotJson,
        ErrorCode::SystemExit,
        ErrorCode::Timeout,
        ErrorCode::CpuTimeLimit,
        ErrorCode::MemoryLimit,
        ErrorCode::OutputLimit,
        ErrorCode::KilledBySignal,
        ErrorCode::NonzeroExit,
        ErrorCode::NoResult,
        ErrorCode::ResultChannelCorrupt,
        ErrorCode::RuntimeError,
        ErrorCode::CompileError,
        ErrorCode::OutputFilesLimit,
        ErrorCode::InvalidOutputFile,
        ErrorCode::Cancelled,
    ];

    /// The code's string form (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidMultipart => "invalid_multipart",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::SourceTooLarge => "source_too_large",
            ErrorCode::StdinTooLarge => "stdin_too_large",
            ErrorCode::EmptySource => "empty_source",
            ErrorCode::NulInSource => "nul_in_source",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::NoFiles => "no_files",
            ErrorCode::TooManyFiles => "too_many_files",
            ErrorCode::InvalidFileName => "invalid_file_name",
            ErrorCode::DuplicateFileName => "duplicate_file_name",
            ErrorCode::ReservedFileName => "reserved_file_name",
            ErrorCode::TooManyCases => "too_many_cases",
            ErrorCode::InvalidCases => "invalid_cases",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::TooManyArgs => "too_many_args",
            ErrorCode::InvalidLimit => "invalid_limit",
            ErrorCode::UnknownLanguage => "unknown_language",
            ErrorCode::InvalidVersion => "invalid_version",
            ErrorCode::NoMatchingVersion => "no_matching_version",
            ErrorCode::NotPython => "not_python",
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::AuthDisabled => "auth_disabled",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::RateQuota => "rate_quota",
            ErrorCode::ConcurrencyQuota => "concurrency_quota",
            ErrorCode::CpuQuota => "cpu_quota",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::TooManyWebsockets => "too_many_websockets",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::StateUnavailable => "state_unavailable",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RunNotFound => "run_not_found",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::NotAWebsocket => "not_a_websocket",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::Busy => "busy",
            ErrorCode::NoRun => "no_run",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::InvalidSignal => "invalid_signal",
            ErrorCode::TooManySignals => "too_many_signals",
            ErrorCode::StdinClosed => "stdin_closed",
            ErrorCode::InvalidLastEventId => "invalid_last_event_id",
            ErrorCode::SyntaxError => "syntax_error",
            ErrorCode::NoMain => "no_main",
            ErrorCode::MainNotCallable => "main_not_callable",
            ErrorCode::Exception => "exception",
            ErrorCode::ResultNotJson => "result_not_json",
            ErrorCode::SystemExit => "system_exit",
            ErrorCode::Timeout => "timeout",
            ErrorCode::CpuTimeLimit => "cpu_time_limit",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::OutputLimit => "output_limit",
            ErrorCode::KilledBySignal => "killed_by_signal",
            ErrorCode::NonzeroExit => "nonzero_exit",
            ErrorCode::NoResult => "no_result",
            ErrorCode::ResultChannelCorrupt => "result_channel_corrupt",
            ErrorCode::RuntimeError => "runtime_error",
            ErrorCode::CompileError => "compile_error",
            ErrorCode::OutputFilesLimit => "output_files_limit",
            ErrorCode::InvalidOutputFile => "invalid_output_file",
            ErrorCode::Cancelled => "cancelled",
        }
    }

    /// The code a Python harness reported on its result channel. The channel is written from
    /// inside the jail (main-mode code can write it too), so anything but the harness's own
    /// codes becomes [`ErrorCode::RuntimeError`].
    pub fn from_harness(code: &str) -> Self {
        match code {
            "syntax_error" => ErrorCode::SyntaxError,
            "no_main" => ErrorCode::NoMain,
            "main_not_callable" => ErrorCode::MainNotCallable,
            "exception" => ErrorCode::Exception,
            "result_not_json" => ErrorCode::ResultNotJson,
            "system_exit" => ErrorCode::SystemExit,
            _ => ErrorCode::RuntimeError,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_string_form_matching_its_json() {
        let mut seen = std::collections::BTreeSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
            let back: ErrorCode = serde_json::from_str(&format!("\"{c}\"")).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn harness_codes_are_a_closed_set() {
        assert_eq!(ErrorCode::from_harness("no_main"), ErrorCode::NoMain);
        assert_eq!(ErrorCode::from_harness("exception"), ErrorCode::Exception);
        assert_eq!(
            ErrorCode::from_harness("forged_code"),
            ErrorCode::RuntimeError
        );
        assert_eq!(
            ErrorCode::from_harness("internal_error"),
            ErrorCode::RuntimeError
        );
    }
}

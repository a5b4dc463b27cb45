//! The router in-process against a fake sandbox (`support::fake`): every status mapping,
//! validation error, authentication rule and quota, in milliseconds and without root. What
//! needs the kernel (jails, limits, the spawner's life) is tested with the real binary in
//! `crates/execbox-cli/tests`.
//!
//! [`every_http_error_code_has_a_test`] keeps this honest: each error code of the OpenAPI
//! document is either named in [`COVERAGE`] with the test that produces it over HTTP, or in
//! [`NOT_HTTP`] with the reason no HTTP route answers it.
mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use execbox_proto::{ErrorCode, RunStatus};
use execbox_server::auth::{mint, Claims};
use execbox_server::quota::{QuotaConfig, RateQuota};
use execbox_server::sandbox::SandboxStatus;
use serde_json::{json, Value};
use support::*;

/// Each error code an HTTP route answers, and a test below that produces it (the test's body
/// must name the code as `ErrorCode::…`).
const COVERAGE: &[(ErrorCode, &str)] = &[
    (ErrorCode::InvalidJson, "malformed_bodies_get_stable_codes"),
    (ErrorCode::InvalidBody, "malformed_bodies_get_stable_codes"),
    (ErrorCode::InvalidField, "malformed_bodies_get_stable_codes"),
    (
        ErrorCode::UnsupportedMediaType,
        "malformed_bodies_get_stable_codes",
    ),
    (ErrorCode::BodyTooLarge, "bodies_and_sources_are_bounded"),
    (ErrorCode::SourceTooLarge, "bodies_and_sources_are_bounded"),
    (ErrorCode::EmptySource, "sources_must_be_text"),
    (ErrorCode::NulInSource, "sources_must_be_text"),
    (ErrorCode::InvalidQuery, "run_json_blocks_or_answers_202"),
    (ErrorCode::StdinTooLarge, "run_json_checks_stdin_and_args"),
    (ErrorCode::InvalidArgs, "run_json_checks_stdin_and_args"),
    (ErrorCode::TooManyArgs, "run_json_checks_stdin_and_args"),
    (
        ErrorCode::InvalidMultipart,
        "run_file_takes_exactly_one_py_file",
    ),
    (ErrorCode::InvalidUtf8, "run_file_takes_exactly_one_py_file"),
    (ErrorCode::NotPython, "run_file_takes_exactly_one_py_file"),
    (ErrorCode::NoFiles, "v1_runs_file_rules"),
    (ErrorCode::TooManyFiles, "v1_runs_file_rules"),
    (ErrorCode::InvalidFileName, "v1_runs_file_rules"),
    (ErrorCode::DuplicateFileName, "v1_runs_file_rules"),
    (ErrorCode::ReservedFileName, "v1_runs_file_rules"),
    (ErrorCode::TooManyCases, "v1_runs_test_cases"),
    (ErrorCode::InvalidCases, "v1_runs_test_cases"),
    (
        ErrorCode::InvalidLimit,
        "v1_runs_limits_above_the_maxima_name_the_maximum",
    ),
    (ErrorCode::UnknownLanguage, "v1_runs_language_and_version"),
    (ErrorCode::InvalidVersion, "v1_runs_language_and_version"),
    (ErrorCode::NoMatchingVersion, "v1_runs_language_and_version"),
    (ErrorCode::MissingToken, "tokens_are_required_and_checked"),
    (ErrorCode::InvalidToken, "tokens_are_required_and_checked"),
    (ErrorCode::AuthDisabled, "v1_user_answers_the_claims"),
    (
        ErrorCode::OriginNotAllowed,
        "ws_handshake_refusals_are_http_answers",
    ),
    (
        ErrorCode::TooManyWebsockets,
        "ws_handshake_refusals_are_http_answers",
    ),
    (
        ErrorCode::NotAWebsocket,
        "ws_plain_request_is_not_a_websocket",
    ),
    (ErrorCode::RateQuota, "rate_quota_refuses_beyond_the_burst"),
    (
        ErrorCode::ConcurrencyQuota,
        "concurrency_quota_counts_unfinished_runs",
    ),
    (ErrorCode::CpuQuota, "cpu_quota_charges_finished_runs"),
    (
        ErrorCode::QueueFull,
        "a_full_server_refuses_before_the_body",
    ),
    (
        ErrorCode::NotReady,
        "not_ready_before_the_sandbox_says_hello",
    ),
    (
        ErrorCode::StateUnavailable,
        "unreachable_redis_is_503_state_unavailable",
    ),
    (
        ErrorCode::InvalidLastEventId,
        "run_events_stream_and_resume",
    ),
    (ErrorCode::NotFound, "unknown_paths_and_methods"),
    (ErrorCode::MethodNotAllowed, "unknown_paths_and_methods"),
    (
        ErrorCode::RunNotFound,
        "runs_are_visible_to_their_owner_only",
    ),
    (
        ErrorCode::InternalError,
        "sandbox_failures_are_500_without_detail",
    ),
    (
        ErrorCode::Cancelled,
        "v1_delete_cancels_queued_and_running_runs",
    ),
    (
        ErrorCode::SyntaxError,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::NoMain,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::MainNotCallable,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::Exception,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::ResultNotJson,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::SystemExit,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::RuntimeError,
        "execute_script_failures_are_422_with_output",
    ),
    (
        ErrorCode::Timeout,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::CpuTimeLimit,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::MemoryLimit,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::OutputLimit,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::KilledBySignal,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::NonzeroExit,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::NoResult,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::ResultChannelCorrupt,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::CompileError,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::OutputFilesLimit,
        "execute_passes_every_run_failure_through",
    ),
    (
        ErrorCode::InvalidOutputFile,
        "execute_passes_every_run_failure_through",
    ),
];

/// Codes no HTTP route answers, and why. Each is tested where it arises.
const NOT_HTTP: &[(ErrorCode, &str)] = &[
    (
        ErrorCode::TokenExpired,
        "WebSocket only: a session's token checked again before a run (HTTP answers an \
         expired token with invalid_token); crates/execbox-cli/tests/ws.rs, auth.rs unit test",
    ),
    (
        ErrorCode::InvalidMessage,
        "WebSocket only: a message of no known type; ws/protocol.rs unit tests, tests/ws.rs",
    ),
    (
        ErrorCode::MessageTooLarge,
        "WebSocket only: a message over the limit (HTTP bodies: body_too_large); tests/ws.rs",
    ),
    (
        ErrorCode::AuthTimeout,
        "WebSocket only: no auth message in time; tests/ws.rs",
    ),
    (
        ErrorCode::AlreadyAuthenticated,
        "WebSocket only: a second auth message; tests/ws.rs",
    ),
    (
        ErrorCode::Busy,
        "WebSocket only: a run while one is active; tests/ws.rs",
    ),
    (
        ErrorCode::NoRun,
        "WebSocket only: cancel without a run; tests/ws.rs",
    ),
    (
        ErrorCode::IdleTimeout,
        "WebSocket only: the session's close reason; tests/ws.rs",
    ),
    (
        ErrorCode::ShuttingDown,
        "WebSocket only: the session's close reason at SIGTERM; tests/ws.rs",
    ),
    (
        ErrorCode::InvalidSignal,
        "WebSocket only (execbox.v2): a signal off the allow-list; ws/live_protocol.rs unit \
         tests, crates/execbox-cli/tests/live.rs",
    ),
    (
        ErrorCode::TooManySignals,
        "WebSocket only (execbox.v2): more than MAX_SIGNALS signals to one run; \
         crates/execbox-cli/tests/live.rs",
    ),
    (
        ErrorCode::StdinClosed,
        "WebSocket only (execbox.v2): stdin after eof or close_stdin; \
         crates/execbox-cli/tests/live.rs",
    ),
];

fn openapi_error_codes() -> Vec<String> {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(execbox_server::openapi::ApiDoc::openapi()).unwrap();
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    codes
        .as_array()
        .unwrap_or_else(|| panic!("the document lists no ErrorCode enum: {codes}"))
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The body of `async fn name` in this file.
fn test_body(name: &str) -> Option<&'static str> {
    const SOURCE: &str = include_str!("router.rs");
    let start = SOURCE.find(&format!("async fn {name}()"))?;
    let rest = &SOURCE[start..];
    let end = rest[1..]
        .find("\n#[tokio::test")
        .map_or(rest.len(), |e| e + 1);
    Some(&rest[..end])
}

#[test]
fn every_http_error_code_has_a_test() {
    let listed = openapi_error_codes();
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all, "the OpenAPI document lists ErrorCode::ALL");
    for &code in ErrorCode::ALL {
        let tested: Vec<_> = COVERAGE.iter().filter(|(c, _)| *c == code).collect();
        let excused = NOT_HTTP.iter().any(|(c, _)| *c == code);
        assert!(
            tested.is_empty() == excused,
            "{code}: name a test in COVERAGE or a reason in NOT_HTTP (exactly one)"
        );
        for (_, test) in tested {
            let body = test_body(test).unwrap_or_else(|| panic!("{code}: no test named {test}"));
            let named = format!("ErrorCode::{code:?}");
            assert!(body.contains(&named), "{test} does not produce {named}");
        }
    }
}

// ---- /execute

#[tokio::test]
async fn execute_answers_main_result_apart_from_stdout() {
    let app = TestApp::new();
    let src = Script::ok().stdout("hi").result(json!({"a": 1})).source();
    let r = app.post("/execute", "u", json!({"script": src})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, json!({"result": {"a": 1}, "stdout": "hi\n"}));
    assert!(
        r.header("x-request-id").is_some(),
        "every answer has a request id"
    );
    let order = &app.fake.orders()[0];
    assert_eq!(order.mode, execbox_proto::Mode::Main);
    assert_eq!(order.limits, app.cfg.spawner.default_limits);
    let none = app
        .post("/execute", "u", json!({"script": Script::ok().source()}))
        .await;
    assert_eq!(none.json["result"], Value::Null, "main() returned None");
}

#[tokio::test]
async fn execute_script_failures_are_422_with_output() {
    let app = TestApp::new();
    for (harness, code) in [
        ("syntax_error", ErrorCode::SyntaxError),
        ("no_main", ErrorCode::NoMain),
        ("main_not_callable", ErrorCode::MainNotCallable),
        ("exception", ErrorCode::Exception),
        ("result_not_json", ErrorCode::ResultNotJson),
        ("system_exit", ErrorCode::SystemExit),
        ("forged_by_the_script", ErrorCode::RuntimeError),
    ] {
        let src = Script::harness(harness)
            .stdout("seen")
            .stderr("Traceback")
            .source();
        let r = app.post("/execute", "u", json!({"script": src})).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert_eq!(r.json["stdout"], "seen\n");
        assert_eq!(r.json["stderr"], "Traceback\n");
        assert!(r.json["id"].is_string());
    }
}

#[tokio::test]
async fn execute_passes_every_run_failure_through() {
    let app = TestApp::new();
    for (status, code, http) in [
        (
            RunStatus::Timeout,
            ErrorCode::Timeout,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::Timeout,
            ErrorCode::CpuTimeLimit,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::MemoryLimit,
            ErrorCode::MemoryLimit,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::OutputLimit,
            ErrorCode::OutputLimit,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::RuntimeError,
            ErrorCode::KilledBySignal,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::RuntimeError,
            ErrorCode::NonzeroExit,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::RuntimeError,
            ErrorCode::NoResult,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::RuntimeError,
            ErrorCode::ResultChannelCorrupt,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::CompileError,
            ErrorCode::CompileError,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::OutputLimit,
            ErrorCode::OutputFilesLimit,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::RuntimeError,
            ErrorCode::InvalidOutputFile,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            RunStatus::Cancelled,
            ErrorCode::Cancelled,
            StatusCode::CONFLICT,
        ),
        (
            RunStatus::InternalError,
            ErrorCode::InternalError,
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ] {
        let src = Script::failing(status, code).stdout("partial").source();
        let r = app.post("/execute", "u", json!({"script": src})).await;
        assert_error(&r, http, code);
        assert_eq!(
            r.json["stdout"], "partial\n",
            "{code}: the output seen is kept"
        );
    }
}

#[tokio::test]
async fn sandbox_failures_are_500_without_detail() {
    let app = TestApp::new();
    let failed = Script::fail("spawner detail that stays in the log").source();
    let r = app.post("/execute", "u", json!({"script": failed})).await;
    assert_error(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::InternalError,
    );
    assert!(!r.json.to_string().contains("spawner detail"), "{}", r.json);
    // A run the sandbox drops ends as an internal error too, in the record of /v1/runs.
    let r = app.run("u", &Script::lose().source(), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["status"], "internal_error");
    assert_eq!(r.json["error"]["code"], ErrorCode::InternalError.as_str());
}

// ---- bodies and sources

#[tokio::test]
async fn malformed_bodies_get_stable_codes() {
    let app = TestApp::new();
    let send = |path: &str, ct: &str, body: &str| {
        let r = req(Method::POST, path).user("u").body(ct, body.to_owned());
        app.call(r)
    };
    let json = "application/json";
    for path in ["/execute", "/run-json/", "/v1/runs"] {
        assert_error(
            &send(path, json, "{").await,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
        );
        let r = send(path, json, r#"["print(1)"]"#).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidBody);
        let r = send(path, "text/plain", "{}").await;
        assert_error(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        );
        let r = send(path, json, r#"{"unknown": 1}"#).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
    }
    let r = send("/execute", json, r#"{"script": 7}"#).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("script"),
        "names the field"
    );
    let r = send(
        "/v1/runs",
        json,
        r#"{"language":"python","files":[{"content":"x"}],"mode":"x"}"#,
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
    assert!(
        app.fake.orders().is_empty(),
        "nothing malformed reached the sandbox"
    );
}

#[tokio::test]
async fn bodies_and_sources_are_bounded() {
    let app = TestApp::with(|c| {
        c.max_body_bytes = 4096;
        c.max_source_bytes = 1024;
    });
    let big = "x".repeat(5000);
    let r = app.post("/execute", "u", json!({"script": big})).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge);
    let (ct, body) = multipart(&[("file", Some("a.py"), big.as_bytes())]);
    let r = app
        .call(req(Method::POST, "/run-file/").user("u").body(&ct, body))
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge);
    let src = "x".repeat(2000);
    let r = app.post("/execute", "u", json!({"script": src})).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SourceTooLarge);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024"),
        "names the maximum"
    );
    let r = app.post("/run-json/", "u", json!({"code": src})).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SourceTooLarge);
    let half = "x".repeat(600);
    let two = json!([{"name": "a.py", "content": half}, {"name": "b.py", "content": half}]);
    let r = app
        .post("/v1/runs", "u", json!({"language": "python", "files": two}))
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SourceTooLarge);
}

#[tokio::test]
async fn sources_must_be_text() {
    let app = TestApp::new();
    for (path, field) in [("/execute", "script"), ("/run-json/", "code")] {
        let r = app.post(path, "u", json!({field: "  \n"})).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::EmptySource);
        let r = app.post(path, "u", json!({field: "print(1)\u{0}"})).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::NulInSource);
    }
    let r = app.run("u", "a\u{0}", json!({})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::NulInSource);
}

// ---- seed 003: /run-json/, /run-file/, /status/{id}

#[tokio::test]
async fn run_json_blocks_or_answers_202() {
    let app = TestApp::new();
    let src = Script::ok().stdout("out").source();
    for path in ["/run-json/", "/run-json"] {
        let r = app.post(path, "u", json!({"code": src})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(
            (r.json["status"].as_str(), r.json["run"]["stdout"].as_str()),
            (Some("ok"), Some("out\n"))
        );
    }
    assert!(app
        .fake
        .orders()
        .iter()
        .all(|o| o.mode == execbox_proto::Mode::Program));
    let r = app
        .post("/run-json/?wait=false", "u", json!({"code": src}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let url = format!("/status/{id}");
    assert_eq!(
        (r.header("location"), r.json["status_url"].as_str()),
        (Some(url.as_str()), Some(url.as_str()))
    );
    assert_eq!(r.json["status"], "queued");
    let done = app.poll(&url, "u", |j| j["status"] == "ok").await;
    assert_eq!(done.json["run"]["stdout"], "out\n");
    let r = app
        .post("/run-json/?wait=maybe", "u", json!({"code": src}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery);
}

#[tokio::test]
async fn run_json_checks_stdin_and_args() {
    let app = TestApp::new();
    let src = Script::ok().source();
    let r = app
        .post(
            "/run-json/",
            "u",
            json!({"code": src, "stdin": "in", "args": ["-v", "x"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let order = &app.fake.orders()[0];
    assert_eq!(
        (order.stdin.as_str(), order.args.clone()),
        ("in", vec!["-v".to_owned(), "x".to_owned()])
    );
    let max = app.cfg.spawner.default_limits.stdin_bytes as usize;
    let r = app
        .post(
            "/run-json/",
            "u",
            json!({"code": src, "stdin": "x".repeat(max + 1)}),
        )
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::StdinTooLarge);
    let many: Vec<String> = (0..=256).map(|i| i.to_string()).collect();
    let r = app
        .post("/run-json/", "u", json!({"code": src, "args": many}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::TooManyArgs);
    let r = app
        .post("/run-json/", "u", json!({"code": src, "args": ["a\u{0}b"]}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidArgs);
    let r = app
        .run("u", &src, json!({"args": ["x".repeat(65 * 1024)]}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidArgs);
}

#[tokio::test]
async fn run_file_takes_exactly_one_py_file() {
    let app = TestApp::new();
    let src = Script::ok().stdout("from a file").source();
    let upload = |parts: &[(&str, Option<&str>, &[u8])], path: &str| {
        let (ct, body) = multipart(parts);
        app.call(req(Method::POST, path).user("u").body(&ct, body))
    };
    for path in ["/run-file/", "/run-file"] {
        let r = upload(&[("file", Some("prog.py"), src.as_bytes())], path).await;
        assert_eq!(
            (r.status, r.json["run"]["stdout"].as_str()),
            (StatusCode::OK, Some("from a file\n")),
            "{}",
            r.json
        );
    }
    let r = upload(
        &[("file", Some("prog.py"), src.as_bytes())],
        "/run-file/?wait=false",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("location").unwrap().starts_with("/status/"));

    let bad = |r: &Resp, status, code| assert_error(r, status, code);
    let r = upload(
        &[("a", Some("a.py"), b"1"), ("b", Some("b.py"), b"2")],
        "/run-file/",
    )
    .await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::TooManyFiles);
    let r = upload(&[("file", Some("notes.txt"), b"1")], "/run-file/").await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::NotPython);
    let r = upload(&[("file", Some("a.py"), b"\xff\xfe")], "/run-file/").await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidUtf8);
    let r = upload(&[("field", None, b"print(1)")], "/run-file/").await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidMultipart);
    let r = upload(&[], "/run-file/").await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::NoFiles);
    let r = app.post("/run-file/", "u", json!({"code": src})).await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidMultipart);
    let r = upload(&[("file", Some("a.py"), b"\0")], "/run-file/").await;
    bad(&r, StatusCode::BAD_REQUEST, ErrorCode::NulInSource);
}

// ---- /v1/runs

#[tokio::test]
async fn v1_runs_carry_files_stdin_args_mode_and_limits() {
    let app = TestApp::new();
    let files = json!([
        {"content": Script::ok().result(json!(2)).source()},
        {"name": "helper.py", "content": "X = 1"},
    ]);
    let body = json!({
        "language": "python", "version": "3.11", "files": files, "stdin": "in", "args": ["a"],
        "mode": "main", "limits": {"timeout_ms": 1000, "memory_mb": 64, "pids": 8, "output_limit_bytes": 4096},
    });
    let r = app.post("/v1/runs", "u", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (r.json["status"].as_str(), r.json["result"].clone()),
        (Some("ok"), json!(2))
    );
    assert_eq!(r.json["version"], support::fake::VERSION);
    let order = &app.fake.orders()[0];
    let names: Vec<_> = order.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["main.py", "helper.py"],
        "the first file defaults to main.py"
    );
    assert_eq!(
        (order.mode, order.stdin.as_str()),
        (execbox_proto::Mode::Main, "in")
    );
    assert_eq!(order.limits.wall_time_ms, 1000);
    assert_eq!(order.limits.memory_bytes, 64 << 20);
    assert_eq!(order.limits.pids, 8);
    assert_eq!(order.limits.output_bytes, 4096);
    let r = app.get("/v1/runtimes", "u").await;
    assert_eq!(r.json[0]["language"], "python");
    assert_eq!(r.json[0]["version"], support::fake::VERSION);
}

#[tokio::test]
async fn v1_runs_file_rules() {
    let app = TestApp::new();
    let files = |f: Value| json!({"language": "python", "files": f});
    let r = app.post("/v1/runs", "u", files(json!([]))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::NoFiles);
    let many: Vec<Value> = (0..=execbox_proto::MAX_FILES)
        .map(|i| json!({"name": format!("f{i}.py"), "content": "1"}))
        .collect();
    let r = app.post("/v1/runs", "u", files(json!(many))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::TooManyFiles);
    for name in ["../x.py", "a/b.py", "..", "a\u{0}b", ""] {
        let r = app
            .post(
                "/v1/runs",
                "u",
                files(json!([{"name": name, "content": "1"}])),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidFileName);
    }
    let r = app
        .post(
            "/v1/runs",
            "u",
            files(json!([{"content": "1"}, {"content": "2"}])),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidFileName);
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("files[1].name"));
    let r = app
        .post(
            "/v1/runs",
            "u",
            files(json!([{"name": "a.py", "content": "1"}, {"name": "a.py", "content": "2"}])),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::DuplicateFileName);
    for name in ["out", ".execbox-build.tar"] {
        let r = app
            .post(
                "/v1/runs",
                "u",
                files(json!([{"content": "1"}, {"name": name, "content": "2"}])),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::ReservedFileName);
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(name), "{message}");
    }
}

#[tokio::test]
async fn v1_runs_test_cases() {
    let app = TestApp::new();
    let cases = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"stdin": format!("{i}\n"), "expected_stdout": format!("{i}\n")}))
            .collect()
    };
    let r = app
        .run(
            "u",
            &Script::ok().source(),
            json!({"cases": cases(2), "compare": "trim"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let order = app.fake.orders().pop().unwrap();
    assert_eq!(order.cases.len(), 2);
    assert_eq!(order.cases[1].stdin, "1\n");
    assert_eq!(order.compare, execbox_proto::Compare::Trim);

    let r = app
        .run(
            "u",
            "1",
            json!({"cases": cases(execbox_proto::MAX_CASES + 1)}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::TooManyCases);
    assert!(r.json["error"]["message"].as_str().unwrap().contains("32"));
    for extra in [
        json!({"cases": []}),
        json!({"cases": cases(1), "stdin": "x"}),
        json!({"cases": cases(1), "args": ["a"]}),
        json!({"cases": cases(1), "mode": "main"}),
    ] {
        let r = app.run("u", "1", extra).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidCases);
    }
    let big = "x".repeat(app.cfg.spawner.default_limits.stdin_bytes as usize + 1);
    let r = app
        .run("u", "1", json!({"cases": [{"stdin": "1"}, {"stdin": big}]}))
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::StdinTooLarge);
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("cases[1]: "));
    let r = app
        .run("u", "1", json!({"cases": [{"stdin": "1", "nope": 1}]}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
}

#[tokio::test]
async fn v1_runs_limits_above_the_maxima_name_the_maximum() {
    let app = TestApp::new();
    let max = app.cfg.max_limits;
    for (limits, maximum) in [
        (json!({"memory_mb": 1 << 20}), max.memory_bytes),
        (
            json!({"timeout_ms": max.wall_time_ms + 1}),
            max.wall_time_ms,
        ),
        (json!({"pids": max.pids + 1}), u64::from(max.pids)),
        (
            json!({"output_limit_bytes": max.output_bytes + 1}),
            max.output_bytes,
        ),
    ] {
        let r = app.run("u", "1", json!({"limits": limits})).await;
        assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidLimit);
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&maximum.to_string()),
            "{limits}: {message}"
        );
    }
    let r = app
        .run("u", "1", json!({"limits": {"timeout_ms": 0}}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidLimit);
}

#[tokio::test]
async fn v1_runs_language_and_version() {
    let app = TestApp::new();
    let r = app
        .post(
            "/v1/runs",
            "u",
            json!({"language": "cobol", "files": [{"content": "1"}]}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::UnknownLanguage);
    for ok in ["3", "3.11", ">=3.10", "*", "latest"] {
        let r = app.run("u", "1", json!({"version": ok})).await;
        assert_eq!(r.status, StatusCode::OK, "{ok}: {}", r.json);
    }
    let r = app.run("u", "1", json!({"version": "not a version"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::InvalidVersion);
    let r = app.run("u", "1", json!({"version": "3.12"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, ErrorCode::NoMatchingVersion);
}

#[tokio::test]
async fn v1_runs_wait_false_answers_202_then_the_record() {
    let app = TestApp::new();
    let r = app
        .run(
            "u",
            &Script::ok().stdout("later").sleep_ms(50).source(),
            json!({"wait": false}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let url = r.header("location").unwrap().to_owned();
    assert!(url.starts_with("/v1/runs/"), "{url}");
    let running = app.poll(&url, "u", |j| j["status"] == "running").await;
    assert_eq!(
        running.json["status"], "running",
        "the sandbox said it started"
    );
    let done = app.poll(&url, "u", |j| j["status"] == "ok").await;
    assert_eq!(done.json["run"]["stdout"], "later\n");
    assert!(done.json["finished_at"].is_string());
}

#[tokio::test]
async fn v1_delete_cancels_queued_and_running_runs() {
    let app = TestApp::with(|c| c.max_running = 1);
    let slow = Script::ok().sleep_ms(30_000).source();
    let running = app.run("u", &slow, json!({"wait": false})).await;
    let queued = app.run("u", &slow, json!({"wait": false})).await;
    let (running, queued) = (
        running.header("location").unwrap(),
        queued.header("location").unwrap(),
    );
    app.poll(running, "u", |j| j["status"] == "running").await;

    let r = app.delete(queued, "u").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let r = app.poll(queued, "u", |j| j["status"] == "cancelled").await;
    assert_eq!(r.json["error"]["code"], ErrorCode::Cancelled.as_str());
    assert_eq!(
        app.fake.orders().len(),
        1,
        "a queued run never reaches the sandbox"
    );

    let r = app.delete(running, "u").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = app.poll(running, "u", |j| j["status"] == "cancelled").await;
    assert_eq!(r.json["error"]["code"], ErrorCode::Cancelled.as_str());
    assert_eq!(
        app.fake.cancels().len(),
        1,
        "the running one was killed in the sandbox"
    );
    let r = app.delete(running, "u").await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "already final"
    );
}

#[tokio::test]
async fn runs_are_visible_to_their_owner_only() {
    let app = TestApp::new();
    let r = app.run("alice", "1", json!({"wait": false})).await;
    let id = r.json["id"].as_str().unwrap().to_owned();
    for path in [format!("/v1/runs/{id}"), format!("/status/{id}")] {
        assert_eq!(app.get(&path, "alice").await.status, StatusCode::OK);
        assert_error(
            &app.get(&path, "mallory").await,
            StatusCode::NOT_FOUND,
            ErrorCode::RunNotFound,
        );
    }
    assert_error(
        &app.delete(&format!("/v1/runs/{id}"), "mallory").await,
        StatusCode::NOT_FOUND,
        ErrorCode::RunNotFound,
    );
    assert_error(
        &app.get("/v1/runs/no-such-run", "alice").await,
        StatusCode::NOT_FOUND,
        ErrorCode::RunNotFound,
    );
    assert_error(
        &app.get("/status/no-such-run", "alice").await,
        StatusCode::NOT_FOUND,
        ErrorCode::RunNotFound,
    );
}

// ---- authentication

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let app = TestApp::new();
    let get = |auth: Option<String>| {
        let mut r = req(Method::GET, "/v1/runtimes");
        if let Some(a) = auth {
            r = r.header("authorization", &a);
        }
        app.call(r.empty())
    };
    let r = get(None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, ErrorCode::MissingToken);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="execbox""#)
    );

    let b64 = |s: &str| b64url(s.as_bytes());
    let claims = |f: &dyn Fn(&mut Claims)| {
        let mut c = support::claims("u");
        f(&mut c);
        c
    };
    let expired = mint(SECRET, &claims(&|c| c.exp = now() - 120)).unwrap();
    let immature = mint(SECRET, &claims(&|c| c.nbf = Some(now() + 600))).unwrap();
    let anonymous = mint(SECRET, &claims(&|c| c.user_id = None)).unwrap();
    let other_key = mint(b"another secret", &support::claims("u")).unwrap();
    let payload = b64(&serde_json::to_string(&support::claims("u")).unwrap());
    let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let hs512 = {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512);
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&header, &support::claims("u"), &key).unwrap()
    };
    for (what, auth, says) in [
        ("not bearer", "Basic dTpw".to_owned(), "Bearer"),
        ("garbage", "Bearer not.a.jwt".to_owned(), "malformed"),
        ("expired", format!("Bearer {expired}"), "expired"),
        ("not yet valid", format!("Bearer {immature}"), "nbf"),
        (
            "no user",
            format!("Bearer {anonymous}"),
            "neither user_id nor sub",
        ),
        ("other key", format!("Bearer {other_key}"), "signature"),
        ("alg none", format!("Bearer {alg_none}"), ""),
        ("HS512", format!("Bearer {hs512}"), "HS256"),
    ] {
        let r = get(Some(auth)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken);
        assert!(
            r.json["error"]["message"].as_str().unwrap().contains(says),
            "{what}: {}",
            r.json
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="execbox", error="invalid_token""#),
            "{what}"
        );
    }
    let by_sub = mint(
        SECRET,
        &claims(&|c| {
            c.user_id = None;
            c.sub = Some("s".into());
        }),
    )
    .unwrap();
    assert_eq!(
        get(Some(format!("bearer {by_sub}"))).await.status,
        StatusCode::OK,
        "sub names the user"
    );
    let leeway = mint(SECRET, &claims(&|c| c.exp = now() - 2)).unwrap();
    assert_eq!(
        get(Some(format!("Bearer {leeway}"))).await.status,
        StatusCode::OK,
        "within the leeway"
    );
    for path in ["/execute", "/run-json/", "/run-file/", "/v1/runs"] {
        let r = app.call(req(Method::POST, path).json(&json!({}))).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, ErrorCode::MissingToken);
    }
    let open = app.call(req(Method::GET, "/openapi.json").empty()).await;
    assert_eq!(
        open.status,
        StatusCode::OK,
        "the API description needs no token"
    );
    assert!(app.fake.orders().is_empty());
}

#[tokio::test]
async fn v1_user_answers_the_claims() {
    let app = TestApp::new();
    let r = app.get("/v1/user", "bertram").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (
            r.json["user_id"].as_str(),
            r.json["user_full_name"].as_str()
        ),
        (Some("bertram"), Some("bertram tester"))
    );
    let open = TestApp::with(|c| c.jwt_secret = None);
    let r = open.call(req(Method::GET, "/v1/user").empty()).await;
    assert_error(&r, StatusCode::NOT_FOUND, ErrorCode::AuthDisabled);
    let r = open
        .call(req(Method::POST, "/execute").json(&json!({"script": Script::ok().source()})))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "without authentication anyone may run"
    );
}

// ---- quotas and admission

#[tokio::test]
async fn rate_quota_refuses_beyond_the_burst() {
    let app = TestApp::with(|c| {
        c.quotas = QuotaConfig {
            rate: Some(RateQuota {
                per_second: 1,
                burst: 2,
            }),
            ..QuotaConfig::default()
        }
    });
    for _ in 0..2 {
        assert_eq!(app.get("/v1/runtimes", "u").await.status, StatusCode::OK);
    }
    let r = app.get("/v1/runtimes", "u").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateQuota);
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("retry-after"), r.header("ratelimit-reset"));
    assert!(r.header("retry-after").is_some());
    let r = app.post("/execute", "u", json!({"script": "1"})).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateQuota);
    assert_eq!(
        app.get("/v1/runtimes", "v").await.status,
        StatusCode::OK,
        "another user is not affected"
    );
    let metrics = app.call_private(req(Method::GET, "/metrics").empty()).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"execbox_rejected_requests_total{reason="rate_quota"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn concurrency_quota_counts_unfinished_runs() {
    let app = TestApp::with(|c| {
        c.quotas = QuotaConfig {
            concurrent_runs: Some(1),
            ..QuotaConfig::default()
        }
    });
    let slow = Script::ok().sleep_ms(200).source();
    let first = app.run("u", &slow, json!({"wait": false})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let r = app.run("u", &slow, json!({"wait": false})).await;
    assert_error(
        &r,
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ConcurrencyQuota,
    );
    assert_eq!(
        (r.header("ratelimit-limit"), r.header("ratelimit-remaining")),
        (Some("1"), Some("0"))
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        app.run("v", "1", json!({})).await.status,
        StatusCode::OK,
        "per user"
    );
    app.poll(first.header("location").unwrap(), "u", |j| {
        j["status"] == "ok"
    })
    .await;
    assert_eq!(
        app.run("u", "1", json!({})).await.status,
        StatusCode::OK,
        "the place came back"
    );
}

#[tokio::test]
async fn cpu_quota_charges_finished_runs() {
    let app = TestApp::with(|c| {
        c.quotas = QuotaConfig {
            cpu_seconds: Some(1.0),
            window: Duration::from_secs(60),
            ..QuotaConfig::default()
        }
    });
    let r = app
        .post(
            "/execute",
            "u",
            json!({"script": Script::ok().cpu_ms(1500).source()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.post("/execute", "u", json!({"script": "1"})).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::CpuQuota);
    assert_eq!(
        (r.header("ratelimit-limit"), r.header("ratelimit-remaining")),
        (Some("1"), Some("0"))
    );
    let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "the window's rest: {reset}");
    assert_eq!(
        app.run("v", "1", json!({})).await.status,
        StatusCode::OK,
        "per user"
    );
}

#[tokio::test]
async fn a_full_server_refuses_before_the_body() {
    let app = TestApp::with(|c| {
        c.max_running = 1;
        c.max_queued = 1;
    });
    let slow = Script::ok().sleep_ms(30_000).source();
    for _ in 0..2 {
        assert_eq!(
            app.run("u", &slow, json!({"wait": false})).await.status,
            StatusCode::ACCEPTED
        );
    }
    let r = app.run("v", "1", json!({})).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull);
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = app
        .call(
            req(Method::POST, "/execute")
                .user("v")
                .body("application/json", "{"),
        )
        .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull);
    let (ct, body) = multipart(&[("file", Some("a.txt"), b"")]);
    let r = app
        .call(req(Method::POST, "/run-file/").user("v").body(&ct, body))
        .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull);
    assert_eq!(
        app.get("/v1/runtimes", "v").await.status,
        StatusCode::OK,
        "only runs need a place"
    );
}

#[tokio::test]
async fn queue_wait_holds_a_request_for_a_freed_place() {
    let app = TestApp::with(|c| {
        c.max_running = 1;
        c.max_queued = 0;
        c.queue_wait = Duration::from_secs(10);
    });
    let first = app
        .run(
            "u",
            &Script::ok().sleep_ms(100).source(),
            json!({"wait": false}),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let start = Instant::now();
    let r = app.run("v", "1", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "held, then run: {}", r.json);
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "it waited for the place"
    );

    let short = TestApp::with(|c| {
        c.max_running = 1;
        c.max_queued = 0;
        c.queue_wait = Duration::from_millis(50);
    });
    short
        .run(
            "u",
            &Script::ok().sleep_ms(30_000).source(),
            json!({"wait": false}),
        )
        .await;
    let start = Instant::now();
    let r = short.run("v", "1", json!({})).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull);
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "it waited --queue-wait first"
    );
}

#[tokio::test]
async fn not_ready_before_the_sandbox_says_hello() {
    let app = TestApp::new();
    app.fake.set_status(SandboxStatus::default());
    for (path, body) in [
        ("/execute", json!({"script": "1"})),
        ("/run-json/", json!({"code": "1"})),
        (
            "/v1/runs",
            json!({"language": "python", "version": "3", "files": [{"content": "1"}]}),
        ),
    ] {
        let r = app.post(path, "u", body).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady);
        assert_eq!(r.header("retry-after"), Some("2"));
    }
    assert_eq!(
        app.get("/v1/runtimes", "u").await.json,
        json!([]),
        "no runtime before hello"
    );
    let r = app.call_private(req(Method::GET, "/readyz").empty()).await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
    );
    app.fake.set_status(SandboxStatus {
        up: true,
        language: "python".into(),
        version: support::fake::VERSION.into(),
        ..SandboxStatus::default()
    });
    let r = app.post("/execute", "u", json!({"script": "1"})).await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady);
    assert!(
        app.fake.orders().is_empty(),
        "nothing ran before the canary passed"
    );
}

/// With `--redis-url` naming a Redis that is not there (a loopback port nobody listens on),
/// every request that needs the shared state answers 503 `state_unavailable` with
/// `Retry-After`, and `/readyz` says why. (The Redis backends themselves, and the recovery
/// once Redis is back, are tested against a real redis-server: `shared::redis::tests`, and the
/// compose stack: crates/execbox-cli/tests/stack.rs.)
#[tokio::test]
async fn unreachable_redis_is_503_state_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let app = TestApp::with(|c| {
        c.redis = Some(execbox_server::config::RedisConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            lease: Duration::from_secs(10),
        });
        c.quotas.concurrent_runs = Some(4);
    });
    for (path, body) in [
        ("/execute", json!({"script": "1"})),
        ("/run-json/?wait=false", json!({"code": "1"})),
        (
            "/v1/runs",
            json!({"language": "python", "version": "3", "files": [{"content": "1"}]}),
        ),
    ] {
        let r = app.post(path, "u", body).await;
        assert_error(
            &r,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StateUnavailable,
        );
        assert_eq!(r.header("retry-after"), Some("2"));
    }
    let r = app.get("/v1/runs/some-id", "u").await;
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StateUnavailable,
    );
    let r = app.delete("/v1/runs/some-id", "u").await;
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StateUnavailable,
    );
    assert!(
        app.fake.orders().is_empty(),
        "nothing ran without the shared state"
    );
    let r = app.call_private(req(Method::GET, "/readyz").empty()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["shared_state"], "unreachable");
    let r = TestApp::new()
        .call_private(req(Method::GET, "/readyz").empty())
        .await;
    assert_eq!(r.json["shared_state"], "memory");
}

// ---- operations, fallbacks, the WebSocket's HTTP answers

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let app = TestApp::new();
    let r = app.call_private(req(Method::GET, "/healthz").empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.call_private(req(Method::GET, "/readyz").empty()).await;
    assert_eq!(
        (
            r.status,
            r.json["spawner_up"].as_bool(),
            r.json["canary_ok"].as_bool()
        ),
        (StatusCode::OK, Some(true), Some(true))
    );
    app.post("/execute", "u", json!({"script": Script::ok().source()}))
        .await;
    let r = app.call_private(req(Method::GET, "/metrics").empty()).await;
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(r#"execbox_runs_total{runtime="python",status="ok"} 1"#),
        "{text}"
    );
    let r = app.call(req(Method::GET, "/openapi.json").empty()).await;
    assert!(r.json["paths"]["/v1/runs"]["post"].is_object());
    let r = app
        .call(
            req(Method::GET, "/v1/runtimes")
                .user("u")
                .header("x-request-id", "mine")
                .empty(),
        )
        .await;
    assert_eq!(
        r.header("x-request-id"),
        Some("mine"),
        "a client's request id is kept"
    );
    assert_error(
        &app.call_private(req(Method::GET, "/v1/runs").empty()).await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let app = TestApp::new();
    let r = app.call(req(Method::GET, "/nope").empty()).await;
    assert_error(&r, StatusCode::NOT_FOUND, ErrorCode::NotFound);
    let r = app.get("/v1/runs/a/b", "u").await;
    assert_error(&r, StatusCode::NOT_FOUND, ErrorCode::NotFound);
    for (method, path) in [
        (Method::GET, "/execute"),
        (Method::PUT, "/v1/runs/x"),
        (Method::DELETE, "/v1/runtimes"),
    ] {
        let r = app.call(req(method, path).user("u").empty()).await;
        assert_error(
            &r,
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
        );
    }
}

#[tokio::test]
async fn ws_plain_request_is_not_a_websocket() {
    let app = TestApp::new();
    let r = app.call(req(Method::GET, "/v1/ws").user("u").empty()).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert_eq!(r.code(), ErrorCode::NotAWebsocket.as_str());
}

#[tokio::test]
async fn ws_handshake_refusals_are_http_answers() {
    let app = TestApp::with(|c| {
        c.max_websockets = 2;
        c.max_websockets_per_user = 1;
    });
    let addr = app.serve().await;
    let code = |text: &str| {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str::<Value>(body).unwrap_or_default()["error"]["code"].clone()
    };
    let (status, text, _) = ws_handshake(addr, &[("Origin", "https://evil.example")]).await;
    assert_eq!(
        (status, code(&text)),
        (403, json!(ErrorCode::OriginNotAllowed)),
        "{text}"
    );
    let (status, text, _) = ws_handshake(addr, &[("Authorization", "Bearer nope")]).await;
    assert_eq!(
        (status, code(&text)),
        (401, json!(ErrorCode::InvalidToken)),
        "{text}"
    );

    let t = format!("Bearer {}", token("u"));
    let (status, _, _open) = ws_handshake(addr, &[("Authorization", &t)]).await;
    assert_eq!(status, 101);
    let (status, text, _) = ws_handshake(addr, &[("Authorization", &t)]).await;
    assert_eq!(
        (status, code(&text)),
        (429, json!(ErrorCode::TooManyWebsockets)),
        "per user: {text}"
    );
    let (status, _, _unauthenticated) = ws_handshake(addr, &[]).await;
    assert_eq!(status, 101, "authenticates with its first message");
    let (status, text, _) = ws_handshake(addr, &[]).await;
    assert_eq!(
        (status, code(&text)),
        (503, json!(ErrorCode::TooManyWebsockets)),
        "in total: {text}"
    );
}

// ---- GET /v1/runs/{id}/events

/// The SSE events of a body: (id, event, data as JSON).
fn sse_events(body: &[u8]) -> Vec<(String, String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut id = String::new();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data += v.trim_start();
                }
            }
            (!event.is_empty()).then(|| {
                (
                    id,
                    event,
                    serde_json::from_str(&data).unwrap_or(Value::Null),
                )
            })
        })
        .collect()
}

#[tokio::test]
async fn run_events_stream_and_resume() {
    let app = TestApp::new();
    let src = Script::ok()
        .stdout("one")
        .stdout("two")
        .stderr("err")
        .source();
    let r = app.run("u", &src, json!({"wait": false})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/runs/{id}/events");
    let all = app.get(&path, "u").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&all.body);
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["accepted", "stage", "stdout", "stdout", "stderr", "exit"],
        "{events:?}"
    );
    assert_eq!(events[0].2, json!({"type": "accepted", "id": id}));
    assert_eq!(events[1].2, json!({"type": "stage", "stage": "run"}));
    assert_eq!(events[3].2, json!({"type": "stdout", "data": "two\n"}));
    assert_eq!(events[5].2["record"]["status"], "ok");
    let ids: Vec<&str> = events.iter().map(|(i, _, _)| i.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5"]);

    // Resumed after event 3: the rest.
    let resumed = app
        .call(
            req(Method::GET, &path)
                .user("u")
                .header("last-event-id", "3")
                .empty(),
        )
        .await;
    let rest = sse_events(&resumed.body);
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!((rest[0].0.as_str(), rest[0].1.as_str()), ("4", "stderr"));

    let bad = app
        .call(
            req(Method::GET, &path)
                .user("u")
                .header("last-event-id", "x")
                .empty(),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, ErrorCode::InvalidLastEventId);
    // Another user's run, an unknown one, and one without events (/execute) are not found.
    let other = app.get(&path, "v").await;
    assert_error(&other, StatusCode::NOT_FOUND, ErrorCode::RunNotFound);
    let r = app.get("/v1/runs/nope/events", "u").await;
    assert_error(&r, StatusCode::NOT_FOUND, ErrorCode::RunNotFound);
    let doc = app.get("/openapi.json", "u").await;
    assert!(doc.json["paths"]["/v1/runs/{id}/events"]["get"].is_object());
}

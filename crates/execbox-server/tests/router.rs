//! The router in-process against a fake sandbox (`support::fake`): every status mapping,
//! validation error, authentication rule and quota, in milliseconds and without root. What
//! needs the kernel (jails, limits, the spawner's life) is tested with the real binary in
//! `crates/execbox-cli/tests`.
mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test]
async fn execute_answers_main_result_apart_from_stdout() {
    let app = TestApp::new();
    let src = Script::ok().stdout("hi").result(json!({"a": 1})).source();
    let r = app.post("/execute", "u", json!({"script": src})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, json!({"result": {"a": 1}, "stdout": "hi\n"}));
    let _ = Method::GET;
}

//! The router.

pub mod events;
pub mod execute;
pub mod health;
pub mod runs;
pub mod user;
pub mod ws;

use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::{middleware, Router};
use execbox_proto::ErrorCode;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::require_auth;
use crate::error::ApiError;
use crate::quota::rate_limit;
use crate::state::AppState;

/// The public endpoints: every run endpoint behind authentication and per-user quotas, and
/// the OpenAPI document.
pub fn public_app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/execute", post(execute::execute))
        .route("/run-json/", post(runs::run_json))
        .route("/run-json", post(runs::run_json))
        .route("/run-file/", post(runs::run_file))
        .route("/run-file", post(runs::run_file))
        .route("/status/{id}", get(runs::status))
        .route("/v1/runs", post(runs::create_run))
        .route("/v1/runs/{id}", get(runs::get_run).delete(runs::cancel_run))
        .route("/v1/runs/{id}/events", get(events::events))
        .route("/v1/runtimes", get(runs::runtimes))
        .route("/v1/user", get(user::user))
        // Layers run outside in: authentication, then the rate quota.
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    // The WebSocket authenticates itself (browsers cannot set its headers).
    let open = Router::new()
        .route("/openapi.json", get(health::openapi))
        .route("/v1/ws", get(ws::ws));
    common_layers(protected.merge(open), &state).with_state(state)
}

/// The private endpoints (`/healthz`, `/readyz`, `/metrics`), for the operator's network only.
pub fn private_app(state: AppState) -> Router {
    let r = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    common_layers(r, &state).with_state(state)
}

/// Body limit, request id, tracing, panic catcher and a request timeout backstop.
fn common_layers(r: Router<AppState>, state: &AppState) -> Router<AppState> {
    let body_limit = state.cfg.max_body_bytes;
    // Longest a blocking request can legitimately take: the longest allowed run, plus queueing.
    let backstop =
        Duration::from_millis(state.cfg.max_limits.wall_time_ms) * 3 + Duration::from_secs(30);
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, backstop))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed here",
    )
}

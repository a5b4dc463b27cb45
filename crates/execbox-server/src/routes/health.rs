//! Liveness, readiness, metrics and the API description.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::api::Readiness;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 204, description = "alive")), tag = "ops")]
pub async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Ready to run code: the spawner is up and its start-up canary run succeeded.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready", body = Readiness),
    ),
    tag = "ops"
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let s = state.sandbox.status();
    let ready = s.ready();
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.into(),
        spawner_up: s.up,
        canary_ok: s.canary_ok,
        missing_layers: s.missing_layers,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    tag = "ops"
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.queue_depth.set(state.admission.queued() as i64);
    m.in_flight.set(state.admission.running() as i64);
    let status = state.sandbox.status();
    m.spawner_restarts.set(status.restarts as i64);
    let w = &status.warm;
    for (what, v) in [
        ("warm_hits", w.warm_hits),
        ("cold_fallbacks", w.cold_fallbacks),
        ("recycles", w.recycles),
        ("restarts", w.restarts),
        ("templates_ready", w.templates_ready),
        ("pool_depth", w.pool_depth),
    ] {
        m.warm.with_label_values(&[what]).set(v as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")),
    tag = "ops"
)]
pub async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

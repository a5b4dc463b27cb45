//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::api::{
    Accepted, CreateRunRequest, ExecuteRequest, ExecuteResponse, FileInput, LimitsInput, ModeName,
    Readiness, RunCodeRequest, RuntimeInfo,
};
use crate::error::ErrorResponse;
use crate::routes::{execute, health, runs};
use execbox_proto::{ErrorBody, LimitKind, RunRecord, RunStatus, StepReport};

/// The API description served at `/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "execbox",
        description = "Run untrusted code in a fresh, locked-down Linux sandbox.",
        license(name = "Apache-2.0")
    ),
    paths(
        execute::execute,
        runs::run_json,
        runs::run_file,
        runs::status,
        runs::create_run,
        runs::get_run,
        runs::cancel_run,
        runs::runtimes,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi,
    ),
    components(schemas(
        ExecuteRequest,
        ExecuteResponse,
        RunCodeRequest,
        Accepted,
        CreateRunRequest,
        FileInput,
        LimitsInput,
        ModeName,
        RuntimeInfo,
        Readiness,
        ErrorResponse,
        ErrorBody,
        RunRecord,
        StepReport,
        RunStatus,
        LimitKind
    ))
)]
pub struct ApiDoc;

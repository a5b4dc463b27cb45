//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    Accepted, CreateRunRequest, ExecuteRequest, ExecuteResponse, FileInput, LimitsInput, Readiness,
    RunCodeRequest, RuntimeInfo,
};
use crate::auth::Claims;
use crate::error::ErrorResponse;
use crate::live::LiveMessage;
use crate::routes::ws::live_protocol::LiveClientMessage;
use crate::routes::ws::protocol::{ClientMessage, ServerMessage};
use crate::routes::{events, execute, health, runs, user, ws};
use execbox_proto::live::{OutputStream, Stage};
use execbox_proto::{
    CaseReport, CasesSummary, Compare, ErrorBody, LimitKind, Mode, OutputFile, RunRecord,
    RunStatus, StepReport, TestCase,
};

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
        events::events,
        runs::runtimes,
        user::user,
        ws::ws,
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
        Mode,
        RuntimeInfo,
        Readiness,
        ErrorResponse,
        ErrorBody,
        RunRecord,
        StepReport,
        TestCase,
        Compare,
        CaseReport,
        CasesSummary,
        OutputFile,
        RunStatus,
        LimitKind, Claims,
        ClientMessage,
        ServerMessage,
        LiveClientMessage,
        LiveMessage,
        Stage,
        OutputStream)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Declares the HS256 bearer-token scheme every run endpoint requires.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT (HS256)")
                    .build(),
            ),
        );
    }
}

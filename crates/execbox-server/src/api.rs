//! Request and response bodies of the HTTP API.

use execbox_proto::limits::{mib, LimitOverrides};
use execbox_proto::{Compare, Mode, RunStatus, TestCase};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /execute` body (seed 004).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Python source defining `main()`.
    pub script: String,
}

/// `POST /execute` success.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    /// `main()`'s return value.
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
    /// What the script printed.
    pub stdout: String,
}

/// `POST /run-json/` body (seed 003).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeRequest {
    /// Python source, run as a program.
    pub code: String,
    /// Standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Program arguments.
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

/// `?wait=` on the run endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// `false`: answer 202 with the run id at once instead of waiting for the result.
    pub wait: Option<bool>,
}

/// 202 answer of an asynchronous run.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Run id.
    pub id: String,
    /// `queued`.
    pub status: RunStatus,
    /// Where to poll.
    pub status_url: String,
}

/// One source file.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// Plain file name (no `/`, `..` or NUL). Defaults to `main.py` for the first file.
    #[serde(default)]
    pub name: Option<String>,
    /// UTF-8 contents.
    pub content: String,
}

/// Per-run limits; each is capped by the operator's maximum.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// Wall-clock limit, ms.
    pub timeout_ms: Option<u64>,
    /// Memory, MiB.
    pub memory_mb: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u32>,
    /// Cap of each of stdout and stderr, bytes.
    pub output_limit_bytes: Option<u64>,
}

impl LimitsInput {
    /// What this asks to change of the default limits.
    pub fn overrides(&self) -> LimitOverrides {
        LimitOverrides {
            timeout_ms: self.timeout_ms,
            memory_bytes: self.memory_mb.map(mib),
            pids: self.pids,
            cpu_millis: None,
            output_bytes: self.output_limit_bytes,
        }
    }
}

/// `POST /v1/runs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// Language name or alias (`python`, `js`, `c++`, …; see `GET /v1/runtimes`).
    pub language: String,
    /// Version selector: a bare version is a prefix (`3`, `3.11`, `3.11.2`), else a semver
    /// requirement (`>=1.21`, `<5.4`); any when absent. The highest match wins.
    #[serde(default)]
    pub version: Option<String>,
    /// Files; the first is the entry point.
    pub files: Vec<FileInput>,
    /// Standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Program arguments.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `program` (default) or `main`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Limits.
    #[serde(default)]
    pub limits: Option<LimitsInput>,
    /// Wait for the result (default true); false answers 202 at once.
    #[serde(default)]
    pub wait: Option<bool>,
    /// Test cases (at most 32, program mode): the program is compiled once and runs once per
    /// case, each in a fresh jail with the case's stdin and args (top-level `stdin` and `args`
    /// must then be absent). The record has one report per case and a summary; its status
    /// is the worst case's.
    #[serde(default)]
    pub cases: Option<Vec<TestCase>>,
    /// How a case's stdout is compared with its `expected_stdout`: `exact` (default) or
    /// `trim` (trailing whitespace of each line and trailing newlines ignored).
    #[serde(default)]
    pub compare: Option<Compare>,
}

/// One runtime of `GET /v1/runtimes`.
pub use execbox_proto::RuntimeInfo;

/// `GET /readyz` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// The spawner process is up.
    pub spawner_up: bool,
    /// The start-up canary run succeeded.
    pub canary_ok: bool,
    /// Isolation layers missing (degraded mode).
    pub missing_layers: Vec<String>,
    /// Where run state and quotas live: `memory`, or Redis `up` / `unreachable` (not ready).
    pub shared_state: String,
}

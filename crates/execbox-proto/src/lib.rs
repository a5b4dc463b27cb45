//! Types shared across execbox's processes: the server, the spawner and the CLI agree on
//! these and on nothing else.
//!
//! - every run, whatever API started it, produces one [`RunRecord`];
//! - [`spawner`]: the orders and events between the server and its spawner, and the
//!   spawner's configuration;
//! - [`Limits`] and the one routine that applies a caller's overrides to them;
//! - [`Mode`], source files and the rules their names follow;
//! - [`ErrorCode`]: every error code, one string form each;
//! - [`LayerName`]: the isolation layers, by the names records and `execbox check` use;
//! - [`defaults`]: host paths and sizes, defined once;
//! - run ids and RFC 3339 timestamps.
//!
//! The server depends on this crate and not on the jail: what crosses a process boundary is
//! defined here.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cases;
pub mod defaults;
pub mod error_code;
pub mod files;
pub mod layers;
pub mod limits;
pub mod live;
pub mod mode;
pub mod runtime;
pub mod spawner;
pub mod time;

pub use cases::{CaseReport, CasesSummary, Compare, OutputFile, TestCase, MAX_CASES};
pub use error_code::ErrorCode;
pub use files::{validate_file_name, FileNameError, SourceFile, MAX_FILES};
pub use layers::LayerName;
pub use limits::{LimitError, LimitOverrides, Limits};
pub use mode::Mode;
pub use runtime::{RuntimeInfo, RuntimeRef, SelectError};
pub use time::{new_run_id, now_rfc3339};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a run is in its life, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, waiting for a slot.
    Queued,
    /// A jail is executing it.
    Running,
    /// Finished normally (exit code 0; in `main` mode, `main()` returned JSON).
    Ok,
    /// The program failed on its own: non-zero exit, exception, no `main()`, non-JSON result.
    RuntimeError,
    /// Compilation failed (compiled languages only).
    CompileError,
    /// The wall-clock or CPU limit fired.
    Timeout,
    /// The memory limit fired.
    MemoryLimit,
    /// The program wrote more than the output cap.
    OutputLimit,
    /// Cancelled by the client.
    Cancelled,
    /// execbox itself failed; the detail is in the server's log.
    InternalError,
}

impl RunStatus {
    /// Stable snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Ok => "ok",
            Self::RuntimeError => "runtime_error",
            Self::CompileError => "compile_error",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::OutputLimit => "output_limit",
            Self::Cancelled => "cancelled",
            Self::InternalError => "internal_error",
        }
    }

    /// True once the run can no longer change.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The error code that stands for a failed run of this status when the record carries no
    /// more precise one.
    pub fn error_code(self) -> ErrorCode {
        match self {
            Self::Timeout => ErrorCode::Timeout,
            Self::MemoryLimit => ErrorCode::MemoryLimit,
            Self::OutputLimit => ErrorCode::OutputLimit,
            Self::Cancelled => ErrorCode::Cancelled,
            Self::InternalError => ErrorCode::InternalError,
            Self::CompileError => ErrorCode::CompileError,
            Self::Queued | Self::Running | Self::Ok | Self::RuntimeError => ErrorCode::RuntimeError,
        }
    }
}

/// Which limit ended a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Wall-clock deadline, enforced by the supervisor.
    WallTime,
    /// RLIMIT_CPU (SIGXCPU / SIGKILL from the kernel).
    CpuTime,
    /// Memory cgroup OOM kill, or the runtime's own out-of-memory error.
    Memory,
    /// stdout or stderr exceeded the cap.
    Output,
}

/// A stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, for example `no_main`.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// Build an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What one execution (compile or run step) did and cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepReport {
    /// Captured standard output, up to the cap (lossy UTF-8).
    pub stdout: String,
    /// Captured standard error, up to the cap (lossy UTF-8).
    pub stderr: String,
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    /// Wall-clock time from launch to exit, milliseconds.
    pub wall_time_ms: f64,
    /// CPU time (user + system) of the whole run tree, milliseconds.
    pub cpu_time_ms: f64,
    /// Peak memory of the run's cgroup, bytes (0 when unknown).
    pub memory_peak_bytes: u64,
    /// True when stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// Which limit ended the run, if any.
    pub limit: Option<LimitKind>,
}

/// The record every run produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Language name, for example `python`.
    pub language: String,
    /// Runtime version, for example `3.11.2`.
    pub version: String,
    /// Current or final status.
    pub status: RunStatus,
    /// True when an isolation layer was missing and the operator allowed a degraded run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// True when the run was served by the warm path: a child of a template that had the
    /// runtime and its modules loaded already (docs/security.md, "Templates").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// Layers that were missing in a degraded run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_layers: Vec<String>,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Compile step, for compiled languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<StepReport>,
    /// The run step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<StepReport>,
    /// One report per test case, when the request had cases (then `run` is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseReport>,
    /// Counts over the cases, when the request had cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<CasesSummary>,
    /// Files the run wrote under `/work/out` (program mode, without cases; each case has its
    /// own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFile>,
    /// `main()`'s return value, in `main` mode, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 finish time, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Microseconds spent in each jail step (diagnostics; names are not stable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<Object>>)]
    pub timings_us: Vec<(String, u64)>,
}

impl RunRecord {
    /// The one place a record starts: a run of `language` `version` with `status`, nothing
    /// measured yet. The spawner fills in the steps and result; the server uses it as is for
    /// queued, cancelled-before-start and internal-error records.
    pub fn new(
        id: impl Into<String>,
        language: impl Into<String>,
        version: impl Into<String>,
        status: RunStatus,
        created_at: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            language: language.into(),
            version: version.into(),
            status,
            degraded: false,
            warm: false,
            missing_layers: vec![],
            error: None,
            compile: None,
            run: None,
            cases: vec![],
            summary: None,
            files: vec![],
            result: None,
            created_at: created_at.into(),
            finished_at: None,
            timings_us: vec![],
        }
    }
}

impl RunRecord {
    /// CPU time of every step (compile, run, each case), milliseconds: what the CPU quota
    /// charges.
    pub fn cpu_time_ms(&self) -> f64 {
        self.compile
            .iter()
            .chain(&self.run)
            .chain(self.cases.iter().filter_map(|c| c.run.as_ref()))
            .map(|s| s.cpu_time_ms)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_snake_case() {
        for s in [
            RunStatus::MemoryLimit,
            RunStatus::InternalError,
            RunStatus::Ok,
        ] {
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(v, serde_json::Value::String(s.as_str().to_owned()));
        }
        assert!(!RunStatus::Running.is_final());
        assert!(RunStatus::Cancelled.is_final());
    }

    #[test]
    fn degraded_flag_omitted_when_false() {
        let r = RunRecord {
            run: Some(StepReport::default()),
            result: Some(serde_json::json!({"ok": 1})),
            ..RunRecord::new("x", "python", "3.11", RunStatus::Ok, "t")
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("degraded").is_none());
        assert_eq!(v["result"]["ok"], 1);
        let back: RunRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}

//! Test cases of a run (one program, compiled once, run once per case in a fresh jail) and
//! the files a run returns from `/work/out`.
//!
//! Status rule: a run with cases takes the status of its worst case, in this order from worst
//! to best: `internal_error`, `cancelled`, `memory_limit`, `timeout`, `output_limit`,
//! `runtime_error`, `ok` (a compile failure ends the run before any case, as `compile_error`).
//! A wrong answer is not a failed run: the case's status stays `ok`, its `passed` is false and
//! the summary counts it as failed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ErrorBody, RunStatus, StepReport};

/// Most test cases one run may carry.
pub const MAX_CASES: usize = 32;

/// Default cap on the number of files a run returns from `/work/out`.
pub const DEFAULT_MAX_OUTPUT_FILES: usize = 16;

/// Default cap on the total size of the files a run returns, bytes.
pub const DEFAULT_MAX_OUTPUT_FILES_BYTES: u64 = 1024 * 1024;

/// The folder of the work dir whose files come back in the record (program mode).
pub const OUTPUT_DIR: &str = "out";

/// One test case: the program runs once per case, with this stdin and these arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Standard input of this case.
    #[serde(default)]
    pub stdin: String,
    /// Program arguments of this case.
    #[serde(default)]
    pub args: Vec<String>,
    /// When given, the case gets `passed` by comparing its stdout with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_stdout: Option<String>,
}

/// How a case's stdout is compared with its expected output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// Byte for byte.
    #[default]
    Exact,
    /// Trailing whitespace of every line and trailing newlines ignored.
    Trim,
}

impl Compare {
    /// Whether `actual` matches `expected` under this rule.
    pub fn matches(self, expected: &str, actual: &str) -> bool {
        match self {
            Self::Exact => expected == actual,
            Self::Trim => trimmed(expected) == trimmed(actual),
        }
    }
}

fn trimmed(s: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// A file the run wrote under `/work/out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputFile {
    /// Plain file name (the input files' rules).
    pub name: String,
    /// Contents, base64 (standard alphabet, padded).
    pub content_base64: String,
    /// Size, bytes.
    pub size: u64,
}

/// What one test case did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CaseReport {
    /// Index in the request's `cases`.
    pub index: usize,
    /// How the case's run ended.
    pub status: RunStatus,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Whether stdout matched `expected_stdout` (absent when none was given, or the case did
    /// not run to its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// The case's run step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<StepReport>,
    /// Files the case wrote under `/work/out`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFile>,
}

/// Counts over a run's cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CasesSummary {
    /// Cases in the request.
    pub total: usize,
    /// Cases that ran (a cancel stops the rest).
    pub ran: usize,
    /// Cases whose stdout matched their expected output.
    pub passed: usize,
    /// Cases with an expected output that did not match it (or did not run to its end).
    pub failed: usize,
}

/// How bad a status is, for the worst-case rule (higher is worse).
pub fn severity(s: RunStatus) -> u8 {
    match s {
        RunStatus::Queued | RunStatus::Running | RunStatus::Ok => 0,
        RunStatus::RuntimeError => 1,
        RunStatus::OutputLimit => 2,
        RunStatus::Timeout => 3,
        RunStatus::MemoryLimit => 4,
        RunStatus::CompileError => 5,
        RunStatus::Cancelled => 6,
        RunStatus::InternalError => 7,
    }
}

/// The summary of `reports` out of `total` cases, judged against `cases`.
pub fn summarise(cases: &[TestCase], reports: &[CaseReport]) -> CasesSummary {
    let mut s = CasesSummary {
        total: cases.len(),
        ran: reports.len(),
        ..CasesSummary::default()
    };
    for (i, c) in cases.iter().enumerate() {
        if c.expected_stdout.is_none() {
            continue;
        }
        match reports.get(i).and_then(|r| r.passed) {
            Some(true) => s.passed += 1,
            _ => s.failed += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_ignores_trailing_whitespace_only() {
        assert!(Compare::Trim.matches("a\nb\n", "a  \nb\n\n\n"));
        assert!(Compare::Trim.matches("a\r\nb", "a\nb\t"));
        assert!(!Compare::Trim.matches("a\nb", " a\nb"));
        assert!(!Compare::Trim.matches("a\n\nb", "a\nb"));
        assert!(!Compare::Exact.matches("a\n", "a"));
        assert!(Compare::Exact.matches("a\n", "a\n"));
    }

    #[test]
    fn summary_counts_missing_and_unjudged_cases() {
        let c = |e: Option<&str>| TestCase {
            expected_stdout: e.map(str::to_owned),
            ..TestCase::default()
        };
        let r = |passed| CaseReport {
            index: 0,
            status: RunStatus::Ok,
            error: None,
            passed,
            run: None,
            files: vec![],
        };
        let s = summarise(
            &[c(Some("1")), c(Some("2")), c(None), c(Some("4"))],
            &[r(Some(true)), r(Some(false)), r(None)],
        );
        assert_eq!((s.total, s.ran, s.passed, s.failed), (4, 3, 1, 2));
        assert!(severity(RunStatus::Timeout) > severity(RunStatus::RuntimeError));
    }
}

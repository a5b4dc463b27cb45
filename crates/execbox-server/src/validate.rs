//! Input validation, before any jail starts: from a request body (HTTP) or a `run` message
//! (WebSocket) to a [`RunRequest`], or the error that names what is wrong. The routes and the
//! WebSocket session call the same functions here, then [`crate::runner::submit`].

use execbox_proto::cases::OUTPUT_DIR;
use execbox_proto::runtime::select;
use execbox_proto::{
    validate_file_name, Compare, Limits, Mode, SourceFile, TestCase, MAX_CASES, MAX_FILES,
};
use execbox_proto::{ErrorCode, SelectError};

use crate::api::{CreateRunRequest, FileInput, LimitsInput};
use crate::error::ApiError;
use crate::runner::{self, RunRequest};
use crate::state::AppState;
use axum::http::StatusCode;

/// `POST /execute`'s script: `main()` run with the default limits.
pub fn script(state: &AppState, script: String) -> Result<RunRequest, ApiError> {
    single_file(state, "script", script, Mode::Main, None, None)
}

/// A program of `/run-json/` or `/run-file/`: one file, the default limits.
pub fn program(
    state: &AppState,
    code: String,
    stdin: Option<String>,
    args: Option<Vec<String>>,
) -> Result<RunRequest, ApiError> {
    single_file(state, "code", code, Mode::Program, stdin, args)
}

fn single_file(
    state: &AppState,
    field: &str,
    content: String,
    mode: Mode,
    stdin_text: Option<String>,
    arguments: Option<Vec<String>>,
) -> Result<RunRequest, ApiError> {
    source(field, &content, state.cfg.max_source_bytes)?;
    let limits = state.cfg.spawner.default_limits;
    Ok(RunRequest {
        mode,
        files: vec![SourceFile {
            name: "main.py".into(),
            content,
        }],
        stdin: stdin(stdin_text, &limits)?,
        args: args(arguments)?,
        limits,
        runtime: None,
        cases: vec![],
        compare: Compare::default(),
        live: false,
        interactive: false,
    })
}

/// A `POST /v1/runs` body or a WebSocket `run` message.
pub fn run_request(state: &AppState, req: CreateRunRequest) -> Result<RunRequest, ApiError> {
    // The runtimes are the sandbox's (its hello); before the first one nothing runs anyway.
    let status = state.sandbox.status();
    if status.runtimes.is_empty() {
        runner::ready(state)?;
    }
    let runtime = select(&status.runtimes, &req.language, req.version.as_deref())
        .map_err(select_error)?
        .clone();
    let mut limits = limits(
        req.limits,
        state.cfg.spawner.default_limits,
        &state.cfg.max_limits,
    )?;
    let mode = req.mode.unwrap_or(Mode::Program);
    if !runtime.modes.contains(&mode) {
        return Err(ApiError::bad_request(
            ErrorCode::NotPython,
            format!(
                "{} {} does not support mode {}; it supports {:?}",
                runtime.language,
                runtime.version,
                mode.as_str(),
                runtime.modes
            ),
        ));
    }
    // An unnamed entry file takes the runtime's entry name before the name rules (reserved,
    // duplicate) are checked, so a clash is a 400 here rather than a refusal in the jail.
    let mut input = req.files;
    if let Some(first) = input.first_mut().filter(|f| f.name.is_none()) {
        first.name = Some(runtime.entry.clone());
    }
    let files = files(input, state.cfg.max_source_bytes)?;
    let cases = match req.cases {
        Some(c) => {
            if req.stdin.is_some() || req.args.is_some() {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidCases,
                    "with cases, stdin and args belong to each case, not to the run",
                ));
            }
            let cases = cases(c, mode, &limits)?;
            // All cases together may print no more than one run may at the operator's maximum:
            // each case's output cap is its share of it (and never more than asked for).
            let share = state.cfg.max_limits.output_bytes / cases.len().max(1) as u64;
            limits.output_bytes = limits.output_bytes.min(share.max(1024));
            cases
        }
        None => vec![],
    };
    Ok(RunRequest {
        mode,
        files,
        stdin: stdin(req.stdin, &limits)?,
        args: args(req.args)?,
        limits,
        runtime: Some(runtime.to_ref()),
        cases,
        compare: req.compare.unwrap_or_default(),
        live: false,
        interactive: false,
    })
}

/// Test cases: 1..=[`MAX_CASES`], program mode, each case's stdin and args bounded like a
/// run's.
fn cases(input: Vec<TestCase>, mode: Mode, limits: &Limits) -> Result<Vec<TestCase>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidCases,
            "cases is empty; omit it to run once",
        ));
    }
    if input.len() > MAX_CASES {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyCases,
            format!("{} cases; the maximum is {MAX_CASES}", input.len()),
        ));
    }
    if mode != Mode::Program {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidCases,
            "cases run in program mode only",
        ));
    }
    input
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let name = |mut e: ApiError| {
                e.body.error.message = format!("cases[{i}]: {}", e.body.error.message);
                e
            };
            Ok(TestCase {
                stdin: stdin(Some(c.stdin), limits).map_err(name)?,
                args: args(Some(c.args)).map_err(name)?,
                expected_stdout: c.expected_stdout,
            })
        })
        .collect()
}

/// Whether `name` is one execbox uses in the work dir itself: the output folder, and the
/// `.execbox-` prefix of its internal files (the compile artefacts' archive).
fn reserved(name: &str) -> bool {
    name == OUTPUT_DIR || name.starts_with(".execbox-")
}

/// A selection failure as a 400 naming what exists.
fn select_error(e: SelectError) -> ApiError {
    let code = match e {
        SelectError::UnknownLanguage { .. } => ErrorCode::UnknownLanguage,
        SelectError::InvalidVersion { .. } => ErrorCode::InvalidVersion,
        SelectError::NoMatchingVersion { .. } => ErrorCode::NoMatchingVersion,
    };
    ApiError::bad_request(code, e.to_string())
}

/// A JSON document that does not fit its type (an HTTP body, a WebSocket message): 400
/// `invalid_field`, naming the field (`files[0].content: invalid type: …`).
pub fn invalid_field(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidField, e.to_string())
}

/// Most arguments a run may get.
pub const MAX_ARGS: usize = 256;
const MAX_ARGS_BYTES: usize = 64 * 1024;

/// A source text: bounded, no NUL.
fn source(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SourceTooLarge,
            format!("{field} is {} bytes; the maximum is {max}", text.len()),
        ));
    }
    if text.contains('\0') {
        return Err(ApiError::bad_request(
            ErrorCode::NulInSource,
            format!("{field} contains a NUL byte"),
        ));
    }
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::EmptySource,
            format!("{field} is empty"),
        ));
    }
    Ok(())
}

/// Files of a `/v1/runs` request: 1..=64, plain unique names, each bounded.
fn files(input: Vec<FileInput>, max_source: usize) -> Result<Vec<SourceFile>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::NoFiles,
            "files must hold at least one file",
        ));
    }
    if input.len() > MAX_FILES {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyFiles,
            format!("{} files; the maximum is {MAX_FILES}", input.len()),
        ));
    }
    let mut out: Vec<SourceFile> = Vec::with_capacity(input.len());
    let mut total = 0usize;
    for (i, f) in input.into_iter().enumerate() {
        let name = match (f.name, i) {
            (Some(n), _) => n,
            (None, 0) => "main.py".to_owned(),
            (None, _) => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidFileName,
                    format!("files[{i}].name is required"),
                ))
            }
        };
        validate_file_name(&name).map_err(|m| {
            ApiError::bad_request(ErrorCode::InvalidFileName, format!("files[{i}].name: {m}"))
        })?;
        if reserved(&name) {
            return Err(ApiError::bad_request(
                ErrorCode::ReservedFileName,
                format!(
                    "files[{i}].name {name:?} is reserved: `{OUTPUT_DIR}` is the output folder \
                     and `.execbox-*` names are execbox's own"
                ),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ApiError::bad_request(
                ErrorCode::DuplicateFileName,
                format!("file {name:?} is given twice"),
            ));
        }
        if f.content.contains('\0') {
            return Err(ApiError::bad_request(
                ErrorCode::NulInSource,
                format!("files[{i}].content contains a NUL byte"),
            ));
        }
        total += f.content.len();
        out.push(SourceFile {
            name,
            content: f.content,
        });
    }
    if total > max_source {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SourceTooLarge,
            format!("files total {total} bytes; the maximum is {max_source}"),
        ));
    }
    Ok(out)
}

/// Program arguments: bounded count and size, no NUL.
fn args(args: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let a = args.unwrap_or_default();
    if a.len() > MAX_ARGS {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyArgs,
            format!("{} arguments; the maximum is {MAX_ARGS}", a.len()),
        ));
    }
    if a.iter().map(String::len).sum::<usize>() > MAX_ARGS_BYTES
        || a.iter().any(|s| s.contains('\0'))
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidArgs,
            format!("arguments must be at most {MAX_ARGS_BYTES} bytes in all, without NUL"),
        ));
    }
    Ok(a)
}

/// Defaults overridden by `input`, checked against `max` (the rules and messages of the
/// CLI's flags: [`Limits::overridden`]).
fn limits(input: Option<LimitsInput>, defaults: Limits, max: &Limits) -> Result<Limits, ApiError> {
    defaults
        .overridden(&input.map(|i| i.overrides()).unwrap_or_default(), max)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidLimit, e.to_string()))
}

/// Standard input: bounded by the run's limit.
fn stdin(s: Option<String>, limits: &Limits) -> Result<String, ApiError> {
    let s = s.unwrap_or_default();
    if s.len() as u64 > limits.stdin_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::StdinTooLarge,
            format!(
                "stdin is {} bytes; the maximum is {}",
                s.len(),
                limits.stdin_bytes
            ),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: Option<&str>, content: &str) -> FileInput {
        FileInput {
            name: name.map(str::to_owned),
            content: content.to_owned(),
        }
    }

    #[test]
    fn file_rules() {
        assert_eq!(files(vec![f(None, "x")], 100).unwrap()[0].name, "main.py");
        for bad in ["../x.py", "a/b.py", "a\0b", ".."] {
            let e = files(vec![f(Some(bad), "x")], 100).unwrap_err();
            assert_eq!(e.body.error.code, "invalid_file_name", "{bad:?}");
        }
        let e = files(vec![f(Some("a.py"), "x"), f(Some("a.py"), "y")], 100).unwrap_err();
        assert_eq!(e.body.error.code, "duplicate_file_name");
        let many: Vec<_> = (0..=MAX_FILES)
            .map(|i| f(Some(&format!("f{i}.py")), "x"))
            .collect();
        assert_eq!(
            files(many, 10_000).unwrap_err().body.error.code,
            "too_many_files"
        );
        assert_eq!(files(vec![], 1).unwrap_err().body.error.code, "no_files");
        for name in ["out", ".execbox-build.tar", ".execbox-x"] {
            let e = files(vec![f(Some(name), "x")], 100).unwrap_err();
            assert_eq!(e.body.error.code, "reserved_file_name", "{name}");
        }
        assert!(files(vec![f(Some("out.txt"), "x")], 100).is_ok());
        assert_eq!(
            files(vec![f(None, "xx")], 1).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn case_rules() {
        let l = Limits::default();
        let c = |stdin: &str| TestCase {
            stdin: stdin.into(),
            ..TestCase::default()
        };
        assert_eq!(cases(vec![c("1")], Mode::Program, &l).unwrap().len(), 1);
        let code = |r: Result<Vec<TestCase>, ApiError>| r.unwrap_err().body.error.code;
        assert_eq!(code(cases(vec![], Mode::Program, &l)), "invalid_cases");
        assert_eq!(code(cases(vec![c("")], Mode::Main, &l)), "invalid_cases");
        let many = vec![c(""); MAX_CASES + 1];
        assert_eq!(code(cases(many, Mode::Program, &l)), "too_many_cases");
        let big = "x".repeat(l.stdin_bytes as usize + 1);
        let e = cases(vec![c(""), c(&big)], Mode::Program, &l).unwrap_err();
        assert_eq!(e.body.error.code, "stdin_too_large");
        assert!(e.body.error.message.starts_with("cases[1]: "), "{e:?}");
    }

    #[test]
    fn limits_name_the_maximum() {
        let max = Limits::default_maxima();
        let e = limits(
            Some(LimitsInput {
                memory_mb: Some(1 << 20),
                ..LimitsInput::default()
            }),
            Limits::default(),
            &max,
        )
        .unwrap_err();
        assert_eq!(e.body.error.code, "invalid_limit");
        assert!(e.body.error.message.contains(&max.memory_bytes.to_string()));
    }

    #[test]
    fn selection_errors_are_400s_with_their_codes() {
        let all = [execbox_proto::RuntimeInfo {
            language: "python".into(),
            version: "3.11.2".into(),
            aliases: vec!["py".into()],
            compiled: false,
            modes: vec![Mode::Program, Mode::Main],
            packages: vec![],
            entry: "main.py".into(),
        }];
        for ok in ["3", "3.11", "3.11.2", ">=3.10", "*", "latest", "^3"] {
            assert!(select(&all, "py", Some(ok)).is_ok(), "{ok}");
        }
        for (lang, sel, code) in [
            ("python", "3.12", ErrorCode::NoMatchingVersion),
            ("python", "2", ErrorCode::NoMatchingVersion),
            ("python", "not a version", ErrorCode::InvalidVersion),
            ("cobol", "*", ErrorCode::UnknownLanguage),
        ] {
            let e = select(&all, lang, Some(sel))
                .map_err(select_error)
                .unwrap_err();
            assert_eq!(e.body.error.code, code);
        }
    }

    #[test]
    fn source_rules() {
        assert!(source("script", "def main(): pass", 100).is_ok());
        assert_eq!(
            source("script", "a\0", 100).unwrap_err().body.error.code,
            "nul_in_source"
        );
        assert_eq!(
            source("script", "  ", 100).unwrap_err().body.error.code,
            "empty_source"
        );
        assert_eq!(
            source("script", "xx", 1).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}

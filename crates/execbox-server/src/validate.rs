//! Input validation, before any jail starts.

use execbox_proto::ErrorCode;
use execbox_proto::{validate_file_name, Limits, SourceFile, MAX_FILES};

use crate::api::{FileInput, LimitsInput};
use crate::error::ApiError;
use axum::http::StatusCode;

/// Most arguments a run may get.
pub const MAX_ARGS: usize = 256;
const MAX_ARGS_BYTES: usize = 64 * 1024;

/// A source text: bounded, no NUL.
pub fn source(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
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
pub fn files(input: Vec<FileInput>, max_source: usize) -> Result<Vec<SourceFile>, ApiError> {
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
pub fn args(args: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
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
pub fn limits(
    input: Option<LimitsInput>,
    defaults: Limits,
    max: &Limits,
) -> Result<Limits, ApiError> {
    defaults
        .overridden(&input.map(|i| i.overrides()).unwrap_or_default(), max)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidLimit, e.to_string()))
}

/// Standard input: bounded by the run's limit.
pub fn stdin(s: Option<String>, limits: &Limits) -> Result<String, ApiError> {
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
        assert_eq!(
            files(vec![f(None, "xx")], 1).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
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

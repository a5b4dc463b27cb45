//! Source files of a run and the rules their names follow (checked by the server before a run
//! is admitted, and again by the jail before it writes them).

use serde::{Deserialize, Serialize};

/// Largest number of files one run may carry.
pub const MAX_FILES: usize = 64;

/// Longest file name, bytes.
pub const MAX_FILE_NAME: usize = 255;

/// One source file of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Plain file name.
    pub name: String,
    /// UTF-8 contents.
    pub content: String,
}

/// Why a file name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// The empty string.
    #[error("file name is empty")]
    Empty,
    /// Longer than [`MAX_FILE_NAME`].
    #[error("file name is longer than {MAX_FILE_NAME} bytes")]
    TooLong,
    /// `.` or `..`.
    #[error("file name {0:?} is not allowed")]
    Dot(String),
    /// A path separator or NUL.
    #[error("file name {0:?} contains '/', '\\\\' or NUL")]
    Separator(String),
    /// A control character.
    #[error("file name contains a control character")]
    Control,
    /// A leading `-` or `@`, or a brace: such a name would be read as an option, an argument
    /// file (`@file` for gcc, javac, rustc) or a template placeholder by the tools that get
    /// file names on their command line.
    #[error("file name {0:?} starts with '-' or '@' or contains '{{' or '}}'")]
    LooksLikeAnOption(String),
}

/// Check that `name` is a plain file name that cannot leave the work dir.
pub fn validate_file_name(name: &str) -> Result<(), FileNameError> {
    if name.is_empty() {
        return Err(FileNameError::Empty);
    }
    if name.len() > MAX_FILE_NAME {
        return Err(FileNameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(FileNameError::Dot(name.to_owned()));
    }
    if name.contains('/') || name.contains('\0') || name.contains('\\') {
        return Err(FileNameError::Separator(name.to_owned()));
    }
    if name.chars().any(char::is_control) {
        return Err(FileNameError::Control);
    }
    if name.starts_with(['-', '@']) || name.contains(['{', '}']) {
        return Err(FileNameError::LooksLikeAnOption(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_escape_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
            "-o",
            "@opts.c",
            "{mode}.py",
            "a/b",
            "../x",
            "/etc/passwd",
            "a\0b",
            "a\\b",
            "a\nb",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main.py", ".hidden", "a..b", "données.txt"] {
            assert!(validate_file_name(good).is_ok(), "{good:?} rejected");
        }
        assert_eq!(
            validate_file_name(&"x".repeat(256)),
            Err(FileNameError::TooLong)
        );
        assert_eq!(
            validate_file_name("a/b").unwrap_err().to_string(),
            r#"file name "a/b" contains '/', '\\' or NUL"#
        );
    }
}

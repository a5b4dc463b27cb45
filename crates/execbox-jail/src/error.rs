//! Errors of the jail crate.

use std::path::PathBuf;

/// Everything that can go wrong while preparing, running or tearing down a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A syscall failed on the parent (supervising) side.
    #[error("{call} failed: {source}")]
    Sys {
        /// Which call, with its main argument.
        call: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A file under a kernel interface (cgroupfs, procfs) could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The child failed during its setup, before `execve`; the message comes from the child.
    #[error("jail setup failed in the child: {0}")]
    ChildSetup(String),
    /// The spec was rejected before anything started.
    #[error("invalid jail spec: {0}")]
    InvalidSpec(String),
    /// The host lacks a layer and degraded mode was not allowed.
    #[error("isolation layer unavailable: {0}")]
    LayerUnavailable(String),
    /// No free uid slot (too many concurrent runs).
    #[error("no free sandbox uid slot among {0}")]
    NoSlot(u32),
    /// The seccomp filter could not be built.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
}

impl JailError {
    pub(crate) fn sys(call: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            call: call.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = JailError> = std::result::Result<T, E>;

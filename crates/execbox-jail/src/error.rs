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
    /// The child failed during its setup, before `execve`: which step, with which errno.
    #[error("jail setup failed in the child: {0}")]
    ChildSetup(#[from] crate::child_error::ChildError),
    /// The child ended during its setup without saying why (killed, or its report unreadable).
    #[error("jail child ended during setup: {0}")]
    ChildVanished(&'static str),
    /// A cgroup counter held something other than what the kernel documents.
    #[error("cgroup stat {path}: {what}")]
    CgroupStat {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// Something failed, and so did the cleanup after it.
    #[error("{primary} (and cleaning up failed: {cleanup})")]
    CleanupFailed {
        /// The first failure.
        primary: Box<JailError>,
        /// The cleanup's failure.
        cleanup: Box<JailError>,
    },
    /// The spec was rejected before anything started.
    #[error("invalid jail spec: {0}")]
    InvalidSpec(String),
    /// The host lacks a layer and degraded mode was not allowed.
    #[error("isolation layer unavailable: {0}")]
    LayerUnavailable(String),
    /// A jail was to be cloned from a process with more than one thread (the child would copy
    /// one thread of a process whose locks other threads may hold).
    #[error("jails must be created by a single-threaded process; this one has several threads")]
    NotSingleThreaded,
    /// No free uid slot (too many concurrent runs).
    #[error("no free sandbox uid slot among {0}")]
    NoSlot(u32),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
}

impl JailError {
    /// This error, joined by the result of the cleanup that followed it.
    pub(crate) fn with_cleanup(self, cleanup: Result<()>) -> Self {
        match cleanup {
            Ok(()) => self,
            Err(c) => Self::CleanupFailed {
                primary: Box::new(self),
                cleanup: Box::new(c),
            },
        }
    }

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

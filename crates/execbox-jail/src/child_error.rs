//! Typed errors of the child side of the jail: which step failed, with which errno.
//!
//! The child cannot return a Rust value to its parent (it is another process, and it ends in
//! `execve` or `_exit`), so it writes the error as JSON on its status pipe and the parent decodes
//! it into [`JailError::ChildSetup`](crate::JailError::ChildSetup). The errno travels as a number
//! so the parent can tell, for example, `EPERM` from a missing layer apart from `ENOMEM` under a
//! small memory limit.

use std::fmt;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// The steps of the child's jail sequence, in order (`init.rs`, `docs/jail-sequence.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Copy the pipe ends onto 0-5 and close every other descriptor.
    PlaceFds,
    /// `PR_SET_PDEATHSIG(SIGKILL)`, set again after each identity switch.
    ParentDeathSignal,
    /// Reset every signal disposition and the mask.
    ResetSignals,
    /// A session of its own.
    Setsid,
    /// `oom_score_adj` 1000.
    OomScoreAdj,
    /// Wait for the parent's go (uid/gid maps written).
    WaitForParent,
    /// Join the run's cgroup (v1).
    JoinCgroup,
    /// `setgroups`, `setresgid`, `setresuid`.
    SwitchIdentity,
    /// Unshare the cgroup namespace.
    CgroupNamespace,
    /// Build the root: tmpfs, binds, `/etc`, `/proc`, `/dev`, scratch space.
    RootFs,
    /// `pivot_root` and detach of the old root.
    PivotRoot,
    /// Tell the parent the jail is ready.
    SignalReady,
    /// Read and check the launch message.
    LaunchMessage,
    /// Create the payload's files below `/work`.
    WriteFiles,
    /// Set every rlimit.
    Rlimits,
    /// Empty the capability sets.
    DropCapabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Apply the Landlock ruleset.
    Landlock,
    /// Install the seccomp filters.
    Seccomp,
    /// `execve` the runtime.
    Exec,
    /// A template read its request (warm path).
    TemplateRequest,
    /// A template cloned its child and wrote its uid/gid maps (warm path).
    TemplateClone,
}

impl Step {
    /// The step's stable name (as in the JSON form).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::PlaceFds => "place_fds",
            Step::ParentDeathSignal => "parent_death_signal",
            Step::ResetSignals => "reset_signals",
            Step::Setsid => "setsid",
            Step::OomScoreAdj => "oom_score_adj",
            Step::WaitForParent => "wait_for_parent",
            Step::JoinCgroup => "join_cgroup",
            Step::SwitchIdentity => "switch_identity",
            Step::CgroupNamespace => "cgroup_namespace",
            Step::RootFs => "root_fs",
            Step::PivotRoot => "pivot_root",
            Step::SignalReady => "signal_ready",
            Step::LaunchMessage => "launch_message",
            Step::WriteFiles => "write_files",
            Step::Rlimits => "rlimits",
            Step::DropCapabilities => "drop_capabilities",
            Step::NoNewPrivs => "no_new_privs",
            Step::Landlock => "landlock",
            Step::Seccomp => "seccomp",
            Step::Exec => "exec",
            Step::TemplateRequest => "template_request",
            Step::TemplateClone => "template_clone",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed step of the child: the step, the errno when the failure was a system call, and what
/// it was acting on (a path, a resource name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ChildError {
    /// Which step failed.
    pub step: Step,
    /// The errno of the failed call, if the failure was a system call.
    pub errno: Option<i32>,
    /// What the step was acting on, and the cause when it is not an errno.
    pub detail: String,
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jail step {}", self.step)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if let Some(e) = self.errno {
            write!(f, ": {}", Errno::from_raw(e))?;
        }
        Ok(())
    }
}

impl ChildError {
    /// A failure without an errno.
    pub fn new(step: Step, detail: impl Into<String>) -> Self {
        Self {
            step,
            errno: None,
            detail: detail.into(),
        }
    }

    /// The errno as nix's type, if any.
    pub fn errno(&self) -> Option<Errno> {
        self.errno.map(Errno::from_raw)
    }

    /// The form written on the status pipe (after the `E` tag).
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising a struct of an enum, an integer and a string cannot fail; should it ever,
        // the parent still gets a decodable (if less precise) error.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            format!(r#"{{"step":"{}","errno":null,"detail":""}}"#, self.step).into_bytes()
        })
    }

    /// Decode what the child wrote after `E`. Undecodable bytes mean the child broke the
    /// protocol (or died mid-write): `None`.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Errors that may carry an errno.
pub(crate) trait MaybeErrno: fmt::Display {
    /// The errno, if this error is a failed system call.
    fn errno(&self) -> Option<i32>;
}

impl MaybeErrno for Errno {
    fn errno(&self) -> Option<i32> {
        Some(*self as i32)
    }
}

impl MaybeErrno for std::io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl MaybeErrno for caps::errors::CapsError {
    fn errno(&self) -> Option<i32> {
        None
    }
}

impl MaybeErrno for landlock::RulesetError {
    fn errno(&self) -> Option<i32> {
        None
    }
}

impl MaybeErrno for crate::JailError {
    fn errno(&self) -> Option<i32> {
        None
    }
}

/// Attach a step and what it acted on to a failed call.
pub(crate) trait StepContext<T> {
    /// On error: a [`ChildError`] of `step`, with the errno if there is one, and `what` (plus
    /// the error's text when it has no errno).
    fn step(self, step: Step, what: impl FnOnce() -> String) -> Result<T, ChildError>;
}

impl<T, E: MaybeErrno> StepContext<T> for Result<T, E> {
    fn step(self, step: Step, what: impl FnOnce() -> String) -> Result<T, ChildError> {
        self.map_err(|e| match e.errno() {
            Some(errno) => ChildError {
                step,
                errno: Some(errno),
                detail: what(),
            },
            None => ChildError {
                step,
                errno: None,
                detail: format!("{}: {e}", what()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_status_pipe_form() {
        let e: Result<(), Errno> = Err(Errno::EPERM);
        let e = e.step(Step::PivotRoot, || "pivot_root".into()).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EPERM));
        let back = ChildError::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.to_string(),
            "jail step pivot_root (pivot_root): EPERM: Operation not permitted"
        );
        assert!(ChildError::decode(b"not json").is_none());
    }

    #[test]
    fn io_errors_keep_their_errno_and_others_their_text() {
        let io: Result<(), std::io::Error> = Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        let e = io
            .step(Step::WriteFiles, || "/work/a.py".into())
            .unwrap_err();
        assert_eq!(e.errno, Some(libc::ENOMEM));
        assert_eq!(e.detail, "/work/a.py");
        let other: Result<(), std::io::Error> = Err(std::io::Error::other("odd"));
        let e = other.step(Step::WriteFiles, || "x".into()).unwrap_err();
        assert_eq!((e.errno, e.detail.as_str()), (None, "x: odd"));
    }
}

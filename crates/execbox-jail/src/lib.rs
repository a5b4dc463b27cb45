//! The execbox jail: runs one untrusted process with every isolation layer of
//! `docs/security.md` on, and reports how it ended and what it cost.
//!
//! ```text
//! Jailer::new(host)      host check, cgroup backend, uid slots, compiled seccomp policy
//!   .prepare(spec)       cgroup + uid + clone3 into new namespaces + mounts + pivot_root
//!   .launch(payload)     files into /work, rlimits, creds, no_new_privs, Landlock, seccomp, execve
//!   .wait(cancel)        stdin, capped stdout/stderr/result, deadline, exit, teardown → Outcome
//! ```
//!
//! This is the only execbox crate allowed `unsafe`; raw syscalls live in the private `sys`
//! module. Everything here must run in a single-threaded process (the spawner or the one-shot
//! CLI), never in the tokio server: [`Jailer`] checks it before every clone and refuses with
//! [`JailError::NotSingleThreaded`] otherwise.
#![deny(missing_docs)]

pub mod cgroup;
pub mod check;
pub mod child_error;
pub mod config;
mod creds;
pub mod error;
mod init;
mod landlock_rules;
mod launch_msg;
pub mod rlimit;
mod rootfs;
pub mod seccomp;
pub mod slots;
mod spawn;
mod supervise;
mod sys;
pub mod template;
pub mod warm;

pub use child_error::{ChildError, Step};
pub use config::{
    BindMount, HostConfig, JailSpec, LimitError, Limits, Payload, WorkFile, RESULT_FD,
};
pub use error::{JailError, Result};

/// Ignore SIGTERM, SIGINT and SIGHUP in this process (the spawner: it ends on stdin EOF or its
/// parent's death, not on signals meant for the server's process group). Jails reset every
/// disposition before `execve`.
pub fn ignore_termination_signals() -> Result<()> {
    sys::ignore_termination_signals().map_err(|e| JailError::sys("signal", e))
}
pub use spawn::{Jailer, Prepared, Preparing, Running};
pub use supervise::{Limit, Outcome, Role, Supervisor};
pub use template::Template;

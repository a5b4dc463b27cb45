//! What a jail looks like: host-wide settings, per-run limits, mounts and the payload.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use execbox_proto::defaults;
pub use execbox_proto::files::{validate_file_name, MAX_FILES};
pub use execbox_proto::limits::{LimitError, Limits};

use crate::error::{JailError, Result};

/// The uid (and gid) the payload has inside its user namespace.
pub const SANDBOX_ID: u32 = 1000;

/// Descriptor number of the result channel inside the jail (a pipe separate from stdout, read
/// by the supervisor with its own cap).
pub const RESULT_FD: i32 = 3;

/// Host-wide settings of the jailer, fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// First host uid/gid handed to runs; slot `n` runs as `uid_base + n`.
    pub uid_base: u32,
    /// Number of slots, hence of concurrent runs on this host.
    pub slots: u32,
    /// Directory for slot locks and the jail root mount point (`/run/execbox`).
    pub state_dir: PathBuf,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Name of execbox's parent cgroup below each hierarchy.
    pub cgroup_parent: String,
    /// `/proc/self/mountinfo`, or a fixture in tests.
    pub mountinfo: PathBuf,
    /// Run even when a layer is missing, and mark every result degraded.
    pub allow_degraded: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            uid_base: 2_000_000_000,
            slots: 4096,
            state_dir: PathBuf::from(defaults::STATE_DIR),
            cgroup_root: PathBuf::from(defaults::CGROUP_ROOT),
            cgroup_parent: "execbox".to_owned(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            allow_degraded: false,
        }
    }
}

/// A host path exposed read-only (recursively) inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the jail.
    pub target: PathBuf,
}

impl BindMount {
    /// Bind `path` at the same path inside the jail.
    pub fn same(path: impl Into<PathBuf>) -> Self {
        let p = path.into();
        Self {
            source: p.clone(),
            target: p,
        }
    }
}

/// The shape of one jail, fixed when it is prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JailSpec {
    /// Read-only binds beyond the system ones (`/usr` and friends), e.g. a runtime prefix.
    pub binds: Vec<BindMount>,
    /// Resource limits.
    pub limits: Limits,
}

/// One file placed in the work dir before the payload starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkFile {
    /// Plain file name: no `/`, no NUL, not `.` or `..`.
    pub name: String,
    /// Contents.
    pub content: Vec<u8>,
}

/// What runs inside a prepared jail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    /// Absolute path of the program, then its arguments.
    pub argv: Vec<String>,
    /// The complete environment (`KEY=value`); nothing is inherited.
    pub env: Vec<String>,
    /// Files written into `/work` (the working directory).
    pub files: Vec<WorkFile>,
    /// Bytes fed to stdin, then EOF.
    pub stdin: Vec<u8>,
}

impl Payload {
    /// Check the payload before a jail is touched.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let bad = |m: String| Err(JailError::InvalidSpec(m));
        match self.argv.first() {
            None => return bad("argv is empty".into()),
            Some(p) if !Path::new(p).is_absolute() => {
                return bad(format!("program {p:?} is not an absolute path"))
            }
            Some(_) => {}
        }
        if self.argv.iter().chain(&self.env).any(|s| s.contains('\0')) {
            return bad("argv or env contains NUL".into());
        }
        if self.env.iter().any(|e| !e.contains('=')) {
            return bad("env entries must be KEY=value".into());
        }
        if self.files.len() > MAX_FILES {
            return bad(format!("{} files, at most {MAX_FILES}", self.files.len()));
        }
        let mut total = 0u64;
        for (i, f) in self.files.iter().enumerate() {
            validate_file_name(&f.name).map_err(|e| JailError::InvalidSpec(e.to_string()))?;
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return bad(format!("file {:?} given twice", f.name));
            }
            total += f.content.len() as u64;
        }
        if total
            > limits
                .work_bytes
                .min(limits.file_size_bytes.saturating_mul(MAX_FILES as u64))
        {
            return bad(format!(
                "files total {total} bytes, above the work dir size"
            ));
        }
        if self
            .files
            .iter()
            .any(|f| f.content.len() as u64 > limits.file_size_bytes)
        {
            return bad("a file is larger than file_size_bytes".into());
        }
        if self.stdin.len() as u64 > limits.stdin_bytes {
            return bad(format!(
                "stdin is {} bytes, at most {}",
                self.stdin.len(),
                limits.stdin_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_validation() {
        let l = Limits::default();
        let mut p = Payload {
            argv: vec!["/usr/bin/python3".into()],
            ..Payload::default()
        };
        assert!(p.validate(&l).is_ok());
        p.argv[0] = "python3".into();
        assert!(p.validate(&l).is_err());
        p.argv[0] = "/usr/bin/python3".into();
        p.files = vec![
            WorkFile {
                name: "a.py".into(),
                content: vec![],
            },
            WorkFile {
                name: "a.py".into(),
                content: vec![],
            },
        ];
        assert!(p.validate(&l).is_err());
        p.files.truncate(1);
        p.stdin = vec![0; (l.stdin_bytes + 1) as usize];
        assert!(p.validate(&l).is_err());
    }
}

//! What a jail looks like: host-wide settings, per-run limits, mounts and the payload.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
            state_dir: PathBuf::from("/run/execbox"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "execbox".to_owned(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            allow_degraded: false,
        }
    }
}

/// Resource limits of one run. Every field has a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit from `execve`, milliseconds (supervisor timer).
    pub wall_time_ms: u64,
    /// CPU-time limit, milliseconds (RLIMIT_CPU, rounded up to seconds).
    pub cpu_time_ms: u64,
    /// Memory limit of the run's cgroup, swap excluded, bytes.
    pub memory_bytes: u64,
    /// Maximum number of tasks (pids cgroup and RLIMIT_NPROC).
    pub pids: u32,
    /// Cap on each of stdout and stderr, bytes; exceeding it kills the run.
    pub output_bytes: u64,
    /// Cap on the result channel, bytes.
    pub result_bytes: u64,
    /// Largest file the run may write (RLIMIT_FSIZE), bytes.
    pub file_size_bytes: u64,
    /// Size of the `/tmp` tmpfs, bytes.
    pub tmp_bytes: u64,
    /// Size of the `/work` tmpfs, bytes.
    pub work_bytes: u64,
    /// Inodes of each of `/tmp` and `/work`.
    pub inodes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
    /// CPU bandwidth, in thousandths of a core.
    pub cpu_millis: u32,
    /// Bytes of stdin the run may be given.
    pub stdin_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            wall_time_ms: 5_000,
            cpu_time_ms: 5_000,
            memory_bytes: 256 * MIB,
            pids: 64,
            output_bytes: MIB,
            result_bytes: 4 * MIB,
            file_size_bytes: 64 * MIB,
            tmp_bytes: 64 * MIB,
            work_bytes: 64 * MIB,
            inodes: 4096,
            open_files: 256,
            cpu_millis: 1000,
            stdin_bytes: MIB,
        }
    }
}

impl Limits {
    /// The ceilings an operator allows when nothing else is configured.
    pub fn default_maxima() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            wall_time_ms: 60_000,
            cpu_time_ms: 60_000,
            memory_bytes: 2048 * MIB,
            pids: 256,
            output_bytes: 16 * MIB,
            result_bytes: 16 * MIB,
            file_size_bytes: 256 * MIB,
            tmp_bytes: 512 * MIB,
            work_bytes: 512 * MIB,
            inodes: 65_536,
            open_files: 1024,
            cpu_millis: 4000,
            stdin_bytes: 16 * MIB,
        }
    }

    /// Named fields with their values, for validation messages.
    fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("wall_time_ms", self.wall_time_ms),
            ("cpu_time_ms", self.cpu_time_ms),
            ("memory_bytes", self.memory_bytes),
            ("pids", u64::from(self.pids)),
            ("output_bytes", self.output_bytes),
            ("result_bytes", self.result_bytes),
            ("file_size_bytes", self.file_size_bytes),
            ("tmp_bytes", self.tmp_bytes),
            ("work_bytes", self.work_bytes),
            ("inodes", self.inodes),
            ("open_files", self.open_files),
            ("cpu_millis", u64::from(self.cpu_millis)),
            ("stdin_bytes", self.stdin_bytes),
        ]
    }

    /// Check every limit is non-zero (where zero makes no sense) and within `max`.
    pub fn validate(&self, max: &Limits) -> Result<(), LimitError> {
        for ((name, v), (_, m)) in self.fields().into_iter().zip(max.fields()) {
            if v > m {
                return Err(LimitError::AboveMaximum {
                    field: name,
                    value: v,
                    maximum: m,
                });
            }
            if v == 0 && name != "stdin_bytes" {
                return Err(LimitError::Zero { field: name });
            }
        }
        if self.memory_bytes < 16 * 1024 * 1024 {
            return Err(LimitError::TooSmall {
                field: "memory_bytes",
                minimum: 16 * 1024 * 1024,
            });
        }
        if self.pids < 2 {
            return Err(LimitError::TooSmall {
                field: "pids",
                minimum: 2,
            });
        }
        Ok(())
    }
}

/// A limit a caller asked for that cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Above the operator's maximum.
    #[error("{field} = {value} is above the maximum of {maximum}")]
    AboveMaximum {
        /// The limit.
        field: &'static str,
        /// What was asked.
        value: u64,
        /// The operator's maximum.
        maximum: u64,
    },
    /// Zero where a positive value is required.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The limit.
        field: &'static str,
    },
    /// Below the smallest workable value.
    #[error("{field} must be at least {minimum}")]
    TooSmall {
        /// The limit.
        field: &'static str,
        /// Smallest accepted value.
        minimum: u64,
    },
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

/// Largest number of files one payload may carry.
pub const MAX_FILES: usize = 64;

/// Check that `name` is a plain file name that cannot leave the work dir.
pub fn validate_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("file name is empty".into());
    }
    if name.len() > 255 {
        return Err("file name is longer than 255 bytes".into());
    }
    if name == "." || name == ".." {
        return Err(format!("file name {name:?} is not allowed"));
    }
    if name.contains('/') || name.contains('\0') || name.contains('\\') {
        return Err(format!("file name {name:?} contains '/', '\\\\' or NUL"));
    }
    if name.chars().any(char::is_control) {
        return Err("file name contains a control character".into());
    }
    Ok(())
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
            validate_file_name(&f.name).map_err(JailError::InvalidSpec)?;
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
    fn file_names_that_escape_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
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
        assert!(validate_file_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn limits_above_maxima_name_the_field_and_the_maximum() {
        let max = Limits::default_maxima();
        assert!(Limits::default().validate(&max).is_ok());
        let l = Limits {
            memory_bytes: max.memory_bytes + 1,
            ..Limits::default()
        };
        let e = l.validate(&max).unwrap_err();
        assert!(e.to_string().contains("memory_bytes"), "{e}");
        assert!(e.to_string().contains(&max.memory_bytes.to_string()), "{e}");
        let z = Limits {
            pids: 0,
            ..Limits::default()
        };
        assert_eq!(z.validate(&max), Err(LimitError::Zero { field: "pids" }));
    }

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

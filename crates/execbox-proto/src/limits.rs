//! Per-run resource limits, the operator's maxima, and the one routine that applies a caller's
//! overrides (CLI flags or the API's `limits` object) and checks the result.

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// Resource limits of one run. Every field has a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Smallest memory limit a run may have.
pub const MIN_MEMORY_BYTES: u64 = 16 * MIB;

impl Limits {
    /// The ceilings an operator allows when nothing else is configured.
    pub fn default_maxima() -> Self {
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
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(LimitError::TooSmall {
                field: "memory_bytes",
                minimum: MIN_MEMORY_BYTES,
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

    /// These limits with `o` applied (a timeout sets both the wall-clock and the CPU limit).
    /// Unchecked: used for the operator's maxima as well as for a run's limits.
    pub fn with(mut self, o: &LimitOverrides) -> Self {
        if let Some(t) = o.timeout_ms {
            self.wall_time_ms = t;
            self.cpu_time_ms = t;
        }
        if let Some(m) = o.memory_bytes {
            self.memory_bytes = m;
        }
        if let Some(p) = o.pids {
            self.pids = p;
        }
        if let Some(c) = o.cpu_millis {
            self.cpu_millis = c;
        }
        if let Some(b) = o.output_bytes {
            self.output_bytes = b;
        }
        self
    }

    /// A run's limits: `self` (the defaults) overridden by what the caller asked for, checked
    /// against `max`. The CLI's flags and the API's `limits` object both come through here,
    /// so both follow the same rules and name the maximum the same way.
    pub fn overridden(self, o: &LimitOverrides, max: &Limits) -> Result<Limits, LimitError> {
        let l = self.with(o);
        l.validate(max)?;
        Ok(l)
    }
}

/// What a caller may change of a run's limits; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Wall-clock and CPU-time limit, ms.
    pub timeout_ms: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u32>,
    /// CPU bandwidth, thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// Cap of each of stdout and stderr, bytes.
    pub output_bytes: Option<u64>,
}

/// `mib` MiB in bytes (saturating: an absurd request is refused as above the maximum).
pub fn mib(mib: u64) -> u64 {
    mib.saturating_mul(MIB)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn overrides_set_both_times_and_are_checked() {
        let max = Limits::default_maxima().with(&LimitOverrides {
            memory_bytes: Some(mib(300)),
            ..LimitOverrides::default()
        });
        let l = Limits::default()
            .overridden(
                &LimitOverrides {
                    timeout_ms: Some(1500),
                    pids: Some(8),
                    ..LimitOverrides::default()
                },
                &max,
            )
            .unwrap();
        assert_eq!((l.wall_time_ms, l.cpu_time_ms, l.pids), (1500, 1500, 8));
        let e = Limits::default()
            .overridden(
                &LimitOverrides {
                    memory_bytes: Some(mib(512)),
                    ..LimitOverrides::default()
                },
                &max,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory_bytes = 536870912 is above the maximum of 314572800"
        );
        assert_eq!(mib(u64::MAX), u64::MAX);
    }
}

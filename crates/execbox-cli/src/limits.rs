//! Per-run limits from flags, capped by operator maxima from the environment.

use clap::Args;
use execbox_proto::limits::{mib, LimitError, LimitOverrides, Limits};

use crate::units::{parse_duration_ms, parse_size};

/// Limit flags. Unset flags take the defaults; every value is checked against the maxima.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Wall-clock (and CPU) limit: seconds (`2`, `0.5`) or with a unit (`300ms`, `5s`, `1m`);
    /// default 5s.
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    /// Wall-clock limit in milliseconds.
    #[arg(long, conflicts_with = "timeout", value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Memory limit, e.g. `256M`, `1G` (default 256M).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long, conflicts_with = "memory", value_name = "MIB")]
    memory_mb: Option<u64>,
    /// Maximum number of processes and threads (default 64).
    #[arg(long)]
    pids: Option<u32>,
    /// CPU bandwidth in thousandths of a CPU (cgroup `cpu.max`; default 1000, one CPU).
    #[arg(long, value_name = "MILLICPUS")]
    cpu_millis: Option<u32>,
    /// Cap on each of stdout and stderr, bytes (default 1 MiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    output_limit_bytes: Option<u64>,
    /// Operator maximum for the wall-clock limit, ms.
    #[arg(long, env = "EXECBOX_MAX_TIMEOUT_MS", hide = true)]
    max_timeout_ms: Option<u64>,
    /// Operator maximum for memory, MiB.
    #[arg(long, env = "EXECBOX_MAX_MEMORY_MB", hide = true)]
    max_memory_mb: Option<u64>,
    /// Operator maximum for pids.
    #[arg(long, env = "EXECBOX_MAX_PIDS", hide = true)]
    max_pids: Option<u32>,
    /// Operator maximum for the output cap, bytes.
    #[arg(long, env = "EXECBOX_MAX_OUTPUT_BYTES", hide = true)]
    max_output_bytes: Option<u64>,
}

impl LimitArgs {
    /// Defaults, overridden by flags, checked against the maxima.
    pub fn resolve(&self) -> Result<Limits, LimitError> {
        self.resolve_pair().map(|(l, _)| l)
    }

    /// The limits and the maxima they were checked against.
    pub fn resolve_pair(&self) -> Result<(Limits, Limits), LimitError> {
        let max = Limits::default_maxima().with(&LimitOverrides {
            timeout_ms: self.max_timeout_ms,
            memory_bytes: self.max_memory_mb.map(mib),
            pids: self.max_pids,
            cpu_millis: None,
            output_bytes: self.max_output_bytes,
        });
        let asked = LimitOverrides {
            timeout_ms: self.timeout.or(self.timeout_ms),
            memory_bytes: self.memory.or(self.memory_mb.map(mib)),
            pids: self.pids,
            cpu_millis: self.cpu_millis,
            output_bytes: self.output_limit_bytes,
        };
        Ok((Limits::default().overridden(&asked, &max)?, max))
    }
}

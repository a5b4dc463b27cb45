//! Host defaults, defined once: the CLI's flags, the server's configuration and the spawner
//! all start from these.

/// State directory: uid slot locks, the jails' mount point.
pub const STATE_DIR: &str = "/run/execbox";

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The Python environment (`make runtime` creates it).
pub const PYTHON_ENV: &str = "/opt/execbox/python";

/// Where installed runtime packages live (`make runtimes` copies the repository's
/// `runtimes/` here): one `<language>/<version>/manifest.toml` per runtime.
pub const RUNTIMES_DIR: &str = "/opt/execbox/runtimes";

/// Jails with the default limits kept prepared ahead of demand: one per CPU, at most 4.
pub fn pool() -> usize {
    // Warm children are cheap to keep (page tables, a cgroup, a uid) and a run that finds
    // none waiting pays the clone and the cgroup join: keep a few per CPU.
    (cpus() * 4).clamp(4, 16)
}

/// Children a warm template forks before a fresh one replaces it.
pub const WARM_MAX_RUNS: u64 = 1000;

/// Seconds after which a warm template is replaced.
pub const WARM_MAX_AGE_SECS: u64 = 600;

/// CPUs this process may use (2 when unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

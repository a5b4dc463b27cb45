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
    cpus().min(4)
}

/// CPUs this process may use (2 when unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

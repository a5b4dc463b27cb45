//! The spawner: the one process that creates jails for the server.
//!
//! The server is multi-threaded (tokio) and never forks; it starts `execbox spawner` once and
//! sends it run orders over a pipe. The spawner is single-threaded, so it may `clone3` jails.
//! It keeps a few jails prepared ahead of demand (cgroup, uid, namespaces, mounts and
//! `pivot_root` done), so a run pays only the launch, and supervises every running jail from
//! one `poll` loop.
//!
//! What it is told and what it answers are defined in [`execbox_proto::spawner`]: its
//! configuration is the first line on its stdin; it answers [`Event::Hello`] with the
//! runtime's version once it is ready, or [`Event::Fatal`] when it cannot start.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod event_loop;
mod framing;
mod inflight;

use std::io::Write;
use std::os::fd::OwnedFd;

use execbox_jail::{HostConfig, Jailer};
use execbox_proto::spawner::{Event, HostSettings, SpawnerConfig};
use execbox_runtime::PythonRuntime;

pub use event_loop::{Spawner, SpawnerError};

/// The jail's host configuration for `host`.
pub fn host_config(host: &HostSettings) -> HostConfig {
    HostConfig {
        state_dir: host.state_dir.clone(),
        cgroup_root: host.cgroup_root.clone(),
        allow_degraded: host.allow_degraded,
        ..HostConfig::default()
    }
}

/// Start as `cfg` says and serve orders from `input` until EOF, writing events to `output`.
/// If the runtime or the host cannot be used, say so in an [`Event::Fatal`] and return the
/// error.
pub fn run(cfg: SpawnerConfig, input: OwnedFd, output: OwnedFd) -> Result<(), SpawnerError> {
    let started = PythonRuntime::discover(&cfg.host.python_env)
        .map_err(SpawnerError::Runtime)
        .and_then(|rt| Ok((rt, Jailer::new(&host_config(&cfg.host))?)));
    match started {
        Ok((runtime, jailer)) => Spawner::new(jailer, runtime, cfg, output).serve(input),
        Err(e) => {
            let fatal = Event::Fatal {
                message: e.to_string(),
            };
            // The error is returned (and printed) whether or not the server hears of it.
            if let Err(w) = std::fs::File::from(output).write_all(&fatal.to_line()) {
                eprintln!("execbox-spawner: cannot report that it cannot start: {w}");
            }
            Err(e)
        }
    }
}

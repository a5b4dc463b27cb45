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
//! runtimes that passed their smoke tests once it is ready, or [`Event::Fatal`] when it cannot start.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod event_loop;
mod framing;
mod inflight;
mod live;
mod warm;

use std::io::Write;
use std::os::fd::OwnedFd;

use execbox_jail::cgroup::{favor_dynmods, FavorDynmods};
use execbox_jail::check::LayerName;
use execbox_jail::{HostConfig, Jailer};
use execbox_proto::spawner::{Event, HostSettings, SpawnerConfig};
use execbox_runtime::{discover, Package};

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

/// Whether package `p` answers to one of `names` (language or alias, ASCII case-insensitive).
fn offers_any(p: &Package, names: &[String]) -> bool {
    let m = &p.manifest;
    names.iter().any(|n| {
        m.language.eq_ignore_ascii_case(n) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(n))
    })
}

/// Start as `cfg` says and serve orders from `input` until EOF, writing events to `output`.
/// If the runtime or the host cannot be used, say so in an [`Event::Fatal`] and return the
/// error.
pub fn run(cfg: SpawnerConfig, input: OwnedFd, output: OwnedFd) -> Result<(), SpawnerError> {
    let mut found = discover(&cfg.host.runtimes_dir, &cfg.host.python_env);
    if !cfg.languages.is_empty() {
        found.packages.retain(|p| offers_any(p, &cfg.languages));
    }
    // With a language filter, the other languages' absent toolchains are nobody's concern.
    let absent = if cfg.languages.is_empty() {
        &found.absent[..]
    } else {
        &[]
    };
    for (dir, missing) in absent {
        event_loop::log_line(&format!(
            "runtime {} skipped: its toolchain ({missing}) is not installed",
            dir.display()
        ));
    }
    for e in &found.errors {
        event_loop::log_line(&format!("runtime package refused: {e}"));
    }
    let started = if found.packages.is_empty() && !cfg.languages.is_empty() {
        Err(SpawnerError::NoLanguage {
            languages: cfg.languages.join(", "),
            dir: cfg.host.runtimes_dir.display().to_string(),
        })
    } else if found.packages.is_empty() {
        Err(SpawnerError::NoPackages(
            cfg.host.runtimes_dir.display().to_string(),
        ))
    } else {
        Jailer::new(&host_config(&cfg.host))
            .map(|j| (found.packages, j))
            .map_err(SpawnerError::from)
    };
    match started {
        Ok((packages, jailer)) => {
            if cfg.warm.enabled && cfg.warm.favordynmods && jailer.report().has(LayerName::Cgroups)
            {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                match favor_dynmods(&cfg.host.state_dir, &mountinfo) {
                    FavorDynmods::AlreadyOn => {}
                    FavorDynmods::Mounted(at) => event_loop::log_line(&format!(
                        "cgroup favordynmods on (a named v1 hierarchy at {at}, in the spawner's own mount namespace): cgroup joins skip the RCU wait"
                    )),
                    FavorDynmods::Unavailable(why) => event_loop::log_line(&format!(
                        "cgroup favordynmods unavailable ({why}): each warm child's cgroup join waits for an RCU grace period"
                    )),
                }
            }
            Spawner::new(jailer, packages, cfg, output).serve(input)
        }
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

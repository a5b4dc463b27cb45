//! The spawner: the one process that creates jails for the server.
//!
//! The server is multi-threaded (tokio) and never forks; it starts `execbox spawner` once and
//! sends it run orders over a pipe. The spawner is single-threaded, so it may `clone3` jails.
//! It keeps a few jails prepared ahead of demand (cgroup, uid, namespaces, mounts and
//! `pivot_root` done), so a run pays only the launch, and supervises every running jail from
//! one `poll` loop.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod event_loop;
mod framing;
mod inflight;
pub mod protocol;

pub use event_loop::{Spawner, SpawnerConfig, SpawnerError};

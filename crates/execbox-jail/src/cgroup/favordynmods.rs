//! `favordynmods`: moving a process between cgroups normally waits for an RCU grace period
//! (the kernel's `cgroup_threadgroup_rwsem` is switched to its slow path for the write), 5 to
//! 13 ms on the hosts measured, while holding the cgroup mutex, so every `mkdir` and `rmdir` of
//! a cgroup waits behind it. Warm children join their cgroup by writing `cgroup.procs`, many
//! per second; with `favordynmods` (Linux 6.0) that lock stays on its slow path for good and a
//! join costs microseconds, at the price of slightly dearer forks and exits host-wide.
//!
//! The option belongs to a hierarchy but the lock is global, so mounting one empty named v1
//! hierarchy with it is enough, on a v1 host and on a v2 host that still allows named v1
//! hierarchies; nothing is mounted when some cgroup mount already has it.
//!
//! The mount lives in a mount namespace of the calling process's own (its mounts slaved to
//! the host's: it still sees the host's later mounts, the host never sees this one), so it is
//! gone when the process exits and nothing on the host trips on it: container runtimes copy
//! every cgroup mount they find into each container, and refuse to start one when a mount
//! with `favordynmods` cannot be copied (measured: Docker's runc, "operation not permitted").
//! While it exists, every process's `/proc/<pid>/cgroup` shows one more line,
//! `N:name=execbox-favordynmods:/`.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::parse_mountinfo;

/// Name of the hierarchy execbox mounts.
const NAME: &str = "execbox-favordynmods";

/// What [`favor_dynmods`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FavorDynmods {
    /// A cgroup mount already has the option.
    AlreadyOn,
    /// execbox mounted its hierarchy at this path, in the calling process's own mount
    /// namespace.
    Mounted(String),
    /// The kernel or the environment refused (older than 6.0, no named v1 hierarchies, no
    /// privilege to mount): joins pay the RCU wait.
    Unavailable(String),
}

/// Make cgroup migrations cheap if the host allows it (see the module documentation).
pub fn favor_dynmods(state_dir: &Path, mountinfo: &str) -> FavorDynmods {
    let on = parse_mountinfo(mountinfo).iter().any(|m| {
        (m.fstype == "cgroup" || m.fstype == "cgroup2")
            && m.super_options.split(',').any(|o| o == "favordynmods")
    });
    if on {
        return FavorDynmods::AlreadyOn;
    }
    // A mount namespace of our own, receiving the host's mounts but sending none back.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        return FavorDynmods::Unavailable(format!("unshare(CLONE_NEWNS): {e}"));
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    ) {
        return FavorDynmods::Unavailable(format!("make / a slave: {e}"));
    }
    let dir = state_dir.join("favordynmods");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return FavorDynmods::Unavailable(format!("mkdir {}: {e}", dir.display()));
    }
    let opts = format!("none,name={NAME},favordynmods");
    match mount(
        Some("cgroup"),
        &dir,
        Some("cgroup"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    ) {
        Ok(()) => FavorDynmods::Mounted(dir.display().to_string()),
        Err(e) => FavorDynmods::Unavailable(format!("mount {opts}: {e}")),
    }
}

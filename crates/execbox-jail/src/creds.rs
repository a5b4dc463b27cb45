//! Credentials: identity switch, capabilities, no_new_privs.

use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

/// Drop supplementary groups and become `id` (uid and gid), real, effective and saved.
///
/// In a user namespace where only `id` is mapped, the kernel keeps the capabilities the process
/// holds *in that namespace* (it never was the namespace's root), so mounting can go on.
pub fn switch_identity(id: u32) -> Result<(), String> {
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let g = Gid::from_raw(id);
    setresgid(g, g, g).map_err(|e| format!("setresgid {id}: {e}"))?;
    let u = Uid::from_raw(id);
    setresuid(u, u, u).map_err(|e| format!("setresuid {id}: {e}"))
}

/// Empty the bounding and ambient sets and the inheritable set. Needs CAP_SETPCAP, so it runs
/// before the effective set is cleared.
pub fn drop_inheritable_caps() -> Result<(), String> {
    caps::clear(None, CapSet::Bounding).map_err(|e| format!("clear bounding caps: {e}"))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient caps: {e}"))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| format!("clear inheritable caps: {e}"))
}

/// Empty the effective and permitted sets.
pub fn drop_all_caps() -> Result<(), String> {
    caps::clear(None, CapSet::Effective).map_err(|e| format!("clear effective caps: {e}"))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| format!("clear permitted caps: {e}"))?;
    let left = caps::read(None, CapSet::Permitted).map_err(|e| format!("read caps: {e}"))?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("capabilities survive the drop: {left:?}"))
    }
}

/// SIGKILL this process when its parent (the spawner) dies. The kernel clears this setting on
/// every change of uid or gid, so it is set again after each identity switch.
pub fn die_with_parent() -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("pdeathsig: {e}"))
}

/// `PR_SET_NO_NEW_PRIVS`: execve can never grant privileges again (setuid bits, file caps).
pub fn no_new_privs() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))
}

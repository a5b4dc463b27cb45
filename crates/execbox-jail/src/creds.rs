//! Credentials: identity switch, capabilities, no_new_privs.

use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::child_error::{ChildError, Step, StepContext};

/// Drop supplementary groups and become `id` (uid and gid), real, effective and saved.
///
/// In a user namespace where only `id` is mapped, the kernel keeps the capabilities the process
/// holds *in that namespace* (it never was the namespace's root), so mounting can go on.
pub fn switch_identity(id: u32) -> Result<(), ChildError> {
    const S: Step = Step::SwitchIdentity;
    setgroups(&[]).step(S, || "setgroups".into())?;
    let g = Gid::from_raw(id);
    setresgid(g, g, g).step(S, || format!("setresgid {id}"))?;
    let u = Uid::from_raw(id);
    setresuid(u, u, u).step(S, || format!("setresuid {id}"))
}

/// Empty the bounding and ambient sets and the inheritable set. Needs CAP_SETPCAP, so it runs
/// before the effective set is cleared.
pub fn drop_inheritable_caps() -> Result<(), ChildError> {
    const S: Step = Step::DropCapabilities;
    caps::clear(None, CapSet::Bounding).step(S, || "clear bounding set".into())?;
    caps::clear(None, CapSet::Ambient).step(S, || "clear ambient set".into())?;
    caps::clear(None, CapSet::Inheritable).step(S, || "clear inheritable set".into())
}

/// Empty the effective and permitted sets.
pub fn drop_all_caps() -> Result<(), ChildError> {
    const S: Step = Step::DropCapabilities;
    caps::clear(None, CapSet::Effective).step(S, || "clear effective set".into())?;
    caps::clear(None, CapSet::Permitted).step(S, || "clear permitted set".into())?;
    let left = caps::read(None, CapSet::Permitted).step(S, || "read permitted set".into())?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(ChildError::new(
            S,
            format!("capabilities survive the drop: {left:?}"),
        ))
    }
}

/// SIGKILL this process when its parent (the spawner) dies. The kernel clears this setting on
/// every change of uid or gid, so it is set again after each identity switch.
pub fn die_with_parent() -> Result<(), ChildError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .step(Step::ParentDeathSignal, || "PR_SET_PDEATHSIG".into())
}

/// `PR_SET_NO_NEW_PRIVS`: execve can never grant privileges again (setuid bits, file caps).
pub fn no_new_privs() -> Result<(), ChildError> {
    nix::sys::prctl::set_no_new_privs().step(Step::NoNewPrivs, || "PR_SET_NO_NEW_PRIVS".into())
}

/// A template's credentials before it execs its interpreter (it is the root of its own user
/// namespace): the bounding set shrinks to CAP_SETUID and CAP_SETGID, which it needs to write
/// its children's uid/gid maps; ambient and inheritable are emptied. After `execve` its
/// permitted and effective sets are those two, and only in its own user namespace.
pub fn keep_only_id_caps() -> Result<(), ChildError> {
    const S: Step = Step::DropCapabilities;
    let keep = [caps::Capability::CAP_SETUID, caps::Capability::CAP_SETGID];
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).step(S, || format!("drop {c} from bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).step(S, || "clear ambient set".into())?;
    caps::clear(None, CapSet::Inheritable).step(S, || "clear inheritable set".into())
}

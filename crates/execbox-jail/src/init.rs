//! The child side: runs in the freshly cloned process (new namespaces), in a fixed order, and
//! ends in `execve` or `_exit`. The order, and why each step sits where it does, is mirrored in
//! `docs/jail-sequence.md`.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::path::Path;
use std::time::Instant;

use nix::sched::{unshare, CloneFlags};

use crate::child_error::{ChildError, Step, StepContext};
use crate::config::{JailSpec, Limits, Payload, SANDBOX_ID};
use crate::rootfs::RootKind;
use crate::seccomp::SeccompPolicy;
use crate::{creds, landlock_rules, launch_msg, rlimit, rootfs, seccomp, sys};

/// Descriptor numbers inside the jail.
pub(crate) mod fdnum {
    /// Child → parent: `R` when ready, `E<ChildError as JSON>` on failure, EOF on successful
    /// exec.
    pub const STATUS: i32 = 4;
    /// Parent → child: `G` once uid maps and cgroup are in place, then the launch message.
    pub const SYNC: i32 = 5;
}

/// Length of the ready message: `R`, then the cgroup join and mount times in µs (u64 LE).
pub(crate) const READY_LEN: usize = 17;

/// Everything the child needs, copied into it by `clone3`.
pub(crate) struct ChildPlan<'a> {
    /// Parent-side numbers of: stdin read end, stdout write end, stderr write end, result write
    /// end, status write end, sync read end. They land on 0..=5 in that order.
    pub fds: [RawFd; 6],
    /// Whether a user namespace was created (false only in degraded mode).
    pub userns: bool,
    /// The run's host uid; the identity in degraded mode without a user namespace.
    pub host_uid: u32,
    pub jail_root: &'a Path,
    pub spec: &'a JailSpec,
    pub have_cgroup: bool,
    /// cgroup.procs files to write `0` into (cgroup v1), before anything else runs.
    pub cgroup_procs: Vec<std::path::PathBuf>,
    pub landlock: bool,
    pub seccomp: &'a SeccompPolicy,
    /// A run's jail, or a template's (warm path).
    pub kind: Kind,
}

/// What the cloned child becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A run: every layer, then `execve` of the payload.
    Run,
    /// A template: the root of its user namespace (which maps the run uids) with only
    /// CAP_SETUID and CAP_SETGID left in its bounding set (to write its children's uid/gid
    /// maps), no_new_privs, no Landlock and no seccomp (its children need mount, pivot_root
    /// and namespaces to build their own jail, and a filter cannot be lifted once set); it
    /// runs only execbox's trusted template code, never user code (docs/security.md,
    /// "Templates").
    Template,
}

/// Run the jail sequence; never returns.
pub(crate) fn run(plan: &ChildPlan<'_>) -> ! {
    if place_fds(&plan.fds).is_err() {
        sys::exit_now(126);
    }
    let Err(e) = jail_and_exec(plan);
    report(&e);
    sys::exit_now(127)
}

/// Tell the parent which step failed. If even that write fails the parent still learns of the
/// failure, as end of file on the status pipe before `R` or an exit before `execve`; there is
/// nobody else to tell, so the write's own result is deliberately not acted on.
pub(crate) fn report(e: &ChildError) {
    // fd 4 is ours (placed by place_fds); ManuallyDrop keeps it open for later reports.
    let mut f = ManuallyDrop::new(status_file());
    let mut msg = vec![b'E'];
    msg.extend(e.encode());
    if f.write_all(&msg).is_err() {
        sys::exit_now(125);
    }
}

fn status_file() -> File {
    // SAFETY: fd 4 was placed by `place_fds` and stays owned by this process; callers wrap the
    // File in ManuallyDrop or drop it exactly once, at the point where fd 4 is meant to close.
    unsafe { File::from_raw_fd(fdnum::STATUS) }
}

/// Move the six descriptors onto 0..=5 and close everything else. Sources may themselves be
/// small numbers, so everything is first copied above 64.
fn place_fds(fds: &[RawFd; 6]) -> Result<(), nix::errno::Errno> {
    let mut high = [0; 6];
    for (h, &fd) in high.iter_mut().zip(fds) {
        *h = sys::dup_above(fd, 64)?;
    }
    for (i, &h) in high.iter().enumerate() {
        // SAFETY: the child owns every descriptor it has (it is a fresh copy of the jailer's
        // single thread and ends in execve or _exit); 0..=5 are reserved for these six.
        unsafe { sys::dup_to(h, i as RawFd)? };
    }
    // SAFETY: as above; nothing in the child refers to a descriptor above 5 after this point
    // (the `high` copies are not used again).
    unsafe { sys::close_from(6)? };
    sys::set_cloexec(fdnum::STATUS, true)?;
    sys::set_cloexec(fdnum::SYNC, true)
}

fn jail_and_exec(plan: &ChildPlan<'_>) -> Result<Infallible, ChildError> {
    // 1. Descriptors are in place (run). The environment is not inherited: execve below gets
    //    only the payload's env. If the spawner dies, so does the jail (set again after each
    //    identity switch, which clears it). A session of its own: no controlling terminal,
    //    and its process group is not execbox's. Under memory pressure the kernel kills the
    //    sandbox before anything of the host.
    creds::die_with_parent()?;
    sys::reset_signals().step(Step::ResetSignals, String::new)?;
    nix::unistd::setsid().step(Step::Setsid, String::new)?;
    std::fs::write("/proc/self/oom_score_adj", "1000")
        .step(Step::OomScoreAdj, || "/proc/self/oom_score_adj".into())?;

    // 2. Wait until the parent has written our uid/gid maps (EOF means it died), then enter
    //    the run's cgroup (v1; v2 cloned us straight into it): nothing below runs unaccounted.
    // SAFETY: fd 5 was placed by `place_fds`; wrapped in ManuallyDrop, closed explicitly later.
    let mut sync = ManuallyDrop::new(unsafe { File::from_raw_fd(fdnum::SYNC) });
    let mut go = [0u8; 1];
    sync.read_exact(&mut go)
        .step(Step::WaitForParent, || "sync pipe".into())?;
    if go != *b"G" {
        return Err(ChildError::new(Step::WaitForParent, "unexpected sync byte"));
    }
    let t_join = Instant::now();
    for f in &plan.cgroup_procs {
        // Still host uid 0 here (the identity switch is next), which owns cgroupfs files.
        std::fs::write(f, "0").step(Step::JoinCgroup, || f.display().to_string())?;
    }
    let join_us = t_join.elapsed().as_micros() as u64;
    let t_mounts = Instant::now();

    // 3. Become the run's uid now (user namespace case), before creating any file or mount, so
    //    everything the jail creates belongs to it. Capabilities in the run's own user namespace
    //    are kept for the mounts; they are dropped at step 9.
    if plan.userns {
        creds::switch_identity(match plan.kind {
            Kind::Run => SANDBOX_ID,
            Kind::Template => 0,
        })?;
        creds::die_with_parent()?;
    }

    // 4. A cgroup namespace rooted at the run's cgroup (joined at step 2), so /proc/self/cgroup
    //    shows nothing of the host's hierarchy.
    unshare(CloneFlags::CLONE_NEWCGROUP).step(Step::CgroupNamespace, || "unshare".into())?;

    // 5-6. Mounts and pivot_root (rootfs.rs): needs CAP_SYS_ADMIN in the mount namespace's
    //      owner, which we still hold.
    let owner = match (plan.userns, plan.kind) {
        (true, Kind::Run) => SANDBOX_ID,
        (true, Kind::Template) => 0,
        (false, _) => plan.host_uid,
    };
    let root_kind = match plan.kind {
        Kind::Run => RootKind::Run,
        Kind::Template => RootKind::Template,
    };
    rootfs::build(
        plan.jail_root,
        &plan.spec.binds,
        &plan.spec.limits,
        owner,
        root_kind,
    )?;

    // 7. Ready: a prepared jail may wait here, ahead of demand, for its payload.
    {
        let mounts_us = t_mounts.elapsed().as_micros() as u64;
        let mut ready = [0u8; READY_LEN];
        ready[0] = b'R';
        ready[1..9].copy_from_slice(&join_us.to_le_bytes());
        ready[9..17].copy_from_slice(&mounts_us.to_le_bytes());
        let mut st = ManuallyDrop::new(status_file());
        st.write_all(&ready)
            .step(Step::SignalReady, || "status pipe".into())?;
    }
    let payload = launch_msg::decode(&mut *sync, plan.spec.limits.file_size_bytes)?;
    drop(ManuallyDrop::into_inner(sync));

    // 8. Files into /work, refusing any path that would resolve outside it.
    write_work_files(&payload, plan.userns, owner)?;

    // 9-11. rlimits, credentials, no_new_privs, Landlock, seccomp (a template: see Kind).
    match plan.kind {
        Kind::Run => lock_down(&LockDown {
            limits: &plan.spec.limits,
            have_cgroup: plan.have_cgroup,
            userns: plan.userns,
            host_uid: plan.host_uid,
            landlock: plan.landlock,
            seccomp: plan.seccomp,
            warm_child: false,
        })?,
        Kind::Template => {
            creds::keep_only_id_caps()?;
            creds::no_new_privs()?;
            seccomp::apply_template_base(plan.seccomp)
                .step(Step::Seccomp, || "install the template's filter".into())?;
        }
    }

    // 12. execve. On success fd 4 (CLOEXEC) closes and the parent reads EOF.
    let cs = |v: &[String]| -> Result<Vec<CString>, ChildError> {
        v.iter()
            .map(|s| {
                CString::new(s.as_str()).map_err(|_| ChildError::new(Step::Exec, "NUL in argv/env"))
            })
            .collect()
    };
    let argv = cs(&payload.argv)?;
    let env = cs(&payload.env)?;
    let prog = argv
        .first()
        .ok_or_else(|| ChildError::new(Step::Exec, "empty argv"))?;
    // execve returns only on failure.
    let Err(e) = nix::unistd::execve(prog, &argv, &env);
    Err(e).step(Step::Exec, || payload.argv[0].clone())
}

/// Write the payload's files into `/work` (the process's new root), refusing any path that
/// would resolve outside it, then make `/work` the working directory.
pub(crate) fn write_work_files(
    payload: &Payload,
    userns: bool,
    owner: u32,
) -> Result<(), ChildError> {
    const W: Step = Step::WriteFiles;
    let work = File::open("/work").step(W, || "open /work".into())?;
    for f in &payload.files {
        let fd = sys::create_beneath(work.as_fd(), &f.name, 0o644)
            .step(W, || format!("create /work/{}", f.name))?;
        if !userns {
            // Still root here in the no-user-namespace case: hand the file to the run's uid.
            nix::unistd::fchown(&fd, Some(owner.into()), Some(owner.into()))
                .step(W, || format!("chown /work/{}", f.name))?;
        }
        File::from(fd)
            .write_all(&f.content)
            .step(W, || format!("write /work/{}", f.name))?;
    }
    drop(work);
    nix::unistd::chdir("/work").step(W, || "chdir /work".into())
}

/// What [`lock_down`] applies.
pub(crate) struct LockDown<'a> {
    pub limits: &'a Limits,
    pub have_cgroup: bool,
    pub userns: bool,
    pub host_uid: u32,
    pub landlock: bool,
    pub seccomp: &'a SeccompPolicy,
    /// A template's child: its template's filter is in place; it adds the rest.
    pub warm_child: bool,
}

/// The last steps before user code, shared by cold runs (before `execve`) and warm children
/// (before the template's interpreter runs the user's code).
pub(crate) fn lock_down(l: &LockDown<'_>) -> Result<(), ChildError> {
    // 9. rlimits while we still may raise nothing anyway; then credentials: empty bounding,
    //    ambient and inheritable sets (needs CAP_SETPCAP), switch identity in the degraded
    //    no-user-namespace case, then clear effective and permitted.
    rlimit::apply(l.limits, l.have_cgroup)?;
    creds::drop_inheritable_caps()?;
    if !l.userns {
        creds::switch_identity(l.host_uid)?;
        creds::die_with_parent()?;
    }
    creds::drop_all_caps()?;

    // 10. no_new_privs: required by Landlock and seccomp for an unprivileged process, and makes
    //     setuid binaries and file capabilities inert.
    creds::no_new_privs()?;

    // 11. Landlock, then seccomp last: the filter must allow everything before it (landlock
    //     syscalls are not on the allowlist).
    if l.landlock {
        landlock_rules::apply()?;
    }
    let installed = if l.warm_child {
        seccomp::apply_warm_child(l.seccomp)
    } else {
        seccomp::apply(l.seccomp)
    };
    installed.step(Step::Seccomp, || "install filters".into())
}

//! Inside a template (warm path): serve one request of the spawner by cloning a child that
//! builds a run's jail around itself and then returns to the template's interpreter, which
//! runs the user's code without `execve` (its modules are already imported).
//!
//! The template's program (`runtimes/python/template.py`) calls [`execbox_warm_serve`] through
//! `ctypes` whenever its control socket is readable. This library is loaded into the template
//! only; the spawner's side is [`crate::template`].
//!
//! The child runs the steps of a cold jail's init (`init.rs`, `docs/jail-sequence.md`) in the
//! same order, with three differences: it is cloned by the template (not the spawner), which
//! writes its uid/gid maps from the template's own user namespace; it joins its cgroup through
//! descriptors the spawner opened (the kernel checks the opener); and where a cold jail would
//! `execve`, it closes its status channel and returns.

use std::ffi::c_int;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Instant;

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::child_error::{ChildError, Step, StepContext};
use crate::config::{JailSpec, SANDBOX_ID};
use crate::init::{self, LockDown, READY_LEN};
use crate::rootfs;
use crate::seccomp::{self, SeccompPolicy};
use crate::{creds, launch_msg, sys};

/// A fingerprint of the code both sides of the warm path must agree on (this file, the jail
/// sequence it shares with cold jails, the messages): the spawner's copy is compiled into
/// it, the template's into the library it loads; a template whose library differs (a stale
/// build) is refused. FNV-1a over the sources, at compile time.
pub const FINGERPRINT: u64 = {
    const SOURCES: [&[u8]; 6] = [
        include_bytes!("warm.rs"),
        include_bytes!("init.rs"),
        include_bytes!("rootfs.rs"),
        include_bytes!("launch_msg.rs"),
        include_bytes!("child_error.rs"),
        include_bytes!("template.rs"),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < SOURCES.len() {
        let src = SOURCES[i];
        let mut j = 0;
        while j < src.len() {
            h ^= src[j] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            j += 1;
        }
        i += 1;
    }
    h
};

/// The library's [`FINGERPRINT`], for the template to report with `ready`.
#[no_mangle]
pub extern "C" fn execbox_warm_fingerprint() -> u64 {
    FINGERPRINT
}

/// What a warm child writes on its status socket once it is locked down, before it closes it
/// and runs the payload (a cold jail's status pipe just closes on `execve`).
pub const LOCKED_DOWN: &[u8] = b"X";

/// `argv[0]` of a warm payload: the rest of argv goes to the template's program.
pub const WARM_ARGV0: &str = "/execbox-warm";

/// One request: the child's identity, jail shape and layers. Its descriptors travel with it
/// (SCM_RIGHTS): stdin (read end), stdout, stderr, result (write ends), status (socket),
/// sync (read end), exit report (write end, kept by the template), then `cgroup_fds`
/// `cgroup.procs` files opened for writing.
#[derive(Debug, Serialize, Deserialize)]
pub struct WarmRequest {
    /// The child's uid (and gid) in the template's user namespace.
    pub inner_uid: u32,
    /// Binds and limits of the child's jail.
    pub spec: JailSpec,
    /// Whether the child has a cgroup (rlimits depend on it).
    pub have_cgroup: bool,
    /// Whether to apply Landlock.
    pub landlock: bool,
    /// How many `cgroup.procs` descriptors follow the seven fixed ones.
    pub cgroup_fds: usize,
}

const FIXED_FDS: usize = 7;
const MAX_CGROUP_FDS: usize = 8;
const MAX_REQUEST: usize = 256 * 1024;

/// What serving one request came to, on each side of the clone.
#[derive(Debug)]
pub enum Served {
    /// In the template: the child's pid (in the template's pid namespace) and the exit report
    /// descriptor the template writes the child's wait status to once it has reaped it.
    Parent {
        /// The child's pid.
        pid: i32,
        /// Where its wait status goes (i32 LE), then close.
        exit_fd: RawFd,
    },
    /// In the child, jailed: the payload's argv after [`WARM_ARGV0`].
    Child {
        /// Arguments for the template's program.
        argv: Vec<String>,
    },
    /// The spawner closed the control socket: the template should exit.
    Eof,
}

/// The run's seccomp filter, compiled once in the template (children inherit it compiled).
fn policy() -> Result<&'static SeccompPolicy, String> {
    static POLICY: OnceLock<Result<SeccompPolicy, String>> = OnceLock::new();
    POLICY
        .get_or_init(|| seccomp::default_policy().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Receive one request on `ctl` and serve it (see [`Served`]). An error before the clone is
/// also reported to the spawner on the request's status socket when there is one.
pub fn serve_one(ctl: RawFd) -> Result<Served, String> {
    thread_local! {
        /// The request buffer, kept between requests: a new 256 KiB one per request cost the
        /// template a zeroing and fresh page faults every time.
        static REQUEST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut buf = REQUEST.take();
    buf.resize(MAX_REQUEST, 0);
    let mut cmsg = nix::cmsg_space!([RawFd; FIXED_FDS + MAX_CGROUP_FDS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(ctl, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| format!("recvmsg: {e}"))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process;
                // nothing else owns them.
                fds.extend(
                    v.into_iter()
                        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 && fds.is_empty() {
        return Ok(Served::Eof);
    }
    let parsed = serde_json::from_slice::<WarmRequest>(&buf[..n]);
    REQUEST.set(buf);
    let req = match parsed {
        Ok(r) => r,
        Err(e) => return Err(refuse(&fds, format!("request: {e}"))),
    };
    if req.cgroup_fds > MAX_CGROUP_FDS || fds.len() != FIXED_FDS + req.cgroup_fds {
        return Err(refuse(&fds, format!("{} descriptors", fds.len())));
    }
    let policy = policy().map_err(|e| refuse(&fds, e))?;
    match sys::single_threaded() {
        Ok(true) => {}
        _ => return Err(refuse(&fds, "the template is not single-threaded".into())),
    }
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| refuse(&fds, format!("pipe: {e}")))?;
    let flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET) as u64;
    // SAFETY: checked just above that this process has one thread (the template's program
    // starts none); the child either returns to the interpreter jailed or calls _exit.
    let cloned = unsafe { sys::clone3(flags, None) };
    let (pid, pidfd) = match cloned {
        Ok(sys::Forked::Child) => {
            // Every descriptor is re-placed by number below; nothing may close them on drop.
            let raw: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
            let go = go_r.into_raw_fd();
            std::mem::forget(go_w);
            return match child(&raw, go, &req, policy) {
                Ok(argv) => Ok(Served::Child { argv }),
                Err(e) => {
                    init::report(&e);
                    sys::exit_now(127)
                }
            };
        }
        Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
        Err(e) => return Err(refuse(&fds, format!("clone3: {e}"))),
    };
    drop(go_r);
    // The child waits for `go` until its maps exist (its setresuid needs them). A failure
    // here kills it; the template still reaps it and reports its status like any other.
    let map = format!("{SANDBOX_ID} {} 1\n", req.inner_uid);
    let mapped = ["uid_map", "gid_map"].iter().try_for_each(|f| {
        std::fs::write(format!("/proc/{pid}/{f}"), &map).map_err(|e| format!("{f}: {e}"))
    });
    let mut fds = fds;
    let exit = fds.swap_remove(6); // the exit report descriptor; swap_remove keeps 0..=5
    let failed = match mapped {
        Ok(()) => File::from(go_w)
            .write_all(b"G")
            .err()
            .map(|e| format!("go: {e}")),
        Err(e) => Some(e),
    };
    if let Some(why) = failed {
        // Without its go the child cannot finish setting up: it reads end of file on the go
        // pipe (closed here) and exits. The kill only makes that immediate; if it fails, that
        // exit still comes, and the template reaps and reports it like any other.
        if let Err(e) = sys::pidfd_kill(std::os::fd::AsFd::as_fd(&pidfd), libc::SIGKILL) {
            eprintln!("execbox-template: kill of a child that failed setup: {e}");
        }
        drop(refuse(&fds, why));
    }
    Ok(Served::Parent {
        pid: pid.as_raw(),
        exit_fd: exit.into_raw_fd(),
    })
}

/// Report a request that cannot be served on its status socket (descriptor 4 of the request,
/// when it came), and return the message for the template's log.
fn refuse(fds: &[OwnedFd], msg: String) -> String {
    if let Some(status) = fds.get(4) {
        let e = ChildError::new(Step::TemplateRequest, msg.clone());
        let mut m = vec![b'E'];
        m.extend(e.encode());
        let mut f = ManuallyDrop::new(
            // SAFETY: a borrowed view of a descriptor `fds` owns, never closed here
            // (ManuallyDrop); `fds` outlives it.
            unsafe { File::from_raw_fd(status.as_raw_fd()) },
        );
        // Best effort: the spawner also sees end of file when the request is dropped.
        let _ = f.write_all(&m);
    }
    msg
}

/// Move `fds` onto 0.. in order and close everything else.
fn place(fds: &[RawFd]) -> Result<(), nix::errno::Errno> {
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        high.push(sys::dup_above(fd, 64)?);
    }
    for (i, &h) in high.iter().enumerate() {
        // SAFETY: the child owns every descriptor it has (a fresh copy of the template's one
        // thread; the Rust handles to them were forgotten) and 0..fds.len() are reserved here.
        unsafe { sys::dup_to(h, i as RawFd)? };
    }
    // SAFETY: as above; nothing refers to a descriptor at or above fds.len() after this (the
    // interpreter's own descriptors are the template's, none of which it uses in the child).
    unsafe { sys::close_from(fds.len() as RawFd)? };
    for i in 4..fds.len() {
        sys::set_cloexec(i as RawFd, true)?;
    }
    Ok(())
}

/// The child: jail itself and return the payload's argv for the template's program.
fn child(
    raw: &[RawFd],
    go: RawFd,
    req: &WarmRequest,
    policy: &SeccompPolicy,
) -> Result<Vec<String>, ChildError> {
    // 1. Descriptors: the run's six on 0..=5, go on 6, cgroup.procs on 7..; not the exit
    //    report, nor anything else of the template's.
    let mut order: Vec<RawFd> = raw[..6].to_vec();
    order.push(go);
    order.extend(&raw[FIXED_FDS..]);
    if place(&order).is_err() {
        sys::exit_now(126);
    }
    // The template's own signal dispositions are the interpreter's defaults, as a cold run's
    // are after exec; they are left as they are (resetting them under the interpreter would
    // break its SIGINT handling).
    creds::die_with_parent()?;
    nix::unistd::setsid().step(Step::Setsid, String::new)?;
    std::fs::write("/proc/self/oom_score_adj", "1000")
        .step(Step::OomScoreAdj, || "/proc/self/oom_score_adj".into())?;

    // 2. Wait for the template to write the maps, then join the run's cgroup.
    // SAFETY: fd 6 was placed above and is read and closed only here.
    let mut gof = unsafe { File::from_raw_fd(6) };
    let mut b = [0u8; 1];
    gof.read_exact(&mut b)
        .step(Step::WaitForParent, || "go pipe".into())?;
    drop(gof);
    let t_join = Instant::now();
    for i in 0..req.cgroup_fds {
        let fd = 7 + i as RawFd;
        // SAFETY: placed above; written once and closed here.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(b"0")
            .step(Step::JoinCgroup, || format!("cgroup.procs #{i}"))?;
    }
    let join_us = t_join.elapsed().as_micros() as u64;
    let t_mounts = Instant::now();

    // 3-6. Identity and cgroup namespace as a cold jail (init.rs); the root is the template's,
    //      with a run's /proc, /tmp and /work over it (rootfs::enter_template_root).
    creds::switch_identity(SANDBOX_ID)?;
    creds::die_with_parent()?;
    unshare(CloneFlags::CLONE_NEWCGROUP).step(Step::CgroupNamespace, || "unshare".into())?;
    rootfs::enter_template_root(&req.spec.limits, SANDBOX_ID)?;

    // 7. Ready, with a pidfd for ourselves (the spawner kills through it: we are not its
    //    child).
    let mounts_us = t_mounts.elapsed().as_micros() as u64;
    let mut ready = [0u8; READY_LEN];
    ready[0] = b'R';
    ready[1..9].copy_from_slice(&join_us.to_le_bytes());
    ready[9..17].copy_from_slice(&mounts_us.to_le_bytes());
    let me = sys::pidfd_open_self().step(Step::SignalReady, || "pidfd_open".into())?;
    sendmsg::<()>(
        init::fdnum::STATUS,
        &[IoSlice::new(&ready)],
        &[ControlMessage::ScmRights(&[me.as_raw_fd()])],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .step(Step::SignalReady, || "status socket".into())?;
    drop(me);

    // 8. The payload: files into /work.
    // SAFETY: fd 5 was placed above; read here and closed at step 12.
    let mut sync = ManuallyDrop::new(unsafe { File::from_raw_fd(init::fdnum::SYNC) });
    let payload = launch_msg::decode(&mut *sync, req.spec.limits.file_size_bytes)?;
    init::write_work_files(&payload, true, SANDBOX_ID)?;

    // 9-11. rlimits, credentials, no_new_privs, Landlock, seccomp.
    init::lock_down(&LockDown {
        limits: &req.spec.limits,
        have_cgroup: req.have_cgroup,
        userns: true,
        host_uid: 0,
        landlock: req.landlock,
        seccomp: policy,
        warm_child: true,
    })?;

    // 12. Where a cold jail execs: say so, close the status and sync channels and return to
    //     the interpreter.
    drop(ManuallyDrop::into_inner(sync));
    // SAFETY: fd 4 was placed above and nothing else refers to it; closed exactly once here.
    let mut status = File::from(unsafe { OwnedFd::from_raw_fd(init::fdnum::STATUS) });
    status
        .write_all(LOCKED_DOWN)
        .step(Step::Exec, || "status socket".into())?;
    drop(status);
    let mut argv = payload.argv;
    if argv.first().map(String::as_str) != Some(WARM_ARGV0) {
        return Err(ChildError::new(Step::Exec, "not a warm payload"));
    }
    argv.remove(0);
    Ok(argv)
}

/// The template program's entry point (through `ctypes.PyDLL`, so with the interpreter's lock
/// held, as `os.fork` holds it): serve one request read from `ctl_fd` and write a JSON object
/// describing the outcome into `out` (NUL-terminated, cut to `cap`). Returns the child's pid
/// in the template, 0 in the jailed child (`{"argv": [...]}`), -1 when the spawner has gone,
/// -2 on an error (`{"error": "..."}`, already reported to the spawner when possible).
///
/// # Safety
///
/// `out` must be valid for writes of `cap` bytes, and the calling process single-threaded.
#[no_mangle]
pub unsafe extern "C" fn execbox_warm_serve(ctl_fd: c_int, out: *mut u8, cap: usize) -> i64 {
    let (code, text) = match serve_one(ctl_fd) {
        Ok(Served::Parent { pid, exit_fd }) => {
            (i64::from(pid), serde_json::json!({ "exit_fd": exit_fd }))
        }
        Ok(Served::Child { argv }) => (0, serde_json::json!({ "argv": argv })),
        Ok(Served::Eof) => (-1, serde_json::json!({})),
        Err(e) => (-2, serde_json::json!({ "error": e })),
    };
    let bytes = text.to_string().into_bytes();
    if !out.is_null() && cap > 0 {
        let n = bytes.len().min(cap - 1);
        // SAFETY: the caller guarantees `out` is valid for `cap` bytes; we write n + 1 <= cap.
        let dst = unsafe { std::slice::from_raw_parts_mut(out, n + 1) };
        dst[..n].copy_from_slice(&bytes[..n]);
        dst[n] = 0;
    }
    code
}

//! The parent side: prepare a jail (cgroup, uid slot, clone into new namespaces, id maps, wait
//! until the child has built its root), launch a payload in it, supervise it to the end.
//!
//! Runs in a single-threaded process only (the spawner, or `execbox run`): `clone3` copies just
//! the calling thread.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};

use crate::cgroup::{self, CgroupBackend, NoCgroup, RunCgroup};
use crate::check::LayerName;
use crate::check::{self, HostReport, Verdict};
use crate::child_error::ChildError;
use crate::config::{HostConfig, JailSpec, Payload, SANDBOX_ID};
use crate::error::{JailError, Result};
use crate::init::{self, ChildPlan, Kind};
use crate::seccomp::{self, SeccompPolicy};
use crate::slots::{Slot, Slots};
use crate::supervise::Supervisor;
use crate::{launch_msg, sys};

/// Creates jails. One per (single-threaded) process.
#[derive(Debug)]
pub struct Jailer {
    cgroups: Box<dyn CgroupBackend>,
    slots: Slots,
    seccomp: SeccompPolicy,
    jail_root: PathBuf,
    userns: bool,
    landlock: bool,
    missing: Vec<String>,
    report: HostReport,
    counter: AtomicU64,
}

impl Jailer {
    /// Check the host and set up shared state. Refuses when a layer is missing, unless
    /// `host.allow_degraded` is set (then every outcome lists the missing layers).
    pub fn new(host: &HostConfig) -> Result<Self> {
        let report = check::probe(host, false);
        let missing = report.missing();
        match report.verdict {
            Verdict::Full => {}
            Verdict::Refuse => {
                return Err(JailError::LayerUnavailable(format!(
                    "this host cannot run execbox: {} (see `execbox check`)",
                    missing.join(", ")
                )))
            }
            Verdict::DegradedOnly if !host.allow_degraded => {
                return Err(JailError::LayerUnavailable(format!(
                    "missing {}; refusing to run untrusted code. Pass --allow-degraded \
                     (EXECBOX_ALLOW_DEGRADED=1) to run with weaker isolation; every result \
                     will then say degraded (see `execbox check`)",
                    missing.join(", ")
                )))
            }
            Verdict::DegradedOnly => {}
        }
        let cgroups: Box<dyn CgroupBackend> = if report.has(LayerName::Cgroups) {
            cgroup::detect(&host.cgroup_root, &host.mountinfo, &host.cgroup_parent)?
                .unwrap_or_else(|| Box::new(NoCgroup))
        } else {
            Box::new(NoCgroup)
        };
        // Run cgroups of jailers that were killed (a spawner killed by SIGKILL cannot clean up).
        cgroups.reap_stale();
        let slots = Slots::new(host.state_dir.join("slots"), host.uid_base, host.slots)?;
        let jail_root = host.state_dir.join("jailroot");
        fs::create_dir_all(&jail_root).map_err(|e| JailError::io("mkdir", &jail_root, e))?;
        Ok(Self {
            cgroups,
            slots,
            seccomp: seccomp::default_policy()?,
            jail_root,
            userns: report.has(LayerName::UserNamespaces),
            landlock: report.has(LayerName::Landlock),
            missing,
            report,
            counter: AtomicU64::new(0),
        })
    }

    /// The host check this jailer was built from.
    pub fn report(&self) -> &HostReport {
        &self.report
    }

    /// Layers missing on this host (non-empty only in degraded mode).
    pub fn missing_layers(&self) -> &[String] {
        &self.missing
    }

    /// Build a jail up to the point where only the payload is missing: cgroup, uid, namespaces,
    /// mounts and `pivot_root` are done; the child waits for [`Prepared::launch`]. Blocks until
    /// the child is ready; [`Jailer::start_prepare`] does not.
    pub fn prepare(&self, spec: &JailSpec) -> Result<Prepared> {
        self.start_prepare(spec)?.finish()
    }

    /// Start preparing a jail and return while the child builds its root. Poll
    /// [`Preparing::ready_fd`] for readability, then call [`Preparing::finish`].
    pub fn start_prepare(&self, spec: &JailSpec) -> Result<Preparing> {
        self.clone_jail(spec, Kind::Run, None)
    }

    /// Clone a jail's child: a run's (`Kind::Run`) or a template's, whose descriptors 1 and 2
    /// are `log` and 3 is `ctl`.
    pub(crate) fn clone_jail(
        &self,
        spec: &JailSpec,
        kind: Kind,
        template_fds: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
    ) -> Result<Preparing> {
        let mut t = Timer::new();
        let slot = self.slots.acquire()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let jail_id = format!("j{}-{n}", std::process::id());
        let p = |what| pipe2(OFlag::O_CLOEXEC).map_err(|e| JailError::sys(what, e));
        let (stdin_r, stdin_w) = p("pipe stdin")?;
        let (stdout_r, stdout_w) = p("pipe stdout")?;
        let (stderr_r, stderr_w) = p("pipe stderr")?;
        let (result_r, result_w) = p("pipe result")?;
        let (status_r, status_w) = p("pipe status")?;
        let (sync_r, sync_w) = p("pipe sync")?;

        // After the pipes: nothing that can fail sits between creating the cgroup and the
        // clone, whose error path removes it.
        let cgroup = self.cgroups.create(&jail_id, &spec.limits)?;
        t.lap("cgroup_create");

        let mut fds = [
            &stdin_r, &stdout_w, &stderr_w, &result_w, &status_w, &sync_r,
        ]
        .map(|f| f.as_raw_fd());
        if let Some((ctl, log)) = template_fds {
            fds[1] = log.as_raw_fd();
            fds[2] = log.as_raw_fd();
            fds[3] = ctl.as_raw_fd();
        }
        let plan = ChildPlan {
            fds,
            userns: self.userns,
            host_uid: slot.uid,
            jail_root: &self.jail_root,
            spec,
            have_cgroup: self.cgroups.name() != "none",
            cgroup_procs: cgroup.self_join_files(),
            landlock: self.landlock,
            seccomp: &self.seccomp,
            kind,
        };
        let mut flags = (libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET) as u64;
        if self.userns {
            flags |= libc::CLONE_NEWUSER as u64;
        }
        if !sys::single_threaded().map_err(|e| JailError::sys("read /proc/self/stat", e))? {
            return Err(JailError::NotSingleThreaded.with_cleanup(cgroup.remove()));
        }
        // SAFETY: checked just above that this process has one thread, and nothing in this
        // crate starts one; the child runs init::run, which ends in execve or _exit.
        let cloned = unsafe { sys::clone3(flags, cgroup.clone_into_fd()) };
        let (pid, pidfd) = match cloned {
            Ok(sys::Forked::Child) => init::run(&plan),
            Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
            Err(e) => {
                return Err(JailError::sys("clone3", e).with_cleanup(cgroup.remove()));
            }
        };
        t.lap("clone");
        drop((stdin_r, stdout_w, stderr_w, result_w, status_w, sync_r));

        let mut jail = Prepared {
            proc: JailProc {
                pid,
                pidfd: Some(pidfd),
                cgroup: Some(cgroup),
                slot: Some(slot),
                reaped: false,
                exit_report: None,
                template: None,
            },
            stdin_w,
            stdout_r,
            stderr_r,
            result_r,
            sync_w: File::from(sync_w),
            status_r: File::from(status_r),
            spec: spec.clone(),
            missing: self.missing.clone(),
            timings: Vec::new(),
            warm: false,
        };
        if self.userns {
            let id_map = match kind {
                Kind::Run => format!("{SANDBOX_ID} {} 1\n", jail.proc.host_uid()),
                Kind::Template => self.template_id_map(jail.proc.host_uid()),
            };
            for f in ["uid_map", "gid_map"] {
                let path = format!("/proc/{pid}/{f}");
                fs::write(&path, &id_map).map_err(|e| JailError::io("write", path, e))?;
            }
            t.lap("id_map");
        }
        jail.sync_w
            .write_all(b"G")
            .map_err(|e| JailError::io("write", "sync pipe", e))?;
        Ok(Preparing { jail, t })
    }

    /// A template's uid/gid map: itself as root (host uid `own`), and every other run slot
    /// at its own host uid, so it can map one of them into each child's user namespace (and a
    /// child's `/proc/self/uid_map` shows its host uid, as a cold run's does). At most three
    /// lines.
    fn template_id_map(&self, own: u32) -> String {
        let (base, count) = (self.slots.base(), self.slots.count());
        let s = own - base;
        let mut m = format!("0 {own} 1\n");
        if s > 0 {
            m.push_str(&format!("{base} {base} {s}\n"));
        }
        if s + 1 < count {
            let next = own + 1;
            m.push_str(&format!("{next} {next} {}\n", count - s - 1));
        }
        m
    }

    /// Take a uid slot (warm children take theirs here; see [`crate::template`]).
    pub(crate) fn acquire_slot(&self) -> Result<Slot> {
        self.slots.acquire()
    }

    /// Create a run cgroup named uniquely for this process.
    pub(crate) fn create_cgroup(&self, limits: &crate::Limits) -> Result<Box<dyn RunCgroup>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.cgroups
            .create(&format!("j{}-{n}", std::process::id()), limits)
    }

    /// Whether runs get a cgroup, Landlock and a user namespace here; the compiled filter.
    pub(crate) fn layers(&self) -> (bool, bool, bool, &SeccompPolicy) {
        (
            self.cgroups.name() != "none",
            self.landlock,
            self.userns,
            &self.seccomp,
        )
    }
}

/// A jail whose child is still building its root.
#[derive(Debug)]
pub struct Preparing {
    jail: Prepared,
    t: Timer,
}

impl Preparing {
    pub(crate) fn new(jail: Prepared, t: Timer) -> Self {
        Self { jail, t }
    }

    /// Whether this is a template's child (see [`Prepared::is_warm`]).
    pub fn is_warm(&self) -> bool {
        self.jail.warm
    }

    /// Readable once the child is ready (or has failed).
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.jail.status_r.as_fd()
    }

    /// Wait for the child's ready message.
    pub fn finish(self) -> Result<Prepared> {
        let Preparing { mut jail, t } = self;
        let mut ready = [0u8; init::READY_LEN];
        if jail.warm {
            // A warm child sends its ready message with a pidfd for itself (template.rs).
            let pidfd = crate::template::recv_ready(&jail.status_r, &mut ready)?;
            jail.proc.pid = crate::template::pid_of(&pidfd);
            jail.proc.pidfd = Some(pidfd);
            return Ok(finish_ready(jail, t, &ready));
        }
        match jail.status_r.read(&mut ready[..1]) {
            Ok(1) if ready[0] == b'R' => {}
            Ok(1) if ready[0] == b'E' => return Err(child_report(&mut jail.status_r)),
            Ok(1) => return Err(JailError::ChildVanished("unexpected status byte")),
            _ => return Err(JailError::ChildVanished("no ready message")),
        }
        jail.status_r
            .read_exact(&mut ready[1..])
            .map_err(|e| JailError::io("read", "ready message", e))?;
        Ok(finish_ready(jail, t, &ready))
    }
}

/// Record the ready message's timings.
fn finish_ready(mut jail: Prepared, mut t: Timer, ready: &[u8; init::READY_LEN]) -> Prepared {
    {
        t.lap("jail_init");
        let us = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Duration::from_micros(u64::from_le_bytes(a))
        };
        // The child's own split of jail_init.
        t.laps.push(("child_cgroup_join", us(&ready[1..9])));
        t.laps.push(("child_mounts", us(&ready[9..17])));
        jail.timings = t.laps;
    }
    jail
}

/// The child's report of a failed step (after the `E` already read), bounded.
pub(crate) fn child_report(f: &mut File) -> JailError {
    let mut bytes = Vec::new();
    match f.take(64 * 1024).read_to_end(&mut bytes) {
        Ok(_) => match ChildError::decode(&bytes) {
            Some(e) => JailError::ChildSetup(e),
            None => JailError::ChildVanished("unreadable report"),
        },
        Err(e) => JailError::io("read", "status pipe", e),
    }
}

/// Records how long each step took.
#[derive(Debug)]
pub(crate) struct Timer {
    last: Instant,
    pub(crate) laps: Vec<(&'static str, Duration)>,
}

impl Timer {
    pub(crate) fn new() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }
    pub(crate) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

/// The jail's process and the host resources tied to it. Dropping it kills the process tree,
/// reaps it, removes the cgroup and frees the uid slot, whatever state the run is in.
#[derive(Debug)]
pub(crate) struct JailProc {
    /// Host pid of the jail's init (0 for a warm child until it said ready).
    pub(crate) pid: Pid,
    /// None for a warm child until it said ready.
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) cgroup: Option<Box<dyn RunCgroup>>,
    pub(crate) slot: Option<Slot>,
    pub(crate) reaped: bool,
    /// A warm child is its template's child, not ours: the template reaps it and writes its
    /// wait status (i32 LE) here; end of file means the template died.
    pub(crate) exit_report: Option<File>,
    /// A warm child's template, kept alive (and running) as long as the child is.
    pub(crate) template: Option<std::rc::Rc<crate::template::Template>>,
}

impl JailProc {
    fn host_uid(&self) -> u32 {
        self.slot.as_ref().map_or(0, |s| s.uid)
    }

    /// SIGKILL the jail's init; the kernel then kills everything in its pid namespace. An init
    /// that has already exited (`ESRCH`) is not an error.
    pub(crate) fn kill(&self) -> Result<()> {
        let Some(pidfd) = self.pidfd.as_ref().filter(|_| !self.reaped) else {
            return Ok(());
        };
        match sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(JailError::sys("pidfd_send_signal SIGKILL", e)),
        }
    }

    /// Kill, reap, empty and remove the cgroup, release the slot. Idempotent.
    pub(crate) fn teardown(&mut self) -> Result<()> {
        // Every step runs whatever failed before it (the cgroup's removal kills what is left);
        // the first failure is reported at the end.
        let mut first_err = None;
        if !self.reaped {
            let killed = self.kill();
            // A warm child that has not said ready has no pidfd here; if it has joined its
            // cgroup, killing the cgroup's tasks ends it now (one that has not joined yet exits
            // on the closed channels: see `Prepared::proc`).
            if self.pidfd.is_none() && self.exit_report.is_some() {
                if let Some(cg) = self.cgroup.as_ref() {
                    if let Err(e) = cg.kill_all() {
                        eprintln!("execbox-jail: killing an unready warm child's cgroup: {e}");
                    }
                }
            }
            let waited = match self.exit_report.as_mut() {
                // The template reaps it: wait for its report (or the template's end, which
                // took the child with it).
                Some(report) => match crate::template::wait_report(report, EXIT_REPORT_WAIT) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(JailError::ChildVanished("no exit report from the template")),
                    // The template died: its children died with it (parent-death signal).
                    Err(_) => Ok(()),
                },
                None => match waitpid(self.pid, None) {
                    // ECHILD: already reaped by someone else (cannot happen for our own
                    // child, but then there is nothing left to wait for)
                    Ok(_) | Err(nix::errno::Errno::ECHILD) => Ok(()),
                    Err(e) => Err(JailError::sys(format!("waitpid {}", self.pid), e)),
                },
            };
            self.reaped = true;
            first_err = killed.err().or(waited.err());
        }
        let removed = match self.cgroup.take() {
            Some(cg) => cg.remove(),
            None => Ok(()),
        };
        // Only free the uid once nothing can still run under it.
        if removed.is_ok() && first_err.is_none() {
            self.slot = None;
        } else if let Some(s) = self.slot.take() {
            // Keep the uid out of circulation for this process's life.
            std::mem::forget(s);
        }
        match first_err {
            Some(e) => Err(e),
            None => removed,
        }
    }
}

/// How long a teardown waits for a template's report on a killed child.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);

impl Drop for JailProc {
    fn drop(&mut self) {
        // The explicit teardown (Supervisor::finish) reports its errors; this is the backstop for
        // paths that already return another error. There is no caller left to tell, so the
        // failure goes to stderr (the spawner's stderr is the server's log).
        if let Err(e) = self.teardown() {
            eprintln!("execbox-jail: teardown of jail {} failed: {e}", self.pid);
        }
    }
}

/// A jail whose child waits for its payload.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) stdin_w: OwnedFd,
    pub(crate) stdout_r: OwnedFd,
    pub(crate) stderr_r: OwnedFd,
    pub(crate) result_r: OwnedFd,
    pub(crate) sync_w: File,
    pub(crate) status_r: File,
    pub(crate) spec: JailSpec,
    pub(crate) missing: Vec<String>,
    pub(crate) timings: Vec<(&'static str, Duration)>,
    /// A template's child (warm path): its status channel is a socket, its init is not ours.
    pub(crate) warm: bool,
    /// Declared last, so dropped last: the channels above close first. A warm child dropped
    /// before it said ready cannot be signalled (no pidfd yet); with its status socket and
    /// payload pipe closed it fails its next step and exits on its own, and the template's
    /// exit report, which the teardown waits for, comes at once instead of after the wait.
    pub(crate) proc: JailProc,
}

impl Prepared {
    /// Whether this jail is a template's child (its payload is the warm form: see
    /// [`crate::template`]).
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// The tag of the template it is a child of (warm only).
    pub fn template_tag(&self) -> Option<u32> {
        self.proc.template.as_ref().map(|t| t.tag())
    }

    /// The spec it was prepared with.
    pub fn spec(&self) -> &JailSpec {
        &self.spec
    }

    /// Host pid of the jail's init.
    pub fn pid(&self) -> Pid {
        self.proc.pid
    }

    /// Send the payload; returns once it has `execve`d.
    pub fn launch(mut self, payload: &Payload) -> Result<Running> {
        let t = self.send_payload(payload)?;
        let mut timings = self.timings;
        timings.extend(t.laps);
        Supervisor::start(
            self.proc,
            [self.stdout_r, self.stderr_r, self.result_r],
            self.stdin_w,
            payload.stdin.clone(),
            self.spec.limits,
            self.missing,
            timings,
        )
    }

    /// A template: send its payload, wait until it has exec'd, keep the process.
    pub(crate) fn into_template(mut self, payload: &Payload) -> Result<JailProc> {
        self.send_payload(payload)?;
        Ok(self.proc)
    }

    /// Send the payload; return once it has `execve`d (a warm child: once it is locked down).
    fn send_payload(&mut self, payload: &Payload) -> Result<Timer> {
        payload.validate(&self.spec.limits)?;
        let mut t = Timer::new();
        let msg = launch_msg::encode(payload);
        self.sync_w
            .write_all(&msg)
            .map_err(|e| JailError::io("write", "launch message", e))?;
        // The message is length-framed: the child does not wait for end of file on it.
        let mut rest = Vec::new();
        match self.status_r.read_to_end(&mut rest) {
            // A cold jail's status pipe closes on execve; a warm child says `X` first (its end
            // of file alone would also be what a child that died while pooled leaves).
            Ok(_) if !self.warm && rest.is_empty() => {}
            Ok(_) if self.warm && rest == crate::warm::LOCKED_DOWN => {}
            Ok(_) if rest.is_empty() => {
                return Err(JailError::ChildVanished(
                    "the warm child died before its payload",
                ))
            }
            Ok(_) => {
                return Err(match rest.strip_prefix(b"E").and_then(ChildError::decode) {
                    Some(e) => JailError::ChildSetup(e),
                    None => JailError::ChildVanished("unreadable report after the launch"),
                })
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(JailError::io("read", "status pipe", e)),
        }
        t.lap("exec");
        Ok(t)
    }
}

/// A payload running in its jail: its supervisor.
pub type Running = Supervisor;

//! The spawner's side of the warm path.
//!
//! A *template* is a long-lived process in a base jail of its own (a user namespace that maps
//! the run uids, a read-only root, no network, an empty environment, its own cgroup) that has
//! imported its runtime's harness and modules once. For each run the spawner sends it one
//! request over a `SOCK_SEQPACKET` socket (JSON and the run's descriptors); the template
//! clones a child into new namespaces, and the child builds a run's jail around itself
//! ([`crate::warm`]) before it runs the user's code in the interpreter it inherited, without
//! `execve`. To the spawner a warm child is a [`Prepared`] jail like any
//! other; only its exit is reported by the template (its parent) on a pipe, and its status
//! channel is a socket that also carries a pidfd for it. See docs/security.md, "Templates".

use std::cell::Cell;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{pipe2, Pid};

use crate::check::LayerName;
use crate::child_error::ChildError;
use crate::config::{JailSpec, Payload};
use crate::error::{JailError, Result};
use crate::init::{Kind, READY_LEN};
use crate::spawn::{JailProc, Jailer, Prepared, Preparing, Timer};
use crate::warm::WarmRequest;

/// A running template. Dropping the last reference (each of its children holds one) kills it,
/// and with it any child it still has (their parent-death signal).
#[derive(Debug)]
pub struct Template {
    proc: JailProc,
    ctl: OwnedFd,
    tag: u32,
    started: Instant,
    children: Cell<u64>,
    ready: Cell<bool>,
}

impl Template {
    /// Readable when the template says it is ready (once, after its imports), and at its end.
    pub fn ctl_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_fd()
    }

    /// Read what the template said. `Ok(true)`: it is ready; `Ok(false)`: nothing (yet);
    /// an error: it ended, or said something else.
    pub fn poll_ready(&self) -> Result<bool> {
        let mut buf = [0u8; 64];
        match nix::sys::socket::recv(self.ctl.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Err(JailError::ChildVanished("the template ended")),
            Ok(_) if self.ready.get() => Err(JailError::ChildVanished(
                "the template said something after ready",
            )),
            Ok(n) if buf[..n] == *format!("ready {:016x}", crate::warm::FINGERPRINT).as_bytes() => {
                self.ready.set(true);
                Ok(true)
            }
            Ok(n) if buf[..n].starts_with(b"ready ") => Err(JailError::ChildVanished(
                "the template's jail library is not the one this spawner was built with \
                 (rebuild it: cargo build -p execbox-jail)",
            )),
            Ok(_) => Err(JailError::ChildVanished(
                "the template said something unexpected",
            )),
            Err(nix::errno::Errno::EAGAIN) => Ok(self.ready.get()),
            Err(e) => Err(JailError::sys("recv from template", e)),
        }
    }

    /// Whether it said it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How many children it was asked for.
    pub fn children(&self) -> u64 {
        self.children.get()
    }

    /// The tag it was started with (which variant of a runtime's template it is).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// Host pid of the template.
    pub fn pid(&self) -> Pid {
        self.proc.pid
    }
}

impl Jailer {
    /// Start a template: a jail whose payload (the runtime's template program) keeps running
    /// and serves [`Jailer::start_prepare_warm`]. Blocks until the payload has `execve`d; the
    /// template then says `ready` on [`Template::ctl_fd`] once its imports are done.
    pub fn start_template(
        &self,
        spec: &JailSpec,
        payload: &Payload,
        tag: u32,
    ) -> Result<Rc<Template>> {
        if !self.report().has(LayerName::UserNamespaces) {
            return Err(JailError::LayerUnavailable(
                "templates need user namespaces".into(),
            ));
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| JailError::sys("socketpair", e))?;
        let log = std::io::stderr();
        let prep = self.clone_jail(spec, Kind::Template, Some((theirs.as_fd(), log.as_fd())))?;
        drop(theirs);
        let proc = prep.finish()?.into_template(payload)?;
        Ok(Rc::new(Template {
            proc,
            ctl: ours,
            tag,
            started: Instant::now(),
            children: Cell::new(0),
            ready: Cell::new(false),
        }))
    }

    /// Ask `template` for a child prepared as `spec` (limits, binds): a uid slot and a cgroup
    /// are taken here, the child joins the cgroup and builds its root itself. Poll
    /// [`Preparing::ready_fd`] and call [`Preparing::finish`] as for a cold jail; its payload
    /// is the warm form (argv: `/execbox-warm`, then what the template's program expects).
    pub fn start_prepare_warm(
        &self,
        template: &Rc<Template>,
        spec: &JailSpec,
    ) -> Result<Preparing> {
        let slot = self.acquire_slot()?;
        // The template's namespace maps run slots at their host uids (template_id_map).
        let inner_uid = slot.uid;
        let p = |what| pipe2(OFlag::O_CLOEXEC).map_err(|e| JailError::sys(what, e));
        let (stdin_r, stdin_w) = p("pipe stdin")?;
        let (stdout_r, stdout_w) = p("pipe stdout")?;
        let (stderr_r, stderr_w) = p("pipe stderr")?;
        let (result_r, result_w) = p("pipe result")?;
        let (sync_r, sync_w) = p("pipe sync")?;
        let (exit_r, exit_w) = p("pipe exit")?;
        let (status_r, status_w) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| JailError::sys("socketpair", e))?;
        let cgroup = self.create_cgroup(&spec.limits)?;
        let procs: Vec<File> = match cgroup
            .procs_files()
            .iter()
            .map(|f| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .map_err(|e| JailError::io("open", f, e))
            })
            .collect()
        {
            Ok(v) => v,
            Err(e) => return Err(e.with_cleanup(cgroup.remove())),
        };
        let (have_cgroup, landlock, _, _) = self.layers();
        let req = WarmRequest {
            inner_uid,
            spec: spec.clone(),
            have_cgroup,
            landlock,
            cgroup_fds: procs.len(),
        };
        // Serialising plain data cannot fail.
        let json = serde_json::to_vec(&req).unwrap_or_default();
        let mut fds: Vec<RawFd> = [
            &stdin_r, &stdout_w, &stderr_w, &result_w, &status_w, &sync_r, &exit_w,
        ]
        .iter()
        .map(|f| f.as_raw_fd())
        .collect();
        fds.extend(procs.iter().map(|f| f.as_raw_fd()));
        let sent = sendmsg::<()>(
            template.ctl.as_raw_fd(),
            &[IoSlice::new(&json)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        if let Err(e) = sent {
            return Err(JailError::sys("send to template", e).with_cleanup(cgroup.remove()));
        }
        drop((
            stdin_r, stdout_w, stderr_w, result_w, status_w, sync_r, exit_w, procs,
        ));
        template.children.set(template.children.get() + 1);
        let jail = Prepared {
            proc: JailProc {
                pid: Pid::from_raw(0),
                pidfd: None,
                cgroup: Some(cgroup),
                slot: Some(slot),
                reaped: false,
                exit_report: Some(File::from(exit_r)),
                template: Some(Rc::clone(template)),
            },
            stdin_w,
            stdout_r,
            stderr_r,
            result_r,
            sync_w: File::from(sync_w),
            status_r: File::from(status_r),
            spec: spec.clone(),
            missing: self.missing_layers().to_vec(),
            timings: Vec::new(),
            warm: true,
        };
        Ok(Preparing::new(jail, Timer::new()))
    }
}

/// Read a warm child's ready message (`R` and its timings) with the pidfd it sends along, or
/// its failure report.
pub(crate) fn recv_ready(status: &File, ready: &mut [u8; READY_LEN]) -> Result<OwnedFd> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut ready[..])];
        let msg = recvmsg::<()>(
            status.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| JailError::sys("recvmsg status", e))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| JailError::sys("cmsgs", e))? {
            if let ControlMessageOwned::ScmRights(v) = c {
                for raw in v {
                    // SAFETY: SCM_RIGHTS just installed `raw` in this process; nothing else
                    // owns it. Extra descriptors (none are expected) are closed on drop.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (msg.bytes, fd)
    };
    match (n, ready[0]) {
        (0, _) => Err(JailError::ChildVanished("no ready message")),
        (_, b'E') => {
            let mut bytes = ready[1..n].to_vec();
            let r = status;
            r.take(64 * 1024)
                .read_to_end(&mut bytes)
                .map_err(|e| JailError::io("read", "status socket", e))?;
            Err(match ChildError::decode(&bytes) {
                Some(e) => JailError::ChildSetup(e),
                None => JailError::ChildVanished("unreadable report"),
            })
        }
        (_, b'R') => {
            if n < READY_LEN {
                let mut r = status;
                r.read_exact(&mut ready[n..])
                    .map_err(|e| JailError::io("read", "ready message", e))?;
            }
            fd.ok_or(JailError::ChildVanished("ready without a pidfd"))
        }
        _ => Err(JailError::ChildVanished("unexpected status byte")),
    }
}

/// The host pid behind a pidfd (its `fdinfo`), for logs and process-tree checks; 0 if unknown.
pub(crate) fn pid_of(pidfd: &OwnedFd) -> Pid {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .unwrap_or_default();
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Pid::from_raw(pid)
}

/// Wait up to `wait` for the template's report on a child: `Some(raw wait status)`, `None` if
/// none came in time; an error if the template died (end of file) or the pipe failed.
pub(crate) fn wait_report(report: &mut File, wait: Duration) -> Result<Option<i32>> {
    let ms = wait.as_millis().min(u16::MAX as u128) as u16;
    let mut fds = [PollFd::new(report.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(JailError::sys("poll exit report", e)),
    }
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match report.read(&mut b[got..]) {
            Ok(0) => return Err(JailError::ChildVanished("the template died")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(JailError::io("read", "exit report", e)),
        }
    }
    Ok(Some(i32::from_le_bytes(b)))
}

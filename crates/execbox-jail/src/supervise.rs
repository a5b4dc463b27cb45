//! Supervision of a running jail: feed stdin, read stdout/stderr/result with caps as the bytes
//! arrive (keeping what came before a cap or timeout), enforce the wall-clock deadline, notice
//! the exit through the pidfd, then tear everything down and report.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::config::Limits;
use crate::error::{JailError, Result};
use crate::spawn::{JailProc, Timer};

/// Which limit ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The supervisor's wall-clock deadline.
    WallTime,
    /// RLIMIT_CPU.
    CpuTime,
    /// Memory cgroup OOM kill.
    Memory,
    /// stdout, stderr or the result channel went over its cap.
    Output,
}

/// How a run ended and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when it was killed by one.
    pub signal: Option<i32>,
    /// stdout up to the cap.
    pub stdout: Vec<u8>,
    /// stderr up to the cap.
    pub stderr: Vec<u8>,
    /// Result channel (fd 3) up to its cap.
    pub result: Vec<u8>,
    /// A stream was cut at its cap.
    pub truncated: bool,
    /// Which limit fired, if any.
    pub limit: Option<Limit>,
    /// Ended by a cancel request.
    pub cancelled: bool,
    /// From `execve` to exit.
    pub wall: Duration,
    /// CPU time of the whole tree (from the cgroup; zero without one).
    pub cpu: Duration,
    /// Peak memory of the cgroup, bytes.
    pub memory_peak: u64,
    /// OOM kills in the cgroup.
    pub oom_kills: u64,
    /// Layers that were missing (degraded run) — empty normally.
    pub missing_layers: Vec<String>,
    /// Time spent in each jail step.
    pub timings: Vec<(&'static str, Duration)>,
    /// Served by a template's child (the warm path).
    pub warm: bool,
}

impl Outcome {
    /// Set the exit status the program itself had, when a wrapper (a shell that reports a
    /// program killed by signal N as exit code 128+N) stood between it and the supervisor, and
    /// classify the limits the kernel enforces (OOM kill, RLIMIT_CPU) again on that status: a
    /// program killed at its CPU limit is a CPU-time limit, not a wrapper's exit code 137/152.
    pub fn unwrap_status(&mut self, exit_code: Option<i32>, signal: Option<i32>, limits: &Limits) {
        self.exit_code = exit_code;
        self.signal = signal;
        if self.limit.is_none() && !self.cancelled {
            self.limit = kernel_limit(exit_code, signal, self.cpu, self.oom_kills, limits);
        }
    }
}

/// Which kernel-enforced limit ended a run with this status, if any: the memory cgroup's OOM
/// killer (an OOM kill and an abnormal end), or RLIMIT_CPU (SIGXCPU at the soft limit, SIGKILL
/// at the hard one once the CPU time reached it).
fn kernel_limit(
    exit_code: Option<i32>,
    signal: Option<i32>,
    cpu: Duration,
    oom_kills: u64,
    limits: &Limits,
) -> Option<Limit> {
    let cpu_limit = Duration::from_millis(limits.cpu_time_ms.div_ceil(1000) * 1000);
    if oom_kills > 0 && (signal.is_some() || exit_code != Some(0)) {
        Some(Limit::Memory)
    } else if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && cpu >= cpu_limit) {
        Some(Limit::CpuTime)
    } else {
        None
    }
}

/// After the init exits, how long to wait for the pipes to reach EOF.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// After a kill, how long to wait for the exit before giving up on the process.
const KILL_GRACE: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Stream {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

/// What a descriptor of a running jail is, for [`Supervisor::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The stdin pipe (writable).
    Stdin,
    /// stdout (0), stderr (1), result channel (2).
    Stream(usize),
    /// The pidfd: readable once the jail's init exited.
    Exit,
}

/// State of one supervised run. Step-driven so that one thread can supervise many runs
/// ([`Supervisor::interest`], [`Supervisor::handle`], [`Supervisor::tick`]); [`Supervisor::run`]
/// drives a single one to the end.
#[derive(Debug)]
pub struct Supervisor {
    proc: JailProc,
    streams: [Stream; 3],
    stdin: Option<OwnedFd>,
    stdin_data: Vec<u8>,
    stdin_off: usize,
    /// Close stdin once `stdin_data` is written (an interactive run keeps it open until told).
    stdin_eof: bool,
    limits: Limits,
    started: Instant,
    deadline: Instant,
    status: Option<WaitStatus>,
    exited_at: Option<Instant>,
    killed_at: Option<Instant>,
    /// Set when a kill could not be delivered at all; finish() returns it after teardown.
    kill_error: Option<JailError>,
    limit: Option<Limit>,
    cancelled: bool,
    missing: Vec<String>,
    timings: Vec<(&'static str, Duration)>,
}

fn nonblocking(fd: &OwnedFd) -> Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map(drop)
        .map_err(|e| JailError::sys("fcntl O_NONBLOCK", e))
}

impl Supervisor {
    pub(crate) fn start(
        proc: JailProc,
        outs: [OwnedFd; 3],
        stdin: OwnedFd,
        stdin_data: Vec<u8>,
        limits: Limits,
        missing: Vec<String>,
        timings: Vec<(&'static str, Duration)>,
    ) -> Result<Self> {
        for fd in outs.iter().chain([&stdin]) {
            nonblocking(fd)?;
        }
        let caps = [
            limits.output_bytes as usize,
            limits.output_bytes as usize,
            limits.result_bytes as usize,
        ];
        let mut i = 0;
        let streams = outs.map(|fd| {
            let s = Stream {
                fd: Some(fd),
                buf: Vec::new(),
                cap: caps[i],
                over: false,
            };
            i += 1;
            s
        });
        let started = Instant::now();
        Ok(Self {
            proc,
            streams,
            // Empty stdin: EOF at once (unless the run is made interactive before it is
            // polled: see keep_stdin_open).
            stdin: Some(stdin),
            stdin_data,
            stdin_off: 0,
            stdin_eof: true,
            limits,
            started,
            deadline: started + Duration::from_millis(limits.wall_time_ms),
            status: None,
            exited_at: None,
            killed_at: None,
            kill_error: None,
            limit: None,
            cancelled: false,
            missing,
            timings,
        })
    }

    /// The descriptors to poll now, with the events of interest.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Role)> {
        let mut v = Vec::with_capacity(5);
        if let Some(fd) = &self.stdin {
            // Writable when there is data to write, or when stdin is to be closed (the next
            // feed_stdin closes it); an open, idle interactive stdin is not polled.
            if self.stdin_off < self.stdin_data.len() || self.stdin_eof {
                v.push((fd.as_fd(), PollFlags::POLLOUT, Role::Stdin));
            }
        }
        for (i, s) in self.streams.iter().enumerate() {
            if let Some(fd) = &s.fd {
                v.push((fd.as_fd(), PollFlags::POLLIN, Role::Stream(i)));
            }
        }
        if self.status.is_none() {
            let exit = match (&self.proc.exit_report, &self.proc.pidfd) {
                (Some(report), _) => Some(report.as_fd()),
                (None, Some(pidfd)) => Some(pidfd.as_fd()),
                (None, None) => None,
            };
            if let Some(fd) = exit {
                v.push((fd, PollFlags::POLLIN, Role::Exit));
            }
        }
        v
    }

    /// When [`Supervisor::tick`] must run next at the latest.
    pub fn next_wakeup(&self) -> Instant {
        match (self.exited_at, self.killed_at) {
            (Some(t), _) => t + DRAIN_GRACE,
            (None, Some(k)) => k + KILL_GRACE,
            (None, None) => self.deadline,
        }
    }

    /// True once the run is over and [`Supervisor::finish`] may be called.
    pub fn is_done(&self) -> bool {
        match self.exited_at {
            Some(t) => {
                self.streams.iter().all(|s| s.fd.is_none()) || Instant::now() >= t + DRAIN_GRACE
            }
            None => false,
        }
    }

    fn kill(&mut self, why: Option<Limit>) {
        if let Some(l) = why {
            self.limit.get_or_insert(l);
        }
        if self.killed_at.is_none() {
            if let Err(e) = self.proc.kill() {
                // The pid namespace's init could not be signalled: kill the whole cgroup
                // instead. If that fails too the run cannot be stopped: finish() reports it.
                let fallback = match self.proc.cgroup.as_ref() {
                    Some(cg) => cg.kill_all(),
                    None => Err(e),
                };
                if let Err(f) = fallback {
                    self.kill_error.get_or_insert(f);
                }
            }
            self.killed_at = Some(Instant::now());
        }
    }

    /// Keep stdin open once the data given at launch is written (an interactive run); more
    /// comes with [`Supervisor::push_stdin`]. Call before the run is first polled.
    pub fn keep_stdin_open(&mut self) {
        self.stdin_eof = false;
    }

    /// Queue more stdin; with `eof`, close stdin once everything queued is written. Dropped
    /// when the program has closed its stdin or ended. The caller bounds the amount.
    pub fn push_stdin(&mut self, data: &[u8], eof: bool) {
        if self.stdin.is_some() {
            self.stdin_data.extend_from_slice(data);
        }
        self.stdin_eof |= eof;
    }

    /// Send `sig` to the run's process group (the jail's init, or a warm run's child, called
    /// `setsid`, so its pid is the group of every process that did not move to a group of its
    /// own, and no process outside the jail can be in it). A pid namespace's init only
    /// receives signals it installed a handler for (SIGKILL always). Nothing is sent once the
    /// process has exited (its pid could be reused: a warm child is reaped by its template,
    /// not by us, so its pidfd is checked first) or after a kill.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if self.status.is_some() || self.killed_at.is_some() {
            return;
        }
        if let Some(pidfd) = &self.proc.pidfd {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
                return; // exited (readable), or its state cannot be known
            }
        }
        match nix::sys::signal::killpg(self.proc.pid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => eprintln!("execbox-jail: signal {sig} to jail {}: {e}", self.proc.pid),
        }
    }

    /// What was read of stream `i` (0 stdout, 1 stderr, 2 result) so far, whether it went
    /// over its cap, and whether it is closed (no more will be read).
    pub fn output(&self, i: usize) -> (&[u8], bool, bool) {
        let s = &self.streams[i];
        (&s.buf, s.over, s.fd.is_none())
    }

    /// Cancel the run: kill it; the outcome says `cancelled`.
    pub fn cancel(&mut self) {
        if self.status.is_none() {
            self.cancelled = true;
            self.kill(None);
        }
    }

    /// Enforce the deadline; call whenever [`Supervisor::next_wakeup`] has passed.
    pub fn tick(&mut self) -> Result<()> {
        let now = Instant::now();
        if self.status.is_none() && self.killed_at.is_none() && now >= self.deadline {
            self.kill(Some(Limit::WallTime));
        }
        if let (None, Some(k)) = (self.status, self.killed_at) {
            if now >= k + KILL_GRACE {
                // SIGKILL did not end it within the grace: reap blocking, it cannot take long.
                self.reap(None)?;
            }
        }
        Ok(())
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> Result<()> {
        if let Some(report) = self.proc.exit_report.as_mut() {
            // A warm child: its template reaps it and reports the status.
            let wait = if flags.is_some() {
                Duration::ZERO
            } else {
                KILL_GRACE
            };
            return match crate::template::wait_report(report, wait) {
                Ok(Some(raw)) => {
                    let s = WaitStatus::from_raw(self.proc.pid, raw)
                        .map_err(|e| JailError::sys("wait status", e))?;
                    self.proc.reaped = true;
                    self.status = Some(s);
                    self.exited_at = Some(Instant::now());
                    self.stdin = None;
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    // The template died (and took the child with it): the run is lost, which
                    // finish() reports as an error after the teardown.
                    self.proc.reaped = true;
                    self.exited_at = Some(Instant::now());
                    self.stdin = None;
                    self.kill_error.get_or_insert(e);
                    Ok(())
                }
            };
        }
        match waitpid(self.proc.pid, flags) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Ok(s) => {
                self.proc.reaped = true;
                self.status = Some(s);
                self.exited_at = Some(Instant::now());
                // Its pid namespace dies with it; nothing will read stdin any more.
                self.stdin = None;
                Ok(())
            }
            Err(e) => Err(JailError::sys("waitpid", e)),
        }
    }

    /// React to `revents` on the descriptor with `role`.
    pub fn handle(&mut self, role: Role, revents: PollFlags) -> Result<()> {
        match role {
            Role::Stdin => self.feed_stdin(revents),
            Role::Stream(i) => {
                if self.drain(i) {
                    self.kill(Some(Limit::Output));
                }
            }
            Role::Exit => self.reap(Some(WaitPidFlag::WNOHANG))?,
        }
        Ok(())
    }

    /// Supervise until the run ends (or `cancel` becomes readable), then tear down.
    pub fn run(mut self, cancel: Option<BorrowedFd<'_>>) -> Result<Outcome> {
        while !self.is_done() {
            let now = Instant::now();
            if now >= self.next_wakeup() {
                self.tick()?;
            }
            let ready = {
                let interest = self.interest();
                let mut fds: Vec<PollFd<'_>> = interest
                    .iter()
                    .map(|(fd, ev, _)| PollFd::new(*fd, *ev))
                    .collect();
                if let (Some(c), false) = (cancel, self.cancelled) {
                    fds.push(PollFd::new(c, PollFlags::POLLIN));
                }
                let wait = self.next_wakeup().saturating_duration_since(now);
                let ms = wait.as_millis().clamp(1, 60_000) as u16;
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(JailError::sys("poll", e)),
                }
                let revents: Vec<PollFlags> = fds
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                let roles: Vec<Role> = interest.iter().map(|(_, _, r)| *r).collect();
                (roles, revents)
            };
            let (roles, revents) = ready;
            for (i, ev) in revents.iter().enumerate() {
                if ev.is_empty() {
                    continue;
                }
                match roles.get(i) {
                    Some(r) => self.handle(*r, *ev)?,
                    None => self.cancel(), // the extra cancel descriptor
                }
            }
        }
        self.finish()
    }

    /// Tear the jail down and report. Call once [`Supervisor::is_done`].
    pub fn finish(mut self) -> Result<Outcome> {
        let wall = self.exited_at.unwrap_or_else(Instant::now) - self.started;
        let warm = self.proc.exit_report.is_some();
        let mut t = Timer::new();
        // Read before teardown removes the cgroup; report a failed read only after teardown, so
        // an error never leaves the jail behind.
        let stats = match self.proc.cgroup.as_ref() {
            Some(c) => c.stats(),
            None => Ok(crate::cgroup::CgroupStats::default()),
        };
        let teardown = self.proc.teardown();
        t.lap("teardown");
        teardown?;
        if let Some(e) = self.kill_error.take() {
            return Err(e);
        }
        let stats = stats?;

        let (exit_code, signal) = match self.status {
            Some(WaitStatus::Exited(_, c)) => (Some(c), None),
            Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
            _ => (None, Some(libc::SIGKILL)),
        };
        let cpu = Duration::from_nanos(stats.cpu_ns);
        let limit = if self.cancelled {
            self.limit
        } else {
            self.limit
                .or_else(|| kernel_limit(exit_code, signal, cpu, stats.oom_kills, &self.limits))
        };
        let truncated = self.streams.iter().any(|s| s.over);
        let mut timings = self.timings;
        timings.push(("run", wall));
        timings.extend(t.laps);
        let [out, err, res] = self.streams;
        Ok(Outcome {
            exit_code,
            signal,
            stdout: out.buf,
            stderr: err.buf,
            result: res.buf,
            truncated,
            limit,
            cancelled: self.cancelled,
            wall,
            cpu,
            memory_peak: stats.memory_peak,
            oom_kills: stats.oom_kills,
            missing_layers: self.missing,
            timings,
            warm,
        })
    }

    fn feed_stdin(&mut self, ev: PollFlags) {
        let Some(fd) = &self.stdin else { return };
        if ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
            self.stdin = None;
            return;
        }
        let rest = &self.stdin_data[self.stdin_off..];
        let n = rest.len().min(CHUNK);
        if n > 0 {
            match nix::unistd::write(fd, &rest[..n]) {
                Ok(w) => self.stdin_off += w,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => self.stdin = None, // EPIPE: the program closed stdin
            }
        }
        if self.stdin_off >= self.stdin_data.len() {
            if self.stdin_eof {
                self.stdin = None;
            } else {
                // Interactive: written so far; keep the buffer from growing.
                self.stdin_data.clear();
                self.stdin_off = 0;
            }
        }
    }

    /// Read what is available on stream `i`. Returns true when it went over its cap.
    fn drain(&mut self, i: usize) -> bool {
        let s = &mut self.streams[i];
        let mut chunk = [0u8; CHUNK];
        loop {
            let Some(fd) = &s.fd else { return false };
            match nix::unistd::read(fd.as_fd(), &mut chunk) {
                Ok(0) => {
                    s.fd = None;
                    return false;
                }
                Ok(n) => {
                    let room = s.cap.saturating_sub(s.buf.len());
                    if n > room {
                        s.buf.extend_from_slice(&chunk[..room]);
                        s.over = true;
                        // Stop reading: the writer is about to be killed.
                        s.fd = None;
                        return true;
                    }
                    s.buf.extend_from_slice(&chunk[..n]);
                }
                Err(nix::errno::Errno::EAGAIN) => return false,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    s.fd = None;
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_limits_are_read_from_the_program_s_own_status() {
        let l = Limits {
            cpu_time_ms: 1000,
            ..Limits::default()
        };
        let second = Duration::from_millis(1000);
        let kill = Some(libc::SIGKILL);
        assert_eq!(
            kernel_limit(None, kill, second, 0, &l),
            Some(Limit::CpuTime)
        );
        assert_eq!(
            kernel_limit(None, Some(libc::SIGXCPU), Duration::ZERO, 0, &l),
            Some(Limit::CpuTime)
        );
        assert_eq!(kernel_limit(None, kill, Duration::ZERO, 0, &l), None);
        assert_eq!(
            kernel_limit(Some(1), None, second, 1, &l),
            Some(Limit::Memory)
        );
        // a wrapper's exit code 137 is no verdict until it is unwrapped to SIGKILL
        assert_eq!(kernel_limit(Some(137), None, second, 0, &l), None);
    }
}

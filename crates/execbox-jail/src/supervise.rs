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
}

/// After the init exits, how long to wait for the pipes to reach EOF.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Stream {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

/// State of one supervised run.
#[derive(Debug)]
pub(crate) struct Supervisor {
    proc: JailProc,
    streams: [Stream; 3],
    stdin: Option<OwnedFd>,
    stdin_data: Vec<u8>,
    stdin_off: usize,
    limits: Limits,
    started: Instant,
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
        Ok(Self {
            proc,
            streams,
            stdin: Some(stdin),
            stdin_data,
            stdin_off: 0,
            limits,
            started: Instant::now(),
            missing,
            timings,
        })
    }

    pub(crate) fn run(mut self, cancel: Option<BorrowedFd<'_>>) -> Result<Outcome> {
        let deadline = self.started + Duration::from_millis(self.limits.wall_time_ms);
        let mut status: Option<WaitStatus> = None;
        let mut exited_at: Option<Instant> = None;
        let mut limit: Option<Limit> = None;
        let mut cancelled = false;
        let mut killed = false;
        if self.stdin_data.is_empty() {
            self.stdin = None; // EOF at once
        }

        loop {
            let open = self.streams.iter().any(|s| s.fd.is_some());
            let now = Instant::now();
            if let Some(t) = exited_at {
                if !open || now >= t + DRAIN_GRACE {
                    break;
                }
            }
            if !killed && now >= deadline {
                limit.get_or_insert(Limit::WallTime);
                self.proc.kill();
                killed = true;
            }

            // Build the poll set: [stdin?] [streams…] [pidfd?] [cancel?]
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(6);
            let mut roles: Vec<Role> = Vec::with_capacity(6);
            if let Some(fd) = &self.stdin {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                roles.push(Role::Stdin);
            }
            for (i, s) in self.streams.iter().enumerate() {
                if let Some(fd) = &s.fd {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    roles.push(Role::Stream(i));
                }
            }
            if status.is_none() {
                fds.push(PollFd::new(self.proc.pidfd.as_fd(), PollFlags::POLLIN));
                roles.push(Role::Exit);
            }
            if let (Some(c), false) = (cancel, cancelled) {
                fds.push(PollFd::new(c, PollFlags::POLLIN));
                roles.push(Role::Cancel);
            }
            let until = match exited_at {
                Some(t) => t + DRAIN_GRACE,
                None if killed => now + Duration::from_secs(5),
                None => deadline,
            };
            let ms = until.saturating_duration_since(now).as_millis().min(60_000) as u16;
            let timeout = PollTimeout::from(ms.max(1));
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(JailError::sys("poll", e)),
            }
            let ready: Vec<(Role, PollFlags)> = fds
                .iter()
                .zip(&roles)
                .filter_map(|(f, r)| f.revents().filter(|e| !e.is_empty()).map(|e| (*r, e)))
                .collect();
            drop(fds);

            for (role, ev) in ready {
                match role {
                    Role::Stdin => self.feed_stdin(ev),
                    Role::Stream(i) => {
                        if self.drain(i) && !killed {
                            limit.get_or_insert(Limit::Output);
                            self.proc.kill();
                            killed = true;
                        }
                    }
                    Role::Exit => {
                        match waitpid(self.proc.pid, Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
                            Ok(s) => {
                                self.proc.reaped = true;
                                status = Some(s);
                                exited_at = Some(Instant::now());
                                // Its pid namespace dies with it; drop stdin so nothing blocks.
                                self.stdin = None;
                            }
                            Err(e) => return Err(JailError::sys("waitpid", e)),
                        }
                    }
                    Role::Cancel => {
                        cancelled = true;
                        if !killed {
                            self.proc.kill();
                            killed = true;
                        }
                    }
                }
            }
        }

        let wall = exited_at.unwrap_or_else(Instant::now) - self.started;
        let mut t = Timer::new();
        let stats = self
            .proc
            .cgroup
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default();
        let teardown = self.proc.teardown();
        t.lap("teardown");
        teardown?;

        let (exit_code, signal) = match status {
            Some(WaitStatus::Exited(_, c)) => (Some(c), None),
            Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
            _ => (None, Some(libc::SIGKILL)),
        };
        let cpu = Duration::from_nanos(stats.cpu_ns);
        if limit.is_none() && !cancelled {
            let cpu_limit = Duration::from_millis(self.limits.cpu_time_ms.div_ceil(1000) * 1000);
            if stats.oom_kills > 0 && (signal.is_some() || exit_code != Some(0)) {
                limit = Some(Limit::Memory);
            } else if signal == Some(libc::SIGXCPU)
                || (signal == Some(libc::SIGKILL) && cpu >= cpu_limit)
            {
                limit = Some(Limit::CpuTime);
            }
        }
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
            cancelled,
            wall,
            cpu,
            memory_peak: stats.memory_peak,
            oom_kills: stats.oom_kills,
            missing_layers: self.missing,
            timings,
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
        match nix::unistd::write(fd, &rest[..n]) {
            Ok(w) => self.stdin_off += w,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => self.stdin = None, // EPIPE: the program closed stdin
        }
        if self.stdin_off >= self.stdin_data.len() {
            self.stdin = None;
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

#[derive(Debug, Clone, Copy)]
enum Role {
    Stdin,
    Stream(usize),
    Exit,
    Cancel,
}

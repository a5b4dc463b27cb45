//! The spawner's `poll` loop: orders in on one descriptor, events out on another, every jail
//! (preparing, pooled, running) supervised from the same single thread.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use execbox_jail::{
    JailError, JailSpec, Jailer, Outcome, Payload, Prepared, Preparing, Role, Supervisor, WorkFile,
};
use execbox_proto::spawner::{Event, Order, RunOrder, SpawnerConfig, MAX_LINE};
use execbox_runtime::{build_record, PythonRuntime, RunMeta};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::framing::{parse_order, Line, LineBuffer};
use crate::inflight::{log, InFlight, Jails, Report};

/// Errors that end the spawner.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    /// The jail layer failed in a way that concerns every run.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The control pipe failed.
    #[error("control pipe: {0}")]
    Io(#[from] io::Error),
    /// `poll` failed.
    #[error("poll: {0}")]
    Poll(nix::Error),
    /// The runtime cannot be used.
    #[error(transparent)]
    Runtime(execbox_runtime::RuntimeError),
}

#[derive(Clone, Copy)]
enum Tag {
    Control,
    Out,
    Prep(usize),
    Run(usize, Role),
}

impl Jails for Jailer {
    type Spec = JailSpec;
    type Payload = Payload;
    type Preparing = Preparing;
    type Prepared = Prepared;
    type Running = Supervisor;
    type Error = JailError;

    fn start_prepare(&self, spec: &JailSpec) -> Result<Preparing, JailError> {
        Jailer::start_prepare(self, spec)
    }

    fn finish_prepare(&self, p: Preparing) -> Result<Prepared, JailError> {
        p.finish()
    }

    fn launch(&self, p: Prepared, payload: &Payload) -> Result<Supervisor, JailError> {
        p.launch(payload)
    }

    fn cancel(&self, r: &mut Supervisor) {
        r.cancel();
    }

    fn is_done(&self, r: &Supervisor) -> bool {
        r.is_done()
    }

    fn finish_run(&self, r: Supervisor) -> Result<Outcome, JailError> {
        r.finish()
    }
}

/// The spawner state.
pub struct Spawner {
    runtime: PythonRuntime,
    inflight: InFlight<Jailer>,
    orders: LineBuffer,
    out: OwnedFd,
    /// Events not yet written: the loop never blocks on a slow reader.
    outbuf: VecDeque<u8>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pool, preparing, running) = self.inflight.counts();
        f.debug_struct("Spawner")
            .field("pool", &pool)
            .field("preparing", &preparing)
            .field("running", &running)
            .finish()
    }
}

/// The language of the one runtime there is.
const LANGUAGE: &str = "python";

impl Spawner {
    /// A spawner that writes events to `out` (made non-blocking).
    pub fn new(jailer: Jailer, runtime: PythonRuntime, cfg: SpawnerConfig, out: OwnedFd) -> Self {
        let default_spec = runtime.jail_spec(cfg.default_limits);
        Self {
            inflight: InFlight::new(jailer, default_spec, cfg.pool),
            runtime,
            orders: LineBuffer::new(MAX_LINE),
            out,
            outbuf: VecDeque::new(),
        }
    }

    /// Queue an event and write what the pipe takes now.
    fn emit(&mut self, ev: &Event) -> io::Result<()> {
        self.outbuf.extend(ev.to_line());
        self.flush_some()
    }

    /// Tell the server what the bookkeeping reported, in order.
    fn report(&mut self, reports: Vec<Report>) -> io::Result<()> {
        for r in reports {
            let ev = match r {
                Report::Started(id) => Event::Started { id },
                Report::Ended(end) => self.finished(end.0, end.1),
                Report::Failed(id, message) => Event::Failed { id, message },
            };
            self.emit(&ev)?;
        }
        Ok(())
    }

    /// Write queued events until the pipe is full (EAGAIN) or the queue empty.
    fn flush_some(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            let (a, _) = self.outbuf.as_slices();
            let n = a.len().min(1 << 20);
            match nix::unistd::write(&self.out, &a[..n]) {
                Ok(w) => {
                    self.outbuf.drain(..w);
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(())
    }

    /// At exit: write everything that is left, waiting as needed.
    fn flush_all(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            self.flush_some()?;
            if !self.outbuf.is_empty() {
                let mut fds = [PollFd::new(self.out.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(1000u16));
            }
        }
        Ok(())
    }

    /// Serve orders from `input` until it reaches EOF, then cancel what still runs and return.
    pub fn serve(mut self, input: OwnedFd) -> Result<(), SpawnerError> {
        fcntl(input.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(SpawnerError::Poll)?;
        fcntl(self.out.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(SpawnerError::Poll)?;
        let hello = Event::Hello {
            language: LANGUAGE.into(),
            version: self.runtime.version.clone(),
            missing_layers: self.inflight.jails().missing_layers().to_vec(),
        };
        self.emit(&hello)?;
        let mut eof = false;
        loop {
            if eof {
                // Runs still waiting for their jail end as cancelled, like running ones.
                let mut reports = Vec::new();
                self.inflight.shut_down(&mut reports);
                self.report(reports)?;
                if !self.inflight.has_running() {
                    break;
                }
            } else {
                self.inflight.refill(Instant::now());
            }
            let events = self.wait(input.as_fd(), eof)?;
            // The indices in `events` refer to the preparing and running jails as they are
            // now, so everything that uses them runs before anything that reorders those lists
            // (orders: a cancel removes a preparing jail; reaping removes running ones).
            let mut ready_preps = Vec::new();
            let mut control = false;
            for (tag, ev) in events {
                match tag {
                    Tag::Control => control = true,
                    Tag::Out => self.flush_some()?,
                    Tag::Prep(i) => ready_preps.push(i),
                    Tag::Run(i, role) => {
                        let a = &mut self.inflight.running_mut()[i];
                        if let Err(e) = a.run.handle(role, ev) {
                            log(&format!("run {}: {e}", a.order.id));
                        }
                    }
                }
            }
            let mut reports = Vec::new();
            self.inflight
                .prepared(ready_preps, Instant::now(), &mut reports);
            self.report(reports)?;
            if control {
                eof |= self.read_orders(input.as_fd())?;
            }
            let mut reports = Vec::new();
            self.inflight.reap(&mut reports);
            self.report(reports)?;
        }
        self.flush_all()?;
        Ok(())
    }

    /// Poll everything once; returns the descriptors that are ready.
    fn wait(
        &mut self,
        control: BorrowedFd<'_>,
        eof: bool,
    ) -> Result<Vec<(Tag, PollFlags)>, SpawnerError> {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for a in self.inflight.running_mut() {
            if now >= a.run.next_wakeup() {
                let _ = a.run.tick();
            }
            wake = wake.min(a.run.next_wakeup());
        }
        let mut fds = Vec::new();
        let mut tags = Vec::new();
        if !eof {
            fds.push(PollFd::new(control, PollFlags::POLLIN));
            tags.push(Tag::Control);
        }
        if !self.outbuf.is_empty() {
            fds.push(PollFd::new(self.out.as_fd(), PollFlags::POLLOUT));
            tags.push(Tag::Out);
        }
        for (i, p) in self.inflight.preparing().enumerate() {
            fds.push(PollFd::new(p.ready_fd(), PollFlags::POLLIN));
            tags.push(Tag::Prep(i));
        }
        for (i, a) in self.inflight.running().enumerate() {
            for (fd, ev, role) in a.run.interest() {
                fds.push(PollFd::new(fd, ev));
                tags.push(Tag::Run(i, role));
            }
        }
        let ms = wake
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 1000) as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(SpawnerError::Poll(e)),
        }
        Ok(fds
            .iter()
            .zip(tags)
            .filter_map(|(f, t)| f.revents().filter(|e| !e.is_empty()).map(|e| (t, e)))
            .collect())
    }

    /// Read what the server sent; handle complete lines. Returns true at EOF.
    fn read_orders(&mut self, fd: BorrowedFd<'_>) -> Result<bool, SpawnerError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    self.orders.push(&chunk[..n]);
                    self.handle_orders()?;
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(SpawnerError::Io(io::Error::from(e))),
            }
        }
    }

    /// Carry out the complete order lines received so far.
    fn handle_orders(&mut self) -> io::Result<()> {
        while let Some(line) = self.orders.next_line() {
            let mut reports = Vec::new();
            match line {
                Line::TooLong => log("order line too long; dropped"),
                Line::Complete(line) => match parse_order(&line) {
                    Ok(Order::Run(o)) => self.start_run(o, &mut reports),
                    Ok(Order::Cancel { id }) => self.inflight.cancel(&id, &mut reports),
                    Err(e) => log(&format!("bad order line: {e}")),
                },
            }
            self.report(reports)?;
        }
        Ok(())
    }

    /// Build the run's payload and jail spec, and hand it to the bookkeeping.
    fn start_run(&mut self, order: RunOrder, out: &mut Vec<Report>) {
        let files = order
            .files
            .iter()
            .map(|f| WorkFile {
                name: f.name.clone(),
                content: f.content.clone().into_bytes(),
            })
            .collect();
        let payload = self.runtime.payload_files(
            files,
            order.mode,
            order.stdin.clone().into_bytes(),
            &order.args,
        );
        if let Err(e) = payload.validate(&order.limits) {
            return out.push(Report::Failed(order.id, e.to_string()));
        }
        let spec = self.runtime.jail_spec(order.limits);
        self.inflight.start(order, &spec, payload, out);
    }

    /// The `finished` event of a run: its record.
    fn finished(&self, order: RunOrder, outcome: Outcome) -> Event {
        let meta = RunMeta {
            id: order.id.clone(),
            language: LANGUAGE.into(),
            version: self.runtime.version.clone(),
            created_at: order.created_at.clone(),
        };
        let record = build_record(meta, order.mode, &order.limits, outcome);
        Event::Finished {
            id: order.id,
            record: Box::new(record),
        }
    }
}

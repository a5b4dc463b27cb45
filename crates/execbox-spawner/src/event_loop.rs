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

struct Prep {
    preparing: Preparing,
    /// The run waiting for this jail, or `None` for a pool jail.
    order: Option<(RunOrder, Payload)>,
}

struct Active {
    order: RunOrder,
    sup: Supervisor,
}

#[derive(Clone, Copy)]
enum Tag {
    Control,
    Out,
    Prep(usize),
    Run(usize, Role),
}

/// The spawner state.
pub struct Spawner {
    jailer: Jailer,
    runtime: PythonRuntime,
    cfg: SpawnerConfig,
    default_spec: JailSpec,
    pool: VecDeque<Prepared>,
    preparing: Vec<Prep>,
    running: Vec<Active>,
    inbuf: Vec<u8>,
    out: OwnedFd,
    /// Events not yet written: the loop never blocks on a slow reader.
    outbuf: VecDeque<u8>,
    refill_after: Instant,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("pool", &self.pool.len())
            .field("preparing", &self.preparing.len())
            .field("running", &self.running.len())
            .finish()
    }
}

/// The language of the one runtime there is.
const LANGUAGE: &str = "python";

fn log(msg: &str) {
    eprintln!("execbox-spawner: {msg}");
}

impl Spawner {
    /// A spawner that writes events to `out` (made non-blocking).
    pub fn new(jailer: Jailer, runtime: PythonRuntime, cfg: SpawnerConfig, out: OwnedFd) -> Self {
        let default_spec = runtime.jail_spec(cfg.default_limits);
        Self {
            jailer,
            runtime,
            cfg,
            default_spec,
            pool: VecDeque::new(),
            preparing: Vec::new(),
            running: Vec::new(),
            inbuf: Vec::new(),
            out,
            outbuf: VecDeque::new(),
            refill_after: Instant::now(),
        }
    }

    /// Queue an event and write what the pipe takes now.
    fn emit(&mut self, ev: &Event) -> io::Result<()> {
        self.outbuf.extend(ev.to_line());
        self.flush_some()
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
            missing_layers: self.jailer.missing_layers().to_vec(),
        };
        self.emit(&hello)?;
        let mut eof = false;
        loop {
            if eof {
                for a in &mut self.running {
                    a.sup.cancel();
                }
                // Runs still waiting for their jail end as cancelled, like running ones.
                let waiting: Vec<RunOrder> = self
                    .preparing
                    .iter_mut()
                    .filter_map(|p| p.order.take().map(|(o, _)| o))
                    .collect();
                self.preparing.clear();
                for order in waiting {
                    let outcome = Outcome {
                        cancelled: true,
                        ..Outcome::default()
                    };
                    self.finished(order, outcome)?;
                }
                if self.running.is_empty() {
                    break;
                }
            } else {
                self.refill();
            }
            let events = self.wait(input.as_fd(), eof)?;
            // The indices in `events` refer to `preparing` and `running` as they are now, so
            // everything that uses them runs before anything that reorders those lists
            // (orders: a cancel removes from `preparing`; finish_runs removes from `running`).
            let mut ready_preps = Vec::new();
            let mut control = false;
            for (tag, ev) in events {
                match tag {
                    Tag::Control => control = true,
                    Tag::Out => self.flush_some()?,
                    Tag::Prep(i) => ready_preps.push(i),
                    Tag::Run(i, role) => {
                        if let Err(e) = self.running[i].sup.handle(role, ev) {
                            log(&format!("run {}: {e}", self.running[i].order.id));
                        }
                    }
                }
            }
            self.finish_preps(ready_preps)?;
            if control {
                eof |= self.read_orders(input.as_fd())?;
            }
            self.finish_runs()?;
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
        for a in &mut self.running {
            if now >= a.sup.next_wakeup() {
                let _ = a.sup.tick();
            }
            wake = wake.min(a.sup.next_wakeup());
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
        for (i, p) in self.preparing.iter().enumerate() {
            fds.push(PollFd::new(p.preparing.ready_fd(), PollFlags::POLLIN));
            tags.push(Tag::Prep(i));
        }
        for (i, a) in self.running.iter().enumerate() {
            for (fd, ev, role) in a.sup.interest() {
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

    /// Keep `cfg.pool` default jails prepared (or being prepared).
    fn refill(&mut self) {
        if Instant::now() < self.refill_after {
            return;
        }
        let in_flight = self.preparing.iter().filter(|p| p.order.is_none()).count();
        for _ in self.pool.len() + in_flight..self.cfg.pool {
            match self.jailer.start_prepare(&self.default_spec) {
                Ok(p) => self.preparing.push(Prep {
                    preparing: p,
                    order: None,
                }),
                Err(e) => {
                    log(&format!("cannot prepare a pool jail: {e}"));
                    self.refill_after = Instant::now() + Duration::from_secs(1);
                    return;
                }
            }
        }
    }

    /// Read what the server sent; handle complete lines. Returns true at EOF.
    fn read_orders(&mut self, fd: BorrowedFd<'_>) -> Result<bool, SpawnerError> {
        let mut chunk = [0u8; 64 * 1024];
        let mut eof = false;
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(SpawnerError::Io(io::Error::from(e))),
            }
        }
        while let Some(pos) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=pos).collect();
            match serde_json::from_slice::<Order>(&line) {
                Ok(Order::Run(o)) => self.start_run(o)?,
                Ok(Order::Cancel { id }) => self.cancel(&id)?,
                Err(e) => log(&format!("bad order line: {e}")),
            }
        }
        if self.inbuf.len() > MAX_LINE {
            log("order line too long; dropped");
            self.inbuf.clear();
        }
        Ok(eof)
    }

    fn start_run(&mut self, order: RunOrder) -> io::Result<()> {
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
            return self.emit(&Event::Failed {
                id: order.id,
                message: e.to_string(),
            });
        }
        let spec = self.runtime.jail_spec(order.limits);
        if spec == self.default_spec {
            while let Some(p) = self.pool.pop_front() {
                match p.launch(&payload) {
                    Ok(sup) => return self.started(order, sup),
                    // A pooled jail that died while idle: try the next one.
                    Err(e) => log(&format!("pooled jail unusable: {e}")),
                }
            }
        }
        match self.jailer.start_prepare(&spec) {
            Ok(p) => {
                self.preparing.push(Prep {
                    preparing: p,
                    order: Some((order, payload)),
                });
                Ok(())
            }
            Err(e) => self.emit(&Event::Failed {
                id: order.id,
                message: format!("prepare: {e}"),
            }),
        }
    }

    fn started(&mut self, order: RunOrder, sup: Supervisor) -> io::Result<()> {
        let id = order.id.clone();
        self.running.push(Active { order, sup });
        self.emit(&Event::Started { id })
    }

    fn cancel(&mut self, id: &str) -> io::Result<()> {
        if let Some(a) = self.running.iter_mut().find(|a| a.order.id == id) {
            a.sup.cancel();
            return Ok(());
        }
        if let Some(i) = self
            .preparing
            .iter()
            .position(|p| p.order.as_ref().is_some_and(|(o, _)| o.id == id))
        {
            let prep = self.preparing.swap_remove(i);
            if let Some((order, _)) = prep.order {
                let outcome = Outcome {
                    cancelled: true,
                    ..Outcome::default()
                };
                return self.finished(order, outcome);
            }
        }
        Ok(())
    }

    fn finish_preps(&mut self, mut ready: Vec<usize>) -> io::Result<()> {
        ready.sort_unstable_by(|a, b| b.cmp(a)); // swap_remove from the back first
        for i in ready {
            let prep = self.preparing.swap_remove(i);
            match (prep.preparing.finish(), prep.order) {
                (Ok(p), None) => self.pool.push_back(p),
                (Ok(p), Some((order, payload))) => match p.launch(&payload) {
                    Ok(sup) => self.started(order, sup)?,
                    Err(e) => self.emit(&Event::Failed {
                        id: order.id,
                        message: format!("launch: {e}"),
                    })?,
                },
                (Err(e), None) => {
                    log(&format!("pool jail failed to prepare: {e}"));
                    self.refill_after = Instant::now() + Duration::from_secs(1);
                }
                (Err(e), Some((order, _))) => self.emit(&Event::Failed {
                    id: order.id,
                    message: format!("prepare: {e}"),
                })?,
            }
        }
        Ok(())
    }

    fn finish_runs(&mut self) -> io::Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].sup.is_done() {
                i += 1;
                continue;
            }
            let Active { order, sup } = self.running.swap_remove(i);
            match sup.finish() {
                Ok(outcome) => self.finished(order, outcome)?,
                Err(e) => self.emit(&Event::Failed {
                    id: order.id,
                    message: format!("teardown: {e}"),
                })?,
            }
        }
        Ok(())
    }

    fn finished(&mut self, order: RunOrder, outcome: Outcome) -> io::Result<()> {
        let meta = RunMeta {
            id: order.id.clone(),
            language: LANGUAGE.into(),
            version: self.runtime.version.clone(),
            created_at: order.created_at.clone(),
        };
        let record = build_record(meta, order.mode, &order.limits, outcome);
        self.emit(&Event::Finished {
            id: order.id,
            record: Box::new(record),
        })
    }
}

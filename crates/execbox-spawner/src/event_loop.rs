//! The spawner's `poll` loop: orders in on one descriptor, events out on another, every jail
//! (preparing, pooled, running) supervised from the same single thread.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use execbox_jail::{JailError, JailSpec, Jailer, Outcome, Role, WorkFile};
use execbox_proto::cases::{severity, summarise};
use execbox_proto::live::Stage;
use execbox_proto::spawner::{Event, Order, RunOrder, SpawnerConfig, MAX_LINE};
use execbox_proto::{
    now_rfc3339, CaseReport, ErrorBody, Limits, Mode, OutputFile, RunRecord, RunStatus,
    RuntimeInfo, StepReport,
};
use execbox_runtime::{
    build_record, compile_verdict, read_files, wrapped_status, CompileVerdict, FilesCap, Package,
    RunMeta,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::framing::{parse_order, Line, LineBuffer};
use crate::inflight::{log, InFlight, Report};
use crate::live::{signal_of, Live};
use crate::warm::{Pools, StagePayload, StageSpec, Warm};

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
    /// No runtime package is installed.
    #[error("no runtime package found in {0} (and the built-in Python's environment is missing: run `make runtime`)")]
    NoPackages(String),
    /// The configuration names languages and no installed package is one of them.
    #[error("no runtime package for {languages} in {dir} (or its toolchain is not installed)")]
    NoLanguage {
        /// The languages asked for.
        languages: String,
        /// The runtimes directory.
        dir: String,
    },
    /// No runtime passed its smoke test.
    #[error("no runtime passed its smoke test through the jail")]
    NoRuntime,
}

/// Smoke tests running at once at start-up.
/// A smoke test's limits: the defaults, with time to spare (up to the operator's maxima).
/// Start-up runs every smoke test at once on a machine that may be busy; a runtime that is
/// merely slow to start (the JVM on a loaded 2-core host) must not be dropped for it.
fn smoke_limits(defaults: Limits, max: &Limits) -> Limits {
    const SMOKE_TIME_MS: u64 = 30_000;
    Limits {
        wall_time_ms: defaults
            .wall_time_ms
            .max(SMOKE_TIME_MS)
            .min(max.wall_time_ms),
        cpu_time_ms: defaults.cpu_time_ms.max(SMOKE_TIME_MS).min(max.cpu_time_ms),
        ..defaults
    }
}

fn smoke_parallelism() -> usize {
    execbox_proto::defaults::cpus().clamp(1, 4)
}

/// Where one order (a user's run or a smoke test) is.
#[derive(Debug)]
struct Track {
    /// Index into the packages.
    pkg: usize,
    /// The runtime version the record names (empty while a smoke test learns it).
    version: String,
    /// A start-up smoke test, not reported to the server.
    smoke: bool,
    /// In its compile stage.
    compiling: bool,
    /// The compile step, once compiled.
    compile: Option<StepReport>,
    /// `started` was reported (a two-stage run reports it once).
    started: bool,
    /// The case being run (an index into the order's cases, when it has some).
    case: usize,
    /// Reports of the cases that ran.
    reports: Vec<CaseReport>,
    /// The compile stage's artefacts, unpacked in every case's run jail.
    archive: Option<Vec<u8>>,
    /// Layers missing in any stage (degraded runs).
    missing_layers: Vec<String>,
    /// A live run: stages and output are reported as they happen.
    live: bool,
    /// Its run stage keeps stdin open (a live run without cases).
    interactive: bool,
    /// Its order has test cases.
    has_cases: bool,
}

#[derive(Clone, Copy)]
enum Tag {
    Control,
    Out,
    Prep(usize),
    Run(usize, Role),
    /// A template's control socket: (slot, is the successor).
    Template(usize, bool),
}

/// The spawner state.
pub struct Spawner {
    packages: Vec<Package>,
    /// Runtimes that passed their smoke test: (package index, what is offered).
    offered: Vec<(usize, RuntimeInfo)>,
    /// Orders in flight, by id.
    tracks: HashMap<String, Track>,
    /// Packages whose smoke test has not started yet.
    smoke_queue: VecDeque<usize>,
    /// Smoke tests not finished yet.
    smoke_pending: usize,
    /// Smoke tests running.
    smoke_running: usize,
    hello_sent: bool,
    default_pkg: usize,
    default_limits: Limits,
    max_limits: Limits,
    /// Caps on the files a run returns from `/work/out`.
    files_cap: FilesCap,
    inflight: InFlight<Pools>,
    /// The warm counters last sent.
    warm_sent: execbox_proto::spawner::WarmStats,
    orders: LineBuffer,
    out: OwnedFd,
    /// Events not yet written: the loop never blocks on a slow reader.
    outbuf: VecDeque<u8>,
    /// Output taps and held stdin of live runs.
    live: Live,
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

/// The language `/execute` uses (orders without a runtime).
const DEFAULT_LANGUAGE: &str = "python";

impl Spawner {
    /// A spawner for `packages` (not empty) that writes events to `out` (made non-blocking).
    /// It smoke-tests every package through the jail before it says hello.
    pub fn new(jailer: Jailer, packages: Vec<Package>, cfg: SpawnerConfig, out: OwnedFd) -> Self {
        let default_pkg = packages
            .iter()
            .position(|p| p.manifest.language == DEFAULT_LANGUAGE)
            .unwrap_or(0);
        let default_spec = packages
            .get(default_pkg)
            .map(|p| p.run_spec(cfg.default_limits, &cfg.max_limits))
            .unwrap_or(JailSpec {
                binds: vec![],
                limits: cfg.default_limits,
            });
        let default_spec = StageSpec {
            jail: default_spec,
            warm: packages
                .get(default_pkg)
                .filter(|p| p.warm_capable())
                .map(|_| (default_pkg, crate::warm::Variant::Modules)),
        };
        let pools = Pools {
            jailer,
            warm: std::cell::RefCell::new(Warm::new(cfg.warm.clone())),
            cold_share: crate::warm::cold_share(cfg.pool),
        };
        Self {
            inflight: InFlight::new(pools, default_spec, cfg.pool),
            warm_sent: Default::default(),
            smoke_queue: (0..packages.len()).collect(),
            smoke_pending: packages.len(),
            smoke_running: 0,
            hello_sent: false,
            packages,
            offered: Vec::new(),
            tracks: HashMap::new(),
            default_pkg,
            default_limits: cfg.default_limits,
            max_limits: cfg.max_limits,
            files_cap: FilesCap {
                files: cfg.max_output_files,
                bytes: cfg.max_output_files_bytes,
            },
            orders: LineBuffer::new(MAX_LINE),
            out,
            outbuf: VecDeque::new(),
            live: Live::default(),
        }
    }

    /// Queue an event and write what the pipe takes now.
    fn emit(&mut self, ev: &Event) -> io::Result<()> {
        self.outbuf.extend(ev.to_line());
        self.flush_some()
    }

    /// Tell the server what the bookkeeping reported, in order.
    /// A compile stage's end starts the run stage, whose reports join the queue; smoke
    /// tests are judged here and never reported.
    fn report(&mut self, reports: Vec<Report>) -> io::Result<()> {
        let mut queue: VecDeque<Report> = reports.into();
        while let Some(r) = queue.pop_front() {
            let mut more = Vec::new();
            match r {
                Report::Started(id) => {
                    let Some(t) = self.tracks.get_mut(&id) else {
                        continue;
                    };
                    let tell = !t.started && !t.smoke;
                    t.started = true;
                    let stage = t.live.then(|| {
                        let stage = if t.compiling {
                            Stage::Compile
                        } else {
                            Stage::Run
                        };
                        let case = t.has_cases.then_some(t.case);
                        (stage, case, t.interactive && !t.compiling)
                    });
                    if tell {
                        self.emit(&Event::Started { id: id.clone() })?;
                    }
                    if let Some((stage, case, interactive)) = stage {
                        self.stage_started(&id, interactive);
                        self.emit(&Event::Stage { id, stage, case })?;
                    }
                }
                Report::Ended(end) => {
                    let (order, outcome) = *end;
                    if let Some(rec) = self.stage_ended(order, outcome, &mut more) {
                        self.finish(rec)?;
                    }
                }
                Report::Failed(id, message) => {
                    self.live.forget(&id);
                    let smoke = self.tracks.remove(&id).is_some_and(|t| t.smoke);
                    if smoke {
                        log(&format!("{id}: {message}"));
                        self.smoke_done(None)?;
                    } else {
                        self.emit(&Event::Failed { id, message })?;
                    }
                }
            }
            queue.extend(more);
        }
        self.send_warm_stats()
    }

    /// Send the warm counters if they changed.
    fn send_warm_stats(&mut self) -> io::Result<()> {
        // The server expects the hello first; templates may be ready before the last smoke
        // test is over.
        if !self.hello_sent {
            return Ok(());
        }
        let mut stats = self.inflight.jails().warm.borrow().stats.clone();
        stats.pool_depth = self.inflight.pool().filter(|p| p.is_warm()).count() as u64;
        if stats != self.warm_sent {
            self.warm_sent = stats.clone();
            self.emit(&Event::Warm(stats))?;
        }
        Ok(())
    }

    /// A stage is over: the final record, or `None` when another stage (the run after the
    /// compile, the next case) has started.
    fn stage_ended(
        &mut self,
        order: RunOrder,
        mut outcome: Outcome,
        out: &mut Vec<Report>,
    ) -> Option<(Track, RunOrder, RunRecord)> {
        let mut t = self.tracks.remove(&order.id)?;
        let pkg = &self.packages[t.pkg];
        let meta = RunMeta {
            id: order.id.clone(),
            language: pkg.manifest.language.clone(),
            version: t.version.clone(),
            created_at: order.created_at.clone(),
        };
        for l in &outcome.missing_layers {
            if !t.missing_layers.contains(l) {
                t.missing_layers.push(l.clone());
            }
        }
        if t.compiling {
            let limits = pkg.compile_spec(order.limits, &self.max_limits).limits;
            // The compile wrapper's shell passes the compiler's status on as 128+N too.
            let (exit_code, signal) = wrapped_status(outcome.exit_code, outcome.signal);
            outcome.unwrap_status(exit_code, signal, &limits);
            return match compile_verdict(meta, &limits, outcome) {
                CompileVerdict::Failed(rec) => Some((t, order, *rec)),
                CompileVerdict::Compiled(step, archive) => {
                    t.compiling = false;
                    t.compile = Some(*step);
                    t.archive = Some(archive);
                    self.launch_run(order, t, out);
                    None
                }
            };
        }
        let spec = pkg.run_spec(order.limits, &self.max_limits);
        let channel = match files_out(&order, &spec, &self.files_cap) {
            Some(_) => {
                let (exit_code, signal) = wrapped_status(outcome.exit_code, outcome.signal);
                outcome.unwrap_status(exit_code, signal, &spec.limits);
                Some(std::mem::take(&mut outcome.result))
            }
            None => None,
        };
        let mut rec = build_record(meta, order.mode, &spec.limits, outcome);
        if let (Some(chan), Some(cut_at)) = (channel, files_out(&order, &spec, &self.files_cap)) {
            rec.files = take_files(&mut rec, &chan, &self.files_cap, cut_at);
        }
        rec.compile = t.compile.take();
        if order.cases.is_empty() {
            return Some((t, order, rec));
        }
        // One case is over: judge it, then run the next one or conclude.
        let case = &order.cases[t.case];
        let passed = case.expected_stdout.as_deref().map(|want| {
            rec.status == RunStatus::Ok
                && order
                    .compare
                    .matches(want, rec.run.as_ref().map_or("", |r| r.stdout.as_str()))
        });
        let cancelled = rec.status == RunStatus::Cancelled;
        t.reports.push(CaseReport {
            index: t.case,
            status: rec.status,
            error: rec.error.take(),
            passed,
            run: rec.run.take(),
            files: std::mem::take(&mut rec.files),
        });
        t.compile = rec.compile.take();
        t.case += 1;
        if t.case < order.cases.len() && !cancelled {
            self.launch_run(order, t, out);
            return None;
        }
        let rec = cases_record(&mut t, &order, rec);
        Some((t, order, rec))
    }

    /// Start the run stage of `order` (of its current case, when it has cases).
    fn launch_run(&mut self, order: RunOrder, t: Track, out: &mut Vec<Report>) {
        let pkg = &self.packages[t.pkg];
        let (stdin, args) = match order.cases.get(t.case) {
            Some(c) => (&c.stdin, &c.args),
            None => (&order.stdin, &order.args),
        };
        let spec = pkg.run_spec(order.limits, &self.max_limits);
        let mut cold = pkg.run_payload(
            work_files(&order),
            t.archive.clone(),
            order.mode,
            stdin.clone().into_bytes(),
            args,
            files_out(&order, &spec, &self.files_cap),
        );
        if order.live {
            // Interpreters that buffer a pipe's output (Python) write as they print. (A warm
            // run's template interpreter runs with -u already.)
            cold.env.push("PYTHONUNBUFFERED=1".into());
        }
        // The warm path serves main mode of a runtime with a template (no compile stage, no
        // files out, no cases); everything else, and any run when no template is ready, is
        // cold.
        let warm = (pkg.warm_capable()
            && order.mode == Mode::Main
            && t.archive.is_none()
            && order.cases.is_empty()
            && !t.smoke)
            .then(|| {
                let mut warm = self.inflight.jails().warm.borrow_mut();
                let sources: Vec<&str> = order.files.iter().map(|f| f.content.as_str()).collect();
                let variant = crate::warm::variant_for(&sources, &warm.modules(pkg));
                warm.note_demand(variant);
                let payload = pkg.warm_payload(
                    work_files(&order),
                    order.mode,
                    stdin.clone().into_bytes(),
                    args,
                );
                crate::warm::WarmPayload {
                    payload,
                    pkg: t.pkg,
                    variant,
                    jail: spec.clone(),
                }
            });
        let stage = StageSpec {
            warm: warm.as_ref().map(|w| (w.pkg, w.variant)),
            jail: spec,
        };
        self.launch(order, t, stage, StagePayload { cold, warm }, out);
    }

    /// A run or smoke test is over.
    fn finish(&mut self, (t, order, rec): (Track, RunOrder, RunRecord)) -> io::Result<()> {
        self.live.forget(&order.id);
        if !t.smoke {
            return self.emit(&Event::Finished {
                id: order.id,
                record: Box::new(rec),
            });
        }
        let pkg = &self.packages[t.pkg];
        let verdict = match (&rec.status, &rec.run) {
            (RunStatus::Ok, Some(run)) => pkg.smoke_verdict(&run.stdout),
            _ => None,
        };
        match &verdict {
            Some(v) => log(&format!(
                "runtime {} {v} ({}) passed its smoke test",
                pkg.manifest.language,
                pkg.dir.display()
            )),
            None => log(&format!(
                "runtime {} ({}) failed its smoke test and is not offered: {:?} {}",
                pkg.manifest.language,
                pkg.dir.display(),
                rec.status,
                serde_json::to_string(&rec).unwrap_or_default()
            )),
        }
        let info = verdict.map(|v| (t.pkg, pkg.info(&v)));
        self.smoke_done(info)
    }

    /// Count a finished smoke test; start queued ones; say hello after the last.
    fn smoke_done(&mut self, passed: Option<(usize, RuntimeInfo)>) -> io::Result<()> {
        self.smoke_running = self.smoke_running.saturating_sub(1);
        self.smoke_pending = self.smoke_pending.saturating_sub(1);
        if let Some((pkg, info)) = passed.as_ref().cloned() {
            let package = &self.packages[pkg];
            let run = package.run_spec(self.default_limits, &self.max_limits);
            self.inflight
                .jails()
                .warm
                .borrow_mut()
                .enable(pkg, package, &run);
            // Two packages with the same language and version: the first found wins.
            if !self
                .offered
                .iter()
                .any(|(_, o)| o.to_ref() == info.to_ref())
            {
                self.offered.push((pkg, info));
            }
        }
        let mut reports = Vec::new();
        self.start_smokes(&mut reports);
        self.report(reports)?;
        if self.smoke_pending == 0 && !self.hello_sent {
            self.say_hello()?;
        }
        Ok(())
    }

    /// Start smoke tests up to the parallelism.
    fn start_smokes(&mut self, out: &mut Vec<Report>) {
        while self.smoke_running < smoke_parallelism() {
            let Some(i) = self.smoke_queue.pop_front() else {
                return;
            };
            self.smoke_running += 1;
            let pkg = &self.packages[i];
            let order = RunOrder {
                id: format!("smoke-{i}-{}", pkg.manifest.language),
                created_at: now_rfc3339(),
                mode: Mode::Program,
                files: pkg
                    .smoke_files()
                    .into_iter()
                    .map(|f| execbox_proto::SourceFile {
                        name: f.name,
                        content: String::from_utf8_lossy(&f.content).into_owned(),
                    })
                    .collect(),
                stdin: String::new(),
                args: vec![],
                limits: smoke_limits(self.default_limits, &self.max_limits),
                runtime: None,
                cases: vec![],
                compare: Default::default(),
                live: false,
                interactive: false,
            };
            self.begin(order, i, String::new(), true, out);
        }
    }

    /// Say hello with what passed (sorted by language, then version).
    fn say_hello(&mut self) -> io::Result<()> {
        self.hello_sent = true;
        self.offered.sort_by(|a, b| {
            let v = |i: &RuntimeInfo| semver::Version::parse(&i.version).ok();
            (&a.1.language, v(&a.1)).cmp(&(&b.1.language, v(&b.1)))
        });
        let default = self
            .offered
            .iter()
            .filter(|(p, _)| *p == self.default_pkg)
            .map(|(_, i)| i.clone())
            .next()
            .or_else(|| self.offered.first().map(|(_, i)| i.clone()));
        let Some(default) = default else {
            self.emit(&Event::Fatal {
                message: SpawnerError::NoRuntime.to_string(),
            })?;
            return Ok(());
        };
        let hello = Event::Hello {
            language: default.language,
            version: default.version,
            missing_layers: self.inflight.jails().jailer.missing_layers().to_vec(),
            runtimes: self.offered.iter().map(|(_, i)| i.clone()).collect(),
        };
        self.emit(&hello)?;
        // Counters that changed before the hello (templates ready early) follow it.
        self.send_warm_stats()
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
        let mut reports = Vec::new();
        self.start_smokes(&mut reports);
        self.report(reports)?;
        let mut eof = false;
        loop {
            if self.hello_sent && self.offered.is_empty() {
                self.flush_all()?;
                return Err(SpawnerError::NoRuntime);
            }
            if eof {
                // Runs still waiting for their jail end as cancelled, like running ones.
                let mut reports = Vec::new();
                self.inflight.shut_down(&mut reports);
                self.report(reports)?;
                if !self.inflight.has_running() {
                    break;
                }
            } else {
                self.inflight.jails().start_templates();
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
                    Tag::Template(i, next) => {
                        let serving = self.inflight.jails().warm.borrow_mut().on_ctl(i, next);
                        if serving {
                            // Pooled cold jails (prepared while no template was ready) beyond
                            // the cold share make way for the template's children.
                            let keep = self.inflight.jails().cold_share;
                            self.inflight.trim_reserved(keep);
                        }
                        self.send_warm_stats()?;
                    }
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
            // What live runs read, before a run that is over is reaped (its last output
            // precedes its record).
            self.send_live_output()?;
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
        if let Some(t) = self.live.next_deadline() {
            wake = wake.min(t);
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
        let warm = self.inflight.jails().warm.borrow();
        for (fd, i, next) in warm.ctl_fds() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            tags.push(Tag::Template(i, next));
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
                    Ok(Order::Stdin { id, data, eof }) => self.stdin(&id, data.as_bytes(), eof),
                    Ok(Order::Signal { id, signal }) => {
                        if let Some(a) = self.running(&id) {
                            a.run.signal(signal_of(signal));
                        }
                    }
                    Err(e) => log(&format!("bad order line: {e}")),
                },
            }
            self.report(reports)?;
        }
        Ok(())
    }

    /// The running stage of run `id`.
    fn running(&mut self, id: &str) -> Option<&mut crate::inflight::Active<Pools>> {
        self.inflight
            .running_mut()
            .iter_mut()
            .find(|a| a.order.id == id)
    }

    /// A live stage of `id` started: count its output from zero; an interactive run stage
    /// keeps stdin open and gets what was held for it.
    fn stage_started(&mut self, id: &str, interactive: bool) {
        self.live.stage_started(id);
        if !interactive {
            return;
        }
        let held = self.live.take_held(id);
        if let Some(a) = self.running(id) {
            a.run.keep_stdin_open();
            if let Some(h) = held {
                a.run.push_stdin(&h.data, h.eof);
            }
        }
    }

    /// More stdin for run `id`: to its running run stage, else held until that starts.
    fn stdin(&mut self, id: &str, data: &[u8], eof: bool) {
        let Some(t) = self.tracks.get(id) else {
            return;
        };
        if !t.interactive {
            return;
        }
        let in_run_stage = !t.compiling && t.started;
        let max = self.max_limits.stdin_bytes as usize;
        match self.running(id) {
            Some(a) if in_run_stage => a.run.push_stdin(data, eof),
            _ => {
                if !self.live.hold(id, data, eof, max) {
                    log(&format!("{id}: stdin beyond {max} bytes held; dropped"));
                }
            }
        }
    }

    /// Output events for what every live run read since the last call.
    fn send_live_output(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut events = Vec::new();
        for a in self.inflight.running() {
            if a.order.live {
                let run = &a.run;
                events.extend(self.live.chunks(&a.order.id, now, |i| run.output(i)));
            }
        }
        for e in events {
            self.emit(&e)?;
        }
        Ok(())
    }

    /// Resolve the order's runtime and start its first stage.
    fn start_run(&mut self, order: RunOrder, out: &mut Vec<Report>) {
        let found = match &order.runtime {
            Some(r) => self.offered.iter().find(|(_, i)| i.to_ref() == *r),
            None => self
                .offered
                .iter()
                .filter(|(_, i)| i.language == DEFAULT_LANGUAGE)
                .max_by_key(|(_, i)| semver::Version::parse(&i.version).ok()),
        };
        let Some((pkg, info)) = found.cloned() else {
            let msg = format!("runtime {:?} is not offered by this spawner", order.runtime);
            return out.push(Report::Failed(order.id, msg));
        };
        if !info.modes.contains(&order.mode) {
            let msg = format!(
                "{} does not support mode {}",
                info.language,
                order.mode.as_str()
            );
            return out.push(Report::Failed(order.id, msg));
        }
        self.begin(order, pkg, info.version, false, out);
    }

    /// Start an order's first stage (compile, or run) with package `pkg`.
    fn begin(
        &mut self,
        order: RunOrder,
        pkg: usize,
        version: String,
        smoke: bool,
        out: &mut Vec<Report>,
    ) {
        let p = &self.packages[pkg];
        let compile = p.compile_payload(work_files(&order));
        let track = Track {
            pkg,
            version,
            smoke,
            compiling: compile.is_some(),
            compile: None,
            started: false,
            case: 0,
            reports: Vec::new(),
            archive: None,
            missing_layers: Vec::new(),
            live: order.live,
            interactive: order.live && order.interactive && order.cases.is_empty(),
            has_cases: !order.cases.is_empty(),
        };
        match compile {
            Some(payload) => {
                let spec = StageSpec {
                    jail: p.compile_spec(order.limits, &self.max_limits),
                    warm: None,
                };
                let payload = StagePayload {
                    cold: payload,
                    warm: None,
                };
                self.launch(order, track, spec, payload, out);
            }
            None => self.launch_run(order, track, out),
        }
    }

    /// Check a stage's payload and hand it to the bookkeeping.
    fn launch(
        &mut self,
        order: RunOrder,
        track: Track,
        spec: StageSpec,
        payload: StagePayload,
        out: &mut Vec<Report>,
    ) {
        self.tracks.insert(order.id.clone(), track);
        if let Err(e) = payload.cold.validate(&spec.jail.limits) {
            return out.push(Report::Failed(order.id, e.to_string()));
        }
        self.inflight.start(order, &spec, payload, out);
    }
}

/// The byte cap of the `/work/out` archive for `order`'s run jail `spec`, when its files come
/// back (program mode): the files' cap, within the result channel's (so the channel never
/// overflows: a cut archive is judged by [`read_files`]).
fn files_out(order: &RunOrder, spec: &JailSpec, cap: &FilesCap) -> Option<u64> {
    (order.mode == Mode::Program).then(|| {
        cap.channel_bytes()
            .min(spec.limits.result_bytes.saturating_sub(1))
    })
}

/// The files of a finished run's channel; a run that ended well but wrote too many, too big
/// or invalid files ends as `output_limit` (`output_files_limit`) or `runtime_error`
/// (`invalid_output_file`) instead, with no files.
fn take_files(rec: &mut RunRecord, chan: &[u8], cap: &FilesCap, cut_at: u64) -> Vec<OutputFile> {
    if !matches!(rec.status, RunStatus::Ok | RunStatus::RuntimeError) {
        return vec![];
    }
    match read_files(chan, cap, cut_at) {
        Ok(files) => files,
        Err(e) => {
            let limit = e.code == execbox_proto::ErrorCode::OutputFilesLimit;
            if limit || rec.status == RunStatus::Ok {
                rec.status = if limit {
                    RunStatus::OutputLimit
                } else {
                    RunStatus::RuntimeError
                };
                rec.error = Some(e);
            }
            vec![]
        }
    }
}

/// The final record of a run with cases: its status is the worst case's (see
/// [`execbox_proto::cases`]), its error that case's, prefixed with its index.
fn cases_record(t: &mut Track, order: &RunOrder, last: RunRecord) -> RunRecord {
    let reports = std::mem::take(&mut t.reports);
    let worst = reports
        .iter()
        .filter(|r| r.status != RunStatus::Ok)
        .max_by_key(|r| (severity(r.status), std::cmp::Reverse(r.index)));
    let (status, error) = match worst {
        Some(w) => (
            w.status,
            w.error.as_ref().map(|e| ErrorBody {
                code: e.code,
                message: format!("case {}: {}", w.index, e.message),
            }),
        ),
        None => (RunStatus::Ok, None),
    };
    RunRecord {
        status,
        error,
        degraded: !t.missing_layers.is_empty(),
        missing_layers: std::mem::take(&mut t.missing_layers),
        compile: t.compile.take(),
        run: None,
        summary: Some(summarise(&order.cases, &reports)),
        cases: reports,
        files: vec![],
        result: None,
        timings_us: vec![],
        ..last
    }
}

/// The order's files as the jail writes them.
fn work_files(order: &RunOrder) -> Vec<WorkFile> {
    order
        .files
        .iter()
        .map(|f| WorkFile {
            name: f.name.clone(),
            content: f.content.clone().into_bytes(),
        })
        .collect()
}

/// A line for the operator on the spawner's stderr.
pub(crate) fn log_line(msg: &str) {
    log(msg);
}

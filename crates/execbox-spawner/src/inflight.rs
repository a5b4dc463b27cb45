//! The bookkeeping of jails and runs in flight: prepared jails in the pool, jails being prepared
//! (for the pool or for a waiting run), running runs. It decides what happens to each and
//! reports what the server must hear; it never touches a descriptor, so the order of starts,
//! cancels and finishes is unit-tested with a fake jail layer.

use std::collections::VecDeque;
use std::fmt::Display;
use std::time::{Duration, Instant};

use execbox_jail::Outcome;

use execbox_proto::spawner::RunOrder;

/// How long the pool waits before preparing again after a jail failed to prepare.
const REFILL_BACKOFF: Duration = Duration::from_secs(1);

/// The jail layer as the bookkeeping sees it. The real one is `execbox_jail`.
pub(crate) trait Jails {
    /// What a jail is prepared with (compared with the default to use the pool).
    type Spec: PartialEq;
    /// What a run executes.
    type Payload;
    /// A jail on its way to being prepared.
    type Preparing;
    /// A prepared jail, waiting for a payload.
    type Prepared;
    /// A running payload.
    type Running;
    /// Why a step failed.
    type Error: Display;

    /// Begin preparing a jail.
    fn start_prepare(&self, spec: &Self::Spec) -> Result<Self::Preparing, Self::Error>;
    /// Collect a jail whose preparation said it is done.
    fn finish_prepare(&self, p: Self::Preparing) -> Result<Self::Prepared, Self::Error>;
    /// Whether a pooled jail can run `payload` (a template's child runs only warm payloads).
    fn fits(&self, _p: &Self::Prepared, _payload: &Self::Payload) -> bool {
        true
    }
    /// A run's jail failed to prepare or launch: start another kind of jail for it if there is
    /// one (`payload` is changed so that the next failure is final), else `None`.
    fn fallback(
        &self,
        _payload: &mut Self::Payload,
    ) -> Option<Result<Self::Preparing, Self::Error>> {
        None
    }
    /// When no pooled jail fits `payload`: whether `p` may be dropped to make room.
    fn evict_for(&self, _p: &Self::Prepared, _payload: &Self::Payload) -> bool {
        false
    }
    /// Among pooled jails that fit, lower is taken first.
    fn preference(&self, _p: &Self::Prepared, _payload: &Self::Payload) -> u8 {
        0
    }
    /// Whether a pooled jail, prepared or being prepared, is of the kind the pool keeps a
    /// share of (cold jails, beside a template's children).
    fn reserved_kind(&self, _p: Result<&Self::Prepared, &Self::Preparing>) -> bool {
        false
    }
    /// Begin preparing a pool jail, knowing how many of the reserved kind the pool has.
    fn start_pool_prepare(
        &self,
        spec: &Self::Spec,
        _reserved: usize,
    ) -> Result<Self::Preparing, Self::Error> {
        self.start_prepare(spec)
    }
    /// Start a payload in a prepared jail.
    fn launch(
        &self,
        p: Self::Prepared,
        payload: &Self::Payload,
    ) -> Result<Self::Running, Self::Error>;
    /// Ask a run to stop; it still ends through [`Jails::finish_run`].
    fn cancel(&self, r: &mut Self::Running);
    /// Whether a run is over and may be collected.
    fn is_done(&self, r: &Self::Running) -> bool;
    /// Collect a run that is over.
    fn finish_run(&self, r: Self::Running) -> Result<Outcome, Self::Error>;
}

/// What the server must be told, in this order.
#[derive(Debug)]
pub(crate) enum Report {
    /// The run's payload started.
    Started(String),
    /// The run is over (its record is built from the order and outcome).
    Ended(Box<(RunOrder, Outcome)>),
    /// execbox failed to run it.
    Failed(String, String),
}

struct Prep<J: Jails> {
    preparing: J::Preparing,
    /// The run waiting for this jail, or `None` for a pool jail.
    order: Option<(RunOrder, J::Payload)>,
}

/// A run whose payload is running.
pub(crate) struct Active<J: Jails> {
    /// Its order.
    pub(crate) order: RunOrder,
    /// Its supervision.
    pub(crate) run: J::Running,
}

/// Jails and runs in flight.
pub(crate) struct InFlight<J: Jails> {
    jails: J,
    /// Pooled jails are prepared with this; a run with the same spec may take one.
    default_spec: J::Spec,
    /// How many pooled jails to keep (prepared or being prepared).
    pool_size: usize,
    pool: VecDeque<J::Prepared>,
    preparing: Vec<Prep<J>>,
    running: Vec<Active<J>>,
    refill_after: Instant,
}

fn cancelled() -> Outcome {
    Outcome {
        cancelled: true,
        ..Outcome::default()
    }
}

impl<J: Jails> InFlight<J> {
    pub(crate) fn new(jails: J, default_spec: J::Spec, pool_size: usize) -> Self {
        Self {
            jails,
            default_spec,
            pool_size,
            pool: VecDeque::new(),
            preparing: Vec::new(),
            running: Vec::new(),
            refill_after: Instant::now(),
        }
    }

    /// The jail layer.
    pub(crate) fn jails(&self) -> &J {
        &self.jails
    }

    /// Counts of pooled, preparing and running jails.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (self.pool.len(), self.preparing.len(), self.running.len())
    }

    /// Drop pooled jails of the reserved kind beyond `keep` of them (they are torn down; the
    /// refill prepares the other kind in their place).
    pub(crate) fn trim_reserved(&mut self, keep: usize) {
        let mut kept = 0;
        let jails = &self.jails;
        self.pool.retain(|p| {
            if !jails.reserved_kind(Ok(p)) {
                return true;
            }
            kept += 1;
            kept <= keep
        });
    }

    /// The pooled jails.
    pub(crate) fn pool(&self) -> impl Iterator<Item = &J::Prepared> {
        self.pool.iter()
    }

    /// The jails being prepared; [`InFlight::prepared`] takes indices into this order.
    pub(crate) fn preparing(&self) -> impl Iterator<Item = &J::Preparing> {
        self.preparing.iter().map(|p| &p.preparing)
    }

    /// The running runs, in the order the loop polls them.
    pub(crate) fn running(&self) -> impl Iterator<Item = &Active<J>> {
        self.running.iter()
    }

    /// The running runs, in the order of [`InFlight::running`].
    pub(crate) fn running_mut(&mut self) -> &mut [Active<J>] {
        &mut self.running
    }

    /// Whether any run is still going.
    pub(crate) fn has_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Keep `pool_size` default jails prepared or being prepared; after a failure, wait
    /// [`REFILL_BACKOFF`] before trying again.
    pub(crate) fn refill(&mut self, now: Instant) {
        if now < self.refill_after {
            return;
        }
        let in_flight = self.preparing.iter().filter(|p| p.order.is_none()).count();
        for _ in self.pool.len() + in_flight..self.pool_size {
            let reserved = self
                .pool
                .iter()
                .filter(|p| self.jails.reserved_kind(Ok(p)))
                .count()
                + self
                    .preparing
                    .iter()
                    .filter(|p| p.order.is_none() && self.jails.reserved_kind(Err(&p.preparing)))
                    .count();
            match self.jails.start_pool_prepare(&self.default_spec, reserved) {
                Ok(p) => self.preparing.push(Prep {
                    preparing: p,
                    order: None,
                }),
                Err(e) => {
                    log(&format!("cannot prepare a pool jail: {e}"));
                    self.refill_after = now + REFILL_BACKOFF;
                    return;
                }
            }
        }
    }

    /// Start a run: in a pooled jail when its spec is the default and one is usable, else in
    /// a jail prepared for it (the run waits in `preparing`).
    pub(crate) fn start(
        &mut self,
        order: RunOrder,
        spec: &J::Spec,
        payload: J::Payload,
        out: &mut Vec<Report>,
    ) {
        if *spec == self.default_spec {
            while let Some(i) = self
                .pool
                .iter()
                .enumerate()
                .filter(|(_, p)| self.jails.fits(p, &payload))
                .min_by_key(|(_, p)| self.jails.preference(p, &payload))
                .map(|(i, _)| i)
            {
                let Some(p) = self.pool.remove(i) else { break };
                match self.jails.launch(p, &payload) {
                    Ok(run) => return self.started(order, run, out),
                    // A pooled jail that died while idle: try the next one.
                    Err(e) => log(&format!("pooled jail unusable: {e}")),
                }
            }
            // None fits: make room for the kind this run needed (the refill prepares by
            // demand), so a pool full of another kind does not turn every such run away.
            if let Some(i) = self
                .pool
                .iter()
                .position(|p| self.jails.evict_for(p, &payload))
            {
                self.pool.remove(i);
            }
        }
        match self.jails.start_prepare(spec) {
            Ok(p) => self.preparing.push(Prep {
                preparing: p,
                order: Some((order, payload)),
            }),
            Err(e) => out.push(Report::Failed(order.id, format!("prepare: {e}"))),
        }
    }

    fn started(&mut self, order: RunOrder, run: J::Running, out: &mut Vec<Report>) {
        out.push(Report::Started(order.id.clone()));
        self.running.push(Active { order, run });
    }

    /// Cancel run `id`: a running one is told to stop (it ends through [`InFlight::reap`]); one
    /// still waiting for its jail ends now, as cancelled. An unknown or finished id is ignored.
    pub(crate) fn cancel(&mut self, id: &str, out: &mut Vec<Report>) {
        if let Some(a) = self.running.iter_mut().find(|a| a.order.id == id) {
            return self.jails.cancel(&mut a.run);
        }
        let waiting = |p: &Prep<J>| p.order.as_ref().is_some_and(|(o, _)| o.id == id);
        if let Some(i) = self.preparing.iter().position(waiting) {
            if let Some((order, _)) = self.preparing.swap_remove(i).order {
                out.push(Report::Ended(Box::new((order, cancelled()))));
            }
        }
    }

    /// Collect the jails at indices `ready` of [`InFlight::preparing`] (as it was when they
    /// were polled: call this before anything that reorders it, such as a cancel).
    pub(crate) fn prepared(&mut self, mut ready: Vec<usize>, now: Instant, out: &mut Vec<Report>) {
        ready.sort_unstable_by(|a, b| b.cmp(a)); // swap_remove from the back first
        for i in ready {
            let prep = self.preparing.swap_remove(i);
            match (self.jails.finish_prepare(prep.preparing), prep.order) {
                (Ok(p), None) => self.pool.push_back(p),
                (Ok(p), Some((order, payload))) => match self.jails.launch(p, &payload) {
                    Ok(run) => self.started(order, run, out),
                    Err(e) => self.retry_or_fail(order, payload, format!("launch: {e}"), out),
                },
                (Err(e), None) => {
                    log(&format!("pool jail failed to prepare: {e}"));
                    self.refill_after = now + REFILL_BACKOFF;
                }
                (Err(e), Some((order, payload))) => {
                    self.retry_or_fail(order, payload, format!("prepare: {e}"), out);
                }
            }
        }
    }

    /// A run's jail failed (`why`): prepare another kind for it if the layer has one, else
    /// report the failure.
    fn retry_or_fail(
        &mut self,
        order: RunOrder,
        mut payload: J::Payload,
        why: String,
        out: &mut Vec<Report>,
    ) {
        match self.jails.fallback(&mut payload) {
            Some(Ok(p)) => {
                log(&format!("run {}: {why}; trying again", order.id));
                self.preparing.push(Prep {
                    preparing: p,
                    order: Some((order, payload)),
                });
            }
            Some(Err(e)) => out.push(Report::Failed(order.id, format!("{why}; then: {e}"))),
            None => out.push(Report::Failed(order.id, why)),
        }
    }

    /// Collect the runs that are over.
    pub(crate) fn reap(&mut self, out: &mut Vec<Report>) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.jails.is_done(&self.running[i].run) {
                i += 1;
                continue;
            }
            let Active { order, run } = self.running.swap_remove(i);
            match self.jails.finish_run(run) {
                Ok(outcome) => out.push(Report::Ended(Box::new((order, outcome)))),
                Err(e) => out.push(Report::Failed(order.id, format!("teardown: {e}"))),
            }
        }
    }

    /// The server is gone: stop every run. Running ones are told to stop (and end through
    /// [`InFlight::reap`]); runs still waiting for their jail end now, as cancelled; jails
    /// being prepared are dropped.
    pub(crate) fn shut_down(&mut self, out: &mut Vec<Report>) {
        for a in &mut self.running {
            self.jails.cancel(&mut a.run);
        }
        for prep in self.preparing.drain(..) {
            if let Some((order, _)) = prep.order {
                out.push(Report::Ended(Box::new((order, cancelled()))));
            }
        }
    }
}

/// A line on the spawner's stderr (the server's log).
pub(crate) fn log(msg: &str) {
    eprintln!("execbox-spawner: {msg}");
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use execbox_jail::Limits;
    use execbox_proto::Mode;

    use super::*;

    /// A jail layer that records calls and fails where told. Specs are numbers (the default is
    /// 0), payloads and jails are labels.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        /// `start_prepare` fails while set.
        refuse_prepare: Cell<bool>,
        /// Jails whose preparation or launch fails, by label.
        broken: RefCell<Vec<String>>,
        next: Cell<u32>,
    }

    #[derive(Debug)]
    struct FakeRun {
        jail: String,
        cancelled: bool,
        done: bool,
    }

    impl Fake {
        fn call(&self, c: String) {
            self.calls.borrow_mut().push(c);
        }

        fn check(&self, jail: &str) -> Result<(), String> {
            match self.broken.borrow().iter().any(|b| b == jail) {
                true => Err(format!("{jail} is broken")),
                false => Ok(()),
            }
        }
    }

    impl Jails for Fake {
        type Spec = u32;
        type Payload = String;
        type Preparing = String;
        type Prepared = String;
        type Running = FakeRun;
        type Error = String;

        fn start_prepare(&self, spec: &u32) -> Result<String, String> {
            if self.refuse_prepare.get() {
                return Err("no uid left".into());
            }
            let jail = format!("j{}", self.next.get());
            self.next.set(self.next.get() + 1);
            self.call(format!("prepare {jail} spec {spec}"));
            Ok(jail)
        }

        fn finish_prepare(&self, jail: String) -> Result<String, String> {
            self.check(&jail).map(|()| jail)
        }

        fn launch(&self, jail: String, payload: &String) -> Result<FakeRun, String> {
            self.check(&jail)?;
            self.call(format!("launch {payload} in {jail}"));
            Ok(FakeRun {
                jail,
                cancelled: false,
                done: false,
            })
        }

        fn cancel(&self, r: &mut FakeRun) {
            self.call(format!("cancel {}", r.jail));
            r.cancelled = true;
        }

        fn is_done(&self, r: &FakeRun) -> bool {
            r.done
        }

        fn finish_run(&self, r: FakeRun) -> Result<Outcome, String> {
            self.check(&r.jail)?;
            Ok(Outcome {
                cancelled: r.cancelled,
                exit_code: Some(0),
                ..Outcome::default()
            })
        }
    }

    fn order(id: &str) -> RunOrder {
        RunOrder {
            id: id.into(),
            created_at: "t".into(),
            mode: Mode::Program,
            files: vec![],
            stdin: String::new(),
            args: vec![],
            limits: Limits::default(),
            runtime: None,
            cases: vec![],
            compare: Default::default(),
            live: false,
            interactive: false,
        }
    }

    /// Reports as short strings: `started a`, `ended a cancelled`, `failed a: why`.
    fn show(reports: Vec<Report>) -> Vec<String> {
        reports
            .into_iter()
            .map(|r| match r {
                Report::Started(id) => format!("started {id}"),
                Report::Ended(end) if end.1.cancelled => format!("ended {} cancelled", end.0.id),
                Report::Ended(end) => format!("ended {}", end.0.id),
                Report::Failed(id, why) => format!("failed {id}: {why}"),
            })
            .collect()
    }

    fn calls(f: &InFlight<Fake>) -> Vec<String> {
        f.jails().calls.take()
    }

    fn start(f: &mut InFlight<Fake>, id: &str, spec: u32) -> Vec<String> {
        let mut out = Vec::new();
        f.start(order(id), &spec, format!("p-{id}"), &mut out);
        show(out)
    }

    fn cancel(f: &mut InFlight<Fake>, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        f.cancel(id, &mut out);
        show(out)
    }

    fn prepared(f: &mut InFlight<Fake>, ready: Vec<usize>) -> Vec<String> {
        let mut out = Vec::new();
        f.prepared(ready, Instant::now(), &mut out);
        show(out)
    }

    fn finish(f: &mut InFlight<Fake>, id: &str) -> Vec<String> {
        for a in f.running_mut().iter_mut().filter(|a| a.order.id == id) {
            a.run.done = true;
        }
        let mut out = Vec::new();
        f.reap(&mut out);
        show(out)
    }

    fn pooled(size: usize) -> InFlight<Fake> {
        let mut f = InFlight::new(Fake::default(), 0, size);
        f.refill(Instant::now());
        let n = f.preparing().count();
        assert!(prepared(&mut f, (0..n).collect()).is_empty());
        calls(&f);
        f
    }

    #[test]
    fn the_pool_is_kept_full_counting_jails_on_their_way() {
        let mut f = InFlight::new(Fake::default(), 0, 2);
        let now = Instant::now();
        f.refill(now);
        assert_eq!(calls(&f), ["prepare j0 spec 0", "prepare j1 spec 0"]);
        // Still being prepared: nothing more to start.
        f.refill(now);
        assert_eq!(calls(&f), Vec::<String>::new());
        // A run's own jail does not count as a pool jail.
        assert!(start(&mut f, "a", 7).is_empty());
        f.refill(now);
        assert_eq!(calls(&f), ["prepare j2 spec 7"]);
        // Both pool jails ready; one taken by a run: one more is prepared.
        assert!(prepared(&mut f, vec![0, 1]).is_empty());
        assert_eq!(f.counts(), (2, 1, 0));
        assert_eq!(start(&mut f, "b", 0), ["started b"]);
        f.refill(now);
        assert_eq!(calls(&f), ["launch p-b in j1", "prepare j3 spec 0"]);
    }

    #[test]
    fn a_failing_pool_waits_before_preparing_again() {
        let mut f = InFlight::new(Fake::default(), 0, 1);
        let now = Instant::now();
        f.jails().refuse_prepare.set(true);
        f.refill(now);
        f.jails().refuse_prepare.set(false);
        f.refill(now + Duration::from_millis(500));
        assert_eq!(f.counts(), (0, 0, 0), "tried again before the backoff");
        f.refill(now + REFILL_BACKOFF);
        assert_eq!(calls(&f), ["prepare j0 spec 0"]);
        // A pool jail that fails while preparing also backs off.
        f.jails().broken.borrow_mut().push("j0".into());
        let mut out = Vec::new();
        f.prepared(vec![0], now + REFILL_BACKOFF, &mut out);
        assert!(out.is_empty(), "a pool jail's failure concerns no run");
        f.refill(now + REFILL_BACKOFF);
        assert_eq!(f.counts(), (0, 0, 0));
        f.refill(now + 2 * REFILL_BACKOFF);
        assert_eq!(calls(&f), ["prepare j1 spec 0"]);
    }

    #[test]
    fn a_default_run_takes_a_pooled_jail_and_skips_dead_ones() {
        // Collected from the back of the preparing list: the pool holds j2, j1, j0.
        let mut f = pooled(3);
        f.jails().broken.borrow_mut().push("j2".into());
        assert_eq!(start(&mut f, "a", 0), ["started a"]);
        assert_eq!(calls(&f), ["launch p-a in j1"]);
        assert_eq!(f.counts(), (1, 0, 1));
        // Other limits never use the pool.
        assert!(start(&mut f, "b", 5).is_empty());
        assert_eq!(calls(&f), ["prepare j3 spec 5"]);
        assert_eq!(f.counts(), (1, 1, 1));
    }

    #[test]
    fn a_run_without_a_pooled_jail_starts_once_its_jail_is_prepared() {
        let mut f = InFlight::new(Fake::default(), 0, 0);
        assert!(start(&mut f, "a", 0).is_empty());
        assert_eq!(calls(&f), ["prepare j0 spec 0"]);
        assert_eq!(prepared(&mut f, vec![0]), ["started a"]);
        assert_eq!(calls(&f), ["launch p-a in j0"]);
        assert_eq!(finish(&mut f, "a"), ["ended a"]);
        assert_eq!(f.counts(), (0, 0, 0));
    }

    #[test]
    fn failures_to_prepare_or_launch_fail_the_run() {
        let mut f = InFlight::new(Fake::default(), 0, 0);
        f.jails().refuse_prepare.set(true);
        assert_eq!(start(&mut f, "a", 0), ["failed a: prepare: no uid left"]);
        f.jails().refuse_prepare.set(false);
        assert!(start(&mut f, "b", 0).is_empty());
        assert!(start(&mut f, "c", 0).is_empty());
        f.jails().broken.borrow_mut().push("j0".into());
        assert_eq!(
            prepared(&mut f, vec![0, 1]),
            ["started c", "failed b: prepare: j0 is broken"]
        );
        f.jails().broken.borrow_mut().push("j1".into());
        assert_eq!(finish(&mut f, "c"), ["failed c: teardown: j1 is broken"]);
        assert_eq!(f.counts(), (0, 0, 0));
    }

    #[test]
    fn ready_indices_are_taken_from_the_back_so_each_names_its_own_jail() {
        let mut f = InFlight::new(Fake::default(), 0, 0);
        for id in ["a", "b", "c", "d"] {
            assert!(start(&mut f, id, 1).is_empty());
        }
        calls(&f);
        // Polled in any order: each index still names the jail it named at poll time.
        assert_eq!(prepared(&mut f, vec![1, 3]), ["started d", "started b"]);
        assert_eq!(calls(&f), ["launch p-d in j3", "launch p-b in j1"]);
        assert_eq!(prepared(&mut f, vec![0, 1]), ["started c", "started a"]);
    }

    #[test]
    fn cancel_stops_a_running_run_which_then_ends_as_cancelled() {
        let mut f = pooled(1);
        assert_eq!(start(&mut f, "a", 0), ["started a"]);
        calls(&f);
        assert!(
            cancel(&mut f, "a").is_empty(),
            "a running run ends when its jail says so"
        );
        assert_eq!(calls(&f), ["cancel j0"]);
        assert!(finish(&mut f, "other").is_empty());
        assert_eq!(finish(&mut f, "a"), ["ended a cancelled"]);
    }

    #[test]
    fn cancel_of_an_unknown_or_finished_run_does_nothing() {
        let mut f = pooled(1);
        assert!(cancel(&mut f, "nobody").is_empty());
        assert_eq!(start(&mut f, "a", 0), ["started a"]);
        assert_eq!(finish(&mut f, "a"), ["ended a"]);
        calls(&f);
        assert!(cancel(&mut f, "a").is_empty());
        assert!(cancel(&mut f, "a").is_empty());
        assert_eq!(calls(&f), Vec::<String>::new());
        assert_eq!(f.counts(), (0, 0, 0));
    }

    #[test]
    fn a_run_cancelled_while_its_jail_is_prepared_ends_at_once_and_never_starts() {
        let mut f = InFlight::new(Fake::default(), 0, 1);
        f.refill(Instant::now());
        assert!(start(&mut f, "a", 9).is_empty());
        assert!(start(&mut f, "b", 9).is_empty());
        assert_eq!(cancel(&mut f, "a"), ["ended a cancelled"]);
        // The pool jail and b's jail are still on their way; a's jail is gone.
        assert_eq!(f.counts(), (0, 2, 0));
        assert_eq!(cancel(&mut f, "a"), Vec::<String>::new());
        let n = f.preparing().count();
        assert_eq!(prepared(&mut f, (0..n).collect()), ["started b"]);
        assert_eq!(f.counts(), (1, 0, 1));
    }

    #[test]
    fn shutting_down_cancels_runs_and_ends_the_waiting_ones() {
        let mut f = pooled(1);
        assert_eq!(start(&mut f, "a", 0), ["started a"]);
        assert!(start(&mut f, "b", 0).is_empty());
        f.refill(Instant::now());
        calls(&f);
        let mut out = Vec::new();
        f.shut_down(&mut out);
        assert_eq!(show(out), ["ended b cancelled"]);
        assert_eq!(calls(&f), ["cancel j0"]);
        assert_eq!(f.counts(), (0, 0, 1));
        assert!(f.has_running());
        assert_eq!(finish(&mut f, "a"), ["ended a cancelled"]);
        assert!(!f.has_running());
    }
}

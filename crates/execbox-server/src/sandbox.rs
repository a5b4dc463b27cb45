//! What the routes and the runner need of the sandbox: send a run order and get its final
//! record, cancel a run, and read the status (up, canary, the runtime's language and version,
//! missing layers). `SpawnerClient` (`spawner_client.rs`) is the real one, speaking to an
//! `execbox spawner` process; tests put a fake behind the same trait (`tests/support/fake.rs`),
//! so the whole router runs in-process without a jail.

use execbox_proto::live::{LiveSignal, OutputStream, Stage};
use execbox_proto::spawner::RunOrder;
use execbox_proto::RunRecord;
use tokio::sync::oneshot;

/// The outcome of one order: the final record, or an internal error for the log.
pub type RunResult = Result<RunRecord, String>;

/// Called once when the order's payload has started (the run is then `running`).
pub type OnStarted = Box<dyn FnOnce() + Send>;

/// What a live run reports while it runs (`RunOrder::live`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A stage started.
    Stage {
        /// Compile or run.
        stage: Stage,
        /// The case, for a run with cases.
        case: Option<usize>,
    },
    /// Output, as read.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The text.
        data: String,
        /// The stream was cut at its cap with this chunk.
        truncated: bool,
    },
}

/// Called with each [`LiveEvent`] of a live run, in order.
pub type OnLiveEvent = Box<dyn Fn(LiveEvent) + Send + Sync>;

/// The sandbox, as the server's handlers see it. Calls never block: orders and cancels are
/// queued (their number is bounded by admission: one order per admitted run, at most one
/// cancel per run).
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    /// Send a run; `on_started` is called when its payload starts; the receiver yields its
    /// final record (dropped unanswered if the sandbox loses the run).
    fn run(&self, order: RunOrder, on_started: OnStarted) -> oneshot::Receiver<RunResult>;

    /// Ask the sandbox to kill run `id` (it still answers the run with its record).
    fn cancel(&self, id: &str);

    /// Like [`Sandbox::run`], for a live order: `on_event` hears its stages and output as
    /// they happen, before the record. A sandbox that cannot stream reports nothing live.
    fn run_live(
        &self,
        order: RunOrder,
        on_started: OnStarted,
        on_event: OnLiveEvent,
    ) -> oneshot::Receiver<RunResult> {
        drop(on_event);
        self.run(order, on_started)
    }

    /// More stdin for interactive run `id` (`eof`: then close it). The caller bounds it.
    fn stdin(&self, id: &str, data: String, eof: bool) {
        let _ = (id, data, eof);
    }

    /// Send `signal` to run `id`'s running stage.
    fn signal(&self, id: &str, signal: LiveSignal) {
        let _ = (id, signal);
    }

    /// The current status.
    fn status(&self) -> SandboxStatus;
}

/// What the server knows of its sandbox (the spawner process).
#[derive(Debug, Clone, Default)]
pub struct SandboxStatus {
    /// A spawner process is running and said hello.
    pub up: bool,
    /// The start-up canary run succeeded in this spawner.
    pub canary_ok: bool,
    /// Language of the runtime it reported (empty until the first hello).
    pub language: String,
    /// Runtime version it reported (empty until the first hello; kept across restarts).
    pub version: String,
    /// Isolation layers it lacks (degraded mode).
    pub missing_layers: Vec<String>,
    /// Every runtime it offers (those whose smoke test passed).
    pub runtimes: Vec<execbox_proto::RuntimeInfo>,
    /// Its pid.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u64,
    /// The warm path's counters, as the running spawner last sent them.
    pub warm: execbox_proto::spawner::WarmStats,
    /// Why the first spawner could not start (no runtime, host refused): it is not restarted
    /// and the server stops.
    pub fatal: Option<String>,
}

impl SandboxStatus {
    /// The runtime's language and version, once a spawner has said hello.
    pub fn runtime(&self) -> Option<(&str, &str)> {
        (!self.version.is_empty()).then_some((self.language.as_str(), self.version.as_str()))
    }

    /// Runs may be sent: a spawner is up and its canary run succeeded.
    pub fn ready(&self) -> bool {
        self.up && self.canary_ok
    }
}

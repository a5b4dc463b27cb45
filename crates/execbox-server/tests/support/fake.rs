//! A sandbox without a jail: it answers each run with the record its source scripts.
//!
//! A run's entry file may hold lines `#> key: value` (a Python comment, so the same source
//! is harmless anywhere else); every other line is ignored. [`Script`] writes them:
//!
//! | key | effect |
//! |---|---|
//! | `status` | the record's status (`ok` by default) |
//! | `code` | its error code; a harness code goes through [`ErrorCode::from_harness`] |
//! | `stdout`, `stderr` | a line of output |
//! | `result` | `main()`'s value (JSON) |
//! | `cpu_ms` | CPU time charged (the CPU quota) |
//! | `sleep_ms` | how long the run takes (queue and cancel tests); a cancel ends it at once |
//! | `fail` | no record: an internal error with this detail (the server's log only) |
//! | `lose` | the sandbox drops the run without an answer |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use execbox_proto::live::{OutputStream, Stage};
use execbox_proto::spawner::RunOrder;
use execbox_proto::{ErrorBody, ErrorCode, RunRecord, RunStatus, StepReport};
use execbox_server::sandbox::{
    LiveEvent, OnLiveEvent, OnStarted, RunResult, Sandbox, SandboxStatus,
};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The runtime the fake claims to offer.
pub const VERSION: &str = "3.11.2";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake sandbox. Ready (up, canary passed, Python [`VERSION`]) until told otherwise.
#[derive(Debug)]
pub struct FakeSandbox {
    status: Mutex<SandboxStatus>,
    orders: Mutex<Vec<RunOrder>>,
    cancels: Mutex<Vec<String>>,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

/// The one runtime the fake offers, as a spawner's hello would list it.
pub fn python_runtime() -> execbox_proto::RuntimeInfo {
    execbox_proto::RuntimeInfo {
        language: "python".into(),
        version: VERSION.into(),
        aliases: vec!["py".into(), "python3".into()],
        compiled: false,
        modes: vec![execbox_proto::Mode::Program, execbox_proto::Mode::Main],
        packages: vec!["numpy".into(), "pandas".into()],
        entry: "main.py".into(),
    }
}

impl Default for FakeSandbox {
    fn default() -> Self {
        Self {
            status: Mutex::new(SandboxStatus {
                up: true,
                canary_ok: true,
                language: "python".into(),
                version: VERSION.into(),
                runtimes: vec![python_runtime()],
                ..SandboxStatus::default()
            }),
            orders: Mutex::default(),
            cancels: Mutex::default(),
            running: Arc::default(),
        }
    }
}

impl FakeSandbox {
    /// Replace the status (`SandboxStatus::default()`: before the spawner's hello).
    pub fn set_status(&self, status: SandboxStatus) {
        *lock(&self.status) = status;
    }

    /// Every order received, oldest first.
    pub fn orders(&self) -> Vec<RunOrder> {
        lock(&self.orders).clone()
    }

    /// Every cancel received.
    pub fn cancels(&self) -> Vec<String> {
        lock(&self.cancels).clone()
    }
}

impl Sandbox for FakeSandbox {
    fn run(&self, order: RunOrder, on_started: OnStarted) -> oneshot::Receiver<RunResult> {
        let (tx, rx) = oneshot::channel();
        let script = order
            .files
            .first()
            .map(|f| Script::parse(&f.content))
            .unwrap_or_default();
        let kill = CancellationToken::new();
        lock(&self.running).insert(order.id.clone(), kill.clone());
        let (language, version) = {
            let s = lock(&self.status);
            (s.language.clone(), s.version.clone())
        };
        let running = self.running.clone();
        let id = order.id.clone();
        lock(&self.orders).push(order.clone());
        tokio::spawn(async move {
            on_started();
            let killed = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(script.sleep_ms)) => false,
                _ = kill.cancelled() => true,
            };
            lock(&running).remove(&id);
            if script.lose {
                return;
            }
            let answer = match &script.fail {
                Some(detail) => Err(detail.clone()),
                None => Ok(script.record(&order, language, version, killed)),
            };
            let _ = tx.send(answer);
        });
        rx
    }

    /// Live: a `run` stage, then the script's stdout and stderr, one chunk per line, at once.
    fn run_live(
        &self,
        order: RunOrder,
        on_started: OnStarted,
        on_event: OnLiveEvent,
    ) -> oneshot::Receiver<RunResult> {
        let script = order
            .files
            .first()
            .map(|f| Script::parse(&f.content))
            .unwrap_or_default();
        on_event(LiveEvent::Stage {
            stage: Stage::Run,
            case: None,
        });
        for (stream, text) in [
            (OutputStream::Stdout, &script.stdout),
            (OutputStream::Stderr, &script.stderr),
        ] {
            for line in text.split_inclusive('\n') {
                on_event(LiveEvent::Output {
                    stream,
                    data: line.to_owned(),
                    truncated: false,
                });
            }
        }
        self.run(order, on_started)
    }

    fn cancel(&self, id: &str) {
        lock(&self.cancels).push(id.to_owned());
        if let Some(kill) = lock(&self.running).get(id) {
            kill.cancel();
        }
    }

    fn status(&self) -> SandboxStatus {
        lock(&self.status).clone()
    }
}

/// What the fake does with a run (see the module's docs).
#[derive(Debug, Clone, Default)]
pub struct Script {
    status: Option<RunStatus>,
    code: Option<ErrorCode>,
    stdout: String,
    stderr: String,
    result: Option<Value>,
    cpu_ms: f64,
    sleep_ms: u64,
    fail: Option<String>,
    lose: bool,
}

impl Script {
    /// A run that succeeds at once.
    pub fn ok() -> Self {
        Self::default()
    }

    /// A run that ends with `status` and `code`.
    pub fn failing(status: RunStatus, code: ErrorCode) -> Self {
        Self {
            status: Some(status),
            code: Some(code),
            ..Self::default()
        }
    }

    /// A `runtime_error` with the harness's `code`.
    pub fn harness(code: &str) -> Self {
        Self::failing(RunStatus::RuntimeError, ErrorCode::from_harness(code))
    }

    /// Prints `line` on stdout.
    pub fn stdout(mut self, line: &str) -> Self {
        self.stdout += &format!("{line}\n");
        self
    }

    /// Prints `line` on stderr.
    pub fn stderr(mut self, line: &str) -> Self {
        self.stderr += &format!("{line}\n");
        self
    }

    /// `main()` returns `value`.
    pub fn result(mut self, value: Value) -> Self {
        self.result = Some(value);
        self
    }

    /// Uses `ms` of CPU.
    pub fn cpu_ms(mut self, ms: u64) -> Self {
        self.cpu_ms = ms as f64;
        self
    }

    /// Takes `ms` to finish.
    pub fn sleep_ms(mut self, ms: u64) -> Self {
        self.sleep_ms = ms;
        self
    }

    /// The sandbox fails the run (internal error, `detail` for the log).
    pub fn fail(detail: &str) -> Self {
        Self {
            fail: Some(detail.to_owned()),
            ..Self::default()
        }
    }

    /// The sandbox loses the run (never answers).
    pub fn lose() -> Self {
        Self {
            lose: true,
            ..Self::default()
        }
    }

    /// The source text that scripts this (a valid Python program of comments).
    pub fn source(&self) -> String {
        let mut lines = vec!["print('fake')".to_owned()];
        let mut put = |k: &str, v: String| lines.push(format!("#> {k}: {v}"));
        if let Some(s) = self.status {
            put("status", s.as_str().to_owned());
        }
        if let Some(c) = self.code {
            put("code", c.as_str().to_owned());
        }
        for l in self.stdout.lines() {
            put("stdout", l.to_owned());
        }
        for l in self.stderr.lines() {
            put("stderr", l.to_owned());
        }
        if let Some(r) = &self.result {
            put("result", r.to_string());
        }
        put("cpu_ms", self.cpu_ms.to_string());
        put("sleep_ms", self.sleep_ms.to_string());
        if let Some(f) = &self.fail {
            put("fail", f.clone());
        }
        if self.lose {
            put("lose", "yes".into());
        }
        lines.join("\n") + "\n"
    }

    fn parse(source: &str) -> Self {
        let mut s = Self::default();
        for (key, value) in source
            .lines()
            .filter_map(|l| l.strip_prefix("#> "))
            .filter_map(|l| l.split_once(": "))
        {
            let quoted = || Value::String(value.to_owned());
            match key {
                "status" => s.status = serde_json::from_value(quoted()).ok(),
                "code" => s.code = serde_json::from_value(quoted()).ok(),
                "stdout" => s.stdout += &format!("{value}\n"),
                "stderr" => s.stderr += &format!("{value}\n"),
                "result" => s.result = serde_json::from_str(value).ok(),
                "cpu_ms" => s.cpu_ms = value.parse().unwrap_or(0.0),
                "sleep_ms" => s.sleep_ms = value.parse().unwrap_or(0),
                "fail" => s.fail = Some(value.to_owned()),
                "lose" => s.lose = true,
                _ => {}
            }
        }
        s
    }

    fn record(
        &self,
        order: &RunOrder,
        language: String,
        version: String,
        killed: bool,
    ) -> RunRecord {
        let (status, error) = if killed {
            let e = ErrorBody::new(ErrorCode::Cancelled, "the run was cancelled");
            (RunStatus::Cancelled, Some(e))
        } else {
            let status = self.status.unwrap_or(RunStatus::Ok);
            let error = (status != RunStatus::Ok).then(|| {
                let code = self.code.unwrap_or(status.error_code());
                ErrorBody::new(code, format!("fake {code}"))
            });
            (status, error)
        };
        RunRecord {
            error,
            run: Some(StepReport {
                stdout: self.stdout.clone(),
                stderr: self.stderr.clone(),
                exit_code: Some(i32::from(status != RunStatus::Ok)),
                wall_time_ms: self.sleep_ms as f64,
                cpu_time_ms: self.cpu_ms,
                ..StepReport::default()
            }),
            result: (status == RunStatus::Ok)
                .then(|| self.result.clone())
                .flatten(),
            finished_at: Some(execbox_proto::now_rfc3339()),
            ..RunRecord::new(&order.id, language, version, status, &order.created_at)
        }
    }
}

//! The server's side of the spawner: starts `execbox spawner` as a child process, sends it
//! orders, routes its events to the waiting runs, and restarts it if it dies (failing the runs
//! it had in flight as internal errors).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use execbox_proto::spawner::{Event, Order, RunOrder, SpawnerConfig};
use execbox_proto::{Limits, Mode, RunStatus, SourceFile};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::sandbox::{LiveEvent, OnLiveEvent, OnStarted, RunResult, Sandbox, SandboxStatus};

enum Cmd {
    Run(
        Box<RunOrder>,
        OnStarted,
        Option<OnLiveEvent>,
        oneshot::Sender<RunResult>,
    ),
    Cancel(String),
    /// Stdin or a signal for a live run: passed on as it is.
    Live(Box<Order>),
}

/// How to start the spawner.
#[derive(Debug, Clone)]
pub struct SpawnerCommand {
    /// The binary that provides `spawner` (normally the running `execbox`).
    pub exe: PathBuf,
    /// Its configuration, sent as the first line on its stdin; the canary runs with its
    /// default limits.
    pub config: SpawnerConfig,
}

/// Handle to the spawner task.
#[derive(Debug, Clone)]
pub struct SpawnerClient {
    /// Unbounded: admission bounds what is queued (one order per admitted run, at most one
    /// cancel per run; a live run's stdin is bounded by its `stdin_bytes` and its signals
    /// by `routes::ws::live::MAX_SIGNALS`), so sending never waits.
    tx: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<SandboxStatus>,
}

impl SpawnerClient {
    /// Start the spawner task; it keeps a spawner process alive until the client is dropped.
    pub fn start(cmd: SpawnerCommand) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(SandboxStatus::default());
        let task = tokio::spawn(supervise(cmd, rx, status_tx));
        (Self { tx, status }, task)
    }

    /// A receiver that changes with the status.
    pub fn watch(&self) -> watch::Receiver<SandboxStatus> {
        self.status.clone()
    }
}

impl SpawnerClient {
    fn send_run(
        &self,
        order: RunOrder,
        on_started: OnStarted,
        on_event: Option<OnLiveEvent>,
    ) -> oneshot::Receiver<RunResult> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Cmd::Run(_, _, _, tx))) =
            self.tx
                .send(Cmd::Run(Box::new(order), on_started, on_event, tx))
        {
            let _ = tx.send(Err("the spawner task is gone".into()));
        }
        rx
    }
}

impl Sandbox for SpawnerClient {
    fn run(&self, order: RunOrder, on_started: OnStarted) -> oneshot::Receiver<RunResult> {
        self.send_run(order, on_started, None)
    }

    fn cancel(&self, id: &str) {
        let _ = self.tx.send(Cmd::Cancel(id.to_owned()));
    }

    fn run_live(
        &self,
        mut order: RunOrder,
        on_started: OnStarted,
        on_event: OnLiveEvent,
    ) -> oneshot::Receiver<RunResult> {
        order.live = true;
        self.send_run(order, on_started, Some(on_event))
    }

    fn stdin(&self, id: &str, data: String, eof: bool) {
        let id = id.to_owned();
        let _ = self
            .tx
            .send(Cmd::Live(Box::new(Order::Stdin { id, data, eof })));
    }

    fn signal(&self, id: &str, signal: execbox_proto::live::LiveSignal) {
        let id = id.to_owned();
        let _ = self
            .tx
            .send(Cmd::Live(Box::new(Order::Signal { id, signal })));
    }

    fn status(&self) -> SandboxStatus {
        self.status.borrow().clone()
    }
}

enum Exit {
    /// The client was dropped: shut down for good.
    Closed,
    /// The spawner cannot start here (its `fatal` event).
    Fatal(String),
    /// The process died or misbehaved: restart it.
    Died(String),
}

async fn supervise(
    cmd: SpawnerCommand,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    status: watch::Sender<SandboxStatus>,
) {
    let mut restarts = 0u64;
    loop {
        match run_one(&cmd, &mut rx, &status).await {
            Exit::Closed => return,
            // The first spawner cannot start: a configuration error, which a restart will not
            // mend. One that ran before (the host changed under it) is restarted as below.
            Exit::Fatal(why) if restarts == 0 => {
                tracing::error!(%why, "the spawner cannot start");
                status.send_modify(|s| s.fatal = Some(why));
                return;
            }
            Exit::Fatal(why) => {
                restarts += 1;
                tracing::error!(%why, restarts, "spawner cannot start; restarting");
                status.send_modify(|s| s.restarts = restarts);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Exit::Died(why) => {
                restarts += 1;
                tracing::error!(%why, restarts, "spawner died; restarting");
                status.send_modify(|s| {
                    s.up = false;
                    s.canary_ok = false;
                    s.pid = None;
                    s.restarts = restarts;
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn canary_order(limits: Limits) -> RunOrder {
    RunOrder {
        id: format!("canary-{}", execbox_proto::new_run_id()),
        created_at: execbox_proto::now_rfc3339(),
        mode: Mode::Main,
        files: vec![SourceFile {
            name: "main.py".into(),
            content: "def main():\n    return {\"canary\": 1}\n".into(),
        }],
        stdin: String::new(),
        args: vec![],
        limits,
        runtime: None,
        cases: vec![],
        compare: Default::default(),
        live: false,
        interactive: false,
    }
}

/// One spawner process, from start to exit, in four steps: start it and send its
/// configuration, wait for its hello, send the canary, then carry orders and events until it
/// exits (or the client is dropped). Runs still in flight when it ends fail as internal errors.
async fn run_one(
    cmd: &SpawnerCommand,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    status: &watch::Sender<SandboxStatus>,
) -> Exit {
    let (mut child, mut stdin, mut events) = match start_process(cmd).await {
        Ok(started) => started,
        Err(exit) => return exit,
    };
    if let Err(exit) = await_hello(&mut child, &mut events, status).await {
        return exit;
    }
    let canary = canary_order(cmd.config.default_limits);
    let canary_id = canary.id.clone();
    if let Err(e) = stdin.write_all(&Order::Run(canary).to_line()).await {
        return Exit::Died(format!("write canary: {e}"));
    }
    let (orders, writer) = spawn_writer(stdin);
    let mut session = Session {
        orders: Some(orders),
        pending: HashMap::new(),
        canary_id,
        status,
    };
    let exit = session.relay(rx, &mut events).await;
    session.fail_in_flight();
    writer.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    exit
}

/// Longest event line accepted from the spawner. A record is bounded by the run's output caps
/// (cases share the per-run maximum) even after JSON escaping; past this the spawner is
/// treated as broken (restarted, its in-flight runs fail) rather than read into memory.
const MAX_EVENT_LINE: usize = 256 << 20;

/// The spawner's event lines, read with a bound (`tokio`'s `Lines` has none). Cancel-safe
/// like `Lines::next_line`: a partial line stays in `line` between calls.
struct Events {
    reader: BufReader<ChildStdout>,
    line: Vec<u8>,
    max: usize,
}

impl Events {
    fn new(stdout: ChildStdout) -> Self {
        Self::with_limit(stdout, MAX_EVENT_LINE)
    }

    fn with_limit(stdout: ChildStdout, max: usize) -> Self {
        Self {
            reader: BufReader::new(stdout),
            line: Vec::new(),
            max,
        }
    }

    /// The next line without its newline; `None` at end of file.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > self.max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("spawner event line over {} bytes", self.max),
                ));
            }
            self.line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if done {
                let mut line = std::mem::take(&mut self.line);
                line.pop();
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Start `execbox spawner` and send it its configuration line.
async fn start_process(cmd: &SpawnerCommand) -> Result<(Child, ChildStdin, Events), Exit> {
    let mut child: Child = Command::new(&cmd.exe)
        .arg("spawner")
        // Nothing of the server's environment (APP_JWT_SECRET above all) reaches the jailer;
        // every jail is a copy of it until execve.
        .env_clear()
        .envs(std::env::var("RUST_LOG").map(|v| ("RUST_LOG", v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: a signal to the server's group (Ctrl-C, `kill -TERM -PGID`)
        // must not kill the spawner under a draining server. It exits on stdin EOF instead.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Exit::Died(format!("cannot start {}: {e}", cmd.exe.display())))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Exit::Died("spawner pipes missing".into()));
    };
    if let Err(e) = stdin.write_all(&cmd.config.to_line()).await {
        let _ = child.kill().await;
        return Err(Exit::Died(format!(
            "write the spawner's configuration: {e}"
        )));
    }
    Ok((child, stdin, Events::new(stdout)))
}

/// The spawner's first event: `hello` (the runtime it offers: now the status says up) or
/// `fatal` (it cannot start on this host).
async fn await_hello(
    child: &mut Child,
    events: &mut Events,
    status: &watch::Sender<SandboxStatus>,
) -> Result<(), Exit> {
    // The spawner smoke-tests every runtime through the jail (compilers included) first.
    let hello = tokio::time::timeout(Duration::from_secs(180), events.next_line()).await;
    match hello
        .ok()
        .and_then(|l| l.ok().flatten())
        .map(|l| serde_json::from_str::<Event>(&l))
    {
        Some(Ok(Event::Hello {
            language,
            version,
            missing_layers,
            runtimes,
        })) => {
            tracing::info!(%language, %version, ?missing_layers, pid = child.id(), "spawner up");
            status.send_modify(|s| {
                s.up = true;
                s.language = language;
                s.version = version;
                s.missing_layers = missing_layers;
                s.runtimes = runtimes;
                s.pid = child.id();
            });
            Ok(())
        }
        Some(Ok(Event::Fatal { message })) => {
            let _ = child.wait().await;
            Err(Exit::Fatal(message))
        }
        other => {
            let _ = child.kill().await;
            Err(Exit::Died(format!("no hello from the spawner: {other:?}")))
        }
    }
}

/// Orders are written by a task of their own, so reading events never waits on a write: a
/// large order and a large event in flight at once would otherwise block both processes on
/// full pipes. (The queue is bounded by admission: one order per admitted run, plus cancels.)
/// Dropping the sender ends the task and closes stdin: EOF for the spawner.
fn spawn_writer(
    mut stdin: ChildStdin,
) -> (
    mpsc::UnboundedSender<Vec<u8>>,
    JoinHandle<std::io::Result<()>>,
) {
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(line) = order_rx.recv().await {
            stdin.write_all(&line).await?;
            stdin.flush().await?;
        }
        Ok(())
    });
    (order_tx, writer)
}

/// A run sent to the spawner and not yet answered.
struct Pending {
    on_started: Option<OnStarted>,
    on_event: Option<OnLiveEvent>,
    done: oneshot::Sender<RunResult>,
}

/// A live spawner's traffic: orders from the server's handlers, events from the spawner.
struct Session<'a> {
    /// The writer's queue; `None` once the client was dropped (shutting down).
    orders: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: HashMap<String, Pending>,
    canary_id: String,
    status: &'a watch::Sender<SandboxStatus>,
}

impl Session<'_> {
    /// Carry commands and events until the spawner exits.
    async fn relay(&mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>, events: &mut Events) -> Exit {
        loop {
            tokio::select! {
                c = rx.recv(), if self.orders.is_some() => {
                    if let Err(exit) = self.command(c) {
                        return exit;
                    }
                }
                line = events.next_line() => match line {
                    Ok(Some(l)) => self.event(&l),
                    Ok(None) => {
                        return if self.orders.is_none() {
                            Exit::Closed
                        } else {
                            Exit::Died("spawner exited".into())
                        };
                    }
                    // An unreadable or oversized event: the spawner is not trusted further.
                    Err(e) => {
                        return if self.orders.is_none() {
                            Exit::Closed
                        } else {
                            Exit::Died(format!("spawner events: {e}"))
                        };
                    }
                },
            }
        }
    }

    /// A command from the server (`None`: the client was dropped).
    fn command(&mut self, cmd: Option<Cmd>) -> Result<(), Exit> {
        let Some(orders) = &self.orders else {
            return Ok(());
        };
        match cmd {
            None => {
                // Shutting down: EOF tells the spawner to cancel what runs and exit; keep
                // reading so the final records still reach their runs.
                self.orders = None;
            }
            Some(Cmd::Run(order, on_started, on_event, done)) => {
                let id = order.id.clone();
                if orders.send(Order::Run(*order).to_line()).is_err() {
                    let _ = done.send(Err("the spawner's order pipe is closed".into()));
                    return Err(Exit::Died("order pipe closed".into()));
                }
                let on_started = Some(on_started);
                let pending = Pending {
                    on_started,
                    on_event,
                    done,
                };
                self.pending.insert(id, pending);
            }
            Some(Cmd::Cancel(id)) => {
                if orders.send(Order::Cancel { id }.to_line()).is_err() {
                    return Err(Exit::Died("order pipe closed".into()));
                }
            }
            Some(Cmd::Live(order)) => {
                if orders.send(order.to_line()).is_err() {
                    return Err(Exit::Died("order pipe closed".into()));
                }
            }
        }
        Ok(())
    }

    /// One event line from the spawner.
    fn event(&mut self, line: &str) {
        match serde_json::from_str::<Event>(line) {
            Ok(Event::Started { id }) => {
                if let Some(started) = self.pending.get_mut(&id).and_then(|p| p.on_started.take()) {
                    started();
                }
            }
            Ok(Event::Stage { id, stage, case }) => {
                self.live(&id, LiveEvent::Stage { stage, case })
            }
            Ok(Event::Output {
                id,
                stream,
                data,
                truncated,
            }) => self.live(
                &id,
                LiveEvent::Output {
                    stream,
                    data,
                    truncated,
                },
            ),
            Ok(Event::Finished { id, record }) if id == self.canary_id => {
                let ok = record.status == RunStatus::Ok
                    && record.result == Some(serde_json::json!({"canary": 1}));
                if ok {
                    tracing::info!("canary run ok");
                } else {
                    tracing::error!(?record, "canary run failed");
                }
                self.status.send_modify(|s| s.canary_ok = ok);
            }
            Ok(Event::Finished { id, record }) => self.answer(&id, Ok(*record)),
            Ok(Event::Failed { id, message }) if id == self.canary_id => {
                tracing::error!(%message, "canary run failed");
            }
            Ok(Event::Failed { id, message }) => self.answer(&id, Err(message)),
            Ok(Event::Warm(w)) => self.status.send_modify(|s| s.warm = w),
            Ok(Event::Hello { .. } | Event::Fatal { .. }) => {}
            Err(e) => {
                // Fail the run it was about rather than leave it waiting forever.
                #[derive(serde::Deserialize)]
                struct IdOnly {
                    id: Option<String>,
                }
                let id = serde_json::from_str::<IdOnly>(line).ok().and_then(|i| i.id);
                tracing::error!(%e, run = ?id, "unreadable spawner event");
                if let Some(id) = id {
                    self.answer(&id, Err(format!("unreadable event: {e}")));
                }
            }
        }
    }

    /// A live run's event, to its listener.
    fn live(&mut self, id: &str, event: LiveEvent) {
        if let Some(on_event) = self.pending.get(id).and_then(|p| p.on_event.as_ref()) {
            on_event(event);
        }
    }

    fn answer(&mut self, id: &str, result: RunResult) {
        if let Some(p) = self.pending.remove(id) {
            let _ = p.done.send(result);
        }
    }

    /// The spawner is gone: every run it had ends as an internal error.
    fn fail_in_flight(&mut self) {
        for (_, p) in self.pending.drain() {
            let _ = p.done.send(Err(
                "the sandbox spawner died while the run was in flight".into()
            ));
        }
    }
}

#[cfg(test)]
mod event_line_tests {
    use super::*;

    async fn events_of(script: &str, max: usize) -> (Child, Events) {
        let mut child = Command::new("/bin/sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let out = child.stdout.take().expect("piped");
        (child, Events::with_limit(out, max))
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let (mut c, mut ev) = events_of("printf 'one\\ntwo\\npartial'", 64).await;
        assert_eq!(ev.next_line().await.unwrap().as_deref(), Some("one"));
        assert_eq!(ev.next_line().await.unwrap().as_deref(), Some("two"));
        assert_eq!(
            ev.next_line().await.unwrap(),
            None,
            "a partial last line is not an event"
        );
        c.wait().await.unwrap();

        let (mut c, mut ev) = events_of("printf 'short\\n%0200d\\n' 0", 64).await;
        assert_eq!(ev.next_line().await.unwrap().as_deref(), Some("short"));
        let e = ev.next_line().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        c.wait().await.unwrap();
    }
}

//! The server's side of the spawner: starts `execbox spawner` as a child process, sends it
//! orders, routes its events to the waiting runs, and restarts it if it dies (failing the runs
//! it had in flight as internal errors).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use execbox_proto::spawner::{Event, Order, RunOrder, SpawnerConfig};
use execbox_proto::{Limits, Mode, RunRecord, RunStatus, RuntimeInfo, SourceFile};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What the server knows of its spawner.
#[derive(Debug, Clone, Default)]
pub struct SpawnerStatus {
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
    pub runtimes: Vec<RuntimeInfo>,
    /// Its pid.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Why the first spawner could not start (no runtime, host refused): it is not restarted
    /// and the server stops.
    pub fatal: Option<String>,
}

impl SpawnerStatus {
    /// The runtime's language and version, once a spawner has said hello.
    pub fn runtime(&self) -> Option<(&str, &str)> {
        (!self.version.is_empty()).then_some((self.language.as_str(), self.version.as_str()))
    }
}

/// The outcome of one order: the final record, or an internal error for the log.
pub type RunResult = Result<RunRecord, String>;

enum Cmd {
    Run(Box<RunOrder>, oneshot::Sender<RunResult>),
    Cancel(String),
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
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<SpawnerStatus>,
}

/// Called with a run id when its payload has started.
pub type OnStarted = Arc<dyn Fn(&str) + Send + Sync>;

impl SpawnerClient {
    /// Start the spawner task; it keeps a spawner process alive until the client is dropped.
    pub fn start(cmd: SpawnerCommand, on_started: OnStarted) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let (status_tx, status) = watch::channel(SpawnerStatus::default());
        let task = tokio::spawn(supervise(cmd, rx, status_tx, on_started));
        (Self { tx, status }, task)
    }

    /// Send a run; the receiver yields its final record.
    pub async fn run(&self, order: RunOrder) -> oneshot::Receiver<RunResult> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Cmd::Run(_, tx))) =
            self.tx.send(Cmd::Run(Box::new(order), tx)).await
        {
            let _ = tx.send(Err("the spawner task is gone".into()));
        }
        rx
    }

    /// Ask the spawner to kill a run.
    pub async fn cancel(&self, id: &str) {
        let _ = self.tx.send(Cmd::Cancel(id.to_owned())).await;
    }

    /// Current status.
    pub fn status(&self) -> SpawnerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes with the status.
    pub fn watch(&self) -> watch::Receiver<SpawnerStatus> {
        self.status.clone()
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
    mut rx: mpsc::Receiver<Cmd>,
    status: watch::Sender<SpawnerStatus>,
    on_started: OnStarted,
) {
    let mut restarts = 0u64;
    loop {
        match run_one(&cmd, &mut rx, &status, &on_started).await {
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
    }
}

async fn run_one(
    cmd: &SpawnerCommand,
    rx: &mut mpsc::Receiver<Cmd>,
    status: &watch::Sender<SpawnerStatus>,
    on_started: &OnStarted,
) -> Exit {
    let mut child: Child = match Command::new(&cmd.exe)
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
    {
        Ok(c) => c,
        Err(e) => return Exit::Died(format!("cannot start {}: {e}", cmd.exe.display())),
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Exit::Died("spawner pipes missing".into());
    };
    let mut lines = BufReader::new(stdout).lines();
    if let Err(e) = stdin.write_all(&cmd.config.to_line()).await {
        let _ = child.kill().await;
        return Exit::Died(format!("write the spawner's configuration: {e}"));
    }

    // The spawner smoke-tests every runtime through the jail (compilers included) first.
    let hello = tokio::time::timeout(Duration::from_secs(180), lines.next_line()).await;
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
        }
        Some(Ok(Event::Fatal { message })) => {
            let _ = child.wait().await;
            return Exit::Fatal(message);
        }
        other => {
            let _ = child.kill().await;
            return Exit::Died(format!("no hello from the spawner: {other:?}"));
        }
    }

    let canary = canary_order(cmd.config.default_limits);
    let canary_id = canary.id.clone();
    if let Err(e) = stdin.write_all(&Order::Run(canary).to_line()).await {
        return Exit::Died(format!("write canary: {e}"));
    }

    // Orders are written by a task of their own, so reading events never waits on a write:
    // a large order and a large event in flight at once would otherwise block both processes
    // on full pipes. (The queue is bounded by admission: one order per admitted run, plus
    // cancels.)
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(line) = order_rx.recv().await {
            stdin.write_all(&line).await?;
            stdin.flush().await?;
        }
        Ok::<(), std::io::Error>(()) // dropping stdin: EOF for the spawner
    });
    let mut order_tx = Some(order_tx);
    let mut pending: HashMap<String, oneshot::Sender<RunResult>> = HashMap::new();
    let exit = loop {
        tokio::select! {
            c = rx.recv(), if order_tx.is_some() => match c {
                None => {
                    // Shutting down: EOF tells the spawner to cancel what runs and exit; keep
                    // reading so the final records still reach their runs.
                    order_tx = None;
                }
                Some(Cmd::Run(order, tx)) => {
                    let id = order.id.clone();
                    let sent = order_tx.as_ref().map(|w| w.send(Order::Run(*order).to_line()));
                    if let Some(Ok(())) = sent {
                        pending.insert(id, tx);
                    } else {
                        let _ = tx.send(Err("the spawner's order pipe is closed".into()));
                        break Exit::Died("order pipe closed".into());
                    }
                }
                Some(Cmd::Cancel(id)) => {
                    if let Some(w) = &order_tx {
                        if w.send(Order::Cancel { id }.to_line()).is_err() {
                            break Exit::Died("order pipe closed".into());
                        }
                    }
                }
            },
            line = lines.next_line() => match line {
                Ok(Some(l)) => match serde_json::from_str::<Event>(&l) {
                    Ok(Event::Started { id }) => on_started(&id),
                    Ok(Event::Finished { id, record }) if id == canary_id => {
                        let ok = record.status == RunStatus::Ok
                            && record.result == Some(serde_json::json!({"canary": 1}));
                        if ok {
                            tracing::info!("canary run ok");
                        } else {
                            tracing::error!(?record, "canary run failed");
                        }
                        status.send_modify(|s| s.canary_ok = ok);
                    }
                    Ok(Event::Finished { id, record }) => {
                        if let Some(tx) = pending.remove(&id) {
                            let _ = tx.send(Ok(*record));
                        }
                    }
                    Ok(Event::Failed { id, message }) => {
                        if id == canary_id {
                            tracing::error!(%message, "canary run failed");
                        } else if let Some(tx) = pending.remove(&id) {
                            let _ = tx.send(Err(message));
                        }
                    }
                    Ok(Event::Hello { .. } | Event::Fatal { .. }) => {}
                    Err(e) => {
                        // Fail the run it was about rather than leave it waiting forever.
                        #[derive(serde::Deserialize)]
                        struct IdOnly {
                            id: Option<String>,
                        }
                        let id = serde_json::from_str::<IdOnly>(&l).ok().and_then(|i| i.id);
                        tracing::error!(%e, run = ?id, "unreadable spawner event");
                        if let Some(tx) = id.and_then(|id| pending.remove(&id)) {
                            let _ = tx.send(Err(format!("unreadable event: {e}")));
                        }
                    }
                },
                Ok(None) | Err(_) => {
                    break if order_tx.is_none() {
                        Exit::Closed
                    } else {
                        Exit::Died("spawner exited".into())
                    };
                }
            },
        }
    };
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(
            "the sandbox spawner died while the run was in flight".into()
        ));
    }
    writer.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    exit
}

//! A spawner child of this binary (`execbox spawner`), started the way the server starts one:
//! its configuration on the first line of its stdin, its hello read back, then orders and
//! events. `execbox runtimes` reads only the hello; `execbox run --language` sends one order.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use execbox_proto::spawner::{Event, Order, SpawnerConfig, MAX_LINE};
use execbox_proto::RuntimeInfo;

/// A running `execbox spawner` child. Dropping it closes its stdin (the spawner cancels what
/// still runs and exits) and waits for it.
pub struct ChildSpawner {
    child: Child,
    stdin: Option<ChildStdin>,
    events: BufReader<ChildStdout>,
}

impl ChildSpawner {
    /// Start a spawner with `cfg` and wait for its hello: the runtimes that passed their smoke
    /// tests. A spawner that cannot start (its `fatal` event) is an error with its message.
    pub fn start(cfg: &SpawnerConfig) -> Result<(Self, Vec<RuntimeInfo>)> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("spawner")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the spawner")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("spawner pipes missing");
        };
        let mut sp = ChildSpawner {
            child,
            stdin: Some(stdin),
            events: BufReader::new(stdout),
        };
        sp.write(&cfg.to_line())?;
        match sp.next_event()? {
            Event::Hello { runtimes, .. } => Ok((sp, runtimes)),
            Event::Fatal { message } => bail!("{message}"),
            other => bail!("unexpected first event {other:?}"),
        }
    }

    fn write(&mut self, line: &[u8]) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the spawner's stdin is closed")?;
        stdin
            .write_all(line)
            .and_then(|()| stdin.flush())
            .context("writing to the spawner")
    }

    /// Send one order.
    pub fn send(&mut self, order: &Order) -> Result<()> {
        self.write(&order.to_line())
    }

    /// The next event; the spawner ending its output is an error.
    pub fn next_event(&mut self) -> Result<Event> {
        let mut line = String::new();
        let n = (&mut self.events)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .context("reading the spawner's events")?;
        if n == 0 {
            bail!("the spawner exited without answering (its messages are above)");
        }
        serde_json::from_str(&line).with_context(|| {
            let head: String = line.chars().take(200).collect();
            format!("the spawner answered {head:?}")
        })
    }
}

impl Drop for ChildSpawner {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the spawner finishes and exits
        let _ = self.child.wait();
    }
}

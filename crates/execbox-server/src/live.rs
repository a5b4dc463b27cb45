//! The events of live runs (`docs/live-protocol.md`): each live run has one append-only
//! [`LiveLog`] (accepted, stages, output chunks, exit), shared by every reader — its WebSocket
//! session and any number of `GET /v1/runs/{id}/events` streams. A reader holds only a
//! cursor into it, so a slow or stalled reader costs no memory of its own: it just falls
//! behind. The log is bounded: its output chunks are the run's output, which the spawner caps
//! per stream (`output_bytes`); past [`LiveLog::bound_for`] (a backstop, see there) chunks
//! are dropped and the stream is marked `truncated`. Logs are forgotten with their runs
//! (`--retention-secs`, and the same count cap as the run store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use execbox_proto::live::{OutputStream, Stage, MAX_CHUNK_BYTES};
use execbox_proto::{Limits, RunRecord};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

/// One event of a live run, as a WebSocket `execbox.v2` message and an SSE event's data (the
/// SSE event's name is its `type`, its id its index in the run's log).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveMessage {
    /// The run was admitted.
    Accepted {
        /// Run id.
        id: String,
    },
    /// A stage started (compile, then run; with cases, one run stage per case).
    Stage {
        /// Which.
        stage: Stage,
        /// The case's index, for a run with cases.
        #[serde(skip_serializing_if = "Option::is_none")]
        case: Option<usize>,
    },
    /// Output on stdout, as it was read.
    Stdout {
        /// The text (never split inside a character; invalid UTF-8 as U+FFFD).
        data: String,
        /// The stream reached its cap: nothing more of it follows.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Output on stderr, as it was read.
    Stderr {
        /// The text.
        data: String,
        /// The stream reached its cap: nothing more of it follows.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// The run ended: its final record (with the whole output, as `GET /v1/runs/{id}`).
    Exit {
        /// The record.
        record: Box<RunRecord>,
    },
}

impl LiveMessage {
    /// The `type` (the SSE event name).
    pub fn kind(&self) -> &'static str {
        match self {
            LiveMessage::Accepted { .. } => "accepted",
            LiveMessage::Stage { .. } => "stage",
            LiveMessage::Stdout { .. } => "stdout",
            LiveMessage::Stderr { .. } => "stderr",
            LiveMessage::Exit { .. } => "exit",
        }
    }

    /// An output chunk.
    pub fn output(stream: OutputStream, data: String, truncated: bool) -> Self {
        match stream {
            OutputStream::Stdout => LiveMessage::Stdout { data, truncated },
            OutputStream::Stderr => LiveMessage::Stderr { data, truncated },
        }
    }
}

/// What an output event costs the log besides its text (its allocations), in the bound.
pub const EVENT_OVERHEAD: usize = 128;

#[derive(Debug, Default)]
struct Inner {
    events: Vec<Arc<LiveMessage>>,
    /// Bytes of output held.
    bytes: usize,
    /// A stream marked truncated by the backstop: later chunks of it are dropped.
    cut: [bool; 2],
    /// When the `exit` event came.
    done: Option<Instant>,
}

/// Stdin for a run whose order has not reached the sandbox yet (it is queued): kept until
/// it has, then passed on in order.
#[derive(Debug, Default)]
struct StdinGate {
    open: bool,
    held: Vec<(String, bool)>,
}

/// One live run's events (and the gate its stdin passes).
#[derive(Debug)]
pub struct LiveLog {
    inner: Mutex<Inner>,
    stdin: Mutex<StdinGate>,
    /// The number of events, for readers to wait on.
    len: watch::Sender<usize>,
    max_bytes: usize,
}

impl LiveLog {
    /// An empty log holding at most `max_bytes` of output text.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            stdin: Mutex::default(),
            len: watch::channel(0).0,
            max_bytes,
        }
    }

    /// The backstop for a run of `stages` stages with `limits`: per stage both streams at
    /// their cap, each byte decoded at worst as U+FFFD (3 bytes), and [`EVENT_OVERHEAD`] for
    /// each chunk the spawner may send (one per stream per 5 ms of wall time, plus one per
    /// full 64 KiB); plus a chunk. The spawner never sends more; this only holds if it
    /// misbehaved.
    pub fn bound_for(limits: &Limits, stages: usize) -> usize {
        let out = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX / 16);
        let wall = usize::try_from(limits.wall_time_ms).unwrap_or(usize::MAX / 16);
        let events = 2 * (wall / 5 + out / MAX_CHUNK_BYTES + 4);
        out.saturating_mul(6)
            .saturating_add(events.saturating_mul(EVENT_OVERHEAD))
            .saturating_mul(stages)
            .saturating_add(MAX_CHUNK_BYTES)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event (nothing after `exit`).
    pub fn push(&self, msg: LiveMessage) {
        let n = {
            let mut g = self.lock();
            if g.done.is_some() {
                return;
            }
            let msg = match msg {
                LiveMessage::Stdout { data, truncated } => self.chunk(&mut g, 0, data, truncated),
                LiveMessage::Stderr { data, truncated } => self.chunk(&mut g, 1, data, truncated),
                LiveMessage::Exit { .. } => {
                    g.done = Some(Instant::now());
                    Some(msg)
                }
                other => Some(other),
            };
            let Some(msg) = msg else { return };
            g.events.push(Arc::new(msg));
            g.events.len()
        };
        self.len.send_replace(n);
    }

    fn chunk(&self, g: &mut Inner, i: usize, data: String, truncated: bool) -> Option<LiveMessage> {
        let stream = [OutputStream::Stdout, OutputStream::Stderr][i];
        if g.cut[i] {
            return None;
        }
        let cost = data.len() + EVENT_OVERHEAD;
        if g.bytes + cost > self.max_bytes {
            g.cut[i] = true;
            return Some(LiveMessage::output(stream, String::new(), true));
        }
        g.bytes += cost;
        Some(LiveMessage::output(stream, data, truncated))
    }

    /// The event at `index`, if it was pushed.
    pub fn get(&self, index: usize) -> Option<Arc<LiveMessage>> {
        self.lock().events.get(index).cloned()
    }

    /// The event at `index`, once it is pushed; `None` if the log is complete before it.
    pub async fn next(&self, index: usize) -> Option<Arc<LiveMessage>> {
        let mut rx = self.len.subscribe();
        loop {
            if let Some(e) = self.get(index) {
                return Some(e);
            }
            if self.lock().done.is_some() {
                return None;
            }
            // The sender lives as long as the log: changed() cannot fail while we hold it.
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Pass stdin on with `forward`, or hold it until [`LiveLog::open_stdin`].
    pub fn stdin(&self, data: String, eof: bool, forward: impl FnOnce(String, bool)) {
        let mut g = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if g.open {
            forward(data, eof);
        } else {
            g.held.push((data, eof));
        }
    }

    /// The run's order reached the sandbox: pass on what was held (with `forward`, in order),
    /// and from now on all stdin at once.
    pub fn open_stdin(&self, mut forward: impl FnMut(String, bool)) {
        let mut g = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        g.open = true;
        for (data, eof) in std::mem::take(&mut g.held) {
            forward(data, eof);
        }
    }

    /// Returns once the `exit` event is in.
    pub async fn done(&self) {
        let mut rx = self.len.subscribe();
        while !self.is_done() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Bytes of output held (text and [`EVENT_OVERHEAD`] per chunk).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether the `exit` event is in.
    pub fn is_done(&self) -> bool {
        self.lock().done.is_some()
    }

    fn done_at(&self) -> Option<Instant> {
        self.lock().done
    }
}

#[derive(Debug)]
struct Entry {
    log: Arc<LiveLog>,
    owner: Option<String>,
}

/// The logs of live runs, by run id.
#[derive(Debug, Default)]
pub struct LiveRuns {
    logs: Mutex<HashMap<String, Entry>>,
}

impl LiveRuns {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register run `id`'s log.
    pub fn insert(&self, id: &str, owner: Option<String>, log: Arc<LiveLog>) {
        let e = Entry { log, owner };
        self.lock().insert(id.to_owned(), e);
    }

    /// Run `id`'s log, if it exists and `owner` may see it.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Option<Arc<LiveLog>> {
        let logs = self.lock();
        let e = logs.get(id)?;
        (e.owner.as_deref() == owner).then(|| e.log.clone())
    }

    /// Forget the logs of runs that ended more than `retention` ago (as the run store forgets
    /// their records), then the oldest complete ones while more than `max` logs or more than
    /// `max_bytes` of output are held (0: no byte bound).
    pub fn gc(&self, retention: Duration, max: usize, max_bytes: usize) -> usize {
        let mut logs = self.lock();
        let before = logs.len();
        let now = Instant::now();
        logs.retain(|_, e| {
            e.log
                .done_at()
                .is_none_or(|t| now.duration_since(t) < retention)
        });
        let mut total: usize = logs.values().map(|e| e.log.bytes()).sum();
        let over = |n: usize, total: usize| n > max || (max_bytes > 0 && total > max_bytes);
        if over(logs.len(), total) {
            let mut done: Vec<(Instant, String)> = logs
                .iter()
                .filter_map(|(k, e)| e.log.done_at().map(|t| (t, k.clone())))
                .collect();
            done.sort();
            for (_, k) in done {
                if !over(logs.len(), total) {
                    break;
                }
                if let Some(e) = logs.remove(&k) {
                    total -= e.log.bytes();
                }
            }
        }
        before - logs.len()
    }

    /// How many logs are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no log is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execbox_proto::RunStatus;

    fn out(s: &str) -> LiveMessage {
        LiveMessage::output(OutputStream::Stdout, s.into(), false)
    }

    #[tokio::test]
    async fn readers_wait_for_events_and_stop_after_exit() {
        let log = Arc::new(LiveLog::new(1000));
        log.push(LiveMessage::Accepted { id: "r".into() });
        let reader = tokio::spawn({
            let log = log.clone();
            async move {
                let mut seen = Vec::new();
                let mut i = 0;
                while let Some(e) = log.next(i).await {
                    seen.push(e.kind());
                    i += 1;
                }
                seen
            }
        });
        tokio::task::yield_now().await;
        log.push(out("a"));
        let rec = RunRecord::new("r", "python", "3", RunStatus::Ok, "t");
        log.push(LiveMessage::Exit {
            record: Box::new(rec),
        });
        log.push(out("late"));
        assert_eq!(reader.await.unwrap(), ["accepted", "stdout", "exit"]);
        let json = serde_json::to_value(&*log.get(1).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"type": "stdout", "data": "a"}));
    }

    #[test]
    fn stdin_is_held_until_the_order_is_sent_then_passed_on_in_order() {
        let log = LiveLog::new(10);
        let sent = std::cell::RefCell::new(Vec::new());
        let fwd = |d: String, e: bool| sent.borrow_mut().push((d, e));
        log.stdin("a".into(), false, fwd);
        log.stdin("b".into(), true, fwd);
        assert!(sent.borrow().is_empty());
        log.open_stdin(fwd);
        log.stdin("c".into(), false, fwd);
        let want = [("a", false), ("b", true), ("c", false)].map(|(d, e)| (d.to_owned(), e));
        assert_eq!(*sent.borrow(), want);
    }

    #[test]
    fn output_beyond_the_bound_is_cut_with_a_marker() {
        let log = LiveLog::new(2 * EVENT_OVERHEAD + 4);
        log.push(out("abc"));
        log.push(out("def"));
        log.push(out("ghi"));
        log.push(LiveMessage::output(OutputStream::Stderr, "x".into(), false));
        let kinds: Vec<String> = (0..4)
            .filter_map(|i| log.get(i))
            .map(|e| serde_json::to_string(&*e).unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                r#"{"type":"stdout","data":"abc"}"#,
                r#"{"type":"stdout","data":"","truncated":true}"#,
                r#"{"type":"stderr","data":"x"}"#,
            ]
        );
        assert_eq!(log.bytes(), 2 * EVENT_OVERHEAD + 4);
    }

    #[test]
    fn logs_are_seen_by_their_owner_and_forgotten_after_retention() {
        let runs = LiveRuns::default();
        let log = Arc::new(LiveLog::new(10));
        runs.insert("a", Some("alice".into()), log.clone());
        assert!(runs.get("a", Some("bob")).is_none());
        assert!(runs.get("a", Some("alice")).is_some());
        assert_eq!(runs.gc(Duration::ZERO, 10, 0), 0, "a running log is kept");
        log.push(LiveMessage::Exit {
            record: Box::new(RunRecord::new("a", "p", "3", RunStatus::Ok, "t")),
        });
        assert_eq!(runs.gc(Duration::from_secs(60), 10, 0), 0);
        assert_eq!(runs.gc(Duration::ZERO, 10, 0), 1);
        assert!(runs.is_empty());
        // Beyond the byte bound, the oldest complete logs go first.
        let exit = || LiveMessage::Exit {
            record: Box::new(RunRecord::new("x", "p", "3", RunStatus::Ok, "t")),
        };
        for id in ["a", "b", "c"] {
            let log = Arc::new(LiveLog::new(1000));
            log.push(out("0123456789"));
            log.push(exit());
            runs.insert(id, None, log);
        }
        runs.insert("live", None, Arc::new(LiveLog::new(100)));
        assert_eq!(
            runs.gc(Duration::from_secs(60), 10, 2 * (EVENT_OVERHEAD + 10) + 5),
            1
        );
        assert!(runs.get("a", None).is_none() && runs.get("b", None).is_some());
        assert_eq!(runs.gc(Duration::from_secs(60), 2, 0), 1);
        assert!(runs.get("c", None).is_some() && runs.get("live", None).is_some());
    }
}

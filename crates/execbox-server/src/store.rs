//! The run store: every run's record, who owns it, and how to cancel it. In memory; finished
//! runs are forgotten after the retention period (and beyond a count cap, oldest first). With
//! Redis (`crate::shared::redis`) it holds the runs this replica drives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use execbox_proto::{ErrorBody, OutputFile, RunRecord, RunStatus, StepReport};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    record: RunRecord,
    owner: Option<String>,
    cancel: CancellationToken,
    finished: Option<Instant>,
    /// Approximate bytes held by the record (its output and result).
    bytes: usize,
}

/// All runs the server knows.
#[derive(Debug, Default)]
pub struct RunStore {
    runs: Mutex<HashMap<String, Entry>>,
    /// Most bytes of finished records kept (0: no bound). Output caps bound one record;
    /// this bounds them all, so a flood of async runs with large outputs cannot grow the
    /// server without limit.
    max_bytes: usize,
}

fn record_bytes(r: &RunRecord) -> usize {
    fn step(s: Option<&StepReport>) -> usize {
        s.map_or(0, |s| s.stdout.len() + s.stderr.len() + 128)
    }
    fn files(f: &[OutputFile]) -> usize {
        f.iter()
            .map(|f| f.name.len() + f.content_base64.len() + 64)
            .sum()
    }
    fn error(e: Option<&ErrorBody>) -> usize {
        e.map_or(0, |e| e.code.as_str().len() + e.message.len())
    }
    // Everything of size a record can carry: compile and run steps, every case's step, error
    // and files, the run's files, the result (bounded by the result cap; its JSON length is a
    // fair estimate) and the error.
    let cases: usize = r
        .cases
        .iter()
        .map(|c| step(c.run.as_ref()) + files(&c.files) + error(c.error.as_ref()) + 64)
        .sum();
    let result = r.result.as_ref().map_or(0, |v| v.to_string().len());
    step(r.compile.as_ref())
        + step(r.run.as_ref())
        + cases
        + files(&r.files)
        + result
        + error(r.error.as_ref())
        + 512
}

impl RunStore {
    /// A store that keeps at most `max_bytes` of finished records (0: unbounded).
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self {
            runs: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a queued run.
    pub fn insert(&self, record: RunRecord, owner: Option<String>, cancel: CancellationToken) {
        let id = record.id.clone();
        self.lock().insert(
            id,
            Entry {
                record,
                owner,
                cancel,
                finished: None,
                bytes: 0,
            },
        );
    }

    /// The record, if it exists and `owner` may see it.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Option<RunRecord> {
        let runs = self.lock();
        let e = runs.get(id)?;
        (e.owner.as_deref() == owner).then(|| e.record.clone())
    }

    /// Mark running (the spawner reported the payload started).
    pub fn set_running(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            if e.record.status == RunStatus::Queued {
                e.record.status = RunStatus::Running;
            }
        }
    }

    /// Store the final record.
    pub fn finish(&self, record: RunRecord) {
        let mut runs = self.lock();
        if let Some(e) = runs.get_mut(&record.id) {
            e.bytes = record_bytes(&record);
            e.record = record;
            e.finished = Some(Instant::now());
        }
        if self.max_bytes > 0 {
            let total = std::cell::Cell::new(runs.values().map(|e| e.bytes).sum::<usize>());
            let max = self.max_bytes;
            Self::evict_oldest(
                &mut runs,
                |_| total.get() > max,
                |gone| total.set(total.get() - gone.bytes),
            );
        }
    }

    /// Remove finished entries, oldest first, while `over` says the store is too big
    /// (`removed` is told of each entry taken out, so `over` can stay O(1)).
    fn evict_oldest(
        runs: &mut HashMap<String, Entry>,
        mut over: impl FnMut(&HashMap<String, Entry>) -> bool,
        mut removed: impl FnMut(&Entry),
    ) -> usize {
        if !over(runs) {
            return 0;
        }
        let mut done: Vec<(Instant, String)> = runs
            .iter()
            .filter_map(|(k, e)| e.finished.map(|t| (t, k.clone())))
            .collect();
        done.sort();
        let mut n = 0;
        for (_, k) in done {
            if !over(runs) {
                break;
            }
            if let Some(e) = runs.remove(&k) {
                removed(&e);
                n += 1;
            }
        }
        n
    }

    /// Request cancellation. Returns the record as it is now, or `None` if unknown/not visible.
    pub fn cancel(&self, id: &str, owner: Option<&str>) -> Option<RunRecord> {
        let runs = self.lock();
        let e = runs.get(id)?;
        if e.owner.as_deref() != owner {
            return None;
        }
        if !e.record.status.is_final() {
            e.cancel.cancel();
        }
        Some(e.record.clone())
    }

    /// Cancel run `id` if it is not final, whoever owns it (a cancel requested through
    /// another replica).
    pub fn cancel_local(&self, id: &str) {
        if let Some(e) = self.lock().get(id) {
            if !e.record.status.is_final() {
                e.cancel.cancel();
            }
        }
    }

    /// The runs that are not final, with their owners.
    pub fn in_flight(&self) -> Vec<(String, Option<String>)> {
        self.lock()
            .iter()
            .filter(|(_, e)| !e.record.status.is_final())
            .map(|(k, e)| (k.clone(), e.owner.clone()))
            .collect()
    }

    /// Who owns run `id` (`None`: anonymous or unknown).
    pub fn owner(&self, id: &str) -> Option<String> {
        self.lock().get(id).and_then(|e| e.owner.clone())
    }

    /// Cancel every run that is not final (shutdown).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            if !e.record.status.is_final() {
                e.cancel.cancel();
            }
        }
    }

    /// Forget finished runs older than `retention`, then the oldest finished ones beyond `max`.
    pub fn gc(&self, retention: Duration, max: usize) -> usize {
        let mut runs = self.lock();
        let before = runs.len();
        let now = Instant::now();
        runs.retain(|_, e| e.finished.is_none_or(|t| now.duration_since(t) < retention));
        Self::evict_oldest(&mut runs, |r| r.len() > max, |_| {});
        before - runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> RunRecord {
        RunRecord::new(id, "python", "3", RunStatus::Queued, "t")
    }

    #[test]
    fn owners_only_see_their_runs_and_finished_runs_expire() {
        let s = RunStore::default();
        let tok = CancellationToken::new();
        s.insert(rec("a"), Some("alice".into()), tok.clone());
        assert!(s.get("a", Some("bob")).is_none());
        assert!(s.cancel("a", Some("bob")).is_none());
        assert!(!tok.is_cancelled());
        assert_eq!(s.get("a", Some("alice")).unwrap().status, RunStatus::Queued);
        s.set_running("a");
        assert_eq!(
            s.get("a", Some("alice")).unwrap().status,
            RunStatus::Running
        );
        s.cancel("a", Some("alice")).unwrap();
        assert!(tok.is_cancelled());
        let mut done = rec("a");
        done.status = RunStatus::Cancelled;
        s.finish(done);
        assert_eq!(s.gc(Duration::from_secs(60), 100), 0);
        assert_eq!(s.gc(Duration::ZERO, 100), 1);
        assert!(s.lock().is_empty());
    }

    #[test]
    fn byte_cap_drops_oldest_finished_records() {
        // each record: 1000 bytes of output + step and record overheads (1640): two fit
        let s = RunStore::with_max_bytes(3400);
        for id in ["a", "b", "c"] {
            s.insert(rec(id), None, CancellationToken::new());
            let mut r = rec(id);
            r.status = RunStatus::Ok;
            r.run = Some(execbox_proto::StepReport {
                stdout: "x".repeat(1000),
                ..Default::default()
            });
            s.finish(r);
        }
        assert!(s.get("a", None).is_none(), "oldest evicted");
        assert!(s.get("b", None).is_some() && s.get("c", None).is_some());
    }

    #[test]
    fn cases_files_and_compile_output_count_against_the_cap() {
        let big = execbox_proto::StepReport {
            stdout: "x".repeat(10_000),
            ..Default::default()
        };
        let mut r = rec("a");
        let small = record_bytes(&r);
        r.compile = Some(big.clone());
        r.cases = vec![execbox_proto::CaseReport {
            index: 0,
            status: RunStatus::Ok,
            error: None,
            passed: None,
            run: Some(big),
            files: vec![OutputFile {
                name: "f".into(),
                content_base64: "x".repeat(5_000),
                size: 3_750,
            }],
        }];
        assert!(record_bytes(&r) >= small + 25_000, "{}", record_bytes(&r));
    }

    #[test]
    fn count_cap_drops_oldest_finished_first() {
        let s = RunStore::default();
        for id in ["1", "2", "3"] {
            s.insert(rec(id), None, CancellationToken::new());
            let mut r = rec(id);
            r.status = RunStatus::Ok;
            s.finish(r);
        }
        s.insert(rec("live"), None, CancellationToken::new());
        assert_eq!(s.gc(Duration::from_secs(60), 2), 2);
        assert!(s.get("3", None).is_some() && s.get("live", None).is_some());
    }
}

//! The hostile corpus: every fixture in `fixtures/hostile/` runs through the real jail, by way of
//! the real `execbox run` binary, and its run record is checked against
//! `fixtures/hostile/expectations.toml`.
//!
//! Order matters, because some fixtures would hurt the host if the jail failed (as root,
//! `kill(-1, SIGKILL)` ends every process on the machine):
//!
//! 1. canaries prove containment (own pid namespace, unprivileged host uid, memory limit);
//!    if one fails, no destructive case runs and the test fails loudly;
//! 2. the independent cases, at most [`MAX_JAILS`] jails at a time (CI has two cores);
//! 3. the concurrent pairs (x2): the partner starts first, the attacker right after;
//! 4. the sequential pair (x2 sequential): the second run looks for what the first left, and
//!    the cases that run alone so the host's shared memory can be measured around them;
//! 5. after each phase, nothing of any run may remain on the host: no process with an execbox
//!    host uid, no cgroup below `/sys/fs/cgroup/*/execbox/`, no jail root mount.
//!
//! Every run gets a unique `APP_JWT_SECRET` in the CLI's environment and the host's temp dir
//! holds a file with the same secret; it must not appear in any record.
//!
//! The corpus needs root. Outside CI a non-root run reports `SKIPPED` on stderr with the reason;
//! with `CI` set, a missing capability is a failure. `corpus_is_complete` needs nothing and always runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

mod support;

use support::host::{execbox_cgroup_parents, jail_uid, leftovers};

/// Most jails alive at once.
const MAX_JAILS: usize = 4;
/// The CLI's default wall-clock limit, used to compute how long to wait for a run.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Extra time a run may take beyond its own limit (jail set-up, pandas import on a busy CI).
const WAIT_SLACK: Duration = Duration::from_secs(30);
/// More for another language: its spawner smoke-tests the runtime first, and a compiled one
/// compiles (smoke test and fixture) in jails of their own.
const OTHER_LANGUAGE_SLACK: Duration = Duration::from_secs(40);
/// The language a case without a `language` key is written in (run by the Python fast path).
const PYTHON: &str = "python";
/// Each language of the corpus and its fixtures' extension.
const LANGUAGES: [(&str, &str); 3] = [(PYTHON, "py"), ("c", "c"), ("javascript", "js")];
/// How long the partner of a concurrent pair runs alone before the attacker starts.
const PARTNER_HEAD_START: Duration = Duration::from_millis(200);
/// Replaced in a case's `stdin` by a port the test listens on at 127.0.0.1.
const PORT_PLACEHOLDER: &str = "{loopback_port}";
/// Replaced in a case's `stdin` by an abstract unix socket name the test listens on.
const ABSTRACT_PLACEHOLDER: &str = "{abstract_socket}";
/// Strings in a printed record longer than this are shown as head and tail only.
const PRINT_STRING_MAX: usize = 2048;
/// Upper bound on what the test reads from one CLI stream.
const READ_CAP: u64 = 64 << 20;

// ------------------------------------------------------------------------------------------
// expectations.toml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

/// One `[[case]]`; see the header of `expectations.toml` for the meaning of each key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    #[serde(default = "python")]
    language: String,
    attack: u32,
    mode: Mode,
    status: Statuses,
    why: String,
    #[serde(default)]
    canary: bool,
    #[serde(default)]
    destructive: bool,
    result: Option<Value>,
    result_contains: Option<Map<String, Value>>,
    stdout_contains: Option<String>,
    stdout_not_contains: Option<String>,
    stderr_contains: Option<String>,
    stdout_max_bytes: Option<usize>,
    stderr_max_bytes: Option<usize>,
    truncated: Option<bool>,
    signal: Option<i64>,
    exit_code: Option<i64>,
    error_code: Option<String>,
    limit: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    stdin: Option<String>,
    concurrent_with: Option<String>,
    distinct_from_partner: Option<String>,
    run_after: Option<String>,
    host_shmem_growth_max_mib: Option<u64>,
}

fn python() -> String {
    PYTHON.to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Main,
    Program,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Main => "main",
            Mode::Program => "program",
        }
    }
}

/// One expected status, or the list of acceptable ones.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Statuses {
    One(String),
    Any(Vec<String>),
}

impl Statuses {
    fn allows(&self, status: &str) -> bool {
        match self {
            Statuses::One(s) => s == status,
            Statuses::Any(list) => list.iter().any(|s| s == status),
        }
    }
}

impl fmt::Display for Statuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statuses::One(s) => write!(f, "{s:?}"),
            Statuses::Any(list) => write!(f, "one of {list:?}"),
        }
    }
}

impl Case {
    fn timeout(&self) -> Duration {
        let ms = self
            .args
            .iter()
            .position(|a| a == "--timeout-ms")
            .and_then(|i| self.args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        Duration::from_millis(ms)
    }

    fn label(&self) -> String {
        format!("{} (attack {}: {})", self.file, self.attack, self.why)
    }

    /// How long past its own limit the test waits for the CLI.
    fn slack(&self) -> Duration {
        if self.language == PYTHON {
            WAIT_SLACK
        } else {
            WAIT_SLACK + OTHER_LANGUAGE_SLACK
        }
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hostile")
}

fn load_corpus() -> Vec<Case> {
    let path = fixtures_dir().join("expectations.toml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let corpus: Corpus =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
    corpus.case
}

// ------------------------------------------------------------------------------------------
// running `execbox run`

/// What one `execbox run` produced.
struct Outcome {
    /// The parsed run record, when the CLI printed one.
    record: Option<Value>,
    /// Everything the CLI printed on stdout (the record's text).
    stdout: String,
    /// The CLI's own stderr.
    stderr: String,
    /// Problems seen outside the record: the CLI failed or hung, the host saw a connection.
    problems: Vec<String>,
    elapsed: Duration,
}

impl Outcome {
    /// A run that never produced a record.
    fn failed(problem: String) -> Self {
        Outcome {
            record: None,
            stdout: String::new(),
            stderr: String::new(),
            problems: vec![problem],
            elapsed: Duration::ZERO,
        }
    }

    fn status(&self) -> &str {
        self.record
            .as_ref()
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("<no record>")
    }

    fn result(&self) -> Option<&Value> {
        self.record.as_ref().and_then(|r| r.get("result"))
    }
}

/// A host endpoint offered to a run (its address goes in on stdin); it must see no connection.
enum HostListener {
    Tcp(TcpListener),
    Abstract(UnixListener),
}

impl HostListener {
    /// Listen on a fresh port of the host loopback.
    fn tcp() -> io::Result<(Self, String)> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        Ok((HostListener::Tcp(l), port.to_string()))
    }

    /// Listen on a fresh abstract unix socket name in the host's network namespace.
    fn abstract_unix() -> io::Result<(Self, String)> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("execbox-hostile-{}-{n}", std::process::id());
        let l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
        l.set_nonblocking(true)?;
        Ok((HostListener::Abstract(l), name))
    }

    /// Describe a connection that came in, if one did.
    fn intrusion(&self) -> Option<String> {
        let accepted = match self {
            HostListener::Tcp(l) => l.accept().map(|(_, peer)| format!("tcp from {peer}")),
            HostListener::Abstract(l) => l.accept().map(|_| "abstract unix socket".to_owned()),
        };
        match accepted {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Ok(what) => Some(format!(
                "ESCAPE: the host listener accepted a connection ({what})"
            )),
            Err(e) => Some(format!("checking the host listener failed: {e}")),
        }
    }
}

/// A CLI process on its way, with threads draining its pipes.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
    started: Instant,
    deadline: Instant,
    /// Kept open for the whole run; must see no connection.
    listeners: Vec<HostListener>,
}

/// How a case reaches the jail.
enum Transport {
    /// `execbox run` (the cold path).
    Cli,
    /// `POST /v1/runs` to a running `execbox serve` whose template serves main-mode Python
    /// (the warm path), with curl so that each run is a child process like the CLI.
    Warm {
        /// The server's base URL.
        base: String,
        /// A token it accepts.
        token: String,
        /// Where request bodies are written.
        dir: PathBuf,
    },
}

struct Runner {
    bin: PathBuf,
    fixtures: PathBuf,
    sentinel: String,
    transport: Transport,
}

impl Runner {
    fn warm(&self) -> bool {
        matches!(self.transport, Transport::Warm { .. })
    }

    /// The command of one case over the transport; `stdin` is the case's stdin, placeholders
    /// replaced.
    fn command(&self, case: &Case, stdin: Option<String>) -> Result<Command, String> {
        let (base, token, dir) = match &self.transport {
            Transport::Cli => {
                let mut cmd = Command::new(&self.bin);
                cmd.arg("run")
                    .arg(self.fixtures.join(&case.file))
                    .arg("--mode")
                    .arg(case.mode.as_str());
                // Python takes the fast path (no flag); other languages go through a spawner.
                if case.language != PYTHON {
                    cmd.arg("--language").arg(&case.language);
                }
                if let Some(text) = stdin {
                    cmd.arg("--stdin").arg(text);
                }
                cmd.args(&case.args);
                return Ok(cmd);
            }
            Transport::Warm { base, token, dir } => (base, token, dir),
        };
        let source = fs::read_to_string(self.fixtures.join(&case.file))
            .map_err(|e| format!("read {}: {e}", case.file))?;
        let mut limits = Map::new();
        for pair in case.args.chunks(2) {
            let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
            match (pair[0].as_str(), value) {
                ("--timeout-ms", Some(v)) => limits.insert("timeout_ms".into(), v.into()),
                ("--memory-mb", Some(v)) => limits.insert("memory_mb".into(), v.into()),
                (other, _) => return Err(format!("no API form for the CLI argument {other}")),
            };
        }
        let body = serde_json::json!({
            "language": case.language,
            "mode": case.mode.as_str(),
            "files": [{"name": "main.py", "content": source}],
            "stdin": stdin.unwrap_or_default(),
            "limits": limits,
        });
        let file = dir.join(format!("{}.json", case.file));
        fs::write(&file, body.to_string()).map_err(|e| format!("write {}: {e}", file.display()))?;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time"])
            .arg((case.timeout() + case.slack()).as_secs().to_string())
            .args(["-H", "content-type: application/json", "-H"])
            .arg(format!("authorization: Bearer {token}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{base}/v1/runs"));
        Ok(cmd)
    }

    fn start(&self, case: &Case) -> Result<Running, String> {
        let mut listeners = Vec::new();
        let mut stdin_text = None;
        if let Some(stdin) = &case.stdin {
            let mut text = stdin.clone();
            let kinds = [
                (PORT_PLACEHOLDER, HostListener::tcp as fn() -> _),
                (ABSTRACT_PLACEHOLDER, HostListener::abstract_unix),
            ];
            for (placeholder, listen) in kinds {
                if text.contains(placeholder) {
                    let (l, address) =
                        listen().map_err(|e| format!("cannot listen for {placeholder}: {e}"))?;
                    text = text.replace(placeholder, &address);
                    listeners.push(l);
                }
            }
            stdin_text = Some(text);
        }
        let mut cmd = self.command(case, stdin_text)?;
        cmd.env("APP_JWT_SECRET", &self.sentinel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let started = Instant::now();
        Ok(Running {
            child,
            stdout,
            stderr,
            started,
            deadline: started + case.timeout() + case.slack(),
            listeners,
        })
    }

    fn finish(&self, mut running: Running) -> Outcome {
        let mut problems = Vec::new();
        let status = wait_until(&mut running.child, running.deadline, &mut problems);
        let elapsed = running.started.elapsed();
        let grace = Duration::from_secs(5);
        let stdout = running.stdout.recv_timeout(grace).unwrap_or_else(|_| {
            problems.push(
                "the CLI's stdout stayed open after it exited (inherited by a jailed process?)"
                    .into(),
            );
            Vec::new()
        });
        let stderr = running.stderr.recv_timeout(grace).unwrap_or_default();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        if let Some(status) = status {
            if !status.success() {
                problems.push(format!(
                    "`execbox run` (or curl) itself failed ({status}); its stderr:\n{}",
                    indent(&stderr)
                ));
            }
        }
        let record = match serde_json::from_str::<Value>(&stdout) {
            Ok(v) if v.is_object() => Some(v),
            Ok(_) | Err(_) if problems.is_empty() => {
                problems.push(format!(
                    "stdout is not exactly one JSON record; it was:\n{}\nstderr:\n{}",
                    indent(&abbreviate_str(&stdout)),
                    indent(&stderr)
                ));
                None
            }
            _ => None,
        };
        problems.extend(running.listeners.iter().filter_map(HostListener::intrusion));
        if self.warm() {
            if let Some(r) = &record {
                if r.get("warm") != Some(&Value::Bool(true)) {
                    problems.push(
                        "the run did not take the warm path (record.warm is not true)".into(),
                    );
                }
            }
        }
        Outcome {
            record,
            stdout,
            stderr,
            problems,
            elapsed,
        }
    }

    fn run(&self, case: &Case) -> Outcome {
        match self.start(case) {
            Ok(running) => self.finish(running),
            Err(problem) => Outcome::failed(problem),
        }
    }
}

/// Read a pipe to its end (bounded) on a thread; the bytes arrive on the returned channel.
fn drain(pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.take(READ_CAP).read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Wait for the CLI until `deadline`; past it, kill it (it is our own child) and say so.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
    problems: &mut Vec<String>,
) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                problems
                    .push("`execbox run` did not finish in time and was killed by the test".into());
                return None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                problems.push(format!("waiting for `execbox run` failed: {e}"));
                return None;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// checking a record

/// Everything wrong with one run, as readable lines; empty when the case passed.
fn check(case: &Case, out: &Outcome, sentinel: &str) -> Vec<String> {
    let mut fails = out.problems.clone();
    if out.stdout.contains(sentinel) || out.stderr.contains(sentinel) {
        fails.push("SECRET LEAK: the host's APP_JWT_SECRET sentinel appears in the output".into());
    }
    let Some(rec) = &out.record else { return fails };
    let status = out.status();
    if !case.status.allows(status) {
        fails.push(format!("status: expected {}, got {status:?}", case.status));
    }
    if rec.get("degraded") == Some(&Value::Bool(true)) {
        fails.push(format!(
            "the run was degraded (missing isolation layers: {}); the corpus needs every layer",
            rec.get("missing_layers")
                .map_or("?".into(), Value::to_string)
        ));
    }
    // The record contract itself.
    let error_code = rec.pointer("/error/code").and_then(Value::as_str);
    if status == "ok" && rec.get("error").is_some() {
        fails.push("contract: a record with status ok carries an error".into());
    }
    if status != "ok" && error_code.is_none() {
        fails.push("contract: a record with a status other than ok has no error.code".into());
    }
    if status == "ok" && matches!(case.mode, Mode::Main) && rec.get("result").is_none() {
        fails.push("contract: main mode with status ok but no result".into());
    }
    let Some(run) = rec.get("run").filter(|r| r.is_object()) else {
        fails.push("contract: the record has no run object".into());
        return fails;
    };
    let stdout = run.get("stdout").and_then(Value::as_str).unwrap_or("");
    let stderr = run.get("stderr").and_then(Value::as_str).unwrap_or("");

    if let Some(expected) = &case.result {
        let mut diffs = Vec::new();
        diff_values("result", expected, out.result(), &mut diffs);
        if !diffs.is_empty() {
            fails.push(format!(
                "result differs from the expectation:\n{}",
                diffs.join("\n")
            ));
        }
    }
    if let Some(expected) = &case.result_contains {
        let actual = out.result().and_then(Value::as_object);
        let mut diffs = Vec::new();
        for (key, want) in expected {
            diff_values(
                &format!("result.{key}"),
                want,
                actual.and_then(|a| a.get(key)),
                &mut diffs,
            );
        }
        if !diffs.is_empty() {
            fails.push(format!(
                "result differs from the expectation:\n{}",
                diffs.join("\n")
            ));
        }
    }
    let streams = [
        ("stdout", stdout, &case.stdout_contains, true),
        ("stdout", stdout, &case.stdout_not_contains, false),
        ("stderr", stderr, &case.stderr_contains, true),
    ];
    for (name, text, needle, wanted) in streams {
        if let Some(needle) = needle {
            if text.contains(needle.as_str()) != wanted {
                let verb = if wanted {
                    "does not contain"
                } else {
                    "contains"
                };
                fails.push(format!("run.{name} {verb} {needle:?}"));
            }
        }
    }
    for (name, text, max) in [
        ("stdout", stdout, case.stdout_max_bytes),
        ("stderr", stderr, case.stderr_max_bytes),
    ] {
        if let Some(max) = max {
            if text.len() > max {
                fails.push(format!(
                    "run.{name} holds {} bytes, more than the cap of {max}",
                    text.len()
                ));
            }
        }
    }
    let fields: [(&str, Option<Value>); 4] = [
        ("truncated", case.truncated.map(Value::Bool)),
        ("signal", case.signal.map(Value::from)),
        ("exit_code", case.exit_code.map(Value::from)),
        ("limit", case.limit.clone().map(Value::String)),
    ];
    for (field, want) in fields {
        if let Some(want) = want {
            let got = run.get(field);
            if got != Some(&want) {
                fails.push(format!("run.{field}: expected {want}, got {}", show(got)));
            }
        }
    }
    if let Some(want) = &case.error_code {
        if error_code != Some(want.as_str()) {
            fails.push(format!("error.code: expected {want:?}, got {error_code:?}"));
        }
    }
    fails
}

/// Compare `expected` with `actual` and describe every difference, key by key for objects.
fn diff_values(path: &str, expected: &Value, actual: Option<&Value>, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(want), Some(Value::Object(got))) => {
            for (key, w) in want {
                diff_values(&format!("{path}.{key}"), w, got.get(key), out);
            }
            for key in got.keys().filter(|k| !want.contains_key(*k)) {
                out.push(format!(
                    "  {path}.{key}: not expected, got {}",
                    show(got.get(key))
                ));
            }
        }
        (want, Some(got)) if want == got => {}
        (want, got) => out.push(format!("  {path}: expected {want}, got {}", show(got))),
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "<missing>".to_owned(), Value::to_string)
}

/// The record, pretty-printed, with very long strings (flood output) cut in the middle.
fn printable(record: &Value) -> String {
    fn shorten(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(abbreviate_str(s)),
            Value::Array(a) => Value::Array(a.iter().map(shorten).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), shorten(v))).collect())
            }
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&shorten(record)).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

fn abbreviate_str(s: &str) -> String {
    if s.len() <= PRINT_STRING_MAX {
        return s.to_owned();
    }
    let cut = |mut i: usize, forward: bool| {
        while !s.is_char_boundary(i) {
            if forward {
                i += 1
            } else {
                i -= 1
            }
        }
        i
    };
    let head = cut(PRINT_STRING_MAX / 2, false);
    let tail = cut(s.len() - PRINT_STRING_MAX / 2, true);
    format!(
        "{}[... {} bytes elided ...]{}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------
// the host after the runs

/// The host's shared memory (tmpfs, SysV shm, memfd), KiB, from /proc/meminfo.
fn host_shmem_kib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Shmem:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------------------------------
// the test

/// Failures collected over the whole corpus, reported together at the end.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn judge(&mut self, case: &Case, out: &Outcome, sentinel: &str) -> bool {
        let fails = check(case, out, sentinel);
        let verdict = if fails.is_empty() { "pass" } else { "FAIL" };
        let line = format!(
            "{verdict}  {:<30} {:<15} {:>6} ms",
            case.file,
            out.status(),
            out.elapsed.as_millis()
        );
        println!("[hostile] {line}");
        self.lines.push(line);
        if !fails.is_empty() {
            self.fail_with_record(case, out, &fails.join("\n"));
        }
        fails.is_empty()
    }

    fn fail_with_record(&mut self, case: &Case, out: &Outcome, what: &str) {
        let record = out
            .record
            .as_ref()
            .map_or_else(|| "<none>".to_owned(), printable);
        self.failures.push(format!(
            "✗ {}\n{}\n  record:\n{}",
            case.label(),
            indent(what),
            indent(&record)
        ));
    }

    fn host_check(&mut self, phase: &str) {
        let found = leftovers();
        if !found.is_empty() {
            self.failures.push(format!(
                "✗ the host is not clean after {phase}:\n{}",
                indent(&found.join("\n"))
            ));
        }
    }
}

/// A file holding the sentinel in the host's temp dir; removed when dropped.
struct HostSecret(PathBuf);

impl HostSecret {
    fn plant(sentinel: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("execbox-hostile-secret-{}", std::process::id()));
        fs::write(&path, format!("APP_JWT_SECRET={sentinel}\n"))
            .expect("write the host secret file");
        HostSecret(path)
    }
}

impl Drop for HostSecret {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Run `cases` on up to [`MAX_JAILS`] threads; outcomes come back in the order of `cases`.
fn run_parallel<'a>(runner: &Runner, cases: &[&'a Case]) -> Vec<(&'a Case, Outcome)> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..MAX_JAILS.min(cases.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let out = runner.run(case);
                done.lock()
                    .expect("no worker panics while holding the lock")
                    .push((i, out));
            });
        }
    });
    let mut done = done.into_inner().expect("workers are done");
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(i, out)| (cases[i], out)).collect()
}

/// The corpus's languages (other than Python) that cannot run here, with the reason: no
/// runtime package in the runtimes directory (`EXECBOX_RUNTIMES_DIR`, as the CLI reads it) or
/// its toolchain missing. A package that is present but fails its smoke test is not absent:
/// its cases run and fail.
fn absent_languages(cases: &[Case]) -> BTreeMap<String, String> {
    let dir = std::env::var_os("EXECBOX_RUNTIMES_DIR").map_or_else(
        || PathBuf::from(execbox_proto::defaults::RUNTIMES_DIR),
        PathBuf::from,
    );
    let python_env = std::env::var_os("EXECBOX_PYTHON_ENV").map_or_else(
        || PathBuf::from(execbox_proto::defaults::PYTHON_ENV),
        PathBuf::from,
    );
    let found = execbox_runtime::discover(&dir, &python_env);
    let wanted: BTreeSet<&str> = cases
        .iter()
        .map(|c| c.language.as_str())
        .filter(|l| *l != PYTHON)
        .collect();
    wanted
        .into_iter()
        .filter(|l| !found.packages.iter().any(|p| p.manifest.language == *l))
        .map(|l| {
            let missing = found
                .absent
                .iter()
                .filter(|(d, _)| d.parent().and_then(Path::file_name) == Some(l.as_ref()))
                .map(|(d, m)| format!("{} needs {m}", d.display()))
                .collect::<Vec<_>>();
            let why = if missing.is_empty() {
                format!("no {l} runtime package in {}", dir.display())
            } else {
                format!("its toolchain is not installed ({})", missing.join("; "))
            };
            (l.to_owned(), why)
        })
        .collect()
}

#[test]
fn hostile_corpus() {
    if !support::privileged() {
        return;
    }
    let cases = load_corpus();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let runner = Runner {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_execbox")),
        fixtures: fixtures_dir(),
        sentinel: format!("sentinel-{}-{nanos:x}", std::process::id()),
        transport: Transport::Cli,
    };
    let _secret = HostSecret::plant(&runner.sentinel);
    let mut report = Report::default();

    let before = leftovers();
    assert!(
        before.is_empty(),
        "the host already holds execbox leftovers before the corpus ran; clean up first:\n{}",
        before.join("\n")
    );

    // Cases in a language whose toolchain is absent cannot run: a failure in CI, a visible
    // skip elsewhere; never a silent pass.
    let absent = absent_languages(&cases);
    for (language, why) in &absent {
        let n = cases.iter().filter(|c| &c.language == language).count();
        let what = format!("{n} case(s) in {language} cannot run: {why}");
        if support::in_ci() {
            report.failures.push(format!("✗ CI is set but {what}"));
        } else {
            support::report_skip(&format!("{what} (with CI=true this fails)"));
        }
    }
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| !absent.contains_key(&c.language))
        .collect();

    let contained = run_corpus(&runner, &cases, &mut report);

    // The warm path: the same main-mode Python cases through a server whose template serves
    // them (each record must say warm), then nothing may be left once it has stopped.
    let warm_ok = contained && run_warm_corpus(&runner, &cases, &mut report);

    println!("[hostile] summary:\n{}", indent(&report.lines.join("\n")));
    if !contained || !warm_ok {
        panic!(
            "CONTAINMENT NOT PROVEN: a canary failed (cold, or on the warm path), so the destructive cases were NOT run there.\n\n{}",
            report.failures.join("\n\n")
        );
    }
    assert!(
        report.failures.is_empty(),
        "{} problem(s) in the hostile corpus:\n\n{}",
        report.failures.len(),
        report.failures.join("\n\n")
    );
}

/// Run `cases` in the corpus's order (canaries, independent cases, pairs, cases alone) over
/// `runner`; returns whether containment was proven (every canary passed).
fn run_corpus(runner: &Runner, cases: &[Case], report: &mut Report) -> bool {
    let by_file: BTreeMap<&str, &Case> = cases.iter().map(|c| (c.file.as_str(), c)).collect();
    // 1. Canaries, one at a time.
    let mut contained = true;
    for case in cases.iter().filter(|c| c.canary) {
        contained &= report.judge(case, &runner.run(case), &runner.sentinel);
    }
    // the runs created execbox's cgroups where the leftover checks look for them
    execbox_cgroup_parents();
    let allowed = |c: &Case| contained || !c.destructive;

    // 2. Independent cases.
    let partners: BTreeSet<&str> = cases
        .iter()
        .filter_map(|c| c.concurrent_with.as_deref())
        .collect();
    let firsts: BTreeSet<&str> = cases
        .iter()
        .filter_map(|c| c.run_after.as_deref())
        .collect();
    let independent: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.canary && c.concurrent_with.is_none() && c.run_after.is_none())
        .filter(|c| c.host_shmem_growth_max_mib.is_none())
        .filter(|c| !partners.contains(c.file.as_str()) && !firsts.contains(c.file.as_str()))
        .filter(|c| allowed(c))
        .collect();
    for (case, out) in run_parallel(runner, &independent) {
        report.judge(case, &out, &runner.sentinel);
    }
    host_check(report, runner, "the independent cases");

    // 3. Concurrent pairs (x2): the partner gets a short head start, then both run together.
    for attacker in cases.iter().filter(|c| c.concurrent_with.is_some()) {
        let partner = by_file[attacker.concurrent_with.as_deref().unwrap_or_default()];
        if !allowed(attacker) || !allowed(partner) {
            continue;
        }
        let first = runner.start(partner);
        thread::sleep(PARTNER_HEAD_START);
        let second = runner.run(attacker);
        let first = first.map_or_else(Outcome::failed, |running| runner.finish(running));
        let both_passed = report.judge(partner, &first, &runner.sentinel)
            & report.judge(attacker, &second, &runner.sentinel);
        if let (Some(key), true) = (&attacker.distinct_from_partner, both_passed) {
            let a = first.result().and_then(|r| r.get(key));
            let b = second.result().and_then(|r| r.get(key));
            let mut problems = Vec::new();
            if a.is_none() || a == b {
                problems.push(format!(
                    "result.{key} must differ between the two concurrent runs: {} vs {}",
                    show(a),
                    show(b)
                ));
            }
            if key == "host_uid" {
                for uid in [a, b].into_iter().flatten() {
                    let host_uid = uid.as_u64().and_then(|u| u32::try_from(u).ok());
                    if !host_uid.is_some_and(jail_uid) {
                        problems.push(format!("host uid {uid} is outside the execbox range"));
                    }
                }
            }
            if !problems.is_empty() {
                report.fail_with_record(attacker, &second, &problems.join("\n"));
            }
        }
    }
    host_check(report, runner, "the concurrent pairs");

    // 4. Sequential pairs (x2 sequential): the second run looks for what the first left.
    for second in cases.iter().filter(|c| c.run_after.is_some()) {
        let first = by_file[second.run_after.as_deref().unwrap_or_default()];
        if !allowed(first) || !allowed(second) {
            continue;
        }
        let out = runner.run(first);
        report.judge(first, &out, &runner.sentinel);
        let out = runner.run(second);
        report.judge(second, &out, &runner.sentinel);
    }
    // ... and the cases whose footprint on the host's shared memory is measured.
    for case in cases
        .iter()
        .filter(|c| c.host_shmem_growth_max_mib.is_some())
    {
        if !allowed(case) {
            continue;
        }
        let before = host_shmem_kib();
        let out = runner.run(case);
        report.judge(case, &out, &runner.sentinel);
        // The kernel frees a dead IPC namespace (and the last mount of a tmpfs) from a
        // workqueue after an RCU grace period, so the memory comes back shortly after the run,
        // not at its last instruction. Give it up to 3 s.
        let mut after = host_shmem_kib();
        let limit_kib = before.unwrap_or(0) + case.host_shmem_growth_max_mib.unwrap_or(0) * 1024;
        for _ in 0..30 {
            if after.is_some_and(|a| a <= limit_kib) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            after = host_shmem_kib();
        }
        let (Some(before), Some(after), Some(max_mib)) =
            (before, after, case.host_shmem_growth_max_mib)
        else {
            report.fail_with_record(case, &out, "cannot read Shmem from /proc/meminfo");
            continue;
        };
        let grown_mib = after.saturating_sub(before) / 1024;
        if grown_mib > max_mib {
            let what = format!(
                "the host's Shmem grew by {grown_mib} MiB over the run ({before} -> {after} \
                 KiB), more than {max_mib} MiB: memory of the run outlived it"
            );
            report.fail_with_record(case, &out, &what);
        }
    }
    host_check(report, runner, "the sequential cases");
    contained
}

/// Check the host between phases. With a warm server up its templates and prepared children
/// are on the host by design: the warm corpus checks once the server has stopped.
fn host_check(report: &mut Report, runner: &Runner, phase: &str) {
    if !runner.warm() {
        report.host_check(phase);
    }
}

/// The warm half of the corpus (Python, main mode) through a real `execbox serve` with its
/// template up. Returns whether its canaries passed.
fn run_warm_corpus(cold: &Runner, cases: &[Case], report: &mut Report) -> bool {
    let dir = std::env::temp_dir().join(format!("execbox-hostile-warm-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the request directory");
    // The sentinel is in the server's environment too: no record may show it (the template
    // runs with an empty environment, nothing of the server's).
    let server = support::Server::start_with_env(
        &["--max-running", "4"],
        support::Options::default(),
        &[("EXECBOX_HOSTILE_SENTINEL", cold.sentinel.as_str())],
    );
    server.wait_warm(Duration::from_secs(120), 2.0);
    let runner = Runner {
        bin: cold.bin.clone(),
        fixtures: cold.fixtures.clone(),
        sentinel: cold.sentinel.clone(),
        transport: Transport::Warm {
            base: format!("http://{}", server.public),
            token: support::tokens::token("hostile"),
            dir: dir.clone(),
        },
    };
    let warm_cases: Vec<Case> = load_corpus()
        .into_iter()
        .filter(|c| c.language == PYTHON && matches!(c.mode, Mode::Main))
        .filter(|c| cases.iter().any(|k| k.file == c.file))
        .collect();
    println!(
        "[hostile] warm path: {} main-mode Python cases",
        warm_cases.len()
    );
    let contained = run_corpus(&runner, &warm_cases, report);
    drop(server);
    let _ = fs::remove_dir_all(&dir);
    // Leftovers (templates, prepared children, runs) must be gone with the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    report.host_check("the warm corpus and the server's shutdown");
    contained
}

/// The corpus is consistent: one case per fixture, every attack covered, pairs resolvable.
/// Needs no root and no jail.
#[test]
fn corpus_is_complete() {
    let cases = load_corpus();
    let mut problems = Vec::new();
    let fixtures: BTreeSet<String> = fs::read_dir(fixtures_dir())
        .expect("fixtures/hostile exists")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            LANGUAGES
                .iter()
                .any(|(_, ext)| n.ends_with(&format!(".{ext}")))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for case in &cases {
        if !seen.insert(case.file.as_str()) {
            problems.push(format!("{}: more than one case", case.file));
        }
        if !fixtures.contains(&case.file) {
            problems.push(format!("{}: no such fixture", case.file));
        }
        match LANGUAGES.iter().find(|(l, _)| *l == case.language) {
            None => problems.push(format!(
                "{}: language {:?} is not one of {LANGUAGES:?}",
                case.file, case.language
            )),
            Some((_, ext)) if !case.file.ends_with(&format!(".{ext}")) => problems.push(format!(
                "{}: a {} fixture ends in .{ext}",
                case.file, case.language
            )),
            Some(_) => {}
        }
        if case.language != PYTHON && matches!(case.mode, Mode::Main) {
            problems.push(format!("{}: main mode is Python's only", case.file));
        }
        if case.language != PYTHON && case.canary {
            problems.push(format!(
                "{}: canaries are Python (the fast path proves the jail)",
                case.file
            ));
        }
        if matches!(case.mode, Mode::Program)
            && (case.result.is_some() || case.result_contains.is_some())
        {
            problems.push(format!(
                "{}: program mode has no result to compare",
                case.file
            ));
        }
        for (what, target) in [
            ("concurrent_with", &case.concurrent_with),
            ("run_after", &case.run_after),
        ] {
            if let Some(target) = target {
                match cases.iter().find(|c| &c.file == target) {
                    None => {
                        problems.push(format!("{}: {what} names unknown case {target}", case.file))
                    }
                    Some(t)
                        if t.concurrent_with.is_some()
                            || t.run_after.is_some()
                            || t.canary
                            || t.host_shmem_growth_max_mib.is_some() =>
                    {
                        problems.push(format!(
                            "{}: {what} target {target} must be a plain case",
                            case.file
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if case.distinct_from_partner.is_some() && case.concurrent_with.is_none() {
            problems.push(format!(
                "{}: distinct_from_partner without concurrent_with",
                case.file
            ));
        }
        let paired = case.concurrent_with.is_some() || case.run_after.is_some();
        if case.host_shmem_growth_max_mib.is_some() && (paired || case.canary) {
            problems.push(format!("{}: a measured case runs alone", case.file));
        }
        if case.canary && (case.concurrent_with.is_some() || case.run_after.is_some()) {
            problems.push(format!("{}: a canary runs alone", case.file));
        }
    }
    for file in fixtures.iter().filter(|f| !seen.contains(f.as_str())) {
        problems.push(format!(
            "{file}: fixture without a case in expectations.toml"
        ));
    }
    let attacks: BTreeSet<u32> = cases.iter().map(|c| c.attack).collect();
    for attack in (1..=25).filter(|a| !attacks.contains(a)) {
        problems.push(format!("attack {attack} has no fixture"));
    }
    // Issue 9: the bombs and the flood in C and JavaScript besides Python.
    for language in ["c", "javascript"] {
        for attack in [1, 2, 4] {
            if !cases
                .iter()
                .any(|c| c.language == language && c.attack == attack && c.destructive)
            {
                problems.push(format!(
                    "attack {attack} has no destructive {language} fixture"
                ));
            }
        }
    }
    for control in ["00_control_harmless.py", "00_control_pandas.py"] {
        if !cases
            .iter()
            .any(|c| c.file == control && c.status.allows("ok"))
        {
            problems.push(format!("{control}: the control must exist and expect ok"));
        }
    }
    if !cases.iter().any(|c| c.canary) {
        problems.push("no canary: destructive cases would run unguarded".into());
    }
    for attack in [10, 17, 18] {
        if !cases
            .iter()
            .any(|c| c.attack == attack && c.concurrent_with.is_some())
        {
            problems.push(format!("attack {attack} (x2) has no concurrent pair"));
        }
    }
    if !cases
        .iter()
        .any(|c| c.attack == 25 && c.run_after.is_some())
    {
        problems.push("attack 25 (x2 sequential) has no sequential pair".into());
    }
    assert!(
        problems.is_empty(),
        "expectations.toml is inconsistent:\n{}",
        problems.join("\n")
    );
}

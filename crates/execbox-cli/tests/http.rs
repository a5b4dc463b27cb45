//! End-to-end tests of `execbox serve` over HTTP: the real binary, its real spawner and real
//! jails, spoken to with reqwest on loopback only.
//!
//! Each test starts `execbox serve --listen 127.0.0.1:0` as a child process (the plain API tests
//! share one through [`shared_server`]), learns its port from the JSON `listening` log line,
//! waits for `/readyz`, and stops it with SIGTERM when done ([`Server`]'s `Drop`; SIGKILL if it
//! hangs). Like `cli.rs` they need root: outside CI a non-root run skips with a message; with
//! `CI=true` it fails.
//!
//! Leftover checks are scoped to what a test can attribute to its own server: the processes
//! descended from its spawner (identified by pid *and* start time, so a recycled pid is not
//! mistaken for a survivor), the run cgroups its spawner named `j<spawner pid>-<n>`, and
//! processes found by a unique marker passed as a program argument (argv is visible in
//! `/proc/PID/cmdline`). A blanket "no process in the execbox uid range" check would be wrong
//! while any server runs, because every spawner keeps prepared jails that already run as
//! execbox uids. The drain test makes the host-wide check in the form that stays sound: once
//! its server is gone, no jailed process and no run cgroup may lack a live jail owner (a
//! spawner or `execbox run`); it takes [`HOST`] for writing so no other server of this file
//! runs meanwhile, and anything another execbox on the host owns is not counted.
mod support;

use support::{privileged, status_of};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};

/// Host uids of jailed processes: `UID_BASE + slot`, `slot < UID_SLOTS`.
const UID_BASE: u32 = 2_000_000_000;
const UID_SLOTS: u32 = 4096;

/// Readers: tests that tolerate other servers. Writer: the test that checks the whole host.
/// (A tokio lock: each test has its own runtime and holds its guard across awaits.)
static HOST: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn host_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HOST.read().await
}

async fn host_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HOST.write().await
}

// ------------------------------------------------------------------------------------ /proc

/// A process, by pid and start time (a pid alone may be recycled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcId {
    pid: u32,
    start: u64,
}

/// Fields of `/proc/PID/stat` after the command name: `[0]` is the state, `[1]` the ppid,
/// `[2]` the process group, `[19]` the start time.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn proc_id(pid: u32) -> Option<ProcId> {
    let start = stat_fields(pid)?.get(19)?.parse().ok()?;
    Some(ProcId { pid, start })
}

fn alive(p: &ProcId) -> bool {
    proc_id(p.pid) == Some(*p)
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn uids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn jailed(pid: u32) -> bool {
    uids(pid)
        .iter()
        .any(|u| (UID_BASE..UID_BASE + UID_SLOTS).contains(u))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn describe(pid: u32) -> String {
    let mut cmd = cmdline(pid).join(" ");
    cmd.truncate(100);
    let state = stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .unwrap_or_default();
    format!(
        "pid {pid} ppid {:?} state {state} uids {:?}: {cmd}",
        ppid(pid),
        uids(pid)
    )
}

/// Processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| {
            stat_fields(p)
                .and_then(|f| f.get(2)?.parse::<u32>().ok())
                .is_some_and(|g| g == pgid)
        })
        .collect()
}

/// Every process below `root` (not `root` itself), at this moment.
fn descendants(root: u32) -> Vec<ProcId> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in pids() {
        if let Some(pp) = ppid(pid) {
            children.entry(pp).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if let Some(id) = proc_id(c) {
                out.push(id);
            }
            todo.push(c);
        }
    }
    out
}

/// A real jail owner: an unjailed `execbox spawner` or `execbox run`. (Prepared jails are
/// clones of their spawner and share its command line, but they run as execbox uids.)
fn is_owner(pid: u32) -> bool {
    let argv = cmdline(pid);
    argv.first().is_some_and(|a| a.ends_with("execbox"))
        && argv.get(1).is_some_and(|a| a == "spawner" || a == "run")
        && !jailed(pid)
}

/// The spawner of server `server`: its child with `spawner` as argv[1].
fn spawner_of(server: u32) -> Option<u32> {
    pids()
        .into_iter()
        .find(|&p| ppid(p) == Some(server) && is_owner(p))
}

/// Processes with `marker` as one of their arguments.
fn with_arg(marker: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| cmdline(p).iter().any(|a| a == marker))
        .collect()
}

/// Jailed processes that no live owner (spawner or `execbox run`) is an ancestor of.
fn orphan_jails() -> Vec<String> {
    pids()
        .into_iter()
        .filter(|&p| jailed(p))
        .filter(|&p| {
            let mut cur = ppid(p);
            let mut hops = 0;
            while let Some(c) = cur.filter(|&c| c > 1 && hops < 64) {
                if is_owner(c) {
                    return false;
                }
                cur = ppid(c);
                hops += 1;
            }
            true
        })
        .map(describe)
        .collect()
}

/// Live jail owners (spawners, `execbox run`) on the host.
fn owners() -> Vec<String> {
    pids()
        .into_iter()
        .filter(|p| is_owner(*p))
        .map(describe)
        .collect()
}

/// Run cgroups (`j<jailer pid>-<n>`) whose jailer is not a live owner.
fn unowned_run_cgroups() -> Vec<PathBuf> {
    run_cgroups("j")
        .into_iter()
        .filter(|d| !owner_alive(d))
        .collect()
}

/// Whether the jailer named by a run cgroup (`j<jailer pid>-<n>`) is a live owner.
fn owner_alive(dir: &Path) -> bool {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let jailer = name
        .as_deref()
        .and_then(|n| n.strip_prefix('j')?.split('-').next()?.parse::<u32>().ok());
    jailer.is_some_and(is_owner)
}

/// Run cgroup directories whose name starts with `prefix` (`j` for all, `j<spawner pid>-` for
/// one spawner's), in every hierarchy of the backend in use (v1: `/sys/fs/cgroup/*/execbox`;
/// v2: `/sys/fs/cgroup/execbox`); asserts that these parents exist, so the answer is never
/// vacuously empty.
fn run_cgroups(prefix: &str) -> Vec<PathBuf> {
    run_cgroups_in(support::execbox_cgroup_parents(), prefix)
}

fn run_cgroups_in(parents: Vec<PathBuf>, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in parents {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The execbox run cgroups of a live process (from `/proc/PID/cgroup`).
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with("/execbox/j") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            out.push(PathBuf::from("/sys/fs/cgroup").join(rel));
            continue;
        }
        for c in ctrls.split(',') {
            let c = c.trim_start_matches("name=");
            let dir = PathBuf::from("/sys/fs/cgroup").join(c).join(rel);
            if dir.exists() {
                out.push(dir);
            }
        }
    }
    out
}

/// The TCP ports `pid` listens on, from its socket inodes and `/proc/PID/net/tcp`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Poll `check` (a list of problems) until it is empty or `timeout` passes.
async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Vec<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = check();
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still true after {timeout:?}:\n  {}",
            problems.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unique_marker(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("execbox-http-test-{tag}-{}-{n}", std::process::id())
}

// ----------------------------------------------------------------------------------- server

/// A running `execbox serve`; dropping it sends SIGTERM, then SIGKILL if it does not exit.
struct Server {
    child: Child,
    /// The public listener (the API).
    addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` answer: a separate private listener when
    /// this build has one, the public one otherwise.
    ops: SocketAddr,
    /// The `addr` field of the public listener's `listening` log line.
    logged_addr: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start `execbox serve` on a free loopback port with `extra` flags; wait until ready.
    fn start(extra: &[&str]) -> Server {
        Server::launch(extra, false)
    }

    /// [`Server::start`], optionally as the leader of a new process group (as a service
    /// manager or a terminal would run it), so the group can be signalled as a whole.
    fn launch(extra: &[&str], own_group: bool) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--log-json"];
        if !extra.contains(&"--shutdown-grace-secs") {
            args.extend(["--shutdown-grace-secs", "2"]);
        }
        let private = serve_has_flag("--private-listen");
        if private {
            args.extend(["--private-listen", "127.0.0.1:0"]);
        }
        if serve_has_flag("--insecure-no-auth") {
            // These tests exercise the API contracts, not authentication.
            args.push("--insecure-no-auth");
        }
        args.extend(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_execbox"));
        cmd.args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("start execbox serve");
        let stderr = child.stderr.take().expect("stderr pipe");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let sink = logs.clone();
        // Drain stderr for the server's whole life (the spawner writes there too), so a full
        // pipe never blocks it; remember the lines for failure reports.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let f = &v["fields"];
                    if f["message"] == "listening" {
                        let is_private = f["listener"] == "private";
                        let addr = f["addr"].as_str().unwrap_or("").to_owned();
                        let _ = tx.send((is_private, addr));
                    }
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut s = Server {
            child,
            addr: unbound,
            ops: unbound,
            logged_addr: None,
            logs,
        };
        let (mut public, mut private_addr) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while public.is_none() || (private && private_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, a)) => private_addr = Some(a),
                Ok((false, a)) => public = Some(a),
                Err(_) => panic!("no `listening` log line:\n{}", s.log_tail(40)),
            }
        }
        let public = public.unwrap_or_default();
        s.logged_addr = Some(public.clone());
        let logged_port = |a: &str| a.parse::<SocketAddr>().ok().filter(|a| a.port() != 0);
        s.addr = match logged_port(&public) {
            Some(a) => a,
            // The log line gave no usable port (see `listening_log_names_the_bound_port`): find
            // the listening socket in /proc instead so the other tests can still run.
            None if !private => {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let [p] = listening_ports(s.pid())[..] {
                        break SocketAddr::from(([127, 0, 0, 1], p));
                    }
                    assert!(Instant::now() < deadline, "server never listened");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            None => panic!("the public `listening` log line has no port: {public:?}"),
        };
        s.ops = match private_addr {
            Some(p) => logged_port(&p)
                .unwrap_or_else(|| panic!("the private `listening` log line has no port: {p:?}")),
            None => s.addr,
        };
        assert!(s.addr.ip().is_loopback() && s.ops.ip().is_loopback());
        s.wait_ready(Duration::from_secs(60));
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Poll `GET /readyz` (plain blocking HTTP) until 200.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if status_of(self.ops, "/readyz") == Some(200) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("execbox serve exited ({st}):\n{}", self.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {timeout:?}:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to exit by itself.
    async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every spawner this server reported starting (`spawner up` log lines).
    fn logged_spawners(&self) -> Vec<u32> {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "spawner up")
            .filter_map(|v| {
                v["fields"]["pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
            })
            .collect()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- server {} log (tail) ----\n{}\n----",
                self.addr,
                self.log_tail(60)
            );
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("server {} ignored SIGTERM for 10 s: SIGKILL", self.addr);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this build's `execbox serve --help` offers `flag` (the harness adapts to builds with
/// a private ops listener or with authentication that can be turned off).
fn serve_has_flag(flag: &str) -> bool {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_execbox"))
            .args(["serve", "--help"])
            .output()
            .expect("execbox serve --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .split(|c: char| c.is_whitespace() || c == ',')
    .any(|w| w == flag)
}

/// The server of the plain API tests: started by the first test that needs it, stopped when
/// the last test holding it finishes (and started again if a later test needs it).
fn shared_server() -> Arc<Server> {
    static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = w.upgrade() {
        return s;
    }
    let s = Arc::new(Server::start(&[]));
    *w = Arc::downgrade(&s);
    s
}

// ------------------------------------------------------------------------------------- HTTP

/// One answer: status, headers, body text and the body as JSON (`Null` when not JSON).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }
}

/// Send, read the whole answer, and check the header every answer must carry.
async fn send(rb: RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("read body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    let resp = Resp {
        status,
        headers,
        text,
        json,
    };
    assert!(
        resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "no x-request-id on a {status} answer: {resp:?}"
    );
    resp
}

/// A client for one server (never through a proxy: loopback only).
#[derive(Debug, Clone)]
struct Api {
    c: Client,
    public: SocketAddr,
    ops: SocketAddr,
}

impl Api {
    fn new(s: &Server) -> Api {
        // The workspace builds reqwest without a bundled TLS crypto provider; a client cannot
        // be built until one is installed (plain HTTP here, but the builder insists).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("http client");
        Api {
            c,
            public: s.addr,
            ops: s.ops,
        }
    }

    /// `path` on the listener that serves it.
    fn url(&self, path: &str) -> String {
        let ops = ["/healthz", "/readyz", "/metrics"].contains(&path);
        let addr = if ops { self.ops } else { self.public };
        format!("http://{addr}{path}")
    }

    /// A request to finish by hand (headers, raw bodies, multipart).
    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.c.request(method, self.url(path))
    }

    /// `POST path` with `body` as `application/json` bytes, whatever they are.
    fn raw(&self, path: &str, body: &'static [u8]) -> RequestBuilder {
        self.request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    }

    fn multipart(&self, path: &str, form: Form) -> RequestBuilder {
        self.request(reqwest::Method::POST, path).multipart(form)
    }

    async fn get(&self, path: &str) -> Resp {
        send(self.c.get(self.url(path))).await
    }

    async fn delete(&self, path: &str) -> Resp {
        send(self.c.delete(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        send(self.c.post(self.url(path)).json(&body)).await
    }

    async fn execute(&self, script: &str) -> Resp {
        self.post("/execute", json!({ "script": script })).await
    }

    /// Poll a run record until its status is final.
    async fn wait_final(&self, path: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            let st = r.json["status"].as_str().unwrap_or_default().to_owned();
            if st != "queued" && st != "running" {
                return r.json;
            }
            assert!(
                Instant::now() < deadline,
                "run still {st} after {timeout:?}: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Poll a run until it is `running` and a process with `marker` in its argv exists.
    async fn wait_running(&self, path: &str, marker: &str) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = with_arg(marker);
            let rec = self.get(path).await;
            if rec.json["status"] == "running" && !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the run never showed as running with a live process: {} ({found:?})",
                rec.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// An error answer: `status`, JSON `{"error": {"code": code, "message": <non-empty>}}`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (status, Some(code)),
        "expected {status} {code}, got {} {}",
        r.status,
        r.text
    );
    assert!(!r.message().is_empty(), "no message: {}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
}

/// A script failure of `/execute`: 422 with `code`, the output seen and the run id.
#[track_caller]
fn assert_script_failure(r: &Resp, code: &str) {
    assert_error(r, 422, code);
    assert!(r.json["stdout"].is_string(), "no stdout: {}", r.text);
    assert!(r.json["stderr"].is_string(), "no stderr: {}", r.text);
    assert!(r.json["id"].as_str().is_some_and(|i| !i.is_empty()));
    assert!(r.json.get("result").is_none(), "{}", r.text);
}

/// A run record answered with 200 and the given status.
#[track_caller]
fn assert_record(r: &Resp, status: &str) {
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (200, Some(status)),
        "{}",
        r.text
    );
}

/// A `202 Accepted` answer for a run whose records live under `prefix`; returns the id.
#[track_caller]
fn assert_accepted(r: &Resp, prefix: &str) -> String {
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(r.json["status"], "queued", "{}", r.text);
    let url = format!("{prefix}{id}");
    assert_eq!(r.json["status_url"], url.as_str(), "{}", r.text);
    assert_eq!(r.header("location"), Some(url.as_str()));
    id
}

/// Value of an unlabelled metric, or the sum of a labelled one's series matching `labels`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let (n, lbl) = series.split_once('{').unwrap_or((series, ""));
        if n == name && lbl.contains(labels) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

fn py_file(name: &str, bytes: &[u8]) -> Part {
    Part::bytes(bytes.to_vec()).file_name(name.to_owned())
}

fn cgroup_names(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .filter(|d| d.exists())
        .map(|d| format!("cgroup {}", d.display()))
        .collect()
}

fn still_alive(procs: &[ProcId]) -> Vec<String> {
    procs
        .iter()
        .filter(|p| alive(p))
        .map(|p| describe(p.pid))
        .collect()
}

const HELLO: &str = "def main():\n    print('hi')\n    return {'ok': 1}\n";

// ----------------------------------------------------------------------------- seed 004

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_returns_main_result_apart_from_stdout() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    let r = api.execute(HELLO).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"result": {"ok": 1}, "stdout": "hi\n"}));

    // JSON-looking prints stay in stdout; only main()'s value is the result.
    let r = api
        .execute("def main():\n    print('{\"ok\": 2}')\n    return [1, 'two', None]\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"result": [1, "two", null], "stdout": "{\"ok\": 2}\n"})
    );

    // The peer benchmark's pandas payload (peer/payloads/pandas.json): numpy and pandas
    // import and compute inside the jail.
    let r = api
        .execute(
            "import numpy as np\nimport pandas as pd\n\ndef main():\n    \
             df = pd.DataFrame({\"a\": np.arange(1000), \"b\": np.arange(1000) * 2.0})\n    \
             print(df.shape)\n    \
             return {\"sum\": float(df.to_numpy().sum()), \"cols\": list(df.columns)}\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"result": {"sum": 1498500.0, "cols": ["a", "b"]}, "stdout": "(1000, 2)\n"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_script_failures_are_distinct_422s_with_output() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    let r = api.execute("x = 1\nprint('no main here')\n").await;
    assert_script_failure(&r, "no_main");
    assert_eq!(r.json["stdout"], "no main here\n");

    let r = api.execute("main = 3\n").await;
    assert_script_failure(&r, "main_not_callable");

    let r = api
        .execute("def main():\n    print('before')\n    raise ValueError('boom')\n")
        .await;
    assert_script_failure(&r, "exception");
    assert_eq!(r.message(), "ValueError: boom");
    assert_eq!(r.json["stdout"], "before\n");
    let stderr = r.json["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("Traceback") && stderr.contains("ValueError: boom"),
        "{stderr}"
    );
    // The failed run is a stored run like any other.
    let id = r.json["id"].as_str().unwrap_or_default();
    let rec = api.get(&format!("/v1/runs/{id}")).await;
    assert_record(&rec, "runtime_error");
    assert_eq!(rec.json["error"]["code"], "exception");

    let r = api.execute("def main():\n    return {1, 2, 3}\n").await;
    assert_script_failure(&r, "result_not_json");

    let r = api.execute("def main():\n    return float('nan')\n").await;
    assert_script_failure(&r, "result_not_json");

    let r = api.execute("def main(:\n    return 1\n").await;
    assert_script_failure(&r, "syntax_error");
    assert!(
        r.json["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("SyntaxError")),
        "{}",
        r.text
    );

    // 1 GiB of touched memory against the default 256 MiB limit.
    let r = api
        .execute(
            "def main():\n    hoard = []\n    for _ in range(64):\n        \
             hoard.append(b'\\x01' * (16 << 20))\n    return len(hoard)\n",
        )
        .await;
    assert_script_failure(&r, "memory_limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_rejects_malformed_input() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    let r = send(api.raw("/execute", b"{not json")).await;
    assert_error(&r, 400, "invalid_json");

    let r = send(api.raw("/execute", b"")).await;
    assert_error(&r, 400, "invalid_json");

    let r = send(api.raw("/execute", b"{}")).await;
    assert_error(&r, 400, "invalid_field");
    assert!(r.message().contains("script"), "{}", r.text);

    let r = send(api.raw("/execute", br#"{"script": 3}"#)).await;
    assert_error(&r, 400, "invalid_field");
    assert!(r.message().contains("script"), "{}", r.text);

    let r = api
        .post(
            "/execute",
            json!({"script": "def main():\n    return 1\n", "timeout": 9}),
        )
        .await;
    assert_error(&r, 400, "invalid_field");
    assert!(r.message().contains("timeout"), "{}", r.text);

    let r = api.execute("   ").await;
    assert_error(&r, 400, "empty_source");

    let body = r#"{"script": "def main():\n    return 1\n"}"#;
    let r = send(
        api.request(reqwest::Method::POST, "/execute")
            .header("content-type", "text/plain")
            .body(body),
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    let r = send(api.request(reqwest::Method::POST, "/execute").body(body)).await;
    assert_error(&r, 415, "unsupported_media_type");

    let r = api.execute("def main():\n    return 1\n\0").await;
    assert_error(&r, 400, "nul_in_source");

    // Raw 0xff 0xfe inside the JSON string: not UTF-8, so not JSON.
    let r = send(api.raw(
        "/execute",
        b"{\"script\": \"def main():\\n    return '\xff\xfe'\\n\"}",
    ))
    .await;
    assert_error(&r, 400, "invalid_json");

    let r = api.get("/execute").await;
    assert_error(&r, 405, "method_not_allowed");

    let r = api.get("/no/such/endpoint").await;
    assert_error(&r, 404, "not_found");

    // The body must be an object with `script`: serde's derived struct deserializer also
    // accepts a positional array, which is not the documented shape. (Last, so a failure here
    // does not hide the checks above.)
    for body in [
        &br#"["def main():\n    return 1\n"]"#[..],
        b"\"x\"",
        b"3",
        b"null",
    ] {
        let r = send(api.raw("/execute", body)).await;
        assert_error(&r, 400, "invalid_body");
    }
}

// ----------------------------------------------------------------------------- seed 003

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_and_run_file_block_or_answer_202() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    // Blocking: the whole record.
    let r = api
        .post(
            "/run-json/",
            json!({
                "code": "import sys\nprint('seed 3', sys.stdin.read(), sys.argv[1:])\n",
                "stdin": "in",
                "args": ["a"],
            }),
        )
        .await;
    assert_record(&r, "ok");
    assert_eq!(r.json["language"], "python");
    assert_eq!(r.json["run"]["stdout"], "seed 3 in ['a']\n");
    assert_eq!(r.json["run"]["exit_code"], 0);
    assert!(r.json.get("result").is_none(), "{}", r.text);
    let id = r.json["id"].as_str().expect("id");
    let st = api.get(&format!("/status/{id}")).await;
    assert_eq!(st.status, 200);
    assert_eq!(st.json, r.json, "/status answers the same record");

    // A failing program is still a 200 record: the status says how it ended.
    let r = api
        .post(
            "/run-json/",
            json!({"code": "import sys\nprint('x')\nsys.exit(3)\n"}),
        )
        .await;
    assert_record(&r, "runtime_error");
    assert_eq!(r.json["error"]["code"], "nonzero_exit");
    assert_eq!(r.json["run"]["exit_code"], 3);
    assert_eq!(r.json["run"]["stdout"], "x\n");

    // Asynchronous.
    let r = api
        .post(
            "/run-json/?wait=false",
            json!({"code": "import time\ntime.sleep(0.2)\nprint('later')\n"}),
        )
        .await;
    let id = assert_accepted(&r, "/status/");
    let rec = api
        .wait_final(&format!("/status/{id}"), Duration::from_secs(30))
        .await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["run"]["stdout"], "later\n");

    let r = api.get("/status/no-such-run").await;
    assert_error(&r, 404, "run_not_found");

    // The alias without the trailing slash.
    let r = api.post("/run-json", json!({"code": "print(2)"})).await;
    assert_record(&r, "ok");
    assert_eq!(r.json["run"]["stdout"], "2\n");

    let r = api.post("/run-json/", json!({"script": "print(1)"})).await;
    assert_error(&r, 400, "invalid_field");
    assert!(r.message().contains("code"), "{}", r.text);
    let r = api
        .post("/run-json/?wait=maybe", json!({"code": "print(1)"}))
        .await;
    assert_error(&r, 400, "invalid_query");

    // Multipart upload of one .py file.
    let one = |name: &str, bytes: &[u8]| Form::new().part("file", py_file(name, bytes));
    let r = send(api.multipart("/run-file/", one("job.py", b"print('from a file')\n"))).await;
    assert_record(&r, "ok");
    assert_eq!(r.json["run"]["stdout"], "from a file\n");

    let r = send(api.multipart(
        "/run-file/?wait=false",
        one("job.py", b"print('async file')\n"),
    ))
    .await;
    let id = assert_accepted(&r, "/status/");
    let rec = api
        .wait_final(&format!("/status/{id}"), Duration::from_secs(30))
        .await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["run"]["stdout"], "async file\n");

    let r = send(api.multipart("/run-file/", one("job.txt", b"print(1)\n"))).await;
    assert_error(&r, 400, "not_python");

    let two = Form::new()
        .part("a", py_file("a.py", b"print(1)\n"))
        .part("b", py_file("b.py", b"print(2)\n"));
    let r = send(api.multipart("/run-file/", two)).await;
    assert_error(&r, 400, "too_many_files");

    let r = send(api.multipart("/run-file/", one("bad.py", b"print('\xff\xfe')\n"))).await;
    assert_error(&r, 400, "invalid_utf8");

    let r = send(api.multipart("/run-file/", Form::new().text("code", "print(1)"))).await;
    assert_error(&r, 400, "invalid_multipart");

    // No part at all (reqwest then sends only the closing boundary, which is not a complete
    // multipart body either): a 400 either way.
    let r = send(api.multipart("/run-file/", Form::new())).await;
    let code = r.json["error"]["code"].as_str().unwrap_or_default();
    assert!(
        ["no_files", "invalid_multipart"].contains(&code),
        "{}",
        r.text
    );
    assert_error(&r, 400, code);

    let r = api.post("/run-file/", json!({"code": "print(1)"})).await;
    assert_error(&r, 400, "invalid_multipart");
}

// ---------------------------------------------------------------------------------- /v1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_runs_files_stdin_args_modes_limits_and_versions() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    let rt = api.get("/v1/runtimes").await;
    assert_eq!(rt.status, 200, "{}", rt.text);
    let py = rt
        .json
        .as_array()
        .and_then(|l| l.iter().find(|r| r["language"] == "python"))
        .unwrap_or_else(|| panic!("no python in {}", rt.text));
    let version = py["version"].as_str().expect("version").to_owned();
    assert!(version.starts_with("3."), "{version}");
    assert_eq!(py["modes"], json!(["program", "main"]));

    // Entry file first; it imports the second one.
    let r = api
        .post(
            "/v1/runs",
            json!({
                "language": "python",
                "version": "3",
                "files": [
                    {
                        "name": "app.py",
                        "content": "import sys\nimport helper\n\
                                    print(helper.shout(sys.stdin.read()), sys.argv[1:])\n",
                    },
                    {"name": "helper.py", "content": "def shout(s):\n    return s.upper()\n"},
                ],
                "stdin": "abc",
                "args": ["x", "y z"],
                "mode": "program",
                "limits": {
                    "timeout_ms": 10000,
                    "memory_mb": 128,
                    "pids": 32,
                    "output_limit_bytes": 65536,
                },
            }),
        )
        .await;
    assert_record(&r, "ok");
    assert_eq!(r.json["run"]["stdout"], "ABC ['x', 'y z']\n");
    assert_eq!(r.json["language"], "python");
    assert_eq!(r.json["version"], version.as_str());
    assert!(r.json.get("result").is_none());
    let path = format!("/v1/runs/{}", r.json["id"].as_str().expect("id"));
    let got = api.get(&path).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json, r.json);
    // Cancelling a finished run changes nothing: 200 with the final record.
    let del = api.delete(&path).await;
    assert_record(&del, "ok");

    // main mode; an unnamed first file is main.py.
    let r = api
        .post(
            "/v1/runs",
            json!({
                "language": "python",
                "files": [{"content": "def main():\n    print('p')\n    return {'answer': 42}\n"}],
                "mode": "main",
            }),
        )
        .await;
    assert_record(&r, "ok");
    assert_eq!(r.json["result"], json!({"answer": 42}));
    assert_eq!(r.json["run"]["stdout"], "p\n");

    // The limits asked for are the limits applied.
    let limited = |code: &str, limits: Value| {
        api.post(
            "/v1/runs",
            json!({"language": "python", "files": [{"content": code}], "limits": limits}),
        )
    };
    let r = limited("import time\ntime.sleep(5)\n", json!({"timeout_ms": 300})).await;
    assert_record(&r, "timeout");
    let r = limited("print('x' * 100000)\n", json!({"output_limit_bytes": 1000})).await;
    assert_record(&r, "output_limit");
    let r = limited(
        "h = []\nfor _ in range(16):\n    h.append(b'\\x01' * (16 << 20))\n",
        json!({"memory_mb": 32, "timeout_ms": 15000}),
    )
    .await;
    assert_record(&r, "memory_limit");

    // wait=false on /v1.
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "python", "files": [{"content": "print('bg')"}], "wait": false}),
        )
        .await;
    let id = assert_accepted(&r, "/v1/runs/");
    let rec = api
        .wait_final(&format!("/v1/runs/{id}"), Duration::from_secs(30))
        .await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["run"]["stdout"], "bg\n");

    // Refusals before any jail starts.
    let r = limited("print(1)", json!({"memory_mb": 4096})).await;
    assert_error(&r, 400, "invalid_limit");
    assert!(
        r.message().contains("memory_bytes") && r.message().contains("2147483648"),
        "the message names the maximum: {}",
        r.text
    );
    let r = limited("print(1)", json!({"timeout_ms": 600_000})).await;
    assert_error(&r, 400, "invalid_limit");
    assert!(
        r.message().contains("60000"),
        "the message names the maximum: {}",
        r.text
    );
    let r = limited("print(1)", json!({"timeout_ms": 0})).await;
    assert_error(&r, 400, "invalid_limit");

    let one = json!([{"content": "print(1)"}]);
    let versioned = |v: &str| {
        api.post(
            "/v1/runs",
            json!({"language": "python", "version": v, "files": one}),
        )
    };
    for ok in ["3", &version, ">=3.0", "*"] {
        let r = versioned(ok).await;
        assert_record(&r, "ok");
    }
    let r = versioned("2").await;
    assert_error(&r, 400, "no_matching_version");
    assert!(r.message().contains(&version), "{}", r.text);
    let r = versioned("three").await;
    assert_error(&r, 400, "invalid_version");

    let r = api
        .post("/v1/runs", json!({"language": "ruby", "files": one}))
        .await;
    assert_error(&r, 400, "unknown_language");
    let r = api.post("/v1/runs", json!({"files": one})).await;
    assert_error(&r, 400, "invalid_field");

    let with_files =
        |files: Value| api.post("/v1/runs", json!({"language": "python", "files": files}));
    for bad in ["a/b.py", "../x.py", "..", "/etc/passwd", "a\0b.py"] {
        let r = with_files(json!([
            {"name": "main.py", "content": "print(1)"},
            {"name": bad, "content": "x = 1"},
        ]))
        .await;
        assert_error(&r, 400, "invalid_file_name");
    }
    let r = with_files(json!([
        {"name": "a.py", "content": "print(1)"},
        {"name": "a.py", "content": "x = 1"},
    ]))
    .await;
    assert_error(&r, 400, "duplicate_file_name");
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"name": format!("f{i}.py"), "content": "x = 1\n"}))
        .collect();
    let r = with_files(json!(many)).await;
    assert_error(&r, 400, "too_many_files");
    assert!(r.message().contains("64"), "{}", r.text);
    let r = with_files(json!([])).await;
    assert_error(&r, 400, "no_files");
    let r = with_files(json!([{"content": "print(1)\0"}])).await;
    assert_error(&r, 400, "nul_in_source");

    let r = api.get("/v1/runs/no-such-run").await;
    assert_error(&r, 404, "run_not_found");
    let r = api.delete("/v1/runs/no-such-run").await;
    assert_error(&r, 404, "run_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_delete_cancels_a_running_run_and_kills_its_processes() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    // The marker argument makes the run's python process findable in /proc/*/cmdline; other
    // jails (this server's pool, other tests' servers) run as execbox uids too, so the uid
    // range alone cannot tell this run's processes apart.
    let marker = unique_marker("cancel");
    let r = api
        .post(
            "/v1/runs",
            json!({
                "language": "python",
                "files": [{"content": "import time\ntime.sleep(30)\n"}],
                "args": [marker],
                "limits": {"timeout_ms": 40000},
                "wait": false,
            }),
        )
        .await;
    let path = format!("/v1/runs/{}", assert_accepted(&r, "/v1/runs/"));
    let procs = api.wait_running(&path, &marker).await;
    let spawner = spawner_of(s.pid()).expect("the server's spawner");
    let mut tree = Vec::new();
    let mut cgroups = Vec::new();
    for &p in &procs {
        assert!(
            jailed(p),
            "payload outside the execbox uid range: {}",
            describe(p)
        );
        assert_eq!(ppid(p), Some(spawner), "{}", describe(p));
        tree.push(proc_id(p).expect("still alive"));
        tree.extend(descendants(p));
        cgroups.extend(cgroups_of(p));
    }
    assert!(!cgroups.is_empty(), "the run is in no execbox cgroup");

    let t0 = Instant::now();
    let del = api.delete(&path).await;
    assert_eq!(del.status, 202, "{}", del.text);
    assert!(
        ["running", "queued"].contains(&del.json["status"].as_str().unwrap_or_default()),
        "{}",
        del.text
    );
    let rec = api.wait_final(&path, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert_eq!(rec["status"], "cancelled", "{rec}");
    assert_eq!(rec["error"]["code"], "cancelled", "{rec}");
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");

    eventually(
        "the cancelled run's processes and cgroups",
        Duration::from_secs(3),
        || {
            let mut left = still_alive(&tree);
            left.extend(with_arg(&marker).into_iter().map(describe));
            left.extend(cgroup_names(&cgroups));
            left
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------- ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_openapi_and_request_ids() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);

    let r = api.get("/healthz").await;
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());

    let r = api.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"status": "ready", "spawner_up": true, "canary_ok": true, "missing_layers": []})
    );

    // A caller's request id is kept; otherwise each request gets its own.
    let r = send(
        api.request(reqwest::Method::GET, "/healthz")
            .header("x-request-id", "trace-me-42"),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("trace-me-42"));
    let a = api.get("/healthz").await;
    let b = api.get("/healthz").await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));

    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{}",
        r.text
    );
    let paths = r.json["paths"].as_object().expect("paths");
    for p in [
        "/execute",
        "/run-json/",
        "/run-file/",
        "/status/{id}",
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runtimes",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(paths["/v1/runs/{id}"].get("delete").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_log_names_the_bound_port() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = Server::start(&["--pool", "1"]);
    // With --listen 127.0.0.1:0 the log is how a supervisor learns the port: it must name the
    // port the kernel bound, not the one asked for.
    let logged: Option<SocketAddr> = s.logged_addr.as_deref().and_then(|a| a.parse().ok());
    let bound = listening_ports(s.pid());
    assert!(
        logged.is_some_and(|a| a.ip().is_loopback() && a.port() != 0 && bound.contains(&a.port())),
        "the `listening` log line says {:?}; the server listens on ports {bound:?}",
        s.logged_addr
    );
}

// ------------------------------------------------------------------- admission and limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_gets_429_timeout_and_body_limit() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = Server::start(&[
        "--max-running",
        "1",
        "--max-queued",
        "1",
        "--timeout",
        "1500ms",
        "--max-body-bytes",
        "4096",
    ]);
    let api = Api::new(&s);

    // 8 concurrent half-second runs against room for 1 running + 1 queued.
    let script = "import time\ndef main():\n    time.sleep(0.5)\n    return {'slept': True}\n";
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.execute(script).await })
        })
        .collect();
    // While saturated, liveness and metrics still answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = api.get("/metrics").await;
        assert_eq!(m.status, 200);
        if metric(&m.text, "execbox_runs_in_flight", "") == Some(1.0) {
            assert!(metric(&m.text, "execbox_queue_depth", "").is_some_and(|q| q <= 1.0));
            break;
        }
        assert!(Instant::now() < deadline, "never saturated: {}", m.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = api.get("/healthz").await;
    assert_eq!(h.status, 204);
    assert!(
        tasks.iter().any(|t| !t.is_finished()),
        "the burst was over before /healthz was asked"
    );

    let (mut ok, mut refused) = (0u32, 0u32);
    for t in tasks {
        let r = t.await.expect("request task");
        match r.status {
            200 => {
                assert_eq!(r.json, json!({"result": {"slept": true}, "stdout": ""}));
                ok += 1;
            }
            429 => {
                assert_error(&r, 429, "queue_full");
                let after: u64 = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {r:?}"));
                assert!(after >= 1);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(ok >= 2, "running + queued places were not used: {ok} ok");
    assert!(refused >= 1, "no 429 out of 8 against 2 places");

    let m = api.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        m.headers
    );
    let value = |name: &str, labels: &str| metric(&m.text, name, labels);
    assert_eq!(
        value("execbox_rejected_requests_total", "reason=\"queue_full\""),
        Some(f64::from(refused)),
        "{}",
        m.text
    );
    assert!(
        value("execbox_runs_total", "status=\"ok\"").is_some_and(|n| n >= f64::from(ok)),
        "{}",
        m.text
    );
    assert_eq!(value("execbox_runs_in_flight", ""), Some(0.0));
    assert_eq!(value("execbox_queue_depth", ""), Some(0.0));
    assert!(
        value("execbox_run_duration_seconds_count", "").is_some_and(|n| n >= f64::from(ok)),
        "{}",
        m.text
    );
    assert!(m.text.contains("execbox_run_duration_seconds_bucket"));

    // The default wall-clock limit of this server is 1.5 s; output before the kill is kept.
    let r = api
        .execute("def main():\n    print('before', flush=True)\n    while True:\n        pass\n")
        .await;
    assert_script_failure(&r, "timeout");
    assert_eq!(r.json["stdout"], "before\n");

    // Bodies above --max-body-bytes, on each kind of endpoint.
    let big = format!("def main():\n    return 1\n#{}\n", "x".repeat(8000));
    let r = api.execute(&big).await;
    assert_error(&r, 413, "body_too_large");
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "python", "files": [{"content": big}]}),
        )
        .await;
    assert_error(&r, 413, "body_too_large");
    let form = Form::new().part("file", py_file("big.py", big.as_bytes()));
    let r = send(api.multipart("/run-file/", form)).await;
    assert_error(&r, 413, "body_too_large");
    // Just under the limit still runs.
    let r = api
        .execute(&format!(
            "def main():\n    return 1\n#{}\n",
            "x".repeat(3000)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["result"], 1);
}

/// The head and as much body as arrives of one answer on a raw connection, read until `until`
/// appears (an answer may come before the request's body was sent, so no read-to-end).
fn read_answer(stream: &mut std::net::TcpStream, until: &str) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_before_the_body_or_holds_the_request_for_a_freed_place() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let sleeper = |secs: u32| {
        json!({"language": "python", "wait": false,
               "files": [{"content": format!("import time\ntime.sleep({secs})\n")}]})
    };

    // One place in all, and refusals at once (--queue-wait 0).
    let s = Server::start(&[
        "--max-running",
        "1",
        "--max-queued",
        "0",
        "--queue-wait",
        "0",
    ]);
    let api = Api::new(&s);
    let r = api.post("/v1/runs", sleeper(30)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // A request that announces a body and never sends it is refused from its headers alone:
    // nothing is read or parsed for a request that cannot run.
    let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(
        &mut raw,
        b"POST /execute HTTP/1.1\r\nHost: execbox\r\nContent-Type: application/json\r\n\
          Content-Length: 100000\r\n\r\n",
    )
    .unwrap();
    let answer = read_answer(&mut raw, "queue_full");
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("queue_full"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    drop(s);

    // With a wait, a request that finds the server full waits for the place instead of being
    // answered 429 at once.
    let s = Server::start(&[
        "--max-running",
        "1",
        "--max-queued",
        "0",
        "--queue-wait",
        "30s",
    ]);
    let api = Api::new(&s);
    let r = api.post("/v1/runs", sleeper(1)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api
        .execute("def main():\n    return {'waited': True}\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["result"], json!({"waited": true}));
    let m = api.get("/metrics").await;
    assert_eq!(
        metric(
            &m.text,
            "execbox_rejected_requests_total",
            "reason=\"queue_full\""
        )
        .unwrap_or(0.0),
        0.0,
        "{}",
        m.text
    );
}

// ----------------------------------------------------------------------------- recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawner_crash_fails_in_flight_runs_and_recovers() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let s = Server::start(&[]);
    let api = Api::new(&s);
    let old = spawner_of(s.pid()).expect("the server's spawner");

    let marker = unique_marker("crash");
    let r = api
        .post(
            "/v1/runs",
            json!({
                "language": "python",
                "files": [{"content": "import time\ntime.sleep(30)\n"}],
                "args": [marker],
                "limits": {"timeout_ms": 40000},
                "wait": false,
            }),
        )
        .await;
    let path = format!("/v1/runs/{}", assert_accepted(&r, "/v1/runs/"));
    let payload = api.wait_running(&path, &marker).await[0];
    assert_eq!(ppid(payload), Some(old), "{}", describe(payload));
    let run_cgroups_before = cgroups_of(payload);
    assert!(!run_cgroups_before.is_empty());

    // Everything of the old spawner, snapshotted right before the kill: the payload and the
    // prepared jails (clones of the spawner that share its command line, with it as parent).
    let tree = descendants(old);
    assert!(tree.iter().any(|p| p.pid == payload));
    let old_id = proc_id(old).expect("spawner alive");
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill the spawner");

    // The in-flight run fails as ours, not the script's.
    let rec = api.wait_final(&path, Duration::from_secs(10)).await;
    assert_eq!(rec["status"], "internal_error", "{rec}");
    assert_eq!(rec["error"]["code"], "internal_error", "{rec}");

    // A new spawner comes up and passes its canary; meanwhile readiness says 503.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get("/readyz").await;
        if r.status == 200 {
            assert_eq!(r.json["status"], "ready");
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.json["status"], "not_ready", "{}", r.text);
        assert!(
            Instant::now() < deadline,
            "not ready again after 30 s: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = spawner_of(s.pid()).expect("a new spawner");
    assert_ne!(new, old);
    assert!(!alive(&old_id), "the old spawner is still there");

    let r = api.execute(HELLO).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"result": {"ok": 1}, "stdout": "hi\n"}));

    // Nothing of the dead spawner survives: none of its processes (by pid and start time), no
    // process with the marker, none of its run cgroups (named after its pid), and no jailed
    // process anywhere without a live spawner (or `execbox run`) above it. The new spawner's
    // prepared jails are in the execbox uid range too, but they have it as parent.
    let prefix = format!("j{old}-");
    eventually(
        "leftovers of the killed spawner",
        Duration::from_secs(10),
        || {
            let mut left = still_alive(&tree);
            left.extend(with_arg(&marker).into_iter().map(describe));
            left.extend(cgroup_names(&run_cgroups(&prefix)));
            left.extend(cgroup_names(&run_cgroups_before));
            left.extend(orphan_jails().into_iter().map(|o| format!("orphan {o}")));
            left
        },
    )
    .await;

    let m = api.get("/metrics").await;
    let value = |name: &str, labels: &str| metric(&m.text, name, labels);
    assert_eq!(
        value("execbox_spawner_restarts", ""),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        value("execbox_runs_total", "status=\"internal_error\""),
        Some(1.0),
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_runs_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    // Alone on the host (among this file's servers): the final check covers every jail.
    let _host = host_exclusive().await;
    // Leftovers that predate this test (of some other jailer on the host) are not this
    // server's; they are reported, not counted.
    // (before the server's first run the parent cgroups may not exist yet on a fresh host)
    let stale_cgroups: Vec<PathBuf> =
        run_cgroups_in(support::existing_execbox_cgroup_parents(), "j")
            .into_iter()
            .filter(|d| !owner_alive(d))
            .collect();
    let stale_orphans = orphan_jails();
    if !stale_cgroups.is_empty() || !stale_orphans.is_empty() {
        eprintln!("note: leftovers before the test: {stale_cgroups:?} {stale_orphans:?}");
    }
    let mut s = Server::start(&["--shutdown-grace-secs", "10"]);
    let api = Api::new(&s);
    let spawner = spawner_of(s.pid()).expect("the server's spawner");

    let marker = unique_marker("drain");
    let body = json!({
        "language": "python",
        "files": [{"content": "import time\ntime.sleep(2)\nprint('drained')\n"}],
        "args": [marker],
    });
    let blocking = tokio::spawn({
        let api = api.clone();
        async move { api.post("/v1/runs", body).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let payload = loop {
        if let Some(&p) = with_arg(&marker).first() {
            break p;
        }
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut tree = descendants(spawner);
    tree.push(proc_id(spawner).expect("spawner alive"));
    let cgroups = cgroups_of(payload);
    assert!(!cgroups.is_empty());

    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);

    // The request that was waiting still gets its run.
    let r = blocking.await.expect("request task");
    assert_record(&r, "ok");
    assert_eq!(r.json["run"]["stdout"], "drained\n");

    let status = s.exited_within(Duration::from_secs(10)).await;
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert!(status.success(), "exit status {status} after SIGTERM");

    let prefix = format!("j{spawner}-");
    eventually("leftovers after shutdown", Duration::from_secs(5), || {
        let mut left = still_alive(&tree);
        left.extend(with_arg(&marker).into_iter().map(describe));
        left.extend(cgroup_names(&run_cgroups(&prefix)));
        left.extend(cgroup_names(&cgroups));
        left.extend(orphan_jails().into_iter().map(|o| format!("orphan {o}")));
        left
    })
    .await;
    // Host-wide: every jailed process and every run cgroup must belong to a live jail owner
    // (there is none once this server is gone, unless something else on the host makes jails).
    eventually(
        "execbox processes or run cgroups without a live owner",
        Duration::from_secs(5),
        || {
            let mut left: Vec<String> = orphan_jails()
                .into_iter()
                .filter(|o| !stale_orphans.contains(o))
                .collect();
            let cgroups = unowned_run_cgroups();
            left.extend(cgroup_names(
                &cgroups
                    .into_iter()
                    .filter(|d| !stale_cgroups.contains(d))
                    .collect::<Vec<_>>(),
            ));
            left
        },
    )
    .await;
    let others = owners();
    if !others.is_empty() {
        eprintln!(
            "note: other execbox jail owners run on this host; their jails were not counted:\n  {}",
            others.join("\n  ")
        );
    }
}

/// A service manager (systemd's default `KillMode=control-group` signals every process of the
/// unit), Ctrl-C in a terminal, or `kill -TERM -PGID` signal more than the server. The drain
/// must not depend on which processes the signal reached: here the server's group and the
/// spawner itself (which has a group of its own) both get SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_whole_process_group_still_drains() {
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let mut s = Server::launch(&["--shutdown-grace-secs", "10"], true);
    let api = Api::new(&s);
    let spawner = spawner_of(s.pid()).expect("the server's spawner");

    let marker = unique_marker("group");
    let body = json!({
        "language": "python",
        "files": [{"content": "import time\ntime.sleep(2)\nprint('drained')\n"}],
        "args": [marker],
    });
    let blocking = tokio::spawn({
        let api = api.clone();
        async move { api.post("/v1/runs", body).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while with_arg(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(Pid::from_raw(-(s.pid() as i32)), Signal::SIGTERM).expect("signal the group");
    kill(Pid::from_raw(spawner as i32), Signal::SIGTERM).expect("signal the spawner");

    let r = blocking.await.expect("request task");
    let status = s.exited_within(Duration::from_secs(15)).await;
    assert_record(&r, "ok");
    assert_eq!(r.json["run"]["stdout"], "drained\n");
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    assert!(status.success(), "exit status {status} after SIGTERM");
    assert_eq!(
        s.logged_spawners(),
        vec![spawner],
        "a spawner was (re)started during shutdown"
    );
    eventually("leftovers of the group", Duration::from_secs(5), || {
        let mut left: Vec<String> = group_members(s.pid()).into_iter().map(describe).collect();
        left.extend(with_arg(&marker).into_iter().map(describe));
        for sp in s.logged_spawners() {
            left.extend(cgroup_names(&run_cgroups(&format!("j{sp}-"))));
        }
        left
    })
    .await;
}

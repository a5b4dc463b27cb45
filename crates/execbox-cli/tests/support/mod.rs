//! Shared by the server tests: start the real `execbox serve` on loopback port 0 (public and
//! private listeners), learn both addresses from its JSON log, stop it with SIGTERM on drop.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Say that the current test is skipped, and why, where the person running the tests sees it:
/// straight to the process's stderr, which the test harness does not capture (it captures
/// `print!`/`eprint!` only), so a skipped test is never mistaken for a passing one.
pub fn report_skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Root is needed for jails. Outside CI a non-root run skips (saying so on stderr, see
/// [`report_skip`]); with `CI=true` it fails.
pub fn privileged() -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    assert!(
        !in_ci(),
        "CI is set but the euid is {uid}, not root: these tests cannot run"
    );
    report_skip(&format!(
        "starts jails and needs root (euid {uid}); with CI=true this fails"
    ));
    false
}

/// The cgroup backend the jail uses on this host, decided as the jail decides it: `v2` when
/// `/sys/fs/cgroup` is a cgroup2 mount, else `v1`.
pub fn cgroup_backend() -> &'static str {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4) == Some(&"/sys/fs/cgroup") && sep.and_then(|i| f.get(i + 1)) == Some(&"cgroup2")
    });
    if v2 {
        "v2"
    } else {
        "v1"
    }
}

/// Those of execbox's parent cgroups for the backend in use that exist now (none before the
/// first run on a fresh host).
pub fn existing_execbox_cgroup_parents() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let parents: Vec<_> = if cgroup_backend() == "v2" {
        vec![root.join("execbox")]
    } else {
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("execbox"))
            .collect()
    };
    parents.into_iter().filter(|p| p.is_dir()).collect()
}

/// execbox's parent cgroups for the backend in use: `/sys/fs/cgroup/execbox` on v2, the
/// `execbox` directory of each controller hierarchy (memory, pids, cpu, …) on v1. Panics if none
/// exists, so a leftover check built on this cannot pass vacuously by looking in the wrong
/// place: call it only after a run has created them.
pub fn execbox_cgroup_parents() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let existing = existing_execbox_cgroup_parents();
    assert!(
        !existing.is_empty(),
        "no execbox cgroup exists for the {} backend below {}: a leftover check here would \
         look in the wrong place",
        cgroup_backend(),
        root.display()
    );
    existing
}

/// A running `execbox serve`.
pub struct Server {
    child: Child,
    /// Public listener.
    pub public: SocketAddr,
    /// Private listener (`/healthz`, `/readyz`, `/metrics`).
    pub private: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start with `args` (after `serve`) and `envs`; wait until `/readyz` answers 200 (when
    /// `wait_ready`).
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_execbox"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--private-listen",
            "127.0.0.1:0",
            "--log-json",
            "--shutdown-grace-secs",
            "2",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("APP_JWT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start execbox serve");
        let stderr = child.stderr.take().expect("stderr pipe");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let (tx, rx) = mpsc::channel::<(String, String)>();
        // Drain stderr for the server's life so a full pipe never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let f = &v["fields"];
                    if f["message"] == "listening" {
                        let which = f["listener"].as_str().unwrap_or("").to_owned();
                        let addr = f["addr"].as_str().unwrap_or("").to_owned();
                        let _ = tx.send((which, addr));
                    }
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let mut s = Server {
            child,
            public: SocketAddr::from(([127, 0, 0, 1], 0)),
            private: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok((which, addr)) => {
                    let a: SocketAddr = addr.parse().expect("listening addr");
                    match which.as_str() {
                        "public" => s.public = a,
                        "private" => s.private = a,
                        other => panic!("unknown listener {other:?}"),
                    }
                }
                Err(_) => panic!("no `listening` log lines:\n{}", s.log_tail(40)),
            }
        }
        s
    }

    /// Block until `/readyz` on the private listener answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if status_of(self.private, "/readyz") == Some(200) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("execbox serve exited ({st}):\n{}", self.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "not ready:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://public/path` (or `https://` with `tls`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Send SIGTERM (start a graceful shutdown) without waiting.
    pub fn sigterm(&self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- server log (tail) ----\n{}\n----", self.log_tail(60));
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Status of a plain `GET path` (blocking, std only).
pub fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    s.take(64 * 1024).read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A reqwest client. reqwest is built without a bundled TLS crypto provider (ring is chosen
/// for the whole workspace: no C toolchain), so install it once before building any client.
pub fn client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

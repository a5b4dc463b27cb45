//! The real `execbox serve`, started on loopback port 0 (public and private listeners) with
//! its real spawner: addresses learnt from its JSON log, stopped with SIGTERM on drop (SIGKILL
//! if it hangs), its log tail printed when a test panics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::http::status_of;
use super::tokens::SECRET;

/// `execbox serve` on loopback port 0 (public and private), nothing else set: for the tests
/// that start a server expecting it to refuse.
pub fn serve_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execbox"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--private-listen",
        "127.0.0.1:0",
    ]);
    cmd
}

/// How a [`Server`] is started, beyond its flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `--insecure-no-auth` instead of tokens signed with [`SECRET`].
    pub no_auth: bool,
    /// As the leader of a new process group (as a service manager or a terminal would run
    /// it), so the group can be signalled as a whole.
    pub own_group: bool,
}

/// A running `execbox serve`.
pub struct Server {
    child: Child,
    /// Public listener (the API).
    pub public: SocketAddr,
    /// Private listener (`/healthz`, `/readyz`, `/metrics`).
    pub private: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start with `args` (after `serve`), tokens checked against [`SECRET`]; wait until ready.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, Options::default())
    }

    /// Start with `args` (after `serve`) and `opts`; wait until `/readyz` answers 200.
    pub fn start_with(args: &[&str], opts: Options) -> Server {
        let mut cmd = serve_command();
        cmd.arg("--log-json");
        if !args.contains(&"--shutdown-grace-secs") {
            cmd.args(["--shutdown-grace-secs", "2"]);
        }
        if opts.no_auth {
            cmd.arg("--insecure-no-auth").env_remove("APP_JWT_SECRET");
        } else {
            cmd.env("APP_JWT_SECRET", SECRET);
        }
        if opts.own_group {
            cmd.process_group(0);
        }
        if !args.contains(&"--runtimes-dir") {
            // Only the built-in Python: every other runtime's smoke test would cost each server
            // start seconds (crates/execbox-cli/tests/languages.rs tests them all).
            cmd.env("EXECBOX_RUNTIMES_DIR", "/nonexistent/execbox-runtimes");
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start execbox serve");
        let stderr = child.stderr.take().expect("stderr pipe");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<(String, String)>();
        let sink = logs.clone();
        // Drain stderr for the server's whole life (the spawner writes there too), so a full
        // pipe never blocks it; remember the lines for failure reports.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            while let Ok(1..) = r.read_until(b'\n', &mut buf) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
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
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut s = Server {
            child,
            public: unbound,
            private: unbound,
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.public == unbound || s.private == unbound {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((which, addr)) = rx.recv_timeout(left) else {
                panic!("no `listening` log lines:\n{}", s.log_tail(40));
            };
            // With port 0 asked for, the log is how a supervisor learns the port: it must name
            // the port the kernel bound.
            let a = addr
                .parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0 && a.ip().is_loopback())
                .unwrap_or_else(|| panic!("the {which} `listening` log line says {addr:?}"));
            match which.as_str() {
                "public" => s.public = a,
                "private" => s.private = a,
                other => panic!("unknown listener {other:?}"),
            }
        }
        s.wait_ready(Duration::from_secs(180));
        s
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://public/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Poll `GET /readyz` on the private listener until 200.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if status_of(self.private, "/readyz") == Some(200) {
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
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
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
    pub fn logged_spawners(&self) -> Vec<u32> {
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

    /// Send `sig` to the server (not its group).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- server {} log (tail) ----\n{}\n----",
                self.public,
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
        eprintln!("server {} ignored SIGTERM for 10 s: SIGKILL", self.public);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

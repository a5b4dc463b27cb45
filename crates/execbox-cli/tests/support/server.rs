//! The real `execbox serve`, started on loopback port 0 (public and private listeners) with
//! its real spawner: addresses learnt from its JSON log, stopped with SIGTERM on drop (SIGKILL
//! if it hangs), its log tail printed when a test panics.
//!
//! With `EXECBOX_TEST_CONTAINER_IMAGE=<image>` (`make docker-test`) the same `Server` is that
//! image under `docker run` with the documented privileges (docs/security.md, "In a
//! container"): the same `serve` flags, both ports published on loopback ports Docker picks
//! (learnt with `docker port`), the log followed with `docker logs -f`, stopped with `docker
//! stop` (SIGTERM, then SIGKILL after 10 s) and removed on drop. The tests that inspect the
//! server's processes, cgroups or sockets on the host skip visibly in that mode
//! ([`super::docker::skip_in_container`]); [`Server::pid`] refuses.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::docker::{
    docker, documented_flags, exit_code, published_addr, target_image, text, LABEL,
};
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
    /// The runtimes the server finds by default (`/opt/execbox/runtimes`; in the full image,
    /// every language), not only the built-in Python.
    pub default_runtimes: bool,
}

/// Where the server runs.
enum Backend {
    /// The host binary, a child of the test.
    Process(Child),
    /// A container (`id`), its log followed by `docker logs -f` (`follower`).
    Container { id: String, follower: Child },
}

/// Flags that name a host file the server reads: bind-mounted read-only into the container at
/// the same path.
const FILE_FLAGS: &[&str] = &["--tls-cert", "--tls-key"];

/// Read `r` line by line for as long as it is open (so a full pipe never blocks the writer),
/// remembering every line in `sink` and sending the `listening` lines' listener and address.
fn collect_lines(
    r: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    tx: mpsc::Sender<(String, String)>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
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
}

/// A running `execbox serve`.
pub struct Server {
    backend: Backend,
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

    /// Start with `args` (after `serve`) and `opts`; wait until `/readyz` answers 200. In
    /// container mode (`EXECBOX_TEST_CONTAINER_IMAGE`), [`Server::start_container`].
    pub fn start_with(args: &[&str], opts: Options) -> Server {
        Server::start_with_env(args, opts, &[])
    }

    /// [`Server::start_with`], with `env` added to the server's environment (host process
    /// only).
    pub fn start_with_env(args: &[&str], opts: Options, env: &[(&str, &str)]) -> Server {
        if let Some(image) = target_image() {
            return Server::start_container(&image, args, opts);
        }
        let mut cmd = serve_command();
        cmd.envs(env.iter().copied());
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
        if !args.contains(&"--runtimes-dir") && !opts.default_runtimes {
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
        // The spawner writes to the same stderr.
        collect_lines(stderr, logs.clone(), tx);
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut s = Server {
            backend: Backend::Process(child),
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

    /// `image` under `docker run -d` with the documented privileges, `serve` and `args` (after
    /// listeners on the container's 8080 and 9090, published on loopback ports Docker picks),
    /// the secret or `--insecure-no-auth` as `opts` says; wait until `/readyz` answers 200.
    pub fn start_container(image: &str, args: &[&str], opts: Options) -> Server {
        assert!(
            !opts.own_group,
            "own_group: a container's processes are not in the test's session"
        );
        let mut run: Vec<String> = ["run", "-d", "--label", LABEL]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run.extend(documented_flags());
        run.extend(
            [
                "-p",
                "127.0.0.1::8080",
                "-p",
                "127.0.0.1::9090",
                "-e",
                "RUST_LOG=info",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if !opts.no_auth {
            run.extend(["-e".into(), format!("APP_JWT_SECRET={SECRET}")]);
        }
        if !args.contains(&"--runtimes-dir") && !opts.default_runtimes {
            // As on the host: only the built-in Python (the full image's runtimes are tested by
            // tests/docker.rs).
            run.extend([
                "-e".into(),
                "EXECBOX_RUNTIMES_DIR=/nonexistent/execbox-runtimes".into(),
            ]);
        }
        for w in args.windows(2) {
            if FILE_FLAGS.contains(&w[0]) {
                run.extend(["-v".into(), format!("{0}:{0}:ro", w[1])]);
            }
        }
        run.push(image.into());
        run.extend(
            [
                "serve",
                "--listen",
                "0.0.0.0:8080",
                "--private-listen",
                "0.0.0.0:9090",
                "--log-json",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if !args.contains(&"--shutdown-grace-secs") {
            run.extend(["--shutdown-grace-secs".into(), "2".into()]);
        }
        if opts.no_auth {
            run.push("--insecure-no-auth".into());
        }
        run.extend(args.iter().map(|s| s.to_string()));
        let out = docker(&run);
        assert!(
            out.status.success(),
            "docker {}: {}",
            run.join(" "),
            text(&out.stderr)
        );
        let id = text(&out.stdout).trim().to_owned();
        let mut follower = Command::new("docker")
            .args(["logs", "--follow", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker logs --follow");
        let logs = Arc::new(Mutex::new(Vec::new()));
        // The addresses come from `docker port`; the `listening` lines name the container's.
        let (tx, _rx) = mpsc::channel();
        collect_lines(follower.stdout.take().unwrap(), logs.clone(), tx.clone());
        collect_lines(follower.stderr.take().unwrap(), logs.clone(), tx);
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut s = Server {
            backend: Backend::Container {
                id: id.clone(),
                follower,
            },
            public: unbound,
            private: unbound,
            logs,
        };
        s.public = published_addr(&id, "8080/tcp");
        s.private = published_addr(&id, "9090/tcp");
        s.wait_ready(Duration::from_secs(180));
        s
    }

    /// Whether this server runs in a container.
    pub fn in_container(&self) -> bool {
        matches!(self.backend, Backend::Container { .. })
    }

    /// `Some` once the server has exited.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        match &mut self.backend {
            Backend::Process(child) => child.try_wait().ok().flatten(),
            Backend::Container { id, .. } => {
                exit_code(id).map(|c| ExitStatus::from_raw((c & 0xff) << 8))
            }
        }
    }

    /// The server's pid (on the host only: a container's processes are not the test's to
    /// inspect, see [`super::docker::skip_in_container`]).
    pub fn pid(&self) -> u32 {
        match &self.backend {
            Backend::Process(child) => child.id(),
            Backend::Container { id, .. } => panic!(
                "the server runs in container {id}: a test that needs its host pid must skip \
                 in container mode (support::skip_in_container)"
            ),
        }
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
    /// Wait until `templates` warm templates are ready (`execbox_warm{what="templates_ready"}`
    /// in `/metrics`; Python has two by default, with and without numpy and pandas) and a child
    /// is prepared, so runs take the warm path.
    pub fn wait_warm(&self, timeout: Duration, templates: f64) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = super::http::raw_get(self.private, "/metrics").unwrap_or_default();
            let ready = super::http::metric(&text, "execbox_warm", "what=\"templates_ready\"");
            let pool = super::http::metric(&text, "execbox_warm", "what=\"pool_depth\"");
            if ready.unwrap_or(0.0) >= templates && pool.unwrap_or(0.0) >= 1.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no warm template ready after {timeout:?} (is the jail library built beside the \
                 binary? `cargo build -p execbox-jail`; `make test` does it):\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // `docker inspect` is a process of its own: asked less often.
        let pause = Duration::from_millis(if self.in_container() { 200 } else { 50 });
        loop {
            if status_of(self.private, "/readyz") == Some(200) {
                return;
            }
            if let Some(st) = self.try_wait() {
                // Let the log follower catch the last lines.
                std::thread::sleep(Duration::from_millis(300));
                panic!("execbox serve exited ({st}):\n{}", self.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {timeout:?}:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(pause);
        }
    }

    /// Wait for the process to exit by itself.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
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

    /// Send `sig` to the server (not its group; in a container, its PID 1).
    pub fn signal(&self, sig: Signal) {
        if let Backend::Container { id, .. } = &self.backend {
            let out = docker(&["kill", "--signal", sig.as_str(), id]);
            assert!(out.status.success(), "docker kill: {}", text(&out.stderr));
            return;
        }
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
        let child = match &mut self.backend {
            Backend::Process(child) => child,
            Backend::Container { id, follower } => {
                // SIGTERM to PID 1 (execbox), SIGKILL after 10 s; then the container is removed
                // and the follower sees its log end.
                let _ = docker(&["stop", "-t", "10", id]);
                let _ = docker(&["rm", "-f", id]);
                let _ = follower.kill();
                let _ = follower.wait();
                return;
            }
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("server {} ignored SIGTERM for 10 s: SIGKILL", self.public);
        let _ = child.kill();
        let _ = child.wait();
    }
}

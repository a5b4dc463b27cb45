//! End-to-end tests of `execbox serve` over HTTP: the real binary, its real spawner and real
//! jails, spoken to with reqwest on loopback only.
//!
//! Each test starts `execbox serve --listen 127.0.0.1:0` as a child process (the plain API tests
//! share one through [`shared_server`]), learns its port from the JSON `listening` log line,
//! waits for `/readyz`, and stops it with SIGTERM when done (`support::Server`'s `Drop`; SIGKILL
//! if it hangs). Like `cli.rs` they need root: outside CI a non-root run skips with a message; with
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
//!
//! With `EXECBOX_TEST_CONTAINER_IMAGE=<image>` (`make docker-test`) every server is that image
//! under `docker run` with the documented privileges (`support::server`); what inspects the
//! server's host processes, cgroups or sockets (the bound port, the spawner crash, both SIGTERM
//! drains, and the process half of the cancel test) then reports `SKIPPED` with the reason.
mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use support::host::*;
use support::{metric, privileged, send, Api, Options, Resp, Server};

/// Readers: tests that tolerate other servers. Writer: the test that checks the whole host.
/// (A tokio lock: each test has its own runtime and holds its guard across awaits.)
static HOST: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

type HostShare = tokio::sync::RwLockReadGuard<'static, ()>;

async fn host_shared() -> HostShare {
    HOST.read().await
}

async fn host_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HOST.write().await
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

/// `execbox serve` with `args`, without authentication: these tests exercise the API
/// contracts, not authentication.
fn server(args: &[&str]) -> Server {
    let opts = Options {
        no_auth: true,
        ..Options::default()
    };
    Server::start_with(args, opts)
}

/// The start of a plain API test: root (or a skip), a share of the host, the shared server and
/// a client for it.
async fn shared() -> Option<(HostShare, Arc<Server>, Api)> {
    if !privileged() {
        return None;
    }
    let host = host_shared().await;
    let s = shared_server();
    let api = Api::new(&s);
    Some((host, s, api))
}

/// The start of a test with a server of its own, started with `args`: root (or a skip), a
/// share of the host, the server and a client for it.
async fn own(args: &[&str]) -> Option<(HostShare, Server, Api)> {
    if !privileged() {
        return None;
    }
    let host = host_shared().await;
    let s = server(args);
    let api = Api::new(&s);
    Some((host, s, api))
}

/// The server of the plain API tests: started by the first test that needs it, stopped when
/// the last test holding it finishes (and started again if a later test needs it).
fn shared_server() -> Arc<Server> {
    static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = w.upgrade() {
        return s;
    }
    let s = Arc::new(server(&[]));
    *w = Arc::downgrade(&s);
    s
}

// ------------------------------------------------------------------------------- answers

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

fn py_file(name: &str, bytes: &[u8]) -> Part {
    Part::bytes(bytes.to_vec()).file_name(name.to_owned())
}

/// Start a 30 s run, not waited for, with a fresh marker made from `tag` as its argument;
/// returns the path of its record and the marker.
async fn start_marked_sleeper(api: &Api, tag: &str) -> (String, String) {
    let marker = unique_marker(tag);
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
    (path, marker)
}

/// Start a 2 s run that prints `drained`, waited for by a request on its own task, with a fresh
/// marker made from `tag` as its argument; wait until its process exists. Returns the task, the
/// marker and the run's pid.
async fn start_blocking_run(api: &Api, tag: &str) -> (tokio::task::JoinHandle<Resp>, String, u32) {
    let marker = unique_marker(tag);
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
    loop {
        if let Some(&p) = with_arg(&marker).first() {
            return (blocking, marker, p);
        }
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What is left once spawner `spawner` is gone: processes of `tree` still alive, processes with
/// `marker` as an argument, the spawner's run cgroups (named after its pid), the `cgroups` its
/// run was in, and jailed processes anywhere without a live owner.
fn gone_spawner_leftovers(
    spawner: u32,
    tree: &[ProcId],
    marker: &str,
    cgroups: &[PathBuf],
) -> Vec<String> {
    let mut left = still_alive(tree);
    left.extend(with_arg(marker).into_iter().map(describe));
    left.extend(cgroup_names(&run_cgroups(&format!("j{spawner}-"))));
    left.extend(cgroup_names(cgroups));
    left.extend(orphan_jails().into_iter().map(|o| format!("orphan {o}")));
    left
}

/// A `202 Accepted` answer `r` for a run under `prefix` (see [`assert_accepted`]) that then
/// ends `ok`, its record under its id, having printed `stdout`.
async fn accepted_then_ok(api: &Api, r: &Resp, prefix: &str, stdout: &str) {
    let id = assert_accepted(r, prefix);
    let rec = api
        .wait_final(&format!("{prefix}{id}"), Duration::from_secs(30))
        .await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["run"]["stdout"], stdout);
}

const HELLO: &str = "def main():\n    print('hi')\n    return {'ok': 1}\n";

// ----------------------------------------------------------------------------- seed 004

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_returns_main_result_apart_from_stdout() {
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

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
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

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
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

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
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

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
    accepted_then_ok(&api, &r, "/status/", "later\n").await;

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
    accepted_then_ok(&api, &r, "/status/", "async file\n").await;

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
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

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
    accepted_then_ok(&api, &r, "/v1/runs/", "bg\n").await;

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
    let Some((_host, s, api)) = shared().await else {
        return;
    };
    if s.in_container() {
        // The API half only: the processes and cgroups are found by the server's host pid.
        let (path, _) = start_marked_sleeper(&api, "cancel").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while api.get(&path).await.json["status"] != "running" {
            assert!(Instant::now() < deadline, "the run never started");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let del = api.delete(&path).await;
        assert_eq!(del.status, 202, "{}", del.text);
        let rec = api.wait_final(&path, Duration::from_secs(10)).await;
        assert_eq!(rec["status"], "cancelled", "{rec}");
        assert_eq!(rec["error"]["code"], "cancelled", "{rec}");
        support::skip_in_container(
            "the check that the cancelled run's processes and cgroups are gone (by the \
             server's host pid)",
        );
        return;
    }

    // The marker argument makes the run's python process findable in /proc/*/cmdline; other
    // jails (this server's pool, other tests' servers) run as execbox uids too, so the uid
    // range alone cannot tell this run's processes apart.
    let (path, marker) = start_marked_sleeper(&api, "cancel").await;
    let procs = api.wait_running(&path, &marker).await;
    let spawner = spawner_of(s.pid()).expect("the server's spawner");
    let mut tree = Vec::new();
    let mut cgroups = Vec::new();
    let mut namespaces = Vec::new();
    for &p in &procs {
        assert!(
            jailed(p),
            "payload outside the execbox uid range: {}",
            describe(p)
        );
        // The payload is the jail's init or, in program mode, the child of its `sh` wrapper
        // (the init, also jailed): either way the spawner is the jail's parent.
        let init = match ppid(p) {
            Some(pp) if pp != spawner && jailed(pp) => pp,
            _ => p,
        };
        assert_eq!(ppid(init), Some(spawner), "{}", describe(p));
        tree.push(proc_id(p).expect("still alive"));
        tree.extend(descendants(p));
        cgroups.extend(cgroups_of(p));
        namespaces.extend(pid_namespace(p));
    }
    assert!(!cgroups.is_empty(), "the run is in no execbox cgroup");
    let host_ns = pid_namespace(std::process::id());
    assert!(
        !namespaces.is_empty() && namespaces.iter().all(|ns| Some(ns) != host_ns.as_ref()),
        "the run is not in a pid namespace of its own: {namespaces:?}"
    );

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

    // Its cgroups may outlive it (kept for reuse on v1), but nothing in its pid namespace may.
    eventually(
        "the cancelled run's processes",
        Duration::from_secs(3),
        || {
            let mut left = still_alive(&tree);
            left.extend(with_arg(&marker).into_iter().map(describe));
            left.extend(in_pid_namespaces(&namespaces));
            left
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------- ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_openapi_and_request_ids() {
    let Some((_host, _s, api)) = shared().await else {
        return;
    };

    let r = api.get("/healthz").await;
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());

    let r = api.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"status": "ready", "spawner_up": true, "canary_ok": true, "missing_layers": [],
               "shared_state": "memory"})
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
    if support::skip_in_container("reads the sockets of the server's host pid; behind `docker port` the log names the container's port") {
        return;
    }
    let Some((_host, s, _api)) = own(&["--pool", "1"]).await else {
        return;
    };
    // With --listen 127.0.0.1:0 the log is how a supervisor learns the port: it must name the
    // port the kernel bound, not the one asked for. (`Server` takes its addresses from the
    // log and refuses port 0 or a non-loopback address.)
    let bound = listening_ports(s.pid());
    assert!(
        bound.contains(&s.public.port()) && bound.contains(&s.private.port()),
        "the `listening` log lines say {} and {}; the server listens on ports {bound:?}",
        s.public,
        s.private
    );
}

// ------------------------------------------------------------------- admission and limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_gets_429_timeout_and_body_limit() {
    let Some((_host, _s, api)) = own(&[
        "--max-running",
        "1",
        "--max-queued",
        "1",
        "--timeout",
        "1500ms",
        "--max-body-bytes",
        "4096",
    ])
    .await
    else {
        return;
    };

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
    // One place in all (one running, none queued), and `wait` for a place to free.
    let one_place = |wait| {
        server(&[
            "--max-running",
            "1",
            "--max-queued",
            "0",
            "--queue-wait",
            wait,
        ])
    };

    // Refusals at once (--queue-wait 0).
    let s = one_place("0");
    let api = Api::new(&s);
    let r = api.post("/v1/runs", sleeper(30)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // A request that announces a body and never sends it is refused from its headers alone:
    // nothing is read or parsed for a request that cannot run.
    let mut raw = std::net::TcpStream::connect(s.public).unwrap();
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
    let s = one_place("30s");
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
    if support::skip_in_container("kills the server's spawner by its host pid") {
        return;
    }
    let Some((_host, s, api)) = own(&[]).await else {
        return;
    };
    let old = spawner_of(s.pid()).expect("the server's spawner");

    let (path, marker) = start_marked_sleeper(&api, "crash").await;
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
    eventually(
        "leftovers of the killed spawner",
        Duration::from_secs(10),
        || gone_spawner_leftovers(old, &tree, &marker, &run_cgroups_before),
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
    if support::skip_in_container("checks for leftover processes and cgroups on the host (tests/docker.rs checks `docker stop`)") {
        return;
    }
    if !privileged() {
        return;
    }
    // Alone on the host (among this file's servers): the final check covers every jail.
    let _host = host_exclusive().await;
    // Leftovers that predate this test (of some other jailer on the host) are not this
    // server's; they are reported, not counted.
    // (before the server's first run the parent cgroups may not exist yet on a fresh host)
    let stale_cgroups: Vec<PathBuf> = run_cgroups_in(existing_execbox_cgroup_parents(), "j")
        .into_iter()
        .filter(|d| !owner_alive(d))
        .collect();
    let stale_orphans = orphan_jails();
    if !stale_cgroups.is_empty() || !stale_orphans.is_empty() {
        eprintln!("note: leftovers before the test: {stale_cgroups:?} {stale_orphans:?}");
    }
    let mut s = server(&["--shutdown-grace-secs", "10"]);
    let api = Api::new(&s);
    let spawner = spawner_of(s.pid()).expect("the server's spawner");

    let (blocking, marker, payload) = start_blocking_run(&api, "drain").await;
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

    eventually("leftovers after shutdown", Duration::from_secs(5), || {
        gone_spawner_leftovers(spawner, &tree, &marker, &cgroups)
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
    if support::skip_in_container("signals the server's host process group") {
        return;
    }
    if !privileged() {
        return;
    }
    let _host = host_shared().await;
    let mut s = Server::start_with(
        &["--shutdown-grace-secs", "10"],
        Options {
            no_auth: true,
            own_group: true,
            ..Options::default()
        },
    );
    let api = Api::new(&s);
    let spawner = spawner_of(s.pid()).expect("the server's spawner");

    let (blocking, marker, _) = start_blocking_run(&api, "group").await;
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

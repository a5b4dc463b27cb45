//! Live runs through the real server and jail (`docs/live-protocol.md`): the `execbox.v2`
//! WebSocket streams output while the program runs, drives an interactive program, delivers
//! signals (SIGINT as Python's `KeyboardInterrupt`), cancels and disconnects leave nothing
//! behind, a client that never reads does not grow the server beyond the documented bound,
//! and `GET /v1/runs/{id}/events` streams the same events as SSE and resumes with
//! `Last-Event-ID`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::host::{
    cgroups_of, descendants, describe, in_pid_namespaces, jailed, pid_namespace, proc_id,
    still_alive, unique_marker, with_arg, ProcId,
};
use support::tokens::token;
use support::{privileged, Api, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Longest any single expected event may take (generous: a loaded 2-core host).
const PATIENCE: Duration = Duration::from_secs(30);

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;
type TcpWs = Ws<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn request(
    s: &Server,
    user: &str,
    protocols: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}/v1/ws", s.public)
        .into_client_request()
        .unwrap();
    let offer = format!("{protocols}, bearer.{}", token(user));
    req.headers_mut()
        .insert("sec-websocket-protocol", offer.parse().unwrap());
    req
}

/// An `execbox.v2` session of `user`, past its `ready`.
async fn live(s: &Server, user: &str) -> TcpWs {
    let (mut ws, resp) = tokio_tungstenite::connect_async(request(s, user, "execbox.v2"))
        .await
        .expect("upgrade");
    let chosen = resp.headers().get("sec-websocket-protocol").cloned();
    assert_eq!(
        chosen.as_ref().and_then(|v| v.to_str().ok()),
        Some("execbox.v2")
    );
    assert_eq!(next(&mut ws).await["type"], "ready");
    ws
}

async fn next<S>(ws: &mut Ws<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("nothing from the server in time");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(f))) => {
                let (code, reason) = f.map_or((0, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                return json!({"type": "closed", "code": code, "reason": reason});
            }
            Some(Ok(_)) => {}
            other => panic!("the session ended: {other:?}"),
        }
    }
}

async fn send<S>(ws: &mut Ws<S>, v: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn program(src: &str) -> Value {
    json!({"language": "python", "files": [{"content": src}]})
}

fn run(src: &str) -> Value {
    json!({"type": "run", "request": program(src)})
}

/// Messages until `exit`, with the time each arrived; panics on an error message.
async fn until_exit(ws: &mut TcpWs) -> Vec<(Instant, Value)> {
    let mut got = Vec::new();
    loop {
        let m = next(ws).await;
        assert_ne!(m["type"], "error", "{m}");
        let done = m["type"] == "exit";
        got.push((Instant::now(), m));
        if done {
            return got;
        }
    }
}

/// The stdout text of `messages`.
fn stdout_of(messages: &[(Instant, Value)]) -> String {
    messages
        .iter()
        .filter(|(_, m)| m["type"] == "stdout")
        .map(|(_, m)| m["data"].as_str().unwrap_or_default())
        .collect()
}

/// Read messages until a `stdout` one contains `text`; returns everything read.
async fn until_stdout(ws: &mut TcpWs, text: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut out = String::new();
    loop {
        let m = next(ws).await;
        assert!(
            m["type"] != "error" && m["type"] != "exit",
            "waiting for {text:?}: {m}"
        );
        if m["type"] == "stdout" {
            out += m["data"].as_str().unwrap_or_default();
        }
        seen.push(m);
        if out.contains(text) {
            return seen;
        }
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_while_the_program_runs() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let mut ws = live(&s, "streamer").await;
    // Plain print: the live run's PYTHONUNBUFFERED makes it write as it prints.
    let src = "import time\nfor i in range(5):\n    print(f'tick {i}')\n    time.sleep(1)\n";
    let mut req = program(src);
    req["limits"] = json!({"timeout_ms": 30000});
    send(&mut ws, json!({"type": "run", "request": req})).await;
    let accepted = next(&mut ws).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let t0 = Instant::now();
    let got = until_exit(&mut ws).await;
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, m)| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "stage", "{kinds:?}");
    assert_eq!(got[0].1["stage"], "run");
    // The lines arrived in messages of their own (print may write a line's text and its
    // newline separately), each before the end.
    let stdout: Vec<&(Instant, Value)> =
        got.iter().filter(|(_, m)| m["type"] == "stdout").collect();
    assert!(stdout.len() >= 5, "{kinds:?}");
    let mut text = String::new();
    let mut first = None;
    for (at, m) in &stdout {
        text += m["data"].as_str().unwrap();
        if first.is_none() && text.contains("tick 0\n") {
            assert!(
                !text.contains("tick 1"),
                "the first two lines came together: {text:?}"
            );
            first = Some(*at);
        }
    }
    assert_eq!(
        text,
        (0..5).map(|i| format!("tick {i}\n")).collect::<String>()
    );
    let first = first.expect("the first line");
    let (end, exit) = got.last().unwrap();
    assert_eq!(exit["record"]["status"], "ok", "{exit}");
    assert_eq!(exit["record"]["run"]["stdout"], text);
    // The first line came while the program still had four seconds of sleeping to do (a
    // generous margin for a busy host: the order, not the speed, is what is checked).
    assert!(
        end.duration_since(first) >= Duration::from_secs(3),
        "the first line arrived with the end: {:?} before it",
        end.duration_since(first)
    );
    eprintln!(
        "first line {:?} after accepted; exit {:?} after it",
        first.duration_since(t0),
        end.duration_since(first)
    );

    // Another run on the same socket; stderr streams too.
    send(
        &mut ws,
        run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n"),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    let got = until_exit(&mut ws).await;
    let err: String = got
        .iter()
        .filter(|(_, m)| m["type"] == "stderr")
        .map(|(_, m)| m["data"].as_str().unwrap())
        .collect();
    assert_eq!((stdout_of(&got).as_str(), err.as_str()), ("out\n", "err\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_program_is_driven_over_the_socket() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let mut ws = live(&s, "typist").await;
    let doubler = "while True:\n    try:\n        line = input('> ')\n    except EOFError:\n        print('bye')\n        break\n    print(int(line) * 2)\n";
    send(&mut ws, run(doubler)).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_stdout(&mut ws, "> ").await;
    for (question, answer) in [("21", "42"), ("5", "10"), ("-7", "-14")] {
        send(
            &mut ws,
            json!({"type": "stdin", "data": format!("{question}\n")}),
        )
        .await;
        until_stdout(&mut ws, &format!("{answer}\n> ")).await;
    }
    // Bounded and validated: one message at most 64 KiB; a signal off the allow-list.
    let big = "1".repeat(64 * 1024 + 1);
    send(&mut ws, json!({"type": "stdin", "data": big})).await;
    assert_eq!(next(&mut ws).await["error"]["code"], "stdin_too_large");
    send(&mut ws, json!({"type": "signal", "signal": "STOP"})).await;
    assert_eq!(next(&mut ws).await["error"]["code"], "invalid_signal");
    send(&mut ws, json!({"type": "stdin", "data": "", "eof": true})).await;
    let got = until_exit(&mut ws).await;
    assert!(stdout_of(&got).ends_with("bye\n"), "{got:?}");
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["run"]["stdout"], "> 42\n> 10\n> -14\n> bye\n");

    // Stdin after eof, without a run, or to a run with close_stdin is refused.
    send(&mut ws, json!({"type": "stdin", "data": "1\n"})).await;
    assert_eq!(next(&mut ws).await["error"]["code"], "no_run");
    send(
        &mut ws,
        json!({"type": "run", "close_stdin": true,
               "request": {"language": "python", "stdin": "3\n",
                           "files": [{"content": "import sys, time\nprint(sys.stdin.read().strip())\ntime.sleep(1)\n"}]}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    send(&mut ws, json!({"type": "stdin", "data": "4\n"})).await;
    let reply = loop {
        let m = next(&mut ws).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], "stdin_closed", "{reply}");
    let got = until_exit(&mut ws).await;
    assert_eq!(got.last().unwrap().1["record"]["run"]["stdout"], "3\n");

    // A run's whole stdin stays within its stdin_bytes limit.
    send(
        &mut ws,
        json!({"type": "run", "request": {"language": "python", "limits": {},
               "stdin": "x".repeat(1024 * 1024 - 10),
               "files": [{"content": "input()\nimport time\ntime.sleep(30)\n"}]}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    send(&mut ws, json!({"type": "stdin", "data": "y".repeat(20)})).await;
    let reply = loop {
        let m = next(&mut ws).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], "stdin_too_large", "{reply}");
    send(&mut ws, json!({"type": "cancel"})).await;
    let got = until_exit(&mut ws).await;
    assert_eq!(got.last().unwrap().1["record"]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_reaches_python_as_keyboard_interrupt() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let mut ws = live(&s, "interrupter").await;
    let src = "import signal, time\n\
               hits = []\n\
               signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))\n\
               print('ready')\n\
               try:\n    time.sleep(60)\n\
               except KeyboardInterrupt:\n    print(f'caught KeyboardInterrupt after {len(hits)} USR1')\n    raise SystemExit(3)\n";
    send(&mut ws, run(src)).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_stdout(&mut ws, "ready\n").await;
    // USR1 is caught by the handler (and may interrupt the sleep: Python resumes it).
    send(&mut ws, json!({"type": "signal", "signal": "USR1"})).await;
    send(&mut ws, json!({"type": "signal", "signal": "SIGINT"})).await;
    let got = until_exit(&mut ws).await;
    assert_eq!(
        stdout_of(&got),
        "caught KeyboardInterrupt after 1 USR1\n",
        "{got:?}"
    );
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["run"]["exit_code"], 3, "{rec}");
    assert_eq!(rec["error"]["code"], "nonzero_exit", "{rec}");

    // Uncaught, SIGINT ends Python with the traceback on stderr; TERM and KILL end a program.
    for sig in ["INT", "TERM", "KILL"] {
        send(
            &mut ws,
            run("import time\nprint('ready')\ntime.sleep(60)\n"),
        )
        .await;
        assert_eq!(next(&mut ws).await["type"], "accepted");
        until_stdout(&mut ws, "ready\n").await;
        send(&mut ws, json!({"type": "signal", "signal": sig})).await;
        let got = until_exit(&mut ws).await;
        let rec = &got.last().unwrap().1["record"];
        assert_eq!(rec["status"], "runtime_error", "{sig}: {rec}");
        if sig == "INT" {
            let err = rec["run"]["stderr"].as_str().unwrap_or_default();
            assert!(err.ends_with("KeyboardInterrupt\n"), "{err}");
        } else {
            let number = if sig == "TERM" { 15 } else { 9 };
            assert_eq!(
                (rec["error"]["code"].as_str(), rec["run"]["signal"].as_i64()),
                (Some("killed_by_signal"), Some(number)),
                "{sig}: {rec}"
            );
        }
    }

    // In main mode the harness is the jail's init: INT reaches it (Python handles it).
    let main = "def main():\n    import time\n    print('ready')\n    time.sleep(60)\n";
    let mut req = program(main);
    req["mode"] = json!("main");
    send(&mut ws, json!({"type": "run", "request": req})).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_stdout(&mut ws, "ready\n").await;
    send(&mut ws, json!({"type": "signal", "signal": "INT"})).await;
    let got = until_exit(&mut ws).await;
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["error"]["code"], "exception", "{rec}");
    let err = rec["run"]["stderr"].as_str().unwrap_or_default();
    assert!(err.contains("KeyboardInterrupt"), "{err}");

    // At most MAX_SIGNALS (64) per run.
    let src = "import signal, time\nsignal.signal(signal.SIGUSR2, lambda *a: None)\nprint('ready')\ntime.sleep(60)\n";
    send(&mut ws, run(src)).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_stdout(&mut ws, "ready\n").await;
    for _ in 0..64 {
        send(&mut ws, json!({"type": "signal", "signal": "USR2"})).await;
    }
    send(&mut ws, json!({"type": "signal", "signal": "USR2"})).await;
    let reply = loop {
        let m = next(&mut ws).await;
        assert_ne!(m["type"], "exit", "{m}");
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], "too_many_signals", "{reply}");
    send(&mut ws, json!({"type": "cancel"})).await;
    let got = until_exit(&mut ws).await;
    assert_eq!(got.last().unwrap().1["record"]["status"], "cancelled");
}

/// The processes and pid namespaces of the run whose argv holds `marker`, once it runs (it
/// must be in an execbox cgroup).
async fn run_footprint(marker: &str) -> (Vec<ProcId>, Vec<String>) {
    let deadline = Instant::now() + PATIENCE;
    let procs = loop {
        let found = with_arg(marker);
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "no process with {marker}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut tree = Vec::new();
    let mut cgroups = Vec::new();
    let mut namespaces = Vec::new();
    for p in procs {
        assert!(
            jailed(p),
            "payload outside the execbox uid range: {}",
            describe(p)
        );
        tree.extend(proc_id(p));
        tree.extend(descendants(p));
        cgroups.extend(cgroups_of(p));
        namespaces.extend(pid_namespace(p));
    }
    assert!(!cgroups.is_empty(), "the run is in no execbox cgroup");
    (tree, namespaces)
}

/// What is left of a run while its server lives: its processes, and anything in its pid
/// namespaces (its cgroups may be kept for reuse: see `support::host::in_pid_namespaces`).
fn leftovers(tree: &[ProcId], marker: &str, namespaces: &[String]) -> Vec<String> {
    let mut left = still_alive(tree);
    left.extend(with_arg(marker).into_iter().map(describe));
    left.extend(in_pid_namespaces(namespaces));
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_disconnect_leave_nothing_behind() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let api = Api::new(&s).with_token(&token("leaver"));
    // A program with a child of its own, so the whole tree must go.
    let src = "import subprocess, sys, time\nsubprocess.Popen(['sleep', '300'])\nprint('up')\ntime.sleep(300)\n";
    for how in ["cancel", "disconnect"] {
        let mut ws = live(&s, "leaver").await;
        let marker = unique_marker(how);
        let mut req = program(src);
        req["args"] = json!([marker]);
        send(&mut ws, json!({"type": "run", "request": req})).await;
        let accepted = next(&mut ws).await;
        let id = accepted["id"].as_str().expect("an id").to_owned();
        until_stdout(&mut ws, "up\n").await;
        let (tree, namespaces) = run_footprint(&marker).await;
        if how == "cancel" {
            send(&mut ws, json!({"type": "cancel"})).await;
            let got = until_exit(&mut ws).await;
            assert_eq!(got.last().unwrap().1["record"]["status"], "cancelled");
        } else {
            drop(ws);
            let rec = api.wait_final(&format!("/v1/runs/{id}"), PATIENCE).await;
            assert_eq!(rec["status"], "cancelled", "{rec}");
        }
        eventually(
            &format!("the {how} run's processes and cgroups"),
            Duration::from_secs(5),
            || leftovers(&tree, &marker, &namespaces),
        )
        .await;
    }
}

/// Resident memory of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A TCP connection to the server whose receive buffer is as small as the kernel allows,
/// so a client that does not read stops the server's writes soon.
async fn small_window(s: &Server) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(s.public).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_grow_the_server() {
    use tokio::io::AsyncWriteExt;
    if !privileged() {
        return;
    }
    if support::skip_in_container("the server's memory (by its host pid)") {
        return;
    }
    // The bound documented in docs/live-protocol.md ("Memory"), for one live run with
    // output_limit_bytes = OUT: the run's log holds its output once, whoever reads it.
    const OUT: u64 = 8 << 20;
    const READERS: usize = 20;
    const BOUND: u64 = 16 * (1 << 20) + 6 * OUT + (READERS as u64 + 1) * (1 << 20);
    let s = Server::start(&[]);
    let user = "staller";
    let api = Api::new(&s).with_token(&token(user));
    // Warm up: one live run through a session that reads.
    let mut ws = live(&s, user).await;
    send(&mut ws, run("print('warm')\n")).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_exit(&mut ws).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(s.pid());

    // The owner reads `ready` and `accepted`, then never again.
    let stream = small_window(&s).await;
    let (mut owner, _) = tokio_tungstenite::client_async(request(&s, user, "execbox.v2"), stream)
        .await
        .expect("upgrade");
    assert_eq!(next(&mut owner).await["type"], "ready");
    // Almost OUT bytes of stdout, written as fast as the jail takes them.
    let src = format!(
        "import sys, time\ntime.sleep(1)\nline = 'x' * 1023 + '\\n'\nfor _ in range({}):\n    sys.stdout.write(line)\nsys.stdout.flush()\n",
        OUT / 1024 - 4
    );
    let req = json!({"type": "run", "request": {"language": "python",
                     "limits": {"output_limit_bytes": OUT}, "files": [{"content": src}]}});
    send(&mut owner, req).await;
    let id = next(&mut owner).await["id"].as_str().unwrap().to_owned();
    // And READERS event streams of the same run that never read either.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut c = small_window(&s).await;
        let head = format!(
            "GET /v1/runs/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token(user)
        );
        c.write_all(head.as_bytes()).await.unwrap();
        readers.push(c);
    }
    // Until the run is over, the server's resident memory at its highest.
    let path = format!("/v1/runs/{id}");
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        peak = peak.max(rss(s.pid()));
        let r = api.get(&path).await;
        if !["queued", "running"].contains(&r.json["status"].as_str().unwrap_or("")) {
            assert_eq!(r.json["status"], "ok", "{}", r.text);
            assert_eq!(
                r.json["run"]["stdout"].as_str().unwrap().len() as u64,
                (OUT / 1024 - 4) * 1024
            );
            break;
        }
        assert!(Instant::now() < deadline, "the run did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..25 {
        peak = peak.max(rss(s.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "server RSS {} MiB before, peak {} MiB: grew {} MiB with {READERS} stalled SSE readers and a \
         stalled WebSocket on {} MiB of output (bound {} MiB; a copy per reader would be {} MiB)",
        before >> 20,
        peak >> 20,
        grew >> 20,
        OUT >> 20,
        BOUND >> 20,
        ((READERS as u64 + 1) * OUT) >> 20
    );
    assert!(
        grew <= BOUND,
        "the server grew by {grew} bytes, over the bound {BOUND}"
    );
    drop(readers);
    drop(owner);
}

/// The `(id, event, data)` of each complete SSE event in `text`; the rest stays in `text`.
fn sse_take(text: &mut String) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while let Some(end) = text.find("\n\n") {
        let block: String = text.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data += v.trim_start();
            }
        }
        if !event.is_empty() {
            out.push((
                id,
                event,
                serde_json::from_str(&data).unwrap_or(Value::Null),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_stream_as_sse_and_resume_after_the_last_event_id() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let api = Api::new(&s).with_token(&token("sse"));
    let src = "import time\nfor i in range(6):\n    print(f'line {i}')\n    time.sleep(0.5)\n";
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "python", "wait": false, "files": [{"content": src}]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/runs/{id}/events");

    // Read until the third line, then go away.
    let mut resp = api
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut buf = String::new();
    let mut seen = Vec::new();
    let text_of = |events: &[(String, String, Value)]| -> String {
        events
            .iter()
            .filter(|(_, e, _)| e == "stdout")
            .map(|(_, _, d)| d["data"].as_str().unwrap_or_default())
            .collect()
    };
    while !text_of(&seen).contains("line 2\n") {
        let chunk = tokio::time::timeout(PATIENCE, resp.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended early: {seen:?} {buf:?}"));
        buf += &String::from_utf8_lossy(&chunk);
        seen.extend(sse_take(&mut buf));
    }
    drop(resp);
    assert_eq!(seen[0].1, "accepted");
    assert_eq!(seen[0].2["id"], id.as_str());
    assert!(
        !api.get(&format!("/v1/runs/{id}")).await.json["status"]
            .as_str()
            .unwrap()
            .eq("ok"),
        "the third line arrived only at the end"
    );
    let last = seen.last().unwrap().0.clone();

    // Resume: the events after the last one seen, to the end of the run.
    let resp = api
        .request(reqwest::Method::GET, &path)
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(PATIENCE, resp.text())
        .await
        .expect("the stream ends after exit")
        .unwrap();
    let mut text = text;
    let rest = sse_take(&mut text);
    let first: usize = rest[0].0.parse().unwrap();
    assert_eq!(first, last.parse::<usize>().unwrap() + 1);
    let exit = &rest.last().unwrap().2;
    assert_eq!(exit["type"], "exit");
    let all = text_of(&seen) + &text_of(&rest);
    assert_eq!(all, exit["record"]["run"]["stdout"].as_str().unwrap());
    assert_eq!(
        all,
        (0..6).map(|i| format!("line {i}\n")).collect::<String>()
    );

    // Another user sees nothing; a bad Last-Event-ID is a typed error.
    let other = Api::new(&s).with_token(&token("someone-else"));
    assert_eq!(other.get(&path).await.code(), "run_not_found");
    let bad = support::send(
        api.request(reqwest::Method::GET, &path)
            .header("last-event-id", "x"),
    )
    .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_last_event_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_execbox_v2_the_session_speaks_v1() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let (mut ws, resp) = tokio_tungstenite::connect_async(request(&s, "old", "execbox.v1"))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("execbox.v1")
    );
    assert_eq!(next(&mut ws).await["type"], "ready");
    send(&mut ws, run("print('v1')\n")).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    let fin = next(&mut ws).await;
    assert_eq!(fin["type"], "finished", "{fin}");
    assert_eq!(fin["record"]["run"]["stdout"], "v1\n");
    // v1 knows no stdin message.
    send(&mut ws, json!({"type": "stdin", "data": "x"})).await;
    assert_eq!(next(&mut ws).await["error"]["code"], "invalid_message");
}

/// The example client's interpreter (`make examples-env`), or a skip (outside CI) or a failure
/// (in CI) when it is missing.
fn examples_python() -> Option<PathBuf> {
    let p = std::env::var_os("EXECBOX_EXAMPLES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/execbox/examples/bin/python"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        !support::in_ci(),
        "{} is missing: `make examples-env` installs it",
        p.display()
    );
    support::report_skip(&format!(
        "{} is missing (run `make examples-env`)",
        p.display()
    ));
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_drives_an_interactive_program() {
    use tokio::io::AsyncWriteExt;
    if !privileged() {
        return;
    }
    let Some(python) = examples_python() else {
        return;
    };
    let s = Server::start(&[]);
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/live");
    let mut child = tokio::process::Command::new(python)
        .arg(examples.join("client.py"))
        .args(["--url", &format!("ws://{}/v1/ws", s.public)])
        .arg(examples.join("doubler.py"))
        .env("EXECBOX_TOKEN", token("example"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"21\n5\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the example client ended in time")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout, "> 42\n> 10\n> bye\n", "stderr: {stderr}");
    assert_eq!(stderr, "[ok, exit code 0]\n");
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_run_reports_both_stages_and_gets_stdin_sent_while_it_compiles() {
    if !privileged() {
        return;
    }
    // Only C (and the built-in Python): one smoke test more at start.
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../runtimes/c");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let s = Server::start(&["--runtimes-dir", dir.path().to_str().unwrap()]);
    let api = Api::new(&s).with_token(&token("compiler"));
    let offered = api.get("/v1/runtimes").await.json;
    if !offered.to_string().contains("\"c\"") {
        assert!(!support::in_ci(), "the C runtime is not offered: {offered}");
        support::report_skip("the C runtime is not offered here (gcc missing?)");
        return;
    }
    let mut ws = live(&s, "compiler").await;
    let c = "#include <stdio.h>\nint main(void) {\n  int x;\n  printf(\"n? \");\n  fflush(stdout);\n  if (scanf(\"%d\", &x) == 1) printf(\"%d\\n\", 3 * x);\n  return 0;\n}\n";
    send(
        &mut ws,
        json!({"type": "run", "request": {"language": "c", "files": [{"content": c}]}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    // Sent while the compiler runs: kept for the program.
    send(
        &mut ws,
        json!({"type": "stdin", "data": "7\n", "eof": true}),
    )
    .await;
    let got = until_exit(&mut ws).await;
    let stages: Vec<&str> = got
        .iter()
        .filter(|(_, m)| m["type"] == "stage")
        .map(|(_, m)| m["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["compile", "run"], "{got:?}");
    assert_eq!(stdout_of(&got), "n? 21\n");
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["status"], "ok", "{rec}");
    assert!(rec["compile"].is_object(), "{rec}");
}

/// The next messages are an `error` with `code`, then a close frame with `close` and `code`.
async fn expect_closed_with<S>(ws: &mut Ws<S>, code: &str, close: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let e = next(ws).await;
    assert_eq!(
        (e["type"].as_str(), e["error"]["code"].as_str()),
        (Some("error"), Some(code)),
        "{e}"
    );
    let c = next(ws).await;
    assert_eq!(c, json!({"type": "closed", "code": close, "reason": code}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_sessions_close_with_1001_on_shutdown_once_their_run_has_exited() {
    if !privileged() {
        return;
    }
    let mut s = Server::start(&[]);
    let mut idle = live(&s, "a").await;
    let mut busy = live(&s, "b").await;
    send(
        &mut busy,
        run("import time\ntime.sleep(1)\nprint('done')\n"),
    )
    .await;
    assert_eq!(next(&mut busy).await["type"], "accepted");
    s.signal(nix::sys::signal::Signal::SIGTERM);
    expect_closed_with(&mut idle, "shutting_down", 1001).await;
    // The run ends (finished, or cancelled when the server stops serving) and is reported
    // first.
    let got = until_exit(&mut busy).await;
    let status = &got.last().unwrap().1["record"]["status"];
    assert!(status == "ok" || status == "cancelled", "{got:?}");
    expect_closed_with(&mut busy, "shutting_down", 1001).await;
    assert!(
        s.exited_within(PATIENCE).await.is_some(),
        "the server did not exit"
    );
}

/// `/metrics`' value of `name` (0 when absent).
fn metric(s: &Server, name: &str) -> f64 {
    let text = support::http::raw_get(s.private, "/metrics").expect("GET /metrics");
    support::metric(&text, name, "").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_closed_once_its_run_is_over() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--ws-idle-secs", "1"]);
    let api = Api::new(&s).with_token(&token("stalled"));
    let stream = small_window(&s).await;
    let (mut ws, _) = tokio_tungstenite::client_async(request(&s, "stalled", "execbox.v2"), stream)
        .await
        .expect("upgrade");
    assert_eq!(next(&mut ws).await["type"], "ready");
    // More output than the socket buffers take, then the client stops reading.
    let src = "import sys\nline = 'y' * 1023 + '\\n'\nfor _ in range(8 * 1024 - 8):\n    sys.stdout.write(line)\n";
    let req = json!({"type": "run", "request": {"language": "python",
                     "limits": {"output_limit_bytes": 8 << 20}, "files": [{"content": src}]}});
    send(&mut ws, req).await;
    let id = next(&mut ws).await["id"].as_str().unwrap().to_owned();
    let rec = api.wait_final(&format!("/v1/runs/{id}"), PATIENCE).await;
    assert_eq!(rec["status"], "ok", "{}", rec["error"]);
    assert_eq!(metric(&s, "execbox_websockets_open"), 1.0);
    // Idle (1 s) once the run is over, then the writer's 5 s to flush: the socket is given up.
    let deadline = Instant::now() + PATIENCE;
    while metric(&s, "execbox_websockets_open") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled socket is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_sent_while_the_run_is_queued_reaches_it() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--max-running", "1"]);
    let api = Api::new(&s).with_token(&token("queuer"));
    // The one running place is taken.
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "python", "wait": false,
               "files": [{"content": "import time\ntime.sleep(30)\n"}]}),
        )
        .await;
    let blocker = format!("/v1/runs/{}", r.json["id"].as_str().unwrap());
    let deadline = Instant::now() + PATIENCE;
    while api.get(&blocker).await.json["status"] != "running" {
        assert!(Instant::now() < deadline, "the first run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = live(&s, "queuer").await;
    send(&mut ws, run("while True:\n    try:\n        print(int(input()) * 2)\n    except EOFError:\n        break\n")).await;
    let id = next(&mut ws).await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.get(&format!("/v1/runs/{id}")).await.json["status"],
        "queued"
    );
    send(&mut ws, json!({"type": "stdin", "data": "4\n"})).await;
    send(
        &mut ws,
        json!({"type": "stdin", "data": "5\n", "eof": true}),
    )
    .await;
    assert_eq!(api.delete(&blocker).await.status, 202);
    let got = until_exit(&mut ws).await;
    assert_eq!(stdout_of(&got), "8\n10\n");
    assert_eq!(got.last().unwrap().1["record"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_its_cap_ends_with_a_truncated_chunk() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    let mut ws = live(&s, "flooder").await;
    let src =
        "import sys\nprint('start', flush=True)\nwhile True:\n    sys.stdout.write('z' * 1000)\n";
    let mut req = program(src);
    req["limits"] = json!({"output_limit_bytes": 4096});
    send(&mut ws, json!({"type": "run", "request": req})).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    let got = until_exit(&mut ws).await;
    let out: Vec<&Value> = got
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m["type"] == "stdout")
        .collect();
    let last = out.last().expect("stdout chunks");
    assert_eq!(last["truncated"], true, "{got:?}");
    assert!(out[..out.len() - 1]
        .iter()
        .all(|m| m.get("truncated").is_none()));
    let text = stdout_of(&got);
    assert_eq!(text.len(), 4096);
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["status"], "output_limit", "{rec}");
    assert_eq!(rec["run"]["stdout"], text);
    assert_eq!(rec["run"]["truncated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_run_streams_and_takes_stdin_and_sigint() {
    if !privileged() {
        return;
    }
    // No cold pool: a main-mode run then takes a template's child (with cold jails pooled
    // too, the pool hands out whichever comes first).
    let s = Server::start(&["--pool", "0"]);
    // Until both templates are ready (with numpy and pandas, and bare).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = support::http::raw_get(s.private, "/metrics").unwrap_or_default();
        if support::metric(&text, "execbox_warm", "what=\"templates_ready\"").unwrap_or(0.0) >= 2.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no warm child prepared: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = live(&s, "warm").await;
    let main = "def main():\n    import time\n    name = input('name? ')\n    print('hi', name)\n    time.sleep(60)\n";
    let mut req = program(main);
    req["mode"] = json!("main");
    send(&mut ws, json!({"type": "run", "request": req})).await;
    assert_eq!(next(&mut ws).await["type"], "accepted");
    until_stdout(&mut ws, "name? ").await;
    send(&mut ws, json!({"type": "stdin", "data": "Ada\n"})).await;
    until_stdout(&mut ws, "hi Ada\n").await;
    send(&mut ws, json!({"type": "signal", "signal": "INT"})).await;
    let got = until_exit(&mut ws).await;
    let rec = &got.last().unwrap().1["record"];
    assert_eq!(rec["warm"], true, "not served warm: {rec}");
    assert_eq!(rec["error"]["code"], "exception", "{rec}");
    let err = rec["run"]["stderr"].as_str().unwrap_or_default();
    assert!(err.contains("KeyboardInterrupt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_run_longer_than_the_idle_timeout_still_reports_its_exit() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--ws-idle-secs", "1"]);
    let mut ws = live(&s, "quiet").await;
    for _ in 0..3 {
        // Silent for longer than the idle timeout, then over: exit comes, not idle_timeout.
        send(&mut ws, run("import time\ntime.sleep(1.5)\n")).await;
        assert_eq!(next(&mut ws).await["type"], "accepted");
        let got = until_exit(&mut ws).await;
        assert_eq!(got.last().unwrap().1["record"]["status"], "ok");
    }
    // Then, with nothing to do, the session is closed.
    expect_closed_with(&mut ws, "idle_timeout", 1000).await;
}

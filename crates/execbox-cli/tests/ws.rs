//! `/v1/ws` through the real server: authentication (headers or first message), the
//! pre-authentication bounds, caps on WebSockets and connections, `Origin`, token expiry, the
//! idle timeout and the rate quota on every message.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use execbox_server::auth::{mint, Claims};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::http::raw_get;
use support::tokens::{claims, now, token, SECRET, SEED_TOKEN};
use support::{privileged, status_of, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Longest any single expected event may take (generous: a loaded 2-core host).
const PATIENCE: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How an upgrade was refused: HTTP status and JSON body.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Value,
}

/// Open `/v1/ws` with the given extra headers.
async fn connect_with(s: &Server, headers: &[(&'static str, String)]) -> Result<Ws, Refused> {
    let mut req = format!("ws://{}/v1/ws", s.public)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(Refused {
            status: r.status().as_u16(),
            body: r
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        }),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Open `/v1/ws` with `user`'s token in `Sec-WebSocket-Protocol` (what a browser can do).
async fn connect_as(s: &Server, token: &str) -> Result<Ws, Refused> {
    connect_with(
        s,
        &[(
            "sec-websocket-protocol",
            format!("execbox.v1, bearer.{token}"),
        )],
    )
    .await
}

/// What the server did next.
#[derive(Debug, PartialEq)]
enum Got {
    Json(Value),
    Close(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

async fn next(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("nothing from the server in time");
        match m {
            Some(Ok(Message::Text(t))) => {
                return Got::Json(serde_json::from_str(t.as_str()).unwrap())
            }
            Some(Ok(Message::Close(Some(f)))) => {
                return Got::Close(f.code.into(), f.reason.as_str().to_owned())
            }
            Some(Ok(Message::Close(None))) | Some(Err(_)) | None => return Got::Gone,
            Some(Ok(_)) => {}
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Got::Json(v) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next message is an `error` with `code`, and then the server closes with `close`.
async fn expect_closed_with(ws: &mut Ws, code: &str, close: u16) {
    let e = next_json(ws).await;
    assert_eq!(
        (e["type"].as_str(), e["error"]["code"].as_str()),
        (Some("error"), Some(code)),
        "{e}"
    );
    assert_eq!(next(ws).await, Got::Close(close, code.to_owned()));
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn hello() -> Value {
    json!({"type": "run", "request": {"language": "python", "mode": "main",
           "files": [{"content": "def main():\n    print('ws')\n    return {'via': 'ws'}\n"}]}})
}

fn sleeper(secs: f64) -> Value {
    json!({"type": "run", "request": {"language": "python",
           "files": [{"content": format!("import time\ntime.sleep({secs})\n")}]}})
}

/// A metric's value from the private listener's `/metrics` (0 when absent).
fn metric(s: &Server, name: &str, labels: &str) -> f64 {
    let text = raw_get(s.private, "/metrics").expect("GET /metrics");
    support::metric(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_takes_the_token_in_the_subprotocol_or_the_first_message() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[]);
    // 1. Token in Sec-WebSocket-Protocol.
    let mut ws = connect_as(&s, &token("wsuser")).await.unwrap();
    let ready = next_json(&mut ws).await;
    assert_eq!(
        (ready["type"].as_str(), ready["idle_timeout_secs"].as_u64()),
        (Some("ready"), Some(60))
    );
    send(&mut ws, hello()).await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["type"], "finished", "{fin}");
    assert_eq!(fin["record"]["result"], json!({"via": "ws"}));
    assert_eq!(fin["record"]["run"]["stdout"], "ws\n");
    // A cancel kills the current run.
    send(&mut ws, sleeper(30.0)).await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    send(&mut ws, json!({"type": "cancel"})).await;
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["record"]["status"], "cancelled", "{fin}");
    // Malformed messages get typed errors and the session goes on.
    for (msg, code) in [
        (json!("not an object"), "invalid_message"),
        (json!({"type": "exec"}), "invalid_message"),
        (json!({"type": "cancel"}), "no_run"),
        (
            json!({"type": "auth", "token": "x"}),
            "already_authenticated",
        ),
        (
            json!({"type": "run", "request": {"language": "python", "files": [{"content": 1}]}}),
            "invalid_field",
        ),
        (
            json!({"type": "run", "request": {"language": "cobol", "files": [{"content": "1"}]}}),
            "unknown_language",
        ),
    ] {
        send(&mut ws, msg).await;
        assert_eq!(next_json(&mut ws).await["error"]["code"], code);
    }
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_json");

    // 2. Token in the first message.
    let mut ws = connect_with(&s, &[]).await.unwrap();
    send(&mut ws, json!({"type": "auth", "token": token("wsuser2")})).await;
    let ready = next_json(&mut ws).await;
    assert_eq!(
        (ready["type"].as_str(), ready["user_id"].as_str()),
        (Some("ready"), Some("wsuser2"))
    );
    send(&mut ws, hello()).await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    assert_eq!(next_json(&mut ws).await["record"]["status"], "ok");

    // 3. No token, or a bad one, runs nothing.
    let mut ws = connect_with(&s, &[]).await.unwrap();
    send(&mut ws, hello()).await;
    expect_closed_with(&mut ws, "missing_token", 1008).await;
    let mut ws = connect_with(&s, &[]).await.unwrap();
    send(
        &mut ws,
        json!({"type": "auth", "token": SEED_TOKEN.replace('A', "B")}),
    )
    .await;
    expect_closed_with(&mut ws, "invalid_token", 1008).await;
    let bad = mint(b"wrong", &claims("x")).unwrap();
    let refused = connect_as(&s, &bad).await.unwrap_err();
    assert_eq!(refused.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_or_late_first_message_is_refused_and_the_socket_closed() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--ws-auth-timeout-secs", "1", "--max-body-bytes", "65536"]);
    // Over 4 KiB before authentication: refused by its length, not parsed.
    let mut ws = connect_with(&s, &[]).await.unwrap();
    let padded = json!({"type": "auth", "token": "x".repeat(5000)});
    send(&mut ws, padded).await;
    expect_closed_with(&mut ws, "message_too_large", 1009).await;
    // Binary is no way around it.
    let mut ws = connect_with(&s, &[]).await.unwrap();
    ws.send(Message::Binary(vec![b'{'; 5000].into()))
        .await
        .unwrap();
    expect_closed_with(&mut ws, "message_too_large", 1009).await;

    // Nothing sent: closed after the auth timeout (1 s here; the bound is only generous).
    let mut ws = connect_with(&s, &[]).await.unwrap();
    expect_closed_with(&mut ws, "auth_timeout", 1008).await;

    // After authentication messages may be larger, up to --max-body-bytes.
    let mut ws = connect_as(&s, &token("big")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    let comment = format!("# {}\nprint('big')\n", "x".repeat(20_000));
    send(
        &mut ws,
        json!({"type": "run", "request": {"language": "python", "files": [{"content": comment}]}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    assert_eq!(next_json(&mut ws).await["record"]["run"]["stdout"], "big\n");
    send(
        &mut ws,
        json!({"type": "cancel", "pad": "x".repeat(70_000)}),
    )
    .await;
    expect_closed_with(&mut ws, "message_too_large", 1009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_are_capped_in_total_and_per_user() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--max-websockets", "3", "--max-websockets-per-user", "2"]);
    let alice = token("alice");
    let mut a1 = connect_as(&s, &alice).await.unwrap();
    let mut a2 = connect_as(&s, &alice).await.unwrap();
    assert_eq!(next_json(&mut a1).await["type"], "ready");
    assert_eq!(next_json(&mut a2).await["type"], "ready");
    let over = connect_as(&s, &alice).await.unwrap_err();
    assert_eq!(
        (over.status, over.body["error"]["code"].as_str()),
        (429, Some("too_many_websockets")),
        "{over:?}"
    );
    // Another user still gets one: the total is 3.
    let mut b1 = connect_as(&s, &token("bob")).await.unwrap();
    assert_eq!(next_json(&mut b1).await["type"], "ready");
    let full = connect_as(&s, &token("carol")).await.unwrap_err();
    assert_eq!(
        (full.status, full.body["error"]["code"].as_str()),
        (503, Some("too_many_websockets")),
        "{full:?}"
    );
    // A socket without a token counts against the total too.
    assert_eq!(connect_with(&s, &[]).await.unwrap_err().status, 503);
    assert_eq!(metric(&s, "execbox_websockets_open", ""), 3.0);
    assert!(
        metric(
            &s,
            "execbox_rejected_requests_total",
            "reason=\"too_many_websockets\""
        ) >= 3.0
    );

    // Closing one gives its place back (the server notices the close asynchronously).
    a1.close(None).await.unwrap();
    drop(a1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut a3 = loop {
        match connect_as(&s, &alice).await {
            Ok(ws) => break ws,
            Err(r) => assert!(
                tokio::time::Instant::now() < deadline,
                "place not given back: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next_json(&mut a3).await["type"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_checked_against_the_allow_list() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[
        "--allowed-origins",
        "https://app.example,http://localhost:3000",
    ]);
    let t = token("web");
    let auth = ("authorization", format!("Bearer {t}"));
    // No Origin: not a browser, allowed.
    let mut ws = connect_with(&s, std::slice::from_ref(&auth)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    for ok in ["https://app.example", "http://localhost:3000"] {
        let mut ws = connect_with(&s, &[auth.clone(), ("origin", ok.into())])
            .await
            .unwrap_or_else(|r| panic!("{ok}: {r:?}"));
        assert_eq!(next_json(&mut ws).await["type"], "ready");
    }
    for bad in [
        "https://evil.example".to_owned(),
        "http://app.example".to_owned(),
        "null".to_owned(),
        // With a list, the server's own origin is allowed only if listed.
        format!("http://{}", s.public),
    ] {
        let r = connect_with(&s, &[auth.clone(), ("origin", bad.clone())])
            .await
            .unwrap_err();
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (403, Some("origin_not_allowed")),
            "{bad}"
        );
    }
    // Refused before the token is even looked at.
    let r = connect_with(&s, &[("origin", "https://evil.example".into())])
        .await
        .unwrap_err();
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_but_not_while_a_run_is_active() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--ws-idle-secs", "2"]);
    let t = token("idler");
    // Default Origin rule: the server's own origin only.
    let own = format!("http://{}", s.public);
    let evil = connect_with(&s, &[("origin", "https://evil.example".into())])
        .await
        .unwrap_err();
    assert_eq!(evil.status, 403);
    let mut ws = connect_with(
        &s,
        &[
            ("origin", own),
            ("sec-websocket-protocol", format!("execbox.v1, bearer.{t}")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["idle_timeout_secs"], 2);
    // A run longer than the idle timeout keeps the session open.
    send(&mut ws, sleeper(3.5)).await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    let fin = next_json(&mut ws).await;
    assert_eq!(
        (fin["type"].as_str(), fin["record"]["status"].as_str()),
        (Some("finished"), Some("ok")),
        "{fin}"
    );
    // Then, with nothing to do, it is closed.
    expect_closed_with(&mut ws, "idle_timeout", 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_on_the_next_run() {
    if !privileged() {
        return;
    }
    // No leeway, so the moment of expiry is exact.
    let s = Server::start(&["--jwt-leeway-secs", "0"]);
    let exp = now() + 3;
    let short = Claims {
        exp,
        nbf: None,
        ..claims("brief")
    };
    let short = mint(SECRET.as_bytes(), &short).unwrap();
    let mut ws = connect_as(&s, &short).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    // Wait (on the wall clock the server also reads) until the token has expired.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(&mut ws, hello()).await;
    expect_closed_with(&mut ws, "token_expired", 1008).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_during_a_run_count_against_the_rate_quota() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--quota-rps", "1", "--quota-burst", "3"]);
    let before = metric(
        &s,
        "execbox_rejected_requests_total",
        "reason=\"rate_quota\"",
    );
    // The upgrade is request 1, the run request 2.
    let mut ws = connect_as(&s, &token("chatty")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send(&mut ws, sleeper(3.0)).await;
    assert_eq!(next_json(&mut ws).await["type"], "accepted");
    // While it runs: request 3 is answered (busy), the following ones are over the quota.
    let mut codes = Vec::new();
    for _ in 0..4 {
        send(&mut ws, hello()).await;
        let e = next_json(&mut ws).await;
        if e["error"]["code"] == "rate_quota" {
            assert!(e["retry_after"].as_u64().is_some(), "{e}");
        }
        codes.push(e["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        codes.iter().filter(|c| *c == "rate_quota").count() >= 2,
        "{codes:?}"
    );
    assert!(
        metric(
            &s,
            "execbox_rejected_requests_total",
            "reason=\"rate_quota\""
        ) >= before + 2.0
    );
    // The run itself carries on.
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["record"]["status"], "ok", "{fin}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_with_1001_on_shutdown_once_their_run_is_done() {
    if !privileged() {
        return;
    }
    let mut s = Server::start(&[]);
    // Not a WebSocket handshake: a JSON error like every other answer.
    let answer = raw_get(s.public, "/v1/ws").expect("GET /v1/ws");
    assert!(
        answer.starts_with("HTTP/1.1 4") && answer.contains("\"not_a_websocket\""),
        "{answer}"
    );

    let mut idle = connect_as(&s, &token("a")).await.unwrap();
    let mut busy = connect_as(&s, &token("b")).await.unwrap();
    assert_eq!(next_json(&mut idle).await["type"], "ready");
    assert_eq!(next_json(&mut busy).await["type"], "ready");
    send(&mut busy, sleeper(1.0)).await;
    assert_eq!(next_json(&mut busy).await["type"], "accepted");
    s.signal(Signal::SIGTERM);
    expect_closed_with(&mut idle, "shutting_down", 1001).await;
    // The run ends (within the shutdown grace, or cancelled after it) and is reported first.
    assert_eq!(next_json(&mut busy).await["type"], "finished");
    expect_closed_with(&mut busy, "shutting_down", 1001).await;
    assert!(
        s.exited_within(PATIENCE).await.is_some(),
        "the server did not exit"
    );
}

/// Send a keep-alive request on `c` and read its answer's status.
fn request_on(c: &mut TcpStream) -> std::io::Result<u16> {
    c.write_all(b"GET /no-such-page HTTP/1.1\r\nHost: x\r\n\r\n")?;
    read_status(c)
}

/// Read one response (headers and a Content-Length body) and return its status.
fn read_status(c: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

#[test]
fn the_connection_cap_holds_on_the_public_listener() {
    if !privileged() {
        return;
    }
    let s = Server::start(&["--max-connections", "2"]);
    let mut open: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.public).unwrap())
        .collect();
    for c in &mut open {
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        assert_eq!(request_on(c).unwrap(), 404);
    }
    // A third connection completes in the kernel's backlog but gets no service while two are
    // open: its request is not answered.
    let mut third = TcpStream::connect(s.public).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let unanswered = request_on(&mut third);
    assert!(
        matches!(&unanswered, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the third connection was served: {unanswered:?}"
    );
    assert_eq!(metric(&s, "execbox_connections_open", ""), 2.0);
    // The private listener is not capped.
    assert_eq!(status_of(s.private, "/healthz"), Some(204));
    // Closing one lets the waiting one in: its request is answered.
    drop(open.remove(0));
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(read_status(&mut third).unwrap(), 404);
    // The two still open keep being served.
    assert_eq!(request_on(&mut open[0]).unwrap(), 404);
}

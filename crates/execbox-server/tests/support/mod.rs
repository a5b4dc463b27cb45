//! The router in-process: an [`AppState`] over a [`FakeSandbox`], requests sent with
//! `tower::ServiceExt::oneshot`, answers read whole.

pub mod fake;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use execbox_proto::ErrorCode;
use execbox_server::auth::{mint, Claims};
use execbox_server::{private_app, public_app, AppState, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

pub use fake::{FakeSandbox, Script};

/// The tokens' secret.
pub const SECRET: &[u8] = b"router-test-secret";

/// A server with authentication, 2 running + 2 queued places, refusals without waiting.
pub fn config() -> ServerConfig {
    ServerConfig {
        jwt_secret: Some(SECRET.to_vec()),
        max_running: 2,
        max_queued: 2,
        queue_wait: Duration::ZERO,
        ..ServerConfig::default()
    }
}

/// A router over a fake sandbox.
pub struct TestApp {
    /// Its configuration.
    pub cfg: ServerConfig,
    /// Its sandbox.
    pub fake: Arc<FakeSandbox>,
    public: Router,
    private: Router,
}

impl TestApp {
    /// With [`config`].
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// With [`config`] changed by `edit`.
    pub fn with(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = config();
        edit(&mut cfg);
        let fake = Arc::new(FakeSandbox::default());
        let state = AppState::new(cfg.clone(), fake.clone()).expect("metrics registry");
        Self {
            public: public_app(state.clone()),
            private: private_app(state),
            cfg,
            fake,
        }
    }

    /// Send `req` to the public router.
    pub async fn call(&self, req: Request<Body>) -> Resp {
        Resp::read(self.public.clone().oneshot(req).await.expect("infallible")).await
    }

    /// Send `req` to the private router.
    pub async fn call_private(&self, req: Request<Body>) -> Resp {
        Resp::read(self.private.clone().oneshot(req).await.expect("infallible")).await
    }

    /// `POST path` with a JSON `body` as `user`.
    pub async fn post(&self, path: &str, user: &str, body: Value) -> Resp {
        self.call(req(Method::POST, path).user(user).json(&body))
            .await
    }

    /// `GET path` as `user`.
    pub async fn get(&self, path: &str, user: &str) -> Resp {
        self.call(req(Method::GET, path).user(user).empty()).await
    }

    /// `DELETE path` as `user`.
    pub async fn delete(&self, path: &str, user: &str) -> Resp {
        self.call(req(Method::DELETE, path).user(user).empty())
            .await
    }

    /// `POST /v1/runs` of `source` (and more of `extra`) as `user`.
    pub async fn run(&self, user: &str, source: &str, extra: Value) -> Resp {
        let mut body = serde_json::json!({"language": "python", "files": [{"content": source}]});
        if let (Some(b), Value::Object(more)) = (body.as_object_mut(), extra) {
            b.extend(more);
        }
        self.post("/v1/runs", user, body).await
    }
}

/// A request being built.
pub struct Req(axum::http::request::Builder);

/// Start a request.
pub fn req(method: Method, path: &str) -> Req {
    Req(Request::builder().method(method).uri(path))
}

impl Req {
    /// Add a header.
    pub fn header(self, name: &str, value: &str) -> Self {
        Self(self.0.header(name, value))
    }

    /// `Authorization: Bearer` with a valid token for `user`.
    pub fn user(self, user: &str) -> Self {
        self.bearer(&token(user))
    }

    /// `Authorization: Bearer token`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A JSON body.
    pub fn json(self, body: &Value) -> Request<Body> {
        self.body("application/json", body.to_string())
    }

    /// A body of `content_type`.
    pub fn body(self, content_type: &str, body: impl Into<Body>) -> Request<Body> {
        let r = self.0.header(header::CONTENT_TYPE, content_type);
        r.body(body.into()).expect("a valid request")
    }

    /// No body.
    pub fn empty(self) -> Request<Body> {
        self.0.body(Body::empty()).expect("a valid request")
    }
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Body as JSON (`Null` if it is not).
    pub json: Value,
}

impl Resp {
    async fn read(r: axum::response::Response) -> Self {
        let (parts, body) = r.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("a readable body");
        Self {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body,
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// Assert `r` is an error answer with `status` and `code`, and a message.
#[track_caller]
pub fn assert_error(r: &Resp, status: StatusCode, code: ErrorCode) {
    assert_eq!(
        (r.status, r.code()),
        (status, code.as_str()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let message = r.json["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "no message: {}", r.json);
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims of `user`, valid for an hour.
pub fn claims(user: &str) -> Claims {
    Claims {
        user_id: Some(user.to_owned()),
        sub: None,
        user_full_name: Some(format!("{user} tester")),
        user_email: None,
        jti: None,
        iat: Some(now()),
        nbf: None,
        exp: now() + 3600,
    }
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    mint(SECRET, &claims(user)).expect("mint")
}

impl TestApp {
    /// Serve the public router on a loopback port (for what needs a real connection: a
    /// WebSocket handshake).
    pub async fn serve(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let router = self.public.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// `GET path` as `user` until `done` holds of the JSON body (at most 5 s).
    pub async fn poll(&self, path: &str, user: &str, done: impl Fn(&Value) -> bool) -> Resp {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.get(path, user).await;
            if done(&r.json) || tokio::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A WebSocket handshake to `/v1/ws` on `addr` with `headers` added: the answer's status,
/// its head and body, and the connection (open when the status is 101).
pub async fn ws_handshake(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).await.expect("send handshake");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let (status, text) = loop {
        let n = s.read(&mut buf).await.expect("read answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            assert!(n > 0, "connection closed mid-answer: {text}");
            continue;
        };
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if body.len() >= length || n == 0 {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            break (status, text.clone());
        }
    };
    (status, text, s)
}

/// A multipart/form-data body of `parts` (`name`, file name, bytes): its content type and bytes.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "execbox-test-boundary";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let file = file.map_or(String::new(), |f| format!("; filename=\"{f}\""));
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// RFC 4648 base64url without padding (to write a token no library will sign: `alg: none`).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

//! Speaking HTTP to a [`Server`]: raw blocking requests for status lines and metrics, and
//! [`Api`], a reqwest client that sends JSON with a token and reads whole answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reqwest::multipart::Form;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};

use super::host::with_arg;
use super::server::Server;

/// The whole answer to a plain `GET path` (blocking, std only, at most 1 MiB).
pub fn raw_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.take(1 << 20).read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Status of a plain `GET path`.
pub fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    raw_get(addr, path)?.split_whitespace().nth(1)?.parse().ok()
}

/// Value of an unlabelled metric, or the sum of a labelled one's series matching `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
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

/// A reqwest client. reqwest is built without a bundled TLS crypto provider (ring is chosen
/// for the whole workspace: no C toolchain), so install it once before building any client.
pub fn client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
}

/// One answer: status, headers, body text and the body as JSON (`Null` when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an error answer (`""` otherwise).
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }
}

/// Send, read the whole answer, and check the header every answer must carry.
pub async fn send(rb: RequestBuilder) -> Resp {
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

/// A client for one server (never through a proxy: loopback only), optionally with a token.
#[derive(Debug, Clone)]
pub struct Api {
    c: Client,
    public: SocketAddr,
    private: SocketAddr,
    token: Option<String>,
}

impl Api {
    pub fn new(s: &Server) -> Api {
        let c = client()
            .no_proxy()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("http client");
        Api {
            c,
            public: s.public,
            private: s.private,
            token: None,
        }
    }

    /// The same client, sending `token` as a bearer token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client, sending no token.
    pub fn anonymous(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    /// `path` on the listener that serves it.
    pub fn url(&self, path: &str) -> String {
        let ops = ["/healthz", "/readyz", "/metrics"].contains(&path);
        let addr = if ops { self.private } else { self.public };
        format!("http://{addr}{path}")
    }

    /// A request to finish by hand (headers, raw bodies, multipart).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.to(method, self.url(path))
    }

    /// A request for `path` on the public listener, whatever the path.
    pub fn public(&self, method: Method, path: &str) -> RequestBuilder {
        self.to(method, format!("http://{}{path}", self.public))
    }

    fn to(&self, method: Method, url: String) -> RequestBuilder {
        let rb = self.c.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// `POST path` with `body` as `application/json` bytes, whatever they are.
    pub fn raw(&self, path: &str, body: &'static [u8]) -> RequestBuilder {
        self.request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn multipart(&self, path: &str, form: Form) -> RequestBuilder {
        self.request(Method::POST, path).multipart(form)
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        send(self.request(Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        send(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn execute(&self, script: &str) -> Resp {
        self.post("/execute", json!({ "script": script })).await
    }

    /// Poll a run record until its status is final.
    pub async fn wait_final(&self, path: &str, timeout: Duration) -> Value {
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
    pub async fn wait_running(&self, path: &str, marker: &str) -> Vec<u32> {
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

//! The multi-replica stack of `deploy/compose`: three replicas of the light image (each with
//! its own spawner and jails, started with the documented least privileges) sharing run state
//! and quotas through Redis, behind nginx terminating TLS, all in containers on a network of
//! the stack's own. One test walks through it, phase by phase, on one stack:
//!
//! 1. a run submitted to one replica is polled and cancelled through the others;
//! 2. two replicas enforce one user's concurrent-run quota together;
//! 3. the load balancer serves HTTPS with HTTP/2 (ALPN `h2`), runs through it, passes the
//!    WebSocket, and does not route the private endpoints;
//! 4. a replica killed with two runs running and one queued: all three end `internal_error`
//!    (read through another replica), neither stuck nor lost; the users' places lapse; the load
//!    balancer keeps serving;
//! 5. Redis stopped: the service answers 503 `state_unavailable` (and `/readyz` says why); a run
//!    under way finishes meanwhile and its replica still answers for it; Redis started again
//!    (empty): the service recovers by itself and that run's record reaches the other replicas.
//!
//! Needs the Docker engine, the images (`make stack-images`) and Compose v2
//! (`deploy/compose/compose.sh` finds or installs it), so it runs only with
//! `EXECBOX_STACK_TEST=1` (`make stack-test`, part of `make test`); otherwise it reports
//! `SKIPPED`. Every port is published on loopback; the stack is a compose project of its own
//! (`execbox-stack-<pid>`), taken down at the end, pass or fail (a test killed outright leaves
//! it: `docker ps --filter label=com.docker.compose.project=execbox-stack-<pid>`, then
//! `deploy/compose/compose.sh -p execbox-stack-<pid> down -v`).
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::docker::text;
use support::tokens::{token, SECRET};
use tokio_tungstenite::tungstenite::Message;

/// Longest any one wait of this test lasts (the host is shared: generous, never asserted on).
const PATIENCE: Duration = Duration::from_secs(120);
/// The lease the replicas run with: a dead replica's runs end after about this long.
const LEASE_SECS: &str = "4";
/// The LB's name in the certificate; resolved to the LB's loopback port by the clients.
const LB_HOST: &str = "execbox.test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn enabled() -> bool {
    if std::env::var("EXECBOX_STACK_TEST").as_deref() != Ok("1") {
        support::report_skip(
            "needs the Docker engine, the stack's images and Compose v2: run `make stack-test`",
        );
        return false;
    }
    support::privileged()
}

/// A compose project of the stack; taken down on drop.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    cert_pem: String,
    cert_der: Vec<u8>,
    _tls: tempfile::TempDir,
}

impl Stack {
    fn up() -> Stack {
        let tls = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec![LB_HOST.to_owned()]).unwrap();
        std::fs::write(tls.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(tls.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let env = vec![
            ("APP_JWT_SECRET", SECRET.to_owned()),
            (
                "REDIS_PASSWORD",
                format!("pw-{}", execbox_proto::new_run_id()),
            ),
            ("EXECBOX_LB_TLS_DIR", tls.path().display().to_string()),
            ("EXECBOX_LB_ADDR", "127.0.0.1".into()),
            ("EXECBOX_LB_PORT", "0".into()),
            ("EXECBOX_LEASE_SECS", LEASE_SECS.into()),
            ("EXECBOX_QUOTA_CONCURRENT", "1".into()),
            ("EXECBOX_IMAGE", var("EXECBOX_IMAGE", "execbox:light")),
            (
                "EXECBOX_LB_IMAGE",
                var("EXECBOX_LB_IMAGE", "execbox-lb:latest"),
            ),
            (
                "EXECBOX_REDIS_IMAGE",
                var("EXECBOX_REDIS_IMAGE", "execbox-redis:latest"),
            ),
        ];
        let stack = Stack {
            project: format!("execbox-stack-{}", std::process::id()),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            cert_pem: cert.cert.pem(),
            cert_der: cert.cert.der().to_vec(),
            _tls: tls,
        };
        let t = Instant::now();
        let out = stack.compose(&["up", "-d", "--wait", "--wait-timeout", "300"]);
        assert!(
            out.status.success(),
            "compose up: {}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            stack.logs()
        );
        eprintln!("stack up (3 replicas ready) in {:.1?}", t.elapsed());
        stack
    }

    fn compose(&self, args: &[&str]) -> Output {
        let dir = repo().join("deploy/compose");
        Command::new(dir.join("compose.sh"))
            .current_dir(repo())
            .args(["-p", &self.project])
            .args(["-f", dir.join("compose.yaml").to_str().unwrap()])
            .args(["-f", dir.join("compose.test.yaml").to_str().unwrap()])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run deploy/compose/compose.sh")
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]);
        text(&out.stdout)
    }

    /// The loopback address `service`'s container port `port` is published on.
    fn addr(&self, service: &str, port: &str) -> SocketAddr {
        let out = self.compose(&["port", service, port]);
        let s = text(&out.stdout);
        s.trim()
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .unwrap_or_else(|| panic!("compose port {service} {port}: {s}{}", text(&out.stderr)))
    }

    /// `http://` of a replica's public port.
    fn replica(&self, n: u8) -> String {
        format!("http://{}", self.addr(&format!("replica{n}"), "8080"))
    }

    /// `redis-cli` in the Redis container (diagnostics for failure messages).
    fn redis_cli(&self, args: &[&str]) -> String {
        let mut a = vec!["exec", "-T", "-e", "REDISCLI_AUTH", "redis", "redis-cli"];
        a.extend(args);
        let out = Command::new(repo().join("deploy/compose/compose.sh"))
            .current_dir(repo())
            .args(["-p", &self.project])
            .args([
                "-f",
                "deploy/compose/compose.yaml",
                "-f",
                "deploy/compose/compose.test.yaml",
            ])
            .args(&a)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "REDISCLI_AUTH",
                &self
                    .env
                    .iter()
                    .find(|(k, _)| k == "REDIS_PASSWORD")
                    .unwrap()
                    .1,
            )
            .output()
            .expect("compose exec redis");
        text(&out.stdout) + &text(&out.stderr)
    }

    fn docker(&self, verb: &str, service: &str) {
        let out = self.compose(&[verb, service]);
        assert!(
            out.status.success(),
            "compose {verb} {service}: {}",
            text(&out.stderr)
        );
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- stack logs (last lines)\n{}", self.logs());
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
    }
}

/// One answer.
#[derive(Debug)]
struct Got {
    status: u16,
    json: Value,
    version: reqwest::Version,
}

impl Got {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send(req: reqwest::RequestBuilder) -> Got {
    let r = req
        .timeout(PATIENCE)
        .send()
        .await
        .expect("request reached the stack");
    let (status, version) = (r.status().as_u16(), r.version());
    let body = r.text().await.unwrap_or_default();
    Got {
        status,
        version,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

fn sleeper(secs: u32) -> Value {
    json!({"language": "python", "wait": false, "limits": {"timeout_ms": 60_000},
           "files": [{"content": format!("import time\nprint('start', flush=True)\ntime.sleep({secs})\nprint('woke')\n")}]})
}

/// Poll `url` as `user` until `done` holds for the record; the record.
async fn poll(c: &reqwest::Client, url: &str, user: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let r = send(c.get(url).bearer_auth(token(user))).await;
        assert_eq!(r.status, 200, "GET {url}: {:?}", r.json);
        if done(&r.json) {
            return r.json;
        }
        assert!(t.elapsed() < PATIENCE, "{url} stayed {}", r.json);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_redis_behind_a_tls_load_balancer() {
    if !enabled() {
        return;
    }
    let started = Instant::now();
    let stack = Stack::up();
    let c = support::client().build().unwrap();
    let phases: [(&str, Duration); 5] = [
        ("across replicas", cross_replica(&stack, &c).await),
        ("shared quota", shared_quota(&stack, &c).await),
        ("load balancer", load_balancer(&stack).await),
        ("replica killed", replica_killed(&stack, &c).await),
        ("redis outage", redis_outage(&stack, &c).await),
    ];
    for (name, took) in phases {
        eprintln!("phase {name}: {took:.1?}");
    }
    drop(stack);
    eprintln!(
        "stack test in all (up, phases, down): {:.1?}",
        started.elapsed()
    );
}

/// Submit on replica 1; read through 2 and 3; cancel through 2; see it cancelled from 1.
async fn cross_replica(s: &Stack, c: &reqwest::Client) -> Duration {
    let t = Instant::now();
    let (r1, r2, r3) = (s.replica(1), s.replica(2), s.replica(3));
    // A finished run is readable everywhere.
    let hello =
        json!({"language": "python", "files": [{"content": "print('hello from a replica')"}]});
    let done = send(
        c.post(format!("{r1}/v1/runs"))
            .bearer_auth(token("ann"))
            .json(&hello),
    )
    .await;
    assert_eq!(
        (done.status, status(&done.json)),
        (200, "ok"),
        "{:?}",
        done.json
    );
    let id = done.json["id"].as_str().unwrap().to_owned();
    for r in [&r2, &r3] {
        let got = send(c.get(format!("{r}/v1/runs/{id}")).bearer_auth(token("ann"))).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json["run"]["stdout"], "hello from a replica\n");
        let other = send(c.get(format!("{r}/v1/runs/{id}")).bearer_auth(token("bob"))).await;
        assert_eq!(
            (other.status, other.code()),
            (404, "run_not_found"),
            "owner only"
        );
    }
    // A running one is cancelled through another replica than the one running it.
    let acc = send(
        c.post(format!("{r1}/v1/runs"))
            .bearer_auth(token("ann"))
            .json(&sleeper(50)),
    )
    .await;
    assert_eq!(acc.status, 202, "{:?}", acc.json);
    let id = acc.json["id"].as_str().unwrap().to_owned();
    let seen = send(
        c.get(format!("{r2}/v1/runs/{id}"))
            .bearer_auth(token("ann")),
    )
    .await;
    assert_eq!(seen.status, 200);
    assert!(
        ["queued", "running"].contains(&status(&seen.json)),
        "{:?}",
        seen.json
    );
    poll(c, &format!("{r3}/v1/runs/{id}"), "ann", |v| {
        status(v) == "running"
    })
    .await;
    let other = send(
        c.delete(format!("{r2}/v1/runs/{id}"))
            .bearer_auth(token("bob")),
    )
    .await;
    assert_eq!((other.status, other.code()), (404, "run_not_found"));
    let del = send(
        c.delete(format!("{r2}/v1/runs/{id}"))
            .bearer_auth(token("ann")),
    )
    .await;
    assert_eq!(del.status, 202, "{:?}", del.json);
    let end = poll(c, &format!("{r1}/v1/runs/{id}"), "ann", |v| {
        status(v) != "running"
    })
    .await;
    assert_eq!(status(&end), "cancelled", "{end}");
    assert_eq!(end["error"]["code"], "cancelled");
    assert!(!end["run"]["stdout"].as_str().unwrap_or("").contains("woke"));
    let via3 = send(
        c.get(format!("{r3}/v1/runs/{id}"))
            .bearer_auth(token("ann")),
    )
    .await;
    assert_eq!(status(&via3.json), "cancelled");
    t.elapsed()
}

/// One user (quota: one run at a time) with a run on replica 1 is refused on replica 2; once
/// it ends, replica 2 takes the next one.
async fn shared_quota(s: &Stack, c: &reqwest::Client) -> Duration {
    let t = Instant::now();
    let (r1, r2, r3) = (s.replica(1), s.replica(2), s.replica(3));
    let acc = send(
        c.post(format!("{r1}/v1/runs"))
            .bearer_auth(token("quinn"))
            .json(&sleeper(50)),
    )
    .await;
    assert_eq!(acc.status, 202, "{:?}", acc.json);
    let id = acc.json["id"].as_str().unwrap().to_owned();
    for r in [&r2, &r3] {
        let refused = send(
            c.post(format!("{r}/v1/runs"))
                .bearer_auth(token("quinn"))
                .json(&sleeper(1)),
        )
        .await;
        assert_eq!(
            (refused.status, refused.code()),
            (429, "concurrency_quota"),
            "{:?}",
            refused.json
        );
    }
    let other = send(
        c.post(format!("{r2}/v1/runs"))
            .bearer_auth(token("other"))
            .json(&sleeper(0)),
    )
    .await;
    assert_eq!(
        other.status, 202,
        "another user is not held back: {:?}",
        other.json
    );
    let del = send(
        c.delete(format!("{r3}/v1/runs/{id}"))
            .bearer_auth(token("quinn")),
    )
    .await;
    assert!(del.status == 202 || del.status == 200);
    poll(c, &format!("{r2}/v1/runs/{id}"), "quinn", |v| {
        status(v) == "cancelled"
    })
    .await;
    let next = send(
        c.post(format!("{r2}/v1/runs"))
            .bearer_auth(token("quinn"))
            .json(&sleeper(0)),
    )
    .await;
    assert_eq!(next.status, 202, "the place came back: {:?}", next.json);
    let nid = next.json["id"].as_str().unwrap().to_owned();
    poll(c, &format!("{r1}/v1/runs/{nid}"), "quinn", |v| {
        status(v) == "ok"
    })
    .await;
    t.elapsed()
}

fn lb_client(s: &Stack, lb: SocketAddr) -> reqwest::Client {
    support::client()
        .add_root_certificate(reqwest::Certificate::from_pem(s.cert_pem.as_bytes()).unwrap())
        .resolve(LB_HOST, lb)
        .build()
        .unwrap()
}

fn tls_config(s: &Stack, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(s.cert_der.clone()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// HTTPS with HTTP/2 chosen by ALPN; runs and the WebSocket through it; the private endpoints
/// not routed.
async fn load_balancer(s: &Stack) -> Duration {
    let t = Instant::now();
    let lb = s.addr("lb", "443");
    // The TLS handshake alone: the LB offers h2 by ALPN.
    let cfg = tls_config(s, &[b"h2", b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from(LB_HOST).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(lb).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .expect("TLS handshake with the LB");
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
    drop(tcp);

    let c = lb_client(s, lb);
    let base = format!("https://{LB_HOST}:{}", lb.port());
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = json!({"script": format!("def main():\n    return {{'n': {i}}}\n")});
        let r = send(
            c.post(format!("{base}/execute"))
                .bearer_auth(token("lbuser"))
                .json(&body),
        )
        .await;
        assert_eq!(r.version, reqwest::Version::HTTP_2, "HTTP/2 through the LB");
        assert_eq!(
            (r.status, &r.json["result"]),
            (200, &json!({"n": i})),
            "{:?}; lbuser's places in Redis: {}",
            r.json,
            s.redis_cli(&[
                "zrange",
                "execbox:quota:runs:lbuser",
                "0",
                "-1",
                "withscores"
            ])
        );
        // (another user: the stack's quota is one run at a time per user)
        let user = format!("lbasync{i}");
        let acc = send(
            c.post(format!("{base}/v1/runs"))
                .bearer_auth(token(&user))
                .json(&sleeper(0)),
        )
        .await;
        assert_eq!(acc.status, 202, "{:?}", acc.json);
        ids.push((user, acc.json["id"].as_str().unwrap().to_owned()));
    }
    for (user, id) in ids {
        poll(&c, &format!("{base}/v1/runs/{id}"), &user, |v| {
            status(v) == "ok"
        })
        .await;
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = send(c.get(format!("{base}{path}"))).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{path} is private"
        );
    }
    let unauth = send(c.get(format!("{base}/v1/user"))).await;
    assert_eq!((unauth.status, unauth.code()), (401, "missing_token"));

    // The WebSocket over TLS (HTTP/1.1: the upgrade), token in the subprotocol.
    let cfg = tls_config(s, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(lb).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(LB_HOST).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("wss://{LB_HOST}:{}/v1/ws", lb.port()),
    )
    .unwrap();
    // As a browser on the service's own page would: its Origin (a non-default port here).
    req.headers_mut().insert(
        "origin",
        format!("https://{LB_HOST}:{}", lb.port()).parse().unwrap(),
    );
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("execbox.v1, bearer.{}", token("wsuser"))
            .parse()
            .unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("WebSocket upgrade through the LB");
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    let run = json!({"type": "run", "request": {"language": "python", "mode": "main",
           "files": [{"content": "def main():\n    print('via lb')\n    return {'ws': True}\n"}]}});
    ws.send(Message::Text(run.to_string().into()))
        .await
        .unwrap();
    let t_ws = Instant::now();
    let finished = loop {
        assert!(t_ws.elapsed() < PATIENCE);
        let v = next_json(&mut ws).await;
        if v["type"] == "finished" {
            break v;
        }
    };
    assert_eq!(finished["record"]["status"], "ok", "{finished}");
    assert_eq!(finished["record"]["result"], json!({"ws": true}));
    let _ = ws.close(None).await;
    t.elapsed()
}

/// The next text message, as JSON.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the WebSocket ended: {other:?}"),
        }
    }
}

/// Kill the replica running a run: the run ends internal_error, read through another replica;
/// the LB keeps serving with the two left.
async fn replica_killed(s: &Stack, c: &reqwest::Client) -> Duration {
    let t = Instant::now();
    let (r1, r3) = (s.replica(1), s.replica(3));
    // Three users' runs on replica 3, which runs two at a time: two running, one queued.
    let users = ["kim", "kim2", "kim3"];
    let mut ids = Vec::new();
    for u in users {
        let acc = send(
            c.post(format!("{r3}/v1/runs"))
                .bearer_auth(token(u))
                .json(&sleeper(50)),
        )
        .await;
        assert_eq!(acc.status, 202, "{:?}", acc.json);
        ids.push(acc.json["id"].as_str().unwrap().to_owned());
    }
    poll(c, &format!("{r1}/v1/runs/{}", ids[0]), "kim", |v| {
        status(v) == "running"
    })
    .await;
    let before: Vec<String> = {
        let mut v = Vec::new();
        for (u, id) in users.iter().zip(&ids) {
            let r = send(c.get(format!("{r1}/v1/runs/{id}")).bearer_auth(token(u))).await;
            v.push(status(&r.json).to_owned());
        }
        v
    };
    s.docker("kill", "replica3");
    let killed = Instant::now();
    for (u, id) in users.iter().zip(&ids) {
        let end = poll(c, &format!("{r1}/v1/runs/{id}"), u, |v| {
            !["queued", "running"].contains(&status(v))
        })
        .await;
        assert_eq!(status(&end), "internal_error", "{end}");
        assert_eq!(end["error"]["code"], "internal_error");
        assert!(end["finished_at"].is_string());
    }
    eprintln!(
        "a killed replica's runs ({}) all ended internal_error {:.1?} after the kill (lease {LEASE_SECS} s)",
        before.join(", "),
        killed.elapsed()
    );
    // The user's place was the dead run's: it lapsed with the lease.
    let again = send(
        c.post(format!("{r1}/v1/runs"))
            .bearer_auth(token("kim"))
            .json(&sleeper(0)),
    )
    .await;
    assert_eq!(again.status, 202, "{:?}", again.json);
    // The LB skips the dead replica.
    let lb = s.addr("lb", "443");
    let lbc = lb_client(s, lb);
    for i in 0..6 {
        let body = json!({"script": format!("def main():\n    return {i}\n")});
        let r = send(
            lbc.post(format!("https://{LB_HOST}:{}/execute", lb.port()))
                .bearer_auth(token("lbuser2"))
                .json(&body),
        )
        .await;
        assert_eq!(
            (r.status, &r.json["result"]),
            (200, &json!(i)),
            "{:?}",
            r.json
        );
    }
    t.elapsed()
}

/// Stop Redis: 503 state_unavailable and /readyz not ready; start it: the replicas recover.
async fn redis_outage(s: &Stack, c: &reqwest::Client) -> Duration {
    let t = Instant::now();
    let (r1, r2) = (s.replica(1), s.replica(2));
    let private = s.addr("replica1", "9090");
    // A run under way when Redis goes: it finishes during the outage, and its record reaches
    // Redis once Redis is back (Redis restarts empty: the replica that ran it writes it again).
    let acc = send(
        c.post(format!("{r2}/v1/runs"))
            .bearer_auth(token("rita"))
            .json(&sleeper(3)),
    )
    .await;
    assert_eq!(acc.status, 202, "{:?}", acc.json);
    let under_way = acc.json["id"].as_str().unwrap().to_owned();
    s.docker("stop", "redis");
    let stopped = Instant::now();
    let hello = json!({"script": "def main():\n    return 'up'\n"});
    loop {
        let r = send(
            c.post(format!("{r1}/execute"))
                .bearer_auth(token("olga"))
                .json(&hello),
        )
        .await;
        if r.status == 503 {
            assert_eq!(r.code(), "state_unavailable", "{:?}", r.json);
            break;
        }
        assert!(
            stopped.elapsed() < PATIENCE,
            "still {} {:?}",
            r.status,
            r.json
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = send(
        c.post(format!("{r2}/v1/runs"))
            .bearer_auth(token("olga"))
            .json(&sleeper(0)),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (503, "state_unavailable"),
        "{:?}",
        r.json
    );
    let ready = send(c.get(format!("http://{private}/readyz"))).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json["shared_state"], "unreachable");

    // The run under way finishes meanwhile; the replica that ran it still answers for it.
    let finished = poll(c, &format!("{r2}/v1/runs/{under_way}"), "rita", |v| {
        status(v) == "ok"
    })
    .await;
    assert!(finished["finished_at"].is_string());

    s.docker("start", "redis");
    let restarted = Instant::now();
    loop {
        let r = send(
            c.post(format!("{r1}/execute"))
                .bearer_auth(token("olga"))
                .json(&hello),
        )
        .await;
        if r.status == 200 {
            assert_eq!(r.json["result"], "up");
            break;
        }
        assert_eq!(
            (r.status, r.code()),
            (503, "state_unavailable"),
            "{:?}",
            r.json
        );
        assert!(restarted.elapsed() < PATIENCE, "did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "recovered {:.1?} after Redis was started again",
        restarted.elapsed()
    );
    let r = send(
        c.post(format!("{r2}/v1/runs"))
            .bearer_auth(token("olga"))
            .json(&sleeper(0)),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    poll(c, &format!("{r1}/v1/runs/{id}"), "olga", |v| {
        status(v) == "ok"
    })
    .await;
    // (404 until the replica that ran it has written it into the emptied Redis again)
    let back = Instant::now();
    let done = loop {
        let r = send(
            c.get(format!("{r1}/v1/runs/{under_way}"))
                .bearer_auth(token("rita")),
        )
        .await;
        if r.status == 200 && status(&r.json) == "ok" {
            break r.json;
        }
        assert!(
            (r.status == 200 || r.code() == "run_not_found") && back.elapsed() < PATIENCE,
            "{} {:?}",
            r.status,
            r.json
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        done["run"]["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("woke"),
        "{done}"
    );
    let ready = send(c.get(format!("http://{private}/readyz"))).await;
    assert_eq!(
        (ready.status, &ready.json["shared_state"]),
        (200, &json!("up"))
    );
    t.elapsed()
}

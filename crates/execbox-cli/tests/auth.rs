//! Identity at the edge, through the real server: seed 000's token contract, token rejection,
//! run ownership, per-user quotas and fair share, the private listener, and TLS.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use execbox_server::auth::{mint, Claims};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::{privileged, status_of, Server};

/// Seed 000's sample token, signed with `sekret`.
const SEED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYmYiOjE1NTQ3NTU1NTUsImV4cCI6MjU1NDc1NTUwMCwiaWF0IjoxNTU0NzU1NTAwLCJqdGkiOiI5ZmRmMGE2Ni00YzllLTRlOTktODc4MC05YjdlOTNlMjFlMjciLCJ1c2VyX2lkIjoiMTA1YjM1MTgtNjQ2ZC00NjNlLWFkZGEtZDJiOTM5YzJkMDZkIiwidXNlcl9mdWxsX25hbWUiOiJCZXJ0cmFtIEdpbGZveWxlIiwidXNlcl9lbWFpbCI6Im51bGxAcGllZHBpcGVyLmNvbSJ9.-A8Gx18iTikKpedcxDlgcc7D8GMWFix0709Vfpbo1SI";
const SECRET: &str = "sekret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(user: &str) -> Claims {
    Claims {
        user_id: Some(user.into()),
        sub: None,
        user_full_name: None,
        user_email: None,
        jti: None,
        iat: Some(now()),
        nbf: Some(now()),
        exp: now() + 600,
    }
}

fn token(user: &str) -> String {
    mint(SECRET.as_bytes(), &claims(user)).unwrap()
}

fn b64url(data: &[u8]) -> String {
    // RFC 4648 base64url without padding (written out: a token with `alg: none` cannot be made
    // with a JWT library, which is the point).
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn server(args: &[&str]) -> Server {
    let mut s = Server::start(args, &[("APP_JWT_SECRET", SECRET)]);
    s.wait_ready();
    s
}

async fn get(
    c: &Client,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut rb = c.get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.json().await.unwrap_or(Value::Null))
}

async fn post(
    c: &Client,
    url: &str,
    token: &str,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = c
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.json().await.unwrap_or(Value::Null))
}

#[test]
fn serve_refuses_to_start_without_a_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execbox"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--private-listen",
            "127.0.0.1:0",
        ])
        .env_remove("APP_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("APP_JWT_SECRET") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_users_and_private_endpoints() {
    if !privileged() {
        return;
    }
    let s = server(&[]);
    let c = support::client().build().unwrap();
    let user_url = s.url("/v1/user");

    // Seed 000: the sample token against secret `sekret` gives the seed's claims.
    let (st, _, body) = get(&c, &user_url, Some(SEED_TOKEN)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"user_id": "105b3518-646d-463e-adda-d2b939c2d06d",
               "user_full_name": "Bertram Gilfoyle", "user_email": "null@piedpiper.com",
               "jti": "9fdf0a66-4c9e-4e99-8780-9b7e93e21e27",
               "iat": 1554755500, "nbf": 1554755555, "exp": 2554755500u64})
    );

    // Rejected tokens: 401 with WWW-Authenticate, whatever is wrong.
    let good = token("alice");
    let mut tampered = good.clone();
    let mid = tampered.find('.').unwrap() + 5;
    let flip = if &tampered[mid..=mid] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(mid..=mid, flip);
    let expired = mint(
        SECRET.as_bytes(),
        &Claims {
            exp: now() - 120,
            nbf: Some(now() - 600),
            ..claims("alice")
        },
    )
    .unwrap();
    let not_yet = mint(
        SECRET.as_bytes(),
        &Claims {
            nbf: Some(now() + 600),
            ..claims("alice")
        },
    )
    .unwrap();
    let wrong_secret = mint(b"not-the-secret", &claims("alice")).unwrap();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims("alice"),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let payload = serde_json::to_vec(&claims("alice")).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&payload)
    );
    let no_user = mint(
        SECRET.as_bytes(),
        &Claims {
            user_id: None,
            ..claims("x")
        },
    )
    .unwrap();
    for (what, tok) in [
        ("tampered", tampered.as_str()),
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("wrongly signed", &wrong_secret),
        ("HS512", &hs512),
        ("alg none", &alg_none),
        ("no user", &no_user),
        ("garbage", "a.b.c"),
    ] {
        let (st, h, body) = get(&c, &user_url, Some(tok)).await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "{what} token accepted: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
        let challenge = h
            .get("www-authenticate")
            .expect("WWW-Authenticate")
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    let (st, h, body) = get(&c, &user_url, None).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_token"))
    );
    assert!(h.contains_key("www-authenticate"));
    // Every run endpoint is behind the token.
    let r = c
        .post(s.url("/execute"))
        .json(&json!({"script": "def main(): return 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for path in ["/v1/runtimes", "/status/x", "/v1/runs/x"] {
        assert_eq!(
            get(&c, &s.url(path), None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }

    // A valid token runs code.
    let (st, _, body) = post(
        &c,
        &s.url("/execute"),
        &good,
        json!({"script": "def main():\n    return {'ok': 1}\n"}),
    )
    .await;
    assert_eq!(
        (st, &body),
        (StatusCode::OK, &json!({"result": {"ok": 1}, "stdout": ""}))
    );

    // A run belongs to its user: bob can neither see nor cancel alice's run.
    let bob = token("bob");
    let (st, _, acc) = post(&c, &s.url("/v1/runs"), &good,
        json!({"language": "python", "wait": false, "files": [{"content": "import time\ntime.sleep(2)\n"}]})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{acc}");
    let id = acc["id"].as_str().unwrap().to_owned();
    for path in [format!("/v1/runs/{id}"), format!("/status/{id}")] {
        let (st, _, body) = get(&c, &s.url(&path), Some(&bob)).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("run_not_found")),
            "{path}"
        );
        assert_eq!(
            get(&c, &s.url(&path), Some(&good)).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let r = c
        .delete(s.url(&format!("/v1/runs/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, _, rec) = get(&c, &s.url(&format!("/v1/runs/{id}")), Some(&good)).await;
    assert_ne!(
        rec["status"], "cancelled",
        "bob's DELETE must not cancel alice's run"
    );
    let r = c
        .delete(s.url(&format!("/v1/runs/{id}")))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // Private endpoints live on the private listener only.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = get(&c, &s.url(path), Some(&good)).await.0;
        assert_eq!(public, StatusCode::NOT_FOUND, "{path} is served publicly");
    }
    assert_eq!(status_of(s.private, "/healthz"), Some(204));
    assert_eq!(status_of(s.private, "/readyz"), Some(200));
    assert_eq!(status_of(s.private, "/metrics"), Some(200));
    // The API description needs no token.
    assert_eq!(
        get(&c, &s.url("/openapi.json"), None).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_429_with_retry_after_and_ratelimit_headers() {
    if !privileged() {
        return;
    }
    let s = server(&[
        "--quota-rps",
        "1",
        "--quota-burst",
        "3",
        "--quota-concurrent",
        "1",
    ]);
    let c = support::client().build().unwrap();
    let carol = token("carol");
    // Request rate: the burst passes, the next is refused.
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..6 {
        let (st, h, body) = get(&c, &s.url("/v1/runtimes"), Some(&carol)).await;
        statuses.push(st.as_u16());
        if st == StatusCode::TOO_MANY_REQUESTS {
            last = Some((h, body));
        }
    }
    assert!(statuses[..3].iter().all(|&s| s == 200), "{statuses:?}");
    let (h, body) = last.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert_eq!(body["error"]["code"], "rate_quota");
    for name in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(h.contains_key(name), "{name} missing: {h:?}");
    }
    // Another user is not affected by carol's rate.
    assert_eq!(
        get(&c, &s.url("/v1/runtimes"), Some(&token("dave")))
            .await
            .0,
        StatusCode::OK
    );

    // Concurrent runs: one at a time per user.
    let erin = token("erin");
    let long = json!({"language": "python", "wait": false, "files": [{"content": "import time\ntime.sleep(3)\n"}]});
    let (st, _, acc) = post(&c, &s.url("/v1/runs"), &erin, long.clone()).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{acc}");
    let (st, h, body) = post(&c, &s.url("/v1/runs"), &erin, long).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("concurrency_quota"))
    );
    assert!(h.contains_key("retry-after") && h.contains_key("ratelimit-reset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_user_on_default_quotas_gets_everything_the_server_admits() {
    if !privileged() {
        return;
    }
    // Default admission: CPU count running, 8 x CPU count queued. One user sends as many
    // concurrent /execute requests as the server has places (at most 32): the per-user
    // defaults must not refuse any of them (they once allowed 4 at once and 20 per second).
    let s = server(&[]);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n = (cpus * 9).min(32);
    let c = support::client().build().unwrap();
    let t = token("lone");
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url, t) = (c.clone(), s.url("/execute"), t.clone());
            tokio::spawn(async move {
                post(
                    &c,
                    &url,
                    &t,
                    json!({"script": "def main():\n    return {'ok': 1}\n"}),
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (st, _, body) = task.await.unwrap();
        if st != StatusCode::OK {
            eprintln!("{st}: {body}");
        }
        statuses.push(st.as_u16());
    }
    assert!(
        statuses.iter().all(|&st| st == 200),
        "{n} concurrent requests of one user: {statuses:?}"
    );
    // And well beyond the old 20 requests per second.
    for _ in 0..60 {
        assert_eq!(
            get(&c, &s.url("/v1/runtimes"), Some(&t)).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_flooding_does_not_hold_up_another() {
    if !privileged() {
        return;
    }
    let s = server(&[
        "--max-running",
        "2",
        "--quota-concurrent",
        "1",
        "--quota-rps",
        "100",
        "--quota-burst",
        "100",
    ]);
    let c = support::client().build().unwrap();
    let (flooder, other) = (token("flooder"), token("other"));
    let sleeper = json!({"language": "python", "wait": false, "files": [{"content": "import time\ntime.sleep(4)\n"}]});
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (st, _, body) = post(&c, &s.url("/v1/runs"), &flooder, sleeper.clone()).await;
        match st {
            StatusCode::ACCEPTED => accepted.push(body["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        (accepted.len(), refused),
        (1, 5),
        "the flood stops at the user's quota"
    );
    // The other user's run is admitted at once and finishes while the flooder's run still runs:
    // the flood did not take the shared slots or queue.
    let (st, _, rec) = post(
        &c,
        &s.url("/v1/runs"),
        &other,
        json!({"language": "python", "files": [{"content": "print('fair')"}]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{rec}");
    assert_eq!(
        (rec["status"].as_str(), rec["run"]["stdout"].as_str()),
        (Some("ok"), Some("fair\n"))
    );
    let (_, _, flood_rec) = get(
        &c,
        &s.url(&format!("/v1/runs/{}", accepted[0])),
        Some(&flooder),
    )
    .await;
    assert!(
        ["queued", "running"].contains(&flood_rec["status"].as_str().unwrap()),
        "the flooder's 4 s run should still be going: {flood_rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_and_execute_over_https() {
    if !privileged() {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = server(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = support::client()
        .add_root_certificate(ca)
        .resolve("localhost", s.public)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/execute", s.public.port());
    let r = c
        .post(&url)
        .bearer_auth(token("tls-user"))
        .json(&json!({"script": "def main():\n    return {'over': 'tls'}\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick HTTP/2"
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"result": {"over": "tls"}, "stdout": ""})
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert_ne!(status_of(s.public, "/openapi.json"), Some(200));
    // An HTTP/1.1-only client works too.
    let c11 = support::client()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", s.public)
        .http1_only()
        .build()
        .unwrap();
    let r = c11
        .get(format!(
            "https://localhost:{}/openapi.json",
            s.public.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status()),
        (reqwest::Version::HTTP_11, StatusCode::OK)
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    if !privileged() {
        return;
    }
    use std::io::{Read, Write};
    let s = server(&[]);
    let mut slow = std::net::TcpStream::connect(s.public).unwrap();
    slow.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Other clients are served meanwhile.
    assert_eq!(status_of(s.public, "/openapi.json"), Some(200));
    // The header-read timeout closes the slow connection (bounded wait, not a timing claim).
    slow.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = slow
        .read(&mut buf)
        .expect("closed, not timed out on our side");
    assert_eq!(
        n,
        0,
        "expected EOF, got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_fair_between_users_with_default_quotas() {
    if !privileged() {
        return;
    }
    // One execution slot; the flooder keeps it busy and queues more (no per-user cap by default).
    // Its runs last 4 s so that every request below arrives while the first one runs, even on
    // a host loaded by the rest of the suite.
    let s = server(&["--max-running", "1"]);
    let c = support::client().build().unwrap();
    let (flooder, other) = (token("flooder"), token("patient"));
    let sleeper = json!({"language": "python", "wait": false,
                         "files": [{"content": "import time\ntime.sleep(4)\n"}]});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (st, _, body) = post(&c, &s.url("/v1/runs"), &flooder, sleeper.clone()).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // The other user's run queues behind the running one but ahead of the flooder's queue.
    let (st, _, rec) = post(
        &c,
        &s.url("/v1/runs"),
        &other,
        json!({"language": "python", "files": [{"content": "print('my turn')"}]}),
    )
    .await;
    assert_eq!(
        (st, rec["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{rec}"
    );
    let (_, _, last) = get(&c, &s.url(&format!("/v1/runs/{}", ids[2])), Some(&flooder)).await;
    assert_eq!(
        last["status"], "queued",
        "the flooder's last run must still wait: {last}"
    );
    let (_, _, second) = get(&c, &s.url(&format!("/v1/runs/{}", ids[1])), Some(&flooder)).await;
    assert_ne!(
        second["status"], "ok",
        "the other user was served before the flooder's 2nd run: {second}"
    );
}

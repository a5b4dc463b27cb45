//! Identity at the edge, through the real server: seed 000's token contract, token rejection,
//! run ownership, per-user quotas and fair share, the private listener, and TLS.

mod support;

use execbox_server::auth::{mint, Claims};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::tokens::{claims, now, token, SECRET, SEED_TOKEN};
use support::{privileged, status_of, Api, Server};

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

#[test]
fn serve_refuses_to_start_without_a_secret() {
    let out = support::server::serve_command()
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
    let s = Server::start(&[]);
    let anon = Api::new(&s);

    // Seed 000: the sample token against secret `sekret` gives the seed's claims.
    let r = anon.with_token(SEED_TOKEN).get("/v1/user").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
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
        let r = anon.with_token(tok).get("/v1/user").await;
        assert_eq!(r.status, 401, "{what} token accepted: {}", r.text);
        assert_eq!(r.code(), "invalid_token", "{what}: {}", r.text);
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    let r = anon.get("/v1/user").await;
    assert_eq!((r.status, r.code()), (401, "missing_token"));
    assert!(r.header("www-authenticate").is_some());
    // Every run endpoint is behind the token.
    let r = anon
        .post("/execute", json!({"script": "def main(): return 1"}))
        .await;
    assert_eq!(r.status, 401);
    for path in ["/v1/runtimes", "/status/x", "/v1/runs/x"] {
        assert_eq!(anon.get(path).await.status, 401, "{path}");
    }

    // A valid token runs code.
    let alice = anon.with_token(&good);
    let r = alice.execute("def main():\n    return {'ok': 1}\n").await;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"result": {"ok": 1}, "stdout": ""}))
    );

    // A run belongs to its user: bob can neither see nor cancel alice's run.
    let bob = anon.with_token(&token("bob"));
    let acc = alice.post("/v1/runs", sleeper(2)).await;
    assert_eq!(acc.status, 202, "{}", acc.text);
    let id = acc.json["id"].as_str().unwrap().to_owned();
    for path in [format!("/v1/runs/{id}"), format!("/status/{id}")] {
        let r = bob.get(&path).await;
        assert_eq!((r.status, r.code()), (404, "run_not_found"), "{path}");
        assert_eq!(alice.get(&path).await.status, 200, "{path}");
    }
    let path = format!("/v1/runs/{id}");
    assert_eq!(bob.delete(&path).await.status, 404);
    let rec = alice.get(&path).await.json;
    assert_ne!(
        rec["status"], "cancelled",
        "bob's DELETE must not cancel alice's run"
    );
    let r = alice.delete(&path).await;
    assert!(StatusCode::from_u16(r.status).unwrap().is_success());

    // Private endpoints live on the private listener only.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = support::send(alice.public(Method::GET, path)).await;
        assert_eq!(public.status, 404, "{path} is served publicly");
    }
    assert_eq!(status_of(s.private, "/healthz"), Some(204));
    assert_eq!(status_of(s.private, "/readyz"), Some(200));
    assert_eq!(status_of(s.private, "/metrics"), Some(200));
    // The API description needs no token.
    assert_eq!(anon.get("/openapi.json").await.status, 200);
}

/// A `/v1/runs` body for a run that sleeps `secs` and is not waited for.
fn sleeper(secs: u32) -> Value {
    json!({"language": "python", "wait": false,
           "files": [{"content": format!("import time\ntime.sleep({secs})\n")}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_429_with_retry_after_and_ratelimit_headers() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[
        "--quota-rps",
        "1",
        "--quota-burst",
        "3",
        "--quota-concurrent",
        "1",
    ]);
    let api = Api::new(&s);
    let carol = api.with_token(&token("carol"));
    // Request rate: the burst passes, the next is refused.
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..6 {
        let r = carol.get("/v1/runtimes").await;
        statuses.push(r.status);
        if r.status == 429 {
            last = Some(r);
        }
    }
    assert!(statuses[..3].iter().all(|&s| s == 200), "{statuses:?}");
    let r = last.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert_eq!(r.code(), "rate_quota");
    for name in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(r.header(name).is_some(), "{name} missing: {:?}", r.headers);
    }
    // Another user is not affected by carol's rate.
    let dave = api.with_token(&token("dave"));
    assert_eq!(dave.get("/v1/runtimes").await.status, 200);

    // Concurrent runs: one at a time per user.
    let erin = api.with_token(&token("erin"));
    let acc = erin.post("/v1/runs", sleeper(3)).await;
    assert_eq!(acc.status, 202, "{}", acc.text);
    let r = erin.post("/v1/runs", sleeper(3)).await;
    assert_eq!((r.status, r.code()), (429, "concurrency_quota"));
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-reset").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_user_on_default_quotas_gets_everything_the_server_admits() {
    if !privileged() {
        return;
    }
    // Default admission: CPU count running, 8 x CPU count queued. One user sends as many
    // concurrent /execute requests as the server has places (at most 32): the per-user
    // defaults must not refuse any of them (they once allowed 4 at once and 20 per second).
    let s = Server::start(&[]);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n = (cpus * 9).min(32);
    let lone = Api::new(&s).with_token(&token("lone"));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let lone = lone.clone();
            tokio::spawn(async move { lone.execute("def main():\n    return {'ok': 1}\n").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        if r.status != 200 {
            eprintln!("{}: {}", r.status, r.text);
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|&st| st == 200),
        "{n} concurrent requests of one user: {statuses:?}"
    );
    // And well beyond the old 20 requests per second.
    for _ in 0..60 {
        assert_eq!(lone.get("/v1/runtimes").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_flooding_does_not_hold_up_another() {
    if !privileged() {
        return;
    }
    let s = Server::start(&[
        "--max-running",
        "2",
        "--quota-concurrent",
        "1",
        "--quota-rps",
        "100",
        "--quota-burst",
        "100",
    ]);
    let api = Api::new(&s);
    let (flooder, other) = (
        api.with_token(&token("flooder")),
        api.with_token(&token("other")),
    );
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let r = flooder.post("/v1/runs", sleeper(4)).await;
        match r.status {
            202 => accepted.push(r.json["id"].as_str().unwrap().to_owned()),
            429 => refused += 1,
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(
        (accepted.len(), refused),
        (1, 5),
        "the flood stops at the user's quota"
    );
    // The other user's run is admitted at once and finishes while the flooder's run still runs:
    // the flood did not take the shared slots or queue.
    let rec = other
        .post(
            "/v1/runs",
            json!({"language": "python", "files": [{"content": "print('fair')"}]}),
        )
        .await;
    assert_eq!(rec.status, 200, "{}", rec.text);
    assert_eq!(
        (
            rec.json["status"].as_str(),
            rec.json["run"]["stdout"].as_str()
        ),
        (Some("ok"), Some("fair\n"))
    );
    let flood_rec = flooder.get(&format!("/v1/runs/{}", accepted[0])).await.json;
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
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = Server::start(&[
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
    let s = Server::start(&[]);
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
    let s = Server::start(&["--max-running", "1"]);
    let api = Api::new(&s);
    let (flooder, other) = (
        api.with_token(&token("flooder")),
        api.with_token(&token("patient")),
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = flooder.post("/v1/runs", sleeper(4)).await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    // The other user's run queues behind the running one but ahead of the flooder's queue.
    let rec = other
        .post(
            "/v1/runs",
            json!({"language": "python", "files": [{"content": "print('my turn')"}]}),
        )
        .await;
    assert_eq!(
        (rec.status, rec.json["status"].as_str()),
        (200, Some("ok")),
        "{}",
        rec.text
    );
    let last = flooder.get(&format!("/v1/runs/{}", ids[2])).await.json;
    assert_eq!(
        last["status"], "queued",
        "the flooder's last run must still wait: {last}"
    );
    let second = flooder.get(&format!("/v1/runs/{}", ids[1])).await.json;
    assert_ne!(
        second["status"], "ok",
        "the other user was served before the flooder's 2nd run: {second}"
    );
}

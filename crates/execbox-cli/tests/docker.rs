//! The container image under `docker run`: the light image (`make image`) started with the
//! privileges documented in `docs/security.md` ("In a container") serves `/execute` with
//! authentication, health on the private port, stops cleanly on `docker stop`; started without
//! them it exits at once naming what is missing, and serves degraded only when told to.
//!
//! Needs the Docker engine and the image, so it runs only with `EXECBOX_DOCKER_TEST=1`
//! (`make docker-test`, which `make image` precedes and `make test` calls); otherwise it
//! reports `SKIPPED` on stderr. Ports are published on loopback only. The image is
//! `EXECBOX_DOCKER_IMAGE` (default `execbox:light`). The full image (`make image-full`) is
//! tested when `EXECBOX_DOCKER_FULL_IMAGE` names it (`make docker-test-full`): every language
//! of `runtimes/` offered, C and JavaScript run through the container.
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::docker::{documented_flags, text};

const SECRET: &str = "docker-test-secret";

fn enabled() -> Option<String> {
    if std::env::var("EXECBOX_DOCKER_TEST").as_deref() != Ok("1") {
        support::report_skip("needs the Docker engine and `make image`: run `make docker-test`");
        return None;
    }
    if !support::privileged() {
        return None;
    }
    Some(std::env::var("EXECBOX_DOCKER_IMAGE").unwrap_or_else(|_| "execbox:light".into()))
}

fn docker(args: &[&str]) -> Output {
    support::docker::docker(args)
}

/// A container this test started; removed (forcibly) on drop.
struct Container {
    id: String,
}

impl Container {
    /// `docker run -d` with `flags`, then the image and `cmd` (the entrypoint is execbox).
    fn run(image: &str, flags: &[String], cmd: &[&str]) -> Container {
        let mut args: Vec<&str> = vec!["run", "-d", "--label", support::docker::LABEL];
        args.extend(flags.iter().map(String::as_str));
        args.push(image);
        args.extend(cmd);
        let out = docker(&args);
        assert!(out.status.success(), "docker run: {}", text(&out.stderr));
        Container {
            id: text(&out.stdout).trim().to_owned(),
        }
    }

    fn inspect(&self, format: &str) -> String {
        text(&docker(&["inspect", "-f", format, &self.id]).stdout)
            .trim()
            .to_owned()
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.id]);
        text(&out.stdout) + &text(&out.stderr)
    }

    /// The loopback address a container port is published on.
    fn addr(&self, port: &str) -> std::net::SocketAddr {
        support::docker::published_addr(&self.id, port)
    }

    /// Wait until the container stops by itself; its exit code.
    fn wait_exit(&self, timeout: Duration) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return self.inspect("{{.State.ExitCode}}").parse().ok();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn wait_ready(&self, private: std::net::SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while support::status_of(private, "/readyz") != Some(200) {
            assert!(self.running(), "the container exited:\n{}", self.logs());
            assert!(Instant::now() < deadline, "not ready:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Processes in the container that are zombies (`State: Z`), by name.
    fn zombies(&self) -> Vec<String> {
        let out = docker(&[
            "exec",
            &self.id,
            "sh",
            "-c",
            "for s in /proc/[0-9]*/status; do grep -q '^State:.*Z' $s 2>/dev/null && \
             head -1 $s; done; true",
        ]);
        text(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- container log ----\n{}\n----", self.logs());
        }
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

fn token() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_execbox"))
        .args(["token", "--user-id", "docker-test"])
        .env("APP_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn published(extra: &[&str]) -> Vec<String> {
    let mut f = documented_flags();
    f.extend(
        [
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::9090",
            "-e",
            &format!("APP_JWT_SECRET={SECRET}"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_image_serves_with_the_documented_privileges_and_stops_cleanly() {
    let Some(image) = enabled() else { return };
    // One place and no queue, so the 429 needs one slow run; a small body cap for the 413.
    let c = Container::run(
        &image,
        &published(&[]),
        &[
            "serve",
            "--max-running",
            "1",
            "--max-queued",
            "0",
            "--queue-wait",
            "0",
            "--max-body-bytes",
            "65536",
            "--shutdown-grace-secs",
            "10",
        ],
    );
    let (public, private) = (c.addr("8080/tcp"), c.addr("9090/tcp"));
    c.wait_ready(private);
    assert_eq!(support::status_of(private, "/healthz"), Some(204));
    let ready: Value = reqwest_json(&format!("http://{private}/readyz")).await;
    assert_eq!(ready["missing_layers"], json!([]), "{ready}");

    let http = support::client().build().unwrap();
    let execute = format!("http://{public}/execute");
    let auth = format!("Bearer {}", token());

    // 401 without a token.
    let r = http
        .post(&execute)
        .json(&json!({"script": "def main():\n    return 1\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));

    // Seed 004's contract, and pandas inside the jail.
    let r = http
        .post(&execute)
        .header("authorization", &auth)
        .json(&json!({"script": "def main():\n    print('hi')\n    return {'ok': 1}\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"result": {"ok": 1}, "stdout": "hi\n"})
    );
    let r = http
        .post(&execute)
        .header("authorization", &auth)
        .json(
            &json!({"script": "import numpy as np, pandas as pd\ndef main():\n    \
                      return {'n': int(pd.Series(np.arange(4)).sum())}\n"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], json!({"n": 6}));

    // No main() is the script's fault: 422 with its code.
    let r = http
        .post(&execute)
        .header("authorization", &auth)
        .json(&json!({"script": "x = 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "no_main");

    // 413 over --max-body-bytes.
    let big = "#".repeat(100 * 1024);
    let r = http
        .post(&execute)
        .header("authorization", &auth)
        .json(&json!({ "script": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // 429 when the one place is taken (an asynchronous run that sleeps) and nothing may wait.
    let r = http
        .post(format!("http://{public}/run-json/?wait=false"))
        .header("authorization", &auth)
        .json(&json!({"code": "import time\ntime.sleep(4)\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .post(&execute)
            .header("authorization", &auth)
            .json(&json!({"script": "def main():\n    return 1\n"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
        // The sleeping run may not have taken its place yet.
        assert!(Instant::now() < deadline, "never 429: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A timeout kills the run's whole jail; nothing is left as a zombie when execbox is PID 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Value = http
            .get(format!("http://{public}{status_url}"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["status"] != "queued" && r["status"] != "running" {
            assert_eq!(r["status"], "ok", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "the sleeping run never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(&execute)
        .header("authorization", &auth)
        .json(&json!({"script": "import os\ndef main():\n    \
        for _ in range(5):\n        if os.fork() == 0:\n            \
        while True: pass\n    while True: pass\n",
        }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    let top = text(&docker(&["exec", &c.id, "cat", "/proc/1/comm"]).stdout);
    assert_eq!(top.trim(), "execbox", "execbox is the container's PID 1");
    assert_eq!(
        c.zombies(),
        Vec::<String>::new(),
        "zombies in the container"
    );

    // Docker's HEALTHCHECK (on /readyz) reports healthy.
    let deadline = Instant::now() + Duration::from_secs(90);
    while c.inspect("{{.State.Health.Status}}") != "healthy" {
        assert!(
            Instant::now() < deadline,
            "health: {}",
            c.inspect("{{json .State.Health}}")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // docker stop: SIGTERM to PID 1, drained, exit code 0 well within the grace period.
    let started = Instant::now();
    let out = docker(&["stop", "-t", "30", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "docker stop took {:?}: SIGTERM was not handled",
        started.elapsed()
    );
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(c.logs().contains("stopped"), "{}", c.logs());
}

async fn reqwest_json(url: &str) -> Value {
    support::client()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[test]
fn without_the_privileges_the_container_exits_at_once_naming_what_is_missing() {
    let Some(image) = enabled() else { return };
    let secret = format!("APP_JWT_SECRET={SECRET}");

    // Docker's defaults: no capability to build the jail with, Docker's seccomp profile.
    let c = Container::run(&image, &["-e".into(), secret.clone()], &[]);
    let code = c.wait_exit(Duration::from_secs(60));
    let logs = c.logs();
    assert_eq!(code, Some(1), "{logs}");
    for needle in [
        "this host cannot run execbox",
        "missing isolation layers",
        "  namespaces: ",
        "  cgroups: ",
        "  mount_setattr: ",
        "--cgroupns private",
    ] {
        assert!(logs.contains(needle), "{needle:?} not in:\n{logs}");
    }
    assert!(!logs.contains("listening"), "{logs}");

    // The documented capabilities under Docker's default seccomp profile, which refuses
    // pivot_root: the required mount layer is missing.
    let mut flags = documented_flags();
    let i = flags.iter().position(|f| f == "--security-opt").unwrap();
    flags.drain(i..i + 2);
    flags.extend(["-e".into(), secret.clone()]);
    let c = Container::run(&image, &flags, &[]);
    let code = c.wait_exit(Duration::from_secs(60));
    let logs = c.logs();
    assert_eq!(code, Some(1), "{logs}");
    for needle in [
        "this host cannot run execbox",
        "  mount_setattr: ",
        "pivot_root",
    ] {
        assert!(logs.contains(needle), "{needle:?} not in:\n{logs}");
    }

    // The documented flags but the host's cgroup namespace (the default on a cgroup v1 host):
    // the cgroups stay read-only, an essential layer: refused unless degraded is accepted.
    let mut flags = documented_flags();
    let i = flags.iter().position(|f| f == "--cgroupns").unwrap();
    flags[i + 1] = "host".into();
    flags.extend(["-e".into(), secret]);
    let c = Container::run(&image, &flags, &[]);
    let code = c.wait_exit(Duration::from_secs(60));
    let logs = c.logs();
    assert_eq!(code, Some(1), "{logs}");
    for needle in [
        "only degraded isolation",
        "  cgroups: ",
        "EXECBOX_ALLOW_DEGRADED=1",
    ] {
        assert!(logs.contains(needle), "{needle:?} not in:\n{logs}");
    }
    assert!(!logs.contains("  namespaces: "), "{logs}");

    // Accepted explicitly: it serves, and says degraded where it matters.
    flags.extend(
        ["-e", "EXECBOX_ALLOW_DEGRADED=1", "-p", "127.0.0.1::9090"]
            .iter()
            .map(|s| s.to_string()),
    );
    let c = Container::run(&image, &flags, &[]);
    let private = c.addr("9090/tcp");
    c.wait_ready(private);
    let logs = c.logs();
    assert!(logs.contains("serving DEGRADED"), "{logs}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ready = rt.block_on(reqwest_json(&format!("http://{private}/readyz")));
    assert_eq!(ready["missing_layers"], json!(["cgroups"]), "{ready}");
}

/// The `language` of every manifest under the repository's `runtimes/`.
fn shipped_languages() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../runtimes");
    let mut langs = Vec::new();
    for lang in std::fs::read_dir(root).unwrap().flatten() {
        for flavour in std::fs::read_dir(lang.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(m) = std::fs::read_to_string(flavour.path().join("manifest.toml")) else {
                continue;
            };
            let language = m
                .lines()
                .find_map(|l| l.strip_prefix("language = "))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("{}: no language", flavour.path().display()));
            langs.push(language);
        }
    }
    langs.sort();
    langs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_image_offers_every_language() {
    if enabled().is_none() {
        return;
    }
    let Some(image) = std::env::var("EXECBOX_DOCKER_FULL_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        support::report_skip("needs `make image-full`: run `make docker-test-full`");
        return;
    };
    // The image's own runtimes directory, as `docker run` gives it: each runtime is
    // smoke-tested through the jail before the server is ready.
    let t0 = Instant::now();
    let s = support::Server::start_container(
        &image,
        &[],
        support::Options {
            default_runtimes: true,
            ..support::Options::default()
        },
    );
    eprintln!("{image} ready in {:.1} s", t0.elapsed().as_secs_f64());
    let api = support::Api::new(&s).with_token(&support::tokens::token("polyglot"));

    let list = api.get("/v1/runtimes").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let mut offered: Vec<String> = list
        .json
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["language"].as_str().unwrap_or_default().to_owned())
        .collect();
    offered.sort();
    assert_eq!(
        offered,
        shipped_languages(),
        "every runtime package (every version) is offered:\n{}\n{}",
        list.text,
        s.log_tail(40)
    );

    for (language, src) in [
        (
            "c",
            "#include <stdio.h>\nint main(void){puts(\"hello from c\");return 0;}",
        ),
        ("javascript", "console.log('hello from ' + 'javascript')"),
    ] {
        let r = api
            .post(
                "/v1/runs",
                json!({"language": language, "files": [{"content": src}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{language}: {}", r.text);
        assert_eq!(r.json["status"], "ok", "{language}: {}", r.text);
        assert_eq!(
            r.json["run"]["stdout"],
            format!("hello from {language}\n"),
            "{}",
            r.text
        );
    }
}

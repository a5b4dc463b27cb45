//! The warm path through the real server and jail: runs served by a template's children are
//! isolated from each other as cold runs are, leave nothing for the next run, and templates are
//! recycled and restarted as configured. (The hostile corpus also runs on the warm path: see
//! `hostile.rs`.)
//!
//! Needs root (the jail); a non-root run reports `SKIPPED` on stderr.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::host::leftovers;
use support::{metric, privileged, Api, Server};

/// A main-mode Python run; its record.
async fn run_main(api: &Api, source: &str) -> Value {
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "python", "mode": "main", "files": [{"name": "main.py", "content": source}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// The `execbox_warm{what=...}` gauge.
async fn warm_metric(api: &Api, what: &str) -> f64 {
    let text = api.get("/metrics").await.text;
    metric(&text, "execbox_warm", &format!("what=\"{what}\"")).unwrap_or(-1.0)
}

/// One server at a time: the leftover check at the end of a test must see only its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn started(args: &[&str]) -> Option<(Server, Api)> {
    if !privileged() {
        return None;
    }
    let s = Server::start(args);
    s.wait_warm(Duration::from_secs(120), 2.0);
    let api = Api::new(&s).with_token(&support::tokens::token("warm"));
    Some((s, api))
}

/// Processes running the template program (templates and their children, which are forks).
fn templates() -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|a| a.starts_with(b"# execbox warm template for Python"))
        {
            found.push(pid);
        }
    }
    found
}

fn assert_warm_ok(rec: &Value) {
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(
        rec["warm"], true,
        "the run did not take the warm path: {rec}"
    );
}

/// What one run changes in the interpreter and the jail, the next run from the same template
/// must not see: monkeypatched numpy, module globals, caches, the working directory, files in
/// /tmp and /work, the environment, numpy's random state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_run_leaves_nothing_for_the_next() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some((_s, api)) = started(&[]) else {
        return;
    };
    let dirty = r#"
import os, sys, functools, numpy as np, pandas as pd
def main():
    np.sum = lambda *a, **k: "patched"
    pd.DataFrame.__execbox_mark = "dirty"
    sys.modules["json"].execbox_mark = "dirty"
    functools.execbox_cache = {"k": "dirty"}
    os.environ["EXECBOX_MARK"] = "dirty"
    open("/tmp/leftover", "w").write("dirty")
    open("/work/leftover", "w").write("dirty")
    os.chdir("/tmp")
    return {"rand": float(np.random.rand()), "patched": np.sum([1, 2])}
"#;
    let check = r#"
import os, sys, functools, json, numpy as np, pandas as pd
def main():
    return {
        "sum": int(np.sum([1, 2])),
        "mark": hasattr(pd.DataFrame, "__execbox_mark") or hasattr(json, "execbox_mark"),
        "cache": hasattr(functools, "execbox_cache"),
        "env": "EXECBOX_MARK" in os.environ,
        "tmp": os.listdir("/tmp"),
        "work": sorted(os.listdir("/work")),
        "cwd": os.getcwd(),
        "rand": float(np.random.rand()),
    }
"#;
    let a = run_main(&api, dirty).await;
    assert_warm_ok(&a);
    assert_eq!(a["result"]["patched"], "patched", "{a}");
    // Several checks, so that some come from children prepared before and after the dirty run.
    let mut rands = vec![a["result"]["rand"].clone()];
    for _ in 0..4 {
        let b = run_main(&api, check).await;
        assert_warm_ok(&b);
        let r = &b["result"];
        assert_eq!(r["sum"], 3, "numpy's patch survived: {b}");
        assert_eq!(r["mark"], false, "a module global survived: {b}");
        assert_eq!(r["cache"], false, "a module attribute survived: {b}");
        assert_eq!(r["env"], false, "an environment variable survived: {b}");
        assert_eq!(r["tmp"], json!([]), "/tmp is not fresh: {b}");
        assert_eq!(r["work"], json!(["main.py"]), "/work is not fresh: {b}");
        assert_eq!(r["cwd"], "/work", "{b}");
        rands.push(r["rand"].clone());
    }
    rands.sort_by(|x, y| x.as_f64().partial_cmp(&y.as_f64()).unwrap());
    rands.dedup();
    assert_eq!(
        rands.len(),
        5,
        "numpy's random state is shared between runs: {rands:?}"
    );
}

/// Two runs forked from one template at the same time cannot find each other: no shared
/// process, file, abstract socket, loopback port or SysV IPC, different host uids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_warm_runs_cannot_meet() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some((_s, api)) = started(&[]) else {
        return;
    };
    // A plants everything B looks for, then waits and reports whether anything reached it.
    let planter = r#"
import os, socket, time, ctypes
def main():
    libc = ctypes.CDLL(None, use_errno=True)
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); a.bind("\0execbox-warm-meet"); a.listen(1)
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", 45678)); t.listen(1)
    shm = libc.shmget(0x5eed, 4096, 0o1666)
    open("/tmp/planted", "w").write("a")
    a.settimeout(0.1); t.settimeout(0.1)
    hits = []
    end = time.time() + 4
    while time.time() < end:
        for s in (a, t):
            try:
                s.accept(); hits.append(s.family)
            except OSError:
                pass
    return {"shm": shm, "hits": len(hits), "uid": int(open("/proc/self/uid_map").read().split()[1])}
"#;
    let seeker = r#"
import os, socket, time, ctypes, signal
def main():
    time.sleep(1)
    libc = ctypes.CDLL(None, use_errno=True)
    found = []
    for addr, fam in (("\0execbox-warm-meet", socket.AF_UNIX), (("127.0.0.1", 45678), socket.AF_INET)):
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(0.5)
        try:
            s.connect(addr); found.append(str(addr))
        except OSError:
            pass
    if libc.shmget(0x5eed, 0, 0) >= 0:
        found.append("shm")
    if os.path.exists("/tmp/planted"):
        found.append("file")
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in range(2, 200):
        try:
            os.kill(pid, 0); found.append("pid %d" % pid)
        except OSError:
            pass
    return {"found": found, "pids": pids, "uid": int(open("/proc/self/uid_map").read().split()[1])}
"#;
    let (a, b) = tokio::join!(run_main(&api, planter), run_main(&api, seeker));
    assert_warm_ok(&a);
    assert_warm_ok(&b);
    assert!(
        a["result"]["shm"].as_i64().unwrap_or(-1) >= 0,
        "the planter made no shm: {a}"
    );
    assert_eq!(a["result"]["hits"], 0, "something reached the planter: {a}");
    assert_eq!(
        b["result"]["found"],
        json!([]),
        "the seeker found the planter: {b}"
    );
    assert_eq!(b["result"]["pids"], json!([1]), "{b}");
    assert_ne!(
        a["result"]["uid"], b["result"]["uid"],
        "concurrent runs share a host uid"
    );
}

/// A template is replaced after `--warm-max-runs` children, restarted when it dies, and the
/// runs go on (cold while no template is ready); once the server stops nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_recycled_and_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some((s, api)) = started(&["--warm-max-runs", "3", "--pool", "2"]) else {
        return;
    };
    let hello = "def main():\n    return 1\n";
    for _ in 0..10 {
        let r = run_main(&api, hello).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while warm_metric(&api, "recycles").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no template was recycled after 10 runs with --warm-max-runs 3"
        );
        run_main(&api, hello).await;
    }
    // Kill every template (processes whose argv is the template program): runs still succeed
    // and a template comes back.
    let killed = templates();
    assert!(!killed.is_empty(), "no template process found");
    for pid in &killed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..4 {
        let r = run_main(&api, hello).await;
        assert_eq!(
            r["status"], "ok",
            "a run failed after the template was killed: {r}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = run_main(&api, hello).await;
        if r["warm"] == true && warm_metric(&api, "restarts").await >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no template came back after the kill: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spawner = support::host::spawner_of(s.pid()).expect("the server's spawner");
    drop(s);
    // What this server's spawner left: jailed processes no live spawner owns (its templates,
    // their children, its runs) and cgroups named after it. (Other servers on a shared host
    // are not this test's business.)
    let ours = || {
        let mine = format!("/j{spawner}-");
        let mut left = support::host::orphan_jails();
        left.extend(leftovers().into_iter().filter(|l| l.contains(&mine)));
        left
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = ours();
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = ours();
    }
    assert!(
        left.is_empty(),
        "left behind after the server stopped: {left:?}"
    );
}

/// `--warm false` runs everything cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_false_runs_cold() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !privileged() {
        return;
    }
    let s = Server::start(&["--warm", "false"]);
    let api = Api::new(&s).with_token(&support::tokens::token("cold"));
    let r = run_main(&api, "def main():\n    return 2\n").await;
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r.get("warm").is_none(), "a cold run says warm: {r}");
    assert_eq!(warm_metric(&api, "templates_ready").await, 0.0);
}

/// Runs cancelled while the warm children they wait for are still being prepared (the pool
/// has too few of their kind) leave nothing stuck: each such child is torn down at once and
/// the template reports its exit. Before, the spawner waited up to 5 s per child, frozen for
/// every other run, for a report that could not come (the child waited for its payload on a
/// pipe the spawner still held), then gave the uid slot up for lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cancelled_while_their_child_is_prepared_leave_nothing_stuck() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A small pool and room for every run at once: most of the pandas runs below need a
    // child prepared on demand.
    let Some((s, api)) = started(&["--pool", "4", "--max-running", "12"]) else {
        return;
    };
    let pandas = json!({"language": "python", "mode": "main", "wait": false, "files": [
        {"name": "main.py", "content": "import pandas\ndef main():\n    return 1\n"}]});
    for _ in 0..3 {
        let mut ids = Vec::new();
        for _ in 0..12 {
            let r = api.post("/v1/runs", pandas.clone()).await;
            assert_eq!(r.status, 202, "{}", r.text);
            ids.push(r.json["id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            let r = api.delete(&format!("/v1/runs/{id}")).await;
            assert!(r.status < 300, "cancel {id}: {} {}", r.status, r.text);
        }
    }
    // Every later run still goes through, warm.
    for _ in 0..4 {
        assert_warm_ok(&run_main(&api, "import pandas\ndef main():\n    return 2\n").await);
    }
    let log = s.log_tail(100_000);
    assert!(
        !log.contains("no exit report from the template") && !log.contains("teardown of jail"),
        "a cancelled child was not torn down cleanly:\n{}",
        s.log_tail(60)
    );
}

/// Run cgroups are reused on cgroup v1 (security.md 2.4): a run that the OOM killer ended
/// leaves its cgroup, with the kernel's `oom_kill` count at 1, to a later run. None of the
/// later runs may be blamed for it, and each must get the whole memory limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_cgroup_carries_no_oom_kill_or_charge_to_the_next_run() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some((_s, api)) = started(&["--pool", "4"]) else {
        return;
    };
    let bomb = json!({"language": "python", "mode": "main", "limits": {"memory_mb": 64},
        "files": [{"name": "main.py", "content":
            "def main():\n    b = []\n    while True:\n        b.append(bytearray(8 << 20))\n"}]});
    // Fails on purpose: a run that exits non-zero in a cgroup whose `oom_kill` count rose
    // would be judged `memory_limit`; this one must be a plain runtime error.
    let fill = json!({"language": "python", "mode": "main", "limits": {"memory_mb": 64},
        "files": [{"name": "main.py", "content":
            "def main():\n    b = bytearray(40 << 20)\n    b[::4096] = b'x' * len(b[::4096])\n    raise ValueError(len(b))\n"}]});
    for round in 0..3 {
        let r = api.post("/v1/runs", bomb.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.json["run"]["limit"], "memory",
            "round {round}: {}",
            r.text
        );
        // More runs than the pool holds, so the bomb's cgroup comes back to one of them.
        for _ in 0..8 {
            let r = api.post("/v1/runs", fill.clone()).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(
                (r.json["status"].as_str(), &r.json["run"]["limit"]),
                (Some("runtime_error"), &Value::Null),
                "round {round}: a run after an OOM kill: {}",
                r.text
            );
            let stderr = r.json["run"]["stderr"].as_str().unwrap_or_default();
            assert!(
                stderr.contains(&format!("ValueError: {}", 40 << 20)),
                "round {round}: it did not get its 40 MiB: {}",
                r.text
            );
        }
    }
}

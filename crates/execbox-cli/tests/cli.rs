//! End-to-end tests of `execbox run` and `execbox check` through the real jail.
//!
//! They need root (uid maps, cgroups, mounts). Outside CI a non-root run skips with a message;
//! with `CI=true` a missing capability is a failure.
mod support;

use support::privileged;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Script {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn script(src: &str) -> Script {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.py");
    std::fs::write(&path, src).unwrap();
    Script { _dir: dir, path }
}

fn execbox(args: &[&str], script: &Path, envs: &[(&str, &str)]) -> Output {
    // Flags go before the file; anything from `--` on goes after it.
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let mut c = Command::new(env!("CARGO_BIN_EXE_execbox"));
    c.arg("run")
        .args(&args[..split])
        .arg(script)
        .args(&args[split..]);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Run and parse the record; panics with the whole output if no record came back.
fn run(src: &str, args: &[&str]) -> Value {
    let s = script(src);
    let out = execbox(args, &s.path, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "execbox failed: {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a record ({e}): {text}"))
}

macro_rules! assert_status {
    ($rec:expr, $status:expr) => {
        assert_eq!(
            $rec["status"],
            $status,
            "unexpected status; record:\n{}",
            serde_json::to_string_pretty(&$rec).unwrap()
        )
    };
}

#[test]
fn hello_result_is_separate_from_stdout() {
    if !privileged() {
        return;
    }
    let r = run(
        "def main():\n    print('hello')\n    print('{\"ok\": 2}')\n    return {'ok': 1}\n",
        &[],
    );
    assert_status!(r, "ok");
    assert_eq!(r["result"], serde_json::json!({"ok": 1}));
    assert_eq!(r["run"]["stdout"], "hello\n{\"ok\": 2}\n");
    assert_eq!(r["run"]["exit_code"], 0);
    assert_eq!(r["language"], "python");
    assert!(r["version"].as_str().unwrap().starts_with("3."));
    assert!(r.get("degraded").is_none(), "full isolation expected here");
    assert!(
        r["run"]["memory_peak_bytes"].as_u64().unwrap() > 0,
        "cgroup accounting"
    );
    assert!(r["run"]["cpu_time_ms"].as_f64().unwrap() > 0.0);
    let steps: Vec<&str> = r["timings_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    for step in [
        "cgroup_create",
        "clone",
        "id_map",
        "jail_init",
        "exec",
        "run",
        "teardown",
    ] {
        assert!(steps.contains(&step), "no timing for {step}: {steps:?}");
    }
}

#[test]
fn pandas_and_numpy_compute_inside_the_jail() {
    if !privileged() {
        return;
    }
    let r = run(
        "import numpy as np\nimport pandas as pd\n\ndef main():\n    \
         df = pd.DataFrame({'a': np.arange(1000), 'b': np.arange(1000) * 2.0})\n    \
         print(df.shape)\n    \
         return {'sum': float(df.to_numpy().sum()), 'cols': list(df.columns), \
         'arr': np.arange(3), 'f32': np.float32(0.5), 'i64': np.int64(7)}\n",
        &[],
    );
    assert_status!(r, "ok");
    assert_eq!(
        r["result"],
        serde_json::json!({"sum": 1498500.0, "cols": ["a", "b"], "arr": [0, 1, 2], "f32": 0.5, "i64": 7})
    );
    assert_eq!(r["run"]["stdout"], "(1000, 2)\n");
}

#[test]
fn main_contract_errors_are_distinct() {
    if !privileged() {
        return;
    }
    let cases: &[(&str, &str)] = &[
        ("x = 1\n", "no_main"),
        ("main = 3\n", "main_not_callable"),
        ("def main():\n    return {1, 2}\n", "result_not_json"),
        ("def main():\n    return float('nan')\n", "result_not_json"),
        (
            "def main():\n    return {'x': float('inf')}\n",
            "result_not_json",
        ),
        ("def main(:\n", "syntax_error"),
        ("import sys\ndef main():\n    sys.exit(3)\n", "system_exit"),
        // deeper than the record may carry (it travels inside other JSON): refused, not lost
        (
            "def main():\n    v = 0\n    for _ in range(126):\n        v = [v]\n    return v\n",
            "result_not_json",
        ),
    ];
    for (src, code) in cases {
        let r = run(src, &[]);
        assert_status!(r, "runtime_error");
        assert_eq!(r["error"]["code"], *code, "for {src:?}: {r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
        assert!(r.get("result").is_none());
    }
}

#[test]
fn exception_traceback_goes_to_stderr_with_prints_kept() {
    if !privileged() {
        return;
    }
    let r = run(
        "def helper():\n    raise ValueError('boom')\n\ndef main():\n    print('before')\n    helper()\n",
        &[],
    );
    assert_status!(r, "runtime_error");
    assert_eq!(r["error"]["code"], "exception");
    assert_eq!(r["error"]["message"], "ValueError: boom");
    let stderr = r["run"]["stderr"].as_str().unwrap();
    assert!(stderr.contains("Traceback"), "{stderr}");
    assert!(stderr.contains("line 2, in helper"), "{stderr}");
    assert!(
        !stderr.contains("<string>"),
        "harness frames leak: {stderr}"
    );
    assert_eq!(r["run"]["stdout"], "before\n");
}

#[test]
fn program_mode_reads_stdin_and_args() {
    if !privileged() {
        return;
    }
    let r = run(
        "import sys\ndata = sys.stdin.read()\nprint(data.upper(), sys.argv[1:])\nsys.exit(4)\n",
        &["--mode", "program", "--stdin", "abc", "--", "x", "y"],
    );
    assert_status!(r, "runtime_error");
    assert_eq!(r["error"]["code"], "nonzero_exit");
    assert_eq!(r["run"]["exit_code"], 4);
    assert_eq!(r["run"]["stdout"], "ABC ['x', 'y']\n");
    let ok = run("print('fine')\n", &["--mode", "program"]);
    assert_status!(ok, "ok");
    assert!(ok.get("result").is_none());
}

/// A file with its own name (its extension picks nothing: `--language` does).
fn named(name: &str, src: &str) -> Script {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, src).unwrap();
    Script { _dir: dir, path }
}

/// Whether `language`'s toolchain is installed (`execbox runtimes --language` offers it);
/// otherwise a failure in CI and a visible skip elsewhere.
fn offered(language: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_execbox"))
        .args(["runtimes", "--json", "--language", language])
        .output()
        .unwrap();
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !listed.is_empty() {
        return true;
    }
    let why = format!(
        "no {language} runtime is offered here: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(!support::in_ci(), "CI is set but {why}");
    support::report_skip(&format!("{why} (with CI=true this fails)"));
    false
}

#[test]
fn language_flag_runs_c_and_javascript_through_compile_and_run_jails() {
    if !privileged() {
        return;
    }
    if offered("c") {
        let c = named(
            "hello.c",
            "#include <stdio.h>\nint main(int argc, char **argv) {\n  char line[64];\n  \
             if (fgets(line, sizeof line, stdin)) printf(\"hello %s\", line);\n  \
             printf(\"args %d %s\\n\", argc - 1, argc > 1 ? argv[1] : \"-\");\n  return 0;\n}\n",
        );
        let out = execbox(
            &["--language", "c", "--stdin", "world\n", "--", "x"],
            &c.path,
            &[],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_status!(r, "ok");
        assert_eq!(r["language"], "c");
        assert_eq!(r["run"]["stdout"], "hello world\nargs 1 x\n");
        assert_eq!(r["compile"]["exit_code"], 0, "two stages: {r}");
        assert!(r.get("degraded").is_none(), "full isolation expected here");
        // A compile error is the compile stage's record.
        let broken = named("broken.c", "int main(void) { return x; }\n");
        let r: Value =
            serde_json::from_slice(&execbox(&["--language", "gcc"], &broken.path, &[]).stdout)
                .unwrap();
        assert_status!(r, "compile_error");
        assert!(
            r["compile"]["stderr"].as_str().unwrap().contains("x"),
            "{r}"
        );
    }
    if offered("javascript") {
        let js = named(
            "hello.js",
            "console.log('hello from ' + process.release.name);\n",
        );
        let r = {
            let out = execbox(&["--language", "js", "--version", "*"], &js.path, &[]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        };
        assert_status!(r, "ok");
        assert_eq!(r["language"], "javascript");
        assert_eq!(r["run"]["stdout"], "hello from node\n");
        assert!(r.get("compile").is_none() || r["compile"].is_null(), "{r}");
        // The selector picks among what is installed; no match is the caller's mistake.
        let out = execbox(&["--language", "node", "--version", ">=999"], &js.path, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no javascript runtime matches"), "{err}");
        // Main mode is Python's.
        let out = execbox(&["--language", "js", "--mode", "main"], &js.path, &[]);
        assert_eq!(out.status.code(), Some(2));
    }
    // An unknown language names what is installed and starts nothing.
    let s = script("print(1)\n");
    let out = execbox(&["--language", "cobol"], &s.path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"cobol\" is not installed") && err.contains("python"),
        "{err}"
    );
    // --version needs --language.
    let out = execbox(&["--version", "3"], &s.path, &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn timeout_keeps_what_was_printed() {
    if !privileged() {
        return;
    }
    let r = run(
        "def main():\n    print('before', flush=True)\n    while True:\n        pass\n",
        &["--timeout", "700ms"],
    );
    assert_status!(r, "timeout");
    assert_eq!(r["error"]["code"], "timeout");
    assert_eq!(r["run"]["limit"], "wall_time");
    assert_eq!(r["run"]["stdout"], "before\n");
    assert_eq!(r["run"]["signal"], 9);
}

#[test]
fn timeout_is_seconds_when_bare_and_takes_units() {
    if !privileged() {
        return;
    }
    // `--timeout 2` is two seconds (it once meant 2 ms): a half-second sleep finishes.
    let sleeper = "import time\ndef main():\n    time.sleep(0.5)\n    return 'slept'\n";
    let r = run(sleeper, &["--timeout", "2"]);
    assert_status!(r, "ok");
    assert_eq!(r["result"], "slept");
    // Units are read as written.
    let r = run("def main():\n    return 1\n", &["--timeout", "300ms"]);
    assert_status!(r, "ok");
    let r = run(sleeper, &["--timeout", "300ms"]);
    assert_status!(r, "timeout");
    // Something that is neither is refused with a hint, before any jail.
    let s = script("def main():\n    return 1\n");
    let out = execbox(&["--timeout", "2 fortnights"], &s.path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("300ms"), "{err}");
}

#[test]
fn limits_above_operator_maxima_are_refused_with_the_maximum() {
    let s = script("def main():\n    return 1\n");
    let out = execbox(
        &["--memory", "512M"],
        &s.path,
        &[("EXECBOX_MAX_MEMORY_MB", "128")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory_bytes") && err.contains("134217728"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = execbox(&["--timeout", "0"], &s.path, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_cgroups_refuse_unless_degraded_is_allowed() {
    if !privileged() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    let s = script("def main():\n    return {'ok': 1}\n");
    let out = execbox(&["--cgroup-root", root], &s.path, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cgroups") && err.contains("--allow-degraded"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no run without the opt-in");

    let out = execbox(&["--cgroup-root", root, "--allow-degraded"], &s.path, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_status!(r, "ok");
    assert_eq!(r["degraded"], true);
    assert_eq!(r["missing_layers"], serde_json::json!(["cgroups"]));
}

#[test]
fn serve_refuses_at_once_when_a_layer_is_missing() {
    if !privileged() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    // Ports 0: should the gate let it through, the test would see it listening, not a clash.
    let mut child = support::server::serve_command()
        .args(["--cgroup-root", root])
        .env("APP_JWT_SECRET", "x")
        .env_remove("EXECBOX_ALLOW_DEGRADED")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("execbox serve did not exit on a host without cgroups");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing isolation layers")
            && err.contains("  cgroups: ")
            && err.contains("EXECBOX_ALLOW_DEGRADED=1")
            && !err.contains("listening"),
        "{err}"
    );
}

#[test]
fn check_reports_every_layer() {
    if !privileged() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_execbox"))
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for n in [
        "user_namespaces",
        "namespaces",
        "cgroups",
        "seccomp",
        "landlock",
        "landlock_scopes",
        "cgroup_kill",
        "no_new_privs",
        "mount_setattr",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(r["verdict"], "full", "{r}");
    // full means nothing is missing: a layer is ok, or absent and covered by the ones it names
    for l in r["layers"].as_array().unwrap() {
        match l["status"].as_str().unwrap() {
            "ok" => assert_eq!(l["available"], true, "{l}"),
            "covered" => {
                assert_eq!(l["need"], "duplicate", "{l}");
                assert!(!l["covered_by"].as_array().unwrap().is_empty(), "{l}");
            }
            other => panic!("layer {other} on a full host: {l}"),
        }
    }
    // the backend reported is the one the host has, and its parent cgroups exist, so the
    // leftover check below looks where the probe really was
    assert_eq!(r["cgroup_backend"], support::host::cgroup_backend(), "{r}");
    // the deep probe leaves no cgroup behind, in any hierarchy of the backend in use
    let leftovers: Vec<_> = support::host::execbox_cgroup_parents()
        .into_iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-check-probe"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

//! The container side of the harness: the `docker run` privileges the documentation gives, the
//! Docker client, and the switch that points the server suites at an image instead of the host
//! binary (`EXECBOX_TEST_CONTAINER_IMAGE`, see [`super::server`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::root::report_skip;

/// The variable naming the image the server suites target; unset (or empty): the host binary.
pub const IMAGE_VAR: &str = "EXECBOX_TEST_CONTAINER_IMAGE";

/// The image the server suites target, if any (`EXECBOX_TEST_CONTAINER_IMAGE`).
pub fn target_image() -> Option<String> {
    std::env::var(IMAGE_VAR).ok().filter(|v| !v.is_empty())
}

/// In container mode, report the current test as skipped with `why` (what it inspects that a
/// container hides from it) and return true; otherwise false. Used by the tests that look at
/// the server's processes, cgroups or sockets on the host: they run in the host pass of the
/// same suite (`cargo test --workspace`).
pub fn skip_in_container(why: &str) -> bool {
    let Some(image) = target_image() else {
        return false;
    };
    report_skip(&format!("not run against a container ({image}): {why}"));
    true
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The documented flags (README, docs/security.md "In a container"), ports not included.
pub fn documented_flags() -> Vec<String> {
    let seccomp = repo().join("docker/seccomp.json");
    let seccomp = seccomp.canonicalize().expect("docker/seccomp.json");
    [
        "--cap-drop",
        "ALL",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "SETPCAP",
        "--cap-add",
        "SETUID",
        "--cap-add",
        "SETGID",
        "--cgroupns",
        "private",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--security-opt".into(),
        format!("seccomp={}", seccomp.display()),
    ])
    .collect()
}

/// The label on every container the tests start (`docker rm -f $(docker ps -aq --filter
/// label=execbox-test)` clears what a killed test run left).
pub const LABEL: &str = "execbox-test";

/// Run the Docker client.
pub fn docker<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker client")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The loopback address container port `port` (`8080/tcp`) of `id` is published on.
pub fn published_addr(id: &str, port: &str) -> std::net::SocketAddr {
    let out = docker(&["port", id, port]);
    let line = text(&out.stdout);
    line.lines()
        .find_map(|l| l.trim().parse::<std::net::SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback() && a.port() != 0)
        .unwrap_or_else(|| panic!("docker port {id} {port}: {line}{}", text(&out.stderr)))
}

/// `Some(exit code)` once container `id` has stopped (or is gone), `None` while it runs.
pub fn exit_code(id: &str) -> Option<i32> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.State.ExitCode}}",
        id,
    ]);
    if !out.status.success() {
        return Some(-1);
    }
    let s = text(&out.stdout);
    match s.split_whitespace().collect::<Vec<_>>()[..] {
        ["true", _] => None,
        [_, code] => Some(code.parse().unwrap_or(-1)),
        _ => Some(-1),
    }
}

//! Whether the tests may make jails: root, or a skip (outside CI) or a failure (in CI).

use std::io::Write;

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Say that the current test is skipped, and why, where the person running the tests sees it:
/// straight to the process's stderr, which the test harness does not capture (it captures
/// `print!`/`eprint!` only), so a skipped test is never mistaken for a passing one.
pub fn report_skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Root is needed for jails. Outside CI a non-root run skips (saying so on stderr, see
/// [`report_skip`]); with `CI=true` it fails.
pub fn privileged() -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    assert!(
        !in_ci(),
        "CI is set but the euid is {uid}, not root: these tests cannot run"
    );
    report_skip(&format!(
        "starts jails and needs root (euid {uid}); with CI=true this fails"
    ));
    false
}

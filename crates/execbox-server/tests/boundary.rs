//! The server never forks and never links the jail: its normal dependency graph holds
//! `execbox-proto` and no other execbox crate. What crosses the process boundary to the
//! spawner is defined in proto; the jail, the runtimes and the spawner are another process's.

use std::process::Command;

#[test]
fn the_server_links_proto_and_no_other_execbox_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "execbox-server",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut execbox: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("execbox-"))
        .collect();
    execbox.sort_unstable();
    execbox.dedup();
    assert_eq!(
        execbox,
        ["execbox-proto", "execbox-server"],
        "the server must depend on execbox-proto only:\n{tree}"
    );
}

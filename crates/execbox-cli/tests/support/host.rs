//! What the host shows of jails: processes (by pid and start time, uid, argv, ancestry), run
//! cgroups and jail mounts, and the leftovers a run or a server may leave behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Host uids of jailed processes: `UID_BASE + slot`, `slot < UID_SLOTS`.
pub const UID_BASE: u32 = 2_000_000_000;
pub const UID_SLOTS: u32 = 4096;

/// Whether `uid` is one of the host uids execbox gives jailed processes.
pub fn jail_uid(uid: u32) -> bool {
    (UID_BASE..UID_BASE + UID_SLOTS).contains(&uid)
}

// ---------------------------------------------------------------------------------- cgroups

/// The cgroup backend the jail uses on this host, decided as the jail decides it: `v2` when
/// `/sys/fs/cgroup` is a cgroup2 mount, else `v1`.
pub fn cgroup_backend() -> &'static str {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4) == Some(&"/sys/fs/cgroup") && sep.and_then(|i| f.get(i + 1)) == Some(&"cgroup2")
    });
    if v2 {
        "v2"
    } else {
        "v1"
    }
}

/// Those of execbox's parent cgroups for the backend in use that exist now (none before the
/// first run on a fresh host).
pub fn existing_execbox_cgroup_parents() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let parents: Vec<_> = if cgroup_backend() == "v2" {
        vec![root.join("execbox")]
    } else {
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("execbox"))
            .collect()
    };
    parents.into_iter().filter(|p| p.is_dir()).collect()
}

/// execbox's parent cgroups for the backend in use: `/sys/fs/cgroup/execbox` on v2, the
/// `execbox` directory of each controller hierarchy (memory, pids, cpu, …) on v1. Panics if none
/// exists, so a leftover check built on this cannot pass vacuously by looking in the wrong
/// place: call it only after a run has created them.
pub fn execbox_cgroup_parents() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let existing = existing_execbox_cgroup_parents();
    assert!(
        !existing.is_empty(),
        "no execbox cgroup exists for the {} backend below {}: a leftover check here would \
         look in the wrong place",
        cgroup_backend(),
        root.display()
    );
    existing
}

/// A process, by pid and start time (a pid alone may be recycled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

/// Fields of `/proc/PID/stat` after the command name: `[0]` is the state, `[1]` the ppid,
/// `[2]` the process group, `[19]` the start time.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

pub fn proc_id(pid: u32) -> Option<ProcId> {
    let start = stat_fields(pid)?.get(19)?.parse().ok()?;
    Some(ProcId { pid, start })
}

pub fn alive(p: &ProcId) -> bool {
    proc_id(p.pid) == Some(*p)
}

pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn uids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub fn jailed(pid: u32) -> bool {
    uids(pid).iter().any(|&u| jail_uid(u))
}

pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn describe(pid: u32) -> String {
    let mut cmd = cmdline(pid).join(" ");
    cmd.truncate(100);
    let state = stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .unwrap_or_default();
    format!(
        "pid {pid} ppid {:?} state {state} uids {:?}: {cmd}",
        ppid(pid),
        uids(pid)
    )
}

/// Processes of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| {
            stat_fields(p)
                .and_then(|f| f.get(2)?.parse::<u32>().ok())
                .is_some_and(|g| g == pgid)
        })
        .collect()
}

/// Every process below `root` (not `root` itself), at this moment.
pub fn descendants(root: u32) -> Vec<ProcId> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in pids() {
        if let Some(pp) = ppid(pid) {
            children.entry(pp).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if let Some(id) = proc_id(c) {
                out.push(id);
            }
            todo.push(c);
        }
    }
    out
}

/// A real jail owner: an unjailed `execbox spawner` or `execbox run`. (Prepared jails are
/// clones of their spawner and share its command line, but they run as execbox uids.)
pub fn is_owner(pid: u32) -> bool {
    let argv = cmdline(pid);
    argv.first().is_some_and(|a| a.ends_with("execbox"))
        && argv.get(1).is_some_and(|a| a == "spawner" || a == "run")
        && !jailed(pid)
}

/// The spawner of server `server`: its child with `spawner` as argv[1].
pub fn spawner_of(server: u32) -> Option<u32> {
    pids()
        .into_iter()
        .find(|&p| ppid(p) == Some(server) && is_owner(p))
}

/// Processes with `marker` as one of their arguments.
pub fn with_arg(marker: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| cmdline(p).iter().any(|a| a == marker))
        .collect()
}

/// Jailed processes that no live owner (spawner or `execbox run`) is an ancestor of.
pub fn orphan_jails() -> Vec<String> {
    pids()
        .into_iter()
        .filter(|&p| jailed(p))
        .filter(|&p| {
            let mut cur = ppid(p);
            let mut hops = 0;
            while let Some(c) = cur.filter(|&c| c > 1 && hops < 64) {
                if is_owner(c) {
                    return false;
                }
                cur = ppid(c);
                hops += 1;
            }
            true
        })
        .map(describe)
        .collect()
}

/// Live jail owners (spawners, `execbox run`) on the host.
pub fn owners() -> Vec<String> {
    pids()
        .into_iter()
        .filter(|p| is_owner(*p))
        .map(describe)
        .collect()
}

/// Run cgroups (`j<jailer pid>-<n>`) whose jailer is not a live owner.
pub fn unowned_run_cgroups() -> Vec<PathBuf> {
    run_cgroups("j")
        .into_iter()
        .filter(|d| !owner_alive(d))
        .collect()
}

/// Whether the jailer named by a run cgroup (`j<jailer pid>-<n>`) is a live owner.
pub fn owner_alive(dir: &Path) -> bool {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let jailer = name
        .as_deref()
        .and_then(|n| n.strip_prefix('j')?.split('-').next()?.parse::<u32>().ok());
    jailer.is_some_and(is_owner)
}

/// Run cgroup directories whose name starts with `prefix` (`j` for all, `j<spawner pid>-` for
/// one spawner's), in every hierarchy of the backend in use (v1: `/sys/fs/cgroup/*/execbox`;
/// v2: `/sys/fs/cgroup/execbox`); asserts that these parents exist, so the answer is never
/// vacuously empty.
pub fn run_cgroups(prefix: &str) -> Vec<PathBuf> {
    run_cgroups_in(execbox_cgroup_parents(), prefix)
}

pub fn run_cgroups_in(parents: Vec<PathBuf>, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in parents {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The execbox run cgroups of a live process (from `/proc/PID/cgroup`).
pub fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with("/execbox/j") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            out.push(PathBuf::from("/sys/fs/cgroup").join(rel));
            continue;
        }
        for c in ctrls.split(',') {
            let c = c.trim_start_matches("name=");
            let dir = PathBuf::from("/sys/fs/cgroup").join(c).join(rel);
            if dir.exists() {
                out.push(dir);
            }
        }
    }
    out
}

/// The TCP ports `pid` listens on, from its socket inodes and `/proc/PID/net/tcp`.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// A unique argument to pass to a run, to find its processes by (see [`with_arg`]).
pub fn unique_marker(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("execbox-test-{tag}-{}-{n}", std::process::id())
}

pub fn cgroup_names(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .filter(|d| d.exists())
        .map(|d| format!("cgroup {}", d.display()))
        .collect()
}

/// The pid namespace of `pid` (`pid:[inode]`), if it still exists.
pub fn pid_namespace(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Processes anywhere on the host in one of `namespaces` (a run's pid namespaces): a run's
/// process cannot leave its pid namespace, so none left means nothing of the run survives,
/// including processes it forked after a snapshot of its tree was taken. While its spawner
/// lives, this is the check that a run is gone: on cgroup v1 an emptied run cgroup is kept
/// and given to a later jail (security.md 2.4), so the directory outlives the run.
pub fn in_pid_namespaces(namespaces: &[String]) -> Vec<String> {
    pids()
        .into_iter()
        .filter(|&p| pid_namespace(p).is_some_and(|ns| namespaces.contains(&ns)))
        .map(|p| format!("process {} is in the run's pid namespace", describe(p)))
        .collect()
}

pub fn still_alive(procs: &[ProcId]) -> Vec<String> {
    procs
        .iter()
        .filter(|p| alive(p))
        .map(|p| describe(p.pid))
        .collect()
}

/// Whatever runs left on the host: processes with an execbox uid, run cgroups, jail root
/// mounts. Only sound while no jail owner runs (a spawner's prepared jails are jailed too).
pub fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = pids()
        .into_iter()
        .filter(|&p| jailed(p))
        .map(|p| format!("process {} is still alive", describe(p)))
        .collect();
    // the parents of the backend in use (before the first run on a fresh host there are none)
    for parent in existing_execbox_cgroup_parents() {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(format!("cgroup {} is still there", entry.path().display()));
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if line
            .split(' ')
            .nth(4)
            .is_some_and(|mnt| mnt.starts_with("/run/execbox/jailroot"))
        {
            found.push(format!("mount still in the host namespace: {line}"));
        }
    }
    found
}

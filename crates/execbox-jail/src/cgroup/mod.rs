//! cgroups: one trait, a v1 backend (hybrid hosts), a v2 backend, and a "none" backend that only
//! a degraded jail may use.
//!
//! Host paths come in as parameters (the cgroup root and `/proc/self/mountinfo`), so the backends
//! are unit-tested on a fake tree in a temp dir.

mod favordynmods;
mod v1;
mod v2;

pub use favordynmods::{favor_dynmods, FavorDynmods};

use std::fmt::Debug;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Limits;
use crate::error::{JailError, Result};

pub use v1::CgroupV1;
pub use v2::CgroupV2;

/// What a run's cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time of every task that ran in it, nanoseconds.
    pub cpu_ns: u64,
    /// Peak memory use, bytes.
    pub memory_peak: u64,
    /// How many times the OOM killer fired in it.
    pub oom_kills: u64,
}

/// A cgroup implementation: creates one cgroup per run.
pub trait CgroupBackend: Debug + Send + Sync {
    /// `v1`, `v2` or `none`.
    fn name(&self) -> &'static str;
    /// Create the run's cgroup with its limits applied.
    fn create(&self, run_id: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>>;
    /// Kill and remove run cgroups left by jailer processes that died (a killed spawner).
    /// Returns how many were removed.
    fn reap_stale(&self) -> usize;
}

/// One run's cgroup.
pub trait RunCgroup: Debug + Send {
    /// A directory fd for `clone3(CLONE_INTO_CGROUP)`, when the backend supports it.
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Move `pid` in (backends without `clone_into_fd`).
    fn join(&self, pid: Pid) -> Result<()>;
    /// Files into which the jail's child writes `0` to move itself in (v1). Doing it in the
    /// child keeps the kernel's wait for an RCU grace period (milliseconds when joins are rare)
    /// off the spawner's thread.
    fn self_join_files(&self) -> Vec<PathBuf>;
    /// Every `cgroup.procs` file of the run (one per hierarchy). A template's child joins by
    /// writing `0` into descriptors of these that the spawner opened: the kernel checks the
    /// opener's credentials and cgroup namespace, not the writer's.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// Current counters.
    ///
    /// A counter that cannot be read is an error, never a zero: an unreadable `memory.events`
    /// would otherwise turn an OOM kill into a `runtime_error`.
    fn stats(&self) -> Result<CgroupStats>;
    /// SIGKILL every task in it and wait until it is empty.
    fn kill_all(&self) -> Result<()>;
    /// Kill what is left, then remove the cgroup.
    fn remove(self: Box<Self>) -> Result<()>;
}

/// Pick the backend the host offers: v2 if `root` is a cgroup2 mount, v1 if the memory, pids,
/// cpu and cpuacct controllers are mounted as v1 hierarchies below `root`, else `None`.
pub fn detect(
    root: &Path,
    mountinfo: &Path,
    parent: &str,
) -> Result<Option<Box<dyn CgroupBackend>>> {
    let text = fs::read_to_string(mountinfo).map_err(|e| JailError::io("read", mountinfo, e))?;
    let mounts = parse_mountinfo(&text);
    if mounts
        .iter()
        .any(|m| m.fstype == "cgroup2" && m.mount_point == root)
    {
        return Ok(Some(Box::new(CgroupV2::new(root.to_path_buf(), parent)?)));
    }
    let find = |ctrl: &str| {
        mounts
            .iter()
            .find(|m| {
                m.fstype == "cgroup"
                    && m.mount_point.starts_with(root)
                    && m.super_options.split(',').any(|o| o == ctrl)
            })
            .map(|m| m.mount_point.clone())
    };
    match (find("memory"), find("pids"), find("cpu"), find("cpuacct")) {
        (Some(mem), Some(pids), Some(cpu), Some(cpuacct)) => Ok(Some(Box::new(CgroupV1::new(
            mem, pids, cpu, cpuacct, parent,
        )?))),
        _ => Ok(None),
    }
}

/// The fields of one `/proc/self/mountinfo` line that detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type.
    pub fstype: String,
    /// Per-superblock options (for cgroup v1: the controllers).
    pub super_options: String,
}

/// Parse `/proc/self/mountinfo` (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let super_options = r.next().unwrap_or("");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype: fstype.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The "none" backend: no limits, no accounting. Only a degraded jail uses it.
#[derive(Debug, Default)]
pub struct NoCgroup;

#[derive(Debug)]
struct NoRunCgroup;

impl CgroupBackend for NoCgroup {
    fn name(&self) -> &'static str {
        "none"
    }
    fn create(&self, _run_id: &str, _limits: &Limits) -> Result<Box<dyn RunCgroup>> {
        Ok(Box::new(NoRunCgroup))
    }
    fn reap_stale(&self) -> usize {
        0
    }
}

impl RunCgroup for NoRunCgroup {
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn join(&self, _pid: Pid) -> Result<()> {
        Ok(())
    }
    fn self_join_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn procs_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn stats(&self) -> Result<CgroupStats> {
        Ok(CgroupStats::default())
    }
    fn kill_all(&self) -> Result<()> {
        Ok(())
    }
    fn remove(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

// ---- helpers shared by the backends ----

pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| JailError::io("write", path, e))
}

/// A file that must hold one number. Unreadable or unparsable is an error: a run's verdict
/// (an OOM kill, the CPU it used) must never silently become zero.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(|e| JailError::io("read", path, e))?;
    parse_u64(path, text.trim())
}

/// Like [`read_u64`], but a file the kernel does not have (`ENOENT`: `memory.peak` before
/// Linux 5.19) is `None`.
pub(crate) fn read_u64_if_present(path: &Path) -> Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => parse_u64(path, text.trim()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JailError::io("read", path, e)),
    }
}

/// Value of `key` in a flat-keyed file such as `memory.events` or `cpu.stat`; a missing key is
/// an error like an unreadable file.
pub(crate) fn read_key(path: &Path, key: &str) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(|e| JailError::io("read", path, e))?;
    let value = text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim())
    });
    match value {
        Some(v) => parse_u64(path, v),
        None => Err(JailError::CgroupStat {
            path: path.to_owned(),
            what: format!("no key {key}"),
        }),
    }
}

fn parse_u64(path: &Path, v: &str) -> Result<u64> {
    v.parse().map_err(|_| JailError::CgroupStat {
        path: path.to_owned(),
        what: format!("not a number: {:.40}", v),
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(JailError::io("mkdir", path, e)),
    }
}

/// Create a run's cgroup directory, which must be new. Names embed the jailer's pid, so an
/// existing one was left by a dead jailer whose pid has been reused: kill what is in it and
/// remove it first, rather than adopt it and its processes.
pub(crate) fn mkdir_fresh(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            remove_stale(&[path.to_path_buf()]);
            fs::create_dir(path).map_err(|e| JailError::io("mkdir", path, e))
        }
        Err(e) => Err(JailError::io("mkdir", path, e)),
    }
}

/// SIGKILL every pid listed in `procs` until the file is empty (or 2 s pass).
pub(crate) fn kill_listed(procs: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = match fs::read_to_string(procs) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JailError::io("read", procs, e)),
        };
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return Ok(());
        }
        for p in pids {
            match kill(Pid::from_raw(p), Signal::SIGKILL) {
                // ESRCH is fine: it died between the read and the kill.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(JailError::sys(format!("kill {p}"), e)),
            }
        }
        if Instant::now() > deadline {
            return Err(JailError::io(
                "empty",
                procs,
                std::io::Error::other("tasks survive SIGKILL"),
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Run cgroups below `parent` whose owner is gone. Run cgroups are named `j<pid>-<n>` after
/// the jailer process that made them; one whose pid no longer exists is stale.
pub(crate) fn stale_dirs(parent: &Path, proc_root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(parent) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let owner = name
                .strip_prefix('j')
                .and_then(|r| r.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            owner.is_some_and(|pid| !proc_root.join(pid.to_string()).exists())
        })
        .map(|e| e.path())
        .collect()
}

/// Kill what runs in each of `dirs` (all hierarchies of one run) and remove them.
pub(crate) fn remove_stale(dirs: &[PathBuf]) -> bool {
    let mut ok = true;
    for d in dirs {
        ok &= kill_listed(&d.join("cgroup.procs")).is_ok();
    }
    for d in dirs {
        ok &= rmdir_retry(d).is_ok();
    }
    ok
}

/// rmdir with a short retry: a cgroup stays busy for a moment after its last task is reaped.
pub(crate) fn rmdir_retry(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) => return Err(JailError::io("rmdir", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
30 1 8:1 / /with\\040space rw - ext4 /dev/sda1 rw
";

    #[test]
    fn parses_mountinfo_and_unescapes() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m[2].super_options, "rw,memory");
        assert_eq!(m[5].mount_point, PathBuf::from("/with space"));
    }

    #[test]
    fn detects_v1_on_a_hybrid_host_and_v2_on_a_unified_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Fake tree: make the mount points directories so the backends can create parents.
        let text = HYBRID.replace("/sys/fs/cgroup", &root.display().to_string());
        for sub in ["memory", "pids", "cpu,cpuacct", "unified"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let mi = root.join("mountinfo");
        fs::write(&mi, &text).unwrap();
        let b = detect(root, &mi, "execbox").unwrap().unwrap();
        assert_eq!(b.name(), "v1");

        let unified = format!("26 25 0:23 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::write(&mi, unified).unwrap();
        let b = detect(root, &mi, "execbox").unwrap().unwrap();
        assert_eq!(b.name(), "v2");

        fs::write(&mi, "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
        assert!(detect(root, &mi, "execbox").unwrap().is_none());
    }

    #[test]
    fn stale_run_dirs_are_those_of_dead_jailers() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("execbox");
        let proc_root = t.path().join("proc");
        for d in ["j100-0", "j100-1", "j200-0", "not-a-run", "jx-1"] {
            fs::create_dir_all(parent.join(d)).unwrap();
        }
        fs::create_dir_all(proc_root.join("200")).unwrap(); // pid 200 is alive
        let mut stale = stale_dirs(&parent, &proc_root);
        stale.sort();
        assert_eq!(stale, vec![parent.join("j100-0"), parent.join("j100-1")]);
        assert!(remove_stale(&stale));
        assert!(!parent.join("j100-0").exists() && parent.join("j200-0").exists());
    }

    #[test]
    fn read_key_finds_flat_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("memory.events");
        fs::write(&p, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(read_key(&p, "oom_kill").unwrap(), 2);
        assert_eq!(read_key(&p, "oom").unwrap(), 1);
        assert!(read_key(&p, "nope").is_err());
        assert!(read_key(&dir.path().join("absent"), "oom").is_err());
        assert!(read_u64_if_present(&dir.path().join("absent"))
            .unwrap()
            .is_none());
    }
}

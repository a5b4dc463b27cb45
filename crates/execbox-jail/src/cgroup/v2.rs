//! cgroup v2 backend: one directory per run below `<root>/<parent>`, entered with
//! `clone3(CLONE_INTO_CGROUP)` so the child never runs outside it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::unistd::Pid;

use super::{
    kill_listed, mkdir, mkdir_fresh, read_key, read_u64_if_present, remove_stale, rmdir_retry,
    stale_dirs, write_file, CgroupBackend, CgroupStats, RunCgroup,
};
use crate::config::Limits;
use crate::error::{JailError, Result};

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The unified hierarchy with execbox's parent cgroup.
#[derive(Debug)]
pub struct CgroupV2 {
    parent: PathBuf,
}

impl CgroupV2 {
    /// Create `root/parent` and delegate the memory, pids and cpu controllers to it.
    pub fn new(root: PathBuf, parent: &str) -> Result<Self> {
        let available = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| JailError::io("read", root.join("cgroup.controllers"), e))?;
        for c in CONTROLLERS {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(JailError::LayerUnavailable(format!(
                    "cgroup v2 controller {c} is not available at {}",
                    root.display()
                )));
            }
        }
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        write_file(&root.join("cgroup.subtree_control"), &enable)?;
        let parent = root.join(parent);
        mkdir(&parent)?;
        write_file(&parent.join("cgroup.subtree_control"), &enable)?;
        Ok(Self { parent })
    }
}

impl CgroupBackend for CgroupV2 {
    fn name(&self) -> &'static str {
        "v2"
    }

    fn reap_stale(&self) -> usize {
        let stale = stale_dirs(&self.parent, std::path::Path::new("/proc"));
        stale
            .iter()
            .filter(|d| {
                // cgroup.kill first: atomic against forks. Before Linux 5.14 there is no
                // cgroup.kill and the write fails; that is expected, because remove_stale
                // kills the listed tasks one by one either way, and its answer is what counts.
                if let Err(not_supported) = write_file(&d.join("cgroup.kill"), "1") {
                    drop(not_supported);
                }
                remove_stale(std::slice::from_ref(d))
            })
            .count()
    }

    fn create(&self, run_id: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>> {
        let dir = self.parent.join(run_id);
        mkdir_fresh(&dir)?;
        let setup = || -> Result<OwnedFd> {
            write_file(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            write_file(&dir.join("memory.swap.max"), "0")?;
            write_file(&dir.join("pids.max"), &limits.pids.to_string())?;
            const PERIOD_US: u64 = 100_000;
            let quota = (PERIOD_US * u64::from(limits.cpu_millis) / 1000).max(1000);
            write_file(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            let f = File::open(&dir).map_err(|e| JailError::io("open", &dir, e))?;
            Ok(OwnedFd::from(f))
        };
        match setup() {
            Ok(fd) => Ok(Box::new(RunCgroupV2 { dir, fd })),
            Err(e) => Err(e.with_cleanup(rmdir_retry(&dir))),
        }
    }
}

#[derive(Debug)]
struct RunCgroupV2 {
    dir: PathBuf,
    fd: OwnedFd,
}

impl RunCgroup for RunCgroupV2 {
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn join(&self, pid: Pid) -> Result<()> {
        write_file(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        Vec::new() // entered at clone time (CLONE_INTO_CGROUP)
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }

    fn stats(&self) -> Result<CgroupStats> {
        Ok(CgroupStats {
            cpu_ns: read_key(&self.dir.join("cpu.stat"), "usage_usec")?.saturating_mul(1000),
            // memory.peak exists from Linux 5.19; before it the peak is not known (0).
            memory_peak: read_u64_if_present(&self.dir.join("memory.peak"))?.unwrap_or(0),
            oom_kills: read_key(&self.dir.join("memory.events"), "oom_kill")?,
        })
    }

    fn kill_all(&self) -> Result<()> {
        // cgroup.kill (Linux 5.14) kills atomically, racing forks included.
        let k = self.dir.join("cgroup.kill");
        if k.exists() {
            write_file(&k, "1")?;
        }
        kill_listed(&self.dir.join("cgroup.procs"))
    }

    fn remove(self: Box<Self>) -> Result<()> {
        let killed = self.kill_all();
        let removed = rmdir_retry(&self.dir);
        killed.and(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn delegates_controllers_and_writes_limits() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().to_path_buf();
        fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let b = CgroupV2::new(r.clone(), "execbox").unwrap();
        assert_eq!(
            fs::read_to_string(r.join("execbox/cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        let limits = Limits {
            memory_bytes: 64 << 20,
            cpu_millis: 2000,
            ..Limits::default()
        };
        let cg = b.create("run-2", &limits).unwrap();
        let d = r.join("execbox/run-2");
        assert_eq!(
            fs::read_to_string(d.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "200000 100000"
        );
        assert!(cg.clone_into_fd().is_some());
        fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        fs::write(d.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        fs::write(d.join("memory.peak"), "123\n").unwrap();
        let s = cg.stats().unwrap();
        assert_eq!((s.cpu_ns, s.oom_kills, s.memory_peak), (1_500_000, 1, 123));
        // memory.peak is absent before Linux 5.19: the peak is unknown, the rest still counts
        fs::remove_file(d.join("memory.peak")).unwrap();
        assert_eq!(cg.stats().unwrap().oom_kills, 1);
        // an unreadable memory.events must not turn an OOM kill into "no OOM kill"
        fs::remove_file(d.join("memory.events")).unwrap();
        assert!(cg.stats().is_err());
        fs::write(d.join("memory.events"), "oom 1\n").unwrap();
        assert!(cg.stats().is_err(), "no oom_kill key");
    }

    #[test]
    fn refuses_without_the_memory_controller() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu pids").unwrap();
        let e = CgroupV2::new(t.path().to_path_buf(), "execbox").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }
}

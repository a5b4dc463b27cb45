//! cgroup v1 backend: one directory per run in each of the memory, pids, cpu and cpuacct
//! hierarchies (which may share a mount, as `cpu,cpuacct` often does).

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::{
    kill_listed, mkdir, mkdir_fresh, read_key, read_u64, remove_stale, rmdir_retry, stale_dirs,
    write_file, CgroupBackend, CgroupStats, RunCgroup,
};
use crate::config::Limits;
use crate::error::Result;

/// cgroup v1 hierarchies, each with execbox's parent directory.
#[derive(Debug)]
pub struct CgroupV1 {
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
}

impl CgroupV1 {
    /// Use the given controller mount points; create `parent` below each.
    pub fn new(
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        parent: &str,
    ) -> Result<Self> {
        let s = Self {
            memory: memory.join(parent),
            pids: pids.join(parent),
            cpu: cpu.join(parent),
            cpuacct: cpuacct.join(parent),
        };
        for d in s.distinct() {
            mkdir(d)?;
        }
        Ok(s)
    }

    fn distinct(&self) -> Vec<&PathBuf> {
        let mut v: Vec<&PathBuf> = Vec::with_capacity(4);
        for p in [&self.memory, &self.pids, &self.cpu, &self.cpuacct] {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }
}

impl CgroupBackend for CgroupV1 {
    fn name(&self) -> &'static str {
        "v1"
    }

    fn reap_stale(&self) -> usize {
        let proc_root = Path::new("/proc");
        let names: Vec<_> = stale_dirs(&self.memory, proc_root)
            .into_iter()
            .chain(stale_dirs(&self.pids, proc_root))
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        names
            .iter()
            .filter(|n| {
                let dirs: Vec<PathBuf> = self.distinct().into_iter().map(|d| d.join(n)).collect();
                remove_stale(&dirs)
            })
            .count()
    }

    fn create(&self, run_id: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>> {
        let run = RunCgroupV1 {
            dirs: self
                .distinct()
                .into_iter()
                .map(|d| d.join(run_id))
                .collect(),
            memory: self.memory.join(run_id),
            pids: self.pids.join(run_id),
            cpu: self.cpu.join(run_id),
            cpuacct: self.cpuacct.join(run_id),
        };
        for d in &run.dirs {
            if let Err(e) = mkdir_fresh(d) {
                return Err(e.with_cleanup(Box::new(run).remove()));
            }
        }
        if let Err(e) = run.apply(limits) {
            return Err(e.with_cleanup(Box::new(run).remove()));
        }
        Ok(Box::new(run))
    }
}

#[derive(Debug)]
struct RunCgroupV1 {
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
}

impl RunCgroupV1 {
    fn apply(&self, l: &Limits) -> Result<()> {
        let mem = l.memory_bytes.to_string();
        write_file(&self.memory.join("memory.limit_in_bytes"), &mem)?;
        // memsw (memory + swap) exists only with swap accounting; equal to the memory limit it
        // means "no swap". Without the file the host has no swap accounting: swappiness 0 is
        // then the best available.
        let memsw = self.memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write_file(&memsw, &mem)?;
        }
        let swappiness = self.memory.join("memory.swappiness");
        if swappiness.exists() {
            write_file(&swappiness, "0")?;
        }
        write_file(&self.pids.join("pids.max"), &l.pids.to_string())?;
        const PERIOD_US: u64 = 100_000;
        write_file(&self.cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        let quota = PERIOD_US * u64::from(l.cpu_millis) / 1000;
        write_file(
            &self.cpu.join("cpu.cfs_quota_us"),
            &quota.max(1000).to_string(),
        )?;
        Ok(())
    }
}

impl RunCgroup for RunCgroupV1 {
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn join(&self, pid: Pid) -> Result<()> {
        for d in &self.dirs {
            write_file(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.self_join_files()
    }

    fn stats(&self) -> Result<CgroupStats> {
        Ok(CgroupStats {
            cpu_ns: read_u64(&self.cpuacct.join("cpuacct.usage"))?,
            memory_peak: read_u64(&self.memory.join("memory.max_usage_in_bytes"))?,
            oom_kills: read_key(&self.memory.join("memory.oom_control"), "oom_kill")?,
        })
    }

    fn kill_all(&self) -> Result<()> {
        // Every task is in every hierarchy; the pids one is the cheapest to read.
        kill_listed(&self.pids.join("cgroup.procs"))
    }

    fn remove(self: Box<Self>) -> Result<()> {
        let killed = self.kill_all();
        let mut first_err = killed.err();
        for d in &self.dirs {
            if let Err(e) = remove_dir(d) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn remove_dir(d: &Path) -> Result<()> {
    rmdir_retry(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake v1 tree: mkdir does not create the control files a real cgroupfs would, so the
    /// test pre-creates the run directory's files the backend writes and reads.
    #[test]
    fn writes_limits_into_each_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let backend = || {
            CgroupV1::new(
                r.join("memory"),
                r.join("pids"),
                r.join("cpu,cpuacct"),
                r.join("cpu,cpuacct"),
                "execbox",
            )
        };
        // parents are created below mount points that must exist
        assert!(backend().is_err());
        for d in ["memory", "pids", "cpu,cpuacct"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        let b = backend().unwrap();
        assert_eq!(
            b.distinct().len(),
            3,
            "shared cpu,cpuacct mount is joined once"
        );
        let limits = Limits {
            memory_bytes: 100 << 20,
            pids: 7,
            cpu_millis: 500,
            ..Limits::default()
        };
        let cg = b.create("run-1", &limits).unwrap();
        let mem = r.join("memory/execbox/run-1");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "104857600"
        );
        assert_eq!(
            fs::read_to_string(r.join("pids/execbox/run-1/pids.max")).unwrap(),
            "7"
        );
        assert_eq!(
            fs::read_to_string(r.join("cpu,cpuacct/execbox/run-1/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        fs::write(mem.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        // a counter that cannot be read is an error, not a zero
        assert!(cg.stats().is_err(), "cpuacct.usage is missing");
        fs::write(r.join("cpu,cpuacct/execbox/run-1/cpuacct.usage"), "7\n").unwrap();
        let s = cg.stats().unwrap();
        assert_eq!((s.oom_kills, s.memory_peak, s.cpu_ns), (1, 4096, 7));
        cg.join(Pid::from_raw(42)).unwrap();
        assert_eq!(
            fs::read_to_string(r.join("pids/execbox/run-1/cgroup.procs")).unwrap(),
            "42"
        );
    }
}

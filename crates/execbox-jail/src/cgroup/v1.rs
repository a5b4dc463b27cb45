//! cgroup v1 backend: one directory per run in each of the memory, pids, cpu and cpuacct
//! hierarchies (which may share a mount, as `cpu,cpuacct` often does).
//!
//! Run cgroups are reused: creating and removing a v1 cgroup in three hierarchies (`mkdir`,
//! control files, `rmdir`, the kernel's offlining work) was about a tenth of the CPU a warm
//! run costs. A run's cgroup, once empty, has its counters reset and goes to a bounded list of
//! spares that the next run takes (see [`Spares`]). What a reused cgroup carries over is
//! documented in `docs/security.md` ("cgroups").

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// Whether the memory controller has swap accounting and swappiness files (read once: a
    /// `stat` of each per run showed in profiles).
    memsw: bool,
    swappiness: bool,
    spares: Arc<Spares>,
}

/// How many emptied run cgroups are kept for reuse.
const MAX_SPARES: usize = 64;

/// A reused cgroup may carry at most this much memory still charged to it once its tasks are
/// gone (page cache, kernel objects freed after an RCU grace period). Above it,
/// `memory.force_empty` reclaims what it can first; still above it, the cgroup is removed
/// rather than reused.
const MAX_RESIDUAL_BYTES: u64 = 1 << 20;

/// An emptied run cgroup waiting to be reused.
#[derive(Debug)]
struct Spare {
    dirs: Vec<PathBuf>,
    name: String,
    /// Limits written into it, so that only changed ones are written again.
    applied: Applied,
}

/// The limits a cgroup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    memory_bytes: u64,
    pids: u64,
}

/// The spares, shared by the backend and every run cgroup it made (a run cgroup returns itself
/// here when its run ends). Whoever drops the last reference removes the spares: the spawner
/// leaves no cgroup behind when it exits.
#[derive(Debug, Default)]
struct Spares(Mutex<Vec<Spare>>);

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        for s in self.lock().drain(..) {
            for d in &s.dirs {
                if let Err(e) = rmdir_retry(d) {
                    eprintln!("execbox-jail: removing a spare cgroup: {e}");
                }
            }
        }
    }
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
        let memory = memory.join(parent);
        let s = Self {
            memsw: memory.join("memory.memsw.limit_in_bytes").exists(),
            swappiness: memory.join("memory.swappiness").exists(),
            memory,
            pids: pids.join(parent),
            cpu: cpu.join(parent),
            cpuacct: cpuacct.join(parent),
            spares: Arc::default(),
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
        // Reset here, not when the last run ended: creating is done ahead of demand (the
        // pool), a run's end is on its request's path.
        let spare = self.spares.lock().pop();
        if let Some(spare) = spare {
            let run = self.run(spare.name, 0);
            match run.reset() {
                Ok(Some(oom_base)) => {
                    let run = RunCgroupV1 { oom_base, ..run };
                    return match run.apply(limits, Some(spare.applied)) {
                        Ok(applied) => Ok(Box::new(RunCgroupV1 {
                            applied: Some(applied),
                            ..run
                        })),
                        Err(e) => Err(e.with_cleanup(Box::new(run).remove())),
                    };
                }
                // Not reusable: removed, and a new one made below.
                _ => {
                    for d in &run.dirs {
                        if let Err(e) = remove_dir(d) {
                            eprintln!("execbox-jail: removing a spare cgroup: {e}");
                        }
                    }
                }
            }
        }
        let run = self.run(run_id.to_owned(), 0);
        for d in &run.dirs {
            if let Err(e) = mkdir_fresh(d) {
                return Err(e.with_cleanup(Box::new(run).remove()));
            }
        }
        match run.apply(limits, None) {
            Ok(applied) => Ok(Box::new(RunCgroupV1 {
                applied: Some(applied),
                ..run
            })),
            Err(e) => Err(e.with_cleanup(Box::new(run).remove())),
        }
    }
}

impl CgroupV1 {
    /// The run cgroup named `name` (not created here).
    fn run(&self, name: String, oom_base: u64) -> RunCgroupV1 {
        RunCgroupV1 {
            dirs: self.distinct().into_iter().map(|d| d.join(&name)).collect(),
            memory: self.memory.join(&name),
            pids: self.pids.join(&name),
            cpu: self.cpu.join(&name),
            cpuacct: self.cpuacct.join(&name),
            memsw: self.memsw,
            swappiness: self.swappiness,
            name,
            applied: None,
            oom_base,
            spares: self.spares.clone(),
        }
    }
}

#[derive(Debug)]
struct RunCgroupV1 {
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memsw: bool,
    swappiness: bool,
    name: String,
    /// None until the limits were written (a cgroup that failed half-way is never reused).
    applied: Option<Applied>,
    /// `oom_kill` of `memory.oom_control` when it was reset (the kernel cannot reset it).
    oom_base: u64,
    spares: Arc<Spares>,
}

impl RunCgroupV1 {
    /// Write the limits (those that differ from `had`, in a reused cgroup).
    fn apply(&self, l: &Limits, had: Option<Applied>) -> Result<Applied> {
        let want = Applied {
            memory_bytes: l.memory_bytes,
            pids: u64::from(l.pids),
        };
        if had.map(|h| h.memory_bytes) != Some(want.memory_bytes) {
            let mem = l.memory_bytes.to_string();
            // memsw (memory + swap) limits may not be below the memory limit: when the limit
            // shrinks, the memory limit is lowered first; when it grows, memsw first.
            let grows = had.is_some_and(|h| want.memory_bytes > h.memory_bytes);
            let memsw = self.memory.join("memory.memsw.limit_in_bytes");
            if self.memsw && grows {
                write_file(&memsw, &mem)?;
            }
            write_file(&self.memory.join("memory.limit_in_bytes"), &mem)?;
            // memsw equal to the memory limit means "no swap". Without the file the host has
            // no swap accounting: swappiness 0 is then the best available.
            if self.memsw && !grows {
                write_file(&memsw, &mem)?;
            }
        }
        if had.is_none() && self.swappiness {
            write_file(&self.memory.join("memory.swappiness"), "0")?;
        }
        if had.map(|h| h.pids) != Some(want.pids) {
            write_file(&self.pids.join("pids.max"), &l.pids.to_string())?;
        }
        const PERIOD_US: u64 = 100_000;
        if had.is_none() {
            write_file(&self.cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        }
        // Written every time: setting the quota also refills the period's runtime and ends any
        // throttling, so a reused cgroup's next run does not start out of CPU time.
        let quota = PERIOD_US * u64::from(l.cpu_millis) / 1000;
        write_file(
            &self.cpu.join("cpu.cfs_quota_us"),
            &quota.max(1000).to_string(),
        )?;
        Ok(want)
    }

    /// Make an emptied cgroup ready for another run: reset its counters, after reclaiming what
    /// is still charged to it if that is more than [`MAX_RESIDUAL_BYTES`] (the reclaim drains
    /// every CPU's page lists: too dear to do each time). `None` when it should be removed
    /// instead; the value is the `oom_kill` count to subtract.
    fn reset(&self) -> Result<Option<u64>> {
        if read_u64(&self.pids.join("pids.current"))? != 0 {
            return Ok(None);
        }
        let usage = self.memory.join("memory.usage_in_bytes");
        if read_u64(&usage)? > MAX_RESIDUAL_BYTES {
            write_file(&self.memory.join("memory.force_empty"), "0")?;
            if read_u64(&usage)? > MAX_RESIDUAL_BYTES {
                return Ok(None);
            }
        }
        // Writing 0 sets the peak to the current usage and the CPU time to zero.
        write_file(&self.memory.join("memory.max_usage_in_bytes"), "0")?;
        write_file(&self.cpuacct.join("cpuacct.usage"), "0")?;
        read_key(&self.memory.join("memory.oom_control"), "oom_kill").map(Some)
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
            oom_kills: read_key(&self.memory.join("memory.oom_control"), "oom_kill")?
                .saturating_sub(self.oom_base),
        })
    }

    fn kill_all(&self) -> Result<()> {
        // Every task is in every hierarchy; the pids one is the cheapest to read.
        kill_listed(&self.pids.join("cgroup.procs"))
    }

    fn remove(self: Box<Self>) -> Result<()> {
        let killed = self.kill_all();
        let mut first_err = killed.err();
        if first_err.is_none() {
            if let Some(applied) = self.applied {
                let mut spares = self.spares.lock();
                if spares.len() < MAX_SPARES {
                    // Emptied: kept as it is, reset by the `create` that takes it.
                    spares.push(Spare {
                        dirs: self.dirs.clone(),
                        name: self.name.clone(),
                        applied,
                    });
                    return Ok(());
                }
            }
        }
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

        // Emptied (no task listed: nothing is killed on this fake tree), reset and kept.
        fs::write(r.join("pids/execbox/run-1/cgroup.procs"), "").unwrap();
        fs::write(r.join("pids/execbox/run-1/pids.current"), "0\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "8192\n").unwrap();
        fs::write(r.join("pids/execbox/run-1/pids.max"), "untouched").unwrap();
        cg.remove().unwrap();
        assert_eq!(b.spares.lock().len(), 1, "kept for reuse");
        // The next run gets it with its counters reset and only changed limits rewritten.
        let again = Limits {
            memory_bytes: 200 << 20,
            ..limits
        };
        let cg = b.create("run-2", &again).unwrap();
        assert!(!r.join("memory/execbox/run-2").exists(), "run-1 was reused");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "209715200"
        );
        assert_eq!(
            fs::read_to_string(r.join("pids/execbox/run-1/pids.max")).unwrap(),
            "untouched"
        );
        let s = cg.stats().unwrap();
        assert_eq!(
            s.oom_kills, 0,
            "the earlier run's OOM kill is not this run's"
        );
        assert_eq!(
            fs::read_to_string(mem.join("memory.max_usage_in_bytes")).unwrap(),
            "0"
        );
        assert_eq!(
            fs::read_to_string(r.join("cpu,cpuacct/execbox/run-1/cpuacct.usage")).unwrap(),
            "0"
        );
        assert!(
            !mem.join("memory.force_empty").exists(),
            "a small residue is not worth a reclaim"
        );
        // A cgroup still charged for a task, or for more memory than a reclaim frees, is not
        // reused: the next run gets a new one.
        cg.remove().unwrap();
        fs::write(r.join("pids/execbox/run-1/pids.current"), "1\n").unwrap();
        let _cg = b.create("run-3", &again).unwrap();
        assert!(r.join("memory/execbox/run-3").exists());
        fs::write(r.join("pids/execbox/run-1/pids.current"), "0\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "4194304\n").unwrap();
        b.spares.lock().push(Spare {
            dirs: b.distinct().into_iter().map(|d| d.join("run-1")).collect(),
            name: "run-1".into(),
            applied: Applied {
                memory_bytes: 1,
                pids: 1,
            },
        });
        let _cg = b.create("run-4", &again).unwrap();
        assert_eq!(
            fs::read_to_string(mem.join("memory.force_empty")).unwrap(),
            "0",
            "a large residue was reclaimed first"
        );
        assert!(r.join("memory/execbox/run-4").exists());
    }
}

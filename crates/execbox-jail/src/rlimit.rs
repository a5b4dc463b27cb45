//! Resource limits: the second line behind the cgroup.
//!
//! Every one of the kernel's sixteen rlimits is set for the run, soft and hard, as nsjail does:
//! nothing is inherited from the spawner, which runs as root with whatever limits its service
//! manager gave it (an unlimited `RLIMIT_LOCKS` or `RLIMIT_SIGPENDING`, a raised
//! `RLIMIT_RTPRIO`). [`plan`] is exhaustive by construction and a unit test checks it.

use nix::sys::resource::{setrlimit, Resource};

use crate::child_error::{ChildError, Step, StepContext};
use crate::config::Limits;

/// Signals a run may have queued at once (`RLIMIT_SIGPENDING`): enough for any runtime's
/// timers and child notifications, far below the host's default (about 95,000 here).
pub const SIGPENDING: u64 = 1024;
/// File locks a run may hold (`RLIMIT_LOCKS`; Linux no longer enforces it, set for the record).
pub const LOCKS: u64 = 1024;

/// The rlimits of a run, as `(resource, soft, hard)`: all sixteen.
pub fn plan(l: &Limits, have_cgroup: bool) -> Vec<(Resource, u64, u64)> {
    let cpu_s = l.cpu_time_ms.div_ceil(1000).max(1);
    // With a memory cgroup the address-space limit only stops absurd mappings; without one it
    // is the limit. Runtimes reserve far more address space than they touch (numpy and
    // OpenBLAS; V8 about 700 MiB at start; the JVM its heap and code cache), so the floor is
    // 4 GiB: below it a Node program got much less memory than its limit (RangeError at
    // ~100 MiB of a 256 MiB limit, measured) while the cgroup, the real limit, never fired.
    let as_bytes = if have_cgroup {
        l.memory_bytes.saturating_mul(4).max(4 << 30)
    } else {
        l.memory_bytes
    };
    vec![
        // SIGXCPU at the soft limit, SIGKILL a second later.
        (Resource::RLIMIT_CPU, cpu_s, cpu_s + 1),
        (Resource::RLIMIT_AS, as_bytes, as_bytes),
        (Resource::RLIMIT_FSIZE, l.file_size_bytes, l.file_size_bytes),
        (Resource::RLIMIT_NOFILE, l.open_files, l.open_files),
        // Counted per host uid; each run has its own uid, so this is per run.
        (Resource::RLIMIT_NPROC, u64::from(l.pids), u64::from(l.pids)),
        (Resource::RLIMIT_CORE, 0, 0),
        (Resource::RLIMIT_STACK, 8 << 20, 8 << 20),
        (Resource::RLIMIT_MEMLOCK, 64 << 10, 64 << 10),
        (Resource::RLIMIT_MSGQUEUE, 0, 0),
        // The data segment (brk and private writable mappings) cannot exceed the address space.
        (Resource::RLIMIT_DATA, as_bytes, as_bytes),
        // Not enforced by Linux; set so that nothing reads as unlimited.
        (Resource::RLIMIT_RSS, as_bytes, as_bytes),
        (Resource::RLIMIT_LOCKS, LOCKS, LOCKS),
        (Resource::RLIMIT_SIGPENDING, SIGPENDING, SIGPENDING),
        // No real-time scheduling (ceiling 0) and no raising of priority (ceiling 20 - 0 =
        // nice 20, i.e. a run may only lower its own priority).
        (Resource::RLIMIT_RTPRIO, 0, 0),
        (Resource::RLIMIT_NICE, 0, 0),
        // Real-time CPU time, microseconds: moot with RTPRIO 0, bounded all the same.
        (
            Resource::RLIMIT_RTTIME,
            cpu_s * 1_000_000,
            (cpu_s + 1) * 1_000_000,
        ),
    ]
}

/// Apply [`plan`].
pub fn apply(l: &Limits, have_cgroup: bool) -> Result<(), ChildError> {
    for (r, soft, hard) in plan(l, have_cgroup) {
        setrlimit(r, soft, hard).step(Step::Rlimits, || format!("{r:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rounds_up_and_core_is_zero() {
        let l = Limits {
            cpu_time_ms: 1500,
            ..Limits::default()
        };
        let p = plan(&l, true);
        assert!(p.contains(&(Resource::RLIMIT_CPU, 2, 3)));
        assert!(p.contains(&(Resource::RLIMIT_CORE, 0, 0)));
        let nproc = p.iter().find(|x| x.0 == Resource::RLIMIT_NPROC).unwrap();
        assert_eq!(nproc.1, 64);
        let as_no_cg = plan(&l, false);
        assert!(as_no_cg.contains(&(Resource::RLIMIT_AS, l.memory_bytes, l.memory_bytes)));
    }

    #[test]
    fn every_rlimit_is_set_and_finite() {
        let p = plan(&Limits::default(), true);
        let all = [
            Resource::RLIMIT_AS,
            Resource::RLIMIT_CORE,
            Resource::RLIMIT_CPU,
            Resource::RLIMIT_DATA,
            Resource::RLIMIT_FSIZE,
            Resource::RLIMIT_LOCKS,
            Resource::RLIMIT_MEMLOCK,
            Resource::RLIMIT_MSGQUEUE,
            Resource::RLIMIT_NICE,
            Resource::RLIMIT_NOFILE,
            Resource::RLIMIT_NPROC,
            Resource::RLIMIT_RSS,
            Resource::RLIMIT_RTPRIO,
            Resource::RLIMIT_RTTIME,
            Resource::RLIMIT_SIGPENDING,
            Resource::RLIMIT_STACK,
        ];
        assert_eq!(p.len(), all.len());
        for r in all {
            let (_, soft, hard) = p.iter().find(|x| x.0 == r).expect("set");
            assert!(soft <= hard && *hard != libc::RLIM_INFINITY, "{r:?}");
        }
        assert!(p.contains(&(Resource::RLIMIT_RTPRIO, 0, 0)));
        assert!(p.contains(&(Resource::RLIMIT_NICE, 0, 0)));
    }
}

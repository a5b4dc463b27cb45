//! Resource limits: the second line behind the cgroup.

use nix::sys::resource::{setrlimit, Resource};

use crate::config::Limits;

/// The rlimits of a run, as `(resource, soft, hard)`.
pub fn plan(l: &Limits, have_cgroup: bool) -> Vec<(Resource, u64, u64)> {
    let cpu_s = l.cpu_time_ms.div_ceil(1000).max(1);
    // With a memory cgroup the address-space limit only stops absurd mappings (numpy and
    // OpenBLAS reserve far more virtual memory than they touch); without one it is the limit.
    let as_bytes = if have_cgroup {
        l.memory_bytes.saturating_mul(4).max(1 << 30)
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
    ]
}

/// Apply [`plan`].
pub fn apply(l: &Limits, have_cgroup: bool) -> Result<(), String> {
    for (r, soft, hard) in plan(l, have_cgroup) {
        setrlimit(r, soft, hard).map_err(|e| format!("setrlimit {r:?}: {e}"))?;
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
}

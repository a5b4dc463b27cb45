//! What isolation layers this host offers, and whether execbox will run here.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::cgroup;
use crate::config::HostConfig;
use crate::sys::{self, Forked};

/// One layer's availability.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// Stable name, e.g. `user_namespaces`.
    pub name: &'static str,
    /// Whether it is available.
    pub available: bool,
    /// Detail for the operator.
    pub detail: String,
    /// Whether execbox can run without it in degraded mode (false: never runs without it).
    pub degradable: bool,
}

/// The verdict of a host check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every layer is there.
    Full,
    /// Some degradable layer is missing: runs only with degraded mode allowed.
    DegradedOnly,
    /// A layer execbox cannot do without is missing.
    Refuse,
}

/// Everything `execbox check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Kernel release.
    pub kernel: String,
    /// Per layer.
    pub layers: Vec<Layer>,
    /// Cgroup backend that will be used (`v1`, `v2` or `none`).
    pub cgroup_backend: &'static str,
    /// Landlock ABI version (0: none).
    pub landlock_abi: i64,
    /// Overall verdict.
    pub verdict: Verdict,
}

impl HostReport {
    /// Names of missing layers.
    pub fn missing(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| !l.available)
            .map(|l| l.name.to_string())
            .collect()
    }

    /// Whether a layer is available.
    pub fn has(&self, name: &str) -> bool {
        self.layers.iter().any(|l| l.name == name && l.available)
    }
}

/// Probe the host. `deep` really forks namespaced children and creates a cgroup (for
/// `execbox check`); otherwise the cheap signs are read (sysctls, mounts), and a missing
/// namespace shows up as an error at the first prepare. Must run in a single-threaded process.
pub fn probe(host: &HostConfig, deep: bool) -> HostReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut layers = Vec::new();
    let mut add = |name, available, detail: String, degradable| {
        layers.push(Layer {
            name,
            available,
            detail,
            degradable,
        })
    };

    let root = nix::unistd::geteuid().is_root();
    add(
        "root",
        root,
        "the spawner needs root to map uids, create cgroups and mount".into(),
        false,
    );

    let ns_all = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET) as u64;
    add(
        "namespaces",
        !deep || try_clone(ns_all),
        "mount, pid, ipc, uts and network namespaces".into(),
        false,
    );
    add(
        "user_namespaces",
        if deep {
            try_clone(libc::CLONE_NEWUSER as u64)
        } else {
            read_num("/proc/sys/user/max_user_namespaces") > 0
        },
        "user namespace mapped to an unprivileged host uid per run".into(),
        true,
    );

    let backend = cgroup::detect(&host.cgroup_root, &host.mountinfo, &host.cgroup_parent);
    let (cg_name, cg_ok, cg_detail) = match backend {
        Ok(Some(b)) if !deep => (b.name(), true, format!("cgroup {} writable", b.name())),
        Ok(Some(b)) => match b.create("check-probe", &crate::config::Limits::default()) {
            Ok(run) => match run.remove() {
                Ok(()) => (b.name(), true, format!("cgroup {} writable", b.name())),
                Err(e) => (
                    "none",
                    false,
                    format!(
                        "cgroup {}: a probe cgroup could not be removed: {e}",
                        b.name()
                    ),
                ),
            },
            Err(e) => (
                "none",
                false,
                format!("cgroup {} not writable: {e}", b.name()),
            ),
        },
        Ok(None) => ("none", false, "no usable cgroup v1 or v2 hierarchy".into()),
        Err(e) => ("none", false, format!("cgroup detection failed: {e}")),
    };
    add("cgroups", cg_ok, cg_detail, true);

    let seccomp = fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false);
    add("seccomp", seccomp, "seccomp-bpf filters".into(), false);

    let abi = sys::landlock_abi();
    add(
        "landlock",
        abi >= 1,
        if abi >= 6 {
            format!("ABI {abi}: file access, abstract unix socket and signal scopes")
        } else if abi >= 1 {
            format!("ABI {abi}: file access only (no socket/signal scopes before ABI 6)")
        } else {
            "not enabled in this kernel (lsm= boot parameter)".into()
        },
        true,
    );

    add(
        "landlock_scopes",
        abi >= 6,
        "abstract unix socket and signal scoping (Landlock ABI 6, Linux 6.12)".into(),
        true,
    );

    let nnp = fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("NoNewPrivs:")))
        .unwrap_or(false);
    add("no_new_privs", nnp, "PR_SET_NO_NEW_PRIVS".into(), false);

    let setattr = Path::new("/proc/self/mountinfo").exists() && kernel_at_least(&kernel, 5, 12);
    add(
        "mount_setattr",
        setattr,
        "recursive read-only binds (Linux 5.12)".into(),
        false,
    );

    let verdict = if layers.iter().any(|l| !l.available && !l.degradable) {
        Verdict::Refuse
    } else if layers.iter().any(|l| !l.available) {
        Verdict::DegradedOnly
    } else {
        Verdict::Full
    };
    HostReport {
        kernel,
        layers,
        cgroup_backend: cg_name,
        landlock_abi: abi,
        verdict,
    }
}

/// Fork a child with `flags`; it exits at once. True when the kernel allowed it.
fn try_clone(flags: u64) -> bool {
    // SAFETY: the child calls only _exit, which is async-signal-safe, so this is sound even in
    // a multi-threaded caller.
    match unsafe { sys::clone3(flags, None) } {
        Ok(Forked::Child) => sys::exit_now(0),
        Ok(Forked::Parent { pid, .. }) => {
            matches!(
                nix::sys::wait::waitpid(pid, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            )
        }
        Err(_) => false,
    }
}

fn read_num(path: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let ma: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.44-fc-v657", 5, 12));
        assert!(kernel_at_least("5.12.0", 5, 12));
        assert!(!kernel_at_least("5.11.9", 5, 12));
        assert!(!kernel_at_least("garbage", 5, 12));
    }
}

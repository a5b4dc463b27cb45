//! What isolation layers this host offers, and whether execbox will run here.
//!
//! Layers fall in three groups (`docs/security.md`, section 4):
//!
//! - **required**: execbox never runs without them (root, the mount/pid/ipc/uts/net
//!   namespaces, seccomp, no_new_privs, `mount_setattr`);
//! - **essential**: without one, execbox runs only in degraded mode and every record says so
//!   (user namespaces, a writable cgroup hierarchy with memory, pids and cpu);
//! - **duplicate**: a newer kernel feature that duplicates a layer already present. It is used
//!   when present and reported, never required: when it is absent but every layer that covers
//!   it is present, its status is `covered` and the run is not degraded (Landlock's file rules
//!   duplicate the read-only mounts; its signal and abstract-socket scopes duplicate the pid and
//!   network namespaces and the per-run uid; `cgroup.kill` duplicates killing the pid
//!   namespace's init).
//!
//! The verdict is a pure function of what was probed ([`HostFacts`] → [`assess`]), so it is
//! unit-tested for the kernels people have without booting them.

use std::fs;

pub use execbox_proto::LayerName;
use serde::Serialize;

use crate::cgroup;
use crate::config::HostConfig;
use crate::sys::{self, Forked};

/// The newest Landlock ABI whose rights execbox's ruleset was written for. A newer kernel is
/// asked for no more than this (new rights are reviewed before they are used).
pub const LANDLOCK_ABI_MAX: i64 = 6;

/// How much execbox depends on a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Never runs without it.
    Required,
    /// Runs without it only in degraded mode (`--allow-degraded`); records then say degraded.
    Essential,
    /// Duplicates other layers: used when present, `covered` when absent and its covering
    /// layers are there; only `missing` (as an essential layer) when they are not.
    Duplicate,
}

/// A layer's state on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present and used.
    Ok,
    /// Absent, but every layer it duplicates is present: nothing is lost that another layer
    /// does not enforce.
    Covered,
    /// Absent and not covered.
    Missing,
}

/// One layer's availability.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// Stable name, e.g. `user_namespaces`.
    pub name: LayerName,
    /// `ok`, `covered` or `missing`.
    pub status: Status,
    /// Whether the layer itself is there (`status == ok`).
    pub available: bool,
    /// How much execbox depends on it.
    pub need: Need,
    /// For a duplicate layer: the layers that enforce what it would.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub covered_by: Vec<LayerName>,
    /// Detail for the operator.
    pub detail: String,
}

/// The verdict of a host check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every required and essential layer is there (duplicates may be `covered`).
    Full,
    /// An essential layer is missing: runs only with degraded mode allowed.
    DegradedOnly,
    /// A required layer is missing.
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
    /// Landlock ABI version of the kernel (0: none).
    pub landlock_abi: i64,
    /// Overall verdict.
    pub verdict: Verdict,
}

impl HostReport {
    /// Names of missing layers: those a run record lists (`covered` ones are not missing).
    pub fn missing(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| l.status == Status::Missing)
            .map(|l| l.name.to_string())
            .collect()
    }

    /// Whether a layer is present and used.
    pub fn has(&self, name: LayerName) -> bool {
        self.layers
            .iter()
            .any(|l| l.name == name && l.status == Status::Ok)
    }

    /// A layer by name.
    pub fn layer(&self, name: LayerName) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// What the cgroup probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFacts {
    /// `v1`, `v2` or `none`.
    pub backend: &'static str,
    /// A run cgroup with memory, pids and cpu limits can be created (or, for the cheap probe,
    /// the hierarchy was found and execbox's parent set up).
    pub usable: bool,
    /// What was found, for the operator.
    pub detail: String,
    /// `cgroup.kill` exists (cgroup v2, Linux 5.14).
    pub kill_file: bool,
    /// `memory.peak` exists (cgroup v2, Linux 5.19); v1 always has a peak.
    pub peak_file: bool,
}

/// Whether `mount_setattr(2)` can be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// The kernel has it and nothing blocks it.
    Available,
    /// `ENOSYS`: the kernel is too old.
    NotInKernel,
    /// `EPERM`: a seccomp filter (e.g. a container runtime's) refuses it.
    Blocked,
}

/// Everything the verdict depends on, probed by [`probe`] or made up by a test.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Effective uid 0.
    pub root: bool,
    /// Mount, pid, ipc, uts and network namespaces can be created.
    pub namespaces: bool,
    /// A user namespace can be created.
    pub user_namespaces: bool,
    /// The cgroup hierarchy.
    pub cgroups: CgroupFacts,
    /// seccomp-bpf is available.
    pub seccomp: bool,
    /// `PR_SET_NO_NEW_PRIVS` is available.
    pub no_new_privs: bool,
    /// `mount_setattr(2)` (Linux 5.12).
    pub mount_setattr: SyscallState,
    /// Landlock ABI (0: none or disabled).
    pub landlock_abi: i64,
}

/// Decide every layer's status and the verdict from probed facts.
pub fn assess(f: &HostFacts) -> HostReport {
    let mut layers = Vec::new();
    let mut add = |name, available, need, covered_by: &[LayerName], detail: String| {
        layers.push(Layer {
            name,
            status: if available {
                Status::Ok
            } else {
                Status::Missing
            },
            available,
            need,
            covered_by: covered_by.to_vec(),
            detail,
        })
    };

    add(
        LayerName::Root,
        f.root,
        Need::Required,
        &[],
        "the spawner needs root to map uids, create cgroups and mount".into(),
    );
    add(
        LayerName::Namespaces,
        f.namespaces,
        Need::Required,
        &[],
        "mount, pid, ipc, uts and network namespaces".into(),
    );
    add(
        LayerName::UserNamespaces,
        f.user_namespaces,
        Need::Essential,
        &[],
        "user namespace mapped to an unprivileged host uid per run".into(),
    );
    let mut cg_detail = f.cgroups.detail.clone();
    if f.cgroups.usable && f.cgroups.backend == "v2" && !f.cgroups.peak_file {
        cg_detail.push_str("; no memory.peak (Linux < 5.19): memory_peak_bytes reads 0");
    }
    add(
        LayerName::Cgroups,
        f.cgroups.usable,
        Need::Essential,
        &[],
        cg_detail,
    );
    add(
        LayerName::Seccomp,
        f.seccomp,
        Need::Required,
        &[],
        "seccomp-bpf filters".into(),
    );
    add(
        LayerName::NoNewPrivs,
        f.no_new_privs,
        Need::Required,
        &[],
        "PR_SET_NO_NEW_PRIVS".into(),
    );
    add(
        LayerName::MountSetattr,
        f.mount_setattr == SyscallState::Available,
        Need::Required,
        &[],
        match f.mount_setattr {
            SyscallState::Available => "recursive read-only binds (Linux 5.12; every other \
                 syscall the jail uses is older: clone3 with CLONE_INTO_CGROUP 5.7, openat2 5.6, \
                 close_range 5.9)"
                .into(),
            SyscallState::NotInKernel => {
                "recursive read-only binds need Linux 5.12 (ENOSYS): execbox needs 5.12 or later"
                    .into()
            }
            SyscallState::Blocked => "mount_setattr or pivot_root is refused (EPERM): a seccomp \
                 filter blocks it (in a container: Docker's default profile refuses pivot_root; \
                 use docker/seccomp.json)"
                .into(),
        },
    );

    let abi = f.landlock_abi;
    add(
        LayerName::Landlock,
        abi >= 1,
        Need::Duplicate,
        &[LayerName::Namespaces, LayerName::MountSetattr],
        match abi {
            a if a >= 1 => format!(
                "ABI {a}: writes only below /work and /tmp, a second check behind the read-only \
                 mounts{}",
                if a < 3 {
                    " (no truncate control before ABI 3)"
                } else {
                    ""
                }
            ),
            _ => "not enabled in this kernel (lsm= boot parameter) or blocked: the read-only, \
                  nosuid, nodev mounts alone keep the run's writes in /work and /tmp"
                .into(),
        },
    );
    add(
        LayerName::LandlockScopes,
        abi >= 6,
        Need::Duplicate,
        &[LayerName::Namespaces],
        if abi >= 6 {
            "abstract unix sockets and signals scoped to the run (Landlock ABI 6)".into()
        } else {
            "Landlock ABI 6 (Linux 6.12) scopes abstract unix sockets and signals; the run's \
             own network namespace (abstract sockets) and pid namespace plus its distinct host \
             uid (signals) already confine both"
                .into()
        },
    );
    let kill_detail = if f.cgroups.kill_file {
        "cgroup.kill: the run's cgroup is killed atomically, racing forks included".to_string()
    } else if f.cgroups.backend == "v2" {
        "no cgroup.kill (Linux < 5.14): teardown kills the pid namespace's init, which takes \
         every process of the run with it, then SIGKILLs what cgroup.procs lists"
            .into()
    } else {
        format!(
            "no cgroup.kill on cgroup {}: teardown kills the pid namespace's init, which takes \
             every process of the run with it, then SIGKILLs what cgroup.procs lists",
            f.cgroups.backend
        )
    };
    add(
        LayerName::CgroupKill,
        f.cgroups.kill_file,
        Need::Duplicate,
        &[LayerName::Namespaces],
        kill_detail,
    );

    // A duplicate is covered only when every layer it duplicates is present.
    let ok: Vec<LayerName> = layers
        .iter()
        .filter(|l| l.status == Status::Ok)
        .map(|l| l.name)
        .collect();
    for l in &mut layers {
        if l.need == Need::Duplicate
            && l.status == Status::Missing
            && l.covered_by.iter().all(|c| ok.contains(c))
        {
            l.status = Status::Covered;
        }
    }

    let verdict = verdict(&layers);
    HostReport {
        kernel: f.kernel.clone(),
        layers,
        cgroup_backend: if f.cgroups.usable {
            f.cgroups.backend
        } else {
            "none"
        },
        landlock_abi: abi,
        verdict,
    }
}

/// Refuse when a required layer is missing; degraded only when any other layer is missing
/// (an essential one, or a duplicate whose covering layers are not all there); else full.
fn verdict(layers: &[Layer]) -> Verdict {
    let missing = |need: Option<Need>| {
        layers
            .iter()
            .any(|l| l.status == Status::Missing && need.is_none_or(|n| l.need == n))
    };
    if missing(Some(Need::Required)) {
        Verdict::Refuse
    } else if missing(None) {
        Verdict::DegradedOnly
    } else {
        Verdict::Full
    }
}

/// Probe the host. `deep` really forks namespaced children and creates a cgroup (for
/// `execbox check`); otherwise the cheap signs are read (sysctls, mounts), and a missing
/// namespace shows up as an error at the first prepare. Must run in a single-threaded process.
pub fn probe(host: &HostConfig, deep: bool) -> HostReport {
    assess(&probe_facts(host, deep))
}

/// The probing half of [`probe`].
pub fn probe_facts(host: &HostConfig, deep: bool) -> HostFacts {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let ns_all = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET) as u64;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let user_namespaces = if deep {
        try_clone(libc::CLONE_NEWUSER as u64)
    } else {
        read_num("/proc/sys/user/max_user_namespaces") > 0
    };
    // The jail creates its namespaces together with a user namespace when it has one
    // (`Jailer::prepare`), so probe them the same way: the mount, pid, ipc, uts and network
    // namespaces then need no capability in the caller's namespace (a container's root without
    // CAP_SYS_ADMIN). Without user namespaces the jail clones them as root and needs it.
    let userns_flag = if user_namespaces {
        libc::CLONE_NEWUSER as u64
    } else {
        0
    };
    HostFacts {
        root: nix::unistd::geteuid().is_root(),
        namespaces: !deep || try_clone(ns_all | userns_flag),
        user_namespaces,
        cgroups: probe_cgroups(host, deep),
        seccomp: status.lines().any(|l| l.starts_with("Seccomp:")),
        no_new_privs: status.lines().any(|l| l.starts_with("NoNewPrivs:")),
        mount_setattr: probe_mount_setattr(user_namespaces),
        landlock_abi: sys::landlock_abi(),
        kernel,
    }
}

fn probe_cgroups(host: &HostConfig, deep: bool) -> CgroupFacts {
    let none = |detail: String| CgroupFacts {
        backend: "none",
        usable: false,
        detail,
        kill_file: false,
        peak_file: false,
    };
    let b = match cgroup::detect(&host.cgroup_root, &host.mountinfo, &host.cgroup_parent) {
        Ok(Some(b)) => b,
        Ok(None) => return none("no usable cgroup v1 or v2 hierarchy".into()),
        Err(e) => return none(format!("cgroup detection failed: {e}")),
    };
    let name = b.name();
    // detect() created execbox's parent cgroup; on v2 it is a non-root cgroup with the memory
    // controller on, so it has every interface file a run's cgroup will have.
    let parent = host.cgroup_root.join(&host.cgroup_parent);
    let v2 = name == "v2";
    let facts = |usable, detail| CgroupFacts {
        backend: name,
        usable,
        detail,
        kill_file: v2 && parent.join("cgroup.kill").exists(),
        peak_file: !v2 || parent.join("memory.peak").exists(),
    };
    if !deep {
        return facts(true, format!("cgroup {name} writable"));
    }
    // Named like a run's cgroup (`j<pid>-…`): probes of concurrent processes (several
    // `execbox serve` start with this deep probe) do not collide, and one left behind by a
    // killed prober is reaped as stale.
    let probe_name = format!("j{}-check-probe", std::process::id());
    match b.create(&probe_name, &crate::config::Limits::default()) {
        Ok(run) => match run.remove() {
            Ok(()) => facts(
                true,
                format!("cgroup {name} writable (memory, pids and cpu limits)"),
            ),
            Err(e) => facts(
                false,
                format!("cgroup {name}: a probe cgroup could not be removed: {e}"),
            ),
        },
        Err(e) => facts(false, format!("cgroup {name} not writable: {e}")),
    }
}

/// Whether the jail can call `mount_setattr(2)` and `pivot_root(2)`. The jail calls them in its own user and mount
/// namespaces when it has a user namespace, so an `EPERM` in the caller (a container's root
/// without CAP_SYS_ADMIN is not allowed to change its own mounts) is asked again there; only
/// an `EPERM` there too means a seccomp filter refuses the call. Without user namespaces the
/// jail calls it as root in the caller's namespaces, and the direct answer is the one.
fn probe_mount_setattr(user_namespaces: bool) -> SyscallState {
    const OK: i32 = 0;
    const NOT_IN_KERNEL: i32 = 1;
    const BLOCKED: i32 = 2;
    let state = |r: Result<(), nix::errno::Errno>| match r {
        Ok(()) => SyscallState::Available,
        Err(nix::errno::Errno::ENOSYS) => SyscallState::NotInKernel,
        Err(_) => SyscallState::Blocked,
    };
    // pivot_root rides along: the jail needs it as much, and Docker's default seccomp profile
    // refuses it even where it allows mount and mount_setattr.
    let probe = || sys::mount_setattr_probe().and_then(|()| sys::pivot_root_probe());
    let direct = probe();
    if direct != Err(nix::errno::Errno::EPERM) || !user_namespaces {
        return state(direct);
    }
    // SAFETY: the child makes one raw system call on stack data and calls _exit, both
    // async-signal-safe, so this is sound even in a multi-threaded caller.
    match unsafe { sys::clone3((libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64, None) } {
        Ok(Forked::Child) => sys::exit_now(match probe() {
            Ok(()) => OK,
            Err(nix::errno::Errno::ENOSYS) => NOT_IN_KERNEL,
            Err(_) => BLOCKED,
        }),
        Ok(Forked::Parent { pid, .. }) => match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, OK)) => SyscallState::Available,
            Ok(nix::sys::wait::WaitStatus::Exited(_, NOT_IN_KERNEL)) => SyscallState::NotInKernel,
            _ => SyscallState::Blocked,
        },
        Err(_) => state(direct),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host where everything execbox uses exists, on `kernel` with Landlock `abi`.
    fn host(kernel: &str, abi: i64, backend: &'static str) -> HostFacts {
        let (major, minor) = {
            let mut it = kernel.split(|c: char| !c.is_ascii_digit());
            let ma: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let mi: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (ma, mi)
        };
        let v2 = backend == "v2";
        HostFacts {
            kernel: kernel.into(),
            root: true,
            namespaces: true,
            user_namespaces: true,
            cgroups: CgroupFacts {
                backend,
                usable: true,
                detail: format!("cgroup {backend} writable"),
                kill_file: v2 && (major, minor) >= (5, 14),
                peak_file: !v2 || (major, minor) >= (5, 19),
            },
            seccomp: true,
            no_new_privs: true,
            mount_setattr: if (major, minor) >= (5, 12) {
                SyscallState::Available
            } else {
                SyscallState::NotInKernel
            },
            landlock_abi: abi,
        }
    }

    fn status(r: &HostReport, name: LayerName) -> Status {
        r.layer(name)
            .unwrap_or_else(|| panic!("no layer {name}"))
            .status
    }

    #[test]
    fn the_kernels_people_have_get_full_isolation() {
        for (kernel, abi) in [
            ("6.1.0-28-amd64", 2),        // Debian 12
            ("5.15.0-125-generic", 1),    // Ubuntu 22.04
            ("6.8.0-49-generic", 4),      // Ubuntu 24.04
            ("5.14.0-503.el9.x86_64", 0), // RHEL 9 without Landlock in lsm=
            ("6.6.56+", 3),               // GKE/COS
        ] {
            let r = assess(&host(kernel, abi, "v2"));
            assert_eq!(r.verdict, Verdict::Full, "{kernel}: {:#?}", r.layers);
            assert!(r.missing().is_empty(), "{kernel}: {:?}", r.missing());
            assert_eq!(
                status(&r, LayerName::LandlockScopes),
                Status::Covered,
                "{kernel}"
            );
            assert!(!r.has(LayerName::LandlockScopes));
            assert_eq!(r.has(LayerName::Landlock), abi >= 1, "{kernel}");
            assert_eq!(r.cgroup_backend, "v2");
        }
        let r = assess(&host("5.15.0-125-generic", 1, "v2"));
        let cg = r.layer(LayerName::Cgroups).unwrap();
        assert!(cg.detail.contains("memory.peak"), "{}", cg.detail);
        assert_eq!(status(&r, LayerName::CgroupKill), Status::Ok);
        let r = assess(&host("5.14.0-503.el9.x86_64", 0, "v2"));
        assert_eq!(status(&r, LayerName::Landlock), Status::Covered);
    }

    #[test]
    fn a_new_kernel_has_every_layer() {
        let r = assess(&host("6.18.44", 7, "v2"));
        assert_eq!(r.verdict, Verdict::Full);
        assert!(r.layers.iter().all(|l| l.status == Status::Ok), "{r:#?}");
        // v1 has no cgroup.kill: covered by the pid namespace
        let r = assess(&host("6.18.44", 7, "v1"));
        assert_eq!(r.verdict, Verdict::Full);
        assert_eq!(status(&r, LayerName::CgroupKill), Status::Covered);
        assert!(r
            .layer(LayerName::Cgroups)
            .unwrap()
            .detail
            .find("peak")
            .is_none());
    }

    #[test]
    fn a_missing_essential_layer_degrades_and_a_required_one_refuses() {
        let mut f = host("6.1.0-28-amd64", 2, "v2");
        f.user_namespaces = false;
        let r = assess(&f);
        assert_eq!(r.verdict, Verdict::DegradedOnly);
        assert_eq!(r.missing(), vec!["user_namespaces"]);

        let mut f = host("6.1.0-28-amd64", 2, "v2");
        f.cgroups.usable = false;
        f.cgroups.kill_file = false;
        let r = assess(&f);
        assert_eq!(r.verdict, Verdict::DegradedOnly);
        assert_eq!(r.missing(), vec!["cgroups"], "cgroup_kill stays covered");
        assert_eq!(r.cgroup_backend, "none");

        for breaks in [
            |f: &mut HostFacts| f.root = false,
            |f: &mut HostFacts| f.namespaces = false,
            |f: &mut HostFacts| f.seccomp = false,
            |f: &mut HostFacts| f.no_new_privs = false,
            |f: &mut HostFacts| f.mount_setattr = SyscallState::Blocked,
        ] {
            let mut f = host("6.8.0-49-generic", 4, "v2");
            breaks(&mut f);
            assert_eq!(assess(&f).verdict, Verdict::Refuse);
        }
        // Debian 11 (5.10): no mount_setattr, so no execbox
        let r = assess(&host("5.10.0-33-amd64", 0, "v2"));
        assert_eq!(r.verdict, Verdict::Refuse);
        assert!(r.missing().contains(&"mount_setattr".to_string()));
    }

    #[test]
    fn a_duplicate_is_missing_when_what_covers_it_is_missing() {
        let mut f = host("6.1.0-28-amd64", 2, "v2");
        f.namespaces = false;
        let r = assess(&f);
        assert_eq!(r.verdict, Verdict::Refuse);
        for l in [LayerName::LandlockScopes, LayerName::Namespaces] {
            assert_eq!(status(&r, l), Status::Missing, "{l}");
        }
        // present landlock stays ok whatever else is missing
        assert_eq!(status(&r, LayerName::Landlock), Status::Ok);
    }

    #[test]
    fn report_serialises_status_and_coverage() {
        let r = assess(&host("6.1.0-28-amd64", 2, "v2"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verdict"], "full");
        let scopes = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "landlock_scopes")
            .unwrap();
        assert_eq!(scopes["status"], "covered");
        assert_eq!(scopes["need"], "duplicate");
        assert_eq!(scopes["available"], false);
        assert_eq!(scopes["covered_by"], serde_json::json!(["namespaces"]));
    }
}

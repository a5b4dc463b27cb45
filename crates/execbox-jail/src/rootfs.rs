//! The jail's file system, built in the child inside its new mount namespace: a tmpfs root,
//! recursive read-only binds of what the runtime needs, a generated minimal `/etc`, fresh
//! read-only `/proc`, a minimal `/dev`, capped tmpfs `/tmp` and `/work`, then `pivot_root` and
//! detach of the old root.

use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, sethostname};

use crate::child_error::{ChildError, MaybeErrno, Step, StepContext};
use crate::config::{BindMount, Limits, SANDBOX_ID};
use crate::sys;

/// System paths exposed read-only when the host has them (as symlinks where the host has
/// symlinks, as on merged-/usr Debian).
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
];
/// Single host files bound read-only into the generated `/etc`.
const ETC_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/localtime"];
/// `/proc` files hidden behind `/dev/null`.
const PROC_MASKED: &[&str] = &[
    "cmdline",
    "kcore",
    "keys",
    "kallsyms",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "sysrq-trigger",
];
/// Device nodes bound from the host; nothing else exists in `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "random", "urandom"];

/// Step error: which operation on which path, and the errno.
type StepResult = Result<(), ChildError>;

/// A failed operation while building the root: [`Step::RootFs`] with what and the errno.
fn ctx<T, E: MaybeErrno>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, ChildError> {
    r.step(Step::RootFs, what)
}

fn bind(src: &Path, dst: &Path) -> StepResult {
    ctx(
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind {} -> {}", src.display(), dst.display()),
    )
}

fn tmpfs(dst: &Path, opts: &str, flags: MsFlags) -> StepResult {
    ctx(
        mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(opts)),
        || format!("mount tmpfs on {}", dst.display()),
    )
}

fn mkdir_p(p: &Path) -> StepResult {
    ctx(fs::create_dir_all(p), || format!("mkdir {}", p.display()))
}

fn touch(p: &Path) -> StepResult {
    ctx(
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(p),
        || format!("create {}", p.display()),
    )
    .map(drop)
}

fn readonly(p: &Path, nodev: bool) -> StepResult {
    let s = p
        .to_str()
        .ok_or_else(|| ChildError::new(Step::RootFs, format!("non-UTF-8 path {}", p.display())))?;
    ctx(sys::make_readonly_recursive(s, nodev), || {
        format!("mount_setattr ro {s}")
    })
}

/// Put `host` into the new root at the same path: a symlink stays a symlink, a directory or
/// file is bound read-only.
fn expose(root: &Path, host: &Path, target: &Path) -> StepResult {
    let dst = root.join(target.strip_prefix("/").unwrap_or(target));
    let meta = match fs::symlink_metadata(host) {
        Ok(m) => m,
        Err(_) => return Ok(()), // the host does not have it: nothing to expose
    };
    if meta.file_type().is_symlink() {
        let link = ctx(fs::read_link(host), || {
            format!("readlink {}", host.display())
        })?;
        if let Some(parent) = dst.parent() {
            mkdir_p(parent)?;
        }
        return ctx(symlink(&link, &dst), || {
            format!("symlink {}", dst.display())
        });
    }
    if meta.is_dir() {
        mkdir_p(&dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            mkdir_p(parent)?;
        }
        touch(&dst)?;
    }
    bind(host, &dst)?;
    readonly(&dst, true)
}

/// What kind of process the root is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// A run: `/proc` read-only with host information masked.
    Run,
    /// A template (warm path): `/proc` writable and unmasked, because the template writes its
    /// children's uid/gid maps there and the kernel lets a child mount its own `/proc` only
    /// where an unobstructed one is already visible. No user code ever runs with this root:
    /// each child covers `/proc`, `/tmp` and `/work` with its own ([`enter_template_root`])
    /// before it gets any.
    Template,
}

/// Build the root at `root` (an empty directory on the host, private to this mount namespace),
/// then pivot into it. On return the process's `/` is the jail root and the host's root is gone.
pub fn build(
    root: &Path,
    binds: &[BindMount],
    limits: &Limits,
    owner: u32,
    kind: RootKind,
) -> StepResult {
    // Nothing below may propagate back to the host's mount namespace.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "make / private".into(),
    )?;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    tmpfs(root, "size=1m,nr_inodes=512,mode=0755", nosuid_nodev)?;

    for p in SYSTEM_PATHS {
        expose(root, Path::new(p), Path::new(p))?;
    }
    for p in ETC_FILES {
        expose(root, Path::new(p), Path::new(p))?;
    }
    for b in binds {
        if !b.target.is_absolute() {
            return Err(ChildError::new(
                Step::RootFs,
                format!("bind target {} is not absolute", b.target.display()),
            ));
        }
        if fs::symlink_metadata(&b.source).is_err() {
            return Err(ChildError::new(
                Step::RootFs,
                format!("bind source {} does not exist", b.source.display()),
            ));
        }
        expose(root, &b.source, &b.target)?;
    }
    write_etc(root)?;

    // A fresh proc for the new pid namespace, read-only; no /sys at all.
    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir)?;
    match kind {
        RootKind::Run => run_proc(&proc_dir)?,
        RootKind::Template => ctx(
            mount(
                Some("proc"),
                &proc_dir,
                Some("proc"),
                nosuid_nodev | MsFlags::MS_NOEXEC,
                None::<&str>,
            ),
            || "mount proc".into(),
        )?,
    }

    build_dev(root)?;
    scratch(root, limits, owner)?;

    pivot(root)?;
    // The root tmpfs itself becomes read-only; /tmp and /work are separate mounts and stay
    // writable. (Non-recursive on purpose.)
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | nosuid_nodev,
            None::<&str>,
        ),
        || "remount / read-only".into(),
    )?;
    ctx(sethostname("execbox"), || "sethostname".into())
}

/// A run's `/proc` at `dir`: read-only, for the run's pid namespace, with host information a
/// run has no business reading masked with /dev/null, as container runtimes do.
fn run_proc(dir: &Path) -> StepResult {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    ctx(
        mount(Some("proc"), dir, Some("proc"), flags, None::<&str>),
        || "mount proc".into(),
    )?;
    for f in PROC_MASKED {
        let p = dir.join(f);
        if p.exists() {
            bind(Path::new("/dev/null"), &p)?;
            readonly(&p, false)?;
        }
    }
    Ok(())
}

/// Fresh, empty `/tmp` and `/work` below `root`, owned by the run's user, sized by `limits`.
fn scratch(root: &Path, limits: &Limits, owner: u32) -> StepResult {
    for (name, size, mode) in [
        ("tmp", limits.tmp_bytes, "1777"),
        ("work", limits.work_bytes, "0755"),
    ] {
        let d = root.join(name);
        mkdir_p(&d)?;
        let opts = format!(
            "size={size},nr_inodes={},mode={mode},uid={owner},gid={owner}",
            limits.inodes
        );
        tmpfs(&d, &opts, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    }
    Ok(())
}

/// A template's child (warm path), in its own mount namespace, a copy of the template's: the
/// template's root is already a run's root (the same read-only binds, `/etc`, `/dev`; its
/// tmpfs read-only), so the child keeps it and covers only what is the template's own: its
/// `/proc` (writable, unmasked, of the template's pid namespace) with a run's `/proc` of the
/// child's, and `/tmp` and `/work` with fresh ones, after making the three covered mounts
/// read-only in its copy. The covered mounts cannot be uncovered:
/// copied into a less privileged mount namespace they are locked to their parents, and the
/// run has no capability and may not call `umount2` (seccomp). Building a whole new root and
/// pivoting into it, as a cold jail does, cost each child about forty mounts and their
/// teardown, a tenth of a warm run's CPU.
pub fn enter_template_root(limits: &Limits, owner: u32) -> StepResult {
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "make / private".into(),
    )?;
    // What gets covered is made read-only first (in this namespace's copy only), so that no
    // writable mount but the run's own /tmp and /work exists in it at all.
    for p in ["/proc", "/tmp", "/work"] {
        readonly(Path::new(p), true)?;
    }
    run_proc(Path::new("/proc"))?;
    scratch(Path::new("/"), limits, owner)?;
    ctx(chdir("/"), || "chdir /".into())?;
    ctx(sethostname("execbox"), || "sethostname".into())
}

fn write_etc(root: &Path) -> StepResult {
    let etc = root.join("etc");
    mkdir_p(&etc)?;
    let id = SANDBOX_ID;
    let files = [
        (
            "passwd",
            format!("root:x:0:0::/:/bin/false\nsandbox:x:{id}:{id}::/tmp:/bin/false\n"),
        ),
        ("group", format!("root:x:0:\nsandbox:x:{id}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ("hostname", "execbox\n".to_owned()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n".to_owned(),
        ),
    ];
    for (name, text) in files {
        let p = etc.join(name);
        ctx(fs::write(&p, text), || format!("write {}", p.display()))?;
    }
    Ok(())
}

fn build_dev(root: &Path) -> StepResult {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    tmpfs(
        &dev,
        "size=64k,nr_inodes=64,mode=0755",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for d in DEVICES {
        let dst = dev.join(d);
        touch(&dst)?;
        bind(&Path::new("/dev").join(d), &dst)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(target, dev.join(name)), || {
            format!("symlink /dev/{name}")
        })?;
    }
    // Read-only, but not nodev: the four bound nodes must stay usable.
    readonly(&dev, false)
}

/// `pivot_root(".", ".")` then detach the old root stacked on top: the host tree becomes
/// unreachable, not just hidden.
fn pivot(root: &Path) -> StepResult {
    const S: Step = Step::PivotRoot;
    chdir(root).step(S, || format!("chdir {}", root.display()))?;
    sys::pivot_root(".", ".").step(S, || "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).step(S, || "detach old root".into())?;
    chdir("/").step(S, || "chdir /".into())
}

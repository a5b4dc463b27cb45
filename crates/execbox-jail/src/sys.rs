//! Raw Linux syscalls that neither `nix` nor `libc` wrap safely. Every `unsafe` block of the
//! crate's kernel interface lives here, each behind a small function. The module is private to
//! the crate: functions that are sound only under a precondition the type system cannot see
//! (`clone3` needs a single-threaded caller; `close_from` and `dup_to` act on descriptor
//! numbers other code may own) are `unsafe fn` with a `# Safety` section, and the crate's public
//! API upholds those preconditions itself ([`crate::Jailer`] checks that the process is
//! single-threaded before each clone).
//!
//! Written by hand because `nix` 0.31 has no `clone3` (with `CLONE_PIDFD`/`CLONE_INTO_CGROUP`),
//! `mount_setattr`, `openat2`, `close_range` or `pidfd_send_signal`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// `struct clone_args` of `clone3(2)` (the fields up to `cgroup`, `CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in every `libc` release.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of a `clone3` we are on.
#[derive(Debug)]
pub enum Forked {
    /// The parent, with the child's pid and a pidfd for it.
    Parent {
        /// Child pid in the caller's pid namespace.
        pid: Pid,
        /// pidfd referring to the child.
        pidfd: OwnedFd,
    },
    /// The child.
    Child,
}

/// `clone3` without `CLONE_VM`: a fork with new namespaces, a pidfd and optionally straight into
/// a cgroup (`cgroup_fd`).
///
/// # Safety
///
/// The calling process must be single-threaded ([`single_threaded`]), or the child must call
/// nothing but async-signal-safe functions (such as `_exit`) before it execs or exits: the child
/// is a copy of the calling thread alone, and ordinary Rust code (allocation included) could
/// deadlock on a lock another thread held at the time of the clone.
pub unsafe fn clone3(ns_flags: u64, cgroup_fd: Option<BorrowedFd<'_>>) -> Result<Forked, Errno> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: ns_flags | libc::CLONE_PIDFD as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid, initialised clone_args of the size passed; `pidfd` outlives the
    // call. Without CLONE_VM the child gets a copy-on-write copy of the address space, so no
    // memory is shared. The caller guarantees the process is single-threaded (documented above),
    // so no lock can be held by a thread that does not exist in the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(pid as i32),
            // SAFETY: with CLONE_PIDFD the kernel stored a fresh fd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &str, put_old: &str) -> Result<(), Errno> {
    let n = cstr(new_root)?;
    let o = cstr(put_old)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
    Errno::result(r).map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Make the mount at `path` and every mount below it read-only, nosuid and nodev
/// (`mount_setattr(AT_RECURSIVE)`, Linux 5.12). Unlike a remount, this reaches submounts.
pub fn make_readonly_recursive(path: &str, nodev: bool) -> Result<(), Errno> {
    let p = cstr(path)?;
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | if nodev { MOUNT_ATTR_NODEV } else { 0 },
        ..MountAttr::default()
    };
    // SAFETY: `p` is a valid C string, `attr` a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Whether `mount_setattr(2)` can be called, without changing anything: a call on a bad
/// descriptor fails with `EBADF` (or `EINVAL`) when the kernel has it, `ENOSYS` when it does
/// not, and `EPERM` when a seccomp filter refuses it. `Ok` for any answer but those two.
pub fn mount_setattr_probe() -> Result<(), Errno> {
    let mut attr = MountAttr::default();
    // SAFETY: a valid empty C string and a valid mount_attr of the size passed; fd -1 makes the
    // call fail before it could act on any mount.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    match Errno::result(r) {
        Err(e @ (Errno::ENOSYS | Errno::EPERM)) => Err(e),
        _ => Ok(()),
    }
}

/// Whether `pivot_root(2)` may be called (Docker's default seccomp profile refuses it, even to
/// a container with CAP_SYS_ADMIN): a call on a path that does not exist fails with `ENOENT`
/// without acting. `EPERM` when a seccomp filter refuses it, or when the caller may not change
/// its mounts (no CAP_SYS_ADMIN in its mount namespace's user namespace).
pub fn pivot_root_probe() -> Result<(), Errno> {
    let nowhere = c"/nonexistent/execbox-pivot-root-probe";
    // SAFETY: two valid C strings naming a path that does not exist, so the call fails before
    // it could act on any mount.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, nowhere.as_ptr(), nowhere.as_ptr()) };
    match Errno::result(r) {
        Err(e @ (Errno::ENOSYS | Errno::EPERM)) => Err(e),
        _ => Ok(()),
    }
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Create `name` below `dir` for writing, refusing anything that resolves outside `dir`
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | …`), failing if it exists.
pub fn create_beneath(dir: BorrowedFd<'_>, name: &str, mode: u32) -> Result<OwnedFd, Errno> {
    let n = cstr(name)?;
    let mut how = OpenHow {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW)
            as u64,
        mode: u64::from(mode),
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    // SAFETY: `n` is a valid C string and `how` a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            n.as_ptr(),
            std::ptr::addr_of_mut!(how),
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Close every descriptor from `first` upwards (`close_range`, Linux 5.9).
///
/// # Safety
///
/// No descriptor at or above `first` may be used afterwards by anything in the process (no
/// `OwnedFd`, `File` or library state may still refer to one): only the jail child, which owns
/// every descriptor it has and is about to `execve`, calls this.
pub unsafe fn close_from(first: RawFd) -> Result<(), Errno> {
    // SAFETY: close_range takes plain integers; descriptors at or above `first` are not used by
    // the caller afterwards (the caller moved what it keeps below `first`).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0u32) };
    Errno::result(r).map(drop)
}

/// Send `sig` to the process behind `pidfd` (no pid-reuse race).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: a valid pidfd and a null siginfo pointer, as pidfd_send_signal(2) allows.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    Errno::result(r).map(drop)
}

/// `dup2(old, new)` where `new` is a specific number the caller reserves (0, 1, 2, …).
/// The new descriptor does not have `FD_CLOEXEC`.
///
/// # Safety
///
/// Whatever `new` referred to is closed silently: the caller must own that number (nothing
/// else in the process may hold it as an `OwnedFd`, `File` or library descriptor).
pub unsafe fn dup_to(old: RawFd, new: RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 takes plain integers; the caller owns `new`'s slot in this process.
    Errno::result(unsafe { libc::dup2(old, new) }).map(drop)
}

/// Duplicate `fd` to the lowest free number at or above `min`, with `FD_CLOEXEC`.
pub fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller owns; the result is a new descriptor.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// Set or clear `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<(), Errno> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor the caller owns.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}

/// Exit immediately without running destructors or atexit handlers (child side).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Whether the calling process has exactly one thread (`num_threads` of `/proc/self/stat`).
pub fn single_threaded() -> Result<bool, Errno> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|_| Errno::EIO)?;
    // Field 20, counted after the parenthesised command name (which may hold spaces).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(Errno::EIO)?;
    let threads: u64 = after
        .split_whitespace()
        .nth(17)
        .and_then(|t| t.parse().ok())
        .ok_or(Errno::EIO)?;
    Ok(threads == 1)
}

/// Landlock ABI version the kernel offers (0 when Landlock is off or absent).
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attr, size 0 and the VERSION flag the call only returns a number.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    r.max(0)
}

fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// Set `sig`'s disposition to ignore (`ignore`) or default.
fn set_disposition(sig: libc::c_int, ignore: bool) -> Result<(), Errno> {
    let handler = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL are not function pointers into this process, so no handler
    // code can run; signal() only changes the kernel's disposition table for `sig`.
    let r = unsafe { libc::signal(sig, handler) };
    if r == libc::SIG_ERR {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Ignore SIGTERM, SIGINT and SIGHUP (the spawner: it ends on stdin EOF or its parent's death,
/// not on signals meant for the server's process group or cgroup).
pub fn ignore_termination_signals() -> Result<(), Errno> {
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        set_disposition(s, true)?;
    }
    Ok(())
}

/// Give the payload a clean slate: every catchable signal at its default disposition (execve
/// keeps "ignored" ones: Rust ignores SIGPIPE, the spawner SIGTERM/SIGINT/SIGHUP) and an
/// empty signal mask.
pub fn reset_signals() -> Result<(), Errno> {
    for s in 1..=31 {
        if s != libc::SIGKILL && s != libc::SIGSTOP {
            set_disposition(s, false)?;
        }
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// A pidfd for the calling process itself (`pidfd_open(getpid())`, Linux 5.3), with
/// `O_CLOEXEC` as pidfds always have.
pub fn pidfd_open_self() -> Result<OwnedFd, Errno> {
    let pid = nix::unistd::getpid().as_raw();
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just installed this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

//! The seccomp policy: an allowlist built with `seccompiler`.
//!
//! * Any syscall not listed fails with `EPERM` (so ptrace, bpf, io_uring, keyctl, mount, unshare,
//!   setns, userfaultfd, perf_event_open, process_vm_*, pidfd_getfd, … are all denied).
//! * A syscall from another ABI (32-bit `int 0x80`) kills the process: seccompiler's arch check.
//!   x32 syscalls (`nr | 0x40000000`) match no listed number and get `EPERM`.
//! * `clone` is allowed only without namespace flags; `clone3` answers `ENOSYS` (its flags live in
//!   memory a filter cannot read) so libc falls back to `clone`.
//! * `ioctl` is allowed except `TIOCSTI` and `TIOCLINUX` (keystroke injection).
//! * `socket` only for `AF_UNIX`, `AF_INET` and `AF_INET6` (the network namespace is empty).
//! * `prctl` only for options that read state or touch the caller alone; in particular not
//!   `PR_SET_PDEATHSIG`, which would let a run outlive its supervisor.
//! * no inotify: it would let one run watch another's file accesses on the shared read-only
//!   runtime.
//!
//! Two filters are installed: first a one-rule filter answering `ENOSYS` to `clone3`, then the
//! allowlist, which lets `clone3` through. The kernel runs every filter and keeps the most
//! restrictive action, so `clone3` gets `ENOSYS`. (This order also matters because the
//! allowlist denies `seccomp` itself: nothing can be installed after it.)

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use crate::error::{JailError, Result};

/// Syscalls allowed with any arguments.
#[rustfmt::skip]
const ALLOWED: &[i64] = &[
    // files and descriptors
    libc::SYS_read, libc::SYS_write, libc::SYS_openat, libc::SYS_close, libc::SYS_close_range,
    libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_lseek, libc::SYS_pread64,
    libc::SYS_pwrite64, libc::SYS_readv, libc::SYS_writev, libc::SYS_preadv, libc::SYS_pwritev,
    libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_faccessat, libc::SYS_faccessat2,
    libc::SYS_pipe2, libc::SYS_dup, libc::SYS_dup3, libc::SYS_fcntl, libc::SYS_flock,
    libc::SYS_fsync, libc::SYS_fdatasync, libc::SYS_truncate, libc::SYS_ftruncate,
    libc::SYS_getdents64, libc::SYS_getcwd, libc::SYS_chdir, libc::SYS_fchdir,
    libc::SYS_renameat, libc::SYS_renameat2, libc::SYS_mkdirat, libc::SYS_linkat,
    libc::SYS_unlinkat, libc::SYS_symlinkat, libc::SYS_readlinkat, libc::SYS_fchmod,
    libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat, libc::SYS_umask,
    libc::SYS_statfs, libc::SYS_fstatfs, libc::SYS_utimensat, libc::SYS_fadvise64,
    libc::SYS_fallocate, libc::SYS_copy_file_range, libc::SYS_sendfile, libc::SYS_splice,
    libc::SYS_tee, libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr,
    libc::SYS_listxattr, libc::SYS_llistxattr, libc::SYS_flistxattr, libc::SYS_memfd_create,
    // polling and events
    libc::SYS_ppoll, libc::SYS_pselect6, libc::SYS_epoll_create1, libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2, libc::SYS_signalfd4,
    libc::SYS_timerfd_create, libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime,
    // memory
    libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_munmap, libc::SYS_brk, libc::SYS_mremap,
    libc::SYS_msync, libc::SYS_mincore, libc::SYS_madvise, libc::SYS_membarrier,
    libc::SYS_get_mempolicy, libc::SYS_mlock, libc::SYS_munlock,
    // processes, threads, signals (pid namespace and Landlock scope the targets)
    libc::SYS_execve, libc::SYS_exit, libc::SYS_exit_group, libc::SYS_wait4, libc::SYS_waitid,
    libc::SYS_kill, libc::SYS_tgkill, libc::SYS_tkill, libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigpending, libc::SYS_sigaltstack,
    libc::SYS_restart_syscall, libc::SYS_getpid, libc::SYS_getppid, libc::SYS_gettid,
    libc::SYS_getpgid, libc::SYS_setpgid, libc::SYS_getsid, libc::SYS_setsid,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid,
    libc::SYS_getresuid, libc::SYS_getresgid, libc::SYS_getgroups, libc::SYS_futex,
    libc::SYS_futex_waitv, libc::SYS_set_robust_list, libc::SYS_get_robust_list,
    libc::SYS_set_tid_address, libc::SYS_rseq, libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity, libc::SYS_sched_setaffinity, libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler, libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min, libc::SYS_getpriority, libc::SYS_setpriority,
    libc::SYS_getrlimit, libc::SYS_setrlimit, libc::SYS_prlimit64,
    libc::SYS_getrusage, libc::SYS_times, libc::SYS_uname, libc::SYS_sysinfo,
    libc::SYS_getrandom, libc::SYS_getcpu, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal,
    libc::SYS_capget,
    // time
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep, libc::SYS_gettimeofday, libc::SYS_getitimer, libc::SYS_setitimer,
    libc::SYS_timer_create, libc::SYS_timer_settime, libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun, libc::SYS_timer_delete,
    // sockets (families filtered below; the network namespace has no interface up)
    libc::SYS_socketpair, libc::SYS_connect, libc::SYS_accept, libc::SYS_accept4,
    libc::SYS_bind, libc::SYS_listen, libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_sendmsg,
    libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_shutdown,
    libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_setsockopt, libc::SYS_getsockopt,
    // System V IPC: private to the run's IPC namespace
    libc::SYS_shmget, libc::SYS_shmat, libc::SYS_shmdt, libc::SYS_shmctl, libc::SYS_semget,
    libc::SYS_semop, libc::SYS_semtimedop, libc::SYS_semctl, libc::SYS_msgget,
    libc::SYS_msgsnd, libc::SYS_msgrcv, libc::SYS_msgctl,
];

/// Legacy x86_64 syscalls that glibc and CPython still use there.
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[i64] = &[
    libc::SYS_open, libc::SYS_stat, libc::SYS_lstat, libc::SYS_access, libc::SYS_pipe,
    libc::SYS_dup2, libc::SYS_poll, libc::SYS_select, libc::SYS_epoll_create,
    libc::SYS_epoll_wait, libc::SYS_eventfd, libc::SYS_signalfd,
    libc::SYS_getdents, libc::SYS_rename, libc::SYS_mkdir, libc::SYS_rmdir, libc::SYS_creat,
    libc::SYS_link, libc::SYS_unlink, libc::SYS_symlink, libc::SYS_readlink, libc::SYS_chmod,
    libc::SYS_chown, libc::SYS_lchown, libc::SYS_utime, libc::SYS_utimes, libc::SYS_futimesat,
    libc::SYS_fork, libc::SYS_vfork, libc::SYS_pause, libc::SYS_alarm, libc::SYS_getpgrp,
    libc::SYS_arch_prctl, libc::SYS_time,
];

#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_ARCH: &[i64] = &[];

/// `prctl` options a run may use.
const PRCTL_ALLOWED: &[libc::c_int] = &[
    libc::PR_GET_PDEATHSIG,
    libc::PR_GET_DUMPABLE,
    libc::PR_GET_KEEPCAPS,
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_SECCOMP,
    libc::PR_CAPBSET_READ,
    libc::PR_SET_TIMERSLACK,
    libc::PR_GET_TIMERSLACK,
    libc::PR_SET_CHILD_SUBREAPER,
    libc::PR_GET_CHILD_SUBREAPER,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_GET_THP_DISABLE,
    libc::PR_CAP_AMBIENT,
    // glibc names anonymous mappings (malloc arenas) with PR_SET_VMA
    0x5356_4d41,
];

/// Namespace flags that `clone` may not carry.
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u64;

fn target() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Seccomp(e.to_string()))
}

fn cond(arg: u8, len: Len, op: Op, v: u64) -> Result<Cond> {
    Cond::new(arg, len, op, v).map_err(|e| JailError::Seccomp(e.to_string()))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| JailError::Seccomp(e.to_string()))
}

/// The two compiled filters, in installation order.
#[derive(Debug, Clone)]
pub struct SeccompPolicy {
    /// `clone3` → ENOSYS; installed first.
    pub clone3_enosys: BpfProgram,
    /// Allowlist, default EPERM; installed last.
    pub allowlist: BpfProgram,
}

/// Build the default policy.
#[allow(clippy::unnecessary_cast)]
pub fn default_policy() -> Result<SeccompPolicy> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in ALLOWED.iter().chain(ALLOWED_ARCH) {
        rules.insert(nr, vec![]);
    }
    // clone3: passed here, answered ENOSYS by the other filter.
    rules.insert(libc::SYS_clone3, vec![]);
    // clone: only without namespace flags.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(CLONE_NS_FLAGS),
            0,
        )?])?],
    );
    // ioctl: anything but terminal keystroke injection. (libc's request type differs by
    // architecture, hence the casts.) The request is an unsigned int in the
    // kernel, so compare the low 32 bits only.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            cond(1, Len::Dword, Op::Ne, libc::TIOCSTI as u64)?,
            cond(1, Len::Dword, Op::Ne, libc::TIOCLINUX as u64)?,
        ])?],
    );
    rules.insert(
        libc::SYS_prctl,
        PRCTL_ALLOWED
            .iter()
            .map(|&o| rule(vec![cond(0, Len::Dword, Op::Eq, o as u64)?]))
            .collect::<Result<Vec<_>>>()?,
    );
    // socket: local and IP families only.
    rules.insert(
        libc::SYS_socket,
        [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
            .into_iter()
            .map(|f| rule(vec![cond(0, Len::Dword, Op::Eq, f as u64)?]))
            .collect::<Result<Vec<_>>>()?,
    );
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        target()?,
    )
    .map_err(|e| JailError::Seccomp(e.to_string()))?;

    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target()?,
    )
    .map_err(|e| JailError::Seccomp(e.to_string()))?;

    Ok(SeccompPolicy {
        allowlist: allow
            .try_into()
            .map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))?,
        clone3_enosys: clone3
            .try_into()
            .map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))?,
    })
}

/// Install both filters on the calling thread (no_new_privs must already be set).
pub fn apply(policy: &SeccompPolicy) -> Result<()> {
    seccompiler::apply_filter(&policy.clone3_enosys)
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    seccompiler::apply_filter(&policy.allowlist).map_err(|e| JailError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_denies_the_attack_list() {
        let p = default_policy().unwrap();
        assert!(p.allowlist.len() > 50);
        let denied = [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_pidfd_getfd,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_mount_setattr,
            libc::SYS_mknodat,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_setgroups,
            libc::SYS_capset,
            libc::SYS_personality,
            libc::SYS_open_by_handle_at,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_seccomp,
            libc::SYS_inotify_init1,
            libc::SYS_prctl,
        ];
        for nr in denied {
            assert!(
                !ALLOWED.contains(&nr) && !ALLOWED_ARCH.contains(&nr),
                "{nr} is allowed"
            );
        }
        assert!(!PRCTL_ALLOWED.contains(&libc::PR_SET_PDEATHSIG));
        assert!(!PRCTL_ALLOWED.contains(&libc::PR_SET_SECUREBITS));
        assert!(!PRCTL_ALLOWED.contains(&libc::PR_SET_MM));
    }
}

//! The calls a run may make only with some arguments.
//!
//! seccompiler ORs the rules of one call and ANDs the conditions of one rule. Arguments the
//! kernel reads as `int` or `unsigned int` are compared on their low 32 bits (`Dword`): the
//! upper half of the register is whatever the caller left there.

use seccompiler::SeccompRule;
use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond};

use crate::error::{JailError, Result};

/// One call with the rules that allow it (the reason is in the comment where it is built).
pub(super) struct Filtered {
    /// The call's number.
    pub nr: i64,
    /// Alternatives: the call is allowed when one of them matches.
    pub rules: Vec<SeccompRule>,
}

/// `prctl` options a run may use: reads, and settings that touch only the caller.
pub(super) const PRCTL_ALLOWED: &[libc::c_int] = &[
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
    // Ruby sets it at every start; it affects only the caller's own mappings
    libc::PR_SET_THP_DISABLE,
    libc::PR_CAP_AMBIENT,
    // glibc names anonymous mappings (malloc arenas) with PR_SET_VMA
    0x5356_4d41,
];

/// `fcntl` commands a run may use (Chromium's baseline policy is the model): descriptor flags,
/// status flags, duplication, record and open-file-description locks, pipe sizes, memfd seals.
/// Denied among others: `F_NOTIFY` (directory notifications: on the shared runtime it would show
/// one run what another reads, as inotify would), `F_SETLEASE`/`F_GETLEASE` (a lease tells its
/// holder when anyone else opens the file), `F_SETOWN*`/`F_SETSIG` (signal-driven I/O).
pub(super) const FCNTL_ALLOWED: &[libc::c_int] = &[
    libc::F_DUPFD,
    libc::F_DUPFD_CLOEXEC,
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_GETLK,
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_GETLK,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
    libc::F_GETPIPE_SZ,
    libc::F_SETPIPE_SZ,
    libc::F_ADD_SEALS,
    libc::F_GET_SEALS,
];

/// `membarrier` commands a run may use: the private, per-process barriers that JITs (the JVM,
/// .NET, V8) and userspace RCU use, and the query. Denied: `MEMBARRIER_CMD_GLOBAL` (an RCU grace
/// period of the whole machine per call) and the global expedited commands (interrupts on every
/// CPU running a registered process, other runs' included).
pub(super) const MEMBARRIER_ALLOWED: &[libc::c_int] = &[
    0,   // MEMBARRIER_CMD_QUERY
    8,   // MEMBARRIER_CMD_PRIVATE_EXPEDITED
    16,  // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
    32,  // MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
    64,  // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
    128, // MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
    256, // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ
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

/// `SOCK_NONBLOCK` and `SOCK_CLOEXEC` share the type argument; the type is the low four bits.
const SOCK_TYPE_MASK: u64 = 0xf;

/// Socket options that attach programs to a socket: classic and extended BPF filters
/// (`SO_ATTACH_FILTER`, `SO_ATTACH_BPF`, and their `SO_ATTACH_REUSEPORT_*` forms). No runtime
/// attaches filters, and they are kernel surface (the BPF verifier, the JIT).
const SOCKOPT_DENIED: &[libc::c_int] = &[
    libc::SO_ATTACH_FILTER,
    libc::SO_ATTACH_BPF,
    libc::SO_ATTACH_REUSEPORT_CBPF,
    libc::SO_ATTACH_REUSEPORT_EBPF,
];

/// `TCP_ULP`: attaches an upper-layer protocol (kTLS, espintcp) to a TCP socket, loading its
/// module on demand. Nothing a runtime does without it.
const TCP_ULP: u64 = 31;

/// `posix_fadvise(POSIX_FADV_DONTNEED)` drops clean pages of the file from the page cache, for
/// every reader: on the shared runtime, one run could evict what another loaded and then time it.
const FADV_DONTNEED: u64 = 4;

/// `RWF_NOWAIT` makes `preadv2` fail with `EAGAIN` when the data is not cached: a direct probe of
/// the shared page cache.
const RWF_NOWAIT: u64 = 0x8;

/// Huge-page flags. Huge pages are charged to the hugetlb controller, not the memory controller
/// (always on cgroup v1; on v2 unless `memory_hugetlb_accounting`), and no hugetlb limit is set.
const MAP_HUGETLB: u64 = 0x4_0000;
const MFD_HUGETLB: u64 = 0x4;
const SHM_HUGETLB: u64 = 0o4000;

fn cond(arg: u8, len: Len, op: Op, v: u64) -> Result<Cond> {
    Cond::new(arg, len, op, v).map_err(|e| JailError::Seccomp(e.into()))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| JailError::Seccomp(e.into()))
}

/// Argument `arg` (low 32 bits) is one of `values`: one rule per value.
fn one_of(arg: u8, values: &[libc::c_int]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, Len::Dword, Op::Eq, v as u64)?]))
        .collect()
}

/// One rule that matches when argument `arg` is none of `values` (the negation of [`one_of`]).
pub(super) fn none_of(arg: u8, values: &[libc::c_int]) -> Result<Vec<SeccompRule>> {
    let conds = values
        .iter()
        .map(|&v| cond(arg, Len::Dword, Op::Ne, v as u64))
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![rule(conds)?])
}

/// Argument `arg` has none of the bits of `mask`.
fn without_bits(arg: u8, len: Len, mask: u64) -> Result<Vec<SeccompRule>> {
    Ok(vec![rule(vec![cond(arg, len, Op::MaskedEq(mask), 0)?])?])
}

/// `socket`: unix sockets of the three ordinary types, and plain TCP and UDP over IPv4 and IPv6
/// (protocol 0 or the explicit `IPPROTO_TCP`/`IPPROTO_UDP`). Raw and packet sockets, SCTP, DCCP,
/// MPTCP, UDP-Lite, ICMP "ping" sockets and every other family are denied: no runtime needs them,
/// and several were reached through module autoloading in past kernel exploits.
fn socket_rules(unix_only: bool) -> Result<Vec<SeccompRule>> {
    let mut rules = Vec::new();
    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
        rules.push(rule(vec![
            cond(0, Len::Dword, Op::Eq, libc::AF_UNIX as u64)?,
            cond(1, Len::Dword, Op::MaskedEq(SOCK_TYPE_MASK), ty as u64)?,
            cond(2, Len::Dword, Op::Eq, 0)?,
        ])?);
    }
    if unix_only {
        return Ok(rules);
    }
    for family in [libc::AF_INET, libc::AF_INET6] {
        for (ty, proto) in [
            (libc::SOCK_STREAM, 0),
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, 0),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        ] {
            rules.push(rule(vec![
                cond(0, Len::Dword, Op::Eq, family as u64)?,
                cond(1, Len::Dword, Op::MaskedEq(SOCK_TYPE_MASK), ty as u64)?,
                cond(2, Len::Dword, Op::Eq, proto as u64)?,
            ])?);
        }
    }
    Ok(rules)
}

/// `setsockopt`: any option but those in [`SOCKOPT_DENIED`] and `TCP_ULP`.
fn setsockopt_rules() -> Result<Vec<SeccompRule>> {
    let sol_socket = libc::SOL_SOCKET as u64;
    let sol_tcp = libc::IPPROTO_TCP as u64;
    let mut socket_level = vec![cond(1, Len::Dword, Op::Eq, sol_socket)?];
    for &o in SOCKOPT_DENIED {
        socket_level.push(cond(2, Len::Dword, Op::Ne, o as u64)?);
    }
    Ok(vec![
        rule(vec![
            cond(1, Len::Dword, Op::Ne, sol_socket)?,
            cond(1, Len::Dword, Op::Ne, sol_tcp)?,
        ])?,
        rule(socket_level)?,
        rule(vec![
            cond(1, Len::Dword, Op::Eq, sol_tcp)?,
            cond(2, Len::Dword, Op::Ne, TCP_ULP)?,
        ])?,
    ])
}

/// Every call allowed with conditions.
#[allow(clippy::unnecessary_cast)]
pub(super) fn filtered() -> Result<Vec<Filtered>> {
    Ok(vec![
        // clone: threads and processes, never new namespaces.
        Filtered {
            nr: libc::SYS_clone,
            rules: without_bits(0, Len::Qword, CLONE_NS_FLAGS)?,
        },
        // ioctl: terminal and file ioctls the runtimes make (TCGETS on stdio, FIONREAD,
        // FIONBIO, FIOCLEX), but not keystroke injection. The request is an unsigned int in
        // the kernel, hence Dword.
        Filtered {
            nr: libc::SYS_ioctl,
            rules: vec![rule(vec![
                cond(1, Len::Dword, Op::Ne, libc::TIOCSTI as u64)?,
                cond(1, Len::Dword, Op::Ne, libc::TIOCLINUX as u64)?,
            ])?],
        },
        // prctl: thread names, timer slack, subreaper, reads.
        Filtered {
            nr: libc::SYS_prctl,
            rules: one_of(0, PRCTL_ALLOWED)?,
        },
        // fcntl: see FCNTL_ALLOWED.
        Filtered {
            nr: libc::SYS_fcntl,
            rules: one_of(1, FCNTL_ALLOWED)?,
        },
        // membarrier: see MEMBARRIER_ALLOWED.
        Filtered {
            nr: libc::SYS_membarrier,
            rules: one_of(0, MEMBARRIER_ALLOWED)?,
        },
        // socket and socketpair: see socket_rules. A socket pair exists only for AF_UNIX.
        Filtered {
            nr: libc::SYS_socket,
            rules: socket_rules(false)?,
        },
        Filtered {
            nr: libc::SYS_socketpair,
            rules: socket_rules(true)?,
        },
        // setsockopt: no filter programs, no upper-layer protocols.
        Filtered {
            nr: libc::SYS_setsockopt,
            rules: setsockopt_rules()?,
        },
        // posix_fadvise: hints (SEQUENTIAL, WILLNEED, …) but not DONTNEED. (x86-64 argument
        // order: fd, offset, len, advice.)
        Filtered {
            nr: libc::SYS_fadvise64,
            rules: vec![rule(vec![cond(3, Len::Dword, Op::Ne, FADV_DONTNEED)?])?],
        },
        // preadv2/pwritev2 (Python's os.preadv, libuv): any flag but RWF_NOWAIT.
        Filtered {
            nr: libc::SYS_preadv2,
            rules: without_bits(5, Len::Dword, RWF_NOWAIT)?,
        },
        Filtered {
            nr: libc::SYS_pwritev2,
            rules: without_bits(5, Len::Dword, RWF_NOWAIT)?,
        },
        // mmap, memfd_create, shmget: everything but huge pages.
        Filtered {
            nr: libc::SYS_mmap,
            rules: without_bits(3, Len::Dword, MAP_HUGETLB)?,
        },
        Filtered {
            nr: libc::SYS_memfd_create,
            rules: without_bits(1, Len::Dword, MFD_HUGETLB)?,
        },
        Filtered {
            nr: libc::SYS_shmget,
            rules: without_bits(2, Len::Dword, SHM_HUGETLB)?,
        },
    ])
}

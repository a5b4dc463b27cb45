//! The seccomp policy: an allowlist built with `seccompiler`.
//!
//! * Any syscall not listed fails with `EPERM` (so ptrace, bpf, io_uring, keyctl, mount, unshare,
//!   setns, userfaultfd, perf_event_open, process_vm_*, pidfd_getfd, cachestat, readahead,
//!   inotify, fanotify, … are all denied). `allowlist.rs` lists what is allowed with any
//!   arguments, each call with its reason.
//! * A syscall from another ABI (32-bit `int 0x80`) kills the process: seccompiler's arch check.
//!   x32 syscalls (`nr | 0x40000000`) match no listed number and get `EPERM`.
//! * `args.rs` allows some calls only with some arguments: `clone` without namespace flags;
//!   `ioctl` but `TIOCSTI`/`TIOCLINUX`; `prctl` and `fcntl` from short lists (no `F_NOTIFY`, no
//!   leases); `socket`/`socketpair` only unix, TCP and UDP; `setsockopt` without BPF filters or
//!   `TCP_ULP`; `posix_fadvise` without `DONTNEED` and `preadv2`/`pwritev2` without
//!   `RWF_NOWAIT` (page-cache probing of the shared runtime); `mmap`, `memfd_create`, `shmget`
//!   without huge pages (charged outside the memory cgroup).
//! * `clone3` answers `ENOSYS` (its flags live in memory a filter cannot read) so libc falls back
//!   to `clone`.
//!
//! Two filters are installed: first a one-rule filter answering `ENOSYS` to `clone3`, then the
//! allowlist, which lets `clone3` through. The kernel runs every filter and keeps the most
//! restrictive action, so `clone3` gets `ENOSYS`. (This order also matters because the
//! allowlist denies `seccomp` itself: nothing can be installed after it.)

mod allowlist;
mod args;

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

use crate::error::{JailError, Result};

fn target() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Seccomp(e.into()))
}

/// The calls a template's child makes to build its own jail (warm path) that a run may not
/// make: the template's filter ([`SeccompPolicy::template_base`]) allows them, and each child's
/// filter ([`SeccompPolicy::warm_child`]) takes them away again once its jail is built. `prctl`
/// is here for `PR_SET_PDEATHSIG` and `PR_CAPBSET_DROP`; the child's filter restores the
/// allowlist's `prctl` options exactly.
const WARM_SETUP: &[i64] = &[
    libc::SYS_setgroups,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_capset,
    libc::SYS_unshare,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_mount_setattr,
    libc::SYS_sethostname,
    libc::SYS_openat2,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_seccomp,
    libc::SYS_prctl,
];

/// The compiled filters.
///
/// A cold jail installs `clone3_enosys` then `allowlist`. The warm path splits the allowlist
/// in two so that its big part is compiled and installed once per template, not once per run
/// (the kernel validates, JIT-compiles and builds a syscall cache for every filter a process
/// installs): a template installs `template_base` (the allowlist, with the set-up calls allowed),
/// which its children inherit; each child, once its jail is built, installs `clone3_enosys`
/// then `warm_child` (the allowlist's verdict on the set-up calls, everything else allowed).
/// The kernel keeps the most restrictive verdict of all filters, so a child ends with exactly
/// the allowlist (checked by `warm_split_is_the_allowlist`).
#[derive(Debug, Clone)]
pub struct SeccompPolicy {
    /// `clone3` → ENOSYS; installed first.
    pub clone3_enosys: BpfProgram,
    /// Allowlist, default EPERM; installed last.
    pub allowlist: BpfProgram,
    /// A template's filter: the allowlist with its children's set-up calls allowed.
    pub template_base: BpfProgram,
    /// A warm child's last filter: the allowlist's rules for the set-up calls.
    pub warm_child: BpfProgram,
}

fn compile(f: SeccompFilter) -> Result<BpfProgram> {
    f.try_into()
        .map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.into()))
}

/// The allowlist's rules: call number → alternatives (empty: any arguments).
fn allowlist_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(nr, _why) in allowlist::ALLOWED.iter().chain(allowlist::ALLOWED_ARCH) {
        rules.insert(nr, vec![]);
    }
    for f in args::filtered()? {
        rules.insert(f.nr, f.rules);
    }
    // clone3: passed here, answered ENOSYS by the other filter.
    rules.insert(libc::SYS_clone3, vec![]);
    Ok(rules)
}

/// An allowlist filter over `rules`: listed calls allowed, everything else `EPERM`.
fn allow_only(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram> {
    compile(
        SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            target()?,
        )
        .map_err(|e| JailError::Seccomp(e.into()))?,
    )
}

/// Build the default policy.
pub fn default_policy() -> Result<SeccompPolicy> {
    let rules = allowlist_rules()?;

    let mut base = rules.clone();
    for nr in WARM_SETUP {
        base.insert(*nr, vec![]);
    }

    // The child's filter denies (EPERM, the allowlist's answer) what the allowlist denies of
    // the set-up calls: every one of them but prctl outright, prctl when its option is none
    // of the allowed ones (the allowlist's alternatives negated: one rule, every condition
    // `!=`).
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in WARM_SETUP {
        match rules.get(nr) {
            None => {
                deny.insert(*nr, vec![]);
            }
            Some(_) if *nr == libc::SYS_prctl => {
                deny.insert(*nr, args::none_of(0, args::PRCTL_ALLOWED)?);
            }
            Some(_) => {
                return Err(JailError::InvalidSpec(format!(
                    "set-up call {nr} is in the allowlist: the warm split does not handle it"
                )))
            }
        }
    }
    let warm_child = compile(
        SeccompFilter::new(
            deny,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            target()?,
        )
        .map_err(|e| JailError::Seccomp(e.into()))?,
    )?;

    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target()?,
    )
    .map_err(|e| JailError::Seccomp(e.into()))?;

    Ok(SeccompPolicy {
        allowlist: allow_only(rules)?,
        template_base: allow_only(base)?,
        warm_child,
        clone3_enosys: compile(clone3)?,
    })
}

/// Install both filters on the calling thread (no_new_privs must already be set).
pub fn apply(policy: &SeccompPolicy) -> Result<()> {
    seccompiler::apply_filter(&policy.clone3_enosys).map_err(JailError::Seccomp)?;
    seccompiler::apply_filter(&policy.allowlist).map_err(JailError::Seccomp)
}

/// A template's filter (see [`SeccompPolicy`]).
pub(crate) fn apply_template_base(policy: &SeccompPolicy) -> Result<()> {
    seccompiler::apply_filter(&policy.template_base).map_err(JailError::Seccomp)
}

/// A warm child's filters, on top of its template's (see [`SeccompPolicy`]).
pub(crate) fn apply_warm_child(policy: &SeccompPolicy) -> Result<()> {
    seccompiler::apply_filter(&policy.clone3_enosys).map_err(JailError::Seccomp)?;
    seccompiler::apply_filter(&policy.warm_child).map_err(JailError::Seccomp)
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
            libc::SYS_inotify_add_watch,
            libc::SYS_fanotify_init,
            libc::SYS_fanotify_mark,
            libc::SYS_readahead,
            // cachestat (Linux 6.5): page-cache residency of any file the run can open
            451,
        ];
        let allowed: Vec<i64> = allowlist::ALLOWED
            .iter()
            .chain(allowlist::ALLOWED_ARCH)
            .map(|e| e.0)
            .collect();
        let filtered: Vec<i64> = args::filtered().unwrap().iter().map(|f| f.nr).collect();
        for nr in denied {
            assert!(!allowed.contains(&nr), "{nr} is allowed");
            assert!(!filtered.contains(&nr), "{nr} is allowed with conditions");
        }
        assert!(!args::PRCTL_ALLOWED.contains(&libc::PR_SET_PDEATHSIG));
        assert!(!args::PRCTL_ALLOWED.contains(&libc::PR_SET_SECUREBITS));
        assert!(!args::PRCTL_ALLOWED.contains(&libc::PR_SET_MM));
        for cmd in [
            libc::F_NOTIFY,
            libc::F_SETLEASE,
            libc::F_GETLEASE,
            libc::F_SETOWN,
        ] {
            assert!(
                !args::FCNTL_ALLOWED.contains(&cmd),
                "fcntl {cmd} is allowed"
            );
        }
    }

    /// The warm split gives a child exactly the allowlist: the template's filter differs from
    /// the allowlist only on the set-up calls, and the child's filter decides exactly those,
    /// as the allowlist does (outright denial, or prctl's options).
    #[test]
    fn warm_split_is_the_allowlist() {
        let p = default_policy().unwrap();
        assert!(!p.warm_child.is_empty() && !p.template_base.is_empty());
        let rules = allowlist_rules().unwrap();
        for nr in WARM_SETUP {
            match rules.get(nr) {
                None => {}
                Some(r) if *nr == libc::SYS_prctl => assert!(!r.is_empty()),
                Some(_) => panic!("{nr} is both a set-up call and in the allowlist"),
            }
        }
        // The child's filter is small: it is compiled for every child.
        assert!(
            p.warm_child.len() * 4 < p.allowlist.len(),
            "{} vs {}",
            p.warm_child.len(),
            p.allowlist.len()
        );
    }

    #[test]
    fn every_call_is_listed_once_with_a_reason() {
        let mut seen = std::collections::BTreeSet::new();
        for (nr, why) in allowlist::ALLOWED.iter().chain(allowlist::ALLOWED_ARCH) {
            assert!(seen.insert(*nr), "{nr} is listed twice");
            assert!(why.len() > 3, "{nr} has no reason");
        }
        for f in args::filtered().unwrap() {
            assert!(
                seen.insert(f.nr),
                "{} is both unconditional and filtered",
                f.nr
            );
            assert!(!f.rules.is_empty(), "{} has no rule", f.nr);
        }
    }
}

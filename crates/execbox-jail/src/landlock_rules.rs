//! Landlock: read and execute everywhere, write only below `/work` and `/tmp` (and to
//! `/dev/null`), and scope abstract unix sockets and signals to the run (ABI 6+).
//!
//! The ruleset asks for exactly what the running kernel's ABI has (capped at
//! [`LANDLOCK_ABI_MAX`], the newest ABI it was written for), as a hard requirement: on ABI 1 to
//! 5 it handles that ABI's file-system rights and no scopes, and whatever it asks for is
//! enforced or the jail fails. Nothing is left out silently, as the `landlock` crate's default
//! best-effort mode would do. The parent applies Landlock only when the ABI is 1 or more
//! (`check.rs`); what an older ABI lacks is covered by other layers (`docs/security.md` 2.6).

use std::path::Path;

use crate::check::LANDLOCK_ABI_MAX;
use crate::child_error::{ChildError, Step, StepContext};
use crate::sys;
use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, Scope, ABI,
};

/// The ABI the ruleset is built for on a kernel with `kernel_abi`.
fn target_abi(kernel_abi: i64) -> ABI {
    // Both values are small (ABI numbers); the clamp keeps the conversion exact.
    ABI::from(kernel_abi.clamp(0, LANDLOCK_ABI_MAX) as i32)
}

/// The ruleset for `abi`, with `writable` (directories) fully writable and `devices` readable
/// and writable; not yet enforced.
fn ruleset(
    abi: ABI,
    writable: &[&Path],
    devices: &[&Path],
) -> Result<RulesetCreated, RulesetError> {
    let mut r = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))?;
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        r = r.scope(scopes)?;
    }
    r.create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
        .add_rules(path_beneath_rules(
            devices,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
}

/// Apply the ruleset to the calling process and its future children.
pub fn apply() -> Result<(), ChildError> {
    let abi = target_abi(sys::landlock_abi());
    if abi == ABI::Unsupported {
        return Err(ChildError::new(Step::Landlock, "no Landlock ABI"));
    }
    let status = ruleset(
        abi,
        &[Path::new("/work"), Path::new("/tmp")],
        &[Path::new("/dev/null"), Path::new("/dev/zero")],
    )
    .and_then(|r| r.restrict_self())
    .step(Step::Landlock, || format!("ruleset for ABI {}", abi as i32))?;
    if status.ruleset != landlock::RulesetStatus::FullyEnforced {
        return Err(ChildError::new(
            Step::Landlock,
            format!("ruleset for ABI {} not fully enforced", abi as i32),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_abi_is_the_kernels_capped_at_what_the_ruleset_knows() {
        assert_eq!(target_abi(0), ABI::Unsupported);
        assert_eq!(target_abi(-38), ABI::Unsupported);
        assert_eq!(target_abi(1), ABI::V1);
        assert_eq!(target_abi(2), ABI::V2);
        assert_eq!(target_abi(4), ABI::V4);
        assert_eq!(target_abi(6), ABI::V6);
        assert_eq!(target_abi(9), ABI::V6);
    }

    /// Each ABI up to what this kernel has builds a ruleset that asks for nothing the ABI lacks
    /// (a hard requirement, so a right the kernel lacked would be an error). The ruleset is
    /// created but never enforced: the test process stays unrestricted.
    #[test]
    fn each_abi_up_to_the_kernels_builds_a_ruleset() {
        let kernel = sys::landlock_abi();
        if kernel < 1 {
            eprintln!("SKIPPED: no Landlock in this kernel");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        for n in 1..=kernel.min(LANDLOCK_ABI_MAX) {
            let abi = target_abi(n);
            ruleset(abi, &[&work, dir.path()], &[Path::new("/dev/null")])
                .unwrap_or_else(|e| panic!("ABI {n}: {e}"));
            // scopes only from ABI 6
            assert_eq!(Scope::from_all(abi).is_empty(), n < 6);
        }
    }
}

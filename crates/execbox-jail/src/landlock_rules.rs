//! Landlock: read and execute everywhere, write only below `/work` and `/tmp` (and to
//! `/dev/null`), and scope abstract unix sockets and signals to the run (ABI 6+).
//!
//! Best effort by the `landlock` crate's design: features the kernel lacks are skipped; the
//! parent checks the ABI beforehand and marks the run degraded when Landlock is missing.

use crate::child_error::{ChildError, Step, StepContext};
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};

/// Apply the ruleset to the calling process and its future children.
pub fn apply() -> Result<(), ChildError> {
    let abi = ABI::V6;
    let read = AccessFs::from_read(abi);
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], read)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                ["/work", "/tmp"],
                AccessFs::from_all(abi),
            ))
        })
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                ["/dev/null", "/dev/zero"],
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
        })
        .and_then(|r| r.restrict_self())
        .step(Step::Landlock, || "ruleset".into())?;
    if status.ruleset == landlock::RulesetStatus::NotEnforced {
        return Err(ChildError::new(Step::Landlock, "ruleset not enforced"));
    }
    Ok(())
}

//! The isolation layers, by their one name: `execbox check` reports them, a degraded run's
//! record lists the missing ones.

use serde::{Deserialize, Serialize};

/// One isolation layer (or a precondition of them), as `execbox check` and run records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerName {
    /// Running as root (to map uids, create cgroups and mount).
    Root,
    /// Mount, pid, ipc, uts and network namespaces.
    Namespaces,
    /// A user namespace mapped to an unprivileged host uid per run.
    UserNamespaces,
    /// Memory, pids and cpu cgroups.
    Cgroups,
    /// seccomp-bpf filters.
    Seccomp,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Recursive read-only binds.
    MountSetattr,
    /// Landlock file rules.
    Landlock,
    /// Landlock's abstract-socket and signal scopes (ABI 6).
    LandlockScopes,
    /// `cgroup.kill`.
    CgroupKill,
}

impl LayerName {
    /// Every layer, in the order `execbox check` reports them.
    pub const ALL: [LayerName; 10] = [
        LayerName::Root,
        LayerName::Namespaces,
        LayerName::UserNamespaces,
        LayerName::Cgroups,
        LayerName::Seccomp,
        LayerName::NoNewPrivs,
        LayerName::MountSetattr,
        LayerName::Landlock,
        LayerName::LandlockScopes,
        LayerName::CgroupKill,
    ];

    /// Stable snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerName::Root => "root",
            LayerName::Namespaces => "namespaces",
            LayerName::UserNamespaces => "user_namespaces",
            LayerName::Cgroups => "cgroups",
            LayerName::Seccomp => "seccomp",
            LayerName::NoNewPrivs => "no_new_privs",
            LayerName::MountSetattr => "mount_setattr",
            LayerName::Landlock => "landlock",
            LayerName::LandlockScopes => "landlock_scopes",
            LayerName::CgroupKill => "cgroup_kill",
        }
    }
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for l in LayerName::ALL {
            assert_eq!(
                serde_json::to_value(l).unwrap(),
                serde_json::Value::String(l.as_str().to_owned())
            );
        }
        assert_eq!(format!("{:8}|", LayerName::Root), "root    |");
    }
}

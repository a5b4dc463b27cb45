//! How a run's entry file is run.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How to run: call `main()` or run as a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Run the entry file as a program (the default of the `/v1` API).
    Program,
    /// Call `main()` and return its value as `result`.
    Main,
}

impl Mode {
    /// Stable snake_case name, as serialised (and as the harness takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Program => "program",
            Mode::Main => "main",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        [Mode::Program, Mode::Main]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// A mode name that is neither `program` nor `main`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?}: expected `program` or `main`")]
pub struct UnknownMode(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for m in [Mode::Program, Mode::Main] {
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::String(m.as_str().to_owned())
            );
            assert_eq!(m.as_str().parse(), Ok(m));
        }
        assert!("Main".parse::<Mode>().is_err());
    }
}

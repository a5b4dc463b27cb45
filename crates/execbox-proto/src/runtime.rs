//! The runtimes a spawner offers, and how a request's `language` and `version` selector pick
//! one of them.
//!
//! Selection rules: `language` is matched against each runtime's name and aliases, ASCII
//! case-insensitively. The selector is a semver requirement: a bare version is a prefix
//! (`3` is any 3.x.y, `3.11` any 3.11.y, `3.11.2` exactly that one); otherwise the semver
//! operators apply (`>=1.21`, `<5.4`, `~5.4`, `^3.9`, comma-separated to combine). An absent
//! or empty selector, `*` and `latest` match every version. Among the matching runtimes the
//! highest version wins.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::mode::Mode;

/// One runtime that passed its smoke test (`GET /v1/runtimes`, `execbox runtimes`, the
/// spawner's hello).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeInfo {
    /// Language name, for example `python` or `c++`.
    pub language: String,
    /// Exact version (semver), for example `3.11.2`.
    pub version: String,
    /// Other names the language is requested by (`py`, `js`, `node`, `cpp`, …).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Whether runs compile in a jail of their own before they run.
    #[serde(default)]
    pub compiled: bool,
    /// Modes it supports.
    pub modes: Vec<Mode>,
    /// Notable packages available to programs.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The entry file name used when a request names none (`main.c`, `Main.java`).
    #[serde(default)]
    pub entry: String,
}

impl RuntimeInfo {
    /// Whether `name` is this runtime's language or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.language.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// The runtime's identity, as run orders carry it.
    pub fn to_ref(&self) -> RuntimeRef {
        RuntimeRef {
            language: self.language.clone(),
            version: self.version.clone(),
        }
    }
}

/// Names one runtime exactly: what a run order carries after selection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuntimeRef {
    /// Language name (never an alias).
    pub language: String,
    /// Exact version.
    pub version: String,
}

/// Why no runtime was selected. Messages list what exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No runtime answers to the name.
    #[error("language {name:?} is not available; available: {available}")]
    UnknownLanguage {
        /// The requested name.
        name: String,
        /// Every language with its versions.
        available: String,
    },
    /// The selector is not a semver requirement.
    #[error("version {selector:?} is not a semver selector ({reason}); available: {available}")]
    InvalidVersion {
        /// The selector.
        selector: String,
        /// The parser's complaint.
        reason: String,
        /// The language's versions.
        available: String,
    },
    /// The language exists but no version matches.
    #[error("no {language} runtime matches version {selector:?}; available: {available}")]
    NoMatchingVersion {
        /// The language (its canonical name).
        language: String,
        /// The selector.
        selector: String,
        /// The language's versions.
        available: String,
    },
}

/// `language versions, …` for every runtime in `all` (sorted, one entry per language).
pub fn describe(all: &[RuntimeInfo]) -> String {
    let mut langs: Vec<&str> = all.iter().map(|r| r.language.as_str()).collect();
    langs.sort_unstable();
    langs.dedup();
    if langs.is_empty() {
        return "none".into();
    }
    langs
        .iter()
        .map(|l| format!("{l} {}", versions_of(all, l)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn versions_of(all: &[RuntimeInfo], language: &str) -> String {
    let mut v: Vec<(Option<semver::Version>, &str)> = all
        .iter()
        .filter(|r| r.language == language)
        .map(|r| (semver::Version::parse(&r.version).ok(), r.version.as_str()))
        .collect();
    v.sort();
    v.iter().map(|(_, s)| *s).collect::<Vec<_>>().join(", ")
}

/// The highest-versioned runtime in `all` answering to `language` whose version matches
/// `selector` (see the module documentation for the rules).
pub fn select<'a>(
    all: &'a [RuntimeInfo],
    language: &str,
    selector: Option<&str>,
) -> Result<&'a RuntimeInfo, SelectError> {
    let named: Vec<&RuntimeInfo> = all.iter().filter(|r| r.answers_to(language)).collect();
    let Some(first) = named.first() else {
        return Err(SelectError::UnknownLanguage {
            name: language.to_owned(),
            available: describe(all),
        });
    };
    let available = format!("{} {}", first.language, versions_of(all, &first.language));
    let sel = selector.map(str::trim).unwrap_or("");
    let req = if sel.is_empty() || sel == "*" || sel == "latest" {
        semver::VersionReq::STAR
    } else {
        let bare = sel.starts_with(|c: char| c.is_ascii_digit());
        let text = if bare {
            format!("={sel}")
        } else {
            sel.to_owned()
        };
        semver::VersionReq::parse(&text).map_err(|e| SelectError::InvalidVersion {
            selector: sel.to_owned(),
            reason: e.to_string(),
            available: available.clone(),
        })?
    };
    named
        .iter()
        .filter_map(|r| {
            let v = semver::Version::parse(&r.version).ok()?;
            req.matches(&v).then_some((v, *r))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r)| r)
        .ok_or(SelectError::NoMatchingVersion {
            language: first.language.clone(),
            selector: sel.to_owned(),
            available,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(language: &str, version: &str, aliases: &[&str]) -> RuntimeInfo {
        RuntimeInfo {
            language: language.into(),
            version: version.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            compiled: false,
            modes: vec![Mode::Program],
            packages: vec![],
            entry: String::new(),
        }
    }

    #[test]
    fn highest_matching_version_by_name_or_alias() {
        let all = [
            rt("lua", "5.3.6", &[]),
            rt("lua", "5.4.4", &[]),
            rt("python", "3.11.2", &["py", "python3"]),
            rt("go", "1.19.8", &["golang"]),
        ];
        let pick = |l: &str, s: Option<&str>| select(&all, l, s).map(|r| r.version.clone());
        assert_eq!(pick("lua", None).unwrap(), "5.4.4");
        assert_eq!(pick("LUA", Some("*")).unwrap(), "5.4.4");
        assert_eq!(pick("lua", Some("5.3")).unwrap(), "5.3.6");
        assert_eq!(pick("lua", Some("5")).unwrap(), "5.4.4");
        assert_eq!(pick("lua", Some("<5.4")).unwrap(), "5.3.6");
        assert_eq!(pick("py", Some("3.11")).unwrap(), "3.11.2");
        assert_eq!(pick("golang", Some(">=1.19")).unwrap(), "1.19.8");
        assert_eq!(pick("go", Some("latest")).unwrap(), "1.19.8");

        let e = select(&all, "cobol", None).unwrap_err();
        assert!(matches!(e, SelectError::UnknownLanguage { .. }));
        assert!(e.to_string().contains("lua 5.3.6, 5.4.4"), "{e}");
        let e = select(&all, "go", Some(">=1.21")).unwrap_err();
        assert!(matches!(e, SelectError::NoMatchingVersion { .. }));
        assert!(e.to_string().ends_with("available: go 1.19.8"), "{e}");
        let e = select(&all, "lua", Some("five")).unwrap_err();
        assert!(matches!(e, SelectError::InvalidVersion { .. }), "{e}");
        assert_eq!(describe(&[]), "none");
    }
}

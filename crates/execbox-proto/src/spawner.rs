//! The conversation between the server and its spawner: one JSON object per line over the
//! spawner's stdin (first its [`SpawnerConfig`], then [`Order`]s) and stdout ([`Event`]s, the
//! first of which is [`Event::Hello`] or [`Event::Fatal`]).

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cases::{Compare, TestCase, DEFAULT_MAX_OUTPUT_FILES, DEFAULT_MAX_OUTPUT_FILES_BYTES};
use crate::files::SourceFile;
use crate::limits::Limits;
use crate::live::{LiveSignal, OutputStream, Stage};
use crate::mode::Mode;
use crate::runtime::{RuntimeInfo, RuntimeRef};
use crate::{defaults, RunRecord};

/// Longest order line the spawner accepts (the server bounds bodies well below this).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Longest configuration line.
pub const MAX_CONFIG_LINE: usize = 64 * 1024;

/// Where the jail machinery finds its host resources (the spawner's, and `execbox run`'s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostSettings {
    /// The Python environment (a venv with numpy and pandas).
    pub python_env: PathBuf,
    /// Installed runtime packages (`<language>/<version>/manifest.toml`).
    pub runtimes_dir: PathBuf,
    /// State directory (uid slot locks, jail mount point).
    pub state_dir: PathBuf,
    /// cgroup mount root.
    pub cgroup_root: PathBuf,
    /// Run even if an isolation layer is missing; records then say `degraded: true`.
    pub allow_degraded: bool,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            python_env: PathBuf::from(defaults::PYTHON_ENV),
            runtimes_dir: PathBuf::from(defaults::RUNTIMES_DIR),
            state_dir: PathBuf::from(defaults::STATE_DIR),
            cgroup_root: PathBuf::from(defaults::CGROUP_ROOT),
            allow_degraded: false,
        }
    }
}

/// Everything the spawner is told, as the first line on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpawnerConfig {
    /// Host resources.
    pub host: HostSettings,
    /// Jails with the default limits kept prepared ahead of demand.
    pub pool: usize,
    /// The limits most runs use; pooled jails are prepared with them.
    pub default_limits: Limits,
    /// The operator's maxima: compile stages and runtimes' floors stay within them.
    pub max_limits: Limits,
    /// Most files a run returns from `/work/out`.
    pub max_output_files: usize,
    /// Most bytes (all files together) a run returns from `/work/out`.
    pub max_output_files_bytes: u64,
    /// Languages (names or aliases, ASCII case-insensitive) to offer; empty offers every
    /// installed runtime. Packages of other languages are neither smoke-tested nor offered
    /// (`execbox run --language` starts a spawner for one language).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// The warm path (templates).
    pub warm: WarmSettings,
}

/// The warm path's settings (docs/security.md, "Templates"; docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmSettings {
    /// Serve runs of runtimes that have a template program from warm templates.
    pub enabled: bool,
    /// Children a template forks before a fresh template replaces it.
    pub max_runs: u64,
    /// Seconds after which a fresh template replaces it.
    pub max_age_secs: u64,
    /// Modules the Python template imports (`None`: the manifest's, numpy and pandas).
    pub modules: Option<Vec<String>>,
    /// The jail library the template loads (`None`: `libexecbox_jail.so` beside the
    /// executable).
    pub lib: Option<PathBuf>,
    /// Make cgroup migrations cheap where the kernel offers it (`favordynmods`, Linux 6.0):
    /// a warm child's cgroup join otherwise waits for an RCU grace period while holding the
    /// cgroup mutex.
    pub favordynmods: bool,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_runs: defaults::WARM_MAX_RUNS,
            max_age_secs: defaults::WARM_MAX_AGE_SECS,
            modules: None,
            lib: None,
            favordynmods: true,
        }
    }
}

/// The warm path's counters, sent by the spawner whenever they change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStats {
    /// Runs served by a template's child.
    pub warm_hits: u64,
    /// Runs of a warm-capable runtime that took the cold path (no template ready, none
    /// prepared, or limits the pool's children were not prepared with).
    pub cold_fallbacks: u64,
    /// Templates replaced after their run or age limit.
    pub recycles: u64,
    /// Templates restarted after they died or failed to start.
    pub restarts: u64,
    /// Templates ready now.
    pub templates_ready: u64,
    /// Template children prepared and waiting for a run.
    pub pool_depth: u64,
}

impl Default for SpawnerConfig {
    fn default() -> Self {
        Self {
            host: HostSettings::default(),
            pool: defaults::pool(),
            default_limits: Limits::default(),
            max_limits: Limits::default_maxima(),
            max_output_files: DEFAULT_MAX_OUTPUT_FILES,
            max_output_files_bytes: DEFAULT_MAX_OUTPUT_FILES_BYTES,
            languages: Vec::new(),
            warm: WarmSettings::default(),
        }
    }
}

/// Why the configuration line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading failed.
    #[error("reading the spawner configuration: {0}")]
    Io(#[from] std::io::Error),
    /// End of input before a complete line.
    #[error("no spawner configuration line on stdin")]
    Eof,
    /// Longer than [`MAX_CONFIG_LINE`].
    #[error("the spawner configuration line is longer than {MAX_CONFIG_LINE} bytes")]
    TooLong,
    /// Not a [`SpawnerConfig`].
    #[error("the spawner configuration is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

impl SpawnerConfig {
    /// The configuration as one line (newline included).
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }

    /// Read the configuration line from `r`, one byte at a time so that nothing after it is
    /// consumed (orders follow on the same descriptor; give an unbuffered reader).
    pub fn read_line(r: &mut impl Read) -> Result<Self, ConfigError> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match r.read(&mut byte) {
                Ok(0) => return Err(ConfigError::Eof),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            if line.len() > MAX_CONFIG_LINE {
                return Err(ConfigError::TooLong);
            }
        }
        Ok(serde_json::from_slice(&line)?)
    }
}

/// A run to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOrder {
    /// Run id (chosen by the server).
    pub id: String,
    /// When the run was accepted (RFC 3339).
    pub created_at: String,
    /// Main-function contract or plain program.
    pub mode: Mode,
    /// Files; the first is the entry point.
    pub files: Vec<SourceFile>,
    /// Standard input.
    #[serde(default)]
    pub stdin: String,
    /// Program arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Limits, already checked against the operator's maxima.
    pub limits: Limits,
    /// The runtime chosen for the run; absent means the highest Python (`/execute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeRef>,
    /// Test cases: when given, the program (compiled once) runs once per case, each in a
    /// fresh jail with the case's stdin and args (`stdin` and `args` above are then unused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<TestCase>,
    /// How cases' stdout is compared with their expected output.
    #[serde(default)]
    pub compare: Compare,
    /// A live run: the spawner reports each stage ([`Event::Stage`]) and the output as it is
    /// read ([`Event::Output`]), and sets `PYTHONUNBUFFERED=1`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub live: bool,
    /// The run stage's stdin stays open after `stdin` until an [`Order::Stdin`] with `eof`
    /// (runs without cases only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub interactive: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Server → spawner, after the configuration line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// One order exists per line read, briefly: the size of a `Cancel` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Order {
    /// Start a run.
    Run(RunOrder),
    /// Kill a run (if it is still going); its record comes back with status `cancelled`.
    Cancel {
        /// Run id.
        id: String,
    },
    /// More stdin for an interactive run (kept until its run stage reads it); `eof` closes
    /// its stdin once the data is written. Ignored for an unknown or finished run.
    Stdin {
        /// Run id.
        id: String,
        /// The bytes (the server bounds them by the run's `stdin_bytes`).
        #[serde(default)]
        data: String,
        /// Close stdin after `data`.
        #[serde(default)]
        eof: bool,
    },
    /// Send a signal to the running stage's processes (its process group, as a terminal's
    /// Ctrl-C reaches its foreground job). Ignored when no stage is running.
    Signal {
        /// Run id.
        id: String,
        /// Which one (an allow-list).
        signal: LiveSignal,
    },
}

impl Order {
    /// The order as one line (newline included).
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }
}

/// Spawner → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sent once at start, when the spawner is ready for orders.
    Hello {
        /// Language of its default runtime (the one `/execute` uses).
        language: String,
        /// Default runtime's version, for example `3.11.2`.
        version: String,
        /// Layers missing on this host (degraded mode).
        missing_layers: Vec<String>,
        /// Every runtime whose smoke test passed through the jail, in a stable order.
        #[serde(default)]
        runtimes: Vec<RuntimeInfo>,
    },
    /// Sent instead of `Hello` when the spawner cannot start (no runtime, host refused); it
    /// exits after it.
    Fatal {
        /// What is wrong, for the operator.
        message: String,
    },
    /// The run's payload has `execve`d.
    Started {
        /// Run id.
        id: String,
    },
    /// A live run's stage has started (each case's run stage too).
    Stage {
        /// Run id.
        id: String,
        /// Compile or run.
        stage: Stage,
        /// The test case, for a run with cases.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        case: Option<usize>,
    },
    /// Output of a live run's current stage, as read (at most
    /// [`crate::live::MAX_CHUNK_BYTES`], never ending inside a UTF-8 character; invalid bytes
    /// as U+FFFD).
    Output {
        /// Run id.
        id: String,
        /// stdout or stderr.
        stream: OutputStream,
        /// The text.
        data: String,
        /// The stream reached its cap with this chunk: nothing more of it follows (the run is
        /// killed with `output_limit`, as without streaming).
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
    },
    /// The run is over.
    Finished {
        /// Run id.
        id: String,
        /// Its final record.
        record: Box<RunRecord>,
    },
    /// The warm path's counters changed.
    Warm(WarmStats),
    /// execbox failed to run it; the message is for the log, not the client.
    Failed {
        /// Run id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

impl Event {
    /// The event as one line (newline included).
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }
}

fn to_line(v: &impl Serialize) -> Vec<u8> {
    // These types hold strings, numbers and paths (as UTF-8 when they came from JSON or a
    // flag): serialising them cannot fail; a non-UTF-8 path would give an empty line, which
    // the reader refuses.
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_tagged_json_lines() {
        let o = Order::Cancel { id: "a".into() };
        assert_eq!(o.to_line(), b"{\"type\":\"cancel\",\"id\":\"a\"}\n");
        let run = Order::Run(RunOrder {
            id: "r".into(),
            created_at: "t".into(),
            mode: Mode::Main,
            files: vec![SourceFile {
                name: "main.py".into(),
                content: "def main(): return 1\n".into(),
            }],
            stdin: String::new(),
            args: vec![],
            limits: Limits::default(),
            runtime: None,
            cases: vec![],
            compare: Compare::default(),
            live: false,
            interactive: false,
        });
        let line = run.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Order = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, run);
        assert!(!String::from_utf8(line).unwrap().contains("live"));
        let sig = Order::Signal {
            id: "a".into(),
            signal: LiveSignal::Int,
        };
        assert_eq!(
            sig.to_line(),
            b"{\"type\":\"signal\",\"id\":\"a\",\"signal\":\"INT\"}\n"
        );
        let bad = br#"{"type":"signal","id":"a","signal":"STOP"}"#;
        assert!(serde_json::from_slice::<Order>(bad).is_err());
        let out = Event::Output {
            id: "a".into(),
            stream: OutputStream::Stdout,
            data: "hi".into(),
            truncated: false,
        };
        assert_eq!(
            out.to_line(),
            b"{\"type\":\"output\",\"id\":\"a\",\"stream\":\"stdout\",\"data\":\"hi\"}\n"
        );
    }

    #[test]
    fn config_is_one_line_and_nothing_after_it_is_read() {
        let cfg = SpawnerConfig {
            pool: 3,
            languages: vec!["js".into()],
            host: HostSettings {
                allow_degraded: true,
                ..HostSettings::default()
            },
            ..SpawnerConfig::default()
        };
        let mut input = cfg.to_line();
        input.extend(Order::Cancel { id: "x".into() }.to_line());
        let mut r = std::io::Cursor::new(input);
        assert_eq!(SpawnerConfig::read_line(&mut r).unwrap(), cfg);
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "{\"type\":\"cancel\",\"id\":\"x\"}\n");

        let empty = SpawnerConfig::read_line(&mut std::io::Cursor::new(b"{}\n")).unwrap();
        assert_eq!(empty, SpawnerConfig::default());
        for bad in [&b""[..], b"{}", b"{\"pool\": \"x\"}\n", b"{\"nope\": 1}\n"] {
            assert!(SpawnerConfig::read_line(&mut std::io::Cursor::new(bad)).is_err());
        }
        let long = vec![b' '; MAX_CONFIG_LINE + 2];
        assert!(matches!(
            SpawnerConfig::read_line(&mut std::io::Cursor::new(long)),
            Err(ConfigError::TooLong)
        ));
    }
}

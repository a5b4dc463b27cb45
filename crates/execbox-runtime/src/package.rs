//! Runtime packages: a directory `<language>/<flavour>/` under a runtimes root holding a
//! `manifest.toml`, a one-file smoke test and, optionally, harness files. This module parses
//! and checks manifests, finds the installed ones, and turns a run into the jail specs and
//! payloads of its stages (compile, then run).
//!
//! A compiled runtime compiles in a jail of its own; its compile command runs under a small
//! `sh` wrapper that, when the compiler succeeds, writes a tar archive of the declared
//! artefacts to the result channel (fd 3, capped by `result_bytes`). The run jail receives the
//! archive as a work file and unpacks it before `exec`ing the run command, so nothing crosses
//! from one jail to the other except those bytes.

use std::fs;
use std::path::{Path, PathBuf};

use execbox_jail::{BindMount, JailSpec, Limits, Payload, WorkFile};
use execbox_proto::cases::OUTPUT_DIR;
use execbox_proto::limits::mib;
use execbox_proto::{Mode, RuntimeInfo};
use serde::Deserialize;

/// The file name of a runtime's manifest.
pub const MANIFEST: &str = "manifest.toml";

/// The work file that carries a compile stage's artefacts into the run jail.
pub const ARCHIVE_NAME: &str = ".execbox-build.tar";

/// Version value meaning "the smoke test prints the version on its second line".
pub const VERSION_FROM_SMOKE: &str = "smoke";

/// The Python runtime's manifest, built in: Python is offered even without a runtimes
/// directory (its harness is [`crate::python::HARNESS`]).
pub const BUILTIN_PYTHON: &str = include_str!("../../../runtimes/python/cpython/manifest.toml");
const BUILTIN_PYTHON_SMOKE: &str = include_str!("../../../runtimes/python/cpython/test.py");

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading a file of the package failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML for a manifest.
    #[error("{path}: {source}")]
    Toml {
        /// The manifest.
        path: PathBuf,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// Parsed, but breaks a rule.
    #[error("{path}: {reason}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The rule.
        reason: String,
    },
}

/// Limits a stage asks for; unset fields keep the run's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLimits {
    /// Wall-clock limit, milliseconds.
    pub wall_time_ms: Option<u64>,
    /// CPU limit, milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Memory, MiB.
    pub memory_mib: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u32>,
    /// `/tmp` size, MiB.
    pub tmp_mib: Option<u64>,
    /// Open files.
    pub open_files: Option<u64>,
}

/// Per-stage limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// The compile stage's limits (the run's are the base).
    #[serde(default)]
    pub compile: StageLimits,
    /// Floors for the run stage (a run never gets less than these, within the maxima).
    #[serde(default)]
    pub run: StageLimits,
}

/// The compile stage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileStage {
    /// Compiler argv template.
    pub command: Vec<String>,
    /// What the run stage needs from `/work` after compiling (plain names).
    pub artefacts: Vec<String>,
}

/// The run stage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStage {
    /// Program argv template.
    pub command: Vec<String>,
}

/// The warm path (docs/security.md, "Templates"): a template process that has imported the
/// harness and `modules` once and forks a jailed child per run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmStage {
    /// The template program's file, relative to the package directory.
    pub program: String,
    /// Its argv template: `{template}` (the program's text), `{lib}` (the jail library inside
    /// the template's jail), `{harness}`, `{modules}` (comma-separated) and `{python_env}`.
    pub command: Vec<String>,
    /// Modules the template imports before it serves (the operator may override them).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Memory of the template's own cgroup, MiB (its children each have their run's).
    #[serde(default = "template_memory_mib")]
    pub memory_mib: u64,
}

fn template_memory_mib() -> u64 {
    1024
}

/// Where the jail library appears inside a template's jail.
pub const TEMPLATE_LIB: &str = "/.execbox/libexecbox_jail.so";

/// The smoke test.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smoke {
    /// The test program, relative to the package directory.
    pub file: String,
    /// The line it must print first.
    pub expect: String,
}

/// A parsed `manifest.toml`.
///
/// Argv templates: an element that is exactly `{files}` becomes every file name (entry
/// first), `{args}` the program's arguments; inside other elements `{entry}`, `{entry_stem}`,
/// `{mode}`, `{python_env}` and `{harness}` (the harness file's text) are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Language name (lowercase).
    pub language: String,
    /// Version (semver), or `smoke`: the smoke test prints it on its second line.
    pub version: String,
    /// Other names for the language.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Source file extension, without the dot.
    pub extension: String,
    /// The entry file name when a request names none.
    pub entry: String,
    /// Host files that must exist for the runtime to be offered (its toolchain).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Extra host paths bound read-only at the same place (`/usr` and `/lib*` always are).
    #[serde(default)]
    pub binds: Vec<String>,
    /// Extra environment (`KEY=value`), after the defaults.
    #[serde(default)]
    pub env: Vec<String>,
    /// Modes; `main` needs a harness that implements it.
    #[serde(default = "program_only")]
    pub modes: Vec<Mode>,
    /// Notable packages.
    #[serde(default)]
    pub packages: Vec<String>,
    /// A harness file (relative to the package directory), substituted for `{harness}`.
    #[serde(default)]
    pub harness: Option<String>,
    /// The compile stage, for compiled languages.
    #[serde(default)]
    pub compile: Option<CompileStage>,
    /// The run stage.
    pub run: RunStage,
    /// Per-stage limits.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// The smoke test.
    pub smoke: Smoke,
    /// The warm path, for runtimes that have a template program.
    #[serde(default)]
    pub warm: Option<WarmStage>,
}

fn program_only() -> Vec<Mode> {
    vec![Mode::Program]
}

/// Replace each placeholder of `vars` in `t` in one pass: a value is never searched for
/// placeholders again (a file named `{mode}.py` stays that name).
fn substitute(t: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    'scan: while !rest.is_empty() {
        for (key, value) in vars {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

impl Manifest {
    /// Parse and check a manifest's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|source| ManifestError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        m.check().map_err(|reason| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if !plain_name(&self.language) || self.language.to_ascii_lowercase() != self.language {
            return Err(format!(
                "language {:?} is not a lowercase name",
                self.language
            ));
        }
        if self.version != VERSION_FROM_SMOKE && semver::Version::parse(&self.version).is_err() {
            return Err(format!(
                "version {:?} is neither semver nor `{VERSION_FROM_SMOKE}`",
                self.version
            ));
        }
        if let Some(a) = self.aliases.iter().find(|a| !plain_name(a)) {
            return Err(format!("alias {a:?} is not a plain name"));
        }
        if !plain_name(&self.extension) {
            return Err(format!(
                "extension {:?} is not a plain name",
                self.extension
            ));
        }
        execbox_proto::validate_file_name(&self.entry)
            .map_err(|e| format!("entry {:?}: {e}", self.entry))?;
        if self.modes.is_empty() {
            return Err("modes is empty".into());
        }
        if self.modes.contains(&Mode::Main) && self.harness.is_none() {
            return Err("mode `main` needs a harness".into());
        }
        if self.modes.contains(&Mode::Main) && self.compile.is_some() {
            return Err("mode `main` is not supported for compiled runtimes".into());
        }
        for p in self.requires.iter().chain(&self.binds) {
            let p = p.replace("{python_env}", "/x");
            if !Path::new(&p).is_absolute() || p.split('/').any(|c| c == "..") {
                return Err(format!("path {p:?} is not absolute and normal"));
            }
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.contains('\0'))
        {
            return Err(format!("env entry {e:?} is not KEY=value"));
        }
        if self.run.command.is_empty() {
            return Err("run.command is empty".into());
        }
        if let Some(c) = &self.compile {
            if c.command.is_empty() {
                return Err("compile.command is empty".into());
            }
            if c.artefacts.is_empty() {
                return Err("compile.artefacts is empty".into());
            }
            if let Some(a) = c
                .artefacts
                .iter()
                .find(|a| a.as_str() == execbox_proto::cases::OUTPUT_DIR)
            {
                return Err(format!(
                    "compile.artefacts may not name {a:?}: it is where a run's output files go"
                ));
            }
            if let Some(a) = c.artefacts.iter().find(|a| !plain_name(a)) {
                return Err(format!("artefact {a:?} is not a plain name"));
            }
        }
        if self.smoke.expect.is_empty() || self.smoke.expect.contains('\n') {
            return Err("smoke.expect must be one non-empty line".into());
        }
        if Path::new(&self.smoke.file).components().count() != 1 {
            return Err("smoke.file must be a file of the package directory".into());
        }
        Ok(())
    }
}

/// A loaded runtime package: its manifest with the files it names read.
#[derive(Debug, Clone)]
pub struct Package {
    /// The manifest.
    pub manifest: Manifest,
    /// Where it was found (`builtin` for the built-in Python).
    pub dir: PathBuf,
    /// The smoke test program.
    pub smoke_source: Vec<u8>,
    /// The harness's text, if any.
    pub harness: Option<String>,
    /// The Python environment, for `{python_env}`.
    pub python_env: PathBuf,
    /// The warm template program's text, if the runtime has one.
    pub template_program: Option<String>,
}

/// What discovery found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Usable packages (toolchain present), in a stable order (language, then directory).
    pub packages: Vec<Package>,
    /// Packages skipped because a required toolchain file is absent: (directory, missing path).
    pub absent: Vec<(PathBuf, String)>,
    /// Manifests that are broken.
    pub errors: Vec<ManifestError>,
}

impl Package {
    /// Load the package in `dir`.
    pub fn load(dir: &Path, python_env: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST);
        let read = |p: PathBuf| {
            fs::read(&p).map_err(|source| ManifestError::Io {
                path: p.clone(),
                source,
            })
        };
        let text = String::from_utf8_lossy(&read(path.clone())?).into_owned();
        let manifest = Manifest::parse(&text, &path)?;
        let smoke_source = read(dir.join(&manifest.smoke.file))?;
        let harness = match &manifest.harness {
            Some(h) => Some(String::from_utf8_lossy(&read(dir.join(h))?).into_owned()),
            None => None,
        };
        let template_program = match &manifest.warm {
            Some(w) => Some(String::from_utf8_lossy(&read(dir.join(&w.program))?).into_owned()),
            None => None,
        };
        Ok(Self {
            manifest,
            dir: dir.to_path_buf(),
            smoke_source,
            harness,
            python_env: python_env.to_path_buf(),
            template_program,
        })
    }

    /// The built-in Python package (used when the runtimes directory offers no Python).
    pub fn builtin_python(python_env: &Path) -> Self {
        let path = Path::new("builtin/python/manifest.toml");
        // The built-in manifest is checked by this crate's tests; a broken one fails them.
        let manifest = Manifest::parse(BUILTIN_PYTHON, path).unwrap_or_else(|e| panic!("{e}"));
        Self {
            manifest,
            dir: PathBuf::from("builtin"),
            smoke_source: BUILTIN_PYTHON_SMOKE.as_bytes().to_vec(),
            harness: Some(crate::python::HARNESS.to_owned()),
            python_env: python_env.to_path_buf(),
            template_program: Some(crate::python::TEMPLATE.to_owned()),
        }
    }

    /// Whether runs of this runtime can take the warm path (it has a template program).
    pub fn warm_capable(&self) -> bool {
        self.manifest.warm.is_some() && self.template_program.is_some()
    }

    /// The template's jail: the run jail's binds plus the jail library at [`TEMPLATE_LIB`]
    /// (`lib` on the host), the run's limits but the template's own memory. `None` for a
    /// runtime without a warm stage.
    pub fn template_spec(&self, run: &JailSpec, lib: &Path) -> Option<JailSpec> {
        let w = self.manifest.warm.as_ref()?;
        let mut spec = run.clone();
        spec.binds.push(BindMount {
            source: lib.to_path_buf(),
            target: PathBuf::from(TEMPLATE_LIB),
        });
        spec.limits.memory_bytes = mib(w.memory_mib);
        Some(spec)
    }

    /// The template's payload, importing `modules` (the manifest's when `None`).
    pub fn template_payload(&self, modules: Option<&[String]>) -> Option<Payload> {
        let w = self.manifest.warm.as_ref()?;
        let program = self.template_program.as_deref()?;
        let modules = modules.unwrap_or(&w.modules).join(",");
        let python_env = self.python_env.display().to_string();
        let argv = w
            .command
            .iter()
            .map(|t| {
                substitute(
                    t,
                    &[
                        ("{template}", program),
                        ("{lib}", TEMPLATE_LIB),
                        ("{harness}", self.harness.as_deref().unwrap_or_default()),
                        ("{modules}", &modules),
                        ("{python_env}", &python_env),
                    ],
                )
            })
            .collect();
        Some(Payload {
            argv,
            env: self.env(),
            files: Vec::new(),
            stdin: Vec::new(),
        })
    }

    /// A warm run's payload (main mode, no files out): what the template's program runs in
    /// the child, as `MODE ENTRY ARGS` after [`execbox_jail::warm::WARM_ARGV0`].
    pub fn warm_payload(
        &self,
        files: Vec<WorkFile>,
        mode: Mode,
        stdin: Vec<u8>,
        args: &[String],
    ) -> Payload {
        let entry = files
            .first()
            .map_or(self.manifest.entry.clone(), |f| f.name.clone());
        let mut argv = vec![
            execbox_jail::warm::WARM_ARGV0.to_owned(),
            mode.as_str().to_owned(),
            entry,
        ];
        argv.extend(args.iter().cloned());
        Payload {
            argv,
            env: Vec::new(),
            files,
            stdin,
        }
    }

    /// The first required toolchain path that does not exist, or that resolves through
    /// `/etc` (Debian's alternatives), which the jail does not have.
    pub fn missing_toolchain(&self) -> Option<String> {
        self.manifest
            .requires
            .iter()
            .map(|r| self.expand_path(r))
            .find(|p| !Path::new(p).exists() || through_etc(Path::new(p)))
    }

    fn expand_path(&self, s: &str) -> String {
        s.replace("{python_env}", &self.python_env.display().to_string())
    }

    /// Whether it compiles before it runs.
    pub fn compiled(&self) -> bool {
        self.manifest.compile.is_some()
    }

    /// What the API lists for this package at `version`.
    pub fn info(&self, version: &str) -> RuntimeInfo {
        let m = &self.manifest;
        RuntimeInfo {
            language: m.language.clone(),
            version: version.to_owned(),
            aliases: m.aliases.clone(),
            compiled: self.compiled(),
            modes: m.modes.clone(),
            packages: m.packages.clone(),
            entry: m.entry.clone(),
        }
    }

    /// The jail of one stage: the manifest's binds, `limits` adjusted by the stage's
    /// `ask` (set for compile, raised to for run), never above `max`.
    fn spec(&self, mut limits: Limits, ask: &StageLimits, floor: bool, max: &Limits) -> JailSpec {
        let pick = |have: u64, want: Option<u64>| match want {
            Some(w) if floor => have.max(w),
            Some(w) => w,
            None => have,
        };
        limits.wall_time_ms = pick(limits.wall_time_ms, ask.wall_time_ms).min(max.wall_time_ms);
        limits.cpu_time_ms = pick(limits.cpu_time_ms, ask.cpu_time_ms).min(max.cpu_time_ms);
        limits.memory_bytes =
            pick(limits.memory_bytes, ask.memory_mib.map(mib)).min(max.memory_bytes);
        limits.pids = (pick(limits.pids.into(), ask.pids.map(u64::from)) as u32).min(max.pids);
        limits.tmp_bytes = pick(limits.tmp_bytes, ask.tmp_mib.map(mib)).min(max.tmp_bytes);
        limits.open_files = pick(limits.open_files, ask.open_files).min(max.open_files);
        JailSpec {
            binds: self
                .manifest
                .binds
                .iter()
                .map(|b| BindMount::same(self.expand_path(b)))
                .collect(),
            limits,
        }
    }

    /// The compile jail: the run's limits with the compile stage's, within `max`; the result
    /// channel may carry the artefacts up to `max.result_bytes`.
    pub fn compile_spec(&self, run: Limits, max: &Limits) -> JailSpec {
        let mut spec = self.spec(run, &self.manifest.limits.compile, false, max);
        spec.limits.result_bytes = max.result_bytes;
        spec.limits.work_bytes = spec.limits.work_bytes.max(mib(256)).min(max.work_bytes);
        spec
    }

    /// The run jail: the run's limits raised to the runtime's floors, within `max`.
    pub fn run_spec(&self, run: Limits, max: &Limits) -> JailSpec {
        self.spec(run, &self.manifest.limits.run, true, max)
    }

    fn env(&self) -> Vec<String> {
        let mut env: Vec<String> = [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/tmp",
            "TMPDIR=/tmp",
            "LANG=C.UTF-8",
            "LC_ALL=C.UTF-8",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for e in &self.manifest.env {
            let e = self.expand_path(e);
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|d| d.split('=').next() != Some(key));
            env.push(e);
        }
        env
    }

    fn expand(
        &self,
        template: &[String],
        files: &[WorkFile],
        mode: Mode,
        args: &[String],
    ) -> Vec<String> {
        let entry = files
            .first()
            .map_or(self.manifest.entry.as_str(), |f| f.name.as_str());
        let stem = entry.rsplit_once('.').map_or(entry, |(s, _)| s);
        let mut out = Vec::new();
        for t in template {
            match t.as_str() {
                "{files}" => out.extend(
                    files
                        .iter()
                        .map(|f| f.name.clone())
                        .filter(|n| n.ends_with(&format!(".{}", self.manifest.extension))),
                ),
                "{args}" => out.extend(args.iter().cloned()),
                _ => out.push(substitute(
                    t,
                    &[
                        ("{python_env}", &self.python_env.display().to_string()),
                        ("{entry_stem}", stem),
                        ("{entry}", entry),
                        ("{mode}", mode.as_str()),
                        ("{harness}", self.harness.as_deref().unwrap_or_default()),
                    ],
                )),
            }
        }
        out
    }

    /// The compile stage's payload (compiled runtimes only): the compiler, then, if it
    /// succeeded, a tar archive of the artefacts on fd 3.
    pub fn compile_payload(&self, files: Vec<WorkFile>) -> Option<Payload> {
        let c = self.manifest.compile.as_ref()?;
        let artefacts = c.artefacts.join(" "); // plain names, checked by the manifest
                                               // The compiler does not get fd 3: only the archive goes there.
        let script = format!("\"$@\" 3>&- || exit $?; exec /usr/bin/tar -cf - -- {artefacts} >&3");
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            script,
            "execbox-compile".into(),
        ];
        argv.extend(self.expand(&c.command, &files, Mode::Program, &[]));
        Some(Payload {
            argv,
            env: self.env(),
            files,
            stdin: Vec::new(),
        })
    }

    /// The run stage's payload. For a compiled runtime `archive` holds the compile stage's
    /// artefacts, unpacked into `/work` before the program starts. With `files_out` (a byte
    /// cap; program mode) the program runs under a `sh` wrapper that creates `/work/out`, runs
    /// it with fd 3 closed, kills what the program left running (`kill -9 -1`: every process
    /// of the jail but its init and the wrapper, so a leftover can neither change the files
    /// nor hold the pids the archive needs), then, only if `/work/out` holds anything (a shell
    /// glob, no fork: killed leftovers stay zombies of the wrapper until it exits, so a run that
    /// used up its pids may have none left for `tar`), writes a tar of it to fd 3 cut at that many bytes
    /// (see [`crate::outfiles`]) and exits with the program's status (a program killed by
    /// signal N exits the wrapper with 128+N: [`wrapped_status`] turns it back).
    pub fn run_payload(
        &self,
        mut files: Vec<WorkFile>,
        archive: Option<Vec<u8>>,
        mode: Mode,
        stdin: Vec<u8>,
        args: &[String],
        files_out: Option<u64>,
    ) -> Payload {
        let program = self.expand(&self.manifest.run.command, &files, mode, args);
        let mut script = String::new();
        if let Some(content) = archive {
            files.push(WorkFile {
                name: ARCHIVE_NAME.into(),
                content,
            });
            script.push_str(&format!(
                "/usr/bin/tar -xf {ARCHIVE_NAME} && rm -f {ARCHIVE_NAME} || exit 125; "
            ));
        }
        match files_out {
            // The shell is the jail's init, which receives only the signals it handles: with
            // no-op traps a client's signal (live runs) reaches the program (its children get
            // the default dispositions back) and the shell goes on to report its status and
            // files. Without them dash, which catches SIGINT under -c, would die of it.
            Some(cap) => script.push_str(&format!(
                "trap : INT QUIT TERM USR1 USR2; \
                 mkdir -p {OUTPUT_DIR}; \"$@\" 3>&-; s=$?; kill -9 -1 2>/dev/null; \
                 cd {OUTPUT_DIR} && for f in * .[!.]* ..?*; do [ -e \"$f\" ] || continue; \
                 /usr/bin/tar --format=pax -cf - . 2>/dev/null | /usr/bin/head -c {cap} >&3; \
                 break; done; exit $s"
            )),
            None if script.is_empty() => {
                return Payload {
                    argv: program,
                    env: self.env(),
                    files,
                    stdin,
                }
            }
            None => script.push_str("exec \"$@\""),
        }
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            script,
            "execbox-run".into(),
        ];
        argv.extend(program);
        Payload {
            argv,
            env: self.env(),
            files,
            stdin,
        }
    }

    /// The smoke test's files (the test program under the entry name).
    pub fn smoke_files(&self) -> Vec<WorkFile> {
        vec![WorkFile {
            name: self.manifest.entry.clone(),
            content: self.smoke_source.clone(),
        }]
    }

    /// Judge a smoke run's stdout: the expected first line, and the version (the manifest's,
    /// or the second line's when it says `smoke`). `None` when the test failed.
    pub fn smoke_verdict(&self, stdout: &str) -> Option<String> {
        let mut lines = stdout.lines();
        if lines.next()?.trim_end() != self.manifest.smoke.expect {
            return None;
        }
        if self.manifest.version == VERSION_FROM_SMOKE {
            normalise_version(lines.next()?)
        } else {
            Some(self.manifest.version.clone())
        }
    }
}

/// A wrapped run's exit code as the program's own status: the wrapper's shell reports a
/// program killed by signal N as exit code 128+N (N ≤ 64), so that becomes signal N (a
/// program that itself exits with such a code is reported as killed: the shell cannot tell).
pub fn wrapped_status(exit_code: Option<i32>, signal: Option<i32>) -> (Option<i32>, Option<i32>) {
    match exit_code {
        Some(c) if signal.is_none() && (129..=192).contains(&c) => (None, Some(c - 128)),
        _ => (exit_code, signal),
    }
}

/// Whether a symlink on the way to `p` points into `/etc`.
fn through_etc(p: &Path) -> bool {
    let mut cur = p.to_path_buf();
    for _ in 0..16 {
        match fs::read_link(&cur) {
            Ok(t) => {
                let next = cur.parent().unwrap_or(Path::new("/")).join(&t);
                if next.starts_with("/etc") {
                    return true;
                }
                cur = next;
            }
            Err(_) => return false,
        }
    }
    true
}

/// The first `N[.N[.N]]` in `s` as a full semver version (`go1.19.8` → `1.19.8`,
/// `5.4` → `5.4.0`, `17.0.15+6` → `17.0.15`).
pub fn normalise_version(s: &str) -> Option<String> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let digits: String = s[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts: Vec<&str> = digits
        .split('.')
        .filter(|p| !p.is_empty())
        .take(3)
        .collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    let v = parts.join(".");
    semver::Version::parse(&v).ok().map(|v| v.to_string())
}

/// Find the packages under `root` (`<language>/<flavour>/manifest.toml`). A missing root
/// yields nothing; Python is always there (built in) unless the root provides one.
pub fn discover(root: &Path, python_env: &Path) -> Discovery {
    let mut d = Discovery::default();
    let mut dirs = Vec::new();
    if let Ok(langs) = fs::read_dir(root) {
        for lang in langs.flatten() {
            if let Ok(flavours) = fs::read_dir(lang.path()) {
                dirs.extend(
                    flavours
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| p.join(MANIFEST).is_file()),
                );
            }
        }
    }
    dirs.sort();
    for dir in dirs {
        match Package::load(&dir, python_env) {
            Ok(p) => match p.missing_toolchain() {
                Some(missing) => d.absent.push((dir, missing)),
                None => d.packages.push(p),
            },
            Err(e) => d.errors.push(e),
        }
    }
    if !d.packages.iter().any(|p| p.manifest.language == "python") {
        let py = Package::builtin_python(python_env);
        match py.missing_toolchain() {
            Some(missing) => d.absent.push((py.dir.clone(), missing)),
            None => d.packages.push(py),
        }
    }
    d.packages
        .sort_by(|a, b| a.manifest.language.cmp(&b.manifest.language));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_in_the_repository_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtimes");
        let mut n = 0;
        for lang in fs::read_dir(&root).unwrap().flatten() {
            for f in fs::read_dir(lang.path()).unwrap().flatten() {
                if f.path().join(MANIFEST).is_file() {
                    Package::load(&f.path(), Path::new("/opt/execbox/python"))
                        .unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 15, "{n} manifests");
        let py = Package::builtin_python(Path::new("/opt/execbox/python"));
        assert_eq!(py.manifest.modes, vec![Mode::Program, Mode::Main]);
    }

    #[test]
    fn bad_manifests_are_refused_with_a_reason() {
        let good = r#"
language = "c"
version = "smoke"
extension = "c"
entry = "main.c"
[compile]
command = ["/usr/bin/gcc", "-o", "main", "{files}"]
artefacts = ["main"]
[run]
command = ["/work/main", "{args}"]
[smoke]
file = "test.c"
expect = "ok"
"#;
        let p = Path::new("m.toml");
        let m = Manifest::parse(good, p).unwrap();
        assert_eq!(m.modes, vec![Mode::Program]);
        for (from, to) in [
            ("\"c\"\nversion", "\"C\"\nversion"),
            ("\"smoke\"", "\"twelve\""),
            ("[\"main\"]", "[\"../main\"]"),
            ("\"main.c\"", "\"a/main.c\""),
            ("expect = \"ok\"", "expect = \"\""),
            ("[smoke]", "modes = [\"main\"]\n[smoke]"),
            ("[run]", "nope = 1\n[run]"),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(Manifest::parse(&bad, p).is_err(), "{from} -> {to}");
        }
    }

    #[test]
    fn versions_are_normalised() {
        assert_eq!(normalise_version("go1.19.8").unwrap(), "1.19.8");
        assert_eq!(normalise_version("Lua 5.4").unwrap(), "5.4.0");
        assert_eq!(normalise_version("17.0.15+6").unwrap(), "17.0.15");
        assert_eq!(normalise_version("v20.20.2").unwrap(), "20.20.2");
        assert!(normalise_version("none").is_none());
    }

    #[test]
    fn stages_expand_templates_and_cap_limits() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join(MANIFEST),
            r#"
language = "c"
version = "12.2.0"
extension = "c"
entry = "main.c"
requires = ["/bin/sh"]
[compile]
command = ["/usr/bin/gcc", "-o", "main", "{files}"]
artefacts = ["main"]
[run]
command = ["/work/main", "{args}"]
[limits.compile]
memory_mib = 4096
pids = 8
[limits.run]
pids = 100
[smoke]
file = "t.c"
expect = "ok"
"#,
        )
        .unwrap();
        fs::write(t.path().join("t.c"), "x").unwrap();
        let p = Package::load(t.path(), Path::new("/x")).unwrap();
        assert!(p.missing_toolchain().is_none());
        let max = Limits::default_maxima();
        let c = p.compile_spec(Limits::default(), &max);
        assert_eq!(c.limits.memory_bytes, max.memory_bytes);
        assert_eq!(c.limits.pids, 8);
        assert_eq!(c.limits.result_bytes, max.result_bytes);
        assert_eq!(p.run_spec(Limits::default(), &max).limits.pids, 100);
        let files = vec![
            WorkFile {
                name: "main.c".into(),
                content: vec![],
            },
            WorkFile {
                name: "util.c".into(),
                content: vec![],
            },
            WorkFile {
                name: "data.txt".into(),
                content: vec![],
            },
        ];
        let cp = p.compile_payload(files.clone()).unwrap();
        assert_eq!(
            &cp.argv[4..],
            ["/usr/bin/gcc", "-o", "main", "main.c", "util.c"]
        );
        let rp = p.run_payload(
            files.clone(),
            Some(vec![1]),
            Mode::Program,
            vec![],
            &["a".into()],
            None,
        );
        assert_eq!(&rp.argv[4..], ["/work/main", "a"]);
        assert!(rp.argv[2].ends_with("exec \"$@\""), "{}", rp.argv[2]);
        let wp = p.run_payload(files, None, Mode::Program, vec![], &[], Some(1000));
        assert_eq!(&wp.argv[4..], ["/work/main"]);
        assert!(wp.argv[2].contains("head -c 1000 >&3"), "{}", wp.argv[2]);
        assert_eq!(wrapped_status(Some(159), None), (None, Some(31)));
        assert_eq!(wrapped_status(Some(3), None), (Some(3), None));
        assert_eq!(rp.files.last().unwrap().name, ARCHIVE_NAME);
        assert!(rp.validate(&Limits::default()).is_ok());
        assert_eq!(p.smoke_verdict("ok\n").as_deref(), Some("12.2.0"));
        assert!(p.smoke_verdict("nope\n").is_none());
    }
    #[test]
    fn placeholders_are_substituted_in_one_pass() {
        let vars = [("{entry}", "{mode}.py"), ("{mode}", "program")];
        assert_eq!(
            substitute("run {entry} as {mode}", &vars),
            "run {mode}.py as program"
        );
        assert_eq!(substitute("ü{entry}", &vars), "ü{mode}.py");
        assert_eq!(substitute("{unknown}", &vars), "{unknown}");
    }
}

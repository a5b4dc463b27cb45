//! `execbox`: the HTTP service (`serve`), one file through the sandbox (`run`), the host check
//! (`check`), and the spawner the service starts (`spawner`).
//!
//! `run` and `spawner` stay single-threaded (no async runtime is built for them): they create
//! jails with `clone3`. Only `serve` starts tokio, and it never forks: it asks its spawner.
#![forbid(unsafe_code)]

mod child_spawner;
mod limits;
mod serve;
mod token;
mod units;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use execbox_jail::{check, HostConfig, Jailer};
use execbox_proto::runtime::select;
use execbox_proto::spawner::{Event, HostSettings, Order, RunOrder, SpawnerConfig};
use execbox_proto::{defaults, new_run_id, now_rfc3339, validate_file_name, Mode, SourceFile};
use execbox_runtime::{build_record, PythonRuntime, RunMeta};

use crate::child_spawner::ChildSpawner;
use crate::limits::LimitArgs;

#[derive(Debug, Parser)]
#[command(
    name = "execbox",
    version,
    about = "Run untrusted code in a locked-down Linux sandbox"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one file in a fresh jail and print its run record as JSON: Python by default, or
    /// any installed runtime with `--language`.
    Run(Box<RunArgs>),
    /// Report which isolation layers this host supports and whether execbox will run here.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start the HTTP service.
    Serve(Box<serve::ServeArgs>),
    /// Mint a development token (HS256, signed with APP_JWT_SECRET) and print it.
    Token(token::TokenArgs),
    /// Print the service's OpenAPI document.
    Openapi,
    /// Find the installed runtimes, smoke-test each through the jail and list those that pass
    /// (what `GET /v1/runtimes` serves).
    Runtimes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Smoke-test and list only this language (name or alias); repeatable.
        #[arg(long = "language", value_name = "NAME")]
        languages: Vec<String>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// The jail spawner the service starts (its configuration, then orders, on stdin; events on
    /// stdout). Internal.
    #[command(hide = true)]
    Spawner,
}

/// Where the jail machinery finds its host resources (shared by `run`, `serve`, `spawner`).
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The Python environment (a venv with numpy and pandas).
    #[arg(long, env = "EXECBOX_PYTHON_ENV", default_value = defaults::PYTHON_ENV)]
    pub python_env: PathBuf,
    /// Installed runtime packages (`<language>/<version>/manifest.toml`); the built-in Python
    /// is offered when none of them is Python.
    #[arg(long, env = "EXECBOX_RUNTIMES_DIR", default_value = defaults::RUNTIMES_DIR)]
    pub runtimes_dir: PathBuf,
    /// Run even if an isolation layer is missing; records then say `degraded: true`.
    /// (`EXECBOX_ALLOW_DEGRADED` accepts 1/0, true/false, yes/no, on/off.)
    #[arg(long, env = "EXECBOX_ALLOW_DEGRADED", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_degraded: bool,
    /// State directory (uid slot locks, jail mount point).
    #[arg(long, env = "EXECBOX_STATE_DIR", default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
    /// cgroup mount root.
    #[arg(long, env = "EXECBOX_CGROUP_ROOT", default_value = defaults::CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
}

impl HostArgs {
    /// As the spawner and the jail take them.
    pub fn settings(&self) -> HostSettings {
        HostSettings {
            python_env: self.python_env.clone(),
            runtimes_dir: self.runtimes_dir.clone(),
            state_dir: self.state_dir.clone(),
            cgroup_root: self.cgroup_root.clone(),
            allow_degraded: self.allow_degraded,
        }
    }
}

/// `--mode`: the one [`Mode`] enum, with a line of help per value.
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new(Mode::Main.as_str())
            .help("Call main() and return its value as `result`"),
        PossibleValue::new(Mode::Program.as_str()).help("Run the file as a program"),
    ])
    .map(|s| s.parse::<Mode>().unwrap_or(Mode::Main))
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The file to run (Python, unless `--language` names another language).
    file: PathBuf,
    /// main: call main() and return its JSON value; program: run as `python3 FILE`.
    /// Default: main without `--language`, program with it.
    #[arg(long, value_parser = mode_parser())]
    mode: Option<Mode>,
    /// Run in this installed runtime (name or alias: `c`, `js`, `c++`, `python`, ...), through
    /// a spawner as the server does: compiled languages compile in one jail and run in
    /// another. Without it the file runs as Python, straight in a jail.
    #[arg(long, value_name = "NAME")]
    language: Option<String>,
    /// Semver selector for `--language`'s version (`3.11`, `3`, `>=1.21`, `*`); the highest
    /// matching version wins. Default: the highest installed.
    #[arg(long, value_name = "SELECTOR", requires = "language")]
    version: Option<String>,
    /// Text fed to the program's stdin.
    #[arg(long, conflicts_with = "stdin_file")]
    stdin: Option<String>,
    /// File whose contents are fed to stdin.
    #[arg(long)]
    stdin_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Arguments passed to the program (program mode).
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Check { json } => check_cmd(json),
        Cmd::Serve(a) => serve::serve(*a),
        Cmd::Token(a) => token::token(a),
        Cmd::Openapi => openapi(),
        Cmd::Runtimes {
            json,
            languages,
            host,
        } => runtimes(json, languages, &host),
        Cmd::Spawner => spawner(),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("execbox: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(a: RunArgs) -> Result<ExitCode> {
    let created_at = now_rfc3339();
    if let Some(language) = a.language.clone() {
        return run_in_runtime(a, &language, created_at);
    }
    let limits = match a.limits.resolve() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("execbox: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let source = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let stdin = match (&a.stdin, &a.stdin_file) {
        (Some(s), _) => s.clone().into_bytes(),
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        (None, None) => Vec::new(),
    };
    let runtime = PythonRuntime::discover(&a.host.python_env)?;
    let jailer = Jailer::new(&execbox_spawner::host_config(&a.host.settings()))?;
    let mode = a.mode.unwrap_or(Mode::Main);
    let payload = runtime.payload(source, mode, stdin, &a.args);
    if let Err(e) = payload.validate(&limits) {
        eprintln!("execbox: {e}");
        return Ok(ExitCode::from(2));
    }
    let spec = runtime.jail_spec(limits);
    let outcome = jailer
        .prepare(&spec)
        .context("preparing the jail")?
        .launch(&payload)
        .context("starting the payload")?
        .run(None)
        .context("supervising the run")?;
    let meta = RunMeta {
        id: new_run_id(),
        language: "python".into(),
        version: runtime.version.clone(),
        created_at,
    };
    let record = build_record(meta, mode, &limits, outcome);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The spawner process: single-threaded, its configuration then orders on stdin, events on
/// stdout.
fn spawner() -> Result<ExitCode> {
    // If the server dies, so do we (and with us every jail, by their own parent-death signal).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // Signals for the server's group or cgroup (Ctrl-C, systemd's stop) are not for us: the
    // server drains, then closes our stdin.
    execbox_jail::ignore_termination_signals()?;
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    // Read through an unbuffered handle on the same descriptor: the orders that follow the
    // configuration line are the event loop's.
    let cfg = SpawnerConfig::read_line(&mut std::fs::File::from(input.try_clone()?))?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    execbox_spawner::run(cfg, input, output)?;
    Ok(ExitCode::SUCCESS)
}

/// Start a spawner (this binary) as the server does, read its hello, print its runtimes.
fn runtimes(json: bool, languages: Vec<String>, host: &HostArgs) -> Result<ExitCode> {
    let cfg = SpawnerConfig {
        host: host.settings(),
        pool: 0,
        languages,
        // One look at the runtimes: no template worth starting.
        warm: execbox_proto::spawner::WarmSettings {
            enabled: false,
            ..Default::default()
        },
        ..SpawnerConfig::default()
    };
    let (_spawner, runtimes) = ChildSpawner::start(&cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runtimes)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:12} {:10} {:8} {:14} {:24} PACKAGES",
        "LANGUAGE", "VERSION", "COMPILED", "MODES", "ALIASES"
    );
    for r in &runtimes {
        let modes: Vec<&str> = r.modes.iter().map(|m| m.as_str()).collect();
        println!(
            "{:12} {:10} {:8} {:14} {:24} {}",
            r.language,
            r.version,
            if r.compiled { "yes" } else { "no" },
            modes.join(","),
            r.aliases.join(","),
            r.packages.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `execbox run --language`: one order to a spawner that offers only that language (so only
/// its smoke tests run), the runtime picked by [`select`] as the server picks it, every stage
/// in its own jail with every layer; prints the record the spawner returns.
fn run_in_runtime(a: RunArgs, language: &str, created_at: String) -> Result<ExitCode> {
    let usage = |msg: String| {
        eprintln!("execbox: {msg}");
        Ok(ExitCode::from(2))
    };
    let (limits, max_limits) = match a.limits.resolve_pair() {
        Ok(l) => l,
        Err(e) => return usage(e.to_string()),
    };
    let source = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let Ok(content) = String::from_utf8(source) else {
        return usage(format!("{} is not UTF-8 text", a.file.display()));
    };
    let stdin = match (&a.stdin, &a.stdin_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => return usage(format!("{} is not UTF-8 text", p.display())),
            }
        }
        (None, None) => String::new(),
    };
    // An unknown language is the caller's mistake: say what is installed, start nothing.
    let installed = execbox_runtime::discover(&a.host.runtimes_dir, &a.host.python_env).packages;
    let answers = |p: &execbox_runtime::Package| {
        let m = &p.manifest;
        m.language.eq_ignore_ascii_case(language)
            || m.aliases.iter().any(|x| x.eq_ignore_ascii_case(language))
    };
    if !installed.iter().any(answers) {
        let mut names: Vec<&str> = installed
            .iter()
            .map(|p| p.manifest.language.as_str())
            .collect();
        names.dedup();
        return usage(format!(
            "language {language:?} is not installed in {} (or its toolchain is missing); \
             installed: {}",
            a.host.runtimes_dir.display(),
            names.join(", ")
        ));
    }
    let cfg = SpawnerConfig {
        host: a.host.settings(),
        pool: 0,
        max_limits,
        languages: vec![language.to_owned()],
        // One run: a template would be ready only after it.
        warm: execbox_proto::spawner::WarmSettings {
            enabled: false,
            ..Default::default()
        },
        ..SpawnerConfig::default()
    };
    let (mut spawner, runtimes) = ChildSpawner::start(&cfg)?;
    let runtime = match select(&runtimes, language, a.version.as_deref()) {
        Ok(r) => r.clone(),
        Err(e) => return usage(e.to_string()),
    };
    let mode = a.mode.unwrap_or(Mode::Program);
    if !runtime.modes.contains(&mode) {
        return usage(format!(
            "{} {} does not support mode {}",
            runtime.language,
            runtime.version,
            mode.as_str()
        ));
    }
    let order = RunOrder {
        id: new_run_id(),
        created_at,
        mode,
        files: vec![SourceFile {
            name: entry_name(&a.file, &runtime.entry),
            content,
        }],
        stdin,
        args: a.args,
        limits,
        runtime: Some(runtime.to_ref()),
        cases: vec![],
        compare: Default::default(),
        live: false,
        interactive: false,
    };
    spawner.send(&Order::Run(order))?;
    let record = loop {
        match spawner.next_event()? {
            Event::Finished { record, .. } => break record,
            Event::Failed { message, .. } => bail!("the run failed: {message}"),
            _ => {}
        }
    };
    drop(spawner);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The name the file gets in the jail: its own, when that is a valid name with the runtime's
/// extension (Java's class name follows it), else the runtime's entry name (`main.c`).
fn entry_name(file: &std::path::Path, entry: &str) -> String {
    let ext = |n: &str| n.rsplit_once('.').map(|(_, e)| e.to_owned());
    file.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| validate_file_name(n).is_ok() && !n.starts_with('.') && *n != "out")
        .filter(|n| ext(n).is_some() && ext(n) == ext(entry))
        .map_or_else(|| entry.to_owned(), str::to_owned)
}

fn openapi() -> Result<ExitCode> {
    use execbox_server::openapi::ApiDoc;
    use utoipa::OpenApi;
    println!("{}", ApiDoc::openapi().to_pretty_json()?);
    Ok(ExitCode::SUCCESS)
}

fn check_cmd(json: bool) -> Result<ExitCode> {
    let report = check::probe(&HostConfig::default(), true);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kernel {}", report.kernel);
        for l in &report.layers {
            let mark = match l.status {
                check::Status::Ok => "ok".to_owned(),
                check::Status::Covered => format!(
                    "covered by {}",
                    l.covered_by
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                check::Status::Missing => "MISSING".to_owned(),
            };
            println!("  {:16} {mark}: {}", l.name, l.detail);
        }
        println!("cgroup backend: {}", report.cgroup_backend);
        let v = match report.verdict {
            check::Verdict::Full => {
                "full: execbox runs here with full isolation (a covered layer is enforced by \
                 the layers named)"
            }
            check::Verdict::DegradedOnly => {
                "degraded only: execbox refuses to run here unless --allow-degraded is given \
                 (results then say degraded)"
            }
            check::Verdict::Refuse => "refuse: execbox cannot run here",
        };
        println!("verdict: {v}");
    }
    if report.verdict == check::Verdict::Refuse {
        bail!("host refused");
    }
    Ok(ExitCode::SUCCESS)
}

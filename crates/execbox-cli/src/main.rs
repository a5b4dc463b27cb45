//! `execbox`: the HTTP service (`serve`), one file through the sandbox (`run`), the host check
//! (`check`), and the spawner the service starts (`spawner`).
//!
//! `run` and `spawner` stay single-threaded (no async runtime is built for them): they create
//! jails with `clone3`. Only `serve` starts tokio, and it never forks: it asks its spawner.
#![forbid(unsafe_code)]

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
use execbox_proto::spawner::{Event, HostSettings, SpawnerConfig};
use execbox_proto::{defaults, new_run_id, now_rfc3339, Mode};
use execbox_runtime::{build_record, PythonRuntime, RunMeta};

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
    /// Run one Python file in a fresh jail and print its run record as JSON.
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
    /// The Python file to run.
    file: PathBuf,
    /// main: call main() and return its JSON value; program: run as `python3 FILE`.
    #[arg(long, value_parser = mode_parser(), default_value = "main")]
    mode: Mode,
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
        Cmd::Runtimes { json, host } => runtimes(json, &host),
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
    let mode = a.mode;
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
fn runtimes(json: bool, host: &HostArgs) -> Result<ExitCode> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let cfg = SpawnerConfig {
        host: host.settings(),
        pool: 0,
        ..SpawnerConfig::default()
    };
    let mut child = Command::new(std::env::current_exe()?)
        .arg("spawner")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the spawner")?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("spawner pipes missing");
    };
    stdin.write_all(&cfg.to_line())?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    drop(stdin); // EOF: the spawner exits
    let _ = child.wait();
    let event: Event =
        serde_json::from_str(&line).with_context(|| format!("the spawner answered {line:?}"))?;
    let runtimes = match event {
        Event::Hello { runtimes, .. } => runtimes,
        Event::Fatal { message } => bail!("{message}"),
        other => bail!("unexpected first event {other:?}"),
    };
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

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
use clap::{Parser, Subcommand, ValueEnum};
use execbox_jail::{check, HostConfig, Jailer};
use execbox_runtime::{build_record, new_run_id, now_rfc3339, Mode, PythonRuntime, RunMeta};

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
    /// The jail spawner the service starts (orders on stdin, events on stdout). Internal.
    #[command(hide = true)]
    Spawner(Box<SpawnerArgs>),
}

/// Where the jail machinery finds its host resources (shared by `run`, `serve`, `spawner`).
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The Python environment (a venv with numpy and pandas).
    #[arg(long, env = "EXECBOX_PYTHON_ENV", default_value = execbox_runtime::python::DEFAULT_ENV)]
    pub python_env: PathBuf,
    /// Run even if an isolation layer is missing; records then say `degraded: true`.
    /// (`EXECBOX_ALLOW_DEGRADED` accepts 1/0, true/false, yes/no, on/off.)
    #[arg(long, env = "EXECBOX_ALLOW_DEGRADED", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_degraded: bool,
    /// State directory (uid slot locks, jail mount point).
    #[arg(long, env = "EXECBOX_STATE_DIR", default_value = "/run/execbox")]
    pub state_dir: PathBuf,
    /// cgroup mount root.
    #[arg(long, env = "EXECBOX_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
}

impl HostArgs {
    fn host_config(&self) -> HostConfig {
        HostConfig {
            state_dir: self.state_dir.clone(),
            cgroup_root: self.cgroup_root.clone(),
            allow_degraded: self.allow_degraded,
            ..HostConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
struct SpawnerArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Jails with the default limits kept prepared ahead of demand.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// The default limits, as JSON (pooled jails are prepared with them).
    #[arg(long)]
    default_limits: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Call main() and return its value as `result`.
    Main,
    /// Run the file as a program.
    Program,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The Python file to run.
    file: PathBuf,
    /// main: call main() and return its JSON value; program: run as `python3 FILE`.
    #[arg(long, value_enum, default_value = "main")]
    mode: ModeArg,
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
        Cmd::Spawner(a) => spawner(*a),
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
    let jailer = Jailer::new(&a.host.host_config())?;
    let mode = match a.mode {
        ModeArg::Main => Mode::Main,
        ModeArg::Program => Mode::Program,
    };
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

/// The spawner process: single-threaded, orders on stdin, events on stdout.
fn spawner(a: SpawnerArgs) -> Result<ExitCode> {
    // If the server dies, so do we (and with us every jail, by their own parent-death signal).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // Signals for the server's group or cgroup (Ctrl-C, systemd's stop) are not for us: the
    // server drains, then closes our stdin.
    execbox_jail::ignore_termination_signals()?;
    let default_limits: execbox_jail::Limits = match &a.default_limits {
        Some(j) => serde_json::from_str(j).context("--default-limits")?,
        None => execbox_jail::Limits::default(),
    };
    let runtime = PythonRuntime::discover(&a.host.python_env)?;
    let jailer = Jailer::new(&a.host.host_config())?;
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let cfg = execbox_spawner::SpawnerConfig {
        pool: a.pool,
        default_limits,
    };
    execbox_spawner::Spawner::new(
        jailer,
        runtime,
        cfg,
        std::io::stdout().as_fd().try_clone_to_owned()?,
    )
    .serve(input)?;
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
                check::Status::Covered => format!("covered by {}", l.covered_by.join(", ")),
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

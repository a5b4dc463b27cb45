//! `execbox`: run one file through the sandbox, or check what this host supports.
//!
//! This process stays single-threaded (no async runtime): it is its own spawner, so it may
//! `clone3` the jail directly.
#![forbid(unsafe_code)]

mod limits;

use std::io::Write;
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
    /// The Python environment (a venv with numpy and pandas).
    #[arg(long, env = "EXECBOX_PYTHON_ENV", default_value = execbox_runtime::python::DEFAULT_ENV)]
    python_env: PathBuf,
    /// Run even if an isolation layer is missing; the record then says `degraded: true`.
    #[arg(long, env = "EXECBOX_ALLOW_DEGRADED")]
    allow_degraded: bool,
    /// State directory (uid slot locks, jail mount point).
    #[arg(long, env = "EXECBOX_STATE_DIR", default_value = "/run/execbox")]
    state_dir: PathBuf,
    /// cgroup mount root (`/sys/fs/cgroup`).
    #[arg(long, env = "EXECBOX_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Arguments passed to the program (program mode).
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Check { json } => check_cmd(json),
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
    let runtime = PythonRuntime::discover(&a.python_env)?;
    let host = HostConfig {
        state_dir: a.state_dir.clone(),
        cgroup_root: a.cgroup_root.clone(),
        allow_degraded: a.allow_degraded,
        ..HostConfig::default()
    };
    let jailer = Jailer::new(&host)?;
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

fn check_cmd(json: bool) -> Result<ExitCode> {
    let report = check::probe(&HostConfig::default(), true);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kernel {}", report.kernel);
        for l in &report.layers {
            let mark = if l.available { "ok  " } else { "MISSING" };
            println!("  {mark:8} {:16} {}", l.name, l.detail);
        }
        println!("cgroup backend: {}", report.cgroup_backend);
        let v = match report.verdict {
            check::Verdict::Full => "execbox runs here with every isolation layer",
            check::Verdict::DegradedOnly => {
                "execbox refuses to run here unless --allow-degraded is given (results say degraded)"
            }
            check::Verdict::Refuse => "execbox cannot run here",
        };
        println!("verdict: {v}");
    }
    if report.verdict == check::Verdict::Refuse {
        bail!("host refused");
    }
    Ok(ExitCode::SUCCESS)
}

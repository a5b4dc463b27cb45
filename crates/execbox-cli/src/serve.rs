//! `execbox serve`: flags and environment to [`ServerConfig`], logging, signals, then tokio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use execbox_jail::check;
use execbox_proto::spawner::SpawnerConfig;
use execbox_server::quota::{QuotaConfig, RateQuota};
use execbox_server::ServerConfig;

use crate::limits::LimitArgs;
use crate::HostArgs;

/// Flags of `execbox serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen address. Default 0.0.0.0:8080, or 0.0.0.0:$PORT when PORT is set.
    #[arg(long, env = "EXECBOX_LISTEN")]
    listen: Option<SocketAddr>,
    /// Runs executing at once (default: 2 x CPU count).
    #[arg(long, env = "EXECBOX_MAX_RUNNING")]
    max_running: Option<usize>,
    /// Runs waiting behind them before 429 (default: 8 x CPU count).
    #[arg(long, env = "EXECBOX_MAX_QUEUED")]
    max_queued: Option<usize>,
    /// When running and queued are full, how long a run request waits for a place (before its
    /// body is read) until it is answered 429: seconds (`1`, `0.5`) or with a unit (`250ms`);
    /// `0` refuses at once; at most 60s.
    #[arg(long, env = "EXECBOX_QUEUE_WAIT", default_value = "1s",
          value_parser = crate::units::parse_duration, value_name = "DURATION")]
    queue_wait: Duration,
    /// Seconds a finished run stays queryable.
    #[arg(long, env = "EXECBOX_RETENTION_SECS", default_value_t = 600)]
    retention_secs: u64,
    /// Jails kept prepared ahead of demand (default: 4 x CPU count, 4 to 16).
    #[arg(long, env = "EXECBOX_POOL")]
    pool: Option<usize>,
    /// The warm path: serve main-mode runs of runtimes with a template (Python) from a
    /// template process that has the runtime and its modules loaded (docs/security.md,
    /// "Templates"). `--warm false` (EXECBOX_WARM=false) runs everything cold.
    #[arg(long, env = "EXECBOX_WARM", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL")]
    warm: bool,
    /// Children a template forks before a fresh template replaces it.
    #[arg(long, env = "EXECBOX_WARM_MAX_RUNS", default_value_t = execbox_proto::defaults::WARM_MAX_RUNS)]
    warm_max_runs: u64,
    /// Age after which a fresh template replaces it (`10m`, `600`).
    #[arg(long, env = "EXECBOX_WARM_MAX_AGE", default_value = "10m",
          value_parser = crate::units::parse_duration, value_name = "DURATION")]
    warm_max_age: Duration,
    /// Modules the Python template imports, comma-separated (default: numpy,pandas; empty:
    /// none).
    #[arg(long, env = "EXECBOX_WARM_MODULES", value_delimiter = ',')]
    warm_modules: Option<Vec<String>>,
    /// The jail library templates load (default: libexecbox_jail.so beside this executable).
    #[arg(long, env = "EXECBOX_WARM_LIB")]
    warm_lib: Option<PathBuf>,
    /// With the warm path on: mount an empty cgroup v1 hierarchy with `favordynmods` (Linux
    /// 6.0) under the state directory, unless a cgroup mount has it already, so cgroup joins
    /// stop waiting for an RCU grace period (host-wide; forks and exits get slightly dearer).
    #[arg(long, env = "EXECBOX_CGROUP_FAVORDYNMODS", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    cgroup_favordynmods: bool,
    /// Largest request body, bytes.
    #[arg(long, env = "EXECBOX_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most files a run returns from `/work/out` (more: `output_files_limit`).
    #[arg(long, env = "EXECBOX_MAX_OUTPUT_FILES",
          default_value_t = execbox_proto::cases::DEFAULT_MAX_OUTPUT_FILES)]
    max_output_files: usize,
    /// Most bytes (all files together) a run returns from `/work/out` (more:
    /// `output_files_limit`).
    #[arg(long, env = "EXECBOX_MAX_OUTPUT_FILES_BYTES",
          default_value_t = execbox_proto::cases::DEFAULT_MAX_OUTPUT_FILES_BYTES)]
    max_output_files_bytes: u64,
    /// Seconds in-flight runs get to finish on SIGTERM before they are cancelled.
    #[arg(long, env = "EXECBOX_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Listen address of /healthz, /readyz and /metrics (keep it off the public network).
    #[arg(long, env = "EXECBOX_PRIVATE_LISTEN", default_value = "127.0.0.1:9090")]
    private_listen: SocketAddr,
    /// Serve without authentication: anyone who reaches the port runs code. Local
    /// development only; logs a warning. Otherwise APP_JWT_SECRET must be set.
    #[arg(long, action = clap::ArgAction::SetTrue)]
    insecure_no_auth: bool,
    /// TLS certificate chain (PEM) for the public listener; with --tls-key.
    #[arg(long, env = "EXECBOX_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "EXECBOX_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Per user, a hard cap: sustained requests per second (default: no rate quota; 0: off).
    #[arg(long, env = "EXECBOX_QUOTA_RPS")]
    quota_rps: Option<u32>,
    /// Per user: requests that may arrive at once above the rate (default: 2 x --quota-rps).
    #[arg(long, env = "EXECBOX_QUOTA_BURST")]
    quota_burst: Option<u32>,
    /// Per user, a hard cap: runs queued or running at once (default: no cap of its own, so one
    /// user may take every place the server admits, --max-running + --max-queued; 0: off).
    #[arg(long, env = "EXECBOX_QUOTA_CONCURRENT")]
    quota_concurrent: Option<usize>,
    /// Per user, a hard cap: CPU-seconds per window (default: no CPU quota; 0: off).
    #[arg(long, env = "EXECBOX_QUOTA_CPU_SECONDS")]
    quota_cpu_seconds: Option<f64>,
    /// Length of the CPU-seconds window, seconds.
    #[arg(long, env = "EXECBOX_QUOTA_WINDOW_SECS", default_value_t = 3600)]
    quota_window_secs: u64,
    /// Open connections on the public listener; more wait in the kernel's backlog until one
    /// closes (default: max(1024, 2 x --max-websockets)).
    #[arg(long, env = "EXECBOX_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open WebSockets in total (default: max(64, 4 x --max-websockets-per-user)).
    #[arg(long, env = "EXECBOX_MAX_WEBSOCKETS")]
    max_websockets: Option<usize>,
    /// Open WebSockets per user (default: --max-running + --max-queued).
    #[arg(long, env = "EXECBOX_MAX_WEBSOCKETS_PER_USER")]
    max_websockets_per_user: Option<usize>,
    /// Seconds a WebSocket may stay without a client message and without a run.
    #[arg(long, env = "EXECBOX_WS_IDLE_SECS", default_value_t = 60)]
    ws_idle_secs: u64,
    /// Seconds a WebSocket without a token in its headers has to send its `auth` message.
    #[arg(long, env = "EXECBOX_WS_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    ws_auth_timeout_secs: u64,
    /// Browser origins that may open a WebSocket, comma-separated (`https://app.example`, or
    /// `*` for any). Empty: only the server's own origin. Requests without Origin (not a
    /// browser) are always allowed.
    #[arg(long, env = "EXECBOX_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Seconds of clock skew tolerated on a token's exp and nbf.
    #[arg(long, env = "EXECBOX_JWT_LEEWAY_SECS", default_value_t = execbox_server::auth::LEEWAY_SECS, hide = true)]
    jwt_leeway_secs: u64,
    /// Keep run state and per-user quotas in Redis (`redis://host:6379/0`), shared by every
    /// replica that names the same Redis; default: in this process's memory.
    #[arg(long, env = "EXECBOX_REDIS_URL")]
    redis_url: Option<String>,
    /// With --redis-url: seconds after which a run whose replica stopped renewing its lease
    /// (the replica died) ends internal_error.
    #[arg(long, env = "EXECBOX_LEASE_SECS", default_value_t = 10)]
    lease_secs: u64,
    /// Log as JSON lines.
    #[arg(long, env = "EXECBOX_LOG_JSON", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    host: HostArgs,
}

fn listen_addr(a: &ServeArgs) -> Result<SocketAddr> {
    if let Some(l) = a.listen {
        return Ok(l);
    }
    match std::env::var("PORT") {
        Ok(p) => {
            let port: u16 = p
                .parse()
                .with_context(|| format!("PORT={p:?} is not a port"))?;
            Ok(SocketAddr::from(([0, 0, 0, 0], port)))
        }
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 8080))),
    }
}

/// The per-user quotas: each one off unless the operator set it (a value of 0 also means off).
fn quotas(a: &ServeArgs) -> Result<QuotaConfig> {
    let rate = a.quota_rps.filter(|&r| r > 0).map(|per_second| RateQuota {
        per_second,
        burst: a.quota_burst.unwrap_or(per_second.saturating_mul(2)).max(1),
    });
    anyhow::ensure!(
        rate.is_some() || a.quota_burst.is_none(),
        "--quota-burst needs --quota-rps (there is no rate quota without it)"
    );
    let cpu_seconds = a.quota_cpu_seconds.filter(|&c| c > 0.0);
    if let Some(c) = cpu_seconds {
        anyhow::ensure!(c.is_finite(), "--quota-cpu-seconds must be a number");
    }
    Ok(QuotaConfig {
        rate,
        concurrent_runs: a.quota_concurrent.filter(|&c| c > 0),
        cpu_seconds,
        window: Duration::from_secs(a.quota_window_secs.max(1)),
    })
}

/// Build the config and serve until SIGTERM or Ctrl-C.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    init_logging(a.log_json);
    let defaults = ServerConfig::default();
    let (default_limits, max_limits) = a.limits.resolve_pair().map_err(anyhow::Error::msg)?;
    let jwt_secret = match (std::env::var("APP_JWT_SECRET"), a.insecure_no_auth) {
        (Ok(s), _) if !s.is_empty() => Some(s.into_bytes()),
        (_, true) => None,
        _ => anyhow::bail!(
            "APP_JWT_SECRET is not set. Every run endpoint requires an HS256 bearer token signed \
             with it: export APP_JWT_SECRET=\"$(head -c 32 /dev/urandom | base64)\" and mint \
             tokens with `execbox token --user-id <id>`. For local development only, \
             --insecure-no-auth serves without authentication."
        ),
    };
    let max_running = a.max_running.unwrap_or(defaults.max_running).max(1);
    let max_queued = a.max_queued.unwrap_or(defaults.max_queued);
    let max_websockets_per_user = a.max_websockets_per_user.unwrap_or_else(|| {
        execbox_server::config::default_max_websockets_per_user(max_running, max_queued)
    });
    let max_websockets = a
        .max_websockets
        .unwrap_or_else(|| execbox_server::config::default_max_websockets(max_running, max_queued));
    let allowed_origins = execbox_server::origin::parse_allow_list(&a.allowed_origins)
        .context("--allowed-origins")?;
    anyhow::ensure!(
        a.queue_wait <= Duration::from_secs(60),
        "--queue-wait is at most 60s (a client waits that long before a 429)"
    );
    let cfg = ServerConfig {
        max_connections: a
            .max_connections
            .unwrap_or_else(|| execbox_server::config::default_max_connections(max_websockets))
            .max(1),
        max_websockets,
        max_websockets_per_user,
        ws_idle: Duration::from_secs(a.ws_idle_secs.max(1)),
        ws_auth_timeout: Duration::from_secs(a.ws_auth_timeout_secs.max(1)),
        allowed_origins,
        jwt_leeway: Duration::from_secs(a.jwt_leeway_secs),
        redis: a.redis_url.clone().filter(|u| !u.is_empty()).map(|url| {
            execbox_server::config::RedisConfig {
                url,
                lease: Duration::from_secs(a.lease_secs.max(3)),
            }
        }),
        jwt_secret,
        private_listen: a.private_listen,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        quotas: quotas(&a)?,
        listen: listen_addr(&a)?,
        max_running,
        max_queued,
        queue_wait: a.queue_wait,
        retention: Duration::from_secs(a.retention_secs),
        spawner: SpawnerConfig {
            host: a.host.settings(),
            pool: a.pool.unwrap_or(defaults.spawner.pool),
            default_limits,
            max_limits,
            max_output_files: a.max_output_files,
            max_output_files_bytes: a.max_output_files_bytes,
            languages: Vec::new(),
            warm: execbox_proto::spawner::WarmSettings {
                enabled: a.warm,
                max_runs: a.warm_max_runs.max(1),
                max_age_secs: a.warm_max_age.as_secs().max(1),
                modules: a
                    .warm_modules
                    .clone()
                    .map(|m| m.into_iter().filter(|s| !s.is_empty()).collect()),
                lib: a.warm_lib.clone(),
                favordynmods: a.cgroup_favordynmods,
            },
        },
        max_body_bytes: a.max_body_bytes,
        shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
        max_limits,
        ..defaults
    };
    host_gate(&a.host)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(execbox_server::serve(cfg, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Refuse to serve, before listening, on a host that lacks an isolation layer: the same deep
/// probe as `execbox check` (it forks namespaced children and creates a probe cgroup, so it runs
/// here, before the async runtime starts any thread). Without it the server would listen, answer
/// 503 and restart a spawner that refuses the host, forever; a container would look alive.
/// Degraded (an essential layer missing) is served only when the operator allowed it.
fn host_gate(host: &HostArgs) -> Result<()> {
    let report = check::probe(&execbox_spawner::host_config(&host.settings()), true);
    let missing: Vec<String> = report
        .layers
        .iter()
        .filter(|l| l.status == check::Status::Missing)
        .map(|l| format!("  {}: {}", l.name, l.detail))
        .collect();
    let what = |verdict: &str| {
        format!(
            "{verdict}; missing isolation layers (from `execbox check`):\n{}",
            missing.join("\n")
        )
    };
    const CONTAINER_HINT: &str = "in a container, start it with the flags of docs/security.md, \
         'In a container' (--cap-drop ALL --cap-add SYS_ADMIN --cap-add SETPCAP --cap-add SETUID \
         --cap-add SETGID --security-opt seccomp=docker/seccomp.json --cgroupns private)";
    match report.verdict {
        check::Verdict::Full => Ok(()),
        check::Verdict::DegradedOnly if host.allow_degraded => {
            tracing::warn!(
                missing = ?report.missing(),
                "serving DEGRADED: an isolation layer is missing and --allow-degraded \
                 (EXECBOX_ALLOW_DEGRADED) accepts that; every run record says degraded"
            );
            Ok(())
        }
        check::Verdict::DegradedOnly => anyhow::bail!(
            "{}\nrefusing to run untrusted code without them; --allow-degraded \
             (EXECBOX_ALLOW_DEGRADED=1) accepts that and every record then says degraded; \
             {CONTAINER_HINT}",
            what("this host offers only degraded isolation")
        ),
        check::Verdict::Refuse => anyhow::bail!(
            "{}\nthese layers are required (no degraded mode runs without them); \
             {CONTAINER_HINT}",
            what("this host cannot run execbox")
        ),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

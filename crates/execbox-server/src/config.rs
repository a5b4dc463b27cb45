//! Server settings. Every field has an embedded default so `execbox serve` runs with none.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use execbox_proto::spawner::SpawnerConfig;
use execbox_proto::{defaults, Limits};

use crate::quota::QuotaConfig;
pub use crate::shared::redis::RedisConfig;

/// Everything `execbox serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Public listen address.
    pub listen: SocketAddr,
    /// Runs executing at once.
    pub max_running: usize,
    /// Runs waiting behind them before new ones get 429.
    pub max_queued: usize,
    /// When running and queued are full, how long a request waits for a place (before its
    /// body is read) until it is answered 429; zero refuses at once.
    pub queue_wait: Duration,
    /// How long finished runs stay queryable.
    pub retention: Duration,
    /// At most this many runs are remembered (oldest finished ones are forgotten first).
    pub max_stored_runs: usize,
    /// At most this many bytes of finished records are kept (oldest forgotten first).
    pub max_stored_bytes: usize,
    /// The spawner's configuration, sent to it as it starts: host paths, the pool and the
    /// limits of a run that asks for none (`spawner.default_limits`).
    pub spawner: SpawnerConfig,
    /// The most a run may ask for.
    pub max_limits: Limits,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest source file, bytes.
    pub max_source_bytes: usize,
    /// On SIGTERM, how long in-flight runs may take before they are cancelled.
    pub shutdown_grace: Duration,
    /// The binary that provides `spawner` (normally the running `execbox`).
    pub spawner_exe: PathBuf,
    /// HS256 secret for bearer tokens; `None` disables authentication (development only).
    pub jwt_secret: Option<Vec<u8>>,
    /// Listen address of the private endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub private_listen: SocketAddr,
    /// TLS certificate and key (PEM) for the public listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Per-user quotas.
    pub quotas: QuotaConfig,
    /// Open connections on the public listener; beyond it new connections wait in the
    /// kernel's accept backlog until one closes.
    pub max_connections: usize,
    /// Open WebSockets in total (authenticated or not).
    pub max_websockets: usize,
    /// Open WebSockets per user.
    pub max_websockets_per_user: usize,
    /// A WebSocket with no client message and no run for this long is closed.
    pub ws_idle: Duration,
    /// How long a WebSocket without a token in its headers may take to send `auth`.
    pub ws_auth_timeout: Duration,
    /// Browser origins allowed to open a WebSocket (`scheme://host[:port]`, or `*`); empty:
    /// only the server's own origin (the `Origin` host equals the `Host` header).
    pub allowed_origins: Vec<String>,
    /// Clock skew tolerated on a token's `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Run state and quotas in Redis, shared by replicas (`--redis-url`); `None`: in memory.
    pub redis: Option<RedisConfig>,
}

/// Default per-user WebSocket cap: every place the server has for runs (running plus queued),
/// so one client multiplexing runs over sockets is never refused work the server would take.
pub fn default_max_websockets_per_user(max_running: usize, max_queued: usize) -> usize {
    (max_running + max_queued).max(1)
}

/// Default total WebSocket cap: four users' worth, and at least 64.
pub fn default_max_websockets(max_running: usize, max_queued: usize) -> usize {
    (4 * default_max_websockets_per_user(max_running, max_queued)).max(64)
}

/// Default cap on open public connections: room for every WebSocket plus as many HTTP
/// connections again, and at least 1024.
pub fn default_max_connections(max_websockets: usize) -> usize {
    (2 * max_websockets).max(1024)
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cpus = defaults::cpus();
        // Two runs per CPU: a run spends part of its life waiting on the kernel (its jail's
        // set-up and exit, a namespace's teardown, the template reaping it), and on the warm
        // path that part is most of it (measured: hello at concurrency 4 on 2 cores, 254
        // requests/s with one run per CPU, 315 with two).
        let (max_running, max_queued) = (cpus * 2, cpus * 8);
        let max_websockets = default_max_websockets(max_running, max_queued);
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_running,
            max_queued,
            queue_wait: Duration::from_secs(1),
            retention: Duration::from_secs(600),
            max_stored_runs: 10_000,
            max_stored_bytes: 256 * 1024 * 1024,
            spawner: SpawnerConfig::default(),
            max_limits: Limits::default_maxima(),
            max_body_bytes: 2 * 1024 * 1024,
            max_source_bytes: 512 * 1024,
            shutdown_grace: Duration::from_secs(10),
            spawner_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("execbox")),
            jwt_secret: None,
            private_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            tls: None,
            quotas: QuotaConfig::default(),
            max_connections: default_max_connections(max_websockets),
            max_websockets,
            max_websockets_per_user: default_max_websockets_per_user(max_running, max_queued),
            ws_idle: Duration::from_secs(60),
            ws_auth_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            jwt_leeway: Duration::from_secs(crate::auth::LEEWAY_SECS),
            redis: None,
        }
    }
}

//! Shared state of the HTTP handlers.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::live::LiveRuns;
use crate::metrics::Metrics;
use crate::routes::ws::slots::WsSlots;
use crate::sandbox::Sandbox;
use crate::shared::memory::MemoryQuotas;
use crate::shared::redis::{Conn, RedisQuotas, RedisRuns};
use crate::shared::{QuotaBackend, RunBackend};
use crate::store::RunStore;
use crate::ServerError;

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

/// The shared parts (only the crate sees into them).
#[derive(Debug)]
pub struct Inner {
    /// Settings.
    pub(crate) cfg: ServerConfig,
    /// Runs: in memory, or in Redis with `--redis-url`.
    pub(crate) store: Arc<dyn RunBackend>,
    /// The event logs of live runs (this replica's).
    pub(crate) live: Arc<LiveRuns>,
    /// The admission gate.
    pub(crate) admission: Admission,
    /// The sandbox: the spawner client, or a fake in tests.
    pub(crate) sandbox: Arc<dyn Sandbox>,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// Token checking; `None` only with `--insecure-no-auth`.
    pub(crate) auth: Option<Authenticator>,
    /// Per-user quotas: in memory, or in Redis with `--redis-url`.
    pub(crate) quotas: Arc<dyn QuotaBackend>,
    /// Open WebSockets, in total and per user.
    pub(crate) websockets: WsSlots,
    /// Cancelled when the server starts shutting down (listeners stop accepting; WebSocket
    /// sessions close once their run, if any, has finished).
    pub(crate) shutdown: CancellationToken,
}

impl AppState {
    /// The state of a server with `cfg` whose runs go to `sandbox`.
    pub fn new(cfg: ServerConfig, sandbox: Arc<dyn Sandbox>) -> Result<Self, ServerError> {
        let metrics = Metrics::new()?;
        let (store, quotas): (Arc<dyn RunBackend>, Arc<dyn QuotaBackend>) = match &cfg.redis {
            None => (
                Arc::new(RunStore::with_max_bytes(cfg.max_stored_bytes)),
                Arc::new(MemoryQuotas::new(cfg.quotas.clone())),
            ),
            Some(r) => {
                let conn = Conn::new(&r.url).map_err(ServerError::Redis)?;
                (
                    Arc::new(RedisRuns::new(
                        conn.clone(),
                        r,
                        cfg.retention,
                        cfg.max_stored_bytes,
                    )),
                    Arc::new(RedisQuotas::new(conn, cfg.quotas.clone(), r.lease)),
                )
            }
        };
        Ok(Self(Arc::new(Inner {
            auth: cfg
                .jwt_secret
                .as_deref()
                .map(|secret| Authenticator::with_leeway(secret, cfg.jwt_leeway)),
            websockets: WsSlots::new(
                cfg.max_websockets,
                cfg.max_websockets_per_user,
                metrics.websockets_open.clone(),
            ),
            quotas,
            admission: Admission::new(cfg.max_running, cfg.max_queued),
            store,
            shutdown: CancellationToken::new(),
            live: Arc::default(),
            metrics,
            sandbox,
            cfg,
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

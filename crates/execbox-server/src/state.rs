//! Shared state of the HTTP handlers.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::quota::Quotas;
use crate::routes::ws::slots::WsSlots;
use crate::spawner_client::SpawnerClient;
use crate::store::RunStore;

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Inner>);

/// The shared parts.
#[derive(Debug)]
pub struct Inner {
    /// Settings.
    pub cfg: ServerConfig,
    /// Runs.
    pub store: Arc<RunStore>,
    /// The admission gate.
    pub admission: Admission,
    /// The spawner.
    pub spawner: SpawnerClient,
    /// Metrics.
    pub metrics: Metrics,
    /// Token checking; `None` only with `--insecure-no-auth`.
    pub auth: Option<Authenticator>,
    /// Per-user quotas.
    pub quotas: Quotas,
    /// Open WebSockets, in total and per user.
    pub websockets: WsSlots,
    /// Cancelled when the server starts shutting down (listeners stop accepting; WebSocket
    /// sessions close once their run, if any, has finished).
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

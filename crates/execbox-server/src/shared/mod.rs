//! Where run state and per-user quotas live: this process's memory (the default, one node),
//! or Redis (`--redis-url`), so that several replicas behind a load balancer answer for every
//! run and enforce each user's quotas together.
//!
//! Two traits, each with both implementations:
//!
//! - [`RunBackend`]: the run records (queued, running, final within the retention period),
//!   who owns them, and cancellation. The in-memory one is [`crate::store::RunStore`]; the
//!   Redis one ([`redis::RedisRuns`]) keeps the runs this replica drives in a local
//!   `RunStore` too (their cancellation tokens live here), writes every change through to
//!   Redis, and holds a lease on each of them that it renews while it lives.
//! - [`QuotaBackend`]: request rate, concurrent runs and CPU-seconds per user. In memory:
//!   [`crate::quota::Quotas`]; in Redis: [`redis::RedisQuotas`] (Lua scripts, so that each
//!   check-and-take is atomic across replicas).
//!
//! When Redis cannot be reached, an operation that needs it fails with [`Unavailable`], which
//! the API answers `503 state_unavailable` (with `Retry-After`); nothing is decided without
//! the shared state, and the next request tries again (the connection reconnects by itself).

pub(crate) mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::http::StatusCode;
use execbox_proto::{ErrorCode, RunRecord};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// A boxed future (the traits are used as trait objects).
pub(crate) type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The shared state store (Redis) could not be reached or answered an error.
#[derive(Debug, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        tracing::warn!(error = %e.0, "shared state store unavailable");
        ApiError {
            retry_after: Some(2),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StateUnavailable,
                "the shared state store (Redis) is unreachable; retry shortly",
            )
        }
    }
}

/// The shared state's health, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// In this process's memory: always there.
    Memory,
    /// Redis answered.
    Up,
    /// Redis did not answer.
    Down,
}

impl Health {
    pub(crate) fn ok(self) -> bool {
        self != Health::Down
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Memory => "memory",
            Health::Up => "up",
            Health::Down => "unreachable",
        }
    }
}

/// Run records, owners and cancellation.
pub(crate) trait RunBackend: Send + Sync + std::fmt::Debug {
    /// Store a new queued run that this process will drive (`cancel` stops it here).
    fn insert(
        &self,
        record: RunRecord,
        owner: Option<String>,
        cancel: CancellationToken,
    ) -> Fut<'_, Result<(), Unavailable>>;
    /// The record, if it exists and `owner` may see it.
    fn get<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>>;
    /// The payload started (fire and forget: called from the sandbox's event path).
    fn set_running(&self, id: &str);
    /// The final record. Never fails: a record the shared store cannot take now is kept here
    /// and written when it can.
    fn finish(&self, record: RunRecord) -> Fut<'_, ()>;
    /// Request cancellation wherever the run is driven; the record as it is now, or `None`
    /// if unknown or not `owner`'s.
    fn cancel<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>>;
    /// Cancel every unfinished run this process drives (shutdown).
    fn cancel_all(&self);
    /// Forget this process's finished runs older than `retention`, then beyond `max`.
    fn gc(&self, retention: Duration, max: usize);
    /// Periodic work (every second): leases, cancellation requests, the sweep of runs whose
    /// replica died.
    fn tick(&self) -> Fut<'_, ()>;
    /// Can the shared state be reached?
    fn health(&self) -> Fut<'_, Health>;
}

/// Per-user quotas.
pub(crate) trait QuotaBackend: Send + Sync + std::fmt::Debug {
    /// One request by `user` (429 `rate_quota`, or 503 when the store is unreachable).
    fn check_rate<'a>(&'a self, user: &'a str) -> Fut<'a, Result<(), ApiError>>;
    /// Take one of `user`'s concurrent-run places for run `run`, if its CPU window allows a
    /// run at all.
    fn start_run<'a>(&'a self, user: &'a str, run: &'a str) -> Fut<'a, Result<(), ApiError>>;
    /// Give run `run`'s place back and charge its CPU time (best effort).
    fn end_run<'a>(&'a self, user: &'a str, run: &'a str, cpu_ms: f64) -> Fut<'a, ()>;
    /// Drop state of users not seen for a while.
    fn gc(&self);
}

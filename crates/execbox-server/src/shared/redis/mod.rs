//! The Redis backends: run state and quotas shared by every replica.
//!
//! Keys (all under `execbox:`; every one expires):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `run:{id}` | hash | `rec` (the record, JSON), `status`, `owner` (JSON), `cancel` | retention once final; [`IN_FLIGHT_TTL`] before |
//! | `lease:{id}` | string | the replica driving the run | the lease ([`RedisConfig::lease`]), renewed every second |
//! | `active` | set | ids of unfinished runs (what the sweep looks at) | members leave when final |
//! | `quota:runs:{user}` | sorted set | the user's unfinished runs, scored by lease deadline | with the leases |
//! | `quota:cpu:{user}` | string | CPU-seconds used in the current window | the window |
//! | `quota:rate:{user}` | string | the rate limiter's theoretical arrival time (GCRA) | when idle |
//!
//! `status` is the authoritative state of a run (`rec.status` may lag behind it: `running`
//! is set without rewriting the record); a final `status` is never overwritten except by the
//! replica that drove the run, with its real record.
//!
//! A replica that dies stops renewing its leases: every replica sweeps `active` each second,
//! and a run whose lease has expired becomes `internal_error` (a Lua script re-checks the
//! lease and the status atomically, so a live owner's final record always wins); the user's
//! concurrent-run places held by it lapse with the same lease deadline.
//!
//! A cancel reaches the replica driving the run through the hash's `cancel` field, which
//! that replica reads with every lease renewal (each second).

mod quota;
mod runs;
mod scripts;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use quota::RedisQuotas;
pub(crate) use runs::RedisRuns;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Unavailable;

/// How long an unfinished run's hash lives without being finished or swept (a backstop: the
/// lease sweep ends it long before).
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest any one Redis operation may take before the request gets 503.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the Redis backends.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// A run whose replica has not renewed its lease for this long is ended `internal_error`.
    pub lease: Duration,
}

/// One multiplexed connection to Redis, made on first use and re-made after a failure
/// (redis-rs's `ConnectionManager` reconnects by itself once it exists; making it is retried
/// here, so a replica starts, and answers 503, while Redis is not there yet).
#[derive(Clone)]
pub(crate) struct Conn {
    client: redis::Client,
    mgr: Arc<tokio::sync::Mutex<Slot>>,
}

/// The connection once made; until then, when the last attempt failed.
#[derive(Default)]
struct Slot {
    mgr: Option<ConnectionManager>,
    failed_at: Option<tokio::time::Instant>,
}

/// After a failed attempt to connect, requests fail at once for this long instead of each
/// trying again in turn (the attempts are serialised).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    Unavailable(e.to_string())
}

impl Conn {
    /// A connection to `url` (parsed now, connected on first use).
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        Ok(Self {
            client,
            mgr: Arc::default(),
        })
    }

    /// The connection, made if needed.
    pub(crate) async fn get(&self) -> Result<ConnectionManager, Unavailable> {
        let mut slot = self.mgr.lock().await;
        if let Some(m) = slot.mgr.as_ref() {
            return Ok(m.clone());
        }
        if slot
            .failed_at
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE)
        {
            return Err(Unavailable("Redis was unreachable a moment ago".into()));
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1)
            .set_max_delay(500);
        let made = tokio::time::timeout(
            OP_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        .map_err(|_| Unavailable("connecting to Redis timed out".into()))
        .and_then(|r| r.map_err(unavailable));
        match made {
            Ok(m) => {
                slot.mgr = Some(m.clone());
                Ok(m)
            }
            Err(e) => {
                slot.failed_at = Some(tokio::time::Instant::now());
                Err(e)
            }
        }
    }

    /// Run `op` on the connection within [`OP_TIMEOUT`].
    pub(crate) async fn run<T, F>(
        &self,
        op: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let c = self.get().await?;
        tokio::time::timeout(OP_TIMEOUT, op(c))
            .await
            .map_err(|_| Unavailable("Redis did not answer in time".into()))?
            .map_err(unavailable)
    }

    /// PING.
    pub(crate) async fn ping(&self) -> bool {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_ok()
    }
}

/// Key names.
pub(crate) mod key {
    pub(crate) fn run(id: &str) -> String {
        format!("execbox:run:{id}")
    }
    pub(crate) fn lease(id: &str) -> String {
        format!("execbox:lease:{id}")
    }
    pub(crate) const ACTIVE: &str = "execbox:active";
    pub(crate) fn user_runs(user: &str) -> String {
        format!("execbox:quota:runs:{user}")
    }
    pub(crate) fn user_cpu(user: &str) -> String {
        format!("execbox:quota:cpu:{user}")
    }
    pub(crate) fn user_rate(user: &str) -> String {
        format!("execbox:quota:rate:{user}")
    }
}

/// Milliseconds, for Redis arguments.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

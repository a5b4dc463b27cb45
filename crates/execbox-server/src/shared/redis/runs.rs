//! The run store in Redis (see the module above for the keys).

use std::sync::Arc;
use std::time::Duration;

use execbox_proto::{now_rfc3339, ErrorBody, ErrorCode, RunRecord, RunStatus};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::{key, ms, scripts, Conn, RedisConfig, IN_FLIGHT_TTL};
use crate::shared::{Fut, Health, RunBackend, Unavailable};
use crate::store::RunStore;

/// Runs in Redis; the runs this replica drives also in `local` (their cancellation tokens,
/// and their records while Redis cannot take them).
#[derive(Debug)]
pub(crate) struct RedisRuns {
    conn: Conn,
    local: Arc<RunStore>,
    /// This replica's name in the leases.
    replica: String,
    lease: Duration,
    retention: Duration,
}

/// What the run hash holds, as read back.
fn decode(
    rec: Option<String>,
    status: Option<String>,
    owner: Option<String>,
) -> Option<(RunRecord, Option<String>)> {
    let mut rec: RunRecord = serde_json::from_str(&rec?).ok()?;
    let owner: Option<String> = serde_json::from_str(&owner?).ok()?;
    // `status` is authoritative (set_running writes only it).
    if let Some(s) = status.and_then(|s| serde_json::from_value(s.into()).ok()) {
        rec.status = s;
    }
    Some((rec, owner))
}

fn owner_json(owner: Option<&str>) -> String {
    serde_json::to_string(&owner).unwrap_or_else(|_| "null".into())
}

fn record_json(rec: &RunRecord) -> String {
    serde_json::to_string(rec).unwrap_or_default()
}

impl RedisRuns {
    pub(crate) fn new(
        conn: Conn,
        cfg: &RedisConfig,
        retention: Duration,
        max_bytes: usize,
    ) -> Self {
        Self {
            conn,
            local: Arc::new(RunStore::with_max_bytes(max_bytes)),
            replica: execbox_proto::new_run_id(),
            lease: cfg.lease,
            retention,
        }
    }

    /// Write a run's hash (new, or again after Redis lost it) with its lease.
    async fn write_in_flight(
        &self,
        rec: &RunRecord,
        owner: Option<&str>,
    ) -> Result<(), Unavailable> {
        let (id, json, owner) = (rec.id.clone(), record_json(rec), owner_json(owner));
        let status = rec.status.as_str();
        let (replica, lease) = (self.replica.clone(), ms(self.lease));
        self.conn
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hset_multiple(
                        key::run(&id),
                        &[
                            ("rec", json.as_str()),
                            ("status", status),
                            ("owner", owner.as_str()),
                        ],
                    )
                    .ignore()
                    .pexpire(key::run(&id), ms(IN_FLIGHT_TTL) as i64)
                    .ignore()
                    .set_options(
                        key::lease(&id),
                        replica,
                        redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(lease)),
                    )
                    .ignore()
                    .sadd(key::ACTIVE, &id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Write a final record (drop the lease, leave `active`).
    async fn write_final(&self, rec: &RunRecord, owner: Option<&str>) -> Result<(), Unavailable> {
        let (id, json, owner) = (rec.id.clone(), record_json(rec), owner_json(owner));
        let status = rec.status.as_str();
        let retention = ms(self.retention).max(1000) as i64;
        self.conn
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hset_multiple(
                        key::run(&id),
                        &[
                            ("rec", json.as_str()),
                            ("status", status),
                            ("owner", owner.as_str()),
                        ],
                    )
                    .ignore()
                    .hdel(key::run(&id), "cancel")
                    .ignore()
                    .pexpire(key::run(&id), retention)
                    .ignore()
                    .del(key::lease(&id))
                    .ignore()
                    .srem(key::ACTIVE, &id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn read(&self, id: &str) -> Result<Option<(RunRecord, Option<String>)>, Unavailable> {
        let k = key::run(id);
        let (rec, status, owner): (Option<String>, Option<String>, Option<String>) = self
            .conn
            .run(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&k)
                    .arg("rec")
                    .arg("status")
                    .arg("owner")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(decode(rec, status, owner))
    }

    /// Renew the leases of the runs this replica drives; pass on the cancels requested
    /// elsewhere; write again the hashes Redis lost.
    async fn heartbeat(&self) -> Result<(), Unavailable> {
        let runs = self.local.in_flight();
        if runs.is_empty() {
            return Ok(());
        }
        let lease = ms(self.lease);
        let replica = self.replica.clone();
        let invocations: Vec<_> = runs
            .iter()
            .map(|(id, owner)| {
                let users = owner
                    .as_deref()
                    .map_or_else(|| key::lease(id), key::user_runs);
                let mut inv = scripts::HEARTBEAT.prepare_invoke();
                inv.key(key::lease(id))
                    .key(key::run(id))
                    .key(users)
                    .arg(&replica)
                    .arg(lease)
                    .arg(id)
                    .arg(if owner.is_some() { "1" } else { "0" });
                inv
            })
            .collect();
        let mut answers = Vec::with_capacity(runs.len());
        for inv in &invocations {
            let a: String = self
                .conn
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            answers.push(a);
        }
        for ((id, owner), a) in runs.iter().zip(answers) {
            match a.as_str() {
                "1" => self.local.cancel_local(id),
                "missing" => {
                    if let Some(rec) = self.local.get(id, owner.as_deref()) {
                        if !rec.status.is_final() {
                            self.write_in_flight(&rec, owner.as_deref()).await?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// End the runs whose replica stopped renewing their lease.
    async fn sweep(&self) -> Result<usize, Unavailable> {
        let ids: Vec<String> = self
            .conn
            .run(|mut c| async move { c.smembers(key::ACTIVE).await })
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let leases: Vec<bool> = {
            let ids = ids.clone();
            self.conn
                .run(|mut c| async move {
                    let mut p = redis::pipe();
                    for id in &ids {
                        p.exists(key::lease(id));
                    }
                    p.query_async(&mut c).await
                })
                .await?
        };
        let mut ended = 0;
        for (id, alive) in ids.iter().zip(leases) {
            if alive {
                continue;
            }
            let rec = match self.read(id).await? {
                Some((mut rec, _)) if !rec.status.is_final() => {
                    rec.status = RunStatus::InternalError;
                    rec.error = Some(ErrorBody::new(
                        ErrorCode::InternalError,
                        "the replica running this stopped (its lease expired); the run's \
                         outcome is unknown",
                    ));
                    rec.finished_at = Some(now_rfc3339());
                    record_json(&rec)
                }
                // Final already, or gone: just leave `active`.
                _ => String::new(),
            };
            let mut inv = scripts::SWEEP.prepare_invoke();
            inv.key(key::run(id))
                .key(key::lease(id))
                .key(key::ACTIVE)
                .arg(id)
                .arg(rec)
                .arg(ms(self.retention).max(1000));
            let n: i64 = self
                .conn
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            if n == 1 {
                tracing::warn!(run = %id, "run ended internal_error: its replica's lease expired");
                ended += 1;
            }
        }
        Ok(ended)
    }
}

impl RunBackend for RedisRuns {
    fn insert(
        &self,
        record: RunRecord,
        owner: Option<String>,
        cancel: CancellationToken,
    ) -> Fut<'_, Result<(), Unavailable>> {
        Box::pin(async move {
            self.write_in_flight(&record, owner.as_deref()).await?;
            self.local.insert(record, owner, cancel);
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>> {
        Box::pin(async move {
            match self.read(id).await {
                Ok(Some((rec, o))) => Ok((o.as_deref() == owner).then_some(rec)),
                // Redis lost it (restarted empty) or cannot answer: a run driven here is
                // still known here.
                Ok(None) => Ok(self.local.get(id, owner)),
                Err(e) => self.local.get(id, owner).map(Some).ok_or(e),
            }
        })
    }

    fn set_running(&self, id: &str) {
        self.local.set_running(id);
        let (conn, k) = (self.conn.clone(), key::run(id));
        tokio::spawn(async move {
            let r = conn
                .run(|mut c| async move {
                    scripts::SET_RUNNING
                        .key(k)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e.0, "could not mark a run running in Redis");
            }
        });
    }

    fn finish(&self, record: RunRecord) -> Fut<'_, ()> {
        Box::pin(async move {
            let owner = self.local.owner(&record.id);
            self.local.finish(record.clone());
            if self.write_final(&record, owner.as_deref()).await.is_ok() {
                return;
            }
            // Keep trying in the background while the record is retained here.
            let this = RedisRetry {
                conn: self.conn.clone(),
                retention: self.retention,
            };
            tokio::spawn(this.finish(record, owner));
        })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>> {
        Box::pin(async move {
            // Driven here: cancel at once.
            if let Some(rec) = self.local.cancel(id, owner) {
                return Ok(Some(rec));
            }
            let Some((rec, o)) = self.read(id).await? else {
                return Ok(None);
            };
            if o.as_deref() != owner {
                return Ok(None);
            }
            if !rec.status.is_final() {
                let k = key::run(id);
                self.conn
                    .run(|mut c| async move { c.hset::<_, _, _, ()>(k, "cancel", "1").await })
                    .await?;
            }
            Ok(Some(rec))
        })
    }

    fn cancel_all(&self) {
        self.local.cancel_all();
    }

    fn gc(&self, retention: Duration, max: usize) {
        self.local.gc(retention, max);
    }

    fn tick(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e.0, "could not renew the leases of this replica's runs");
            }
            if let Err(e) = self.sweep().await {
                tracing::debug!(error = %e.0, "could not sweep expired leases");
            }
        })
    }

    fn health(&self) -> Fut<'_, Health> {
        Box::pin(async move {
            if self.conn.ping().await {
                Health::Up
            } else {
                Health::Down
            }
        })
    }
}

/// Writing a final record once Redis is back.
struct RedisRetry {
    conn: Conn,
    retention: Duration,
}

impl RedisRetry {
    async fn finish(self, record: RunRecord, owner: Option<String>) {
        let runs = RedisRuns {
            conn: self.conn,
            local: Arc::default(),
            replica: String::new(),
            lease: Duration::ZERO,
            retention: self.retention,
        };
        let deadline = tokio::time::Instant::now() + self.retention;
        let mut wait = Duration::from_millis(500);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(wait).await;
            if runs.write_final(&record, owner.as_deref()).await.is_ok() {
                tracing::info!(run = %record.id, "final record written to Redis after a retry");
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        tracing::error!(run = %record.id, "final record never reached Redis (retention over)");
    }
}

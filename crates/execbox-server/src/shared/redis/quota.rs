//! Per-user quotas in Redis: the same three as in memory ([`crate::quota`]), each check and
//! take one Lua script so that replicas cannot both take the last place.

use std::time::Duration;

use execbox_proto::ErrorCode;

use super::{key, ms, scripts, Conn};
use crate::error::ApiError;
use crate::quota::{over, QuotaConfig};
use crate::shared::{Fut, QuotaBackend};

/// Quotas in Redis.
#[derive(Debug)]
pub(crate) struct RedisQuotas {
    conn: Conn,
    cfg: QuotaConfig,
    lease: Duration,
}

impl RedisQuotas {
    pub(crate) fn new(conn: Conn, cfg: QuotaConfig, lease: Duration) -> Self {
        Self { conn, cfg, lease }
    }
}

impl QuotaBackend for RedisQuotas {
    fn check_rate<'a>(&'a self, user: &'a str) -> Fut<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let Some(q) = self.cfg.rate else {
                return Ok(());
            };
            let period = 1000.0 / f64::from(q.per_second.max(1));
            let mut inv = scripts::RATE.prepare_invoke();
            inv.key(key::user_rate(user))
                .arg(period)
                .arg(q.burst.max(1));
            let wait: i64 = self
                .conn
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            if wait < 0 {
                return Ok(());
            }
            Err(over(
                ErrorCode::RateQuota,
                format!(
                    "more than {} requests per second (burst {}); slow down",
                    q.per_second, q.burst
                ),
                u64::from(q.burst),
                Duration::from_millis(wait as u64),
            ))
        })
    }

    fn start_run<'a>(&'a self, user: &'a str, run: &'a str) -> Fut<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let (cap, cpu) = (self.cfg.concurrent_runs, self.cfg.cpu_seconds);
            if cap.is_none() && cpu.is_none() {
                return Ok(());
            }
            let mut inv = scripts::START_RUN.prepare_invoke();
            inv.key(key::user_runs(user))
                .key(key::user_cpu(user))
                .arg(cap.map_or(-1, |c| c as i64))
                .arg(run)
                .arg(ms(self.lease))
                .arg(cpu.unwrap_or(-1.0));
            let answer: Vec<String> = self
                .conn
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            match answer.first().map(String::as_str) {
                Some("1") => Ok(()),
                Some("2") => {
                    let left: u64 = answer.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
                    let used: f64 = answer.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.0);
                    let limit = cpu.unwrap_or(0.0);
                    Err(over(
                        ErrorCode::CpuQuota,
                        format!(
                            "{used:.1} CPU-seconds used of {limit} in this {}-second window",
                            self.cfg.window.as_secs()
                        ),
                        limit.ceil() as u64,
                        Duration::from_millis(left),
                    ))
                }
                _ => {
                    let cap = cap.unwrap_or(0);
                    Err(over(
                        ErrorCode::ConcurrencyQuota,
                        format!("at most {cap} runs at once per user"),
                        cap as u64,
                        Duration::from_secs(1),
                    ))
                }
            }
        })
    }

    fn end_run<'a>(&'a self, user: &'a str, run: &'a str, cpu_ms: f64) -> Fut<'a, ()> {
        Box::pin(async move {
            if self.cfg.concurrent_runs.is_none() && self.cfg.cpu_seconds.is_none() {
                return;
            }
            let cpu = if self.cfg.cpu_seconds.is_some() {
                cpu_ms / 1000.0
            } else {
                0.0
            };
            let mut inv = scripts::END_RUN.prepare_invoke();
            inv.key(key::user_runs(user))
                .key(key::user_cpu(user))
                .arg(run)
                .arg(cpu)
                .arg(ms(self.cfg.window));
            let r = self
                .conn
                .run(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
                .await;
            if let Err(e) = r {
                // The place lapses with its lease; the CPU time is not charged.
                tracing::warn!(error = %e.0, %user, "could not settle a run's quota in Redis");
            }
        })
    }

    fn gc(&self) {}
}

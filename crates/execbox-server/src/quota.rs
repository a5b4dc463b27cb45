//! Per-user quotas: request rate with a burst (token bucket, `governor`), concurrent runs, and
//! CPU-seconds per window. Over a quota → 429 with `Retry-After` and `RateLimit-*` headers.
//!
//! Every quota is a hard cap the operator sets; none is on by default. Without them one user may
//! use everything the server admits (`max_running` + `max_queued`), and the admission queue's
//! fair dispatch shares the slots between users when several compete.
//!
//! `Quotas` keeps the books; the layer below spends them: `rate_limit` (middleware, after
//! authentication) and `charge_request` (each WebSocket message) charge the request rate; the
//! runner takes a `RunQuota` for each run it admits and settles it when the run ends.

use execbox_proto::ErrorCode;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use execbox_proto::RunRecord;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::shared::QuotaBackend;
use crate::state::AppState;

/// Quota settings; `None` turns a quota off.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// Sustained requests per second per user, and the burst above it.
    pub rate: Option<RateQuota>,
    /// Runs a user may have admitted (queued or running) at once.
    pub concurrent_runs: Option<usize>,
    /// CPU-seconds a user may consume per window.
    pub cpu_seconds: Option<f64>,
    /// The CPU window.
    pub window: Duration,
}

/// A request-rate quota: a token bucket refilled at `per_second`, holding `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests that may arrive at once.
    pub burst: u32,
}

impl Default for QuotaConfig {
    /// No per-user cap: a lone user gets whatever the server would admit.
    fn default() -> Self {
        Self {
            rate: None,
            concurrent_runs: None,
            cpu_seconds: None,
            window: Duration::from_secs(3600),
        }
    }
}

/// The quota book-keeping.
#[derive(Debug)]
pub(crate) struct Quotas {
    cfg: QuotaConfig,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    running: Arc<Mutex<HashMap<String, usize>>>,
    cpu: Mutex<HashMap<String, (Instant, f64)>>,
}

/// A user's concurrent-run place (counted only when the quota is on); released on drop.
#[derive(Debug)]
pub(crate) struct RunSlot {
    user: String,
    running: Option<Arc<Mutex<HashMap<String, usize>>>>,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let Some(running) = &self.running else {
            return;
        };
        let mut m = running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

pub(crate) fn over(code: ErrorCode, message: String, limit: u64, reset: Duration) -> ApiError {
    let secs = reset.as_secs_f64().ceil().max(1.0) as u64;
    let mut e = ApiError::too_many(code, message, secs);
    e.rate_limit = Some((limit, 0, secs));
    e
}

impl Quotas {
    /// Quotas with `cfg`.
    pub(crate) fn new(cfg: QuotaConfig) -> Self {
        let rate = cfg.rate.map(|r| {
            let rps = NonZeroU32::new(r.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
        });
        Self {
            rate,
            running: Arc::default(),
            cpu: Mutex::default(),
            cfg,
        }
    }

    /// One request by `user`.
    pub(crate) fn check_rate(&self, user: &str) -> Result<(), ApiError> {
        let (Some(limiter), Some(q)) = (&self.rate, self.cfg.rate) else {
            return Ok(());
        };
        match limiter.check_key(&user.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(over(
                    ErrorCode::RateQuota,
                    format!(
                        "more than {} requests per second (burst {}); slow down",
                        q.per_second, q.burst
                    ),
                    u64::from(q.burst),
                    wait,
                ))
            }
        }
    }

    /// Take one of `user`'s concurrent-run places, if the CPU window allows a run at all.
    pub(crate) fn start_run(&self, user: &str) -> Result<RunSlot, ApiError> {
        if let Some(limit) = self.cfg.cpu_seconds {
            let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((start, used)) = cpu.get(user).copied() {
                let elapsed = start.elapsed();
                if elapsed >= self.cfg.window {
                    cpu.remove(user);
                } else if used >= limit {
                    return Err(over(
                        ErrorCode::CpuQuota,
                        format!(
                            "{used:.1} CPU-seconds used of {limit} in this {}-second window",
                            self.cfg.window.as_secs()
                        ),
                        limit.ceil() as u64,
                        self.cfg.window - elapsed,
                    ));
                }
            }
        }
        let Some(cap) = self.cfg.concurrent_runs else {
            return Ok(RunSlot {
                user: String::new(),
                running: None,
            });
        };
        let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_owned()).or_insert(0);
        if *n >= cap {
            return Err(over(
                ErrorCode::ConcurrencyQuota,
                format!("at most {cap} runs at once per user"),
                cap as u64,
                Duration::from_secs(1),
            ));
        }
        *n += 1;
        Ok(RunSlot {
            user: user.to_owned(),
            running: Some(self.running.clone()),
        })
    }

    /// Charge a finished run's CPU time to `user`.
    pub(crate) fn charge_cpu(&self, user: &str, cpu_ms: f64) {
        if self.cfg.cpu_seconds.is_none() {
            return;
        }
        let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let e = cpu.entry(user.to_owned()).or_insert((Instant::now(), 0.0));
        if e.0.elapsed() >= self.cfg.window {
            *e = (Instant::now(), 0.0);
        }
        e.1 += cpu_ms / 1000.0;
    }

    /// Drop state of users not seen for a while (bounded memory).
    pub(crate) fn gc(&self) {
        if let Some(r) = &self.rate {
            r.retain_recent();
        }
        let window = self.cfg.window;
        self.cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (start, _)| start.elapsed() < window);
    }
}

// ---- the layer

/// One request by `caller` against its request-rate quota, counted in the metrics when
/// refused. Every HTTP request ([`rate_limit`]) and every WebSocket message goes through here.
pub(crate) async fn charge_request(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Some(user) = &caller.user else {
        return Ok(());
    };
    state
        .quotas
        .check_rate(user)
        .await
        .inspect_err(|e| state.metrics.reject(e.body.error.code))
}

/// Middleware, inside [`crate::auth::require_auth`]: the caller's request-rate quota.
pub(crate) async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(caller) = req.extensions().get::<Caller>() {
        if let Err(e) = charge_request(&state, caller).await {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// A run's hold on its user's quotas: a concurrent-run place for the run's life, and whom to
/// charge its CPU time to when it ends. Dropped unsettled (the run was refused after its
/// place was taken), the place is given back in the background.
#[derive(Debug)]
pub(crate) struct RunQuota {
    owner: Option<String>,
    run: String,
    backend: Arc<dyn QuotaBackend>,
    settled: bool,
}

/// Take a place in `owner`'s concurrent-run quota for run `run`, if its CPU window allows a
/// run at all (refusals are counted in the metrics). Anonymous runs have no quota.
pub(crate) async fn reserve_run(
    state: &AppState,
    owner: Option<&str>,
    run: &str,
) -> Result<RunQuota, ApiError> {
    if let Some(u) = owner {
        state
            .quotas
            .start_run(u, run)
            .await
            .inspect_err(|e| state.metrics.reject(e.body.error.code))?;
    }
    Ok(RunQuota {
        owner: owner.map(str::to_owned),
        run: run.to_owned(),
        backend: state.quotas.clone(),
        settled: false,
    })
}

impl RunQuota {
    /// The run ended as `rec`: give its place back, and charge its CPU time.
    pub(crate) async fn settle(mut self, rec: &RunRecord) {
        self.settled = true;
        if let Some(user) = &self.owner {
            self.backend
                .end_run(user, &self.run, rec.cpu_time_ms())
                .await;
        }
    }
}

impl Drop for RunQuota {
    fn drop(&mut self) {
        let Some(user) = self.owner.take().filter(|_| !self.settled) else {
            return;
        };
        let (backend, run) = (self.backend.clone(), std::mem::take(&mut self.run));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { backend.end_run(&user, &run, 0.0).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_and_cpu_quotas() {
        let q = Quotas::new(QuotaConfig {
            concurrent_runs: Some(1),
            cpu_seconds: Some(1.0),
            ..QuotaConfig::default()
        });
        let a = q.start_run("a").unwrap();
        let e = q.start_run("a").unwrap_err();
        assert_eq!(e.body.error.code, "concurrency_quota");
        assert!(e.retry_after.is_some() && e.rate_limit.is_some());
        assert!(q.start_run("b").is_ok(), "another user is not affected");
        drop(a);
        q.charge_cpu("a", 1500.0);
        assert_eq!(q.start_run("a").unwrap_err().body.error.code, "cpu_quota");
    }

    #[test]
    fn rate_quota_allows_the_burst_then_refuses() {
        let q = Quotas::new(QuotaConfig {
            rate: Some(RateQuota {
                per_second: 1,
                burst: 3,
            }),
            ..QuotaConfig::default()
        });
        for _ in 0..3 {
            q.check_rate("a").unwrap();
        }
        let e = q.check_rate("a").unwrap_err();
        assert_eq!(e.body.error.code, "rate_quota");
        assert!(q.check_rate("b").is_ok());
    }

    #[test]
    fn by_default_no_quota_refuses_anything() {
        let q = Quotas::new(QuotaConfig::default());
        for _ in 0..1000 {
            q.check_rate("a").unwrap();
        }
        let slots: Vec<_> = (0..1000).map(|_| q.start_run("a").unwrap()).collect();
        q.charge_cpu("a", 1e9);
        assert!(q.start_run("a").is_ok());
        drop(slots);
    }
}

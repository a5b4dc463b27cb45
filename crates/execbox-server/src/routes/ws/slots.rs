//! Open WebSockets, counted in total and per user. A socket takes its place before the
//! upgrade (so an over-cap client gets an HTTP answer, not a socket) and gives it back when its
//! session ends. A socket that authenticates with its first message takes a total place at the
//! upgrade and its user's place once the token is checked.

use execbox_proto::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use prometheus::IntGauge;

use crate::error::ApiError;

/// Which cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsCapError {
    /// `--max-websockets`.
    #[error("the server has {0} WebSockets open, its maximum; retry later")]
    Total(usize),
    /// `--max-websockets-per-user`.
    #[error("this user has {0} WebSockets open, the maximum per user; close one first")]
    PerUser(usize),
}

impl From<WsCapError> for ApiError {
    /// Per user: 429 (the caller can fix it); in total: 503 (the server is full). Both with
    /// code `too_many_websockets` and `Retry-After`.
    fn from(e: WsCapError) -> Self {
        let status = match e {
            WsCapError::Total(_) => StatusCode::SERVICE_UNAVAILABLE,
            WsCapError::PerUser(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(status, ErrorCode::TooManyWebsockets, e.to_string())
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// The counters.
#[derive(Debug)]
pub struct WsSlots {
    max_total: usize,
    max_per_user: usize,
    counts: Arc<Mutex<Counts>>,
    open: IntGauge,
}

/// One open socket's place; given back on drop.
#[derive(Debug)]
pub struct WsSlot {
    user: Option<String>,
    max_per_user: usize,
    counts: Arc<Mutex<Counts>>,
    open: IntGauge,
}

fn lock(c: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn take_user(c: &mut Counts, user: &str, max: usize) -> Result<(), WsCapError> {
    let n = c.per_user.entry(user.to_owned()).or_insert(0);
    if *n >= max {
        if *n == 0 {
            c.per_user.remove(user);
        }
        return Err(WsCapError::PerUser(max));
    }
    *n += 1;
    Ok(())
}

impl WsSlots {
    /// At most `max_total` sockets, `max_per_user` of them per user; `open` mirrors the count.
    pub fn new(max_total: usize, max_per_user: usize, open: IntGauge) -> Self {
        Self {
            max_total,
            max_per_user,
            counts: Arc::default(),
            open,
        }
    }

    /// A place for a new socket, of `user` when already known.
    pub fn try_open(&self, user: Option<&str>) -> Result<WsSlot, WsCapError> {
        let mut c = lock(&self.counts);
        if c.total >= self.max_total {
            return Err(WsCapError::Total(self.max_total));
        }
        if let Some(u) = user {
            take_user(&mut c, u, self.max_per_user)?;
        }
        c.total += 1;
        self.open.inc();
        Ok(WsSlot {
            user: user.map(str::to_owned),
            max_per_user: self.max_per_user,
            counts: self.counts.clone(),
            open: self.open.clone(),
        })
    }
}

impl WsSlot {
    /// Count this socket against `user` too (after a first-message authentication).
    pub fn bind_user(&mut self, user: &str) -> Result<(), WsCapError> {
        if self.user.is_some() {
            return Ok(());
        }
        take_user(&mut lock(&self.counts), user, self.max_per_user)?;
        self.user = Some(user.to_owned());
        Ok(())
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(u) = &self.user {
            if let Some(n) = c.per_user.get_mut(u) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_user.remove(u);
                }
            }
        }
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_user_caps_and_release_on_drop() {
        let g = IntGauge::new("ws", "ws").unwrap();
        let s = WsSlots::new(3, 2, g.clone());
        let a1 = s.try_open(Some("a")).unwrap();
        let _a2 = s.try_open(Some("a")).unwrap();
        assert_eq!(s.try_open(Some("a")).unwrap_err(), WsCapError::PerUser(2));
        let mut anon = s.try_open(None).unwrap();
        assert_eq!(g.get(), 3);
        assert_eq!(s.try_open(Some("b")).unwrap_err(), WsCapError::Total(3));
        assert_eq!(anon.bind_user("a").unwrap_err(), WsCapError::PerUser(2));
        drop(a1);
        anon.bind_user("a").unwrap();
        assert_eq!(g.get(), 2);
        let _c = s.try_open(Some("c")).unwrap();
        assert_eq!(s.try_open(None).unwrap_err(), WsCapError::Total(3));
        drop(anon);
        assert_eq!(g.get(), 2);
        let _b = s.try_open(Some("b")).unwrap();
        assert_eq!(lock(&s.counts).per_user.get("a"), Some(&1));
    }

    #[test]
    fn errors_map_to_429_and_503() {
        let per_user = ApiError::from(WsCapError::PerUser(1));
        assert_eq!(per_user.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(per_user.body.error.code, "too_many_websockets");
        let total = ApiError::from(WsCapError::Total(1));
        assert_eq!(total.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(total.retry_after, Some(1));
    }
}

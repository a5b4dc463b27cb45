//! Admission control: at most `max_running` runs execute at once, at most `max_queued` wait
//! behind them, and anything beyond is refused at once (429) instead of piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gate.
#[derive(Debug)]
pub struct Admission {
    sem: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    max_running: usize,
    max_queued: usize,
}

/// A place in the queue; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    sem: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticket {
    /// Wait for an execution slot (FIFO).
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquire cannot fail.
        self.sem
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("admission semaphore is never closed"))
    }
}

impl Admission {
    /// A gate with the given sizes.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max_running.max(1))),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_running: max_running.max(1),
            max_queued,
        }
    }

    /// Take a place, or `None` when running and queued are both full.
    pub fn try_enter(&self) -> Option<Ticket> {
        let cap = self.max_running + self.max_queued;
        let mut cur = self.admitted.load(Ordering::Acquire);
        loop {
            if cur >= cap {
                return None;
            }
            match self.admitted.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Ticket {
                        sem: self.sem.clone(),
                        admitted: self.admitted.clone(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Runs executing now.
    pub fn running(&self) -> usize {
        self.max_running - self.sem.available_permits()
    }

    /// Runs admitted but waiting for a slot.
    pub fn queued(&self) -> usize {
        self.admitted
            .load(Ordering::Acquire)
            .saturating_sub(self.running())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_running_plus_queue_and_frees_on_drop() {
        let a = Admission::new(1, 1);
        let t1 = a.try_enter().unwrap();
        let t2 = a.try_enter().unwrap();
        assert!(a.try_enter().is_none());
        let p1 = t1.acquire().await;
        assert_eq!((a.running(), a.queued()), (1, 1));
        drop(p1);
        drop(t1);
        assert!(a.try_enter().is_some(), "a place was freed");
        drop(t2);
        assert_eq!(a.queued(), 0);
    }
}

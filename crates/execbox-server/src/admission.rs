//! Admission control: at most `max_running` runs execute at once, at most `max_queued` wait
//! behind them, and anything beyond is refused at once (429) instead of piling up.
//!
//! When running and queued are full, a request may wait a bounded time for a place before its
//! body is read ([`Admission::wait_for_room`]): holding a closed-loop client that would retry at
//! once is far cheaper than answering it thousands of times a second, and the wait costs no
//! place, so a slow client cannot hold one (see `docs/architecture.md`, "Overload").
//!
//! The queue is fair between users: when a slot frees, it goes to the waiting run whose user
//! has the fewest runs executing, then the fewest waiting, then the earliest admitted (a run
//! takes its place in line when it is admitted, not when its task first runs, so one user's
//! runs start in the order they were submitted), so a user who
//! floods the queue gets no more than its share of the slots while others wait. Written by hand: tokio's
//! semaphore is FIFO only, and no well-kept crate offers a keyed fair semaphore for tokio.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

#[derive(Debug, Default)]
struct Slots {
    running: usize,
    per_user: HashMap<String, usize>,
    /// Waiting runs in arrival order; a sender whose receiver is gone was cancelled.
    waiting: VecDeque<(String, oneshot::Sender<()>)>,
}

#[derive(Debug)]
struct Shared {
    max_running: usize,
    slots: Mutex<Slots>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand free slots to waiting runs, fewest-running user first.
    fn dispatch(&self, s: &mut Slots) {
        while s.running < self.max_running && !s.waiting.is_empty() {
            s.waiting.retain(|(_, tx)| !tx.is_closed());
            let mut queued: HashMap<&str, usize> = HashMap::new();
            for (u, _) in &s.waiting {
                *queued.entry(u.as_str()).or_insert(0) += 1;
            }
            // Fewest running first, then fewest waiting (the flooder last), then arrival.
            let best = s
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(i, (u, _))| {
                    let running = s.per_user.get(u).copied().unwrap_or(0);
                    (running, queued.get(u.as_str()).copied().unwrap_or(0), *i)
                })
                .map(|(i, _)| i);
            let Some((user, tx)) = best.and_then(|i| s.waiting.remove(i)) else {
                return;
            };
            if tx.send(()).is_ok() {
                s.running += 1;
                *s.per_user.entry(user).or_insert(0) += 1;
            }
        }
    }
}

/// The places (running + queued) and the requests waiting for one.
#[derive(Debug, Default)]
struct Places {
    admitted: AtomicUsize,
    /// One notification per freed place, for a request in [`Admission::wait_for_room`].
    freed: Notify,
}

/// The gate.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    places: Arc<Places>,
    max_queued: usize,
}

/// A place in the queue and in line for a slot; dropping it gives both back.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    places: Arc<Places>,
    user: String,
    /// Word of a granted slot; taken by [`Ticket::acquire`].
    grant: Option<oneshot::Receiver<()>>,
}

/// Word that a place was free: [`Admission::try_enter_with`] takes it. Dropped unused (the
/// request failed validation, or the client left), it wakes the next waiting request so the
/// free place is not left idle until someone's wait runs out.
#[derive(Debug)]
pub struct Room {
    places: Option<Arc<Places>>,
}

impl Room {
    fn used(mut self) {
        self.places = None;
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(p) = self.places.take() {
            p.freed.notify_one();
        }
    }
}

/// An execution slot; dropping it frees the slot for the next waiting run.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    user: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A slot granted to a run that never took it (refused or cancelled before its task ran).
        if let Some(mut rx) = self.grant.take() {
            if rx.try_recv().is_ok() {
                self.shared.release(&self.user);
            }
        }
        self.places.admitted.fetch_sub(1, Ordering::AcqRel);
        self.places.freed.notify_one();
    }
}

impl Shared {
    /// Give back `user`'s slot and hand it on.
    fn release(&self, user: &str) {
        let mut s = self.lock();
        s.running -= 1;
        if let Some(n) = s.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                s.per_user.remove(user);
            }
        }
        self.dispatch(&mut s);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release(&self.user);
    }
}

/// A place in line. If the wait is abandoned just after a slot was granted (the grant and a
/// cancellation racing), the slot is given back instead of leaking.
struct Waiting<'a> {
    rx: Option<oneshot::Receiver<()>>,
    ticket: &'a Ticket,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if rx.try_recv().is_ok() {
                self.ticket.shared.release(&self.ticket.user);
            }
        }
    }
}

impl Ticket {
    /// Wait for an execution slot, in the place in line taken at admission. Dropping the
    /// future gives up that place: a later call waits behind everyone.
    pub async fn acquire(&mut self) -> Permit {
        let rx = match self.grant.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = oneshot::channel();
                let mut s = self.shared.lock();
                s.waiting.push_back((self.user.clone(), tx));
                self.shared.dispatch(&mut s);
                rx
            }
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            ticket: &*self,
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender is only dropped unsent by `dispatch` after our receiver is gone, so
            // this cannot fail while we wait.
            let _ = rx.await;
        }
        waiting.rx = None; // granted: the permit owns the slot now
        self.permit()
    }

    fn permit(&self) -> Permit {
        Permit {
            shared: self.shared.clone(),
            user: self.user.clone(),
        }
    }
}

impl Admission {
    /// A gate with the given sizes.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_running: max_running.max(1),
                slots: Mutex::default(),
            }),
            places: Arc::default(),
            max_queued,
        }
    }

    fn cap(&self) -> usize {
        self.shared.max_running + self.max_queued
    }

    fn has_room(&self) -> bool {
        self.places.admitted.load(Ordering::Acquire) < self.cap()
    }

    /// Wait up to `patience` until running + queued have a free place, without taking it (a
    /// request waits here before its body is read; the place is taken after, by
    /// [`Self::try_enter_with`]). `None` when none freed in time. Waiters are woken one per
    /// freed place, in the order they came.
    pub async fn wait_for_room(&self, patience: Duration) -> Option<Room> {
        let room = || Room {
            places: Some(self.places.clone()),
        };
        if self.has_room() {
            return Some(room());
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let freed = self.places.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a place freed in between still wakes us.
            freed.as_mut().enable();
            if self.has_room() {
                return Some(room());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.has_room().then(room);
            }
        }
    }

    /// [`Self::try_enter`] for a request that waited for `room`.
    pub fn try_enter_with(&self, user: &str, room: Room) -> Option<Ticket> {
        let t = self.try_enter(user);
        if t.is_some() {
            room.used();
        }
        t
    }

    /// Take a place for `user`'s run, or `None` when running and queued are both full.
    pub fn try_enter(&self, user: &str) -> Option<Ticket> {
        let cap = self.cap();
        let mut cur = self.places.admitted.load(Ordering::Acquire);
        loop {
            if cur >= cap {
                return None;
            }
            match self.places.admitted.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // In line now, so that runs admitted earlier are served earlier.
                    let (tx, rx) = oneshot::channel();
                    let mut s = self.shared.lock();
                    s.waiting.push_back((user.to_owned(), tx));
                    self.shared.dispatch(&mut s);
                    return Some(Ticket {
                        shared: self.shared.clone(),
                        places: self.places.clone(),
                        user: user.to_owned(),
                        grant: Some(rx),
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Runs executing now.
    pub fn running(&self) -> usize {
        self.shared.lock().running
    }

    /// Runs admitted but waiting for a slot.
    pub fn queued(&self) -> usize {
        self.places
            .admitted
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
        let mut t1 = a.try_enter("u").unwrap();
        let t2 = a.try_enter("u").unwrap();
        assert!(a.try_enter("u").is_none());
        let p1 = t1.acquire().await;
        assert_eq!((a.running(), a.queued()), (1, 1));
        drop(p1);
        drop(t1);
        assert!(a.try_enter("u").is_some(), "a place was freed");
        drop(t2);
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_user_with_the_fewest_running() {
        let a = Arc::new(Admission::new(2, 10));
        let (mut f1, mut f2) = (a.try_enter("flood").unwrap(), a.try_enter("flood").unwrap());
        let (p1, _p2) = (f1.acquire().await, f2.acquire().await);
        // The flooder queues two more, then another user queues one.
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for user in ["flood", "flood", "other"] {
            let mut t = a.try_enter(user).unwrap();
            let tx = order_tx.clone();
            tasks.push(tokio::spawn(async move {
                let p = t.acquire().await;
                let _ = tx.send(user);
                p
            }));
            tokio::task::yield_now().await;
        }
        drop(p1); // one of the flooder's slots frees
        assert_eq!(
            order_rx.recv().await,
            Some("other"),
            "the other user goes first"
        );
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_full_gate_makes_requests_wait_for_a_freed_place_then_refuses() {
        let a = Arc::new(Admission::new(1, 0));
        let t1 = a.try_enter("u").unwrap();
        let patience = Duration::from_secs(30);
        assert!(
            a.wait_for_room(Duration::from_millis(10)).await.is_none(),
            "nothing freed in time"
        );
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move {
                let room = a.wait_for_room(patience).await.expect("a place was freed");
                a.try_enter_with("v", room)
            })
        };
        tokio::task::yield_now().await;
        drop(t1);
        let t2 = waiter
            .await
            .unwrap()
            .expect("the waiter took the freed place");
        assert!(a.try_enter("w").is_none());
        drop(t2);
    }

    #[tokio::test]
    async fn an_unused_room_wakes_the_next_waiter() {
        let a = Arc::new(Admission::new(1, 0));
        let t1 = a.try_enter("u").unwrap();
        let patience = Duration::from_secs(30);
        let (a1, a2) = (a.clone(), a.clone());
        // The first waiter gives up its room (as a request failing validation would).
        let first = tokio::spawn(async move { a1.wait_for_room(patience).await.is_some() });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move {
            let room = a2.wait_for_room(patience).await.expect("woken");
            a2.try_enter_with("v", room).is_some()
        });
        tokio::task::yield_now().await;
        drop(t1);
        assert!(first.await.unwrap());
        assert!(second.await.unwrap(), "the second waiter got the place");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_take_a_slot() {
        let a = Admission::new(1, 5);
        let mut t1 = a.try_enter("a").unwrap();
        let p1 = t1.acquire().await;
        let mut t2 = a.try_enter("b").unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), t2.acquire()).await;
        assert!(waiting.is_err(), "no slot while one runs");
        drop(p1);
        assert_eq!(a.running(), 0, "the cancelled waiter got nothing");
        let mut t3 = a.try_enter("c").unwrap();
        let _p3 = t3.acquire().await;
        assert_eq!(a.running(), 1);
    }

    #[tokio::test]
    async fn runs_are_served_in_the_order_they_were_admitted_not_polled() {
        let a = Admission::new(1, 5);
        let mut first = a.try_enter("u").unwrap();
        let p = first.acquire().await;
        let (mut second, mut third) = (a.try_enter("u").unwrap(), a.try_enter("u").unwrap());
        // The third run's task asks first; the second's place was taken at admission.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t3 = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let p = third.acquire().await;
                let _ = tx.send(3);
                p
            })
        };
        tokio::task::yield_now().await;
        let t2 = tokio::spawn(async move {
            let p = second.acquire().await;
            let _ = tx.send(2);
            tokio::task::yield_now().await;
            drop(p);
        });
        drop(p);
        assert_eq!(
            rx.recv().await,
            Some(2),
            "the earlier admitted run goes first"
        );
        t2.await.unwrap();
        assert_eq!(rx.recv().await, Some(3));
        drop(t3.await.unwrap());
        assert_eq!(a.running(), 0);
    }
}

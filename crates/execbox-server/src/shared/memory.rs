//! The in-memory backends (one process): the existing [`RunStore`] and [`Quotas`] behind the
//! [`RunBackend`] and [`QuotaBackend`] traits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use execbox_proto::RunRecord;
use tokio_util::sync::CancellationToken;

use super::{Fut, Health, QuotaBackend, RunBackend, Unavailable};
use crate::error::ApiError;
use crate::quota::{QuotaConfig, Quotas, RunSlot};
use crate::store::RunStore;

fn ready<'a, T: Send + 'a>(v: T) -> Fut<'a, T> {
    Box::pin(std::future::ready(v))
}

impl RunBackend for RunStore {
    fn insert(
        &self,
        record: RunRecord,
        owner: Option<String>,
        cancel: CancellationToken,
    ) -> Fut<'_, Result<(), Unavailable>> {
        RunStore::insert(self, record, owner, cancel);
        ready(Ok(()))
    }
    fn get<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>> {
        ready(Ok(RunStore::get(self, id, owner)))
    }
    fn set_running(&self, id: &str) {
        RunStore::set_running(self, id);
    }
    fn finish(&self, record: RunRecord) -> Fut<'_, ()> {
        RunStore::finish(self, record);
        ready(())
    }
    fn cancel<'a>(
        &'a self,
        id: &'a str,
        owner: Option<&'a str>,
    ) -> Fut<'a, Result<Option<RunRecord>, Unavailable>> {
        ready(Ok(RunStore::cancel(self, id, owner)))
    }
    fn cancel_all(&self) {
        RunStore::cancel_all(self);
    }
    fn gc(&self, retention: Duration, max: usize) {
        RunStore::gc(self, retention, max);
    }
    fn tick(&self) -> Fut<'_, ()> {
        ready(())
    }
    fn health(&self) -> Fut<'_, Health> {
        ready(Health::Memory)
    }
}

/// [`Quotas`] with the places of the runs that hold one, by run id.
#[derive(Debug)]
pub(crate) struct MemoryQuotas {
    quotas: Quotas,
    held: Mutex<HashMap<String, RunSlot>>,
}

impl MemoryQuotas {
    pub(crate) fn new(cfg: QuotaConfig) -> Self {
        Self {
            quotas: Quotas::new(cfg),
            held: Mutex::default(),
        }
    }
}

impl QuotaBackend for MemoryQuotas {
    fn check_rate<'a>(&'a self, user: &'a str) -> Fut<'a, Result<(), ApiError>> {
        ready(self.quotas.check_rate(user))
    }
    fn start_run<'a>(&'a self, user: &'a str, run: &'a str) -> Fut<'a, Result<(), ApiError>> {
        let r = self.quotas.start_run(user).map(|slot| {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(run.to_owned(), slot);
        });
        ready(r)
    }
    fn end_run<'a>(&'a self, user: &'a str, run: &'a str, cpu_ms: f64) -> Fut<'a, ()> {
        // Dropping the slot gives the place back.
        drop(
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run),
        );
        self.quotas.charge_cpu(user, cpu_ms);
        ready(())
    }
    fn gc(&self) {
        self.quotas.gc();
    }
}

//! The warm path in the spawner: one template per warm-capable runtime (started once its smoke
//! test passed, restarted when it dies, replaced after `max_runs` children or `max_age_secs`),
//! and the [`Jails`] layer that prepares a run's jail as a template's child when one is ready,
//! or as a cold jail otherwise (the run then takes its cold payload: the fallback is
//! transparent). See docs/security.md, "Templates".

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use execbox_jail::{
    JailError, JailSpec, Jailer, Outcome, Payload, Prepared, Preparing, Supervisor,
};
use execbox_proto::spawner::{WarmSettings, WarmStats};
use execbox_runtime::Package;

use crate::inflight::{log, Jails};

/// What a stage's jail is prepared with: its spec, and the package whose template may serve
/// it (a warm-capable runtime, main mode). Two specs are the same pool shape when their jails
/// are; whether a pooled jail fits a run is [`Jails::fits`].
#[derive(Debug, Clone)]
pub(crate) struct StageSpec {
    pub(crate) jail: JailSpec,
    pub(crate) warm: Option<usize>,
}

impl PartialEq for StageSpec {
    fn eq(&self, other: &Self) -> bool {
        self.jail == other.jail
    }
}

/// A stage's payload in both forms: the cold one always, the warm one when a template's child
/// may run it.
#[derive(Debug)]
pub(crate) struct StagePayload {
    pub(crate) cold: Payload,
    pub(crate) warm: Option<Payload>,
}

/// One warm-capable runtime's template.
#[derive(Debug)]
struct Slot {
    pkg: usize,
    spec: JailSpec,
    payload: Payload,
    /// The template serving now.
    current: Option<Rc<execbox_jail::Template>>,
    /// Its successor while it starts (recycling), or the first one.
    next: Option<Rc<execbox_jail::Template>>,
    /// When to try starting one again after a failure.
    retry_at: Instant,
    failures: u32,
}

/// Backoff after a template failed to start or died: 0.5 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(30))
}

/// The templates and the warm path's counters.
#[derive(Debug)]
pub(crate) struct Warm {
    settings: WarmSettings,
    lib: Option<PathBuf>,
    slots: Vec<Slot>,
    pub(crate) stats: WarmStats,
}

/// Where the jail library is: the settings', else beside this executable.
fn find_lib(settings: &WarmSettings) -> Option<PathBuf> {
    let lib = match &settings.lib {
        Some(l) => l.clone(),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .join("libexecbox_jail.so"),
    };
    lib.is_file().then_some(lib)
}

impl Warm {
    pub(crate) fn new(settings: WarmSettings) -> Self {
        let lib = if settings.enabled {
            let l = find_lib(&settings);
            if l.is_none() {
                log("warm path off: the jail library (libexecbox_jail.so) is not beside the executable and --warm-lib is unset");
            }
            l
        } else {
            None
        };
        Self {
            settings,
            lib,
            slots: Vec::new(),
            stats: WarmStats::default(),
        }
    }

    /// Offer templates for `pkg` (its smoke test passed) with children shaped as `run`.
    pub(crate) fn enable(&mut self, pkg: usize, package: &Package, run: &JailSpec) {
        let Some(lib) = &self.lib else { return };
        if !package.warm_capable() || self.slots.iter().any(|s| s.pkg == pkg) {
            return;
        }
        let spec = package.template_spec(run, lib);
        let payload = package.template_payload(self.settings.modules.as_deref());
        if let (Some(spec), Some(payload)) = (spec, payload) {
            self.slots.push(Slot {
                pkg,
                spec,
                payload,
                current: None,
                next: None,
                retry_at: Instant::now(),
                failures: 0,
            });
        }
    }

    /// The template that may serve `pkg` now, if any; starts or replaces templates as due.
    fn usable(&mut self, pkg: usize, jailer: &Jailer) -> Option<Rc<execbox_jail::Template>> {
        let max_runs = self.settings.max_runs;
        let max_age = Duration::from_secs(self.settings.max_age_secs);
        let slot = self.slots.iter_mut().find(|s| s.pkg == pkg)?;
        let due = slot
            .current
            .as_ref()
            .is_some_and(|t| t.children() >= max_runs || t.started().elapsed() >= max_age);
        if (slot.current.is_none() || due) && slot.next.is_none() && Instant::now() >= slot.retry_at
        {
            match jailer.start_template(&slot.spec, &slot.payload) {
                Ok(t) => slot.next = Some(t),
                Err(e) => {
                    log(&format!("template for runtime #{pkg} did not start: {e}"));
                    slot.failures += 1;
                    slot.retry_at = Instant::now() + backoff(slot.failures);
                    self.stats.restarts += 1;
                }
            }
        }
        slot.current.clone()
    }

    /// The control sockets to poll, tagged with (slot index, is `next`).
    pub(crate) fn ctl_fds(&self) -> Vec<(BorrowedFd<'_>, usize, bool)> {
        let mut v = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(t) = &s.current {
                v.push((t.ctl_fd(), i, false));
            }
            if let Some(t) = &s.next {
                v.push((t.ctl_fd(), i, true));
            }
        }
        v
    }

    /// A template's control socket is readable: it is ready, or it ended.
    pub(crate) fn on_ctl(&mut self, i: usize, next: bool) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let which = if next {
            &mut slot.next
        } else {
            &mut slot.current
        };
        let Some(t) = which.as_ref() else { return };
        match t.poll_ready() {
            Ok(true) if next => {
                log(&format!(
                    "template for runtime #{} ready (pid {})",
                    slot.pkg,
                    t.pid()
                ));
                if slot.current.is_some() {
                    self.stats.recycles += 1;
                }
                // The old one lives on while its children do (they hold it).
                slot.current = slot.next.take();
                slot.failures = 0;
            }
            Ok(_) => {}
            Err(e) => {
                log(&format!("template for runtime #{} ended: {e}", slot.pkg));
                *which = None;
                slot.failures += 1;
                slot.retry_at = Instant::now() + backoff(slot.failures);
                self.stats.restarts += 1;
            }
        }
        self.stats.templates_ready = self
            .slots
            .iter()
            .filter(|s| s.current.as_ref().is_some_and(|t| t.is_ready()))
            .count() as u64;
    }
}

/// The jail layer of the spawner: cold jails from the [`Jailer`], warm ones from templates.
#[derive(Debug)]
pub(crate) struct Pools {
    pub(crate) jailer: Jailer,
    pub(crate) warm: RefCell<Warm>,
}

impl Jails for Pools {
    type Spec = StageSpec;
    type Payload = StagePayload;
    type Preparing = Preparing;
    type Prepared = Prepared;
    type Running = Supervisor;
    type Error = JailError;

    fn start_prepare(&self, spec: &StageSpec) -> Result<Preparing, JailError> {
        if let Some(pkg) = spec.warm {
            let t = self.warm.borrow_mut().usable(pkg, &self.jailer);
            if let Some(t) = t {
                match self.jailer.start_prepare_warm(&t, &spec.jail) {
                    Ok(p) => return Ok(p),
                    Err(e) => log(&format!("warm child not prepared, going cold: {e}")),
                }
            }
        }
        self.jailer.start_prepare(&spec.jail)
    }

    fn finish_prepare(&self, p: Preparing) -> Result<Prepared, JailError> {
        p.finish()
    }

    fn fits(&self, p: &Prepared, payload: &StagePayload) -> bool {
        !p.is_warm() || payload.warm.is_some()
    }

    fn launch(&self, p: Prepared, payload: &StagePayload) -> Result<Supervisor, JailError> {
        let mut warm = self.warm.borrow_mut();
        match (&payload.warm, p.is_warm()) {
            (Some(w), true) => {
                warm.stats.warm_hits += 1;
                drop(warm);
                p.launch(w)
            }
            (None, true) => Err(JailError::InvalidSpec(
                "a template's child cannot run a cold payload".into(),
            )),
            (w, false) => {
                if w.is_some() {
                    warm.stats.cold_fallbacks += 1;
                }
                drop(warm);
                p.launch(&payload.cold)
            }
        }
    }

    fn cancel(&self, r: &mut Supervisor) {
        r.cancel();
    }

    fn is_done(&self, r: &Supervisor) -> bool {
        r.is_done()
    }

    fn finish_run(&self, r: Supervisor) -> Result<Outcome, JailError> {
        r.finish()
    }
}

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

/// A runtime's templates: one with the configured modules imported, and (when modules are
/// configured) a bare one, whose children are smaller and so cheaper to fork, fault in and
/// tear down, for code that imports none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// The configured modules imported.
    Modules = 0,
    /// The harness only.
    Bare = 1,
}

/// Which template a run wants: the one with the modules if any of its files names one of
/// them as a word (an import, `__import__("pandas")`), else the bare one.
pub(crate) fn variant_for(sources: &[&str], modules: &[String]) -> Variant {
    let names_one = |text: &str| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| modules.iter().any(|m| m.split('.').next() == Some(word)))
    };
    if sources.iter().any(|s| names_one(s)) {
        Variant::Modules
    } else {
        Variant::Bare
    }
}

/// What a stage's jail is prepared with: its spec, and the package (and template variant)
/// that may serve it (a warm-capable runtime, main mode). Two specs are the same pool shape
/// when their jails are; whether a pooled jail fits a run is [`Jails::fits`].
#[derive(Debug, Clone)]
pub(crate) struct StageSpec {
    pub(crate) jail: JailSpec,
    pub(crate) warm: Option<(usize, Variant)>,
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
    pub(crate) warm: Option<WarmPayload>,
}

/// The warm form of a payload and the template (package, variant) it wants.
#[derive(Debug)]
pub(crate) struct WarmPayload {
    pub(crate) payload: Payload,
    pub(crate) pkg: usize,
    pub(crate) variant: Variant,
    /// The run's jail, for a cold jail if the warm one fails.
    pub(crate) jail: JailSpec,
}

/// One warm-capable runtime's template of one variant.
#[derive(Debug)]
struct Slot {
    pkg: usize,
    variant: Variant,
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
    /// Recent warm-capable runs per variant (decayed), so the pool prepares children of each
    /// variant in proportion to demand.
    demand: [f64; 2],
    /// Weighted round-robin credit per variant.
    credit: [f64; 2],
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
            demand: [1.0, 1.0],
            credit: [0.0, 0.0],
        }
    }

    /// The modules the templates with modules import for `package`.
    pub(crate) fn modules(&self, package: &Package) -> Vec<String> {
        match &self.settings.modules {
            Some(m) => m.clone(),
            None => package
                .manifest
                .warm
                .as_ref()
                .map(|w| w.modules.clone())
                .unwrap_or_default(),
        }
    }

    /// Count a warm-capable run of `variant` (recent runs weigh most).
    pub(crate) fn note_demand(&mut self, variant: Variant) {
        for d in &mut self.demand {
            *d *= 0.97;
        }
        self.demand[variant as usize] += 1.0;
    }

    /// The variant the next pool child is prepared for (weighted round robin by demand).
    fn next_pool_variant(&mut self, pkg: usize) -> Variant {
        let have = |v: Variant| self.slots.iter().any(|s| s.pkg == pkg && s.variant == v);
        if !have(Variant::Bare) {
            return Variant::Modules;
        }
        let total: f64 = self.demand.iter().sum();
        for (c, d) in self.credit.iter_mut().zip(self.demand) {
            *c += d / total;
        }
        let v = if self.credit[1] > self.credit[0] {
            Variant::Bare
        } else {
            Variant::Modules
        };
        self.credit[v as usize] -= 1.0;
        v
    }

    /// Offer templates for `pkg` (its smoke test passed) with children shaped as `run`.
    pub(crate) fn enable(&mut self, pkg: usize, package: &Package, run: &JailSpec) {
        let Some(lib) = &self.lib else { return };
        if !package.warm_capable() || self.slots.iter().any(|s| s.pkg == pkg) {
            return;
        }
        let Some(spec) = package.template_spec(run, lib) else {
            return;
        };
        let modules = self.modules(package);
        let mut variants = vec![(Variant::Modules, modules.clone())];
        if !modules.is_empty() {
            variants.push((Variant::Bare, Vec::new()));
        }
        for (variant, modules) in variants {
            if let Some(payload) = package.template_payload(Some(&modules)) {
                self.slots.push(Slot {
                    pkg,
                    variant,
                    spec: spec.clone(),
                    payload,
                    current: None,
                    next: None,
                    retry_at: Instant::now(),
                    failures: 0,
                });
            }
        }
    }

    /// The template that may serve `pkg` now, if any; starts or replaces templates as due.
    fn usable(
        &mut self,
        pkg: usize,
        variant: Variant,
        jailer: &Jailer,
    ) -> Option<Rc<execbox_jail::Template>> {
        let max_runs = self.settings.max_runs;
        let max_age = Duration::from_secs(self.settings.max_age_secs);
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.pkg == pkg && s.variant == variant)?;
        let due = slot
            .current
            .as_ref()
            .is_some_and(|t| t.children() >= max_runs || t.started().elapsed() >= max_age);
        if (slot.current.is_none() || due) && slot.next.is_none() && Instant::now() >= slot.retry_at
        {
            match jailer.start_template(&slot.spec, &slot.payload, slot.variant as u32) {
                Ok(t) => slot.next = Some(t),
                Err(e) => {
                    log(&format!(
                        "template for runtime #{pkg} ({:?}) did not start: {e}",
                        slot.variant
                    ));
                    slot.failures += 1;
                    slot.retry_at = Instant::now() + backoff(slot.failures);
                    self.stats.restarts += 1;
                }
            }
        }
        slot.current.clone()
    }

    /// Start every template that is due (none running or starting, its backoff over): all
    /// are kept up from the start, so the first run of each kind finds one ready.
    fn start_due(&mut self, jailer: &Jailer) {
        let due: Vec<(usize, Variant)> = self
            .slots
            .iter()
            .filter(|s| s.current.is_none() && s.next.is_none() && Instant::now() >= s.retry_at)
            .map(|s| (s.pkg, s.variant))
            .collect();
        for (pkg, variant) in due {
            self.usable(pkg, variant, jailer);
        }
    }

    /// Whether `pkg`'s template of `variant` is ready now.
    fn ready(&self, pkg: usize, variant: Variant) -> bool {
        self.slots.iter().any(|s| {
            s.pkg == pkg && s.variant == variant && s.current.as_ref().is_some_and(|t| t.is_ready())
        })
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

    /// A template's control socket is readable: it is ready, or it ended. Returns true when
    /// a template became the one serving (cold pooled jails may then make way for its
    /// children).
    pub(crate) fn on_ctl(&mut self, i: usize, next: bool) -> bool {
        let mut serving = false;
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        let which = if next {
            &mut slot.next
        } else {
            &mut slot.current
        };
        let Some(t) = which.as_ref() else {
            return false;
        };
        match t.poll_ready() {
            Ok(true) if next => {
                log(&format!(
                    "template for runtime #{} ({:?}) ready (pid {})",
                    slot.pkg,
                    slot.variant,
                    t.pid()
                ));
                if slot.current.is_some() {
                    self.stats.recycles += 1;
                }
                // The old one lives on while its children do (they hold it).
                slot.current = slot.next.take();
                slot.failures = 0;
                serving = true;
            }
            Ok(_) => {}
            Err(e) => {
                log(&format!(
                    "template for runtime #{} ({:?}) ended: {e}",
                    slot.pkg, slot.variant
                ));
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
        serving
    }
}

/// The jail layer of the spawner: cold jails from the [`Jailer`], warm ones from templates.
#[derive(Debug)]
pub(crate) struct Pools {
    pub(crate) jailer: Jailer,
    pub(crate) warm: RefCell<Warm>,
    /// Cold jails the pool keeps beside a template's children.
    pub(crate) cold_share: usize,
}

/// The pool's share of cold jails: a quarter, at least one.
pub(crate) fn cold_share(pool: usize) -> usize {
    (pool / 4).max(1).min(pool)
}

impl Pools {
    /// Start the templates that are due (see [`Warm::start_due`]).
    pub(crate) fn start_templates(&self) {
        self.warm.borrow_mut().start_due(&self.jailer);
    }
}

impl Jails for Pools {
    type Spec = StageSpec;
    type Payload = StagePayload;
    type Preparing = Preparing;
    type Prepared = Prepared;
    type Running = Supervisor;
    type Error = JailError;

    fn start_prepare(&self, spec: &StageSpec) -> Result<Preparing, JailError> {
        if let Some((pkg, variant)) = spec.warm {
            let t = self.warm.borrow_mut().usable(pkg, variant, &self.jailer);
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
        match (p.template_tag(), &payload.warm) {
            (None, None) => true,
            // A cold jail serves a warm-capable run only while its template is not ready (a
            // child prepared on demand costs less than a cold interpreter).
            (None, Some(w)) => !self.warm.borrow().ready(w.pkg, w.variant),
            (Some(tag), Some(w)) => tag == w.variant as u32,
            (Some(_), None) => false,
        }
    }

    fn fallback(&self, payload: &mut StagePayload) -> Option<Result<Preparing, JailError>> {
        // A template's child that failed (its template died, say): the run goes cold.
        let w = payload.warm.take()?;
        self.warm.borrow_mut().stats.cold_fallbacks += 1;
        Some(self.jailer.start_prepare(&w.jail))
    }

    fn evict_for(&self, p: &Prepared, payload: &StagePayload) -> bool {
        // A child of another variant makes way for one of the variant this run wanted.
        matches!((p.template_tag(), &payload.warm), (Some(tag), Some(w)) if tag != w.variant as u32)
    }

    fn preference(&self, p: &Prepared, payload: &StagePayload) -> u8 {
        // A warm-capable run takes a child of its template first; a cold-only run a cold jail.
        u8::from(p.is_warm() != payload.warm.is_some())
    }

    fn reserved_kind(&self, p: Result<&Prepared, &Preparing>) -> bool {
        match p {
            Ok(p) => !p.is_warm(),
            Err(p) => !p.is_warm(),
        }
    }

    fn start_pool_prepare(&self, spec: &StageSpec, cold: usize) -> Result<Preparing, JailError> {
        // The pool keeps a share of cold jails for the runs the warm path does not serve
        // (program mode, other languages with the default limits).
        if cold < self.cold_share {
            return self.jailer.start_prepare(&spec.jail);
        }
        let mut spec = spec.clone();
        if let Some((pkg, _)) = spec.warm {
            let v = self.warm.borrow_mut().next_pool_variant(pkg);
            spec.warm = Some((pkg, v));
        }
        self.start_prepare(&spec)
    }

    fn launch(&self, p: Prepared, payload: &StagePayload) -> Result<Supervisor, JailError> {
        let mut warm = self.warm.borrow_mut();
        match (payload.warm.as_ref().map(|w| &w.payload), p.is_warm()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_naming_a_module_gets_the_template_with_modules() {
        let m = vec!["numpy".to_owned(), "pandas".to_owned()];
        let v = |src: &str| variant_for(&[src], &m);
        assert_eq!(v("import pandas as pd\n"), Variant::Modules);
        assert_eq!(v("from numpy.linalg import inv"), Variant::Modules);
        assert_eq!(v("x = __import__('pandas')"), Variant::Modules);
        assert_eq!(v("def main():\n    return 1\n"), Variant::Bare);
        // a word, not a substring
        assert_eq!(v("import numpyish\npandas_like = 1"), Variant::Bare);
        assert_eq!(
            variant_for(&["print(1)", "import numpy"], &m),
            Variant::Modules
        );
        assert_eq!(variant_for(&["import numpy"], &[]), Variant::Bare);
    }

    #[test]
    fn the_pool_follows_demand() {
        let mut w = Warm::new(WarmSettings {
            enabled: false,
            ..WarmSettings::default()
        });
        for variant in [Variant::Modules, Variant::Bare] {
            w.slots.push(Slot {
                pkg: 0,
                variant,
                spec: JailSpec {
                    binds: vec![],
                    limits: Default::default(),
                },
                payload: Payload::default(),
                current: None,
                next: None,
                retry_at: Instant::now(),
                failures: 0,
            });
        }
        for _ in 0..200 {
            w.note_demand(Variant::Bare);
        }
        let bare = (0..100)
            .filter(|_| w.next_pool_variant(0) == Variant::Bare)
            .count();
        assert!(
            bare >= 90,
            "{bare} of 100 pool children bare under all-bare demand"
        );
    }
}

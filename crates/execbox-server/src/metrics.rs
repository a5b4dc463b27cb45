//! Prometheus metrics.

use execbox_proto::{ErrorCode, RunStatus};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished runs by status and runtime.
    pub runs: IntCounterVec,
    /// Run wall time (queue excluded) by runtime.
    pub run_seconds: HistogramVec,
    /// Runs waiting for a slot.
    pub queue_depth: IntGauge,
    /// Runs executing.
    pub in_flight: IntGauge,
    /// Requests refused, by reason.
    pub rejected: IntCounterVec,
    /// Spawner restarts.
    pub spawner_restarts: IntGauge,
    /// Open connections on the public listener.
    pub connections_open: IntGauge,
    /// Open WebSockets (authenticated or not).
    pub websockets_open: IntGauge,
    /// The warm path, by counter (`warm_hits`, `cold_fallbacks`, `recycles`, `restarts`,
    /// `templates_ready`, `pool_depth`), as the spawner running now reports them.
    pub warm: IntGaugeVec,
}

impl Metrics {
    /// Register everything in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("execbox".into()), None)?;
        let runs = IntCounterVec::new(
            Opts::new("runs_total", "Finished runs by final status and runtime"),
            &["status", "runtime"],
        )?;
        let run_seconds = HistogramVec::new(
            HistogramOpts::new(
                "run_duration_seconds",
                "Wall time of runs, from launch to exit",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["runtime"],
        )?;
        let queue_depth = IntGauge::new("queue_depth", "Runs admitted and waiting for a slot")?;
        let in_flight = IntGauge::new("runs_in_flight", "Runs executing now")?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "rejected_requests_total",
                "Requests refused before running, by reason",
            ),
            &["reason"],
        )?;
        let spawner_restarts =
            IntGauge::new("spawner_restarts", "Times the spawner was restarted")?;
        let connections_open = IntGauge::new(
            "connections_open",
            "Open connections on the public listener (WebSockets included)",
        )?;
        let websockets_open = IntGauge::new("websockets_open", "Open WebSocket sessions")?;
        let warm = IntGaugeVec::new(
            Opts::new(
                "warm",
                "Warm path (templates): warm_hits, cold_fallbacks, recycles and restarts since the spawner started; templates_ready and pool_depth now",
            ),
            &["what"],
        )?;
        registry.register(Box::new(warm.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(websockets_open.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(spawner_restarts.clone()))?;
        Ok(Self {
            registry,
            runs,
            run_seconds,
            queue_depth,
            in_flight,
            rejected,
            spawner_restarts,
            connections_open,
            websockets_open,
            warm,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Count a request refused before running, labelled with its error code (the one string
    /// form of [`ErrorCode`], so labels and answers never disagree).
    pub fn reject(&self, code: ErrorCode) {
        self.rejected.with_label_values(&[code.as_str()]).inc();
    }

    /// Count a finished run by status and runtime, and observe its wall time.
    pub fn run_finished(&self, status: RunStatus, runtime: &str, wall_secs: Option<f64>) {
        self.runs
            .with_label_values(&[status.as_str(), runtime])
            .inc();
        if let Some(secs) = wall_secs {
            self.run_seconds.with_label_values(&[runtime]).observe(secs);
        }
    }
}

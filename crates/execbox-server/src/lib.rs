//! The execbox HTTP service.
//!
//! ```text
//! client ─HTTP─▶ router (validation) ─▶ quotas, admission (bounded queue) ─▶ run store
//!                                (quotas and run store: in memory, or Redis shared by replicas)
//!                                          │ one JSON line per order
//!                                          ▼
//!                            spawner process (single-threaded, started and restarted here)
//! ```
//!
//! This crate never forks: every jail is made by the spawner (`execbox spawner`), a separate
//! single-threaded process. [`public_app`] and [`private_app`] build the routers from an
//! [`AppState`]; [`serve`] runs them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admission;
mod api;
pub mod auth;
pub mod config;
mod error;
mod extract;
mod listener;
pub mod live;
mod metrics;
pub mod openapi;
pub mod origin;
pub mod quota;
mod routes;
mod runner;
pub mod sandbox;
mod shared;
mod spawner_client;
mod state;
mod store;
mod validate;

use std::future::Future;
use std::sync::Arc;

pub use config::ServerConfig;
pub use routes::{private_app, public_app};
pub use state::AppState;

use crate::sandbox::SandboxStatus;
use crate::spawner_client::{SpawnerClient, SpawnerCommand};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The spawner cannot start on this host (no runtime, a required layer missing).
    #[error("the sandbox spawner cannot start: {0}")]
    Spawner(String),
    /// Binding or serving failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The Redis URL is not one.
    #[error("{0}")]
    Redis(String),
    /// Metrics registry.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS certificate/key {path}: {source}")]
    Tls {
        /// Certificate path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `router` on `listener` (with TLS when given) until `stop`, then finish in-flight
/// requests. hyper's connection settings bound slow clients: headers must arrive within
/// [`HEADER_READ_TIMEOUT`], HTTP/2 connections are pinged and dropped when silent, and carry
/// at most 64 concurrent streams. With `max_connections`, at most that many connections are
/// open at once ([`listener::CappedListener`]); `open` counts them.
async fn listen(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: tokio_util::sync::CancellationToken,
    max_connections: Option<usize>,
    open: Option<prometheus::IntGauge>,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioTimer;
    let handle = axum_server::Handle::<listener::CappedAddr>::new();
    let h = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        h.graceful_shutdown(None);
    });
    let listener = listener::CappedListener::new(listener, max_connections, open);
    let service = router.into_make_service();
    macro_rules! configure_and_serve {
        ($server:expr) => {{
            let mut server = $server.handle(handle);
            let b = server.http_builder();
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            b.http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(30))
                .keep_alive_timeout(std::time::Duration::from_secs(10))
                .max_concurrent_streams(64);
            server.serve(service).await
        }};
    }
    let server = axum_server::Server::<listener::CappedAddr>::from_listener(listener);
    match tls {
        Some(tls) => {
            configure_and_serve!(server.acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls)))
        }
        None => configure_and_serve!(server),
    }
}

/// Build the state and start the spawner (which reports the runtime's version when it is up).
/// The receiver follows the spawner's status (a `fatal` one stops the server).
pub fn build_state(
    cfg: ServerConfig,
) -> Result<
    (
        AppState,
        tokio::sync::watch::Receiver<SandboxStatus>,
        tokio::task::JoinHandle<()>,
    ),
    ServerError,
> {
    let (spawner, task) = SpawnerClient::start(SpawnerCommand {
        exe: cfg.spawner_exe.clone(),
        config: cfg.spawner.clone(),
    });
    let status = spawner.watch();
    Ok((AppState::new(cfg, Arc::new(spawner))?, status, task))
}

/// Serve until `shutdown` completes, then drain: stop accepting, let in-flight runs finish
/// within the grace period, cancel the rest, stop the spawner.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })
    };
    let public = bind(cfg.listen).await?;
    let private = bind(cfg.private_listen).await?;
    serve_on(public, private, cfg, shutdown).await
}

/// [`serve`] on already bound listeners (tests bind port 0).
pub async fn serve_on(
    public: tokio::net::TcpListener,
    private: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let local = |l: &tokio::net::TcpListener| {
        l.local_addr().map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })
    };
    let (public_addr, private_addr) = (local(&public)?, local(&private)?);
    let tls = match &cfg.tls {
        Some((cert, key)) => Some({
            // One process-wide crypto provider (ring: no C toolchain needed); a second install
            // attempt (tests in one process) is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| ServerError::Tls {
                    path: cert.clone(),
                    source,
                })?
        }),
        None => None,
    };
    if cfg.jwt_secret.is_none() {
        tracing::warn!(
            "authentication is DISABLED (--insecure-no-auth): anyone who can reach the public \
             port can run code; never do this outside local development"
        );
    }
    let grace = cfg.shutdown_grace;
    let retention = cfg.retention;
    let max_runs = cfg.max_stored_runs;
    let max_stored_bytes = cfg.max_stored_bytes;
    let max_connections = cfg.max_connections;
    let (state, mut spawner_status, spawner_task) = build_state(cfg)?;

    // Background tasks hold the store, not the state: the last AppState clone must go away
    // at shutdown so the spawner's order channel closes.
    let gc_store = state.store.clone();
    let gc_live = state.live.clone();
    let gc_state = std::sync::Arc::downgrade(&state.0);
    // Each second the store's own work (with Redis: leases, cancels requested through other
    // replicas, the sweep of runs whose replica died); every ten, the garbage collection.
    let gc = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            tick.tick().await;
            gc_store.tick().await;
            if n % 10 == 0 {
                gc_store.gc(retention, max_runs);
                gc_live.gc(retention, max_runs, max_stored_bytes);
                if let Some(s) = gc_state.upgrade() {
                    s.quotas.gc();
                }
            }
        }
    });

    // On shutdown: stop accepting at once; after the grace period cancel what still runs so
    // the blocking requests waiting on those runs can answer and the drain completes.
    let stop = state.shutdown.clone();
    let drain_store = state.store.clone();
    let stop_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(?grace, "shutting down: draining in-flight runs");
        stop_signal.cancel();
        tokio::time::sleep(grace).await;
        tracing::warn!("grace period over: cancelling remaining runs");
        drain_store.cancel_all();
    });

    // A spawner that cannot start at all (no runtime, a required layer missing) stops the
    // server: it would never become ready.
    let fatal_stop = stop.clone();
    let fatal_watch = tokio::spawn(async move {
        loop {
            if spawner_status.borrow_and_update().fatal.is_some() {
                fatal_stop.cancel();
                return;
            }
            if spawner_status.changed().await.is_err() {
                return;
            }
        }
    });

    tracing::info!(addr = %public_addr, listener = "public", tls = tls.is_some(), "listening");
    tracing::info!(addr = %private_addr, listener = "private", "listening");
    let public_router = public_app(state.clone());
    let private_router = private_app(state.clone());
    let public_task = listen(
        public,
        public_router,
        tls,
        stop.clone(),
        Some(max_connections),
        Some(state.metrics.connections_open.clone()),
    );
    let private_task = listen(private, private_router, None, stop.clone(), None, None);
    let (pub_res, priv_res) = tokio::join!(public_task, private_task);
    gc.abort();
    let _ = gc.await;
    fatal_watch.abort();
    let fatal = state.sandbox.status().fatal;
    state.store.cancel_all();
    // Dropping the last client handle closes the order channel: the spawner cancels what
    // runs, tears every jail down and exits.
    drop(state);
    let _ = tokio::time::timeout(grace + std::time::Duration::from_secs(5), spawner_task).await;
    tracing::info!("stopped");
    if let Some(why) = fatal {
        return Err(ServerError::Spawner(why));
    }
    pub_res
        .map_err(|source| ServerError::Listen {
            addr: public_addr,
            source,
        })
        .and(priv_res.map_err(|source| ServerError::Listen {
            addr: private_addr,
            source,
        }))
}

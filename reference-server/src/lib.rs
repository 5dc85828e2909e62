//! `freelane-server`: the reference HTTP inference server, as a library.
//!
//! The binary (`src/main.rs`) is thin: parse [`config::Args`], [`build_app`], serve until
//! [`shutdown_signal`]. Tests build the same [`App`] in-process on an ephemeral port.
//!
//! ```text
//! axum handler ── validate ─▶ Coordinator::submit ─▶ lane (per GPU) ─▶ ServerExecutor::run
//!      ▲                         (429 / 503)                              │ LaneExecutor: decode
//!      └──── Handle (oneshot) ◀── Batch::finish ◀── Decoder::apply ◀── StepEngine::step
//! ```
//!
//! # Guarantees
//! - Every accepted request gets exactly one response: a completion, 504 (deadline), 503 (no
//!   usable GPU or shutting down) or 500 (an executor error failover could not absorb). A
//!   streamed response starts with its first token, so the same codes apply to a stream that
//!   fails before it; a failure after it is an error event in the stream.
//! - A client that disconnects cancels its request: its handle is dropped with the handler's
//!   future; a queued request is never executed, a running one leaves at the next step.
//! - Graceful shutdown ([`App::serve`] when its signal fires): stop accepting connections,
//!   finish every in-flight HTTP request (queued work runs), stop the coordinator's workers.
//! - No input panics a handler: bodies are parsed into typed requests with JSON errors.
//!
//! # Implementation
//! See [`executor`] for the engine layering (sim, CPU, CUDA hook) and [`model`] for the built-in
//! model's math and shapes.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod config;
pub mod executor;
pub mod http;
pub mod logging;
pub mod model;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

pub use backend::{Backend, StartError};
use config::Config;
use http::AppState;

/// A built server: the router and the shared state (coordinator, metrics).
#[derive(Debug)]
pub struct App {
    /// The axum router (all routes, body limit).
    pub router: Router,
    /// Shared state; `state.backend` holds the coordinator.
    pub state: Arc<AppState>,
    /// How long `serve` waits for open connections after the shutdown signal before closing
    /// them ([`Config::shutdown_grace`](config::Config::shutdown_grace): the request timeout
    /// plus two of the longest engine steps plus 2 s), by which time every accepted request
    /// has been answered (deadlines are checked between steps); what is left is a client that
    /// has not finished sending a request (never accepted) or an idle keep-alive connection.
    pub shutdown_grace: Duration,
}

/// Builds the server for `config`: weights, executor, coordinator, router. Must be called inside
/// a tokio runtime.
pub fn build_app(config: &Config) -> Result<App, StartError> {
    let backend = Backend::build(config)?;
    let state = Arc::new(AppState::new(
        backend,
        config.model_name.clone(),
        config.body_limit,
    ));
    Ok(App {
        router: http::router(state.clone()),
        state,
        shutdown_grace: config.shutdown_grace(),
    })
}

impl App {
    /// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stops
    /// accepting, waits for every in-flight request to be answered (at most
    /// [`shutdown_grace`](Self::shutdown_grace); a client still sending its request then is cut
    /// off), stops the coordinator.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, executor = self.state.backend.executor_name(), "listening");
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutdown requested: answering in-flight requests");
                let _ = signalled_tx.send(());
            })
            .into_future();
        let grace = self.shutdown_grace;
        let deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut serve = std::pin::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => Some(r),
            () = deadline => {
                // Graceful shutdown waits for every connection; a client that never finishes
                // sending its request (or a hung response) must not hold the process forever.
                tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
                None
            }
        };
        self.state.backend.shutdown().await;
        tracing::info!("all requests answered");
        match result {
            Some(r) => r,
            None => {
                // Answers given by the shutdown above still have to be written by their
                // connection tasks, which end with the runtime: give them a moment. `serve`
                // ends as soon as the last connection closes; a stalled client holds it only
                // this long.
                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, &mut serve).await;
                Ok(())
            }
        }
    }
}

/// How long `serve` lets open connections write answers given after the shutdown grace.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (the model is TGI's `shutdown_signal`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received sigint"),
        _ = terminate => tracing::info!("received sigterm"),
    }
}

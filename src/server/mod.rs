//! The streaming server: OpenAI-compatible HTTP + SSE and a WebSocket stream for
//! autocomplete, in front of one engine thread.
//!
//! The path of a request: `routes` (HTTP handlers, API key) -> `openai` (parse and
//! validate) -> `jobs` (prompt tokens, context check, queue) -> `engine_thread` (the one
//! thread owning the model: generate, detokenize, `stop` strings) -> per-request events ->
//! `sse` / `ws` (write chunks) -> `conn` (the socket, where per-token overhead is measured).
//! `responses` shapes the JSON, `error` the OpenAI-style errors, `metrics` the Prometheus
//! page (`router_metrics` the vLLM-named gauges routers read), `ready` liveness before
//! readiness, `llama_compat` llama.cpp's `/infill`, `/tokenize` and `/detokenize` shapes, `start` the `tachyon serve` start-up (options, port, engine, engine thread).

pub mod conn;
pub mod engine_thread;
pub mod error;
pub mod fields;
pub mod jobs;
pub mod llama_compat;
pub mod metrics;
pub mod openai;
pub mod ready;
pub mod responses;
pub mod router_metrics;
pub mod routes;
pub mod sse;
pub mod start;
pub mod stop;
pub mod structured;
pub mod tool_calls;
pub mod tools;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::engine::constraint::ConstraintVocab;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use conn::{ConnInfo, StampedListener};
use engine_thread::EngineHandle;
use jobs::FimTokens;
use metrics::Metrics;

pub use error::ApiError;
pub use start::{BusyPoll, ServeError, ServeOptions};

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub fim: Option<FimTokens>,
    /// The name `/v1/models` lists and responses carry.
    pub model_id: String,
    /// KV cache positions: prompt + completion must fit.
    pub ctx: usize,
    /// Token ids at or above this are rejected.
    pub vocab: usize,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    /// Largest request body (and WebSocket message), bytes.
    pub max_body: usize,
    /// Busy-poll the running request's events (`--busy-poll`; see `jobs::Submitted`).
    pub busy_poll: bool,
    pub created: u64,
    /// The vocabulary's constraint engine, built on the first constrained request.
    pub constraints: std::sync::OnceLock<Result<Arc<ConstraintVocab>, String>>,
    /// Logits rows of the model (the constraint masks cover them).
    pub logits_vocab: usize,
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/stream", get(routes::stream))
        .route("/infill", post(llama_compat::infill))
        .route("/tokenize", post(llama_compat::tokenize))
        .route("/detokenize", post(llama_compat::detokenize))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::require_key,
        ))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting and lets in-flight
/// requests finish for up to `grace` before returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let metrics = state.metrics.clone();
    let app = router(state).into_make_service_with_connect_info::<ConnInfo>();
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let signal = async move {
        shutdown.await;
        notify.notify_one();
    };
    let server =
        axum::serve(StampedListener::new(listener, metrics), app).with_graceful_shutdown(signal);
    tokio::select! {
        r = server.into_future() => r,
        _ = async { started.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still running {grace:?} after the shutdown signal; exiting anyway");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

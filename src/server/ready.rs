//! Liveness and readiness: the server answers from the moment its port is bound, while the
//! model loads and warms up, so an orchestrator can tell "alive, not ready" from "dead".
//! Until the full router is installed, `/health` answers 200 (`{"status":"loading"}`:
//! liveness) and every other route, `/v1/models` included, 503 with `Retry-After`
//! (readiness: routers and Kubernetes send traffic only once `/v1/models` answers 200).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use super::conn::{ConnInfo, StampedListener};
use super::error::ApiError;
use super::metrics::Metrics;

/// The full router, once the model is loaded and warmed up.
#[derive(Default)]
pub struct ReadyGate {
    app: OnceLock<Router>,
}

impl ReadyGate {
    /// Installs the full router: from now on every request goes to it.
    pub fn open(&self, app: Router) {
        let _ = self.app.set(app);
    }

    pub fn is_open(&self) -> bool {
        self.app.get().is_some()
    }
}

/// What a request gets before the model is ready.
fn loading(req: &Request) -> Response {
    if req.uri().path() == "/health" {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"loading"}"#,
        )
            .into_response();
    }
    let mut r = ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..ApiError::bad_request("the model is loading; retry once /v1/models answers 200")
    }
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

async fn dispatch(State(gate): State<Arc<ReadyGate>>, req: Request) -> Response {
    match gate.app.get() {
        // The router's error type is Infallible.
        Some(app) => match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        None => loading(&req),
    }
}

/// Serves on `listener` until `shutdown` resolves: the loading answers until `gate` opens,
/// the full router after. Then stops accepting and lets in-flight requests finish for up to
/// `grace` before returning.
pub async fn serve_gated(
    listener: tokio::net::TcpListener,
    gate: Arc<ReadyGate>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = Router::new()
        .fallback(dispatch)
        .with_state(gate)
        .into_make_service_with_connect_info::<ConnInfo>();
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn call(gate: &Arc<ReadyGate>, path: &str) -> (u16, Option<String>, String) {
        let req = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = dispatch(State(gate.clone()), req).await;
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        (status, retry, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn loading_is_alive_but_not_ready_until_the_gate_opens() {
        let gate = Arc::new(ReadyGate::default());
        let (s, _, body) = call(&gate, "/health").await;
        assert_eq!((s, body.as_str()), (200, r#"{"status":"loading"}"#));
        for path in ["/v1/models", "/v1/completions", "/metrics"] {
            let (s, retry, body) = call(&gate, path).await;
            assert_eq!(s, 503, "{path}");
            assert_eq!(retry.as_deref(), Some("1"), "{path}");
            assert!(body.contains("loading"), "{path}: {body}");
        }
        assert!(!gate.is_open());
        gate.open(Router::new().route("/v1/models", get(|| async { "models" })));
        assert!(gate.is_open());
        let (s, _, body) = call(&gate, "/v1/models").await;
        assert_eq!((s, body.as_str()), (200, "models"));
    }
}

//! HTTP handlers: the OpenAI endpoints, models, health, metrics,
//! the WebSocket upgrade, and the API-key check in front of all but `/health`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::conn::ConnInfo;
use super::error::ApiError;
use super::openai::{parse_chat_request, parse_completion_request};
use super::responses::{Header, Kind};
use super::sse::{SseBody, collect};
use super::ws::serve_socket;

type AppResult = Result<Response, ApiError>;

/// Reads the body up to the configured limit (413 past it, whatever Content-Length says).
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| ApiError::payload_too_large(state.max_body))
}

fn json_response(v: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Byte-wise comparison whose time does not depend on where the inputs differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every route but `/health` needs `Authorization: Bearer KEY` when the server has a key.
pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && req.uri().path() != "/health"
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_key(g.trim().as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn stamp(conn: ConnectInfo<ConnInfo>) -> Option<super::conn::WriteStamp> {
    Some(conn.0.stamp)
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    conn: ConnectInfo<ConnInfo>,
    body: Body,
) -> AppResult {
    let received = Instant::now();
    let bytes = read_body(&state, body).await?;
    let req = parse_completion_request(&bytes)?;
    let prompt = state.completion_prompt(&req)?;
    let sub = state.submit(prompt, &req.options, Some(16), received)?;
    let header = Header {
        id: super::jobs::response_id("cmpl"),
        model: state.model_id.clone(),
        created: super::jobs::unix_time(),
        kind: Kind::Completion,
    };
    let o = &req.options;
    if o.stream {
        Ok(SseBody::new(
            sub,
            header,
            state.tokenizer.clone(),
            o.logprobs.is_some(),
            o.include_usage,
            stamp(conn),
        )
        .into_response())
    } else {
        collect(sub, header, &state.tokenizer, o.logprobs.is_some(), false).await
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    conn: ConnectInfo<ConnInfo>,
    body: Body,
) -> AppResult {
    let received = Instant::now();
    let bytes = read_body(&state, body).await?;
    let mut req = parse_chat_request(&bytes)?;
    let prompt = state.chat_prompt(&req)?;
    if let Some(spec) = state.tool_constraint(&req)? {
        req.options.constraint = Some(spec);
    }
    let tools = req.tools.constrains();
    let sub = state.submit(prompt, &req.options, None, received)?;
    let header = Header {
        id: super::jobs::response_id("chatcmpl"),
        model: state.model_id.clone(),
        created: super::jobs::unix_time(),
        kind: Kind::Chat,
    };
    let o = &req.options;
    if o.stream {
        Ok(SseBody::new(
            sub,
            header,
            state.tokenizer.clone(),
            o.logprobs.is_some(),
            o.include_usage,
            stamp(conn),
        )
        .with_tool_calls(tools)
        .into_response())
    } else {
        collect(sub, header, &state.tokenizer, o.logprobs.is_some(), tools).await
    }
}

pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    json_response(json!({
        "object": "list",
        "data": [{"id": state.model_id, "object": "model", "created": state.created, "owned_by": "tachyon", "max_model_len": state.ctx}],
    }))
}

/// Liveness: 200 while the engine runs; 503 with the reason once it failed (a GPU fault
/// it could not recover from), so an orchestrator restarts the server.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.failure() {
        None => json_response(json!({"status": "ok"})),
        Some(why) => {
            let mut r = json_response(json!({"status": "failed", "reason": why}));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            let m = &state.metrics;
            let mut page = m.render();
            super::router_metrics::append_vllm_gauges(
                &mut page,
                &state.model_id,
                m.running.get(),
                m.queue_depth.get(),
                m.kv.fraction(),
            );
            page
        },
    )
        .into_response()
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    conn: ConnectInfo<ConnInfo>,
    ws: WebSocketUpgrade,
) -> Response {
    let stamp = stamp(conn);
    ws.max_message_size(state.max_body)
        .on_upgrade(move |socket| serve_socket(socket, state, stamp))
}

pub async fn not_found() -> Response {
    ApiError::not_found("no such route").into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::bad_request("method not allowed on this route")
    }
    .into_response()
}

//! `GET /v1/stream`: the WebSocket path for autocomplete. The client sends one JSON request
//! per completion (the `/v1/completions` fields, plus an optional `id` echoed back) and gets
//! one frame per generated token. A new request on the same socket cancels the running one
//! at once (cancel-and-replace, one request per keystroke); `{"type": "cancel"}` stops it.
//!
//! Frames: `{"type":"token","id":..,"index":n,"text":"..","token":123,"t_us":..}` (`t_us`:
//! microseconds since the request arrived; with `logprobs: N` also `logprob` and
//! `top_logprobs: [{id, token, logprob}]`), then `{"type":"done","id":..,"text":"..",
//! "finish_reason":"stop"|"length"|"cancelled","usage":{..},"timing":{..}}` (its `text` is
//! held-back text released at the end), or `{"type":"error","id":..,"error":{..}}`.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::conn::WriteStamp;
use super::engine_thread::{Done, Event};
use super::error::ApiError;
use super::jobs::Submitted;
use super::openai::{parse_completion_request, parse_ws_envelope};
use super::responses::Usage;

struct Running {
    id: Value,
    sub: Submitted,
    index: usize,
}

#[derive(Serialize)]
struct TokenFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    index: usize,
    text: &'a str,
    token: u32,
    t_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprob: Option<f32>,
    /// With `logprobs: N`: the N most likely tokens at this position, best first.
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<TopEntry>>,
}

#[derive(Serialize)]
struct TopEntry {
    id: u32,
    token: String,
    logprob: f32,
}

#[derive(Serialize)]
struct Timing {
    queue_us: u64,
    ttft_us: u64,
    total_us: u64,
}

#[derive(Serialize)]
struct DoneFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    text: &'a str,
    finish_reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timing: Option<Timing>,
}

fn done_frame(id: &Value, d: Option<&Done>) -> String {
    let frame = DoneFrame {
        kind: "done",
        id,
        text: d.map_or("", |d| &d.tail),
        finish_reason: d.map_or("cancelled", |d| d.finish_reason),
        usage: d.map(Usage::of),
        timing: d.map(|d| Timing {
            queue_us: d.queue_wait.as_micros() as u64,
            ttft_us: d.time_to_first_token.as_micros() as u64,
            total_us: d.total.as_micros() as u64,
        }),
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

fn error_frame(id: &Value, e: &ApiError) -> String {
    serde_json::json!({"type": "error", "id": id, "error": e.to_value()}).to_string()
}

/// Waits for the running request's next event; never resolves when there is none.
async fn next_event(cur: &mut Option<Running>) -> Option<Event> {
    match cur {
        Some(r) => r.sub.next_event().await,
        None => std::future::pending().await,
    }
}

pub async fn serve_socket(
    mut socket: WebSocket,
    state: std::sync::Arc<AppState>,
    stamp: Option<WriteStamp>,
) {
    let mut cur: Option<Running> = None;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let bytes = match msg {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // Closed or broken: dropping `cur` cancels its generation.
                    _ => break,
                };
                let received = Instant::now();
                // Whatever the message, the running request ends now.
                if let Some(r) = cur.take() {
                    r.sub.guard.cancel();
                    if socket.send(Message::Text(done_frame(&r.id, None).into())).await.is_err() {
                        break;
                    }
                }
                let reply = match start(&state, &bytes, received) {
                    Ok(Some(r)) => {
                        cur = Some(r);
                        None
                    }
                    Ok(None) => None,
                    Err(refused) => Some(error_frame(&refused.0, &refused.1)),
                };
                if let Some(frame) = reply
                    && socket.send(Message::Text(frame.into())).await.is_err()
                {
                    break;
                }
            }
            ev = next_event(&mut cur) => {
                let Some(r) = cur.as_mut() else { continue };
                let (frame, finished) = match ev {
                    Some(Event::Token(t)) => {
                        let frame = TokenFrame {
                            kind: "token",
                            id: &r.id,
                            index: r.index,
                            text: &t.text,
                            token: t.id,
                            t_us: t.produced_at.saturating_duration_since(r.sub.received).as_micros() as u64,
                            logprob: t.logprobs.as_ref().map(|l| l.logprob),
                            top_logprobs: t.logprobs.as_ref().map(|l| {
                                l.top
                                    .iter()
                                    .map(|&(id, logprob)| TopEntry {
                                        id,
                                        token: state.tokenizer.decode(&[id]).unwrap_or_default(),
                                        // JSON has no -inf.
                                        logprob: if logprob.is_finite() { logprob } else { -9999.0 },
                                    })
                                    .collect()
                            }),
                        };
                        r.index += 1;
                        if let Some(s) = &stamp {
                            s.mark(t.produced_at);
                        }
                        (serde_json::to_string(&frame).unwrap_or_default(), false)
                    }
                    Some(Event::Done(d)) => (done_frame(&r.id, Some(&d)), true),
                    Some(Event::Error(e)) => (error_frame(&r.id, &e), true),
                    None => (error_frame(&r.id, &ApiError::unavailable()), true),
                };
                if finished {
                    cur = None;
                }
                if socket.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// A refused message: the request's `id` (echoed in the error frame) and why. Boxed: the
/// pair is large and the `Ok` path is the common one.
type Refusal = Box<(Value, ApiError)>;

/// Handles one client message: `Ok(None)` for a cancel, the running request otherwise.
fn start(state: &AppState, bytes: &[u8], received: Instant) -> Result<Option<Running>, Refusal> {
    let (kind, id) = parse_ws_envelope(bytes).map_err(|e| Box::new((Value::Null, e)))?;
    match kind.as_deref() {
        Some("cancel") => return Ok(None),
        None | Some("completion") => {}
        Some(other) => {
            return Err(Box::new((
                id,
                ApiError::invalid(
                    "type",
                    format!("unknown message type {other:?} (completion or cancel)"),
                ),
            )));
        }
    }
    let refuse = |e| Box::new((id.clone(), e));
    let req = parse_completion_request(bytes).map_err(refuse)?;
    let prompt = state.completion_prompt(&req).map_err(refuse)?;
    let sub = state
        .submit(prompt, &req.options, Some(16), received)
        .map_err(refuse)?;
    Ok(Some(Running { id, sub, index: 0 }))
}

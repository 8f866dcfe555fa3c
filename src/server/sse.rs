//! Server-sent events as OpenAI streams them: one `data: {chunk}\n\n` per token that
//! releases text, the finish chunk, the usage chunk when asked, then `data: [DONE]\n\n`.
//! The body owns the request's cancel guard, so a client that disconnects drops the body
//! and stops the generation. Also the non-streamed path, which gathers the same events
//! into one response, so both return the same text byte for byte.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::conn::WriteStamp;
use super::engine_thread::Event;
use super::error::ApiError;
use super::jobs::Submitted;
use super::responses::{DONE, Header, LogprobsBuilder, Usage, write_event};
use super::tool_calls::{self, CallStream, Piece};
use crate::tokenizer::Tokenizer;
use serde_json::json;

pub struct SseBody {
    sub: Submitted,
    header: Header,
    tokenizer: Arc<Tokenizer>,
    logprobs: Option<LogprobsBuilder>,
    include_usage: bool,
    stamp: Option<WriteStamp>,
    /// Chat streams open with a chunk carrying the role.
    role_sent: bool,
    offset: usize,
    finished: bool,
    /// Chat with tools: the text is parsed for tool calls as it streams.
    calls: Option<CallStream>,
}

impl SseBody {
    pub fn new(
        sub: Submitted,
        header: Header,
        tokenizer: Arc<Tokenizer>,
        logprobs: bool,
        include_usage: bool,
        stamp: Option<WriteStamp>,
    ) -> SseBody {
        let kind = header.kind;
        let role_sent = kind == super::responses::Kind::Completion;
        SseBody {
            sub,
            header,
            tokenizer,
            logprobs: logprobs.then(|| LogprobsBuilder::new(kind)),
            include_usage,
            stamp,
            role_sent,
            offset: 0,
            finished: false,
            calls: None,
        }
    }

    /// Streams tool calls as `delta.tool_calls` chunks (when `on`): text before a call as
    /// content, each call once its closing tag arrives (its id, name, then its arguments).
    pub fn with_tool_calls(mut self, on: bool) -> SseBody {
        if on {
            self.calls = Some(CallStream::new(&self.header.id));
        }
        self
    }

    /// Writes the pieces the call parser released.
    fn write_pieces(&mut self, out: &mut Vec<u8>, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Text(t) => self.header.write_chunk(out, &t, false, None, None),
                Piece::Call(index, c) => {
                    let first = json!([{"index": index, "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": ""}}]);
                    let args = json!([{"index": index, "function": {"arguments": c.arguments}}]);
                    for calls in [first, args] {
                        write_event(out, &self.header.tool_chunk(calls));
                    }
                }
            }
        }
    }

    pub fn into_response(self) -> Response {
        let mut res = Body::from_stream(self).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        res
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let mut out = Vec::with_capacity(256);
        if !this.role_sent {
            this.role_sent = true;
            this.header.write_chunk(&mut out, "", true, None, None);
            return Poll::Ready(Some(Ok(out.into())));
        }
        loop {
            let ev = match this.sub.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ev) => ev,
            };
            match ev {
                Some(Event::Token(t)) => {
                    if let (Some(b), Some(lp)) = (this.logprobs.as_mut(), &t.logprobs) {
                        b.push(&this.tokenizer, t.id, lp, this.offset);
                    }
                    let lp = match this.logprobs.as_mut() {
                        Some(b) if !b.is_empty() => Some(b.take()),
                        _ => None,
                    };
                    if t.text.is_empty() && lp.is_none() {
                        continue;
                    }
                    if let Some(cs) = this.calls.as_mut() {
                        let pieces = cs.push(&t.text);
                        if pieces.is_empty() {
                            continue;
                        }
                        this.write_pieces(&mut out, pieces);
                        if let Some(s) = &this.stamp {
                            s.mark(t.produced_at);
                        }
                        return Poll::Ready(Some(Ok(out.into())));
                    }
                    this.offset += t.text.len();
                    this.header
                        .write_chunk(&mut out, &t.text, false, lp.as_ref(), None);
                    if let Some(s) = &this.stamp {
                        s.mark(t.produced_at);
                    }
                    return Poll::Ready(Some(Ok(out.into())));
                }
                Some(Event::Done(d)) => {
                    let mut finish = d.finish_reason;
                    if let Some(mut cs) = this.calls.take() {
                        let mut pieces = cs.push(&d.tail);
                        pieces.extend(cs.finish());
                        this.write_pieces(&mut out, pieces);
                        if cs.calls() > 0 && finish == "stop" {
                            finish = "tool_calls";
                        }
                    } else if !d.tail.is_empty() {
                        this.header
                            .write_chunk(&mut out, &d.tail, false, None, None);
                    }
                    this.header
                        .write_chunk(&mut out, "", false, None, Some(finish));
                    if this.include_usage {
                        this.header.write_usage(&mut out, &Usage::of(&d));
                    }
                    out.extend_from_slice(DONE);
                }
                Some(Event::Error(e)) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(e.to_json().as_bytes());
                    out.extend_from_slice(b"\n\n");
                    out.extend_from_slice(DONE);
                }
                None => {
                    write_event(
                        &mut out,
                        &serde_json::json!({"error": ApiError::unavailable().to_value()}),
                    );
                    out.extend_from_slice(DONE);
                }
            }
            this.finished = true;
            return Poll::Ready(Some(Ok(out.into())));
        }
    }
}

/// Waits for the whole generation and answers with one JSON object.
pub async fn collect(
    mut sub: Submitted,
    header: Header,
    tokenizer: &Tokenizer,
    logprobs: bool,
    tools: bool,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut lps = logprobs.then(|| LogprobsBuilder::new(header.kind));
    // `sub` holds the cancel guard: if this future is dropped (client gone), generation stops.
    loop {
        match sub.next_event().await {
            Some(Event::Token(t)) => {
                if let (Some(b), Some(lp)) = (lps.as_mut(), &t.logprobs) {
                    b.push(tokenizer, t.id, lp, text.len());
                }
                text.push_str(&t.text);
            }
            Some(Event::Done(d)) => {
                text.push_str(&d.tail);
                let (content, calls) = if tools {
                    tool_calls::parse(&text, &header.id)
                } else {
                    (text, Vec::new())
                };
                let finish = if !calls.is_empty() && d.finish_reason == "stop" {
                    "tool_calls"
                } else {
                    d.finish_reason
                };
                let mut body = header.full(
                    &content,
                    lps.as_mut().map(LogprobsBuilder::take),
                    finish,
                    &Usage::of(&d),
                );
                if !calls.is_empty() {
                    let message = &mut body["choices"][0]["message"];
                    if content.is_empty() {
                        message["content"] = serde_json::Value::Null;
                    }
                    message["tool_calls"] =
                        serde_json::Value::Array(calls.iter().map(|c| c.to_value()).collect());
                }
                return Ok((
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response());
            }
            Some(Event::Error(e)) => return Err(e),
            None => return Err(ApiError::unavailable()),
        }
    }
}

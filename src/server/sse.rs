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
use crate::tokenizer::Tokenizer;

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
                    this.offset += t.text.len();
                    this.header
                        .write_chunk(&mut out, &t.text, false, lp.as_ref(), None);
                    if let Some(s) = &this.stamp {
                        s.mark(t.produced_at);
                    }
                    return Poll::Ready(Some(Ok(out.into())));
                }
                Some(Event::Done(d)) => {
                    if !d.tail.is_empty() {
                        this.header
                            .write_chunk(&mut out, &d.tail, false, None, None);
                    }
                    this.header
                        .write_chunk(&mut out, "", false, None, Some(d.finish_reason));
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
                let body = header.full(
                    &text,
                    lps.as_mut().map(LogprobsBuilder::take),
                    d.finish_reason,
                    &Usage::of(&d),
                );
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

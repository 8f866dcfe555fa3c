//! Request bodies: what a client sends to the server, through the same pure parsers the
//! routes call (`server::openai`), then the request-side steps that need no model: the
//! sampling settings the engine would get, the error body a refusal becomes, and the stop
//! strings run over the prompt text as if it were generated.
//!
//! Input: one byte choosing the endpoint (completions, chat, tokenize, detokenize, the
//! WebSocket envelope), then the body. `Ok` means the body was accepted.

use super::{Outcome, Rejected};
use crate::server::ApiError;
use crate::server::openai::{
    self, MAX_STOP_BYTES, MAX_STOPS, Options, Prompt, parse_chat_request, parse_completion_request,
};
use crate::server::stop::StopMatcher;

pub fn run(data: &[u8]) -> Outcome {
    let Some((&endpoint, body)) = data.split_first() else {
        return Err(Rejected("empty input".into()));
    };
    let result = match endpoint % 5 {
        0 => parse_completion_request(body).map(|r| {
            check_options(&r.options);
            if let Prompt::Text(text) = &r.prompt {
                check_stops(&r.options.stop, text);
            }
            if let Prompt::Tokens(ids) = &r.prompt {
                assert!(!ids.is_empty(), "an empty token prompt was accepted");
            }
        }),
        1 => parse_chat_request(body).map(|r| {
            assert!(
                !r.messages.is_empty(),
                "a chat without messages was accepted"
            );
            check_options(&r.options);
            for m in &r.messages {
                check_stops(&r.options.stop, &m.content);
            }
        }),
        2 => openai::parse_tokenize_request(body).map(drop),
        3 => openai::parse_detokenize_request(body).map(drop),
        _ => openai::parse_ws_envelope(body).map(drop),
    };
    result.map_err(|e| refused(&e))
}

/// A refusal must become a well-formed OpenAI error body.
fn refused(e: &ApiError) -> Rejected {
    let body: serde_json::Value =
        serde_json::from_str(&e.to_json()).expect("the error body is not valid JSON");
    let message = body["error"]["message"]
        .as_str()
        .expect("the error body has no message");
    assert!(!message.is_empty(), "the error body's message is empty");
    Rejected(message.to_string())
}

/// What the parser accepted is within the documented ranges, and the sampler settings the
/// server makes from it (`Options::sampling`, as `jobs.rs` does) pass the engine's check.
fn check_options(o: &Options) {
    assert!(o.stop.len() <= MAX_STOPS && o.stop.iter().all(|s| s.len() <= MAX_STOP_BYTES));
    assert!(o.max_tokens != Some(0), "max_tokens 0 was accepted");
    if let Err(e) = o.sampling(o.seed.unwrap_or(0)).validate() {
        panic!("the parser accepted settings the sampler refuses: {e}");
    }
}

/// Streams `text` through the stop matcher in pieces of one to three characters (as tokens
/// would come): the released text must be exactly the text before the earliest stop string,
/// or all of it when none occurs.
fn check_stops(stops: &[String], text: &str) {
    let mut matcher = StopMatcher::new(stops);
    let mut out = String::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() && !matcher.stopped() {
        let n = 1 + i % 3;
        let start = chars[i].0;
        let end = chars.get(i + n).map_or(text.len(), |&(at, _)| at);
        out.push_str(&matcher.push(&text[start..end]));
        i += n;
    }
    if !matcher.stopped() {
        out.push_str(&matcher.finish());
    }
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    assert_eq!(out, text[..cut], "stop strings released the wrong text");
}

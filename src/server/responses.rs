//! The JSON the server writes: OpenAI completion / chat objects and stream chunks, and
//! their log-probability blocks. Chunks are typed structs over borrowed text so the
//! per-token path serializes without building a JSON tree.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::engine_thread::{Done, TokenLogprobs};
use crate::tokenizer::Tokenizer;

/// Which OpenAI object family a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// What every chunk of one response repeats.
pub struct Header {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub kind: Kind,
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: CachedTokens,
}

#[derive(Serialize)]
pub struct CachedTokens {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn of(d: &Done) -> Usage {
        Usage {
            prompt_tokens: d.prompt_tokens,
            completion_tokens: d.completion_tokens,
            total_tokens: d.prompt_tokens + d.completion_tokens,
            prompt_tokens_details: CachedTokens {
                cached_tokens: d.cached_tokens,
            },
        }
    }
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta<'a>>,
    logprobs: Option<&'a Value>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

impl Header {
    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        }
    }

    /// Appends one SSE event `data: {chunk}\n\n` carrying `text` (and, for chat, the role
    /// on the first chunk).
    pub fn write_chunk(
        &self,
        out: &mut Vec<u8>,
        text: &str,
        role: bool,
        logprobs: Option<&Value>,
        finish: Option<&str>,
    ) {
        let choice = match self.kind {
            Kind::Completion => Choice {
                index: 0,
                text: Some(text),
                delta: None,
                logprobs,
                finish_reason: finish,
            },
            Kind::Chat => Choice {
                index: 0,
                text: None,
                delta: Some(Delta {
                    role: role.then_some("assistant"),
                    content: if finish.is_some() && text.is_empty() {
                        None
                    } else {
                        Some(text)
                    },
                }),
                logprobs,
                finish_reason: finish,
            },
        };
        let chunk = Chunk {
            id: &self.id,
            object: self.chunk_object(),
            created: self.created,
            model: &self.model,
            choices: &[choice],
            usage: None,
        };
        write_event(out, &chunk);
    }

    /// A chat chunk whose delta carries `tool_calls` (OpenAI's streamed tool calls).
    pub fn tool_chunk(&self, calls: Value) -> Value {
        json!({"id": self.id, "object": self.chunk_object(), "created": self.created,
               "model": self.model, "choices": [{"index": 0, "delta": {"tool_calls": calls},
               "logprobs": null, "finish_reason": null}]})
    }

    /// Appends the final usage chunk (`choices: []`) of `stream_options.include_usage`.
    pub fn write_usage(&self, out: &mut Vec<u8>, usage: &Usage) {
        let chunk = Chunk {
            id: &self.id,
            object: self.chunk_object(),
            created: self.created,
            model: &self.model,
            choices: &[],
            usage: Some(usage),
        };
        write_event(out, &chunk);
    }

    /// The whole non-streamed response.
    pub fn full(&self, text: &str, logprobs: Option<Value>, finish: &str, usage: &Usage) -> Value {
        let (object, choice) = match self.kind {
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}),
            ),
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice], "usage": usage})
    }
}

/// Appends `data: {json}\n\n`.
pub fn write_event<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    out.extend_from_slice(b"data: ");
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Log-probabilities collected over a response, in the layout of its kind: completions'
/// parallel arrays (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) or chat's
/// `content` list of `{token, logprob, bytes, top_logprobs}`.
pub struct LogprobsBuilder {
    kind: Kind,
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    offsets: Vec<Value>,
    content: Vec<Value>,
}

fn lp_value(v: f32) -> Value {
    // JSON has no -inf; OpenAI clients expect a number, so clamp to a very small one.
    json!(if v.is_finite() { v } else { -9999.0 })
}

impl LogprobsBuilder {
    pub fn new(kind: Kind) -> LogprobsBuilder {
        LogprobsBuilder {
            kind,
            tokens: Vec::new(),
            token_logprobs: Vec::new(),
            top: Vec::new(),
            offsets: Vec::new(),
            content: Vec::new(),
        }
    }

    /// Adds one token; `offset` is where the response text stood when it came.
    pub fn push(&mut self, tok: &Tokenizer, id: u32, lp: &TokenLogprobs, offset: usize) {
        let text = |id: u32| tok.decode(&[id]).unwrap_or_default();
        match self.kind {
            Kind::Completion => {
                self.tokens.push(Value::String(text(id)));
                self.token_logprobs.push(lp_value(lp.logprob));
                let mut m = Map::new();
                for &(t, v) in &lp.top {
                    m.insert(text(t), lp_value(v));
                }
                self.top.push(Value::Object(m));
                self.offsets.push(json!(offset));
            }
            Kind::Chat => {
                let entry = |id: u32, v: f32| {
                    let s = text(id);
                    let bytes: Vec<u8> = s.as_bytes().to_vec();
                    json!({"token": s, "logprob": lp_value(v), "bytes": bytes})
                };
                let mut e = entry(id, lp.logprob);
                let top: Vec<Value> = lp.top.iter().map(|&(t, v)| entry(t, v)).collect();
                if let Value::Object(m) = &mut e {
                    m.insert("top_logprobs".into(), Value::Array(top));
                }
                self.content.push(e);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.content.is_empty()
    }

    /// The block so far, and a fresh start (streaming sends one block per chunk).
    pub fn take(&mut self) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "tokens": std::mem::take(&mut self.tokens),
                "token_logprobs": std::mem::take(&mut self.token_logprobs),
                "top_logprobs": std::mem::take(&mut self.top),
                "text_offset": std::mem::take(&mut self.offsets),
            }),
            Kind::Chat => json!({"content": std::mem::take(&mut self.content)}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sse_events_of_openai_shape() {
        let h = Header {
            id: "cmpl-1".into(),
            model: "m".into(),
            created: 5,
            kind: Kind::Completion,
        };
        let mut out = Vec::new();
        h.write_chunk(&mut out, "hé\"", false, None, None);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("data: ") && s.ends_with("\n\n"));
        let v: Value = serde_json::from_str(&s[6..s.len() - 2]).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "hé\"");
        assert!(v["choices"][0]["finish_reason"].is_null());
        let h = Header {
            kind: Kind::Chat,
            ..h
        };
        let mut out = Vec::new();
        h.write_chunk(&mut out, "", true, None, None);
        h.write_chunk(&mut out, "", false, None, Some("stop"));
        let s = String::from_utf8(out).unwrap();
        let events: Vec<Value> = s
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(&e[6..]).unwrap())
            .collect();
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(events[1]["choices"][0]["delta"], json!({}));
        assert_eq!(events[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[0]["object"], "chat.completion.chunk");
    }
}

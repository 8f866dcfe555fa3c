//! The routes clients written for llama.cpp's server use, in its request and response
//! shapes, so editor plugins (llama.vim, Continue's llama.cpp provider, ...) work unchanged:
//!
//! - `POST /infill`: `input_prefix`, `input_suffix`, `input_extra` (`[{filename, text}]`,
//!   other files for context), `prompt` (text after the middle token), the sampling fields
//!   under llama.cpp's names (`n_predict`, `repeat_penalty`, `n_probs`) or OpenAI's. The
//!   prompt is laid out as llama.cpp lays it: the repository and file-separator tokens with
//!   each extra file when the model has them (`<|repo_name|>`, `<|file_sep|>`), a plain
//!   `--- snippet ---` separator otherwise, then `<|fim_prefix|>` prefix `<|fim_suffix|>`
//!   suffix `<|fim_middle|>` prompt. The answer is llama.cpp's: `{"content", "stop",
//!   "tokens_predicted", "tokens_evaluated", "tokens_cached", "stop_type", "timings", ..}`;
//!   streamed, one `data: {"content", "tokens", "stop": false}` event per token and a
//!   final event with `"stop": true` (no `[DONE]`, as llama.cpp).
//! - `POST /tokenize` and `/detokenize` with llama.cpp's fields (`content`, `add_special`,
//!   `with_pieces`; `tokens`) as well as tachyon's (`prompt` / `text`,
//!   `add_special_tokens`); the answers carry both shapes' keys.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::conn::{ConnInfo, WriteStamp};
use super::engine_thread::{Done, Event, TokenEvent};
use super::error::ApiError;
use super::jobs::Submitted;
use super::openai::{Options, parse_completion_request, parse_detokenize_request};
use crate::tokenizer::Tokenizer;

/// One extra file of an infill request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ExtraFile {
    #[serde(default = "default_filename")]
    pub filename: String,
    #[serde(default)]
    pub text: String,
}

fn default_filename() -> String {
    "tmp".into()
}

#[derive(Clone, Debug, PartialEq)]
pub struct InfillRequest {
    pub prefix: String,
    pub suffix: String,
    pub extra: Vec<ExtraFile>,
    /// Text after the middle token (what is typed on the cursor's line, in llama.vim).
    pub prompt: String,
    pub options: Options,
}

/// The OpenAI fields an infill body may carry, and llama.cpp's names for some of them.
const OPENAI_FIELDS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    "ignore_eos",
    "logprobs",
];
const LLAMA_NAMES: &[(&str, &str)] = &[
    ("n_predict", "max_tokens"),
    ("repeat_penalty", "repetition_penalty"),
    ("n_probs", "logprobs"),
];

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
    }
}

fn text_field(m: &Map<String, Value>, name: &'static str) -> Result<String, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
    }
}

/// Parses and validates a llama.cpp `/infill` body. The sampling fields go through the
/// `/v1/completions` parser, so they are checked exactly as there.
pub fn parse_infill_request(body: &[u8]) -> Result<InfillRequest, ApiError> {
    let m = object(body)?;
    let prefix = text_field(&m, "input_prefix")?;
    let suffix = text_field(&m, "input_suffix")?;
    let prompt = text_field(&m, "prompt")?;
    let extra = match m.get("input_extra") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<ExtraFile>>(v.clone()).map_err(|e| {
            ApiError::invalid(
                "input_extra",
                format!("input_extra must be a list of {{\"filename\", \"text\"}} objects: {e}"),
            )
        })?,
    };
    let mut openai = Map::new();
    for &f in OPENAI_FIELDS {
        if let Some(v) = m.get(f) {
            openai.insert(f.into(), v.clone());
        }
    }
    for &(llama, name) in LLAMA_NAMES {
        if let Some(v) = m.get(llama)
            && !openai.contains_key(name)
        {
            openai.insert(name.into(), v.clone());
        }
    }
    // llama.cpp: n_predict -1 means "until the context is full", as no max_tokens here;
    // n_probs 0 means no probabilities.
    if openai.get("max_tokens").and_then(Value::as_i64) == Some(-1) {
        openai.remove("max_tokens");
    }
    if openai.get("logprobs").and_then(Value::as_i64) == Some(0) {
        openai.remove("logprobs");
    }
    // The prompt is laid out below; the completions parser needs one to accept the body.
    openai.insert("prompt".into(), Value::String(" ".into()));
    let parsed = parse_completion_request(Value::Object(openai).to_string().as_bytes())?;
    Ok(InfillRequest {
        prefix,
        suffix,
        extra,
        prompt,
        options: parsed.options,
    })
}

impl AppState {
    fn tokens(&self, text: &str, param: &'static str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::invalid(param, format!("could not tokenize {param}: {e}")))
    }

    /// The prompt ids of an infill request, as llama.cpp lays them out.
    pub fn infill_prompt(&self, req: &InfillRequest) -> Result<Vec<u32>, ApiError> {
        let Some(fim) = self.fim else {
            return Err(ApiError::invalid(
                "input_prefix",
                "this model has no fill-in-the-middle tokens (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>)",
            ));
        };
        let repo = self.tokenizer.token_id("<|repo_name|>");
        let file_sep = self.tokenizer.token_id("<|file_sep|>");
        let mut ids = Vec::new();
        if !req.extra.is_empty() {
            if let Some(r) = repo {
                ids.push(r);
                ids.extend(self.tokens("myproject\n", "input_extra")?);
            }
            for f in &req.extra {
                match file_sep {
                    Some(sep) => {
                        ids.push(sep);
                        ids.extend(self.tokens(&format!("{}\n", f.filename), "input_extra")?);
                    }
                    None => ids.extend(self.tokens("\n\n--- snippet ---\n\n", "input_extra")?),
                }
                ids.extend(self.tokens(&f.text, "input_extra")?);
            }
            if let Some(sep) = file_sep {
                ids.push(sep);
                ids.extend(self.tokens("filename\n", "input_extra")?);
            }
        }
        ids.push(fim.prefix);
        ids.extend(self.tokens(&req.prefix, "input_prefix")?);
        ids.push(fim.suffix);
        ids.extend(self.tokens(&req.suffix, "input_suffix")?);
        ids.push(fim.middle);
        ids.extend(self.tokens(&req.prompt, "prompt")?);
        Ok(ids)
    }
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// llama.cpp's `completion_probabilities` entry of one token.
fn probabilities(tok: &Tokenizer, t: &TokenEvent) -> Option<Value> {
    let lp = t.logprobs.as_ref()?;
    let piece = |id: u32| tok.decode(&[id]).unwrap_or_default();
    let num = |v: f32| json!(if v.is_finite() { v } else { -9999.0 });
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(id, v)| json!({"id": id, "token": piece(id), "logprob": num(v)}))
        .collect();
    Some(json!({"id": t.id, "token": piece(t.id), "logprob": num(lp.logprob), "top_logprobs": top}))
}

/// The final object: llama.cpp's fields for what tachyon knows.
fn final_object(model: &str, content: &str, d: &Done, probs: Vec<Value>) -> Value {
    let prompt_ms = d
        .time_to_first_token
        .saturating_sub(d.queue_wait)
        .as_secs_f64()
        * 1e3;
    let predicted_ms = d.total.saturating_sub(d.time_to_first_token).as_secs_f64() * 1e3;
    let evaluated = d.prompt_tokens - d.cached_tokens.min(d.prompt_tokens);
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let mut v = json!({
        "index": 0,
        "content": content,
        "tokens": [],
        "id_slot": 0,
        "stop": true,
        "model": model,
        "tokens_predicted": d.completion_tokens,
        "tokens_evaluated": d.prompt_tokens,
        "tokens_cached": d.cached_tokens,
        "truncated": false,
        "has_new_line": content.contains('\n'),
        "stop_type": match d.finish_reason {
            "length" => "limit",
            "stop" => "eos",
            _ => "none",
        },
        "stopping_word": "",
        "finish_reason": d.finish_reason,
        "timings": {
            "prompt_n": evaluated,
            "prompt_ms": prompt_ms,
            "prompt_per_second": per_second(evaluated, prompt_ms),
            "predicted_n": d.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_second": per_second(d.completion_tokens, predicted_ms),
        },
    });
    if !probs.is_empty() {
        v["completion_probabilities"] = Value::Array(probs);
    }
    v
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The streamed answer: one event per token, then the final object. The stream owns the
/// request's cancel guard, so a client that goes away stops the generation.
fn stream_response(
    sub: Submitted,
    state: Arc<AppState>,
    stamp: Option<WriteStamp>,
    logprobs: bool,
) -> Response {
    struct St {
        sub: Submitted,
        state: Arc<AppState>,
        stamp: Option<WriteStamp>,
        logprobs: bool,
        predicted: usize,
        done: bool,
    }
    let st = St {
        sub,
        state,
        stamp,
        logprobs,
        predicted: 0,
        done: false,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let bytes = match st.sub.next_event().await {
                Some(Event::Token(t)) => {
                    st.predicted += 1;
                    let probs = if st.logprobs {
                        probabilities(&st.state.tokenizer, &t)
                    } else {
                        None
                    };
                    if t.text.is_empty() && probs.is_none() {
                        continue;
                    }
                    let mut v = json!({
                        "index": 0,
                        "content": t.text,
                        "tokens": [t.id],
                        "stop": false,
                        "id_slot": 0,
                        "tokens_predicted": st.predicted,
                    });
                    if let Some(p) = probs {
                        v["completion_probabilities"] = json!([p]);
                    }
                    if let Some(s) = &st.stamp {
                        s.mark(t.produced_at);
                    }
                    event(&v)
                }
                Some(Event::Done(d)) => {
                    st.done = true;
                    event(&final_object(&st.state.model_id, &d.tail, &d, Vec::new()))
                }
                Some(Event::Error(e)) => {
                    st.done = true;
                    event(&json!({"error": e.to_value()}))
                }
                None => {
                    st.done = true;
                    event(&json!({"error": ApiError::unavailable().to_value()}))
                }
            };
            return Some((Ok::<Bytes, Infallible>(bytes), st));
        }
    });
    let mut res = Body::from_stream(s).into_response();
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

async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| ApiError::payload_too_large(state.max_body))
}

pub async fn infill(
    State(state): State<Arc<AppState>>,
    conn: ConnectInfo<ConnInfo>,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = read_body(&state, body).await?;
    let req = parse_infill_request(&bytes)?;
    let prompt = state.infill_prompt(&req)?;
    let o = &req.options;
    let mut sub = state.submit(prompt, o, None, received)?;
    let logprobs = o.logprobs.is_some();
    if o.stream {
        return Ok(stream_response(
            sub,
            state.clone(),
            Some(conn.0.stamp),
            logprobs,
        ));
    }
    let mut content = String::new();
    let mut probs = Vec::new();
    loop {
        match sub.next_event().await {
            Some(Event::Token(t)) => {
                if logprobs && let Some(p) = probabilities(&state.tokenizer, &t) {
                    probs.push(p);
                }
                content.push_str(&t.text);
            }
            Some(Event::Done(d)) => {
                content.push_str(&d.tail);
                return Ok(json_response(final_object(
                    &state.model_id,
                    &content,
                    &d,
                    probs,
                )));
            }
            Some(Event::Error(e)) => return Err(e),
            None => return Err(ApiError::unavailable()),
        }
    }
}

/// A `/tokenize` body in either shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizeRequest {
    pub text: String,
    pub add_special: bool,
    pub with_pieces: bool,
}

/// `{"content", "add_special", "with_pieces"}` (llama.cpp; special tokens off by default)
/// or `{"prompt" | "text", "add_special_tokens"}` (tachyon, vLLM; on by default).
pub fn parse_tokenize(body: &[u8]) -> Result<TokenizeRequest, ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        content: Option<String>,
        prompt: Option<String>,
        text: Option<String>,
        add_special: Option<bool>,
        add_special_tokens: Option<bool>,
        with_pieces: Option<bool>,
    }
    let m = object(body)?;
    let raw: Raw = serde_json::from_value(Value::Object(m))
        .map_err(|e| ApiError::bad_request(format!("invalid tokenize request: {e}")))?;
    let llama = raw.content.is_some();
    let text = raw
        .content
        .or(raw.prompt)
        .or(raw.text)
        .ok_or_else(|| ApiError::invalid("content", "content (or prompt) is required"))?;
    Ok(TokenizeRequest {
        text,
        add_special: raw.add_special.or(raw.add_special_tokens).unwrap_or(!llama),
        with_pieces: raw.with_pieces.unwrap_or(false),
    })
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, body).await?;
    let req = parse_tokenize(&bytes)?;
    let ids = state
        .tokenizer
        .encode(&req.text, req.add_special)
        .map_err(|e| ApiError::invalid("content", e.to_string()))?;
    let tokens: Vec<Value> = if req.with_pieces {
        ids.iter()
            .map(
                |&id| json!({"id": id, "piece": state.tokenizer.decode(&[id]).unwrap_or_default()}),
            )
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json_response(
        json!({"tokens": tokens, "count": ids.len(), "max_model_len": state.ctx}),
    ))
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, body).await?;
    let ids = parse_detokenize_request(&bytes)?;
    let vocab = state.tokenizer.vocab_size();
    if let Some(&id) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {id} is outside the vocabulary of {vocab} tokens"),
        ));
    }
    let text = state
        .tokenizer
        .decode(&ids)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    // `content` is llama.cpp's key, `prompt` tachyon's and vLLM's.
    Ok(json_response(json!({"content": text, "prompt": text})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infill_fields_under_both_names() {
        let r = parse_infill_request(
            br#"{"input_prefix":"def f(","input_suffix":"\n","input_extra":[{"filename":"a.py","text":"x=1"},{"text":"y"}],"prompt":"  ","n_predict":8,"temperature":0,"repeat_penalty":1.1,"n_probs":2,"cache_prompt":true,"samplers":["top_k"],"t_max_predict_ms":500}"#,
        )
        .unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.suffix.as_str(), r.prompt.as_str()),
            ("def f(", "\n", "  ")
        );
        assert_eq!(r.extra.len(), 2);
        assert_eq!(r.extra[1].filename, "tmp");
        assert_eq!(r.options.max_tokens, Some(8));
        assert_eq!(r.options.temperature, 0.0);
        assert!((r.options.repetition_penalty - 1.1).abs() < 1e-6);
        assert_eq!(r.options.logprobs, Some(2));
        // OpenAI's name wins; -1 is "no limit"; n_probs 0 is none.
        let r = parse_infill_request(br#"{"n_predict":-1,"n_probs":0}"#).unwrap();
        assert_eq!((r.options.max_tokens, r.options.logprobs), (None, None));
        let r = parse_infill_request(br#"{"n_predict":3,"max_tokens":5}"#).unwrap();
        assert_eq!(r.options.max_tokens, Some(5));
        for (body, param) in [
            (r#"{"input_prefix":3}"#, Some("input_prefix")),
            (r#"{"input_extra":"x"}"#, Some("input_extra")),
            (r#"{"temperature":-1}"#, Some("temperature")),
            (r#"{"n_predict":0}"#, Some("max_tokens")),
        ] {
            let e = parse_infill_request(body.as_bytes()).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
        }
        for body in ["", "[1]", "{"] {
            assert_eq!(
                parse_infill_request(body.as_bytes()).unwrap_err().status,
                400
            );
        }
    }

    #[test]
    fn tokenize_bodies_of_both_servers() {
        let r = parse_tokenize(br#"{"content":"a b","with_pieces":true}"#).unwrap();
        assert_eq!(
            (r.text.as_str(), r.add_special, r.with_pieces),
            ("a b", false, true)
        );
        let r = parse_tokenize(br#"{"content":"a","add_special":true}"#).unwrap();
        assert!(r.add_special);
        let r = parse_tokenize(br#"{"prompt":"a"}"#).unwrap();
        assert!(r.add_special && !r.with_pieces);
        let r = parse_tokenize(br#"{"text":"a","add_special_tokens":false}"#).unwrap();
        assert!(!r.add_special);
        assert_eq!(
            parse_tokenize(br#"{}"#).unwrap_err().param.as_deref(),
            Some("content")
        );
        assert_eq!(parse_tokenize(br#"{"content":1}"#).unwrap_err().status, 400);
    }
}

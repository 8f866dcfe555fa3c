//! OpenAI request parsing and validation, kept pure (bytes in, request or `ApiError` out)
//! so it can be fuzzed and tested without a server. Field names and defaults follow
//! OpenAI's `/v1/completions` and `/v1/chat/completions`, plus the common extensions
//! `top_k`, `min_p` and `repetition_penalty`.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::fields::{self, Fields};
use super::structured;
use super::tools::{self, Tools};
use crate::engine::SamplingParams;
use crate::engine::constraint::ConstraintSpec;
use crate::engine::logprobs::MAX_TOP_LOGPROBS;
use crate::tokenizer::ChatMessage;

/// Most stop strings per request, and longest one.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Settings shared by completions, chat and the WebSocket stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `None`: the endpoint's default (16 for completions, the rest of the context for chat).
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(n)`: log-probabilities with `n` alternatives per token.
    pub logprobs: Option<usize>,
    /// Keep generating through end-of-sequence tokens.
    pub ignore_eos: bool,
    /// OpenAI's `logit_bias` (token id, bias in [-100, 100]); ids are checked against the
    /// vocabulary by the caller that knows it.
    pub logit_bias: Vec<(u32, f32)>,
    /// `response_format` (JSON) or `grammar` (Lark / regex): compiled by the caller
    /// against the model's vocabulary.
    pub constraint: Option<ConstraintSpec>,
}

impl Options {
    /// The engine's sampling settings for these options, drawing with `seed`.
    pub fn sampling(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: 64,
            seed,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Fill-in-the-middle: the text after the cursor.
    pub suffix: Option<String>,
    pub options: Options,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// The messages as the chat template sees them: `role`, `content`, and for tool use
    /// `tool_calls` (arguments parsed into objects, as templates expect), `tool_call_id`
    /// and `name`.
    pub template_messages: Vec<Value>,
    pub tools: Tools,
    pub options: Options,
}

/// The fields of `/v1/completions` (and the WebSocket request message).
const COMPLETION_FIELDS: [&str; 25] = [
    "prompt",
    "suffix",
    "logprobs",
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
    "stream_options",
    "n",
    "best_of",
    "echo",
    "ignore_eos",
    "logit_bias",
    "response_format",
    "grammar",
    // WebSocket envelope fields.
    "id",
    "type",
    "max_completion_tokens",
];

/// The fields of `/v1/chat/completions`.
const CHAT_FIELDS: [&str; 24] = [
    "messages",
    "logprobs",
    "top_logprobs",
    "max_tokens",
    "max_completion_tokens",
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
    "stream_options",
    "n",
    "ignore_eos",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "grammar",
];

fn int(f: &mut Fields, key: &'static str) -> Result<Option<i64>, ApiError> {
    f.take::<i64>(key, "an integer")
}

fn num(f: &mut Fields, key: &'static str) -> Result<Option<f64>, ApiError> {
    f.take::<f64>(key, "a number")
}

/// The fields both endpoints share, as sent. Numbers are read wide (f64 / i64) so that
/// out-of-range values get a clear message.
struct RawOptions {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    stop: Option<Vec<String>>,
    seed: Option<i64>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    n: Option<i64>,
    best_of: Option<i64>,
    echo: Option<bool>,
    ignore_eos: Option<bool>,
    logit_bias: Vec<(u32, f32)>,
    constraint: Option<ConstraintSpec>,
}

impl RawOptions {
    fn take(f: &mut Fields) -> Result<RawOptions, ApiError> {
        let stop = match f.take_value("stop") {
            None => None,
            Some(Value::String(s)) => Some(vec![s]),
            Some(v) => Some(serde_json::from_value::<Vec<String>>(v).map_err(|_| {
                ApiError::invalid("stop", "stop must be a string or an array of strings")
            })?),
        };
        let include_usage = match f.take_value("stream_options") {
            None => None,
            Some(v) => {
                let m = fields::object(v, "stream_options", "stream_options", &["include_usage"])?;
                match m.get("include_usage") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => {
                        return Err(ApiError::invalid(
                            "stream_options",
                            "stream_options.include_usage must be true or false",
                        ));
                    }
                }
            }
        };
        let logit_bias = match f.take_value("logit_bias") {
            None => Vec::new(),
            Some(v) => structured::logit_bias(v)?,
        };
        let response_format = match f.take_value("response_format") {
            None => None,
            Some(v) => structured::response_format(v)?,
        };
        let grammar = match f.take_value("grammar") {
            None => None,
            Some(v) => Some(structured::grammar(v)?),
        };
        if response_format.is_some() && grammar.is_some() {
            return Err(ApiError::invalid(
                "grammar",
                "grammar and a JSON response_format cannot be combined; give one",
            ));
        }
        Ok(RawOptions {
            max_tokens: int(f, "max_tokens")?,
            max_completion_tokens: int(f, "max_completion_tokens")?,
            temperature: num(f, "temperature")?,
            top_p: num(f, "top_p")?,
            top_k: int(f, "top_k")?,
            min_p: num(f, "min_p")?,
            presence_penalty: num(f, "presence_penalty")?,
            frequency_penalty: num(f, "frequency_penalty")?,
            repetition_penalty: num(f, "repetition_penalty")?,
            stop,
            seed: int(f, "seed")?,
            stream: f.take("stream", "true or false")?,
            include_usage,
            n: int(f, "n")?,
            best_of: int(f, "best_of")?,
            echo: f.take("echo", "true or false")?,
            ignore_eos: f.take("ignore_eos", "true or false")?,
            logit_bias,
            constraint: response_format.or(grammar),
        })
    }
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn float(
    name: &'static str,
    v: Option<f64>,
    default: f32,
    ok: impl Fn(f32) -> bool,
    range: &str,
) -> Result<f32, ApiError> {
    let Some(v) = v else { return Ok(default) };
    let f = v as f32;
    if !f.is_finite() || !ok(f) {
        return Err(ApiError::invalid(
            name,
            format!("{name} must be {range}, got {v}"),
        ));
    }
    Ok(f)
}

fn token_id(v: i64) -> Result<u32, ApiError> {
    u32::try_from(v)
        .map_err(|_| ApiError::invalid("prompt", format!("token id {v} is not a valid token id")))
}

fn options(raw: RawOptions, logprobs: Option<usize>) -> Result<Options, ApiError> {
    let one = |name: &'static str, v: Option<i64>| match v {
        None | Some(1) => Ok(()),
        Some(v) => Err(ApiError::invalid(
            name,
            format!("{name} must be 1 (one completion per request), got {v}"),
        )),
    };
    one("n", raw.n)?;
    one("best_of", raw.best_of)?;
    if raw.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let max_tokens = match raw.max_completion_tokens.or(raw.max_tokens) {
        None => None,
        Some(v) if v >= 1 => Some(usize::try_from(v).unwrap_or(usize::MAX)),
        Some(v) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 1, got {v}"),
            ));
        }
    };
    let stop = raw.stop.unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings, got {}", stop.len()),
        ));
    }
    if let Some(s) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop strings are limited to {MAX_STOP_BYTES} bytes, got {}",
                s.len()
            ),
        ));
    }
    let top_k = match raw.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1, 0 (off) or positive, got {k}"),
            ));
        }
    };
    // Negative seeds are common in clients; keep their bits.
    let seed = raw.seed.map(|s| s as u64);
    Ok(Options {
        max_tokens,
        temperature: float(
            "temperature",
            raw.temperature,
            1.0,
            |v| (0.0..=2.0).contains(&v),
            "between 0 and 2",
        )?,
        top_p: float(
            "top_p",
            raw.top_p,
            1.0,
            |v| v > 0.0 && v <= 1.0,
            "in (0, 1]",
        )?,
        top_k,
        min_p: float(
            "min_p",
            raw.min_p,
            0.0,
            |v| (0.0..=1.0).contains(&v),
            "between 0 and 1",
        )?,
        presence_penalty: float(
            "presence_penalty",
            raw.presence_penalty,
            0.0,
            |v| (-2.0..=2.0).contains(&v),
            "between -2 and 2",
        )?,
        frequency_penalty: float(
            "frequency_penalty",
            raw.frequency_penalty,
            0.0,
            |v| (-2.0..=2.0).contains(&v),
            "between -2 and 2",
        )?,
        repetition_penalty: float(
            "repetition_penalty",
            raw.repetition_penalty,
            1.0,
            |v| v > 0.0 && v <= 10.0,
            "in (0, 10]",
        )?,
        stop,
        seed,
        stream: raw.stream.unwrap_or(false),
        include_usage: raw.include_usage.unwrap_or(false),
        logprobs,
        ignore_eos: raw.ignore_eos.unwrap_or(false),
        logit_bias: raw.logit_bias,
        constraint: raw.constraint,
    })
}

fn top_n(name: &'static str, v: i64) -> Result<usize, ApiError> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n <= MAX_TOP_LOGPROBS)
        .ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("{name} must be between 0 and {MAX_TOP_LOGPROBS}, got {v}"),
            )
        })
}

/// Parses and validates a `/v1/completions` body (also the WebSocket request message).
/// Token ids are checked against the vocabulary later, by the caller that knows it.
pub fn parse_completion_request(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let mut f = Fields::parse(body)?;
    f.check_known(&COMPLETION_FIELDS, "a completion request")?;
    let ids = |v: Vec<i64>| v.into_iter().map(token_id).collect::<Result<Vec<_>, _>>();
    let prompt = match f.take_value("prompt") {
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
        Some(Value::String(s)) => Prompt::Text(s),
        Some(Value::Array(items)) => {
            if items.iter().all(Value::is_string) {
                let mut v: Vec<String> = items
                    .into_iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                match v.len() {
                    1 => Prompt::Text(v.remove(0)),
                    0 => return Err(ApiError::invalid("prompt", "the prompt has no tokens")),
                    _ => return Err(one_prompt()),
                }
            } else if items.iter().all(Value::is_array) {
                if items.len() != 1 {
                    return Err(one_prompt());
                }
                let inner = serde_json::from_value::<Vec<i64>>(
                    items.into_iter().next().unwrap_or_default(),
                )
                .map_err(|_| prompt_shape())?;
                Prompt::Tokens(ids(inner)?)
            } else {
                let v = serde_json::from_value::<Vec<i64>>(Value::Array(items))
                    .map_err(|_| prompt_shape())?;
                Prompt::Tokens(ids(v)?)
            }
        }
        Some(_) => return Err(prompt_shape()),
    };
    if matches!(&prompt, Prompt::Tokens(t) if t.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
    }
    let suffix = f.take::<String>("suffix", "a string")?;
    let logprobs = int(&mut f, "logprobs")?
        .map(|v| top_n("logprobs", v))
        .transpose()?;
    // Envelope fields of the WebSocket message (read by `parse_ws_envelope`).
    f.take_value("id");
    f.take_value("type");
    let raw = RawOptions::take(&mut f)?;
    Ok(CompletionRequest {
        prompt,
        suffix,
        options: options(raw, logprobs)?,
    })
}

fn one_prompt() -> ApiError {
    ApiError::invalid(
        "prompt",
        "one prompt per request (a batch of prompts is not supported)",
    )
}

fn prompt_shape() -> ApiError {
    ApiError::invalid(
        "prompt",
        "prompt must be a string, an array of one string, or an array of token ids",
    )
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let mut f = Fields::parse(body)?;
    f.check_known(&CHAT_FIELDS, "a chat completion request")?;
    let Some(raw_messages) = f.take_value("messages") else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    let Value::Array(raw_messages) = raw_messages else {
        return Err(ApiError::invalid(
            "messages",
            "messages must be an array of messages",
        ));
    };
    if raw_messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    let mut template_messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        let (msg, tmpl) = tools::message(m, i)?;
        messages.push(msg);
        template_messages.push(tmpl);
    }
    let lp = f.take::<bool>("logprobs", "true or false")?;
    let top = int(&mut f, "top_logprobs")?;
    let logprobs = match (lp, top) {
        (Some(true), n) => Some(
            n.map(|v| top_n("top_logprobs", v))
                .transpose()?
                .unwrap_or(0),
        ),
        (_, Some(n)) if n > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        _ => None,
    };
    let tools = tools::Tools::take(&mut f)?;
    let raw = RawOptions::take(&mut f)?;
    if tools.constrains() && raw.constraint.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "response_format / grammar cannot be combined with tools unless tool_choice is \"none\"",
        ));
    }
    Ok(ChatRequest {
        messages,
        template_messages,
        tools,
        options: options(raw, logprobs)?,
    })
}

/// Parses a `/tokenize` body: `{"prompt": "..."}` (or `"text"`), optional `add_special_tokens`.
pub fn parse_tokenize_request(body: &[u8]) -> Result<(String, bool), ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        prompt: Option<String>,
        text: Option<String>,
        add_special_tokens: Option<bool>,
    }
    let raw: Raw = json(body)?;
    let text = raw
        .prompt
        .or(raw.text)
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    Ok((text, raw.add_special_tokens.unwrap_or(true)))
}

/// Parses a `/detokenize` body: `{"tokens": [ids]}`.
pub fn parse_detokenize_request(body: &[u8]) -> Result<Vec<u32>, ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        tokens: Option<Vec<i64>>,
    }
    let raw: Raw = json(body)?;
    let ids = raw
        .tokens
        .ok_or_else(|| ApiError::invalid("tokens", "tokens is required"))?;
    ids.into_iter()
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                ApiError::invalid("tokens", format!("token id {v} is not a valid token id"))
            })
        })
        .collect()
}

/// The WebSocket control fields of a message: `{"type": "cancel"}` or a request with an
/// optional client `id` echoed in every frame about it.
pub fn parse_ws_envelope(body: &[u8]) -> Result<(Option<String>, Value), ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        id: Value,
    }
    let raw: Raw = json(body)?;
    Ok((raw.kind, raw.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_completion_request(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn completion_defaults_and_fields() {
        let r = parse_completion_request(br#"{"model":"m","prompt":"hi"}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.options.max_tokens, None);
        assert_eq!(r.options.temperature, 1.0);
        assert!(!r.options.stream);
        let r = parse_completion_request(
            br#"{"prompt":[1,2,3],"suffix":"s","max_tokens":5,"temperature":0,"top_k":-1,"stop":"\n","seed":7,"stream":true,"stream_options":{"include_usage":true},"logprobs":2}"#,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(r.suffix.as_deref(), Some("s"));
        let o = r.options;
        assert_eq!(
            (o.max_tokens, o.temperature, o.top_k, o.seed),
            (Some(5), 0.0, 0, Some(7))
        );
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert!(o.stream && o.include_usage);
        assert_eq!(o.logprobs, Some(2));
        let r = parse_completion_request(br#"{"prompt":["one"],"stop":["a","b"]}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Text("one".into()));
        assert_eq!(r.options.stop.len(), 2);
    }

    #[test]
    fn bad_completion_requests_are_400_with_the_field() {
        for (body, param) in [
            (r#"{"prompt":"x","temperature":-1}"#, Some("temperature")),
            (r#"{"prompt":"x","temperature":1e300}"#, Some("temperature")),
            (r#"{"prompt":"x","max_tokens":-3}"#, Some("max_tokens")),
            (r#"{"prompt":"x","max_tokens":0}"#, Some("max_tokens")),
            (r#"{"prompt":"x","top_p":0}"#, Some("top_p")),
            (r#"{"prompt":"x","n":2}"#, Some("n")),
            (r#"{"prompt":"x","logprobs":21}"#, Some("logprobs")),
            (r#"{"prompt":[1,-2]}"#, Some("prompt")),
            (r#"{"prompt":[]}"#, Some("prompt")),
            (r#"{"prompt":["a","b"]}"#, Some("prompt")),
            (r#"{"max_tokens":3}"#, Some("prompt")),
            (r#"{"prompt":"x","top_k":-5}"#, Some("top_k")),
        ] {
            let e = err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
        for body in [
            r#"{"prompt":"x","temperature":"hot"}"#,
            r#"{"prompt":"x","temperature":NaN}"#,
            "{",
            "",
            "[1]",
            r#"{"prompt":5}"#,
        ] {
            let e = err(body);
            assert_eq!(e.status, 400, "{body}");
            assert!(e.to_json().contains("invalid_request_error"));
        }
    }

    #[test]
    fn chat_messages_and_logprobs() {
        let r = parse_chat_request(
            br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"logprobs":true,"top_logprobs":3,"max_completion_tokens":9}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.options.logprobs, Some(3));
        assert_eq!(r.options.max_tokens, Some(9));
        assert!(parse_chat_request(br#"{"messages":[]}"#).is_err());
        assert!(parse_chat_request(br#"{"messages":[{"role":"user"}],"top_logprobs":2}"#).is_err());
        assert!(
            parse_chat_request(
                br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
            )
            .is_err()
        );
        assert!(parse_chat_request(br#"{"messages":"hi"}"#).is_err());
    }

    #[test]
    fn tokenize_detokenize_and_ws_envelope() {
        assert_eq!(
            parse_tokenize_request(br#"{"prompt":"a b"}"#).unwrap(),
            ("a b".to_string(), true)
        );
        assert_eq!(
            parse_detokenize_request(br#"{"tokens":[1,2]}"#).unwrap(),
            vec![1, 2]
        );
        assert!(parse_detokenize_request(br#"{"tokens":[-1]}"#).is_err());
        let (kind, id) = parse_ws_envelope(br#"{"type":"cancel","id":"k1"}"#).unwrap();
        assert_eq!(kind.as_deref(), Some("cancel"));
        assert_eq!(id, Value::String("k1".into()));
    }
}
